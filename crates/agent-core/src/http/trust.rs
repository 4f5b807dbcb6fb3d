//! Where credentials may go: the hosts an agent's configuration trusts, the one HTTP
//! client builder (one TLS stack, an optional extra CA bundle, no redirects), and the
//! check that keeps ids from resource metas out of URL paths' structure.

use crate::error::AgentError;

/// An HTTP client with the agent's user agent, trusting the system roots (and
/// `SSL_CERT_FILE`) plus an optional PEM bundle; `setting` names that bundle in errors.
/// It never follows redirects: a redirect would carry the request, and whatever
/// credentials it holds, to a host nobody checked.
pub fn client(user_agent: &str, ca_bundle: Option<&std::path::Path>, setting: &str) -> Result<reqwest::Client, String> {
    Ok(Lanes::new(user_agent, ca_bundle, setting)?.0.first.clone())
}

/// Calls in flight one HTTP/2 connection carries before the next lane opens its own:
/// the lowest per-connection stream limit of the services' front ends (Google's is 100).
pub const STREAMS_PER_LANE: usize = 100;
/// Lanes per agent: with [`STREAMS_PER_LANE`] calls each, thousands in flight.
pub const LANES: usize = 32;

/// An agent's HTTP clients, each with its own connection pool (a "lane"), all built as
/// [`client`] builds one. A client keeps one HTTP/2 connection per host, and a server
/// caps the calls one connection carries (100 at Google's front ends), past which the
/// client queues them; so calls beyond that many in flight take the next lane, which
/// opens its own connection. Lane 0 is built at once (checking the settings) and
/// negotiates the protocol (ALPN); the others are only used for hosts that answered over
/// HTTP/2 (see [`super::limit::Permit::lane`]), so they speak it from the start, and a
/// burst of calls on a new lane shares one new connection instead of racing to open one
/// each.
///
/// Cloning is cheap (one shared value): every call's SDK client holds a clone.
#[derive(Debug, Clone)]
pub struct Lanes(std::sync::Arc<LanesInner>);

#[derive(Debug)]
struct LanesInner {
    user_agent: String,
    /// TLS for lanes 1 and up, which speak HTTP/2 only; it shares lane 0's verifier.
    http2_tls: rustls::ClientConfig,
    first: reqwest::Client,
    /// Lanes 1 and up.
    more: std::sync::Arc<[std::sync::OnceLock<reqwest::Client>]>,
}

