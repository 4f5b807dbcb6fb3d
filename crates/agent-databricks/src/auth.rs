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
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr)]
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

    pub(crate) fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Where the agent looks for the federation JWT when its configuration names no file.
pub(crate) const DEFAULT_OIDC_TOKEN_FILE: &str = "/var/run/secrets/databricks/token";

/// The files looked for when the configuration names none: the workload identity token
/// Kubernetes projects for AWS, then Databricks' conventional mount.
fn default_token_files() -> Vec<String> {
    let aws = std::env::var("AWS_WEB_IDENTITY_TOKEN_FILE").ok().filter(|f| !f.trim().is_empty());
    aws.into_iter().chain([DEFAULT_OIDC_TOKEN_FILE.to_owned()]).collect()
}

/// The token file a template or meta names, accepted only when it is one the agent's
/// configuration already gives (the configured one, else the defaults; a Python agent's
/// meta stores the path it used). Nothing a request says can add to them, since the file's
/// content is sent as the subject token: anything else is refused before any file or
/// network I/O, with one answer whatever the file is, so a request can neither read nor
/// probe the agent's filesystem.
pub(crate) fn checked_token_file(
    named: Option<&str>,
    config: &Config,
    source: &str,
) -> Result<Option<String>, AgentError> {
    let Some(named) = named.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(config.oidc_token_file.clone());
    };
    if config.oidc_token_file.clone().map_or_else(default_token_files, |f| vec![f]).iter().any(|f| f == named) {
        return Ok(Some(named.to_owned()));
    }
    Err(AgentError::permission_denied(format!(
        "{source} names an OIDC token file other than the agent's: this agent reads the federation token only \
         from the file its configuration names. Set databricks.oidc_token_file (FLYTE_DATABRICKS_OIDC_TOKEN_FILE) \
         on the agent and leave databricksOidcTokenFile off the task"
    )))
}

/// Who a run's calls act as, rebuilt from its resource meta for every call.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub(crate) kind: AuthType,
    pub(crate) client_id: Option<String>,
    /// Checked by [`checked_token_file`].
    pub(crate) oidc_token_file: Option<String>,
    pub(crate) namespace: String,
    /// A PAT the Python agent stored in its meta: used for that run only, never re-emitted.
    pub(crate) stored_token: Option<Secret>,
}

impl Credentials {
    /// The federation JWT file: the checked one, else the first default that exists.
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

impl http::Auth for Workspace<'_> {
    /// A PAT as it is; an OAuth access token from the bounded cache (one per instance and
    /// identity, fetched by one caller for all, fetched again once when refused).
    async fn bearer(&self, ctx: &Context, refused: Option<&Secret>) -> Result<Option<Secret>, Failure> {
        let c = self.creds;
        if c.kind == AuthType::Pat {
            return Ok(Some(match &c.stored_token {
                Some(t) => t.clone(),
                None => ctx.secret(PAT_SECRET)?,
            }));
        }
        let (id, file) = (c.client_id.as_deref().unwrap_or_default(), c.oidc_token_file.as_deref().unwrap_or_default());
        let key = format!("{}|{}|{id}|{file}|{}", self.instance, c.kind.as_str(), c.namespace);
        Ok(Some(self.client.tokens.get_or_fetch(&key, refused, || self.exchange(ctx)).await?))
    }

    fn refreshable(&self) -> bool {
        self.creds.kind != AuthType::Pat
    }
}

impl Workspace<'_> {
    /// Gets an access token and its lifetime from the instance's `/oidc/v1/token`.
    async fn exchange(&self, ctx: &Context) -> Result<(Secret, Duration), Failure> {
        let kind = self.creds.kind.as_str();
        let client_id = self.creds.client_id.as_deref().ok_or_else(|| {
            AgentError::failed_precondition(format!(
                "databricksAuthType {kind} needs an OAuth client id: set databricksClientId on the task or \
                 DATABRICKS_CLIENT_ID on the agent"
            ))
        })?;
        // The host first: nothing is read or sent for an instance the agent does not trust.
        let url = format!("https://{}/oidc/v1/token", self.instance);
        self.client.rest.check(&url)?;
        // The subject token read from the file, or the client secret, is held as a `Secret`
        // until the exchange is over, so an echo of it in any answer is scrubbed.
        let oidc = self.creds.kind == AuthType::OidcFederation;
        let credential = if oidc {
            let file = self.creds.token_file()?;
            let jwt = std::fs::read_to_string(&file)
                .map_err(|e| AgentError::failed_precondition(format!("cannot read the OIDC token file {file}: {e}")))?;
            Secret::new(jwt.trim())
        } else {
            self.client.client_secret.clone().ok_or_else(|| {
                AgentError::failed_precondition(
                    "oauth_m2m needs the OAuth client secret: set DATABRICKS_CLIENT_SECRET on the agent \
                     (this agent does not read per-namespace Kubernetes secrets)",
                )
            })?
        };
        let mut form = if oidc {
            vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", credential.expose()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ]
        } else {
            vec![("grant_type", "client_credentials"), ("client_secret", credential.expose())]
        };
        form.extend([("scope", "all-apis"), ("client_id", client_id)]);
        let call = Call::new("token exchange", &Method::POST, &url);
        let answer = self.client.rest.call(ctx, call, &Anonymous, |r, _| r.form(&form)).await;
        // The endpoint's message is scrubbed here, while the credential is still known: once
        // this returns, the subject token is no longer on the scrubber's list.
        let scrub = |m: &str| credential.scrub_from(&agent_core::secrets::redact(m));
        let body = match answer {
            Ok(answer) => answer.body,
            Err(Failure::Transient { message, retry_after }) => {
                return Err(Failure::Transient { message: scrub(&message), retry_after });
            }
            Err(Failure::Rejected(AgentError::Internal(m))) => return Err(AgentError::internal(scrub(&m)).into()),
            Err(refused) => {
                let why = scrub(refused.message());
                return Err(AgentError::permission_denied(format!(
                    "Databricks refused OAuth client '{client_id}' ({kind}): {why}"
                ))
                .into());
            }
        };
        let access = body["access_token"].as_str().filter(|t| !t.is_empty());
        let access = access.ok_or_else(|| SERVICE.unreachable("token exchange", "the answer has no access_token"))?;
        Ok((Secret::new(access), Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600))))
    }
}
