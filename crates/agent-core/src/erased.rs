//! Object-safe versions of the agent traits, so the registry can hold agents of
//! different types. Resource meta is encoded and decoded here, once for all agents.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::agent::{AsyncAgent, Context, Logs, LogsQuery, MetricsQuery, ResourceMeta, SyncAgent, TaskRequest};
use crate::error::AgentError;
use crate::pb::core;
use crate::resource::Resource;

pub(crate) trait DynAsyncAgent: Send + Sync {
    fn create<'a>(&'a self, ctx: &'a Context, task: Box<TaskRequest>) -> BoxFuture<'a, Result<Vec<u8>, AgentError>>;
    fn get<'a>(&'a self, ctx: &'a Context, meta: &'a [u8]) -> BoxFuture<'a, Result<Resource, AgentError>>;
    fn delete<'a>(&'a self, ctx: &'a Context, meta: &'a [u8]) -> BoxFuture<'a, Result<(), AgentError>>;
    fn get_metrics<'a>(
        &'a self,
        ctx: &'a Context,
        meta: &'a [u8],
        query: MetricsQuery,
    ) -> BoxFuture<'a, Result<Vec<core::ExecutionMetricResult>, AgentError>>;
    fn get_logs<'a>(
        &'a self,
        ctx: &'a Context,
        meta: &'a [u8],
        query: LogsQuery,
    ) -> BoxFuture<'a, Result<Logs, AgentError>>;
}

pub(crate) trait DynSyncAgent: Send + Sync {
    fn execute<'a>(&'a self, ctx: &'a Context, task: Box<TaskRequest>) -> BoxFuture<'a, Result<Resource, AgentError>>;
}

/// Runs an agent future, turning a panic into `INTERNAL` instead of a dropped connection.
/// A combinator rather than an `async fn`, which would keep the agent's future (kilobytes)
/// twice for the whole call.
fn guarded<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, AgentError>>,
) -> impl std::future::Future<Output = Result<T, AgentError>> {
    AssertUnwindSafe(fut).catch_unwind().map(move |caught| match caught {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(message = "Agent panicked.", operation = what);
            Err(AgentError::internal(format!("the agent failed unexpectedly during {what}; see the agent's logs")))
        }
    })
}

impl<A: AsyncAgent> DynAsyncAgent for A {
    fn create<'a>(&'a self, ctx: &'a Context, task: Box<TaskRequest>) -> BoxFuture<'a, Result<Vec<u8>, AgentError>> {
        // Out of its box first, so the box is freed now rather than when the call ends; and
        // combinators, not an `async` block, so the agent's future is kept once.
        let task = *task;
        Box::pin(guarded("create", AsyncAgent::create(self, ctx, task)).map(|meta| encode_meta(&meta?)))
    }

    fn get<'a>(&'a self, ctx: &'a Context, meta: &'a [u8]) -> BoxFuture<'a, Result<Resource, AgentError>> {
        Box::pin(async move {
            let meta = decode_meta::<A::Meta>(meta, self.name())?;
            guarded("get", AsyncAgent::get(self, ctx, meta)).await
        })
    }

    fn delete<'a>(&'a self, ctx: &'a Context, meta: &'a [u8]) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let meta = decode_meta::<A::Meta>(meta, self.name())?;
            guarded("delete", AsyncAgent::delete(self, ctx, meta)).await
        })
    }

    fn get_metrics<'a>(
        &'a self,
        ctx: &'a Context,
        meta: &'a [u8],
        query: MetricsQuery,
    ) -> BoxFuture<'a, Result<Vec<core::ExecutionMetricResult>, AgentError>> {
        Box::pin(async move {
            let meta = decode_meta::<A::Meta>(meta, self.name())?;
            guarded("get_metrics", AsyncAgent::get_metrics(self, ctx, meta, query)).await
        })
    }

    fn get_logs<'a>(
        &'a self,
        ctx: &'a Context,
        meta: &'a [u8],
        query: LogsQuery,
    ) -> BoxFuture<'a, Result<Logs, AgentError>> {
        Box::pin(async move {
            let meta = decode_meta::<A::Meta>(meta, self.name())?;
            guarded("get_logs", AsyncAgent::get_logs(self, ctx, meta, query)).await
        })
    }
}

impl<S: SyncAgent> DynSyncAgent for S {
    fn execute<'a>(&'a self, ctx: &'a Context, task: Box<TaskRequest>) -> BoxFuture<'a, Result<Resource, AgentError>> {
        // Out of its box first, so the box is freed now rather than when the call ends.
        let task = *task;
        Box::pin(guarded("execute", SyncAgent::execute(self, ctx, task)))
    }
}

/// Largest resource meta accepted. Propeller stores it in the workflow's CRD status,
/// so anything near this size is a bug, and a cap keeps a hostile request cheap.
pub(crate) const MAX_META_BYTES: usize = 256 * 1024;

pub(crate) fn encode_meta<M: ResourceMeta>(meta: &M) -> Result<Vec<u8>, AgentError> {
    serde_json::to_vec(meta).map_err(|e| AgentError::internal(format!("could not encode the resource meta: {e}")))
}

