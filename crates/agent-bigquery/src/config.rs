//! Settings of the BigQuery agent: the `bigquery` section of the agent's configuration
//! (`AGENT_BIGQUERY__<KEY>` in the environment).

use agent_core::Description;
use agent_core::http::RestSettings;
use serde::{Deserialize, Serialize};

/// The variables Google's tools read, as defaults of the settings they mean.
pub(crate) const ENV: &[(&str, &str)] = &[("emulator_host", "BIGQUERY_EMULATOR_HOST")];

/// What the agent reads, for `--help` (a test keeps it equal to [`Config`]).
pub const HELP: Description = Description::of::<Config>("bigquery")
    .settings(&[
        ("emulator_host", "host:port of a BigQuery emulator: plain HTTP, anonymous credentials."),
        ("endpoint", "Another API endpoint (e.g. a private service connect address); ignored with an emulator."),
        ("ca_bundle", "Refused at start-up: Google's client takes no extra CAs (point SSL_CERT_FILE at a bundle)."),
    ])
    .flattened(RestSettings::HELP)
    .env_defaults(ENV)
    .request_secrets(&[(
        crate::credentials::KEY,
        "A Flyte 2 task's service-account key (JSON), used instead of the agent's credentials.",
    )])
    .environment(&[(
        "GOOGLE_APPLICATION_CREDENTIALS",
        "Service-account key file of the agent's Application Default Credentials (else workload identity).",
    )]);

/// `bigquery.*` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `host:port` of a BigQuery emulator: plain HTTP, anonymous credentials. When the
    /// settings leave it out, `BIGQUERY_EMULATOR_HOST`, like Google's other emulator variables.
    pub emulator_host: Option<String>,
    /// Another API endpoint (e.g. a private service connect address); ignored with an emulator.
    pub endpoint: Option<String>,
    /// Timeouts and retries (`attempt_timeout`, `retry_budget`). `ca_bundle` is refused at
    /// start-up: Google's client takes no extra CA certificates (see `SSL_CERT_FILE`).
    #[serde(flatten)]
    pub rest: RestSettings,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_keys_stay_where_they_were() {
        let json = serde_json::json!({"emulator_host": "h:1", "attempt_timeout": "3s", "retry_budget": "20s"});
        let config: Config = serde_json::from_value(json).unwrap();
        assert_eq!(config.emulator_host.as_deref(), Some("h:1"));
        assert_eq!(
            (config.rest.attempt_timeout, config.rest.retry_budget),
            (Duration::from_secs(3), Duration::from_secs(20))
        );
        assert!(serde_json::from_value::<Config>(serde_json::json!({"attempt_timeot": "3s"})).is_err());
    }

    #[test]
    fn the_description_matches_the_settings() {
        agent_core::testing::conformance::description(&HELP);
    }

    #[test]
    fn googles_emulator_variable_is_the_default_below_the_agents_own_setting() {
        let vars = [("BIGQUERY_EMULATOR_HOST", "h:1")];
        let config: Config = agent_core::testing::section("bigquery", ENV, &vars).unwrap();
        assert_eq!(config.emulator_host.as_deref(), Some("h:1"));
        let vars = [("BIGQUERY_EMULATOR_HOST", "h:1"), ("AGENT_BIGQUERY__EMULATOR_HOST", "h:2")];
        let config: Config = agent_core::testing::section("bigquery", ENV, &vars).unwrap();
        assert_eq!(config.emulator_host.as_deref(), Some("h:2"));
    }
}
