//! The first REST helpers (`HttpError`, `Reply`, `read`), kept while agents move to
//! [`super::RestClient`]; removed once none uses them.

use std::time::Duration;

use serde_json::Value as Json;

use crate::error::AgentError;
use crate::retry::Verdict;

/// Why an HTTP call to an external service failed.
#[derive(Debug)]
pub enum HttpError {
    /// The service answered with an error status.
    Status {
        /// HTTP status code.
        code: u16,
        /// The service's own message.
        message: String,
        /// `Retry-After`, on throttling and server errors.
        retry_after: Option<Duration>,
    },
    /// No usable answer: connection, timeout, unreadable body.
    Transport(String),
    /// The call was not made (e.g. credentials missing); already a precise agent error.
    Agent(AgentError),
}

impl HttpError {
    /// A short description for users.
    pub fn describe(&self) -> String {
        match self {
            Self::Status { code, message, .. } => format!("HTTP {code}: {message}"),
            Self::Transport(m) => m.clone(),
            Self::Agent(e) => e.message().to_owned(),
        }
    }

    /// Transient: throttling, server errors, timeouts, broken connections.
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Status { code: 408 | 429 | 500 | 502 | 503 | 504, retry_after, .. } => Verdict::Retry(*retry_after),
            Self::Transport(_) => Verdict::Retry(None),
            _ => Verdict::Fail,
        }
    }

    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self.verdict(), Verdict::Retry(_))
    }

    /// The error for a call that failed for good: `what` names the call, `denied_hint` tells
    /// the user what to check on 401/403.
    pub fn into_agent_error(self, what: &str, denied_hint: &str) -> AgentError {
        let msg = format!("{what} failed: {}", self.describe());
        match self {
            Self::Agent(e) => e,
            Self::Status { code: 400, .. } => AgentError::invalid_argument(msg),
            Self::Status { code: 413, .. } => AgentError::invalid_argument(format!(
                "{what} failed: the service refused the request as too large (HTTP 413); make the task's inputs \
                 or statement smaller"
            )),
            Self::Status { code: 401 | 403, .. } => AgentError::permission_denied(format!("{msg}. {denied_hint}")),
            Self::Status { code: 404, .. } => AgentError::not_found(msg),
            e if e.is_transient() => AgentError::unavailable(msg),
            _ => AgentError::internal(msg),
        }
    }
}

/// An answer: status and body (`None` when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body, if JSON.
    pub body: Option<Json>,
    /// `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

impl Reply {
    /// The reply as an error, with the message `message_of` finds in the body.
    pub fn into_error(self, message_of: impl Fn(&Json) -> Option<String>) -> HttpError {
        let message = self.body.as_ref().and_then(message_of).unwrap_or_else(|| "no message".to_owned());
        let transient = self.status == 429 || self.status >= 500;
        HttpError::Status { code: self.status, message, retry_after: self.retry_after.filter(|_| transient) }
    }
}

/// Reads an answer. Only transport failures are errors here; the caller decides which
/// statuses are results. reqwest errors lose their URL, which can carry query parameters.
pub async fn read(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Reply, HttpError> {
    let resp = resp.map_err(|e| {
        // A request that cannot even be built (a header value with a line break, say) came
        // from a bad value, not from a service in trouble: retrying cannot help.
        if e.is_builder() {
            return HttpError::Agent(AgentError::invalid_argument(
                "the request could not be built: a value from the task or its resource meta is not valid in an HTTP \
                 request (e.g. a control character in a header value)",
            ));
        }
        HttpError::Transport(format!("request failed: {}", e.without_url()))
    })?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| HttpError::Transport(format!("reading the answer failed: {}", e.without_url())))?;
    Ok(Reply { status, body: serde_json::from_slice(&bytes).ok(), retry_after })
}
