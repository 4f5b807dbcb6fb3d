//! The Databricks REST client: Jobs API 2.1 calls with a bearer token, access tokens from
//! `/oidc/v1/token` cached until shortly before they expire, one refresh on a 401, and
//! transient failures retried inside the caller's deadline. The cache is bounded: its keys
//! come from requests (client id, namespace), so it must not grow with them.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value as Json;

use agent_core::cache::TokenCache;
use agent_core::http::{HttpError, TrustedHosts};
use agent_core::prelude::*;
use agent_core::retry::{RetryConfig, retry};

use crate::auth::{Auth, AuthType};
use crate::config::Config;

/// The agent secret holding a personal access token, named as flytekit names it.
pub(crate) const PAT_SECRET: &str = "FLYTE_DATABRICKS_ACCESS_TOKEN";
/// Access tokens are renewed this long before Databricks says they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// Whether Databricks says the run does not exist.
pub(crate) fn is_missing_run(e: &HttpError) -> bool {
    matches!(e, HttpError::Status { code: 404, .. })
        || matches!(e, HttpError::Status { code: 400, message, .. } if message.contains("does not exist"))
}

/// The error for a Jobs API call that failed for good.
pub(crate) fn to_agent_error(e: HttpError, what: &str) -> AgentError {
    e.into_agent_error(&format!("Databricks {what}"), "Check the credentials the agent uses for this instance")
}

/// Where a call goes and as whom.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workspace<'a> {
    pub(crate) instance: &'a str,
    pub(crate) auth: &'a Auth,
}

/// The HTTP client and the token cache.
#[derive(Debug)]
pub(crate) struct Client {
    http: agent_core::http::Client,
    tokens: TokenCache,
    pub(crate) retry: RetryConfig,
    attempt_timeout: Duration,
    client_secret: Option<Secret>,
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        // Credentials (tokens, the OAuth client secret, OIDC subject tokens) go only to the
        // instances the configuration allows, whatever a template or meta names.
        let mut trusted = TrustedHosts::new("databricks.allowed_instances");
        for instance in config.trusted_instances() {
            trusted = trusted.origin(&instance, "databricks.allowed_instances")?;
        }
        let http = agent_core::http::Client::new(
            concat!("flyte-agent-databricks/", env!("CARGO_PKG_VERSION")),
            config.ca_bundle.as_deref(),
            "databricks.ca_bundle",
            trusted,
        )?;
        Ok(Self {
            http,
            tokens: TokenCache::default(),
            retry: RetryConfig { default_budget: config.retry_budget, ..RetryConfig::default() },
            attempt_timeout: config.attempt_timeout,
            client_secret: config.client_secret.clone(),
        })
    }

    /// A bearer token for `instance`.
    async fn token(&self, ctx: &Context, instance: &str, auth: &Auth, deadline: Instant) -> Result<Secret, HttpError> {
        if auth.kind == AuthType::Pat {
            if let Some(t) = &auth.stored_token {
                return Ok(t.clone());
            }
            return ctx.secret(PAT_SECRET).map_err(HttpError::Agent);
        }
        let key = auth.cache_key(instance);
        if let Some(t) = self.tokens.get(&key) {
            return Ok(t);
        }
        let client_id = auth.require_client_id().map_err(HttpError::Agent)?.to_owned();
        // The host first: nothing is read or sent for an instance the agent does not trust.
        let url = format!("https://{instance}/oidc/v1/token");
        self.http.check(&url).map_err(HttpError::Agent)?;
        // The subject token read from the file is a credential too: held as a `Secret` until
        // the exchange is over, so an echo of it in any answer or log line is scrubbed.
        let mut _subject: Option<Secret> = None;
        let form: Vec<(&str, String)> = match auth.kind {
            AuthType::OAuthM2m => {
                let secret = self.client_secret.as_ref().ok_or_else(|| {
                    HttpError::Agent(AgentError::failed_precondition(
                        "oauth_m2m needs the OAuth client secret: set DATABRICKS_CLIENT_SECRET on the agent \
                         (this agent does not read per-namespace Kubernetes secrets)",
                    ))
                })?;
                vec![
                    ("grant_type", "client_credentials".into()),
                    ("scope", "all-apis".into()),
                    ("client_id", client_id.clone()),
                    ("client_secret", secret.expose().to_owned()),
                ]
            }
            AuthType::OidcFederation => {
                let file = auth.token_file().map_err(HttpError::Agent)?;
                let jwt = std::fs::read_to_string(&file).map_err(|e| {
                    HttpError::Agent(AgentError::failed_precondition(format!(
                        "cannot read the OIDC token file {file}: {e}"
                    )))
                })?;
                let subject = Secret::new(jwt.trim());
                let value = subject.expose().to_owned();
                _subject = Some(subject);
                vec![
                    ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".into()),
                    ("scope", "all-apis".into()),
                    ("client_id", client_id.clone()),
                    ("subject_token", value),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".into()),
                ]
            }
            AuthType::Pat => unreachable!("handled above"),
        };
        let token_retry = RetryConfig { min_delay: Duration::from_millis(200), max_retries: 3, ..self.retry.clone() };
        let body: Json = retry(
            &token_retry,
            deadline,
            |left| {
                let req = self
                    .http
                    .request(Method::POST, &url)
                    .map(|r| r.form(&form).timeout(self.attempt_timeout.min(left)));
                async move { read(req.map_err(HttpError::Agent)?.send().await).await }
            },
            HttpError::verdict,
        )
        .await
        // The endpoint's message is scrubbed here, while the subject token is still held:
        // once this returns, the token is no longer known to the scrubber.
        .map_err(|e| match e {
            HttpError::Status { code: 400 | 401 | 403, message, .. } => {
                HttpError::Agent(AgentError::permission_denied(format!(
                    "Databricks refused OAuth client '{client_id}' ({}): {}",
                    auth.kind.as_str(),
                    agent_core::secrets::redact(&message)
                )))
            }
            HttpError::Status { code, message, retry_after } => {
                HttpError::Status { code, message: agent_core::secrets::redact(&message), retry_after }
            }
            other => other,
        })?;
        let access = body
            .get("access_token")
            .and_then(Json::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| HttpError::Transport("the token endpoint answered without an access_token".into()))?;
        let lifetime = Duration::from_secs(body.get("expires_in").and_then(Json::as_u64).unwrap_or(3600));
        let usable = lifetime.checked_sub(EXPIRY_MARGIN).unwrap_or(lifetime / 2);
        let secret = Secret::new(access);
        self.tokens.insert(key, secret.clone(), Instant::now() + usable);
        Ok(secret)
    }

    /// One Jobs API call, with retries and one token refresh on a 401.
    pub(crate) async fn call(
        &self,
        ctx: &Context,
        workspace: Workspace<'_>,
        method: Method,
        path: &str,
        query: Option<(&str, &str)>,
        body: Option<&Json>,
    ) -> Result<Json, HttpError> {
        let Workspace { instance, auth } = workspace;
        let deadline = self.retry.deadline(ctx);
        let url = format!("https://{instance}/api/2.1/jobs/{path}");
        // The host is checked before any token is fetched or sent.
        self.http.check(&url).map_err(HttpError::Agent)?;
        let send = |token: Secret, left: Duration| {
            let req = self.http.request(method.clone(), &url).map(|req| {
                let mut req = req.bearer_auth(token.expose()).timeout(self.attempt_timeout.min(left));
                if let Some(q) = query {
                    req = req.query(&[q]);
                }
                if let Some(b) = body {
                    req = req.json(b);
                }
                req
            });
            async move {
                let answer = read(req.map_err(HttpError::Agent)?.send().await).await;
                answer.map_err(|e| without_stored_token(e, auth.stored_token.as_ref()))
            }
        };
        let send = &send;
        retry(
            &self.retry,
            deadline,
            |left| async move {
                let token = self.token(ctx, instance, auth, deadline).await?;
                match send(token, left).await {
                    // An OAuth token can be revoked before it expires: fetch a new one, once.
                    Err(HttpError::Status { code: 401, .. }) if auth.kind != AuthType::Pat => {
                        self.tokens.remove(&auth.cache_key(instance));
                        let fresh = self.token(ctx, instance, auth, deadline).await?;
                        send(fresh, deadline.saturating_duration_since(Instant::now())).await
                    }
                    other => other,
                }
            },
            HttpError::verdict,
        )
        .await
    }
}

