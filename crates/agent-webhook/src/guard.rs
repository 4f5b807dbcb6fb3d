//! Which addresses a webhook may reach. A task names any URL, and the agent runs inside the
//! cluster: without rules, a task could call the cloud's metadata endpoint (and read the
//! node's credentials), the agent's own loopback, or any service in the cluster. So the
//! agent checks the address it actually connects to, after DNS resolution (a name that
//! resolves to a forbidden address, or is made to later, is refused when it is used),
//! every IP literal in a URL, and every redirect it follows.
//!
//! By default loopback, link-local (metadata endpoints), private, shared (carrier-grade
//! NAT, often cluster networks), multicast and reserved ranges are forbidden; the operator
//! opens ranges with `allow_cidrs`, forbids more with `deny_cidrs`, and names hosts with
//! `allow_hosts` (then only those) and `deny_hosts`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::Config;

/// Ranges no webhook reaches unless `allow_cidrs` opens them, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT, often a cluster network)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata endpoints)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated; names an IPv4 address)"),
    ("::ffff:0:0:0/96", "IPv4-translated (names an IPv4 address)"),
    ("64:ff9b::/96", "NAT64 (reaches IPv4 addresses)"),
    ("64:ff9b:1::/48", "NAT64 (reaches IPv4 addresses)"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo (reaches IPv4 addresses)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 (reaches IPv4 addresses)"),
    ("fc00::/7", "unique local (private; AWS's IPv6 metadata endpoint)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated, private)"),
    ("ff00::/8", "multicast"),
];

/// A refused destination: what and why, in words an operator can act on.
#[derive(Debug, Clone)]
pub(crate) struct Refused(pub(crate) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A host rule: `example.com` is that host; `.example.com` any host below it.
#[derive(Debug, Clone)]
struct HostRule(String);

impl HostRule {
    fn new(rule: &str) -> Self {
        Self(rule.trim().trim_end_matches('.').to_ascii_lowercase())
    }

    fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix('.') {
            Some(domain) => host.ends_with(&self.0) || host == domain,
            None => host == self.0,
        }
    }
}

/// The operator's rules, checked before any connection.
#[derive(Debug)]
pub(crate) struct Rules {
    allow_hosts: Vec<HostRule>,
    deny_hosts: Vec<HostRule>,
    allow: Vec<IpNet>,
    deny: Vec<(IpNet, String)>,
}

impl Rules {
    /// The rules of `config`; fails, naming the setting, on a CIDR that does not parse.
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let cidr = |setting: &str, s: &str| {
            s.trim().parse::<IpNet>().or_else(|_| s.trim().parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                format!("webhook.{setting}: '{s}' is not an address range (CIDR such as 10.1.0.0/16, or one address)")
            })
        };
        let allow = config.allow_cidrs.iter().map(|s| cidr("allow_cidrs", s)).collect::<Result<_, _>>()?;
        let mut deny: Vec<(IpNet, String)> = FORBIDDEN
            .iter()
            .map(|(net, why)| (net.parse().expect("a valid built-in range"), (*why).to_owned()))
            .collect();
        for s in &config.deny_cidrs {
            deny.push((cidr("deny_cidrs", s)?, "denied by webhook.deny_cidrs".to_owned()));
        }
        Ok(Self {
            allow_hosts: config.allow_hosts.iter().map(|h| HostRule::new(h)).collect(),
            deny_hosts: config.deny_hosts.iter().map(|h| HostRule::new(h)).collect(),
            allow,
            deny,
        })
    }

    /// Whether a webhook may connect to `ip`. An IPv4 address written as IPv6
    /// (`::ffff:a.b.c.d`) is judged as the IPv4 address it is.
    pub(crate) fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = ip.to_canonical();
        // `deny_cidrs` wins over `allow_cidrs`; `allow_cidrs` opens the built-in ranges.
        let configured_deny = self.deny.iter().skip(FORBIDDEN.len());
        if let Some((_, why)) = configured_deny.into_iter().find(|(net, _)| net.contains(&ip)) {
            return Err(Refused(format!("{ip} is {why}")));
        }
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match self.deny.iter().take(FORBIDDEN.len()).find(|(net, _)| net.contains(&ip)) {
            Some((net, why)) => Err(Refused(format!(
                "{ip} is a {why} address ({net}); an operator can allow the range with webhook.allow_cidrs"
            ))),
            None => Ok(()),
        }
    }

    /// Whether a webhook may call `url`: http(s), a host the host rules allow, and, for an
    /// IP literal (which is never resolved), an allowed address. Names are resolved, and
    /// their addresses checked, when the call connects (see [`Resolver`]).
    pub(crate) fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!("the scheme {}: is not http or https", url.scheme())));
        }
        let Some(host) = url.host_str() else { return Err(Refused("the URL has no host".to_owned())) };
        // The URL parser writes every spelling of an address (2130706433, 0x7f.1) as one.
        // The host rules apply to a literal too, as written: with `allow_hosts` set, an
        // address must be listed itself.
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => {
                self.check_name(&ip.to_string())?;
                self.check_ip(ip)
            }
            Err(_) => self.check_name(host),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), Refused> {
        let host = name.trim_end_matches('.').to_ascii_lowercase();
        if self.deny_hosts.iter().any(|r| r.matches(&host)) {
            return Err(Refused(format!("the host {host} is denied by webhook.deny_hosts")));
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|r| r.matches(&host)) {
            return Err(Refused(format!("the host {host} is not in webhook.allow_hosts")));
        }
        Ok(())
    }
}

