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
        let http = reqwest::Client::builder()
            .user_agent(concat!("flyte-agent-openai/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("openai: cannot build the HTTP client: {e}"))?;
        Ok(Self { http, base_url: config.base_url.clone() })
    }

    /// A client for one call: the agent's key, the task's organization.
    pub(crate) fn client(&self, ctx: &Context, organization: Option<&str>) -> Result<Client<OpenAIConfig>, AgentError> {
        let key = ctx.secret(KEY_SECRET)?;
        let mut config = OpenAIConfig::new().with_api_key(key.expose());
        if let Some(org) = organization.filter(|o| !o.is_empty()) {
            config = config.with_org_id(org);
        }
        if let Some(base) = &self.base_url {
            config = config.with_api_base(base.trim_end_matches('/'));
        }
        Ok(Client::build(self.http.clone(), config))
    }
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
