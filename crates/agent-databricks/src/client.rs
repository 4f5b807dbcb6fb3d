//! The Databricks REST client: how Databricks answers (declared once, in [`SERVICE`]) and
//! where Jobs API 2.1 calls go, as whom. Retries, timeouts, trusted hosts and the 401
//! refresh are agent-core's `RestClient`; the bearer token comes from the run's
//! credentials (`auth.rs`), OAuth tokens through a bounded cache, since its keys (client
//! id, namespace) come from requests.

use agent_core::http::{Call, Failure, RestClient, Service, TokenCache, TrustedHosts};
use agent_core::prelude::*;
use reqwest::Method;
use serde_json::Value as Json;

use crate::agent::DatabricksMeta;
use crate::auth::AuthType;
use crate::config::Config;

/// The agent secret holding a personal access token, named as flytekit names it.
pub(crate) const PAT_SECRET: &str = "FLYTE_DATABRICKS_ACCESS_TOKEN";

/// How Databricks answers: `{"error_code": ..., "message": ...}` from the Jobs API,
/// `{"error": ..., "error_description": ...}` from the token endpoint; a run it does not
/// know is a 404, or a 400 saying it "does not exist".
pub(crate) const SERVICE: Service =
    Service::new("Databricks", "Check the credentials the agent uses for this instance")
        .with_message(message_of)
        .with_missing(|status, message| status == 404 || (status == 400 && message.contains("does not exist")));

fn message_of(body: &Json) -> Option<String> {
    let text = |keys: [&str; 2]| keys.iter().find_map(|k| body.get(k)).and_then(Json::as_str);
    match (text(["error_code", "error"]), text(["message", "error_description"])) {
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (code, message) => code.or(message).map(str::to_owned),
    }
}

/// The HTTP client and the access tokens.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) rest: RestClient,
    pub(crate) tokens: TokenCache,
    /// The OAuth client secret for `oauth_m2m`.
    pub(crate) client_secret: Option<Secret>,
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        // Credentials (tokens, the OAuth client secret, OIDC subject tokens) go only to the
        // instances the configuration allows, whatever a template or meta names.
        let setting = "databricks.allowed_instances";
        let allowed = config.trusted_instances();
        let trusted = allowed.iter().try_fold(TrustedHosts::new(setting), |t, instance| t.origin(instance, setting))?;
        let rest = RestClient::new(SERVICE, "databricks", &config.rest, trusted)?;
        Ok(Self { rest, tokens: TokenCache::default(), client_secret: config.client_secret.clone() })
    }

    /// The workspace of a run, as its checked meta names it, reached with the task's own
    /// `token` when the request brought one (Flyte 2's `databricks_token`).
    pub(crate) fn at<'a>(
        &'a self,
        meta: &'a DatabricksMeta,
        token: Option<Secret>,
    ) -> Result<Workspace<'a>, AgentError> {
        Ok(Workspace { client: self, meta, kind: meta.kind()?, token })
    }
}

/// Where a run's calls go and as whom (its bearer tokens: `auth.rs`).
#[derive(Debug, Clone)]
pub(crate) struct Workspace<'a> {
    pub(crate) client: &'a Client,
    /// Checked: the instance is allowed, the token file is the agent's.
    pub(crate) meta: &'a DatabricksMeta,
    pub(crate) kind: AuthType,
    /// The task's own token, which replaces the agent's credentials for its calls.
    pub(crate) token: Option<Secret>,
}

impl Workspace<'_> {
    /// One Jobs API call (`path` names it in messages, e.g. `runs/get`).
    pub(crate) async fn call(
        &self,
        ctx: &Context,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Json>,
    ) -> Result<Json, Failure> {
        let url = format!("https://{}/api/2.1/jobs/{path}", self.meta.databricks_instance);
        let call = Call { body, ..Call::new(path, &method, &url).query(query) };
        Ok(self.client.rest.call(ctx, call, self, |r, _| r).await?.body)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_client_bounds_its_token_cache() {
        let client = Client::new(&Config::default()).unwrap();
        for i in 0..5000 {
            let fetch = || async { Ok::<_, ()>((Secret::new("token-value-1"), Duration::from_secs(3600))) };
            client.tokens.get_or_fetch(&format!("host|oauth_m2m|client-{i}||ns-{i}"), None, fetch).await.unwrap();
        }
        assert!(client.tokens.len() <= agent_core::http::DEFAULT_CAPACITY, "{} tokens", client.tokens.len());
    }

    #[test]
    fn errors_name_databricks_codes_and_missing_runs() {
        let body = serde_json::json!({"error_code": "INVALID_PARAMETER_VALUE", "message": "Run 9 does not exist."});
        assert_eq!(SERVICE.message_in(Some(&body)), "INVALID_PARAMETER_VALUE: Run 9 does not exist.");
        let body = serde_json::json!({"error": "invalid_client", "error_description": "unknown client"});
        assert_eq!(SERVICE.message_in(Some(&body)), "invalid_client: unknown client");
        assert!(matches!(SERVICE.status("runs/get", 400, "Run 9 does not exist.", None), Failure::Missing(_)));
        assert!(matches!(SERVICE.status("runs/get", 404, "", None), Failure::Missing(_)));
        assert!(!matches!(SERVICE.status("runs/submit", 400, "bad spec", None), Failure::Missing(_)));
    }
}
