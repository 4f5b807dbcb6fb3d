//! The one place an [`AgentError`] becomes a gRPC `Status`.

use tonic::{Code, Status};

use crate::error::AgentError;
use crate::resource::truncate;
use crate::secrets::redact;

/// Longest status message sent. Propeller copies it into the task's failure message,
/// which ends up in etcd; flytekit's tracebacks made that unbounded.
pub(crate) const MAX_STATUS_MESSAGE: usize = 2048;

pub(crate) fn to_status(err: &AgentError) -> Status {
    let code = match err {
        AgentError::NotFound(_) => Code::NotFound,
        AgentError::InvalidArgument(_) => Code::InvalidArgument,
        AgentError::FailedPrecondition(_) => Code::FailedPrecondition,
        AgentError::PermissionDenied(_) => Code::PermissionDenied,
        AgentError::Unavailable(_) => Code::Unavailable,
        AgentError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        AgentError::Unimplemented(_) => Code::Unimplemented,
        AgentError::Internal(_) => Code::Internal,
    };
    let message = truncate(&redact(err.message()), MAX_STATUS_MESSAGE);
    if code == Code::Internal {
        tracing::error!(message = "Request failed.", error = %message);
    } else {
        tracing::info!(message = "Request refused.", code = ?code, error = %message);
    }
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    #[test]
    fn codes_are_mapped_and_messages_bounded_and_scrubbed() {
        let cases = [
            (AgentError::not_found("x"), Code::NotFound),
            (AgentError::invalid_argument("x"), Code::InvalidArgument),
            (AgentError::failed_precondition("x"), Code::FailedPrecondition),
            (AgentError::permission_denied("x"), Code::PermissionDenied),
            (AgentError::unavailable("x"), Code::Unavailable),
            (AgentError::deadline_exceeded("x"), Code::DeadlineExceeded),
            (AgentError::unimplemented("x"), Code::Unimplemented),
            (AgentError::internal("x"), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(to_status(&e).code(), code);
        }
        let s = to_status(&AgentError::internal("y".repeat(100_000)));
        assert!(s.message().len() <= MAX_STATUS_MESSAGE);
        let secret = Secret::new("sk-live-abcdef123456");
        let s = to_status(&AgentError::permission_denied(format!("key {} rejected", secret.expose())));
        assert_eq!(s.message(), "key [REDACTED] rejected");
    }
}
