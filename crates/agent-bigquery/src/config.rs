//! Settings of the BigQuery agent: the `bigquery` section of the agent's configuration.

use std::time::Duration;

use serde::Deserialize;

/// `bigquery.*` settings (`AGENT_BIGQUERY__<KEY>` in the environment).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `host:port` of a BigQuery emulator: plain HTTP, anonymous credentials. Defaults to
    /// `BIGQUERY_EMULATOR_HOST`, like Google's other emulator variables.
    pub emulator_host: Option<String>,
    /// Another API endpoint (e.g. a private service connect address); ignored with an emulator.
    pub endpoint: Option<String>,
    /// Longest single HTTP attempt.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Time spent retrying when Propeller's call carries no deadline.
    #[serde(with = "humantime_serde")]
    pub retry_budget: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            emulator_host: std::env::var("BIGQUERY_EMULATOR_HOST").ok().filter(|h| !h.is_empty()),
            endpoint: None,
            attempt_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(8),
        }
    }
}
