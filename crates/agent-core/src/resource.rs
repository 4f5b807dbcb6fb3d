//! What an agent reports about a job: [`Resource`] and its [`Phase`].

use std::collections::HashMap;

use prost_types::Duration;
use serde_json::{Map, Value as Json};

use crate::json::json_to_struct;
use crate::literals::Value;
use crate::pb::{admin, core};
use crate::secrets::Scrubber;

/// The phase of a job, in Flyte's terms. There is deliberately no "undefined": the
/// server always sends a phase, because Propeller reads an unset phase through the
/// deprecated `state` field, whose zero value is a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, not started.
    Queued,
    /// Waiting for capacity at the external service.
    WaitingForResources,
    /// Starting (e.g. a cluster is being provisioned).
    Initializing,
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Cancelled.
    Aborted,
    /// Failed; Flyte does not retry it.
    Failed,
    /// Failed in a way worth retrying; consumes one of the task's retries.
    RetryableFailed,
}

impl Phase {
    /// Every phase, for exhaustive tests.
    pub const ALL: [Phase; 8] = [
        Self::Queued,
        Self::WaitingForResources,
        Self::Initializing,
        Self::Running,
        Self::Succeeded,
        Self::Aborted,
        Self::Failed,
        Self::RetryableFailed,
    ];

    /// Whether the job will not change any more. Unlike flytekit's local executor,
    /// `RetryableFailed` is terminal: Propeller stops polling on it too.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Aborted | Self::Failed | Self::RetryableFailed)
    }

    /// The protocol value.
    pub fn to_proto(self) -> core::task_execution::Phase {
        use core::task_execution::Phase as P;
        match self {
            Self::Queued => P::Queued,
            Self::WaitingForResources => P::WaitingForResources,
            Self::Initializing => P::Initializing,
            Self::Running => P::Running,
            Self::Succeeded => P::Succeeded,
            Self::Aborted => P::Aborted,
            Self::Failed => P::Failed,
            Self::RetryableFailed => P::RetryableFailed,
        }
    }

    /// Reads a protocol value; `None` for `UNDEFINED` and unknown numbers.
    pub fn from_proto(value: i32) -> Option<Self> {
        use core::task_execution::Phase as P;
        match P::try_from(value).ok()? {
            P::Undefined => None,
            P::Queued => Some(Self::Queued),
            P::WaitingForResources => Some(Self::WaitingForResources),
            P::Initializing => Some(Self::Initializing),
            P::Running => Some(Self::Running),
            P::Succeeded => Some(Self::Succeeded),
            P::Aborted => Some(Self::Aborted),
            P::Failed => Some(Self::Failed),
            P::RetryableFailed => Some(Self::RetryableFailed),
        }
    }

    /// The deprecated `State` equivalent, for Propellers older than the `phase` field.
    #[allow(deprecated)]
    pub fn legacy_state(self) -> admin::State {
        match self {
            Self::Queued | Self::WaitingForResources | Self::Initializing => admin::State::Pending,
            Self::Running => admin::State::Running,
            Self::Succeeded => admin::State::Succeeded,
            Self::Aborted | Self::Failed => admin::State::PermanentFailure,
            Self::RetryableFailed => admin::State::RetryableFailure,
        }
    }

    /// Upper-case name as in the protocol, e.g. `RETRYABLE_FAILED`.
    pub fn as_str(self) -> &'static str {
        self.to_proto().as_str_name()
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A link shown in the Flyte UI next to the task (a console page, a log viewer…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLink {
    /// Label shown in the UI, e.g. "BigQuery Console".
    pub name: String,
    /// Where the link points.
    pub uri: String,
    /// How long the link stays valid, if it expires.
    pub ttl: Option<std::time::Duration>,
    /// Show the link while the task is still queued.
    pub show_while_pending: bool,
    /// Hide the link once the task has finished.
    pub hide_once_finished: bool,
    /// The service's own page for the job (a query's console page), not a log viewer:
    /// Flyte 2 shows it as a `DASHBOARD` link; Flyte 1's links have no type.
    pub dashboard: bool,
}

impl LogLink {
    /// A link with the given label and address.
    pub fn new(name: impl Into<String>, uri: impl Into<String>) -> Self {
        let (name, uri) = (name.into(), uri.into());
        Self { name, uri, ttl: None, show_while_pending: false, hide_once_finished: false, dashboard: false }
    }

    /// The link marked as the service's dashboard for the job.
    #[must_use]
    pub fn dashboard(mut self) -> Self {
        self.dashboard = true;
        self
    }

    fn to_proto(&self) -> core::TaskLog {
        core::TaskLog {
            uri: self.uri.clone(),
            name: self.name.clone(),
            message_format: 0,
            ttl: self.ttl.and_then(|d| Duration::try_from(d).ok()),
            show_while_pending: self.show_while_pending,
            hide_once_finished: self.hide_once_finished,
        }
    }
}

/// Where a failure came from, for `AgentError.origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOrigin {
    /// Not known.
    Unknown,
    /// The user's task (bad query, bad code).
    User,
    /// The platform or the external service.
    System,
}

