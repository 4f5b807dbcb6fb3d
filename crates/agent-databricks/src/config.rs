//! Settings of the Databricks agent: the `databricks` section of its configuration, with
//! flytekit's environment variables as defaults.

use agent_core::http::RestSettings;
use agent_core::{Description, Secret};
use serde::{Deserialize, Serialize};

use crate::agent::TOKEN_KEY;
use crate::client::PAT_SECRET;

/// flytekit's variables, as defaults of the settings they mean.
pub(crate) const ENV: &[(&str, &str)] = &[
    ("default_instance", "FLYTE_DATABRICKS_INSTANCE"),
    ("auth_type", "FLYTE_DATABRICKS_AUTH_TYPE"),
    ("client_id", "DATABRICKS_CLIENT_ID"),
    ("client_secret", "DATABRICKS_CLIENT_SECRET"),
    ("oauth_secret_name", "FLYTE_DATABRICKS_OAUTH_SECRET_NAME"),
    ("oidc_token_file", "FLYTE_DATABRICKS_OIDC_TOKEN_FILE"),
    ("oidc_audience", "FLYTE_DATABRICKS_OIDC_AUDIENCE"),
    ("service_credential_provider", "FLYTE_DATABRICKS_SERVICE_CREDENTIAL_PROVIDER"),
];

/// What the agent reads, for `--help` (a test keeps it equal to [`Config`]).
pub const HELP: Description = Description::of::<Config>("databricks")
    .settings(&[
        ("default_instance", "Instance used when a task names none."),
        ("allowed_instances", "Instances credentials may go to; empty: only default_instance. Others are refused."),
        ("auth_type", "Default auth type: pat, oauth_m2m or oidc_federation (a task may name its own)."),
        ("client_id", "Default OAuth client id, for oauth_m2m and oidc_federation."),
        ("client_secret", "OAuth client secret, for oauth_m2m."),
        ("oauth_secret_name", "flytekit's per-namespace OAuth secret name, kept in metas (no Kubernetes secret is read)."),
        (
            "oidc_token_file",
            "The only token file oidc_federation reads; unset: AWS_WEB_IDENTITY_TOKEN_FILE, else /var/run/secrets/databricks/token.",
        ),
        ("oidc_audience", "Audience of the oidc_federation token exchange; unset: databricks."),
        ("service_credential_provider", "Serverless credential provider."),
    ])
    .flattened(RestSettings::HELP)
    .env_defaults(ENV)
    .secrets(&[(PAT_SECRET, "Personal access token, for auth_type pat.")])
    .request_secrets(&[(TOKEN_KEY, "A Flyte 2 task's own token, used instead of the agent's credentials.")])
    .environment(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "The first oidc_federation token file looked for without oidc_token_file.")]);

/// `databricks.*` settings (`AGENT_DATABRICKS__<KEY>` in the environment).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Instance used when a task names none (`FLYTE_DATABRICKS_INSTANCE`).
    pub default_instance: Option<String>,
    /// Instances the agent may send credentials to. Empty means only `default_instance`;
    /// a task naming any other host is refused.
    pub allowed_instances: Vec<String>,
    /// Default auth type: `pat`, `oauth_m2m` or `oidc_federation` (`FLYTE_DATABRICKS_AUTH_TYPE`).
    pub auth_type: Option<String>,
    /// Default OAuth client id (`DATABRICKS_CLIENT_ID`).
    pub client_id: Option<String>,
    /// OAuth client secret for `oauth_m2m` (`DATABRICKS_CLIENT_SECRET`).
    #[serde(serialize_with = "agent_core::secrets::serialize_redacted")]
    pub client_secret: Option<Secret>,
    /// Name of the per-namespace OAuth secret (`FLYTE_DATABRICKS_OAUTH_SECRET_NAME`).
    pub oauth_secret_name: Option<String>,
    /// Subject token file for `oidc_federation` (`FLYTE_DATABRICKS_OIDC_TOKEN_FILE`).
    pub oidc_token_file: Option<String>,
    /// Audience for `oidc_federation` (`FLYTE_DATABRICKS_OIDC_AUDIENCE`).
    pub oidc_audience: Option<String>,
    /// Serverless credential provider (`FLYTE_DATABRICKS_SERVICE_CREDENTIAL_PROVIDER`).
    pub service_credential_provider: Option<String>,
    /// Timeouts, retries and the extra CA bundle (`attempt_timeout`, `retry_budget`, `ca_bundle`).
    #[serde(flatten)]
    pub rest: RestSettings,
}

