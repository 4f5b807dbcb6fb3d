//! Settings of the Snowflake agent: the `snowflake` section of its configuration
//! (`AGENT_SNOWFLAKE__<KEY>` in the environment).

use agent_core::http::RestSettings;
use serde::Deserialize;

/// `snowflake.*` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base URL of the SQL API instead of `https://{account}.snowflakecomputing.com`, e.g.
    /// an emulator or a private link host. Defaults to `SNOWFLAKE_BASE_URL`.
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

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: std::env::var("SNOWFLAKE_BASE_URL").ok().filter(|u| !u.is_empty()),
            statement_timeout_secs: 0,
            role: None,
            allowed_accounts: Vec::new(),
            rest: RestSettings::default(),
        }
    }
}
