//! Service-account keys a flyte-sdk task brings (Flyte 2's `google_application_credentials`
//! connection secret, the key file's JSON): exchanged for an access token with the OAuth 2.0
//! JWT-bearer grant at the key's own `token_uri` (only an endpoint the agent trusts), the
//! token cached (bounded, keyed by a digest of the key) and handed to Google's client for
//! the calls of that request only ([`PerCall`]), never to any other request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::http::{Anonymous, Call, Failure, RestClient, RsaSigner, Service, TokenCache, TrustedHosts};
use agent_core::prelude::*;
use google_cloud_auth::credentials::{CacheableResource, Credentials, CredentialsProvider, EntityTag};
use google_cloud_auth::errors::CredentialsError;
use http::{Extensions, HeaderMap, HeaderValue, header::AUTHORIZATION};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::config::Config;

/// The connection secret flyte-sdk's BigQuery plugin names the key by.
pub(crate) const KEY: &str = "google_application_credentials";
/// Where a key file without `token_uri` exchanges its assertions.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// What the token may do: BigQuery's client asks for the same scope.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long an assertion is valid: the longest Google accepts.
const ASSERTION_SECS: u64 = 3600;

/// Google's token endpoint: `{"error": ..., "error_description": ...}`.
const TOKEN_SERVICE: Service = Service::new(
    "Google's token endpoint",
    "Check the service-account key in the task's google_application_credentials secret",
)
.with_message(|body| {
    let text = |k: &str| body.get(k).and_then(Json::as_str);
    match (text("error"), text("error_description")) {
        (Some(e), Some(d)) => Some(format!("{e}: {d}")),
        (e, d) => e.or(d).map(str::to_owned),
    }
});

/// The fields of a service-account key file the exchange uses.
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

tokio::task_local! {
    /// Whose identity the call being made uses: its request's token, or (`None`) the agent's.
    static CALL_TOKEN: Option<Secret>;
}

/// `call` with `token` as the bearer of every Google request it makes; with `None`, the
/// agent's own credentials.
pub(crate) async fn with_token<F: Future>(token: Option<&Secret>, call: F) -> F::Output {
    CALL_TOKEN.scope(token.cloned(), call).await
}

/// The credentials Google's client holds: the current call's token when its request
/// brought a key (one client serves every tenant), else the agent's own. A request made
/// outside [`with_token`] (say, from a task Google's client spawned) gets no credentials
/// at all rather than a guess: a tenant's job must never run as the agent by accident.
#[derive(Debug)]
pub(crate) struct PerCall(pub(crate) Credentials);

impl CredentialsProvider for PerCall {
    async fn headers(&self, extensions: Extensions) -> Result<CacheableResource<HeaderMap>, CredentialsError> {
        let Ok(token) = CALL_TOKEN.try_with(Option::clone) else {
            return Err(CredentialsError::from_msg(false, "a BigQuery request outside a call's scope has no identity"));
        };
        let Some(token) = token else {
            return self.0.headers(extensions).await;
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| CredentialsError::from_msg(false, "the access token is not a valid header value"))?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        Ok(CacheableResource::New { entity_tag: EntityTag::new(), data: headers })
    }

    async fn universe_domain(&self) -> Option<String> {
        self.0.universe_domain().await
    }
}

/// Exchanges the keys requests bring for access tokens.
#[derive(Debug)]
pub(crate) struct Exchange {
    rest: RestClient,
    tokens: TokenCache,
}

