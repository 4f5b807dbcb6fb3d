//! A small async agent and sync agent for tests, the end-to-end suite and the benchmark.
//! They talk to no external service: a "job" is a deadline carried in the resource meta,
//! so the agents are stateless, as real ones must be.
//!
//! Behaviour is steered by `template.custom`:
//! - `duration_ms`: how long the job runs (async);
//! - `outcome`: `succeed` (default), `fail`, `retryable`, or `pending` (sync only: a
//!   non-terminal answer, which the server must turn into a retryable failure);
//! - `error`: `unavailable`, `invalid`, `precondition`, `internal`, `panic` — fail the call;
//! - `secret`: a secret key the task needs (checked on every call, async included; only
//!   the key's name goes into the meta, never the value);
//! - `sleep_ms`: how long a sync call takes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::prelude::*;
use agent_core::{LogLine, Logs};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// Task type of the async test agent.
pub const ASYNC_TYPE: &str = "test_async";
/// Task type of the sync test agent.
pub const SYNC_TYPE: &str = "test_sync";

/// The job handle. `outcome` and the defaults let metas written by flytekit's Python
/// `ResourceMeta.encode()` (with `null`s and missing fields) decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestMeta {
    /// A fresh id per job.
    pub job_id: String,
    /// When the job started (Unix milliseconds).
    pub started_at_ms: u64,
    /// How long the job runs.
    #[serde(default)]
    pub duration_ms: u64,
    /// The requested `outcome` (`None`: succeed).
    #[serde(default)]
    pub outcome: Option<String>,
    /// The task's input `x`, doubled into the output `y`.
    #[serde(default)]
    pub x: i64,
    /// The name of the secret every call needs, like an agent that authenticates each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    duration_ms: u64,
    outcome: Option<String>,
    error: Option<String>,
    secret: Option<String>,
    sleep_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn requested_error(kind: Option<&str>, secret: Option<&Secret>) -> Result<(), AgentError> {
    match kind {
        None => Ok(()),
        Some("unavailable") => Err(AgentError::unavailable("the test service is unavailable (requested)")),
        Some("invalid") => Err(AgentError::invalid_argument("template.custom.error: invalid (requested)")),
        Some("precondition") => Err(AgentError::failed_precondition("a precondition failed (requested)")),
        // A careless agent that puts a credential in its error: the server must scrub it.
        Some("internal") => Err(AgentError::internal(format!(
            "unexpected answer for credential {}",
            secret.map(Secret::expose).unwrap_or("none")
        ))),
        Some("panic") => panic!("the test agent panics (requested)"),
        Some(other) => {
            Err(AgentError::invalid_argument(format!("template.custom.error: unknown error kind '{other}'")))
        }
    }
}

fn x_input(task: &TaskRequest) -> Result<i64, AgentError> {
    if task.inputs.literals.contains_key("x") { task.input::<i64>("x") } else { Ok(0) }
}

/// The async test agent.
#[derive(Debug, Default)]
pub struct TestAsyncAgent;

impl AsyncAgent for TestAsyncAgent {
    type Meta = TestMeta;

    fn name(&self) -> &str {
        "Test Async Agent"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(ASYNC_TYPE, 0)]
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<TestMeta, AgentError> {
        let s: Settings = task.custom_as()?;
        let secret = s.secret.as_deref().map(|k| ctx.secret(k)).transpose()?;
        requested_error(s.error.as_deref(), secret.as_ref())?;
        let x = x_input(&task)?;
        // Deterministic per attempt, as real agents derive their job ids.
        let job_id = task.attempt_key().unwrap_or_else(|| format!("job-{}", now_ms()));
        Ok(TestMeta {
            job_id,
            started_at_ms: now_ms(),
            duration_ms: s.duration_ms,
            outcome: s.outcome,
            x,
            secret_key: s.secret,
        })
    }

    async fn get(&self, ctx: &Context, meta: TestMeta) -> Result<Resource, AgentError> {
        if let Some(key) = &meta.secret_key {
            ctx.secret(key)?;
        }
        let link =
            LogLink::new("Test Console", format!("https://console.example.com/jobs/{}", meta.job_id)).dashboard();
        let elapsed = now_ms().saturating_sub(meta.started_at_ms);
        if elapsed < meta.duration_ms {
            return Ok(Resource::running()
                .with_message(format!("{elapsed} of {} ms", meta.duration_ms))
                .with_log_link(link));
        }
        let info = serde_json::json!({"job_id": meta.job_id, "elapsed_ms": elapsed});
        let resource = match meta.outcome.as_deref() {
            Some("fail") => Resource::failed("the job failed (requested)"),
            Some("retryable") => Resource::retryable_failure("the job hit a transient failure (requested)"),
            _ => Resource::succeeded().with_message("done").with_output("y", meta.x * 2),
        };
        Ok(resource.with_log_link(link).with_custom_info(info.as_object().cloned().unwrap_or_default()))
    }

