//! One classification of a service's answer, declared once per service and applied at
//! the edge, where the answer is read: every later decision (retry, refresh, what
//! GetTask or DeleteTask report, which status the user sees) is taken from the class,
//! never from status codes again.
//!
//! REST agents get it from [`super::RestClient`]; agents on a vendor SDK (Google's
//! client, async-openai) adapt the SDK's error with [`Service::status`] and
//! [`Service::unreachable`] instead of replacing the SDK.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde_json::Value as Json;

use crate::error::AgentError;
use crate::resource::Resource;
use crate::retry::Verdict;

/// What went wrong with a call to an external service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Throttling, server errors, timeouts, broken connections: retried inside the
    /// caller's deadline; afterwards `UNAVAILABLE`, or "still running" for a status check.
    Transient {
        /// For users: the service, the call and what it answered.
        message: String,
        /// When the service asked to be called again.
        retry_after: Option<Duration>,
    },
    /// The service does not know the object (the job, the run, the statement).
    Missing(String),
    /// The service refused the credentials as invalid or expired: a refreshable
    /// credential is fetched again once; afterwards `PERMISSION_DENIED`.
    Unauthenticated(String),
    /// For good, with the status a user should see.
    Rejected(AgentError),
    /// Not sent: no slot to the service came free in time (see [`super::limit`]). Not
    /// retried (the call already waited as long as its deadline allowed); `UNAVAILABLE`
    /// for a create or cancel, "still running" for a status check, a retryable failure for
    /// a sync task.
    Busy(String),
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Self::Rejected(e)
    }
}

impl Failure {
    /// Whether another attempt may help, and when.
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Transient { retry_after, .. } => Verdict::Retry(*retry_after),
            _ => Verdict::Fail,
        }
    }

    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::Busy(_))
    }

    /// The message for users.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient { message, .. }
            | Self::Busy(message)
            | Self::Missing(message)
            | Self::Unauthenticated(message) => message,
            Self::Rejected(e) => e.message(),
        }
    }

    /// The error for a call that failed for good (after its retries).
    pub fn into_error(self) -> AgentError {
        match self {
            Self::Transient { message, .. } | Self::Busy(message) => AgentError::unavailable(message),
            Self::Missing(message) => AgentError::not_found(message),
            Self::Unauthenticated(message) => AgentError::permission_denied(message),
            Self::Rejected(e) => e,
        }
    }

    /// What GetTask reports when a status check of `object` (e.g. `"run 42"`) at
    /// `service` failed: a job the service no longer knows is a failed [`Resource`]
    /// naming it; a transient failure reports the job still running (the next poll
    /// checks again), so service trouble never fails a task; anything else is an error.
    pub fn into_poll(self, service: &str, object: &str) -> Result<Resource, AgentError> {
        match self {
            Self::Transient { message, .. } | Self::Busy(message) => {
                Ok(Resource::unreachable(service, object, &message))
            }
            Self::Missing(message) => {
                Ok(Resource::failed(format!("{service} no longer knows the {object}: {message}")))
            }
            other => Err(other.into_error()),
        }
    }

    /// The result of a sync task whose call failed: the task fails, with a retryable
    /// failure when retrying later may help (Propeller then retries the task), so service
    /// trouble is never an RPC error and never a final failure.
    pub fn into_sync_result(self) -> Resource {
        if self.is_transient() { Resource::retryable_failure(self.message()) } else { Resource::failed(self.message()) }
    }

    /// What DeleteTask reports when cancelling failed: a job that is gone needs no
    /// cancelling, so that succeeds; anything else is an error.
    pub fn into_cancel(self) -> Result<(), AgentError> {
        match self {
            Self::Missing(_) => Ok(()),
            other => Err(other.into_error()),
        }
    }
}

