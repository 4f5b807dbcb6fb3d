//! The OpenAI Batch agent (async): `create` starts a batch, `get` maps its status, `delete`
//! cancels it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use agent_core::literals::Value;
use agent_core::prelude::*;
use agent_core::retry::{RetryConfig, Verdict, retry};
use async_openai::traits::RequestOptionsBuilder;

use crate::client::{Clients, Failure, budget, check_header_value, classify, task_organization};
use crate::config::Config;

/// The task type flytekit's `BatchEndpointTask` declares.
pub const BATCH_TYPE: &str = "openai-batch";

/// Batch metadata key recording the task attempt, so a repeated CreateTask finds its batch.
/// Its value is a digest of the attempt key: fixed length, so it fits OpenAI's 512-character
/// limit on metadata values whatever the names in the key, and is found exactly as stored.
const ATTEMPT_KEY: &str = "flyte_attempt_sha256";
/// The key earlier releases stored the attempt under, raw (cut to 512 characters).
const LEGACY_ATTEMPT_KEY: &str = "flyte_attempt";
/// OpenAI's limit on a metadata value.
const METADATA_VALUE_MAX: usize = 512;

/// How a batch records the task attempt that created it.
#[derive(Debug, Clone)]
struct AttemptMark {
    /// Hex SHA-256 of the attempt key, stored under [`ATTEMPT_KEY`].
    digest: String,
    /// The raw key, when short enough that an earlier release stored it whole: a create
    /// repeated across an upgrade still finds that batch. A cut key is never matched, since
    /// two attempts can share its first 512 characters.
    legacy: Option<String>,
}

impl AttemptMark {
    fn new(key: &str) -> Self {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        let digest = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let legacy = (key.chars().count() <= METADATA_VALUE_MAX).then(|| key.to_owned());
        Self { digest, legacy }
    }

    /// Whether `batch` was created by this attempt.
    fn marks(&self, batch: &Json) -> bool {
        let stored = |k: &str| batch.get("metadata").and_then(|m| m.get(k)).and_then(Json::as_str);
        stored(ATTEMPT_KEY) == Some(self.digest.as_str())
            || self.legacy.as_deref().is_some_and(|l| stored(LEGACY_ATTEMPT_KEY) == Some(l))
    }
}

/// The organization a meta names, checked like the task's was: it becomes a header.
fn meta_organization(meta: &BatchMeta) -> Result<Option<&str>, AgentError> {
    let org = meta.openai_org.as_deref().filter(|o| !o.is_empty());
    if let Some(o) = org {
        check_header_value(o, |why| {
            AgentError::invalid_argument(format!(
                "resource meta: openai_org {why}; the meta was not written by an OpenAI Batch agent"
            ))
        })?;
    }
    Ok(org)
}

/// The job handle. flytekit pickles its `BatchEndpointMetadata`; this one is JSON with the
/// same fields. Pickled metas get a clear error: those tasks must finish on the Python agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMeta {
    /// OpenAI batch id.
    pub batch_id: String,
    /// Organization the batch belongs to.
    #[serde(default)]
    pub openai_org: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Custom {
    #[serde(default)]
    openai_organization: Option<String>,
    #[serde(default)]
    config: Map<String, Json>,
}

/// OpenAI's batch statuses; others are waited on, never errors.
#[derive(Debug, PartialEq, Eq)]
enum BatchStatus<'a> {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
    Unknown(&'a str),
}

impl<'a> BatchStatus<'a> {
    fn parse(s: &'a str) -> Self {
        match s {
            "validating" => Self::Validating,
            "in_progress" => Self::InProgress,
            "finalizing" => Self::Finalizing,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            "cancelling" => Self::Cancelling,
            "cancelled" => Self::Cancelled,
            other => Self::Unknown(other),
        }
    }
}

/// The agent.
#[derive(Debug, Clone)]
pub struct BatchAgent {
    clients: Clients,
    config: Config,
}

impl BatchAgent {
    /// An agent with the given settings.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Self { clients: Clients::new(&config)?, config })
    }
}

/// The batch object as flytekit encodes an untyped `dict` output: msgpack, tag "msgpack".
fn result_literal(batch: &Json) -> Result<Value, AgentError> {
    let bytes =
        rmp_serde::to_vec_named(batch).map_err(|e| AgentError::internal(format!("cannot encode the batch: {e}")))?;
    Ok(Value::Binary { value: bytes, tag: "msgpack".into() })
}

fn resource_for(batch: &Json) -> Result<Resource, AgentError> {
    let status = batch.get("status").and_then(Json::as_str).unwrap_or_default();
    let first_error = batch.pointer("/errors/data/0/message").and_then(Json::as_str);
    Ok(match BatchStatus::parse(status) {
        BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {
            Resource::running().with_message(status)
        }
        BatchStatus::Completed => {
            Resource::succeeded().with_message(status).with_output("result", result_literal(batch)?)
        }
        BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelling | BatchStatus::Cancelled => {
            Resource::failed(
                first_error.map_or_else(|| format!("the batch is {status}"), |m| format!("the batch is {status}: {m}")),
            )
        }
        BatchStatus::Unknown(s) => Resource::running()
            .with_message(format!("OpenAI reports batch status '{s}', which this agent does not know; waiting")),
    })
}

