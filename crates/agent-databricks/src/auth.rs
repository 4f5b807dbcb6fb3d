//! How the agent authenticates to a Databricks instance, as flytekit 1.16.31 offers it:
//! a personal access token (`pat`), OAuth client credentials (`oauth_m2m`), or OIDC token
//! federation (`oidc_federation`: a workload identity JWT exchanged for an access token).
//! Settings come from the task's `custom`, else the agent's configuration, else defaults,
//! except file paths: the agent reads files only where its own configuration says.

use std::time::Duration;

use agent_core::http::{self, Anonymous, Call, Failure};
use agent_core::prelude::*;
use reqwest::Method;

use crate::client::{PAT_SECRET, SERVICE, Workspace};
use crate::config::Config;

/// The three auth types, named as flytekit names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum AuthType {
    Pat,
    OauthM2m,
    OidcFederation,
}

/// The auth types, as settings and errors list them.
pub(crate) const AUTH_TYPES: &str = "pat, oauth_m2m, oidc_federation";

impl AuthType {
    pub(crate) fn parse(s: &str) -> Result<Self, AgentError> {
        s.parse()
            .map_err(|_| AgentError::invalid_argument(format!("databricksAuthType '{s}' is not one of {AUTH_TYPES}")))
    }
}

/// The files looked for when the configuration names none: the workload identity token
/// Kubernetes projects for AWS, then Databricks' conventional mount.
fn default_token_files() -> Vec<String> {
    let aws = std::env::var("AWS_WEB_IDENTITY_TOKEN_FILE").ok().filter(|f| !f.trim().is_empty());
    aws.into_iter().chain(["/var/run/secrets/databricks/token".to_owned()]).collect()
}

/// The token file a template or meta names, accepted only when it is one the agent's
/// configuration already gives (the configured one, else the defaults; a Python agent's
/// meta stores the path it used). Nothing a request says can add to them, since the file's
/// content is sent as the subject token: anything else is refused before any file or
/// network I/O, with one answer whatever the file is, so a request can neither read nor
/// probe the agent's filesystem.
pub(crate) fn checked_token_file(file: Option<&str>, config: &Config, src: &str) -> Result<Option<String>, AgentError> {
    let Some(named) = file.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(config.oidc_token_file.clone());
    };
    if config.oidc_token_file.clone().map_or_else(default_token_files, |f| vec![f]).iter().any(|f| f == named) {
        return Ok(Some(named.to_owned()));
    }
    Err(AgentError::permission_denied(format!(
        "{src} names an OIDC token file other than the agent's: this agent reads the federation token only \
         from the file its configuration names. Set databricks.oidc_token_file (FLYTE_DATABRICKS_OIDC_TOKEN_FILE) \
         on the agent and leave databricksOidcTokenFile off the task"
    )))
}

/// The federation JWT file: the one a meta names, checked by [`checked_token_file`], else
/// the first default that exists.
pub(crate) fn token_file(checked: Option<&str>) -> Result<String, AgentError> {
    if let Some(f) = checked {
        return Ok(f.to_owned());
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

impl http::Auth for Workspace<'_> {
    /// A PAT as it is; an OAuth access token from the bounded cache (one per instance and
    /// identity, fetched by one caller for all, fetched again once when refused).
    async fn bearer(&self, ctx: &Context, refused: Option<&Secret>) -> Result<Option<Secret>, Failure> {
        let m = self.meta;
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        if self.kind == AuthType::Pat {
            // A PAT the Python agent stored in its meta is used for that run only.
            return Ok(Some(m.auth_token.clone().map_or_else(|| ctx.secret(PAT_SECRET), Ok)?));
        }
        // One access token per instance and identity.
        let key = format!(
            "{}|{}|{:?}|{:?}|{:?}",
            m.databricks_instance, self.kind, m.client_id, m.oidc_token_file, m.namespace
        );
        Ok(Some(self.client.tokens.get_or_fetch(&key, refused, || self.exchange(ctx)).await?))
    }

    fn refreshable(&self) -> bool {
        self.kind != AuthType::Pat && self.token.is_none()
    }
}

impl Workspace<'_> {
    /// Gets an access token and its lifetime from the instance's `/oidc/v1/token`.
    async fn exchange(&self, ctx: &Context) -> Result<(Secret, Duration), Failure> {
        let kind = self.kind;
        let client_id = self.meta.client_id.as_deref().ok_or_else(|| {
            AgentError::failed_precondition(format!(
                "databricksAuthType {kind} needs an OAuth client id: set databricksClientId on the task or \
                 DATABRICKS_CLIENT_ID on the agent"
            ))
        })?;
        // The host first: nothing is read or sent for an instance the agent does not trust.
        let url = format!("https://{}/oidc/v1/token", self.meta.databricks_instance);
        self.client.rest.check(&url)?;
        // The subject token read from the file, or the client secret, is held as a `Secret`
        // until the exchange is over, so an echo of it in any answer is scrubbed.
        let (field, grant, credential) = if self.kind == AuthType::OidcFederation {
            let file = token_file(self.meta.oidc_token_file.as_deref())?;
            let jwt = std::fs::read_to_string(&file)
                .map_err(|e| AgentError::failed_precondition(format!("cannot read the OIDC token file {file}: {e}")))?;
            ("subject_token", "urn:ietf:params:oauth:grant-type:token-exchange", Secret::new(jwt.trim()))
        } else {
            let secret = self.client.client_secret.clone().ok_or_else(|| {
                AgentError::failed_precondition(
                    "oauth_m2m needs the OAuth client secret: set DATABRICKS_CLIENT_SECRET on the agent \
                     (this agent does not read per-namespace Kubernetes secrets)",
                )
            })?;
            ("client_secret", "client_credentials", secret)
        };
        let mut form =
            vec![("grant_type", grant), (field, credential.expose()), ("scope", "all-apis"), ("client_id", client_id)];
        if field == "subject_token" {
            form.push(("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"));
        }
        // The endpoint's messages are scrubbed of the credential while it is still known.
        let call = Call::new("token exchange", &Method::POST, &url).scrubbing(&credential);
        let answer = self.client.rest.call(ctx, call, &Anonymous, |r, _| r.form(&form)).await;
        let body = answer
            .map_err(|f| match f {
                f @ (Failure::Transient { .. } | Failure::Busy(_) | Failure::Rejected(AgentError::Internal(_))) => f,
                refused => {
                    let why = refused.message();
                    AgentError::permission_denied(format!(
                        "Databricks refused OAuth client '{client_id}' ({kind}): {why}"
                    ))
                    .into()
                }
            })?
            .body;
        let access = body["access_token"].as_str().filter(|t| !t.is_empty());
        let access = access.ok_or_else(|| SERVICE.unreachable("token exchange", "the answer has no access_token"))?;
        Ok((Secret::new(access), Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600))))
    }
}