    async fn delete(&self, ctx: &Context, meta: TestMeta) -> Result<(), AgentError> {
        if let Some(key) = &meta.secret_key {
            ctx.secret(key)?;
        }
        Ok(())
    }

    async fn get_metrics(
        &self,
        _ctx: &Context,
        meta: TestMeta,
        query: MetricsQuery,
    ) -> Result<Vec<agent_core::pb::core::ExecutionMetricResult>, AgentError> {
        let names =
            if query.queries.is_empty() { vec!["EXECUTION_METRIC_USED_CPU_AVG".to_owned()] } else { query.queries };
        let data = serde_json::json!({"job_id": meta.job_id, "values": [[meta.started_at_ms / 1000, 0.5]]});
        Ok(names
            .into_iter()
            .map(|metric| agent_core::pb::core::ExecutionMetricResult {
                metric,
                data: Some(agent_core::json::json_to_struct(data.as_object().unwrap_or(&serde_json::Map::new()))),
            })
            .collect())
    }

    /// Pages of `lines` lines (default 5), three pages in all, streamed line by line.
    async fn get_logs(&self, _ctx: &Context, meta: TestMeta, query: LogsQuery) -> Result<Logs, AgentError> {
        let page: u64 = if query.token.is_empty() {
            0
        } else {
            query
                .token
                .parse()
                .map_err(|_| AgentError::invalid_argument(format!("token: '{}' is not a page token", query.token)))?
        };
        let per_page = if query.lines == 0 { 5 } else { query.lines.min(10_000) };
        let next_token = if page < 2 { (page + 1).to_string() } else { String::new() };
        let job = meta.job_id;
        let lines = futures_util::stream::iter(0..per_page).then(move |i| {
            let message = format!("{job} line {}\n", page * per_page + i);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(LogLine {
                    timestamp: Some(SystemTime::now().into()),
                    message,
                    originator: agent_core::pb::admin::LogLineOriginator::User,
                })
            }
        });
        Ok(Logs { next_token, lines: Box::pin(lines) })
    }
}

/// The sync test agent: echoes its inputs and greets `name`.
#[derive(Debug, Default)]
pub struct TestSyncAgent;

impl SyncAgent for TestSyncAgent {
    fn name(&self) -> &str {
        "Test Sync Agent"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(SYNC_TYPE, 0)]
    }

    async fn execute(&self, ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        let s: Settings = task.custom_as()?;
        let secret = s.secret.as_deref().map(|k| ctx.secret(k)).transpose()?;
        requested_error(s.error.as_deref(), secret.as_ref())?;
        if s.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.sleep_ms)).await;
        }
        if s.outcome.as_deref() == Some("pending") {
            return Ok(Resource::running().with_message("still working"));
        }
        if s.outcome.as_deref() == Some("fail") {
            return Ok(Resource::failed("the task failed (requested)"));
        }
        let name: String = if task.inputs.literals.contains_key("name") { task.input("name")? } else { "world".into() };
        let mut resource = Resource::succeeded().with_outputs(task.inputs.clone());
        resource = resource.with_output("greeting", format!("hello, {name}"));
        // Which generation asked, so tests can see that agents are told.
        Ok(resource.with_message(format!("answered over {}", ctx.protocol().as_str())))
    }
}

/// Both test agents.
pub fn registry() -> Registry {
    Registry::builder()
        .async_agent(TestAsyncAgent)
        .and_then(|r| r.sync_agent(TestSyncAgent))
        .expect("the test agents have distinct categories")
}

/// An agent that implements neither metrics nor logs (task type `counting`), and counts
/// the deletes it gets: for tests of the optional operations and of cancellation.
#[derive(Debug, Default)]
pub struct Counting(pub std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl AsyncAgent for Counting {
    type Meta = String;

    const NAME: &str = "Counting";
    const TASK_TYPES: &[&str] = &["counting"];

    async fn create(&self, _: &Context, _: TaskRequest) -> Result<String, AgentError> {
        Ok("job".into())
    }

    async fn get(&self, _: &Context, _: String) -> Result<Resource, AgentError> {
        Ok(Resource::running())
    }

    async fn delete(&self, _: &Context, _: String) -> Result<(), AgentError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