impl Config {
    /// The instances credentials may go to: `allowed_instances`, else `default_instance`,
    /// as `host[:port]`.
    pub(crate) fn trusted_instances(&self) -> Vec<String> {
        let list =
            if self.allowed_instances.is_empty() { self.default_instance.as_slice() } else { &self.allowed_instances };
        list.iter().map(|i| crate::agent::normalize(i)).filter(|i| !i.is_empty()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use agent_core::config::{CliArgs, Settings};

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, String> {
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>();
        let settings = Settings::load(&CliArgs::default(), Some(env)).map_err(|e| e.to_string())?;
        settings.section_of(&HELP).map_err(|e| e.to_string())
    }

    /// `--help` lists every setting, and lists split from the environment and `--set`.
    #[test]
    fn the_description_matches_the_settings() {
        agent_core::testing::conformance::description(&HELP);
        let config = load(&[("AGENT_DATABRICKS__ALLOWED_INSTANCES", "a.cloud.databricks.com, b.cloud.databricks.com")]);
        assert_eq!(config.unwrap().allowed_instances, ["a.cloud.databricks.com", "b.cloud.databricks.com"]);
    }

    /// The kit's settings sit in the `databricks` section under the keys they always had.
    #[test]
    fn rest_settings_keep_their_keys_and_unknown_keys_are_refused() {
        let config = agent_core::testing::section::<Config>(
            "databricks",
            ENV,
            &[
                ("AGENT_DATABRICKS__ATTEMPT_TIMEOUT", "3s"),
                ("AGENT_DATABRICKS__RETRY_BUDGET", "20s"),
                ("AGENT_DATABRICKS__CA_BUNDLE", "/etc/private-ca.pem"),
                ("AGENT_DATABRICKS__DEFAULT_INSTANCE", "x.cloud.databricks.com"),
            ],
        )
        .unwrap();
        assert_eq!(
            (config.rest.attempt_timeout, config.rest.retry_budget),
            (Duration::from_secs(3), Duration::from_secs(20))
        );
        assert_eq!(config.rest.ca_bundle.as_deref(), Some(std::path::Path::new("/etc/private-ca.pem")));
        assert_eq!(config.default_instance.as_deref(), Some("x.cloud.databricks.com"));
        // flytekit's variables are the defaults; the agent's own settings win over them.
        let config = agent_core::testing::section::<Config>(
            "databricks",
            ENV,
            &[
                ("FLYTE_DATABRICKS_INSTANCE", "env.cloud.databricks.com"),
                ("DATABRICKS_CLIENT_SECRET", "0123456789"),
                ("AGENT_DATABRICKS__AUTH_TYPE", "oauth_m2m"),
                ("FLYTE_DATABRICKS_AUTH_TYPE", "pat"),
            ],
        )
        .unwrap();
        assert_eq!(config.default_instance.as_deref(), Some("env.cloud.databricks.com"));
        assert_eq!(config.client_secret.as_ref().map(Secret::expose), Some("0123456789"));
        assert_eq!(config.auth_type.as_deref(), Some("oauth_m2m"));
        let err = load(&[("AGENT_DATABRICKS__ATEMPT_TIMEOUT", "3s")]).unwrap_err();
        assert!(err.contains("atempt_timeout"), "{err}");
    }
}
