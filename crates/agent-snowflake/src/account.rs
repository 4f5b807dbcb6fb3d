//! Snowflake account identifiers, checked before anything is built from them. The
//! account comes from the task template or from a resource meta, both hostile input, and
//! it becomes the host a signed login token is sent to and the account that token is
//! for; so it is parsed once, here, and both the host and the token's account derive
//! from the parsed form.

use agent_core::prelude::*;

/// The domain every Snowflake account host is below (private link hosts included).
pub(crate) const DOMAIN: &str = "snowflakecomputing.com";

/// A well-formed account identifier: `orgname-accountname`, or a legacy locator with
/// region and cloud segments (`xy12345.us-east-2.aws`, `xy12345.eu-west-1.privatelink`).
/// Segments are letters, digits, `_` and `-`, separated by single dots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountId(String);

/// Longest identifier accepted: a host name's limit less the domain.
const MAX_LEN: usize = 253 - DOMAIN.len() - 1;

/// Why a part of an identifier between dots is refused.
const PARTS: &str = "only letters, digits, '_' and '-' are allowed, in dot-separated parts that start and end with a \
                     letter or digit";

impl AccountId {
    /// Parses `raw`; `field` names where it came from in the error.
    pub(crate) fn parse(raw: &str, field: &str) -> Result<Self, AgentError> {
        let lower = raw.to_ascii_lowercase();
        let in_domain = lower == DOMAIN || lower.ends_with(&format!(".{DOMAIN}"));
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        let part_ok =
            |p: &str| (1..=63).contains(&p.len()) && p.trim_matches(['_', '-']) == p && p.chars().all(allowed);
        let why = match raw.len() {
            0 => "it is empty".to_owned(),
            n if n > MAX_LEN => format!("it is longer than {MAX_LEN} characters"),
            _ if in_domain => format!("give the identifier without .{DOMAIN}"),
            _ if !raw.split('.').all(part_ok) => PARTS.to_owned(),
            _ => return Ok(Self(lower)),
        };
        let shown: String = raw.chars().take(64).filter(|c| !c.is_control()).collect();
        Err(AgentError::invalid_argument(format!(
            "{field} {shown:?} is not a Snowflake account identifier: {why}; write orgname-accountname or a locator \
             such as xy12345.us-east-2.aws"
        )))
    }

    /// The identifier, lower case.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The account's host.
    pub(crate) fn host(&self) -> String {
        format!("{}.{DOMAIN}", self.0)
    }

    /// The account as a key-pair JWT names it: upper case, without region or cloud.
    pub(crate) fn jwt_account(&self) -> String {
        self.0.split('.').next().unwrap_or(&self.0).to_ascii_uppercase()
    }
}

/// `value`, a user, warehouse, database or schema name from a template or meta, checked:
/// it goes into the token's claims and the `results` URI
/// (`snowflake://{user}:{account}/{warehouse}/{database}/{schema}/{query_id}`), where a
/// `:`, `/` or control character would move the fields a reader splits on, and its size
/// into the token cache. Snowflake identifiers are at most 255 characters.
pub(crate) fn check_name<'a>(value: &'a str, field: &str) -> Result<&'a str, AgentError> {
    let bad = |c: char| c.is_control() || matches!(c, ':' | '/' | '\\' | '?' | '#');
    if value.len() <= 255 && !value.contains(bad) {
        return Ok(value);
    }
    Err(AgentError::invalid_argument(format!(
        "{field} is not a Snowflake name: at most 255 characters, without ':', '/', '\\', '?', '#' or control characters"
    )))
}

/// The accounts this agent may log in to (`snowflake.allowed_accounts`); empty allows
/// any well-formed account.
#[derive(Debug, Clone, Default)]
pub(crate) struct Allowed(Vec<AccountId>);

