//! The OpenAI Batch agent (async): `create` starts a batch, `get` maps its status, `delete`
//! cancels it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use agent_core::http::{Failure, path_id};
use agent_core::literals::Value;
use agent_core::prelude::*;
use async_openai::{error::OpenAIError, traits::RequestOptionsBuilder};

use crate::client::{Client, ORG_FIELD, SERVICE, Sdk, failure};
use crate::config::Config;

/// The task type flytekit's `BatchEndpointTask` declares.
pub const TASK_TYPE: &str = "openai-batch";
/// Where a meta names the organization (a header, so checked like the template's).
const META_ORG: &str = "resource meta: openai_org";

/// Batch metadata key recording the task attempt, so a repeated CreateTask finds its batch.
/// Its value is a digest of the attempt key: fixed length, so it fits OpenAI's 512-character
/// limit on metadata values whatever the names in the key, and is found exactly as stored.
const ATTEMPT_KEY: &str = "flyte_attempt_sha256";
/// The key earlier releases stored the attempt under, raw (cut to 512 characters).
const LEGACY_ATTEMPT_KEY: &str = "flyte_attempt";
/// OpenAI's limit on a metadata value.
const METADATA_VALUE_MAX: usize = 512;

/// Hex SHA-256 of the attempt key `key`, what [`ATTEMPT_KEY`] holds.
fn digest(key: &str) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `batch` was created by the attempt `key` names: by its digest, or by the raw key
/// an earlier release stored when it was short enough to be stored whole (so a create
/// repeated across an upgrade still finds that batch). A cut key is never matched, since
/// two attempts can share its first 512 characters.
fn marked_by(batch: &Json, key: &str) -> bool {
    let stored = |k: &str| batch["metadata"][k].as_str();
    stored(ATTEMPT_KEY) == Some(digest(key).as_str())
        || (key.chars().count() <= METADATA_VALUE_MAX && stored(LEGACY_ATTEMPT_KEY) == Some(key))
}

/// The job handle. flytekit pickles its `BatchEndpointMetadata`; this one is JSON with the
/// same fields. Pickled metas get a clear error: those tasks must finish on the Python agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMeta {
    /// OpenAI batch id.
    pub batch_id: String,
    /// Organization the batch belongs to.
    pub openai_org: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Custom {
    openai_organization: Option<String>,
    config: Map<String, Json>,
}

/// The agent.
#[derive(Debug, Clone)]
pub struct BatchAgent {
    client: Client,
    lookback: Duration,
}

/// OpenAI's batch statuses; `Unknown` keeps one this agent does not know yet (by name), so
/// a new status keeps the task waiting instead of failing it.
#[derive(Debug, PartialEq, Eq, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
enum BatchStatus {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
    #[strum(default)]
    Unknown(String),
}

/// What a batch's status means for the task.
fn resource_for(batch: &Json) -> Result<Resource, AgentError> {
    use BatchStatus as S;
    let text = batch["status"].as_str().unwrap_or_default();
    let error = batch.pointer("/errors/data/0/message").and_then(Json::as_str);
    let why = error.map_or_else(|| format!("the batch is {text}"), |m| format!("the batch is {text}: {m}"));
    Ok(match text.parse().unwrap_or_else(|_| S::Unknown(text.to_owned())) {
        S::Validating | S::InProgress | S::Finalizing => Resource::running().with_message(text),
        S::Completed => {
            // The batch object, as flytekit encodes an untyped `dict` output.
            let value = rmp_serde::to_vec_named(batch)
                .map_err(|e| AgentError::internal(format!("cannot encode the batch: {e}")))?;
            Resource::succeeded()
                .with_message(text)
                .with_output("result", Value::Binary { value, tag: "msgpack".into() })
        }
        S::Failed | S::Expired => Resource::failed(why),
        // A cancelling batch only ever ends cancelled.
        S::Cancelling | S::Cancelled => Resource::aborted(why),
        S::Unknown(s) => Resource::running()
            .with_message(format!("OpenAI reports batch status '{s}', which this agent does not know; waiting")),
    })
}

impl AsyncAgent for BatchAgent {
    type Meta = BatchMeta;

    const NAME: &str = "OpenAI Batch Endpoint Connector";
    const TASK_TYPES: &[&str] = &[TASK_TYPE];

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<BatchMeta, AgentError> {
        let custom: Custom = task.custom_as()?;
        let org = custom.openai_organization.filter(|o| !o.is_empty());
        let sdk = self.client.sdk(ctx, org.as_deref(), ORG_FIELD)?;
        let attempt = task.attempt_key();
        let mut request = custom.config;
        // The attempt marks are the agent's: a task that set them could make another
        // task's CreateTask adopt a batch it prepared.
        let marks = [ATTEMPT_KEY, LEGACY_ATTEMPT_KEY];
        if let Some(key) = marks.iter().find(|k| request.get("metadata").and_then(|m| m.get(k)).is_some()) {
            let why = "is set by the agent to find a repeated create's batch; remove it from the task's metadata";
            return Err(AgentError::invalid_argument(format!("template.custom.config.metadata.{key} {why}")));
        }
        request.entry("completion_window").or_insert_with(|| json!("24h"));
        request.entry("endpoint").or_insert_with(|| json!("/v1/chat/completions"));
        request.insert("input_file_id".into(), json!(task.input::<String>("input_file_id")?));
        if let Some(key) = &attempt
            && let Json::Object(m) = request.entry("metadata").or_insert_with(|| json!({}))
        {
            m.insert(ATTEMPT_KEY.into(), json!(digest(key)));
        }
        // The task is not needed while the service is called: freed now, not when the call ends.
        drop(task);
        // Broken connections and lost answers are retried inside the deadline; each try
        // first looks for the batch an earlier one may have created, so none is doubled.
        let (sdk, request, attempt) = (&sdk, &Json::Object(request), attempt.as_deref());
        let once = |limit| async move {
            if let Some(key) = attempt
                && let Some(id) = self.started(ctx, sdk, key).await?
            {
                tracing::info!(message = "Adopted the batch an earlier CreateTask created.", batch_id = %id);
                return Ok(id);
            }
            let batches = sdk.batches();
            let batch =
                SERVICE.timed("batch creation", limit, batches.create_byot::<&Json, Json>(request), failure).await?;
            let id = batch["id"].as_str().filter(|i| !i.is_empty()).map(str::to_owned);
            id.ok_or_else(|| AgentError::internal("OpenAI created a batch without an id").into())
        };
        let batch_id = self.client.calls.retried(ctx, "batch creation", once).await.map_err(Failure::into_error)?;
        Ok(BatchMeta { batch_id, openai_org: org })
    }