/// Structured failure details sent as `Resource.agent_error` (Propeller 1.16 uses
/// `code` as the Flyte error code on the sync path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureDetail {
    /// Short error code, e.g. the external service's error reason.
    pub code: String,
    /// Whether retrying may help.
    pub recoverable: bool,
    /// Who is to blame.
    pub origin: FailureOrigin,
}

/// Longest `Resource.message` sent; external services can return whole stack traces.
pub const MAX_RESOURCE_MESSAGE: usize = 4096;

/// The state of a job as an agent reports it, in flytekit's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Where the job is.
    pub phase: Phase,
    /// Human-readable status or failure reason.
    pub message: String,
    /// Links for the UI.
    pub log_links: Vec<LogLink>,
    /// Outputs, when the agent produces them itself (e.g. a result table). `None` means
    /// the job writes `outputs.pb` under the output prefix, or the task has no outputs.
    pub outputs: Option<core::LiteralMap>,
    /// Agent-specific data forwarded to task events.
    pub custom_info: Option<Map<String, Json>>,
    /// Structured failure details.
    pub failure: Option<FailureDetail>,
}

impl Resource {
    /// A resource in the given phase with nothing else set.
    pub fn new(phase: Phase) -> Self {
        Self { phase, message: String::new(), log_links: Vec::new(), outputs: None, custom_info: None, failure: None }
    }
    /// `QUEUED`.
    pub fn queued() -> Self {
        Self::new(Phase::Queued)
    }
    /// `WAITING_FOR_RESOURCES` with a reason.
    pub fn waiting_for_resources(reason: impl Into<String>) -> Self {
        Self::new(Phase::WaitingForResources).with_message(reason)
    }
    /// `INITIALIZING` with a reason.
    pub fn initializing(reason: impl Into<String>) -> Self {
        Self::new(Phase::Initializing).with_message(reason)
    }
    /// `RUNNING`.
    pub fn running() -> Self {
        Self::new(Phase::Running)
    }
    /// `SUCCEEDED`.
    pub fn succeeded() -> Self {
        Self::new(Phase::Succeeded)
    }
    /// `FAILED` with the reason shown to the user; not retried.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::new(Phase::Failed).with_message(reason)
    }
    /// `RETRYABLE_FAILED` with a reason; consumes a task retry.
    pub fn retryable_failure(reason: impl Into<String>) -> Self {
        Self::new(Phase::RetryableFailed).with_message(reason)
    }
    /// `ABORTED` with a reason.
    pub fn aborted(reason: impl Into<String>) -> Self {
        Self::new(Phase::Aborted).with_message(reason)
    }

    /// A status check that could not reach the external service even after retries. The
    /// job is fine as far as anyone knows, so it is reported as still running (with why):
    /// a GetTask error would spend one of Propeller's few allowed poll failures.
    pub fn unreachable(service: &str, object: &str, detail: &str) -> Self {
        tracing::warn!(message = "Status check failed; will retry at the next poll.", service, error = %detail);
        Self::running()
            .with_message(format!("could not reach {service} to check the {object} ({detail}); will check again"))
    }

    /// Sets the message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
    /// Adds a log link.
    #[must_use]
    pub fn with_log_link(mut self, link: LogLink) -> Self {
        self.log_links.push(link);
        self
    }
    /// Replaces the outputs.
    #[must_use]
    pub fn with_outputs(mut self, outputs: core::LiteralMap) -> Self {
        self.outputs = Some(outputs);
        self
    }
    /// Adds one named output.
    #[must_use]
    pub fn with_output(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let literal = value.into().to_literal();
        self.outputs.get_or_insert_with(Default::default).literals.insert(name.into(), literal);
        self
    }
    /// Sets the custom info.
    #[must_use]
    pub fn with_custom_info(mut self, info: Map<String, Json>) -> Self {
        self.custom_info = Some(info);
        self
    }
    /// Sets structured failure details.
    #[must_use]
    pub fn with_failure(mut self, failure: FailureDetail) -> Self {
        self.failure = Some(failure);
        self
    }

    /// The protocol message. Always sets `phase` (and the matching legacy `state`), and
    /// bounds the message length.
    #[allow(deprecated)]
    pub fn to_proto(&self) -> admin::Resource {
        admin::Resource {
            state: self.phase.legacy_state() as i32,
            outputs: self.outputs.clone(),
            message: truncate(&self.message, MAX_RESOURCE_MESSAGE),
            log_links: self.log_links.iter().map(LogLink::to_proto).collect(),
            phase: self.phase.to_proto() as i32,
            custom_info: self.custom_info.as_ref().map(json_to_struct),
            agent_error: self.failure.as_ref().map(|f| admin::AgentError {
                code: f.code.clone(),
                kind: if f.recoverable {
                    admin::agent_error::Kind::Recoverable as i32
                } else {
                    admin::agent_error::Kind::NonRecoverable as i32
                },
                origin: match f.origin {
                    FailureOrigin::Unknown => core::execution_error::ErrorKind::Unknown as i32,
                    FailureOrigin::User => core::execution_error::ErrorKind::User as i32,
                    FailureOrigin::System => core::execution_error::ErrorKind::System as i32,
                },
            }),
        }
    }

    /// Reads a protocol message (used by the local executor). `UNDEFINED` phases fall
    /// back to the legacy `state`, as Propeller does.
    #[allow(deprecated)]
    pub fn from_proto(r: &admin::Resource) -> Self {
        let phase = Phase::from_proto(r.phase).unwrap_or(match admin::State::try_from(r.state) {
            Ok(admin::State::Pending) => Phase::Initializing,
            Ok(admin::State::Running) => Phase::Running,
            Ok(admin::State::Succeeded) => Phase::Succeeded,
            Ok(admin::State::PermanentFailure) => Phase::Failed,
            Ok(admin::State::RetryableFailure) | Err(_) => Phase::RetryableFailed,
        });
        Self {
            phase,
            message: r.message.clone(),
            log_links: r
                .log_links
                .iter()
                .map(|l| LogLink {
                    name: l.name.clone(),
                    uri: l.uri.clone(),
                    ttl: l.ttl.and_then(|d| std::time::Duration::try_from(d).ok()),
                    show_while_pending: l.show_while_pending,
                    hide_once_finished: l.hide_once_finished,
                    dashboard: false,
                })
                .collect(),
            outputs: r.outputs.clone(),
            custom_info: r.custom_info.as_ref().map(crate::json::struct_to_json),
            failure: r.agent_error.as_ref().map(|e| FailureDetail {
                code: e.code.clone(),
                recoverable: e.kind == admin::agent_error::Kind::Recoverable as i32,
                origin: match core::execution_error::ErrorKind::try_from(e.origin) {
                    Ok(core::execution_error::ErrorKind::User) => FailureOrigin::User,
                    Ok(core::execution_error::ErrorKind::System) => FailureOrigin::System,
                    _ => FailureOrigin::Unknown,
                },
            }),
        }
    }

    /// The outputs as plain values, for display.
    pub fn output_values(&self) -> Result<HashMap<String, Value>, crate::AgentError> {
        match &self.outputs {
            None => Ok(HashMap::new()),
            Some(map) => crate::literals::literal_map_to_values(map, "outputs").map(|m| m.into_iter().collect()),
        }
    }
}

