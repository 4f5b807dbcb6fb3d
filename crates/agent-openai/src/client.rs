//! OpenAI through async-openai on the kit's pooled client (its CA bundle, user agent and
//! redirect policy apply); the key and organization are set per call, since they come
//! from the (rotatable) secret and the task. async-openai's errors are adapted into the
//! kit's [`Failure`], classified once by [`SERVICE`].

use std::future::Future;
use std::time::Duration;

use agent_core::http::{Failure, RestClient, RestSettings, Service, TrustedHosts};
use agent_core::prelude::*;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;

use crate::config::Config;

/// The secret holding the API key, named as flytekit names it.
pub(crate) const KEY_SECRET: &str = "FLYTE_OPENAI_API_KEY";

/// How OpenAI answers: `{"error": {"message": ...}}`; 404 is an object it does not know.
pub(crate) const SERVICE: Service =
    Service::new("OpenAI", "Check the agent's FLYTE_OPENAI_API_KEY secret and the task's OpenAI organization");

/// An OpenAI SDK client for one call.
pub(crate) type Sdk = async_openai::Client<OpenAIConfig>;

/// What the agents share: the pooled HTTP client, where it sends, how calls are retried.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base_url: Option<String>,
    /// How calls are timed and retried.
    pub(crate) rest: RestSettings,
}

impl Client {
    /// A client whose calls are timed and retried by `rest`.
    pub(crate) fn new(config: &Config, rest: RestSettings) -> Result<Self, String> {
        // The key goes only to the configured base URL (or OpenAI's own): a plain origin,
        // checked at start-up, and no redirect is ever followed elsewhere.
        let setting = "openai.base_url";
        let base = config.base_url.as_deref().unwrap_or("https://api.openai.com");
        let trusted = TrustedHosts::new(setting).origin(base, setting)?;
        let user_agent = concat!("flyte-agent-openai/", env!("CARGO_PKG_VERSION"));
        let http = RestClient::new(SERVICE, "openai", user_agent, &rest, trusted)?.reqwest().clone();
        Ok(Self { http, base_url: config.base_url.clone(), rest })
    }

    /// The SDK for one call: the agent's key, the task's organization.
    pub(crate) fn sdk(&self, ctx: &Context, organization: Option<&str>) -> Result<Sdk, AgentError> {
        let key = ctx.secret(KEY_SECRET)?;
        check_header_value(key.expose(), |why| {
            AgentError::failed_precondition(format!("the agent secret {KEY_SECRET} (the OpenAI API key) {why}"))
        })?;
        let mut config = OpenAIConfig::new().with_api_key(key.expose());
        if let Some(org) = organization.filter(|o| !o.is_empty()) {
            // Callers check where the value came from, to name it; this keeps a value that
            // slipped past them from reaching async-openai's panic.
            check_header_value(org, |why| AgentError::invalid_argument(format!("the OpenAI organization {why}")))?;
            config = config.with_org_id(org);
        }
        if let Some(base) = &self.base_url {
            config = config.with_api_base(base.trim_end_matches('/'));
        }
        Ok(Sdk::build(self.http.clone(), config))
    }
}

/// One SDK call `what` bounded by `limit`, its error adapted: the SDK sets no timeout of
/// its own.
pub(crate) async fn timed<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, OpenAIError>>,
) -> Result<T, Failure> {
    let answer = tokio::time::timeout(limit, call).await;
    let answer = answer.map_err(|_| SERVICE.unreachable(what, format_args!("no answer within {} ms", limit.as_millis())))?;
    answer.map_err(|e| failure(what, &e))
}

/// What an async-openai error of call `what` means; messages are OpenAI's, never the key.
pub(crate) fn failure(what: &str, e: &OpenAIError) -> Failure {
    match e {
        OpenAIError::ApiError(r) => SERVICE.status(what, r.status_code.as_u16(), &r.api_error.message, None),
        OpenAIError::Reqwest(e) => SERVICE.unreachable(what, format_args!("request failed: {e}")),
        OpenAIError::JSONDeserialize(e, _) => SERVICE.unreachable(what, format_args!("the answer is unreadable: {e}")),
        other => Failure::Rejected(AgentError::invalid_argument(format!("{} {what} failed: {other}", SERVICE.name))),
    }
}

/// Checks a value the client sends as an HTTP header (the organization, the key) before
/// the client is built: async-openai panics on a value a header cannot hold. OpenAI's ids
/// are short printable ASCII, so that is what is allowed; the value is never echoed, since
/// it may hold control characters (or be a key).
pub(crate) fn check_header_value(value: &str, invalid: impl FnOnce(String) -> AgentError) -> Result<(), AgentError> {
    const MAX: usize = 256;
    if value.len() <= MAX && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(invalid(format!(
            "must be at most {MAX} printable ASCII characters without spaces or control characters (it is sent as \
             an HTTP header)"
        )))
    }
}

/// The organization a task names, checked: `template.custom.openai_organization`.
pub(crate) fn task_organization(org: Option<String>) -> Result<Option<String>, AgentError> {
    let org = org.filter(|o| !o.is_empty());
    if let Some(o) = &org {
        check_header_value(o, |why| {
            AgentError::invalid_argument(format!(
                "template.custom.openai_organization {why}; OpenAI organization ids look like org-…"
            ))
        })?;
    }
    Ok(org)
}