impl Exchange {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        // A key's assertion goes to Google's token endpoints, or to the emulator the operator
        // configured; a key file naming any other token_uri is refused before it is signed.
        let mut trusted = TrustedHosts::new("bigquery.emulator_host").domain("googleapis.com");
        if let Some(host) = &config.emulator_host {
            trusted = trusted.origin(&format!("http://{host}"), "bigquery.emulator_host")?;
        }
        Ok(Self {
            rest: RestClient::new(TOKEN_SERVICE, "bigquery", &config.rest, trusted)?,
            tokens: TokenCache::default(),
        })
    }

    /// The access token for the key the request brought, `None` when it brought none (the
    /// agent's credentials apply), and `FAILED_PRECONDITION` when the task `declared` one
    /// that did not come. A token endpoint's passing trouble is a transient [`Failure`].
    pub(crate) async fn token(&self, ctx: &Context, declared: bool) -> Result<Option<Secret>, Failure> {
        let Some(file) = ctx.task_credential(KEY, declared)? else { return Ok(None) };
        // serde's message may quote the text it read (a key file encoded twice is one JSON
        // string holding the key): only its kind and position are said.
        let key: KeyFile = serde_json::from_str(file.expose()).map_err(|e| {
            let kind = match e.classify() {
                serde_json::error::Category::Data => "a field is missing or has the wrong type",
                serde_json::error::Category::Eof => "the JSON ends early",
                serde_json::error::Category::Syntax | serde_json::error::Category::Io => "it is not JSON",
            };
            AgentError::failed_precondition(format!(
                "the connection secret {KEY} is not a service-account key file (a JSON object with client_email and \
                 private_key): {kind} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let uri = key.token_uri.clone().filter(|u| !u.trim().is_empty()).unwrap_or_else(|| GOOGLE_TOKEN_URI.into());
        self.rest.check(&uri)?;
        // One token per account, key and endpoint; the cache keeps digests of its keys.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.private_key.as_bytes());
        let id = format!("{}|{uri}|{:x?}", key.client_email, digest.as_ref());
        self.tokens.get_or_fetch(&id, None, || self.exchange(ctx, &key, &uri)).await.map(Some)
    }

    /// The JWT-bearer grant: an assertion signed with the key, for `uri`.
    async fn exchange(&self, ctx: &Context, key: &KeyFile, uri: &str) -> Result<(Secret, Duration), Failure> {
        let signer = RsaSigner::from_pem(&key.private_key, None, KEY, None)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims =
            json!({"iss": key.client_email, "scope": SCOPE, "aud": uri, "iat": now, "exp": now + ASSERTION_SECS});
        let assertion = Secret::new(signer.sign(&json!({"kid": key.private_key_id}), &claims)?);
        let form = [("grant_type", JWT_BEARER), ("assertion", assertion.expose())];
        let call = Call::new("token exchange", &Method::POST, uri).scrubbing(&assertion);
        let answer = self.rest.call(ctx, call, &Anonymous, |r, _| r.form(&form)).await.map_err(|f| match f {
            f @ (Failure::Transient { .. } | Failure::Busy(_)) => f,
            refused => AgentError::permission_denied(format!(
                "Google refused the service account {}: {}",
                key.client_email,
                refused.message()
            ))
            .into(),
        })?;
        let token = answer.body["access_token"].as_str().filter(|t| !t.is_empty());
        let token =
            token.ok_or_else(|| TOKEN_SERVICE.unreachable("token exchange", "the answer has no access_token"))?;
        Ok((Secret::new(token), Duration::from_secs(answer.body["expires_in"].as_u64().unwrap_or(3600))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Google's client gets the call's own token inside its scope, the agent's credentials
    /// when the call brought none, and nothing at all outside any call's scope.
    #[tokio::test]
    async fn each_call_gets_its_own_identity_and_no_call_a_guessed_one() {
        let provider = PerCall(google_cloud_auth::credentials::anonymous::Builder::new().build());
        let bearer = |r: Result<CacheableResource<HeaderMap>, CredentialsError>| match r.unwrap() {
            CacheableResource::New { data, .. } => data.get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned()),
            CacheableResource::NotModified => panic!("no headers"),
        };
        let token = Secret::new("ya29.call-token");
        let own = with_token(Some(&token), provider.headers(Extensions::new())).await;
        assert_eq!(bearer(own).as_deref(), Some("Bearer ya29.call-token"));
        let agents = with_token(None, provider.headers(Extensions::new())).await;
        assert_eq!(bearer(agents), None, "the agent's (anonymous) credentials");
        assert!(provider.headers(Extensions::new()).await.is_err(), "outside a call: no identity");
    }
}
