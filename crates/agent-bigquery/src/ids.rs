//! The ids BigQuery requests are built from, checked before any request is: a template's
//! `ProjectID`/`Location`/`Domain` (and flytekit version) and a resource meta's `job_id`/`project`/`location` come
//! from outside, and an id with `/`, `%2F` or a line break would reach another endpoint or
//! another header. The rules are BigQuery's own; values are never echoed, since they may
//! hold control characters.

use agent_core::prelude::*;

/// What a rule allows, for messages.
const JOB_ID_RULE: &str = "letters, digits, '_' and '-', at most 1024 characters";
const PROJECT_RULE: &str =
    "lowercase letters, digits and '-', optionally after a legacy 'domain:' prefix, at most 128 characters";
const LOCATION_RULE: &str = "letters, digits and '-', at most 64 characters";
const HEADER_RULE: &str = "printable ASCII without control characters, at most 256 characters";

/// BigQuery job ids: letters, digits, `_`, `-`; at most 1024.
fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 1024 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Google Cloud project ids (lowercase letters, digits, `-`), with the legacy
/// domain-scoped form `example.com:project`.
fn is_project(id: &str) -> bool {
    let (domain, project) = id.rsplit_once(':').map_or((None, id), |(d, p)| (Some(d), p));
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    id.len() <= 128
        && plain(project)
        && domain.is_none_or(|d| {
            !d.is_empty() && d.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        })
}

/// BigQuery locations: `US`, `EU`, `us-central1`, …
fn is_location(l: &str) -> bool {
    !l.is_empty() && l.len() <= 64 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Flyte's domain, sent in the user agent as flytekit does: it must fit in a header.
fn is_header_text(s: &str) -> bool {
    s.len() <= 256 && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

fn check(ok: bool, source: &str, rule: &str) -> Result<(), AgentError> {
    if ok { Ok(()) } else { Err(AgentError::invalid_argument(format!("{source} must be {rule}"))) }
}

/// A task's `ProjectID`, `Location` (absent or empty: none), and what goes into the user
/// agent: `Domain` and the flytekit version of `template.metadata.runtime`.
pub(crate) fn check_task(
    project: &str,
    location: Option<&str>,
    domain: Option<&str>,
    runtime_version: &str,
) -> Result<(), AgentError> {
    check(is_project(project), "template.custom.ProjectID", &format!("a BigQuery project id: {PROJECT_RULE}"))?;
    if let Some(l) = location.filter(|l| !l.is_empty()) {
        check(is_location(l), "template.custom.Location", &format!("a BigQuery location: {LOCATION_RULE}"))?;
    }
    if let Some(d) = domain {
        check(is_header_text(d), "template.custom.Domain", HEADER_RULE)?;
    }
    check(is_header_text(runtime_version), "template.metadata.runtime.version", HEADER_RULE)
}

/// A meta's `job_id`, `project` and `location` (absent or empty: none).
pub(crate) fn check_meta(job_id: &str, project: &str, location: Option<&str>) -> Result<(), AgentError> {
    let not_ours = "; the meta was not written by a BigQuery agent";
    check(is_job_id(job_id), "resource meta: job_id", &format!("a BigQuery job id ({JOB_ID_RULE}){not_ours}"))?;
    check(is_project(project), "resource meta: project", &format!("a BigQuery project id ({PROJECT_RULE}){not_ours}"))?;
    if let Some(l) = location.filter(|l| !l.is_empty()) {
        check(is_location(l), "resource meta: location", &format!("a BigQuery location ({LOCATION_RULE}){not_ours}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_bigquerys_rules() {
        for ok in ["flyte_0123abcd", "bquxjob_1a2b", "A-b_9", &"j".repeat(1024)] {
            assert!(is_job_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "j%2F..%2F..", "..", "a.b", "a b", "a\nb", "é", &"j".repeat(1025)] {
            assert!(!is_job_id(bad), "{bad:?}");
        }
        for ok in ["flyte-test", "my-project-123", "google.com:my-project", "example.co.uk:p1"] {
            assert!(is_project(ok), "{ok}");
        }
        for bad in ["", "Flyte", "a_b", "a/b", "a%2Fb", ":p", "d:", "a:b:c", "p\r\n", &"p".repeat(129)] {
            assert!(!is_project(bad), "{bad:?}");
        }
        for ok in ["US", "EU", "us-central1", "asia-northeast1"] {
            assert!(is_location(ok), "{ok}");
        }
        for bad in ["", "us/central1", "US\n", "us central", "us_central1"] {
            assert!(!is_location(bad), "{bad:?}");
        }
        for ok in ["", "development", "dev team"] {
            assert!(is_header_text(ok), "{ok}");
        }
        for bad in ["dev\r\nX-Injected: 1", "dev\0", "dev\x7f", "dév"] {
            assert!(!is_header_text(bad), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_key_and_never_echo_the_value() {
        let e = check_task("p\r\nX-Evil: 1", None, None, "").unwrap_err();
        assert!(
            matches!(&e, AgentError::InvalidArgument(m) if m.contains("template.custom.ProjectID") && !m.contains("Evil"))
        );
        let e = check_task("p", Some("US"), Some("dev\nX-Evil: 1"), "1.16.31").unwrap_err();
        assert!(
            matches!(&e, AgentError::InvalidArgument(m) if m.contains("template.custom.Domain") && !m.contains("Evil"))
        );
        let e = check_meta("a/../b", "p", None).unwrap_err();
        assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains("job_id") && !m.contains("a/../b")));
        let e = check_task("p", None, None, "1.0\r\nX-Evil: 1").unwrap_err();
        assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains("runtime.version") && !m.contains("Evil")));
        assert!(check_meta("j", "p", Some("")).is_ok() && check_task("p", Some(""), None, "").is_ok());
    }
}
