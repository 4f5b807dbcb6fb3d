//! Settings of the OpenAI agents: the `openai` section of the configuration.

use std::time::Duration;

use serde::Deserialize;

/// `openai.*` settings (`AGENT_OPENAI__<KEY>` in the environment).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// API base URL, e.g. an emulator or a proxy; defaults to `OPENAI_BASE_URL`, else
    /// `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// Longest a ChatGPT call may take (flytekit: 10 s); the RPC deadline also bounds it.
    #[serde(with = "humantime_serde")]
    pub chat_timeout: Duration,
    /// Longest a Batch API call may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How far back a repeated CreateTask looks for the batch its attempt started: by
    /// default the batch completion window (24h), since a create can be repeated as long
    /// as Propeller still waits for the task.
    #[serde(with = "humantime_serde")]
    pub batch_lookback: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: std::env::var("OPENAI_BASE_URL").ok().filter(|u| !u.is_empty()),
            chat_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(8),
            batch_lookback: Duration::from_secs(24 * 3600),
        }
    }
}