/// A token stored in a Python agent's meta is a request's value, unknown to the
/// process-wide scrubber: an echo of it is scrubbed here, before the error is logged by a
/// retry or returned.
fn without_stored_token(e: HttpError, token: Option<&Secret>) -> HttpError {
    match (e, token) {
        (HttpError::Status { code, message, retry_after }, Some(t)) => {
            HttpError::Status { code, message: t.scrub_from(&message), retry_after }
        }
        (e, _) => e,
    }
}

/// Reads an answer: JSON on success, Databricks' error message otherwise.
async fn read(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Json, HttpError> {
    let reply = agent_core::http::read(resp).await?;
    match reply.status {
        200..=299 => reply.body.ok_or_else(|| HttpError::Transport("the answer is not JSON".into())),
        _ => Err(reply.into_error(|j| {
            let code = j.get("error_code").or_else(|| j.get("error")).and_then(Json::as_str);
            let msg = j.get("message").or_else(|| j.get("error_description")).and_then(Json::as_str);
            match (code, msg) {
                (Some(c), Some(m)) => Some(format!("{c}: {m}")),
                (c, m) => c.or(m).map(str::to_owned),
            }
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_bounds_its_token_cache() {
        let client = Client::new(&Config::default()).unwrap();
        let later = Instant::now() + Duration::from_secs(3600);
        for i in 0..5000 {
            client.tokens.insert(format!("host|oauth_m2m|client-{i}||ns-{i}"), Secret::new("token-value-1"), later);
        }
        assert!(client.tokens.len() <= agent_core::cache::DEFAULT_CAPACITY, "{} tokens", client.tokens.len());
    }
}
