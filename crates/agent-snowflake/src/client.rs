//! The SQL API client: how Snowflake answers (declared once, in [`SERVICE`]) and where its
//! calls go, with a key-pair JWT ([`KeyPair`]). Retries, timeouts and trusted hosts are
//! agent-core's `RestClient`.

use agent_core::http::{Answer, Call, Failure, RestClient, Service, TokenCache, TrustedHosts};
use agent_core::prelude::*;
use reqwest::{Method, header::ACCEPT};

use crate::account::{AccountId, DOMAIN};
use crate::{config::Config, jwt::KeyPair};

/// The agent secrets, named as flytekit names the key.
pub(crate) const KEY_SECRET: &str = "snowflake_private_key";
pub(crate) const PASSPHRASE_SECRET: &str = "snowflake_private_key_passphrase";

/// How the SQL API answers: errors say `{"message": ...}`; a 422 carries a statement's
/// failure or cancellation, a result like 200 and 202; 404 is a statement it does not know.
pub(crate) const SERVICE: Service =
    Service::new("Snowflake", "Check that the user's RSA_PUBLIC_KEY matches the secret snowflake_private_key")
        .with_answers(&[422]);

/// The SQL API, and the JWTs made for it (bounded: their keys are request data).
#[derive(Debug)]
pub(crate) struct Client {
    rest: RestClient,
    jwts: TokenCache,
    base_url: Option<String>,
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        // Tokens go to account hosts below Snowflake's domain or, when the operator set
        // one, only to the base URL (an emulator, a proxy, a private link host).
        let trusted = match &config.base_url {
            Some(base) => TrustedHosts::new("snowflake.base_url").origin(base, "snowflake.base_url")?,
            None => TrustedHosts::new("snowflake.allowed_accounts").domain(DOMAIN),
        };
        let user_agent = concat!("flyte-agent-snowflake/", env!("CARGO_PKG_VERSION"));
        let rest = RestClient::new(SERVICE, "snowflake", user_agent, &config.rest, trusted)?;
        let base_url = config.base_url.as_ref().map(|u| u.trim_end_matches('/').to_owned());
        Ok(Self { rest, jwts: TokenCache::default(), base_url })
    }

    /// The URL of `path` for `account`.
    pub(crate) fn url(&self, account: &AccountId, path: &str) -> String {
        let base = self.base_url.clone().unwrap_or_else(|| format!("https://{}", account.host()));
        format!("{base}{path}")
    }

    /// One SQL API call as `who` (an account and a user).
    pub(crate) async fn call(&self, ctx: &Context, who: (&AccountId, &str), call: Call<'_>) -> Result<Answer, Failure> {
        let post = call.method == Method::POST;
        let shape = |r: reqwest::RequestBuilder, attempt| {
            let r = r.header("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT").header(ACCEPT, "application/json");
            // Tell Snowflake a resubmission with the same requestId is a retry.
            if post && attempt > 1 { r.query(&[("retry", "true")]) } else { r }
        };
        self.rest.call(ctx, call, &KeyPair(&self.jwts, who.0, who.1), shape).await
    }
}
