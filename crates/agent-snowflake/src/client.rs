//! The SQL API client: how Snowflake answers (declared once, in [`SERVICE`]) and where its
//! calls go, with a key-pair JWT ([`KeyPair`]). Retries, timeouts and trusted hosts are
//! agent-core's `RestClient`.

use agent_core::http::{Answer, Call, Failure, RestClient, Service, TokenCache, TrustedHosts};
use agent_core::prelude::*;
use reqwest::{Method, header::ACCEPT};

use crate::account::{AccountId, DOMAIN};
use crate::{config::Config, jwt::KeyPair};

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
        let rest = RestClient::new(SERVICE, "snowflake", &config.rest, trusted)?;
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const KEY: &str = include_str!("../tests/fixtures/rsa_key.p8");

    /// A loopback server answering the given statuses in turn, recording each request.
    async fn scripted(statuses: &'static [u16]) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for status in statuses {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 64 * 1024];
                let n = sock.read(&mut buf).await.unwrap();
                log.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let body = r#"{"statementHandle":"01b2","message":"m"}"#;
                let head =
                    format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                sock.write_all(format!("{head}{body}").as_bytes()).await.unwrap();
            }
        });
        (base, seen)
    }

    #[tokio::test]
    async fn a_resubmission_says_it_is_a_retry_and_every_attempt_carries_the_key_pair_jwt() {
        let (base, seen) = scripted(&[503, 200, 503, 200]).await;
        let client = Client::new(&Config { base_url: Some(base), ..Config::default() }).unwrap();
        let ctx = Context::new(
            TaskCategory::new("snowflake", 0),
            agent_core::testing::secrets(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", KEY)]),
        )
        .with_deadline(Some(Instant::now() + Duration::from_secs(5)));
        let account = AccountId::parse("xy12345", "account").unwrap();
        let url = client.url(&account, "/api/v2/statements");
        let body = json!({"statement": "select 1"});
        let submit = Call::new("statement submission", &Method::POST, &url).query(&[("async", "true")]).json(&body);
        assert_eq!(client.call(&ctx, (&account, "u"), submit).await.unwrap().status, 200);
        let status = Call::new("statement status check", &Method::GET, &url);
        assert_eq!(client.call(&ctx, (&account, "u"), status).await.unwrap().status, 200);
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("POST /api/v2/statements?async=true HTTP/1.1"), "{}", seen[0]);
        assert!(seen[1].starts_with("POST /api/v2/statements?async=true&retry=true HTTP/1.1"), "{}", seen[1]);
        assert!(
            seen[3].starts_with("GET /api/v2/statements HTTP/1.1"),
            "a status check is no resubmission: {}",
            seen[3]
        );
        for request in seen.iter() {
            let request = request.to_ascii_lowercase();
            assert!(request.contains("x-snowflake-authorization-token-type: keypair_jwt"), "{request}");
            assert!(request.contains("accept: application/json") && request.contains("authorization: bearer ey"));
        }
    }
}