impl Resource {
    /// Scrubs every text the resource carries (message, links, outputs, custom info,
    /// failure code) with `scrubber`. The service does this for every result it hands out.
    pub(crate) fn scrub(&mut self, scrubber: &Scrubber) {
        scrubber.scrub_in_place(&mut self.message);
        for link in &mut self.log_links {
            scrubber.scrub_in_place(&mut link.name);
            scrubber.scrub_in_place(&mut link.uri);
        }
        if let Some(outputs) = &mut self.outputs {
            scrub_literal_map(outputs, scrubber);
        }
        if let Some(info) = &mut self.custom_info {
            scrub_json_map(info, scrubber);
        }
        if let Some(failure) = &mut self.failure {
            scrubber.scrub_in_place(&mut failure.code);
        }
    }
}

/// Scrubs the names and every text inside the literals of `map`.
pub(crate) fn scrub_literal_map(map: &mut core::LiteralMap, scrubber: &Scrubber) {
    let literals = std::mem::take(&mut map.literals);
    map.literals = literals
        .into_iter()
        .map(|(mut name, mut literal)| {
            scrubber.scrub_in_place(&mut name);
            scrub_literal(&mut literal, scrubber);
            (name, literal)
        })
        .collect();
}

fn scrub_literal(literal: &mut core::Literal, scrubber: &Scrubber) {
    use core::literal::Value as L;
    use core::scalar::Value as S;
    for value in literal.metadata.values_mut() {
        scrubber.scrub_in_place(value);
    }
    match &mut literal.value {
        Some(L::Scalar(scalar)) => match &mut scalar.value {
            Some(S::Primitive(core::Primitive { value: Some(core::primitive::Value::StringValue(text)) })) => {
                scrubber.scrub_in_place(text);
            }
            Some(S::Blob(b)) => scrubber.scrub_in_place(&mut b.uri),
            // Encoded bytes (msgpack): a value is masked in place, keeping every length.
            Some(S::Binary(b)) => scrubber.mask_bytes(&mut b.value),
            Some(S::Schema(s)) => scrubber.scrub_in_place(&mut s.uri),
            Some(S::Error(e)) => {
                scrubber.scrub_in_place(&mut e.message);
                scrubber.scrub_in_place(&mut e.failed_node_id);
            }
            Some(S::Generic(st)) => scrub_struct(st, scrubber),
            Some(S::StructuredDataset(d)) => scrubber.scrub_in_place(&mut d.uri),
            Some(S::Union(u)) => {
                if let Some(inner) = u.value.as_mut() {
                    scrub_literal(inner, scrubber);
                }
            }
            Some(S::Primitive(_) | S::NoneType(_)) | None => {}
        },
        Some(L::Collection(c)) => c.literals.iter_mut().for_each(|l| scrub_literal(l, scrubber)),
        Some(L::Map(m)) => scrub_literal_map(m, scrubber),
        Some(L::OffloadedMetadata(o)) => scrubber.scrub_in_place(&mut o.uri),
        None => {}
    }
}

