//! Settings of the Snowflake agent: the `snowflake` section of its configuration
//! (`AGENT_SNOWFLAKE__<KEY>` in the environment).

use agent_core::Description;
use agent_core::http::RestSettings;
use serde::{Deserialize, Serialize};

use crate::jwt::{KEY_SECRET, PASSPHRASE_SECRET};

/// The variables the emulator and Snowflake's tools read, as defaults of the settings they mean.
pub(crate) const ENV: &[(&str, &str)] = &[("base_url", "SNOWFLAKE_BASE_URL")];

/// What the agent reads, for `--help` (a test keeps it equal to [`Config`]).
pub const HELP: Description = Description::of::<Config>("snowflake")
    .settings(&[
        (
            "base_url",
            "SQL API base URL in place of https://{account}.snowflakecomputing.com; when set, the only host tokens go to.",
        ),
        ("statement_timeout_secs", "Statement timeout sent with each statement, in seconds; 0 keeps Snowflake's."),
        ("role", "Role statements run as, when not the user's default."),
        ("allowed_accounts", "Accounts the agent logs in to (e.g. myorg-prod); empty: any well-formed account."),
    ])
    .flattened(RestSettings::HELP)
    .env_defaults(ENV)
    .secrets(&[
        (KEY_SECRET, "PKCS#8 PEM private key of the key pair (ACCOUNT.USER's registered public key)."),
        (PASSPHRASE_SECRET, "Passphrase of an encrypted private key."),
    ]);

/// `snowflake.*` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base URL of the SQL API instead of `https://{account}.snowflakecomputing.com`, e.g.
    /// an emulator or a private link host; `SNOWFLAKE_BASE_URL` when left out.
    pub base_url: Option<String>,
    /// Statement timeout sent with each statement, in seconds; 0 keeps Snowflake's default.
    pub statement_timeout_secs: u64,
    /// Role to run statements as, when not the user's default.
    pub role: Option<String>,
    /// Accounts this agent logs in to (e.g. `myorg-prod`); a task or resource meta naming
    /// another is refused before anything is signed or sent. Empty: any well-formed
    /// account identifier.
    pub allowed_accounts: Vec<String>,
    /// Timeouts, retries and the extra CA bundle (`attempt_timeout`, `retry_budget`, `ca_bundle`).
    #[serde(flatten)]
    pub rest: RestSettings,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use agent_core::config::{CliArgs, Settings};

    use super::*;

    fn from_env(vars: &[(&str, &str)]) -> Result<Config, String> {
        let env: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::load(&CliArgs::default(), Some(env)).unwrap().section_of(&HELP).map_err(|e| e.to_string())
    }

    /// `--help` lists every setting, and lists split from the environment and `--set`.
    #[test]
    fn the_description_matches_the_settings() {
        agent_core::testing::conformance::description(&HELP);
        let config = from_env(&[("AGENT_SNOWFLAKE__ALLOWED_ACCOUNTS", "myorg-prod,myorg-dev")]).unwrap();
        assert_eq!(config.allowed_accounts, ["myorg-prod", "myorg-dev"]);
    }

    #[test]
    fn the_settings_keep_their_keys_with_the_rest_settings_flattened_in() {
        let config = from_env(&[
            ("AGENT_SNOWFLAKE__ATTEMPT_TIMEOUT", "2s"),
            ("AGENT_SNOWFLAKE__RETRY_BUDGET", "3s"),
            ("AGENT_SNOWFLAKE__STATEMENT_TIMEOUT_SECS", "30"),
            ("AGENT_SNOWFLAKE__ROLE", "ANALYST"),
        ])
        .unwrap();
        let rest = (config.rest.attempt_timeout, config.rest.retry_budget);
        assert_eq!(
            (rest, config.statement_timeout_secs, config.role.as_deref()),
            ((Duration::from_secs(2), Duration::from_secs(3)), 30, Some("ANALYST"))
        );
        let e = from_env(&[("AGENT_SNOWFLAKE__ATEMPT_TIMEOUT", "2s")]).unwrap_err();
        assert!(e.contains("atempt_timeout"), "{e}");
    }
}