impl AsyncAgent for BatchAgent {
    type Meta = BatchMeta;

    fn name(&self) -> &str {
        "OpenAI Batch Endpoint Connector"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(BATCH_TYPE, 0)]
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<BatchMeta, AgentError> {
        let custom: Custom = task.custom_as()?;
        let org = task_organization(custom.openai_organization)?;
        let input_file_id: String = task.input("input_file_id")?;
        let client = self.clients.client(ctx, org.as_deref())?;
        let attempt = task.attempt_key().map(|k| AttemptMark::new(&k));
        let mut request = custom.config;
        // The attempt marks are the agent's: a task that set them could make another
        // task's CreateTask adopt a batch it prepared.
        if let Some(Json::Object(m)) = request.get("metadata")
            && let Some(key) = [ATTEMPT_KEY, LEGACY_ATTEMPT_KEY].into_iter().find(|k| m.contains_key(*k))
        {
            return Err(AgentError::invalid_argument(format!(
                "template.custom.config.metadata.{key} is set by the agent to find a repeated create's batch; \
                 remove it from the task's metadata"
            )));
        }
        request.entry("completion_window").or_insert_with(|| json!("24h"));
        request.entry("endpoint").or_insert_with(|| json!("/v1/chat/completions"));
        request.insert("input_file_id".into(), json!(input_file_id));
        if let Some(mark) = &attempt {
            let metadata = request.entry("metadata").or_insert_with(|| json!({}));
            if let Json::Object(m) = metadata {
                m.insert(ATTEMPT_KEY.into(), json!(mark.digest));
            }
        }
        // Broken connections and lost answers are retried inside the deadline; each try
        // first looks for the batch an earlier one may have created, so none is doubled.
        let policy = RetryConfig { default_budget: self.config.request_timeout, ..RetryConfig::default() };
        let request = Json::Object(request);
        let deadline = policy.deadline(ctx);
        let once = |left: std::time::Duration| {
            let limit = left.min(budget(ctx, self.config.request_timeout));
            let lookback = self.config.batch_lookback;
            create_once(&client, request.clone(), attempt.as_ref(), lookback, limit, (&policy, deadline))
        };
        match retry(&policy, deadline, once, transient).await {
            Ok(batch_id) => Ok(BatchMeta { batch_id, openai_org: org }),
            Err(Failure::Rejected(m) | Failure::NotFound(m)) => Err(AgentError::invalid_argument(m)),
            Err(Failure::Transient(m)) => Err(AgentError::unavailable(m)),
        }
    }

    async fn get(&self, ctx: &Context, meta: BatchMeta) -> Result<Resource, AgentError> {
        agent_core::http::path_id("batch_id", &meta.batch_id)?;
        let client = self.clients.client(ctx, meta_organization(&meta)?)?;
        let limit = budget(ctx, self.config.request_timeout);
        match tokio::time::timeout(limit, client.batches().retrieve_byot::<_, Json>(&meta.batch_id)).await {
            Ok(Ok(batch)) => resource_for(&batch),
            Ok(Err(e)) => match classify(&e) {
                Failure::NotFound(m) => Ok(Resource::failed(m)),
                Failure::Transient(m) => Ok(Resource::unreachable("OpenAI", "batch", &m)),
                Failure::Rejected(m) => Err(AgentError::permission_denied(m)),
            },
            Err(_) => {
                Ok(Resource::running().with_message("OpenAI did not answer the status check in time; will check again"))
            }
        }
    }

    async fn delete(&self, ctx: &Context, meta: BatchMeta) -> Result<(), AgentError> {
        agent_core::http::path_id("batch_id", &meta.batch_id)?;
        let client = self.clients.client(ctx, meta_organization(&meta)?)?;
        let limit = budget(ctx, self.config.request_timeout);
        match tokio::time::timeout(limit, client.batches().cancel_byot::<_, Json>(&meta.batch_id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(async_openai::error::OpenAIError::ApiError(r))) if matches!(r.status_code.as_u16(), 404 | 409) => {
                Ok(())
            }
            Ok(Err(e)) => Err(match classify(&e) {
                Failure::Transient(m) => AgentError::unavailable(m),
                Failure::Rejected(m) | Failure::NotFound(m) => AgentError::internal(m),
            }),
            Err(_) => Err(AgentError::unavailable("OpenAI did not answer the batch cancellation in time")),
        }
    }
}

/// Pages of 100 batches searched at most.
const MAX_PAGES: usize = 20;