/// Scrubs the keys and strings of a protobuf `Struct` (generic literals, metric data).
pub(crate) fn scrub_struct(st: &mut prost_types::Struct, scrubber: &Scrubber) {
    let fields = std::mem::take(&mut st.fields);
    st.fields = fields
        .into_iter()
        .map(|(mut k, mut v)| {
            scrubber.scrub_in_place(&mut k);
            scrub_struct_value(&mut v, scrubber);
            (k, v)
        })
        .collect();
}

fn scrub_struct_value(v: &mut prost_types::Value, scrubber: &Scrubber) {
    use prost_types::value::Kind;
    match &mut v.kind {
        Some(Kind::StringValue(s)) => scrubber.scrub_in_place(s),
        Some(Kind::StructValue(st)) => scrub_struct(st, scrubber),
        Some(Kind::ListValue(l)) => l.values.iter_mut().for_each(|v| scrub_struct_value(v, scrubber)),
        _ => {}
    }
}

fn scrub_json_map(map: &mut Map<String, Json>, scrubber: &Scrubber) {
    let entries = std::mem::take(map);
    *map = entries
        .into_iter()
        .map(|(mut k, mut v)| {
            scrubber.scrub_in_place(&mut k);
            scrub_json(&mut v, scrubber);
            (k, v)
        })
        .collect();
}

