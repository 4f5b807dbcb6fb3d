//! The SQL API client: JWT bearer auth (cached, renewed before expiry), typed error
//! classification and retries of transient failures inside the caller's deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::Value as Json;

use agent_core::prelude::*;
use agent_core::retry::{RetryConfig, Verdict, retry};

use crate::config::Config;
use crate::jwt::{LIFETIME_SECS, Signer};

/// The agent secrets, named as flytekit names the key.
pub(crate) const KEY_SECRET: &str = "snowflake_private_key";
pub(crate) const PASSPHRASE_SECRET: &str = "snowflake_private_key_passphrase";

/// An answer from the SQL API: status and JSON body (errors included: 422 is a result).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Json,
}

/// Why a call got no answer worth reading.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Transient (429, 5xx, connection, timeout) after retries, or permanent HTTP errors.
    Http {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    Transport(String),
    Agent(AgentError),
}

impl CallError {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Http { status, message, .. } => format!("HTTP {status}: {message}"),
            Self::Transport(m) => m.clone(),
            Self::Agent(e) => e.message().to_owned(),
        }
    }

    pub(crate) fn into_agent_error(self, what: &str) -> AgentError {
        let msg = format!("Snowflake {what} failed: {}", self.describe());
        match self {
            Self::Agent(e) => e,
            Self::Http { status: 400, .. } => AgentError::invalid_argument(msg),
            Self::Http { status: 401 | 403, .. } => AgentError::permission_denied(format!(
                "{msg}. Check that the user's RSA_PUBLIC_KEY matches the secret snowflake_private_key"
            )),
            e if matches!(verdict(&e), Verdict::Retry(_)) => AgentError::unavailable(msg),
            _ => AgentError::internal(msg),
        }
    }
}

pub(crate) fn verdict(e: &CallError) -> Verdict {
    match e {
        CallError::Http { status: 408 | 429 | 500 | 502 | 503 | 504, retry_after, .. } => Verdict::Retry(*retry_after),
        CallError::Transport(_) => Verdict::Retry(None),
        _ => Verdict::Fail,
    }
}

/// The HTTP client and the JWT cache.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    jwts: Mutex<HashMap<String, (Secret, Instant)>>,
    pub(crate) retry: RetryConfig,
    attempt_timeout: Duration,
    base_url: Option<String>,
}

/// Who runs statements where.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Account<'a> {
    pub(crate) account: &'a str,
    pub(crate) user: &'a str,
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("flyte-agent-snowflake/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("snowflake: cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            jwts: Mutex::new(HashMap::new()),
            retry: RetryConfig { default_budget: config.retry_budget, ..RetryConfig::default() },
            attempt_timeout: config.attempt_timeout,
            base_url: config.base_url.clone().map(|u| u.trim_end_matches('/').to_owned()),
        })
    }

    fn url(&self, account: &str, path: &str) -> String {
        match &self.base_url {
            Some(base) => format!("{base}{path}"),
            None => format!("https://{account}.snowflakecomputing.com{path}"),
        }
    }

    /// A JWT for the account and user, reusing one until five minutes before it expires.
    /// The key is read from the secret each time a token is made, so rotations apply.
    fn jwt(&self, ctx: &Context, who: Account<'_>) -> Result<Secret, AgentError> {
        let pem = ctx.secret(KEY_SECRET)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.expose().as_bytes());
        let key = format!("{}|{}|{:x?}", who.account, who.user, &digest.as_ref()[..8]);
        let mut cache = self.jwts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((t, renew_at)) = cache.get(&key)
            && *renew_at > Instant::now()
        {
            return Ok(t.clone());
        }
        let passphrase = ctx.optional_secret(PASSPHRASE_SECRET)?;
        let signer = Signer::from_pem(pem.expose(), passphrase.as_ref().map(Secret::expose))?;
        // The fingerprint is public; operators compare it with `DESC USER`.
        tracing::debug!(
            message = "Made a Snowflake JWT.",
            account = who.account,
            user = who.user,
            fingerprint = signer.fingerprint()
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let token = Secret::new(signer.token(who.account, who.user, now)?);
        let renew_at = Instant::now() + Duration::from_secs(LIFETIME_SECS - 300);
        cache.insert(key, (token.clone(), renew_at));
        Ok(token)
    }

    /// One SQL API call with retries. Statuses the API uses for results (200, 202, 422)
    /// and for unknown statements (404) are answers; others are errors.
    pub(crate) async fn call(
        &self,
        ctx: &Context,
        who: Account<'_>,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Json>,
    ) -> Result<Answer, CallError> {
        let deadline = self.retry.deadline(ctx);
        let url = self.url(who.account, path);
        let mut attempt = 0_u32;
        retry(
            &self.retry,
            deadline,
            |left| {
                attempt += 1;
                let jwt = self.jwt(ctx, who);
                let mut req = self
                    .http
                    .request(method.clone(), &url)
                    .header("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT")
                    .header("Accept", "application/json")
                    .timeout(self.attempt_timeout.min(left))
                    .query(query);
                // Tell Snowflake a resubmission with the same requestId is a retry.
                if attempt > 1 && method == Method::POST {
                    req = req.query(&[("retry", "true")]);
                }
                if let Some(b) = body {
                    req = req.json(b);
                }
                async move {
                    let jwt = jwt.map_err(CallError::Agent)?;
                    let resp = req
                        .bearer_auth(jwt.expose())
                        .send()
                        .await
                        .map_err(|e| CallError::Transport(format!("request failed: {}", e.without_url())))?;
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse().ok())
                        .map(Duration::from_secs);
                    let bytes = resp
                        .bytes()
                        .await
                        .map_err(|e| CallError::Transport(format!("reading the answer failed: {}", e.without_url())))?;
                    let body: Option<Json> = serde_json::from_slice(&bytes).ok();
                    match (status, body) {
                        (200 | 202 | 404 | 422, Some(body)) => Ok(Answer { status, body }),
                        (200 | 202 | 422, None) => {
                            Err(CallError::Transport(format!("HTTP {status} with a body that is not JSON")))
                        }
                        (_, body) => {
                            let message = body
                                .as_ref()
                                .and_then(|b| b.get("message"))
                                .and_then(Json::as_str)
                                .unwrap_or("no message")
                                .to_owned();
                            Err(CallError::Http { status, message, retry_after })
                        }
                    }
                }
            },
            verdict,
        )
        .await
    }
}
