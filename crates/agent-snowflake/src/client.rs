//! The SQL API client: JWT bearer auth (cached, renewed before expiry), typed error
//! classification and retries of transient failures inside the caller's deadline.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::Value as Json;

use agent_core::cache::TokenCache;
use agent_core::http::{HttpError, TrustedHosts};
use agent_core::prelude::*;
use agent_core::retry::{RetryConfig, retry};

use crate::account::{AccountId, DOMAIN};
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

/// The error for a SQL API call that failed for good.
pub(crate) fn to_agent_error(e: HttpError, what: &str) -> AgentError {
    e.into_agent_error(
        &format!("Snowflake {what}"),
        "Check that the user's RSA_PUBLIC_KEY matches the secret snowflake_private_key",
    )
}

/// The HTTP client and the JWT cache (bounded: its keys are request data).
#[derive(Debug)]
pub(crate) struct Client {
    http: agent_core::http::Client,
    jwts: TokenCache,
    pub(crate) retry: RetryConfig,
    attempt_timeout: Duration,
    base_url: Option<String>,
}

/// Who runs statements where: a checked account (see [`AccountId`]) and a user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Account<'a> {
    pub(crate) account: &'a AccountId,
    pub(crate) user: &'a str,
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        // Tokens go to account hosts below Snowflake's domain or, when the operator set
        // one, only to the base URL (an emulator, a proxy, a private link host).
        let trusted = match &config.base_url {
            Some(base) => TrustedHosts::new("snowflake.base_url").origin(base, "snowflake.base_url")?,
            None => TrustedHosts::new("snowflake.allowed_accounts").domain(DOMAIN),
        };
        let http = agent_core::http::Client::new(
            concat!("flyte-agent-snowflake/", env!("CARGO_PKG_VERSION")),
            None,
            "",
            trusted,
        )?;
        Ok(Self {
            http,
            jwts: TokenCache::default(),
            retry: RetryConfig { default_budget: config.retry_budget, ..RetryConfig::default() },
            attempt_timeout: config.attempt_timeout,
            base_url: config.base_url.clone().map(|u| u.trim_end_matches('/').to_owned()),
        })
    }

    fn url(&self, account: &AccountId, path: &str) -> String {
        match &self.base_url {
            Some(base) => format!("{base}{path}"),
            None => format!("https://{}{path}", account.host()),
        }
    }

    /// A JWT for the account and user, reusing one until five minutes before it expires.
    /// The key is read from the secret each time a token is made, so rotations apply.
    fn jwt(&self, ctx: &Context, who: Account<'_>) -> Result<Secret, AgentError> {
        let pem = ctx.secret(KEY_SECRET)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.expose().as_bytes());
        let key = format!("{}|{}|{:x?}", who.account.as_str(), who.user, &digest.as_ref()[..8]);
        if let Some(t) = self.jwts.get(&key) {
            return Ok(t);
        }
        let passphrase = ctx.optional_secret(PASSPHRASE_SECRET)?;
        let signer = Signer::from_pem(pem.expose(), passphrase.as_ref().map(Secret::expose))?;
        // The fingerprint is public; operators compare it with `DESC USER`.
        tracing::debug!(
            message = "Made a Snowflake JWT.",
            account = who.account.as_str(),
            user = who.user,
            fingerprint = signer.fingerprint()
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let token = Secret::new(signer.token(who.account, who.user, now)?);
        let renew_at = Instant::now() + Duration::from_secs(LIFETIME_SECS - 300);
        self.jwts.insert(key, token.clone(), renew_at);
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
    ) -> Result<Answer, HttpError> {
        let deadline = self.retry.deadline(ctx);
        let url = self.url(who.account, path);
        // The host is checked before a token is made or a byte sent; an untrusted or
        // malformed one is the request's fault, never a transient failure.
        self.http.check(&url).map_err(HttpError::Agent)?;
        let mut attempt = 0_u32;
        retry(
            &self.retry,
            deadline,
            |left| {
                attempt += 1;
                let jwt = self.jwt(ctx, who);
                let req = self.http.request(method.clone(), &url).map(|req| {
                    let mut req = req
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
                    req
                });
                async move {
                    let (jwt, req) = (jwt.map_err(HttpError::Agent)?, req.map_err(HttpError::Agent)?);
                    let reply = agent_core::http::read(req.bearer_auth(jwt.expose()).send().await).await?;
                    match (reply.status, reply.body) {
                        (status @ (200 | 202 | 404 | 422), Some(body)) => Ok(Answer { status, body }),
                        (status @ (200 | 202 | 422), None) => {
                            Err(HttpError::Transport(format!("HTTP {status} with a body that is not JSON")))
                        }
                        (status, body) => Err(agent_core::http::Reply { status, body, retry_after: reply.retry_after }
                            .into_error(|b| b.get("message").and_then(Json::as_str).map(str::to_owned))),
                    }
                }
            },
            HttpError::verdict,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../tests/fixtures/rsa_key.p8");

    #[test]
    fn forged_accounts_cannot_grow_the_token_cache() {
        let client = Client::new(&Config { base_url: Some("http://127.0.0.1:9".into()), ..Config::default() }).unwrap();
        let ctx = Context::new(
            TaskCategory::new("snowflake", 0),
            agent_core::testing::secrets(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", KEY)]),
        );
        // Each distinct account signs a token: more than the capacity is enough to show the bound.
        for i in 0..(agent_core::cache::DEFAULT_CAPACITY + 300) {
            let account = AccountId::parse(&format!("forged-{i}"), "account").unwrap();
            client.jwt(&ctx, Account { account: &account, user: "u" }).unwrap();
        }
        assert!(client.jwts.len() <= agent_core::cache::DEFAULT_CAPACITY, "{} tokens kept", client.jwts.len());
        let account = AccountId::parse("forged-500", "account").unwrap();
        let again = client.jwt(&ctx, Account { account: &account, user: "u" }).unwrap();
        let cached = client.jwt(&ctx, Account { account: &account, user: "u" }).unwrap();
        assert_eq!(again.expose(), cached.expose(), "a recent token is still reused");
    }
}
