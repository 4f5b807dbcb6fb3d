//! What every agent's REST client shares: one error type for a failed HTTP call, the retry
//! verdict for it, and reading an answer (status, `Retry-After`, JSON body) without ever
//! putting a credential in an error.

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
    let resp = resp.map_err(|e| HttpError::Transport(format!("request failed: {}", e.without_url())))?;
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

/// An HTTP client with the agent's user agent, trusting the system roots (and
/// `SSL_CERT_FILE`) plus an optional PEM bundle; `setting` names that bundle in errors.
pub fn client(user_agent: &str, ca_bundle: Option<&std::path::Path>, setting: &str) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().user_agent(user_agent);
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{setting}: {} is not a PEM bundle: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// `id`, a job handle from a resource meta, checked before it goes into a URL path. A
/// meta arrives from outside like any input: an id with `/`, `?` or `..` would send the
/// agent's credentials to another endpoint of the service.
pub fn path_id<'a>(what: &str, id: &'a str) -> Result<&'a str, AgentError> {
    let safe = !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if safe {
        Ok(id)
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(AgentError::invalid_argument(format!(
            "resource meta: {what} {shown:?} is not an id this agent issued (letters, digits, '-', '_', '.', ':')"
        )))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_plain_ids_go_into_url_paths() {
        for ok in ["01b2c3d4-0000-0000-0000-000000000001", "batch_abc123", "job.1:US"] {
            assert_eq!(super::path_id("id", ok).unwrap(), ok);
        }
        for bad in ["", ".", "..", "../admin", "a/b", "a?b=1", "a#b", "a b", "é", &"x".repeat(300)] {
            let e = super::path_id("query_id", bad).unwrap_err();
            assert!(matches!(e, AgentError::InvalidArgument(_)) && e.to_string().contains("query_id"), "{bad}: {e}");
        }
    }

    use super::*;

    #[test]
    fn transient_statuses_retry_and_others_map_to_codes() {
        let status = |code| HttpError::Status { code, message: "m".into(), retry_after: None };
        assert!(
            status(503).is_transient() && status(429).is_transient() && HttpError::Transport("x".into()).is_transient()
        );
        assert!(!status(400).is_transient());
        assert!(
            matches!(status(403).into_agent_error("X", "check it"), AgentError::PermissionDenied(m) if m == "X failed: HTTP 403: m. check it")
        );
        assert!(matches!(status(400).into_agent_error("X", ""), AgentError::InvalidArgument(_)));
        assert!(matches!(status(503).into_agent_error("X", ""), AgentError::Unavailable(_)));
    }
}