/// How one external service answers, declared once per agent: its name for messages,
/// what to tell users when it refuses the agent's credentials, where its error bodies
/// keep their message, which non-2xx statuses are results rather than failures, and how
/// it says an object does not exist.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Shown in messages, e.g. `"Databricks"`.
    pub name: &'static str,
    /// Appended to messages about refused credentials: what the operator should check.
    pub denied_hint: &'static str,
    /// The service's own message in an error body.
    pub message_of: fn(&Json) -> Option<String>,
    /// Statuses besides 2xx that carry a result (Snowflake's 422 for a failed statement).
    pub answers: &'static [u16],
    /// Whether a status and message say the object does not exist.
    pub is_missing: fn(u16, &str) -> bool,
}

fn top_level_message(body: &Json) -> Option<String> {
    let m = body.get("message").or_else(|| body.get("error").and_then(|e| e.get("message")).or(body.get("error")));
    m.and_then(Json::as_str).map(str::to_owned)
}

fn not_found(status: u16, _message: &str) -> bool {
    status == 404
}

impl Service {
    /// A service whose errors carry `message` (or `error.message`, or `error`), with
    /// no extra result statuses and 404 meaning "no such object".
    pub const fn new(name: &'static str, denied_hint: &'static str) -> Self {
        Self { name, denied_hint, message_of: top_level_message, answers: &[], is_missing: not_found }
    }

    /// With the service's own way of naming the message in an error body.
    #[must_use]
    pub const fn with_message(mut self, message_of: fn(&Json) -> Option<String>) -> Self {
        self.message_of = message_of;
        self
    }

    /// With statuses besides 2xx that carry results.
    #[must_use]
    pub const fn with_answers(mut self, answers: &'static [u16]) -> Self {
        self.answers = answers;
        self
    }

    /// With the service's own way of saying an object does not exist.
    #[must_use]
    pub const fn with_missing(mut self, is_missing: fn(u16, &str) -> bool) -> Self {
        self.is_missing = is_missing;
        self
    }

    /// Classifies an error status of call `what` (e.g. `"runs/get"`): throttling and
    /// server errors are transient, a missing object is missing, 401 may be refreshed,
    /// the rest are rejections with the status a user should see.
    pub fn status(&self, what: &str, status: u16, message: &str, retry_after: Option<Duration>) -> Failure {
        let name = self.name;
        let msg = format!("{name} {what} failed: HTTP {status}: {message}");
        if (self.is_missing)(status, message) {
            return Failure::Missing(msg);
        }
        match status {
            408 | 429 | 500 | 502 | 503 | 504 => Failure::Transient { message: msg, retry_after },
            401 => Failure::Unauthenticated(format!("{msg}. {}", self.denied_hint)),
            403 => Failure::Rejected(AgentError::permission_denied(format!("{msg}. {}", self.denied_hint))),
            400 => Failure::Rejected(AgentError::invalid_argument(msg)),
            413 => Failure::Rejected(AgentError::invalid_argument(format!(
                "{name} {what} failed: the service refused the request as too large (HTTP 413); make the task's \
                 inputs or statement smaller"
            ))),
            _ => Failure::Rejected(AgentError::internal(msg)),
        }
    }

    /// A call `what` that got no usable answer (connection, timeout, unreadable body).
    pub fn unreachable(&self, what: &str, detail: impl std::fmt::Display) -> Failure {
        Failure::Transient { message: format!("{} {what} failed: {detail}", self.name), retry_after: None }
    }

    /// One attempt of a vendor SDK's call `what`, cut off after `limit` (an SDK future may
    /// have no time limit of its own); its error is classified by `adapt`, the agent's
    /// reading of the SDK's errors through this service. A combinator, not an `async fn`,
    /// which would hold the SDK's future (a kilobyte or more) twice for the whole call.
    pub fn timed<'a, T, E>(
        &'a self,
        what: &'a str,
        limit: Duration,
        call: impl Future<Output = Result<T, E>> + 'a,
        adapt: impl FnOnce(&str, &E) -> Failure + 'a,
    ) -> impl Future<Output = Result<T, Failure>> + 'a {
        futures_util::FutureExt::map(tokio::time::timeout(limit, call), move |answer| match answer {
            Ok(answer) => answer.map_err(|e| adapt(what, &e)),
            Err(_) => Err(self.unreachable(what, format_args!("no answer within {} ms", limit.as_millis()))),
        })
    }

    /// The message in an error body, or a placeholder.
    pub fn message_in(&self, body: Option<&Json>) -> String {
        body.and_then(self.message_of).unwrap_or_else(|| "no message".to_owned())
    }
}