impl Lanes {
    /// The lanes of an agent (see [`client`] for the arguments).
    pub fn new(user_agent: &str, ca_bundle: Option<&std::path::Path>, setting: &str) -> Result<Self, String> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut certs = Vec::new();
        if let Some(path) = ca_bundle {
            let pem = std::fs::read(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
            certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{setting}: {} is not a PEM bundle: {e}", path.display()))?;
            // A file without a single certificate parses as an empty bundle; trusting nothing
            // extra is not what the operator asked for.
            if certs.is_empty() {
                return Err(format!(
                    "{setting}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ));
            }
        }
        let tls = tls(certs)?;
        let mut http2_tls = tls.clone();
        http2_tls.alpn_protocols = vec![b"h2".to_vec()];
        let first = build(user_agent, tls, false)?;
        let more = (1..LANES).map(|_| std::sync::OnceLock::new()).collect();
        Ok(Self(std::sync::Arc::new(LanesInner { user_agent: user_agent.to_owned(), http2_tls, first, more })))
    }

    /// The client of `lane` (see [`super::limit::Permit::lane`]), built on first use; lane 0
    /// if it cannot be (it was built from the same settings, so that does not happen).
    pub fn get(&self, lane: usize) -> &reqwest::Client {
        let lanes = &*self.0;
        let Some(slot) = lane.checked_sub(1).and_then(|i| lanes.more.get(i)) else { return &lanes.first };
        if let Some(c) = slot.get() {
            return c;
        }
        match build(&lanes.user_agent, lanes.http2_tls.clone(), true) {
            Ok(c) => slot.get_or_init(|| c),
            Err(_) => &lanes.first,
        }
    }
}

/// TLS as reqwest sets it up by default (the platform's roots, which honour
/// `SSL_CERT_FILE`, plus `extra`; TLS 1.2 and 1.3; HTTP/2 or 1.1 by ALPN), built once:
/// every lane shares its verifier, where each client reqwest configures parses every
/// root certificate again (about 60 KiB per lane).
fn tls(extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        .map_err(|e| format!("cannot load the trusted root certificates: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn build(user_agent: &str, tls: rustls::ClientConfig, http2_only: bool) -> Result<reqwest::Client, String> {
    // No retries inside reqwest: its default keeps a copy of every request in flight so it
    // can resend one an HTTP/2 server refused unprocessed (memory per call, for thousands
    // in flight), and the callers' own retries, inside the deadline, already resend it.
    // A policy that never retries still copies each request unless it allows zero retries.
    let no_retries = reqwest::retry::never().max_retries_per_request(0);
    let mut builder = reqwest::Client::builder()
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none())
        .retry(no_retries)
        .tls_backend_preconfigured(tls);
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The hosts an agent may send credentials to, from its configuration only: its
/// service's own domains (any host below them, HTTPS on the default port) and exact
/// origins the operator named (a base-URL override such as an emulator or a private link
/// host, or an allowlisted instance).
///
/// Task templates and resource metas name hosts (a Snowflake account, a Databricks
/// instance); they are hostile input. Whatever an agent builds from them, the URL is
/// checked here, after parsing, so userinfo, `#`, `?`, encoded slashes, backslashes,
/// trailing dots, IP literals, look-alike characters, case and ports cannot smuggle a
/// request elsewhere.
#[derive(Debug, Clone, Default)]
pub struct TrustedHosts {
    /// Lower-case domain suffixes, without a leading dot.
    domains: Vec<String>,
    /// Exact origins: scheme, lower-case host, port.
    origins: Vec<(String, String, u16)>,
    /// The setting operators change to trust more, named in refusals.
    setting: String,
}

impl TrustedHosts {
    /// Nothing trusted yet; `setting` is what a refusal tells the operator to change.
    pub fn new(setting: &str) -> Self {
        Self { setting: setting.to_owned(), ..Self::default() }
    }

    /// Trusts every host below `domain` (e.g. `snowflakecomputing.com`), over HTTPS on
    /// port 443 only.
    #[must_use]
    pub fn domain(mut self, domain: &str) -> Self {
        self.domains.push(domain.trim_matches('.').to_ascii_lowercase());
        self
    }

    /// Trusts exactly the origin of `url` (scheme, host and port), as the configuration
    /// names it: an emulator, a proxy, a private link host. A bare `host[:port]` means
    /// HTTPS. Fails, naming `setting`, when it is not a plain origin.
    pub fn origin(mut self, url: &str, setting: &str) -> Result<Self, String> {
        let with_scheme = if url.contains("://") { url.to_owned() } else { format!("https://{url}") };
        let parsed = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{setting}: '{url}' is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "https" | "http") || !parsed.username().is_empty() || parsed.password().is_some()
        {
            return Err(format!("{setting}: '{url}' must be an http(s) URL without user information"));
        }
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return Err(format!("{setting}: '{url}' names no host"));
        };
        self.origins.push((parsed.scheme().to_owned(), host.to_owned(), port));
        Ok(self)
    }

    /// Whether credentials may go to `url`; `PERMISSION_DENIED` naming the setting if not.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), AgentError> {
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default();
        let clean = url.username().is_empty() && url.password().is_none();
        let exact = self.origins.iter().any(|(s, h, p)| s == url.scheme() && h == host && Some(*p) == port);
        // IP literals are never "below" a domain, whatever their text ends with.
        let is_domain = !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err();
        let below = is_domain
            && url.scheme() == "https"
            && url.port().is_none()
            && self.domains.iter().any(|d| {
                host.strip_suffix(d.as_str())
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.starts_with('.') && !label.ends_with('.'))
            });
        if clean && (exact || below) {
            return Ok(());
        }
        let shown: String = host.chars().take(80).collect();
        Err(AgentError::permission_denied(format!(
            "refusing to send credentials to host '{shown}': it is not one this agent is configured to trust \
             (setting {})",
            self.setting
        )))
    }
}

/// `id`, a job handle from a resource meta, checked before it goes into a URL path. A
/// meta arrives from outside like any input: an id with `/`, `?` or `..` would send the
/// agent's credentials to another endpoint of the service.
pub fn path_id<'a>(what: &str, id: &'a str) -> Result<&'a str, AgentError> {
    let safe = !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if safe {
        Ok(id)
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(AgentError::invalid_argument(format!(
            "resource meta: {what} {shown:?} is not an id this agent issued (letters, digits, '-', '_', '.', ':')"
        )))
    }
}