impl Allowed {
    /// Parses the setting; a malformed entry fails start-up.
    pub(crate) fn new(accounts: &[String]) -> Result<Self, String> {
        let parse = |a: &String| AccountId::parse(a.trim(), "snowflake.allowed_accounts entry");
        accounts.iter().map(parse).collect::<Result<_, _>>().map(Self).map_err(|e| e.message().to_owned())
    }

    /// The parsed account, if it is well formed and allowed.
    pub(crate) fn check(&self, raw: &str, field: &str) -> Result<AccountId, AgentError> {
        let id = AccountId::parse(raw, field)?;
        if self.0.is_empty() || self.0.contains(&id) {
            return Ok(id);
        }
        let (account, names) = (id.as_str(), self.0.iter().map(AccountId::as_str).collect::<Vec<_>>().join(", "));
        Err(AgentError::permission_denied(format!(
            "Snowflake account '{account}' is not allowed: this agent logs in only to {names} (setting snowflake.allowed_accounts)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_parse_and_the_token_account_derives_from_them() {
        for (raw, host, jwt) in [
            ("myorg-myaccount", "myorg-myaccount.snowflakecomputing.com", "MYORG-MYACCOUNT"),
            ("XY12345", "xy12345.snowflakecomputing.com", "XY12345"),
            ("xy12345.us-east-2.aws", "xy12345.us-east-2.aws.snowflakecomputing.com", "XY12345"),
            ("xy12345.eu-west-1.privatelink", "xy12345.eu-west-1.privatelink.snowflakecomputing.com", "XY12345"),
            ("my_org-acct_1", "my_org-acct_1.snowflakecomputing.com", "MY_ORG-ACCT_1"),
        ] {
            let id = AccountId::parse(raw, "template.config.account").unwrap();
            assert_eq!((id.host().as_str(), id.jwt_account().as_str()), (host, jwt), "{raw}");
        }
    }

    #[test]
    fn anything_else_is_refused_before_it_reaches_a_url() {
        for bad in [
            "",
            "acme.x@127.0.0.2:9/",
            "127.0.0.2:9#",
            "acme?x",
            "acme%2F",
            "acme\\evil",
            "acme.",
            ".acme",
            "acme..aws",
            "[::1]",
            "a b",
            "a:99999",
            "\u{0455}nowflake",
            "acme/x",
            "-acme",
            "acme.snowflakecomputing.com",
            "acme\n",
            &"a".repeat(300),
        ] {
            let e = AccountId::parse(bad, "resource meta account").unwrap_err();
            assert!(matches!(e, AgentError::InvalidArgument(_)), "{bad}: {e}");
            assert!(e.message().contains("resource meta account"), "{e}");
            assert!(!e.message().contains('\n'), "{e}");
        }
    }

    #[test]
    fn names_that_would_move_the_results_uri_are_refused() {
        for ok in ["FLYTE", "john.doe@example.com", "MY_WH", "\"Quoted Db\"", ""] {
            assert_eq!(check_name(ok, "f").unwrap(), ok);
        }
        for bad in ["u:evil", "a/b", "a\nb", "a\\b", "a?b", "a#b", &"u".repeat(256)] {
            let e = check_name(bad, "template.config.user").unwrap_err();
            assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains("template.config.user")), "{bad}");
        }
    }

    #[test]
    fn an_allowlist_admits_only_its_accounts() {
        let allowed = Allowed::new(&["MyOrg-Prod".to_owned()]).unwrap();
        assert_eq!(allowed.check("myorg-prod", "f").unwrap().as_str(), "myorg-prod");
        let e = allowed.check("myorg-other", "f").unwrap_err();
        assert!(matches!(&e, AgentError::PermissionDenied(m) if m.contains("snowflake.allowed_accounts")), "{e}");
        assert!(matches!(allowed.check("a@b", "f"), Err(AgentError::InvalidArgument(_))));
        assert!(Allowed::default().check("anyone", "f").is_ok());
        assert!(Allowed::new(&["bad host".to_owned()]).unwrap_err().contains("allowed_accounts"));
    }
}