fn transient(f: &Failure) -> Verdict {
    if matches!(f, Failure::Transient(_)) { Verdict::Retry(None) } else { Verdict::Fail }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One try at starting the batch: adopt the one this task attempt already started, if
/// any, else create it. Returns the batch id.
async fn create_once(
    client: &async_openai::Client<async_openai::config::OpenAIConfig>,
    request: Json,
    attempt: Option<&AttemptMark>,
    lookback: std::time::Duration,
    limit: std::time::Duration,
    retry_policy: (&RetryConfig, std::time::Instant),
) -> Result<String, Failure> {
    let timed_out = || Failure::Transient(format!("OpenAI did not answer within {} ms", limit.as_millis()));
    if let Some(mark) = attempt {
        // Newest first, page by page, back to batches older than any retry of this attempt
        // could have made: under load more than one page of batches can arrive between a
        // lost answer and the retry.
        let oldest_wanted = now_secs().saturating_sub(lookback.as_secs());
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut params = vec![("limit", "100".to_owned())];
            params.extend(after.iter().map(|a| ("after", a.clone())));
            // Each page is retried on its own, so one fault does not restart the walk.
            let fetch = |left: std::time::Duration| {
                let params = params.clone();
                async move {
                    let query = client.batches().query(&params).map_err(|e| Failure::Rejected(e.to_string()))?;
                    tokio::time::timeout(left.min(limit), query.list_byot::<Json>())
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| classify(&e))
                }
            };
            let page = retry(retry_policy.0, retry_policy.1, fetch, transient).await?;
            let batches = page["data"].as_array().cloned().unwrap_or_default();
            let existing = batches.iter().find(|b| mark.marks(b));
            if let Some(id) = existing.and_then(|b| b["id"].as_str()) {
                tracing::info!(message = "Adopted the batch an earlier CreateTask created.", batch_id = %id);
                return Ok(id.to_owned());
            }
            let last = batches.last();
            let older_than_wanted = last.and_then(|b| b["created_at"].as_u64()).is_some_and(|t| t < oldest_wanted);
            if page["has_more"] != true || older_than_wanted {
                break;
            }
            after = last.and_then(|b| b["id"].as_str()).map(str::to_owned);
        }
    }
    let batch = tokio::time::timeout(limit, client.batches().create_byot::<_, Json>(request))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| classify(&e))?;
    batch["id"]
        .as_str()
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Failure::Rejected("OpenAI created a batch without an id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_phases_and_unknown_ones_wait() {
        let cases = [
            ("validating", Phase::Running),
            ("in_progress", Phase::Running),
            ("finalizing", Phase::Running),
            ("completed", Phase::Succeeded),
            ("failed", Phase::Failed),
            ("expired", Phase::Failed),
            ("cancelling", Phase::Failed),
            ("cancelled", Phase::Failed),
            ("paused", Phase::Running),
        ];
        for (status, phase) in cases {
            assert_eq!(resource_for(&json!({"id": "b", "status": status})).unwrap().phase, phase, "{status}");
        }
        let failed = resource_for(&json!({"status": "failed", "errors": {"data": [{"message": "This line is not parseable as valid JSON."}]}})).unwrap();
        assert_eq!(failed.message, "the batch is failed: This line is not parseable as valid JSON.");
    }

    #[test]
    fn completed_batches_are_a_msgpack_dict() {
        let batch = json!({"id": "batch_1", "status": "completed", "request_counts": {"total": 1}});
        let r = resource_for(&batch).unwrap();
        let Value::Binary { value, tag } = &r.output_values().unwrap()["result"] else { panic!() };
        assert_eq!(tag, "msgpack");
        let back: Json = rmp_serde::from_slice(value).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn attempts_are_marked_by_a_fixed_length_digest() {
        let long = format!("org/proj/dev/exec/n0/{}/v1/0", "t".repeat(600));
        let mark = AttemptMark::new(&long);
        assert_eq!(mark.digest.len(), 64);
        assert!(mark.digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(mark.legacy.is_none(), "a key too long to have been stored whole is never matched raw");
        assert!(mark.marks(&json!({"metadata": {ATTEMPT_KEY: mark.digest}})));
        // Two attempts sharing the first 512 characters are told apart.
        let other = AttemptMark::new(&format!("{}/1", &long[..long.len() - 2]));
        assert_ne!(mark.digest, other.digest);
        assert!(!other.marks(&json!({"metadata": {ATTEMPT_KEY: mark.digest}})));
        let cut: String = long.chars().take(512).collect();
        assert!(!mark.marks(&json!({"metadata": {LEGACY_ATTEMPT_KEY: cut}})));
        // A batch an earlier release marked with a short raw key is still found.
        let short = AttemptMark::new("org/proj/dev/exec/n0/t/v1/0");
        assert!(short.marks(&json!({"metadata": {LEGACY_ATTEMPT_KEY: "org/proj/dev/exec/n0/t/v1/0"}})));
        assert!(!short.marks(&json!({"metadata": null})));
    }

    #[test]
    fn metas_are_json_and_pickles_are_explained() {
        let m: BatchMeta =
            serde_json::from_str(r#"{"batch_id": "batch_abc123", "openai_org": "test-openai-orgnization-id"}"#)
                .unwrap();
        assert_eq!(m.batch_id, "batch_abc123");
    }
}