/// `value`, named `what`, checked before it becomes an HTTP header: ids, keys and tokens
/// are short printable ASCII, and anything else (control characters, a line break that
/// would start another header, a megabyte) is refused with a message that never echoes
/// it, since it may be a credential. reqwest and the SDKs on it would panic or fail late.
pub fn header_value<'a>(what: &str, value: &'a str) -> Result<&'a str, String> {
    if value.len() <= 256 && value.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(value);
    }
    Err(format!(
        "{what} must be at most 256 printable ASCII characters without spaces or control characters (it is sent as \
         an HTTP header)"
    ))
}

#[cfg(test)]
mod tests {

    #[test]
    fn header_values_are_short_printable_ascii_and_never_echoed() {
        for ok in ["", "org-AbC123", "sk-proj-x_y.z", &"k".repeat(256)] {
            assert_eq!(super::header_value("the key", ok).unwrap(), ok);
        }
        for bad in ["sk-secret\r\nX-Admin: 1", "org 1", "sk-sécret", "tab\there", &"k".repeat(257)] {
            let e = super::header_value("the key", bad).unwrap_err();
            assert!(e.starts_with("the key must be at most 256 printable ASCII"), "{e}");
            assert!(!e.contains("secret") && !e.contains("org 1"), "never echoed: {e}");
        }
    }

    #[test]
    fn only_plain_ids_go_into_url_paths() {
        for ok in ["01b2c3d4-0000-0000-0000-000000000001", "batch_abc123", "job.1:US"] {
            assert_eq!(super::path_id("id", ok).unwrap(), ok);
        }
        for bad in ["", ".", "..", "../admin", "a/b", "a?b=1", "a#b", "a b", "é", &"x".repeat(300)] {
            let e = super::path_id("query_id", bad).unwrap_err();
            assert!(matches!(e, AgentError::InvalidArgument(_)) && e.to_string().contains("query_id"), "{bad}: {e}");
        }
    }

    use super::*;

    #[test]
    fn credentials_go_only_to_trusted_hosts_however_the_url_is_disguised() {
        let trusted = TrustedHosts::new("x.allowed")
            .domain("snowflakecomputing.com")
            .origin("http://127.0.0.1:18080", "x.base_url")
            .unwrap()
            .origin("adb-1.azuredatabricks.net", "x.allowed")
            .unwrap();
        let check = |u: &str| {
            reqwest::Url::parse(u).map_err(|e| e.to_string()).and_then(|u| {
                trusted.check(&u).map_err(|e| {
                    assert!(matches!(e, AgentError::PermissionDenied(_)) && e.message().contains("x.allowed"), "{e}");
                    e.to_string()
                })
            })
        };
        for ok in [
            "https://acme-prod.snowflakecomputing.com/api/v2/statements",
            "https://xy12345.us-east-2.aws.snowflakecomputing.com/api",
            "https://xy12345.eu-west-1.privatelink.snowflakecomputing.com/",
            "https://ACME.SnowflakeComputing.com/api",
            "https://acme.snowflakecomputing.com:443/api",
            "http://127.0.0.1:18080/api/v2/statements",
            "https://adb-1.azuredatabricks.net/api/2.1/jobs/runs/get",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://acme.x@127.0.0.2:9/.snowflakecomputing.com/api",
            "https://127.0.0.2:9#.snowflakecomputing.com/api",
            "https://127.0.0.2:9?.snowflakecomputing.com/api",
            "https://127.0.0.2%2F.snowflakecomputing.com.evil.test/api",
            "https://evil.test\\.snowflakecomputing.com/api",
            "https://acme.snowflakecomputing.com./api",
            "https://acme.snowflakecomputing.com:8443/api",
            "http://acme.snowflakecomputing.com/api",
            "https://snowflakecomputing.com/api",
            "https://acmesnowflakecomputing.com/api",
            "https://acme.snowflakecomputing.com.evil.test/api",
            "https://[::1]:18080/api",
            "https://acme.\u{0455}nowflakecomputing.com/api",
            "https://user:pw@acme.snowflakecomputing.com/api",
            "https://127.0.0.1:18080/api",
            "http://127.0.0.1:18081/api",
            "http://localhost:18080/api",
            "https://adb-1.azuredatabricks.net.evil.test/api",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(TrustedHosts::new("s").origin("https://u:p@host", "s.base_url").unwrap_err().contains("s.base_url"));
        assert!(TrustedHosts::new("s").origin("ftp://host", "s.base_url").is_err());
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("not-pem-{}", std::process::id()));
        std::fs::write(&path, "this is not a certificate\n").unwrap();
        let err = client("t", Some(&path), "x.ca_bundle").unwrap_err();
        assert!(err.contains("x.ca_bundle") && err.contains("no PEM certificate"), "{err}");
        std::fs::remove_file(path).unwrap();
    }
}
