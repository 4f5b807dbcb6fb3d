//! OpenAI clients sharing one connection pool; the key and organization are set per call,
//! since they come from the task and the (rotatable) secret.

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;

use agent_core::prelude::*;

use crate::config::Config;

/// The secret holding the API key, named as flytekit names it.
pub(crate) const KEY_SECRET: &str = "FLYTE_OPENAI_API_KEY";

/// What shared state the agents need.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    http: reqwest::Client,
    base_url: Option<String>,
}

/// How a failed call should be reported.
#[derive(Debug)]
pub(crate) enum Failure {
    /// OpenAI refused the request (4xx other than 429): the task's fault.
    Rejected(String),
    /// Throttling, server errors, timeouts, broken connections: worth retrying.
    Transient(String),
    /// OpenAI does not know the object (404).
    NotFound(String),
}

impl Clients {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        // The key goes only to the configured base URL (or OpenAI's own): a plain origin,
        // checked at start-up, and no redirect is ever followed elsewhere.
        if let Some(base) = &config.base_url {
            agent_core::http::TrustedHosts::new("openai.base_url").origin(base, "openai.base_url")?;
        }
        let http = agent_core::http::client(concat!("flyte-agent-openai/", env!("CARGO_PKG_VERSION")), None, "")?;
        Ok(Self { http, base_url: config.base_url.clone() })
    }

    /// A client for one call: the agent's key, the task's organization.
    pub(crate) fn client(&self, ctx: &Context, organization: Option<&str>) -> Result<Client<OpenAIConfig>, AgentError> {
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
        Ok(Client::build(self.http.clone(), config))
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

/// The time a call may take: the configured limit, within the caller's deadline.
pub(crate) fn budget(ctx: &Context, limit: Duration) -> Duration {
    let margin = Duration::from_millis(300);
    ctx.time_left().map_or(limit, |left| left.saturating_sub(margin).min(limit))
}

/// Classifies an error; messages are OpenAI's, never the key.
pub(crate) fn classify(e: &OpenAIError) -> Failure {
    match e {
        OpenAIError::ApiError(resp) => {
            let code = resp.status_code.as_u16();
            let msg = format!("OpenAI answered {code}: {}", resp.api_error.message);
            match code {
                404 => Failure::NotFound(msg),
                408 | 429 | 500..=599 => Failure::Transient(msg),
                _ => Failure::Rejected(msg),
            }
        }
        OpenAIError::Reqwest(err) => Failure::Transient(format!("OpenAI could not be reached: {err}")),
        OpenAIError::JSONDeserialize(err, _) => Failure::Transient(format!("OpenAI's answer could not be read: {err}")),
        other => Failure::Rejected(format!("OpenAI request failed: {other}")),
    }
}