/// A `Retry-After` value in either form RFC 9110 allows: delay seconds or an HTTP date
/// (a date in the past means "now").
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Phase;

    const SVC: Service = Service::new("X", "check it");

    #[test]
    fn too_large_for_the_service_is_the_inputs_fault() {
        let e = SVC.status("call", 413, "m", None).into_error();
        assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains("too large")), "{e}");
    }

    #[test]
    fn transient_statuses_retry_and_others_map_to_codes() {
        let status = |code| SVC.status("call", code, "m", None);
        assert!(status(503).is_transient() && status(429).is_transient() && status(408).is_transient());
        assert!(SVC.unreachable("call", "connection reset").is_transient());
        assert!(!status(400).is_transient());
        assert!(
            matches!(status(403).into_error(), AgentError::PermissionDenied(m) if m == "X call failed: HTTP 403: m. check it")
        );
        assert!(matches!(status(401), Failure::Unauthenticated(_)));
        assert!(matches!(status(401).into_error(), AgentError::PermissionDenied(_)));
        assert!(matches!(status(400).into_error(), AgentError::InvalidArgument(_)));
        assert!(matches!(status(503).into_error(), AgentError::Unavailable(_)));
        assert!(matches!(status(404).into_error(), AgentError::NotFound(_)));
        assert!(matches!(status(409).into_error(), AgentError::Internal(_)));
        assert_eq!(
            SVC.status("call", 429, "slow down", Some(Duration::from_secs(3))).verdict(),
            Verdict::Retry(Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn a_service_declares_its_own_missing_objects_and_messages() {
        let svc = Service::new("Y", "")
            .with_missing(|code, m| code == 404 || (code == 400 && m.contains("does not exist")))
            .with_message(|b| b.get("detail").and_then(Json::as_str).map(str::to_owned));
        assert!(matches!(svc.status("get", 400, "Run 7 does not exist", None), Failure::Missing(_)));
        assert!(matches!(svc.status("get", 400, "bad field", None), Failure::Rejected(AgentError::InvalidArgument(_))));
        assert_eq!(svc.message_in(Some(&serde_json::json!({"detail": "d"}))), "d");
        assert_eq!(SVC.message_in(Some(&serde_json::json!({"error": {"message": "e"}}))), "e");
        assert_eq!(SVC.message_in(None), "no message");
    }

    #[test]
    fn one_poll_and_cancel_policy() {
        let missing = SVC.status("get", 404, "gone", None);
        let r = missing.clone().into_poll("X", "job 7").unwrap();
        assert_eq!(r.phase, Phase::Failed);
        assert!(r.message.contains("job 7"), "{}", r.message);
        assert_eq!(SVC.status("get", 503, "busy", None).into_poll("X", "job 7").unwrap().phase, Phase::Running);
        assert!(matches!(
            SVC.status("get", 403, "no", None).into_poll("X", "job 7"),
            Err(AgentError::PermissionDenied(_))
        ));
        assert_eq!(missing.into_cancel(), Ok(()));
        assert!(matches!(SVC.status("cancel", 503, "busy", None).into_cancel(), Err(AgentError::Unavailable(_))));
    }

    #[test]
    fn a_sync_task_is_retried_only_when_retrying_may_help() {
        let busy = SVC.status("chat", 503, "overloaded", None).into_sync_result();
        assert_eq!(
            (busy.phase, busy.message.as_str()),
            (Phase::RetryableFailed, "X chat failed: HTTP 503: overloaded")
        );
        for refused in [SVC.status("chat", 400, "bad model", None), SVC.status("chat", 404, "no such model", None)] {
            assert_eq!(refused.into_sync_result().phase, Phase::Failed);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = SystemTime::now() + Duration::from_secs(30);
        let wait = retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after("soon"), None);
    }
}