/// Decodes JSON meta. The message never quotes the bytes: flytekit's Databricks meta,
/// for one, carries a token.
pub(crate) fn decode_meta<M: ResourceMeta>(bytes: &[u8], agent: &str) -> Result<M, AgentError> {
    if bytes.is_empty() {
        return Err(AgentError::invalid_argument("resource_meta is empty; send the bytes CreateTask returned"));
    }
    if bytes.len() > MAX_META_BYTES {
        return Err(AgentError::invalid_argument(format!(
            "resource_meta is {} bytes, more than the {MAX_META_BYTES} bytes any agent writes",
            bytes.len()
        )));
    }
    let fail = |why: String| {
        let hint = if std::str::from_utf8(bytes).is_err() || bytes.first() == Some(&0x80) {
            " (it is not JSON; metas pickled by a Python agent cannot be read: let those tasks finish before switching)"
        } else {
            ""
        };
        AgentError::invalid_argument(format!(
            "resource_meta is not a valid job handle for agent '{agent}': {why}{hint}"
        ))
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let meta = serde_path_to_error::deserialize(&mut de).map_err(|e| fail(describe_decode_error(&e)))?;
    de.end().map_err(|_| fail("something follows the JSON value".to_owned()))?;
    Ok(meta)
}

/// What is wrong with a meta, without its bytes: serde's own message quotes the values it
/// did not expect (a meta may hold a token), and unknown keys are the sender's text too.
/// So the message names the field (only names this agent's types use) and what it expected.
fn describe_decode_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_path_to_error::Segment;
    let inner = e.inner();
    let mut path = String::new();
    for segment in e.path().iter() {
        match segment {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key }
                if !key.is_empty()
                    && key.len() <= 32
                    && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
            {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            _ => path.push_str(if path.is_empty() { "?" } else { ".?" }),
        }
    }
    let field = if path.is_empty() { String::new() } else { format!("field `{path}`: ") };
    let text = inner.to_string();
    // Only the parts serde writes from the type, never from the input.
    let what = match inner.classify() {
        serde_json::error::Category::Syntax => "it is not valid JSON".to_owned(),
        serde_json::error::Category::Eof => "it ends too early".to_owned(),
        serde_json::error::Category::Io => "it could not be read".to_owned(),
        serde_json::error::Category::Data => {
            if let Some(rest) = text.strip_prefix("missing field `") {
                format!("missing field `{}`", rest.split('`').next().unwrap_or_default())
            } else if text.starts_with("unknown field") {
                "a field this agent does not write".to_owned()
            } else if let Some((_, expected)) = text.rsplit_once(", expected ") {
                let expected = expected.split(" at line ").next().unwrap_or(expected);
                format!("expected {expected}")
            } else {
                "a value of the wrong type".to_owned()
            }
        }
    };
    format!("{field}{what}")
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meta {
        job_id: String,
        #[serde(default)]
        location: Option<String>,
        #[serde(default)]
        attempts: u32,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        job_id: String,
    }

    #[test]
    fn decodes_what_python_json_dumps_writes() {
        // json.dumps(dataclasses.asdict(meta)): ", " and ": " separators, None as null,
        // a field with a default left out by an older version of the dataclass.
        let py = br#"{"job_id": "dummy_id", "location": null}"#;
        let m: Meta = decode_meta(py, "x").unwrap();
        assert_eq!(m, Meta { job_id: "dummy_id".into(), location: None, attempts: 0 });
        let ours = encode_meta(&m).unwrap();
        assert_eq!(decode_meta::<Meta>(&ours, "x").unwrap(), m);
    }

    #[test]
    fn bad_meta_is_invalid_argument_without_echoing_the_bytes() {
        let err = decode_meta::<Meta>(br#"{"token": "dapi-secret-value"}"#, "x").unwrap_err();
        assert!(matches!(&err, AgentError::InvalidArgument(m) if m.contains("missing field `job_id`")), "{err}");
        assert!(!err.message().contains("dapi-secret-value"));
        assert!(decode_meta::<Meta>(b"", "x").unwrap_err().message().contains("empty"));
        // Values of the wrong type are not quoted either, nor are unknown keys.
        for (bytes, says) in [
            (&br#"{"job_id": {"auth_token": "dapi-secret-value"}}"#[..], "field `job_id`: expected a string"),
            (br#"{"job_id": "j", "attempts": "dapi-secret-value"}"#, "field `attempts`: expected u32"),
            (br#"{"job_id": "j", "location": 7, "dapi-secret-value": 1}"#, "field `location`: expected a string"),
            (br#"{"job_id": "dapi-secret-value"#, "it ends too early"),
        ] {
            let err = decode_meta::<Meta>(bytes, "x").unwrap_err();
            assert!(err.message().contains(says), "{err}");
            assert!(!err.message().contains("dapi-secret-value"), "{err}");
        }
        let strict = decode_meta::<Strict>(br#"{"job_id": "j", "dapi-secret-value": 1}"#, "x").unwrap_err();
        assert!(!strict.message().contains("dapi-secret") && strict.message().contains("does not write"), "{strict}");
        let pickled = [0x80, 0x05, 0x95, 0xff];
        assert!(decode_meta::<Meta>(&pickled, "x").unwrap_err().message().contains("pickled"));
        let huge = vec![b' '; MAX_META_BYTES + 1];
        assert!(decode_meta::<Meta>(&huge, "x").unwrap_err().message().contains("more than"));
    }
}
