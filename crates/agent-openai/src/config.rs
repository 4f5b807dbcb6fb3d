//! Settings of the OpenAI agents: the `openai` section of the configuration.

use std::time::Duration;

use agent_core::Description;
use agent_core::http::RestSettings;
use serde::{Deserialize, Serialize};

use crate::client::KEY_SECRET;

/// The variables OpenAI's SDKs read, as defaults of the settings they mean.
pub(crate) const ENV: &[(&str, &str)] = &[("base_url", "OPENAI_BASE_URL")];

/// What the agents read, for `--help` (a test keeps it equal to [`Config`]).
pub const HELP: Description = Description::of::<Config>("openai")
    .settings(&[
        ("base_url", "API base URL, e.g. an emulator or a proxy (else https://api.openai.com/v1)."),
        ("chat_timeout", "Longest a ChatGPT call may take (flytekit: 10s); the RPC deadline also bounds it."),
        ("request_timeout", "The older name of attempt_timeout (each Batch API attempt); when set, it wins."),
        ("batch_lookback", "How far back a repeated CreateTask looks for its batch (the completion window)."),
    ])
    .flattened(RestSettings::HELP)
    .env_defaults(ENV)
    .secrets(&[(KEY_SECRET, "The OpenAI API key.")]);

/// `openai.*` settings (`AGENT_OPENAI__<KEY>` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// API base URL, e.g. an emulator or a proxy; defaults to `OPENAI_BASE_URL`, else
    /// `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// Longest a ChatGPT call may take (flytekit: 10 s); the RPC deadline also bounds it.
    #[serde(with = "humantime_serde")]
    pub chat_timeout: Duration,
    /// The older name of `attempt_timeout` (the longest Batch API call), still accepted;
    /// when set, it wins. ChatGPT's attempts take `chat_timeout`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// How far back a repeated CreateTask looks for the batch its attempt started: by
    /// default the batch completion window (24h), since a create can be repeated as long
    /// as Propeller still waits for the task.
    #[serde(with = "humantime_serde")]
    pub batch_lookback: Duration,
    /// Timeouts, retries and the extra CA bundle (`attempt_timeout`, `retry_budget`, `ca_bundle`).
    #[serde(flatten)]
    pub rest: RestSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: None,
            chat_timeout: Duration::from_secs(10),
            request_timeout: None,
            batch_lookback: Duration::from_secs(24 * 3600),
            rest: RestSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_matches_the_settings() {
        agent_core::testing::conformance::description(&HELP);
    }

    #[test]
    fn the_old_key_request_timeout_is_still_read_beside_the_kits_keys() {
        let c: Config =
            serde_json::from_value(serde_json::json!({"request_timeout": "3s", "retry_budget": "9s"})).unwrap();
        assert_eq!((c.request_timeout, c.rest.retry_budget), (Some(Duration::from_secs(3)), Duration::from_secs(9)));
        let c: Config =
            serde_json::from_value(serde_json::json!({"attempt_timeout": "2s", "ca_bundle": "/x.pem"})).unwrap();
        assert_eq!((c.request_timeout, c.rest.attempt_timeout), (None, Duration::from_secs(2)));
        assert!(serde_json::from_value::<Config>(serde_json::json!({"request_timout": "3s"})).is_err());
    }
}
