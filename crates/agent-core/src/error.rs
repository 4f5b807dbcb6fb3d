//! The one error type of the workspace. Agents return it; the gRPC front ends turn it
//! into a `Status` in exactly one place (`grpc::status`).
//!
//! A cloud job that *failed* is not an error: it is a [`crate::Resource`] with a failed
//! phase. `AgentError` is for requests that could not be served.

/// Why a request could not be served. Each variant maps to one gRPC status code.
///
/// Messages are shown to users (Propeller puts them in the task's failure message), so
/// they must say what is wrong and how to fix it, and must never contain secret values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// No agent serves the task category, or a named object does not exist. `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// The template, inputs or resource meta are malformed. `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// A secret or configuration value the agent needs is missing. `FAILED_PRECONDITION`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The external service refused the agent's credentials. `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// Transient trouble with the external service; the caller may retry. `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// The call ran out of time. `DEADLINE_EXCEEDED`.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The agent does not implement this operation. `UNIMPLEMENTED`.
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else: a bug or an unexpected answer. `INTERNAL`.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// `NOT_FOUND` with the given message.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    /// `INVALID_ARGUMENT` with the given message.
    pub fn invalid_argument(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
    /// `FAILED_PRECONDITION` with the given message.
    pub fn failed_precondition(msg: impl Into<String>) -> Self {
        Self::FailedPrecondition(msg.into())
    }
    /// `PERMISSION_DENIED` with the given message.
    pub fn permission_denied(msg: impl Into<String>) -> Self {
        Self::PermissionDenied(msg.into())
    }
    /// `UNAVAILABLE` with the given message.
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::Unavailable(msg.into())
    }
    /// `DEADLINE_EXCEEDED` with the given message.
    pub fn deadline_exceeded(msg: impl Into<String>) -> Self {
        Self::DeadlineExceeded(msg.into())
    }
    /// `UNIMPLEMENTED` with the given message.
    pub fn unimplemented(msg: impl Into<String>) -> Self {
        Self::Unimplemented(msg.into())
    }
    /// `INTERNAL` with the given message.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::NotFound(m)
            | Self::InvalidArgument(m)
            | Self::FailedPrecondition(m)
            | Self::PermissionDenied(m)
            | Self::Unavailable(m)
            | Self::DeadlineExceeded(m)
            | Self::Unimplemented(m)
            | Self::Internal(m) => m,
        }
    }

    /// Prefixes the message with where the problem is, e.g. `"template.custom"`.
    #[must_use]
    pub fn context(self, what: &str) -> Self {
        let wrap = |m: String| format!("{what}: {m}");
        match self {
            Self::NotFound(m) => Self::NotFound(wrap(m)),
            Self::InvalidArgument(m) => Self::InvalidArgument(wrap(m)),
            Self::FailedPrecondition(m) => Self::FailedPrecondition(wrap(m)),
            Self::PermissionDenied(m) => Self::PermissionDenied(wrap(m)),
            Self::Unavailable(m) => Self::Unavailable(wrap(m)),
            Self::DeadlineExceeded(m) => Self::DeadlineExceeded(wrap(m)),
            Self::Unimplemented(m) => Self::Unimplemented(wrap(m)),
            Self::Internal(m) => Self::Internal(wrap(m)),
        }
    }

    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::DeadlineExceeded(_))
    }

    /// HTTP-style code for the `error_code` metric label, as flytekit reports it.
    pub fn http_code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "400",
            Self::PermissionDenied(_) => "403",
            Self::NotFound(_) => "404",
            Self::FailedPrecondition(_) => "412",
            Self::Internal(_) => "500",
            Self::Unimplemented(_) => "501",
            Self::Unavailable(_) => "503",
            Self::DeadlineExceeded(_) => "504",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_prefixes_the_message() {
        let e = AgentError::invalid_argument("expected a string").context("template.custom.ProjectID");
        assert_eq!(e, AgentError::InvalidArgument("template.custom.ProjectID: expected a string".into()));
        assert!(!e.is_retryable());
        assert!(AgentError::unavailable("503").is_retryable());
        assert_eq!(AgentError::not_found("x").http_code(), "404");
    }
}