fn scrub_json(v: &mut Json, scrubber: &Scrubber) {
    match v {
        Json::String(s) => scrubber.scrub_in_place(s),
        Json::Array(items) => items.iter_mut().for_each(|v| scrub_json(v, scrubber)),
        Json::Object(m) => scrub_json_map(m, scrubber),
        _ => {}
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    const MARK: &str = "… (truncated)";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_round_trips_and_none_is_undefined() {
        use Phase::*;
        for p in Phase::ALL {
            assert_eq!(Phase::from_proto(p.to_proto() as i32), Some(p));
            assert_ne!(p.to_proto() as i32, 0);
            let r = Resource::new(p).to_proto();
            assert_eq!(r.phase, p.to_proto() as i32);
            assert_eq!(Resource::from_proto(&r).phase, p);
        }
        assert_eq!(Phase::from_proto(0), None);
        assert_eq!(Phase::from_proto(42), None);
        assert!(RetryableFailed.is_terminal() && !Running.is_terminal());
    }

    #[test]
    #[allow(deprecated)]
    fn legacy_state_fallback_matches_propeller() {
        let mut r = admin::Resource::default();
        assert_eq!(Resource::from_proto(&r).phase, Phase::RetryableFailed, "all-default means retryable failure");
        r.state = admin::State::Succeeded as i32;
        assert_eq!(Resource::from_proto(&r).phase, Phase::Succeeded);
    }

    #[test]
    fn builders_fill_the_proto() {
        let r = Resource::succeeded()
            .with_message("done")
            .with_log_link(LogLink::new("Console", "https://example.com/j/1"))
            .with_output("y", 4_i64)
            .with_custom_info(serde_json::json!({"job": 1}).as_object().unwrap().clone())
            .with_failure(FailureDetail { code: "E1".into(), recoverable: true, origin: FailureOrigin::User })
            .to_proto();
        assert_eq!(r.message, "done");
        assert_eq!(r.log_links[0].name, "Console");
        assert!(r.outputs.unwrap().literals.contains_key("y"));
        assert!(r.custom_info.unwrap().fields.contains_key("job"));
        let e = r.agent_error.unwrap();
        assert_eq!((e.code.as_str(), e.kind, e.origin), ("E1", 1, 1));
    }

    #[test]
    fn scrubbing_reaches_every_text_and_keeps_binary_lengths() {
        use crate::literals::Value as V;
        let key = crate::secrets::ConnectionSecrets::new([("k".to_owned(), "resource-key-5a4b3c".to_owned())]).unwrap();
        let k = "resource-key-5a4b3c";
        let packed = [&[0xa0 + 19][..], k.as_bytes()].concat();
        let mut r = Resource::failed(format!("bad {k}"))
            .with_output("text", format!("said {k}"))
            .with_output("list", V::Collection(vec![V::Map([("m".to_owned(), V::String(k.into()))].into())]))
            .with_output("bin", V::Binary { value: packed.clone(), tag: "msgpack".into() })
            .with_log_link(LogLink::new(k, format!("https://x/?t={k}")))
            .with_custom_info(serde_json::json!({"deep": [{"k": k}], k: 1}).as_object().unwrap().clone())
            .with_failure(FailureDetail { code: k.into(), recoverable: false, origin: FailureOrigin::System });
        r.scrub(&key.scrubber());
        let shown = format!("{:?}", r.to_proto());
        assert!(!shown.contains(k), "{shown}");
        assert_eq!(r.message, "bad [REDACTED]");
        let bin = r.output_values().unwrap().remove("bin").unwrap();
        assert!(matches!(bin, V::Binary { value, .. } if value.len() == packed.len() && value[1..] == [b'*'; 19]));
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(5000);
        let t = truncate(&s, 100);
        assert!(t.len() <= 100 && t.ends_with("(truncated)"));
        assert!(Resource::failed(s).to_proto().message.len() <= MAX_RESOURCE_MESSAGE);
    }
}