    async fn get(&self, ctx: &Context, meta: BatchMeta) -> Result<Resource, AgentError> {
        let (id, sdk) =
            (path_id("batch_id", &meta.batch_id)?, &self.client.sdk(ctx, meta.openai_org.as_deref(), META_ORG)?);
        let status = |_| async move { sdk.batches().retrieve_byot(id).await };
        match self.client.calls.retried_sdk(ctx, &SERVICE, "batch status check", status, failure).await {
            Ok(batch) => resource_for(&batch),
            Err(f) => f.into_poll(SERVICE.name, &format!("batch {id}")),
        }
    }

    async fn delete(&self, ctx: &Context, meta: BatchMeta) -> Result<(), AgentError> {
        let (id, sdk) =
            (path_id("batch_id", &meta.batch_id)?, &self.client.sdk(ctx, meta.openai_org.as_deref(), META_ORG)?);
        let cancel = |_| async move {
            match sdk.batches().cancel_byot::<_, Json>(id).await {
                // OpenAI answers 409 for a batch that has already finished: nothing to cancel.
                Err(OpenAIError::ApiError(r)) if r.status_code.as_u16() == 409 => Ok(Json::Null),
                other => other,
            }
        };
        let cancelled = self.client.calls.retried_sdk(ctx, &SERVICE, "batch cancellation", cancel, failure).await;
        cancelled.map(drop).or_else(Failure::into_cancel)
    }
}

impl BatchAgent {
    /// An agent with the given settings.
    pub fn new(config: Config) -> Result<Self, String> {
        let attempt_timeout = config.request_timeout.unwrap_or(config.rest.attempt_timeout);
        Ok(Self { client: Client::new(&config, attempt_timeout)?, lookback: config.batch_lookback })
    }

    /// The batch the attempt `key` names started, if any: newest first, page by page, back to
    /// batches older than any retry of this attempt could have made (under load more than
    /// one page of batches can arrive between a lost answer and the retry).
    async fn started(&self, ctx: &Context, sdk: &Sdk, key: &str) -> Result<Option<String>, Failure> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let oldest_wanted = now.saturating_sub(self.lookback.as_secs());
        let mut after: Option<String> = None;
        // At most 20 pages of 100 batches.
        for _ in 0..20 {
            // Each page is retried on its own, so one fault does not restart the walk.
            let query = &[("limit", Some("100")), ("after", after.as_deref())];
            let list = |_| async move { sdk.batches().query(query)?.list_byot::<Json>().await };
            let page = self.client.calls.retried_sdk(ctx, &SERVICE, "batch list", list, failure).await?;
            let batches = page["data"].as_array().map(Vec::as_slice).unwrap_or_default();
            if let Some(id) = batches.iter().find(|b| marked_by(b, key)).and_then(|b| b["id"].as_str()) {
                return Ok(Some(id.to_owned()));
            }
            let last = batches.last();
            let older_than_wanted = last.and_then(|b| b["created_at"].as_u64()).is_some_and(|t| t < oldest_wanted);
            if page["has_more"] != true || older_than_wanted {
                break;
            }
            after = last.and_then(|b| b["id"].as_str()).map(str::to_owned);
        }
        Ok(None)
    }
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
            ("cancelling", Phase::Aborted),
            ("cancelled", Phase::Aborted),
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
        let mark = digest(&long);
        assert_eq!(mark.len(), 64);
        assert!(mark.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(marked_by(&json!({"metadata": {ATTEMPT_KEY: mark}}), &long));
        // Two attempts sharing the first 512 characters are told apart.
        let other = format!("{}/1", &long[..long.len() - 2]);
        assert_ne!(mark, digest(&other));
        assert!(!marked_by(&json!({"metadata": {ATTEMPT_KEY: mark}}), &other));
        // A key too long to have been stored whole is never matched raw.
        let cut: String = long.chars().take(512).collect();
        assert!(!marked_by(&json!({"metadata": {LEGACY_ATTEMPT_KEY: cut}}), &long));
        // A batch an earlier release marked with a short raw key is still found.
        let short = "org/proj/dev/exec/n0/t/v1/0";
        assert!(marked_by(&json!({"metadata": {LEGACY_ATTEMPT_KEY: short}}), short));
        assert!(!marked_by(&json!({"metadata": null}), short));
    }

    #[test]
    fn metas_are_json_and_pickles_are_explained() {
        let m: BatchMeta =
            serde_json::from_str(r#"{"batch_id": "batch_abc123", "openai_org": "test-openai-orgnization-id"}"#)
                .unwrap();
        assert_eq!(m.batch_id, "batch_abc123");
    }
}
