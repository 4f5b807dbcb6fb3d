//! How the agent authenticates to a Databricks instance, as flytekit 1.16.31 offers it:
//! a personal access token (`pat`), OAuth client credentials (`oauth_m2m`), or OIDC token
//! federation (`oidc_federation`: a workload identity JWT exchanged for an access token).
//! Settings come from the task's `custom`, else the agent's configuration, else defaults,
//! except file paths: the agent reads files only where its own configuration says.

use serde_json::{Map, Value as Json};

use agent_core::prelude::*;

use crate::config::Config;

/// The three auth types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthType {
    Pat,
    OAuthM2m,
    OidcFederation,
}

impl AuthType {
    pub(crate) fn parse(s: &str) -> Result<Self, AgentError> {
        match s {
            "pat" => Ok(Self::Pat),
            "oauth_m2m" => Ok(Self::OAuthM2m),
            "oidc_federation" => Ok(Self::OidcFederation),
            other => {
                Err(AgentError::invalid_argument(format!("databricksAuthType '{other}' is not one of {AUTH_TYPES}")))
            }
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pat => "pat",
            Self::OAuthM2m => "oauth_m2m",
            Self::OidcFederation => "oidc_federation",
        }
    }
}

/// The auth types, as settings and errors list them.
pub(crate) const AUTH_TYPES: &str = "pat, oauth_m2m, oidc_federation";

/// Where the agent looks for the federation JWT when its configuration names no file.
pub(crate) const DEFAULT_OIDC_TOKEN_FILE: &str = "/var/run/secrets/databricks/token";

/// The files the agent may read the federation JWT from: the configured one, else the
/// defaults it looks for. Nothing a request says can add to them, since the file's
/// content is sent to the token endpoint as the subject token.
fn agent_token_files(config: &Config) -> Vec<String> {
    config.oidc_token_file.clone().map_or_else(default_token_files, |f| vec![f])
}

/// The files looked for when the configuration names none: the workload identity token
/// Kubernetes projects for AWS, then Databricks' conventional mount.
fn default_token_files() -> Vec<String> {
    std::env::var("AWS_WEB_IDENTITY_TOKEN_FILE")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .into_iter()
        .chain([DEFAULT_OIDC_TOKEN_FILE.to_owned()])
        .collect()
}

/// The token file a template or meta names, accepted only when it is one the agent's
/// configuration already gives (a Python agent's meta stores the path it used). Anything
/// else is refused before any file or network I/O, with one answer whatever the file is,
/// so a request can neither read nor probe the agent's filesystem.
pub(crate) fn checked_token_file(
    named: Option<&str>,
    config: &Config,
    source: &str,
) -> Result<Option<String>, AgentError> {
    let Some(named) = named.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(config.oidc_token_file.clone());
    };
    if agent_token_files(config).iter().any(|f| f == named) {
        return Ok(Some(named.to_owned()));
    }
    Err(AgentError::permission_denied(format!(
        "{source} names an OIDC token file other than the agent's: this agent reads the federation token only \
         from the file its configuration names. Set databricks.oidc_token_file (FLYTE_DATABRICKS_OIDC_TOKEN_FILE) \
         on the agent and leave databricksOidcTokenFile off the task"
    )))
}

/// Everything needed to (re)build credentials for one run; all of it but `stored_token`
/// is persisted in the resource meta, so get and delete rebuild the same auth.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub(crate) kind: AuthType,
    pub(crate) client_id: Option<String>,
    pub(crate) oauth_secret_name: Option<String>,
    pub(crate) oidc_token_file: Option<String>,
    pub(crate) oidc_audience: Option<String>,
    pub(crate) namespace: String,
    /// A PAT the Python agent stored in its meta: used for that run only, never re-emitted.
    pub(crate) stored_token: Option<Secret>,
}