/// DNS resolution that hands reqwest only the addresses the rules allow, so what is
/// checked is what is connected to: a name cannot pass the check with one address and
/// connect to another.
#[derive(Debug, Clone)]
pub(crate) struct Resolver(pub(crate) Arc<Rules>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rules = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .filter(|a| match rules.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match refused {
                Some(why) if allowed.is_empty() => {
                    Err(Box::new(Refused(format!("{host} resolves to {why}")))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The refusal inside a failed call's error chain, if the rules refused it.
pub(crate) fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(f: impl FnOnce(&mut Config)) -> Rules {
        let mut c = Config::default();
        f(&mut c);
        Rules::new(&c).unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_by_default_and_public_ones_pass() {
        let r = rules(|_| {});
        for ip in ["127.0.0.1", "169.254.169.254", "10.0.0.7", "172.20.1.1", "192.168.1.1", "100.100.1.1", "0.0.0.0"] {
            assert!(r.check_ip(ip.parse().unwrap()).is_err(), "{ip}");
        }
        for ip in [
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::169.254.169.254",
            "::127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "fec0::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(r.check_ip(ip.parse().unwrap()).is_err(), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"] {
            assert!(r.check_ip(ip.parse().unwrap()).is_ok(), "{ip}");
        }
        let msg = r.check_ip("169.254.169.254".parse().unwrap()).unwrap_err().0;
        assert!(msg.contains("metadata") && msg.contains("webhook.allow_cidrs"), "{msg}");
    }

    #[test]
    fn the_operator_opens_and_closes_ranges() {
        let r = rules(|c| {
            c.allow_cidrs = vec!["10.1.0.0/16".into(), "127.0.0.1".into()];
            c.deny_cidrs = vec!["10.1.2.0/24".into(), "203.0.113.0/24".into()];
        });
        assert!(r.check_ip("10.1.5.5".parse().unwrap()).is_ok());
        assert!(r.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(r.check_ip("127.0.0.2".parse().unwrap()).is_err());
        assert!(r.check_ip("10.1.2.3".parse().unwrap()).is_err(), "deny_cidrs wins over allow_cidrs");
        assert!(r.check_ip("203.0.113.9".parse().unwrap()).is_err());
        let bad = Rules::new(&Config { allow_cidrs: vec!["10.0.0.0/33".into()], ..Config::default() }).unwrap_err();
        assert!(bad.contains("webhook.allow_cidrs") && bad.contains("10.0.0.0/33"), "{bad}");
    }

    #[test]
    fn urls_are_checked_by_scheme_host_rules_and_ip_literals() {
        let r = rules(|c| c.deny_hosts = vec!["metadata.google.internal".into(), ".svc.cluster.local".into()]);
        let check = |u: &str| r.check_url(&reqwest::Url::parse(u).unwrap());
        assert!(check("https://hooks.example.com/x").is_ok());
        assert!(check("http://[::1]:8080/").is_err());
        assert!(check("http://127.0.0.1/").is_err());
        // Other spellings of 127.0.0.1 parse to the same address.
        assert!(check("http://2130706433/").is_err());
        assert!(check("http://0x7f.1/").is_err());
        assert!(check("http://Metadata.Google.Internal./computeMetadata").is_err());
        assert!(check("http://api.default.svc.cluster.local/").is_err());
        assert!(check("file:///etc/passwd").is_err());
        let only = rules(|c| c.allow_hosts = vec![".example.com".into(), "203.0.113.7".into()]);
        assert!(only.check_url(&reqwest::Url::parse("https://a.example.com/").unwrap()).is_ok());
        assert!(only.check_url(&reqwest::Url::parse("https://example.com.evil.io/").unwrap()).is_err());
        // An allowlist holds for addresses too: only a listed one passes.
        assert!(only.check_url(&reqwest::Url::parse("http://203.0.113.9/").unwrap()).is_err());
        assert!(only.check_url(&reqwest::Url::parse("http://203.0.113.7/").unwrap()).is_ok());
    }
}