fn text(custom: &Map<String, Json>, key: &str) -> Option<String> {
    custom.get(key).and_then(Json::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl Auth {
    /// Auth settings for a new run.
    pub(crate) fn for_task(custom: &Map<String, Json>, config: &Config, namespace: &str) -> Result<Self, AgentError> {
        let kind = text(custom, "databricksAuthType")
            .or_else(|| config.auth_type.as_deref().map(|k| k.trim().to_owned()))
            .unwrap_or_else(|| "pat".into());
        Ok(Self {
            kind: AuthType::parse(&kind)?,
            client_id: text(custom, "databricksClientId").or_else(|| config.client_id.clone()),
            oauth_secret_name: text(custom, "databricksOauthSecret")
                .or_else(|| config.oauth_secret_name.clone())
                .or_else(|| Some("databricks-oauth".into())),
            oidc_token_file: checked_token_file(
                text(custom, "databricksOidcTokenFile").as_deref(),
                config,
                "template.custom.databricksOidcTokenFile",
            )?,
            oidc_audience: text(custom, "databricksOidcAudience")
                .or_else(|| config.oidc_audience.clone())
                .or_else(|| Some("databricks".into())),
            namespace: namespace.to_owned(),
            stored_token: None,
        })
    }

    /// A cache key: one access token per instance and identity.
    pub(crate) fn cache_key(&self, instance: &str) -> String {
        format!(
            "{instance}|{}|{}|{}|{}",
            self.kind.as_str(),
            self.client_id.as_deref().unwrap_or_default(),
            self.oidc_token_file.as_deref().unwrap_or_default(),
            self.namespace
        )
    }

    /// The client id OAuth needs.
    pub(crate) fn require_client_id(&self) -> Result<&str, AgentError> {
        self.client_id.as_deref().ok_or_else(|| {
            AgentError::failed_precondition(format!(
                "databricksAuthType {} needs an OAuth client id: set databricksClientId on the task or \
                 DATABRICKS_CLIENT_ID on the agent",
                self.kind.as_str()
            ))
        })
    }

    /// The federation JWT file: the one checked by [`checked_token_file`] (the configured
    /// one), else the first default that exists.
    pub(crate) fn token_file(&self) -> Result<String, AgentError> {
        if let Some(f) = &self.oidc_token_file {
            return Ok(f.clone());
        }
        let candidates = default_token_files();
        candidates.iter().find(|p| std::path::Path::new(p).is_file()).cloned().ok_or_else(|| {
            AgentError::failed_precondition(format!(
                "oidc_federation needs a service account token file: set databricks.oidc_token_file \
                 (FLYTE_DATABRICKS_OIDC_TOKEN_FILE) on the agent (looked for {})",
                candidates.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn task_settings_win_over_agent_settings_and_defaults_apply() {
        let config =
            Config { auth_type: Some("oauth_m2m".into()), client_id: Some("agent-client".into()), ..Config::default() };
        let a = Auth::for_task(json!({}).as_object().unwrap(), &config, "ns").unwrap();
        assert_eq!((a.kind, a.client_id.as_deref()), (AuthType::OAuthM2m, Some("agent-client")));
        assert_eq!(a.oauth_secret_name.as_deref(), Some("databricks-oauth"));
        assert_eq!(a.oidc_audience.as_deref(), Some("databricks"));
        let config = Config { oidc_token_file: Some("/t".into()), ..config };
        let custom = json!({"databricksAuthType": "oidc_federation", "databricksClientId": "task-client", "databricksOidcTokenFile": "/t"});
        let a = Auth::for_task(custom.as_object().unwrap(), &config, "ns").unwrap();
        assert_eq!(
            (a.kind, a.client_id.as_deref(), a.token_file().unwrap().as_str()),
            (AuthType::OidcFederation, Some("task-client"), "/t")
        );
        let a =
            Auth::for_task(json!({"databricksAuthType": "oidc_federation"}).as_object().unwrap(), &config, "").unwrap();
        assert_eq!(a.token_file().unwrap(), "/t", "the configured file when the task names none");
        // A file the configuration does not name is never read, whatever the task says.
        for path in ["/proc/self/environ", "/etc/shadow", "/t/../etc/shadow", "/no/such/file"] {
            let custom = json!({"databricksAuthType": "oidc_federation", "databricksOidcTokenFile": path});
            for config in [&config, &Config::default()] {
                let err = Auth::for_task(custom.as_object().unwrap(), config, "").unwrap_err();
                assert!(
                    matches!(&err, AgentError::PermissionDenied(m) if m.contains("databricks.oidc_token_file") && !m.contains(path)),
                    "{path}: {err}"
                );
            }
        }
        let bad = json!({"databricksAuthType": "kerberos"});
        assert!(matches!(
            Auth::for_task(bad.as_object().unwrap(), &Config::default(), ""),
            Err(AgentError::InvalidArgument(_))
        ));
    }
}
