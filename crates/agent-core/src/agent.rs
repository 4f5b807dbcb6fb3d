//! The traits an agent implements, in flytekit's vocabulary: an async agent
//! `create`s a job, `get`s its state and `delete`s it; a sync agent `execute`s a task
//! at once (flytekit calls that `do`, a reserved word in Rust).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::error::AgentError;
use crate::literals::{FromValue, Value, get_input, literal_map_to_values};
use crate::pb::{admin, core};
use crate::resource::Resource;
use crate::secrets::{ConnectionSecrets, Secret, SecretStore};

/// A task type and version: the routing key from `TaskTemplate.type` and
/// `TaskTemplate.task_type_version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskCategory {
    /// Task type, e.g. `bigquery_query_job_task`.
    pub name: String,
    /// Task type version, usually 0.
    pub version: i32,
}

impl TaskCategory {
    /// A category.
    pub fn new(name: impl Into<String>, version: i32) -> Self {
        Self { name: name.into(), version }
    }

    /// The protocol message.
    pub fn to_proto(&self) -> admin::TaskCategory {
        admin::TaskCategory { name: self.name.clone(), version: self.version }
    }

    /// The Flyte 2 protocol message.
    pub fn to_v2(&self) -> crate::pb::v2::connector::TaskCategory {
        crate::pb::v2::connector::TaskCategory { name: self.name.clone(), version: self.version }
    }
}

impl std::fmt::Display for TaskCategory {
    /// flytekit's spelling, `name_v0`, which users see in error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_v{}", self.name, self.version)
    }
}

/// Everything Propeller sends to start a task.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    /// The task template, with container args already rendered by Propeller.
    pub template: core::TaskTemplate,
    /// The task's inputs (always sent inline by Propeller).
    pub inputs: core::LiteralMap,
    /// Where outputs go, e.g. `s3://bucket/metadata/.../0`.
    pub output_prefix: String,
    /// Execution identity, labels, namespace…
    pub metadata: Option<admin::TaskExecutionMetadata>,
    /// The connection secrets the task declares (Flyte 2: the keys of the template's
    /// `custom.secrets` that name a secret, which the front end takes out of `custom`).
    pub declared_secrets: std::collections::BTreeSet<String>,
}

impl TaskRequest {
    /// The routing key of the template.
    pub fn category(&self) -> TaskCategory {
        TaskCategory::new(self.template.r#type.clone(), self.template.task_type_version)
    }

    /// `template.custom` as JSON, with integral numbers as integers.
    pub fn custom(&self) -> Map<String, Json> {
        self.template.custom.as_ref().map(crate::json::struct_to_json).unwrap_or_default()
    }

    /// `template.custom` deserialized into the agent's settings type; errors name the
    /// offending key.
    pub fn custom_as<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        serde_json::from_value(Json::Object(self.custom()))
            .map_err(|e| AgentError::invalid_argument(format!("template.custom: {e}")))
    }

    /// Whether the task declares the connection secret `key` (see
    /// [`TaskRequest::declared_secrets`]).
    pub fn declares_secret(&self, key: &str) -> bool {
        self.declared_secrets.contains(key)
    }

    /// The SQL statement of a SQL task (`template.sql.statement`).
    pub fn sql_statement(&self) -> Result<&str, AgentError> {
        match &self.template.target {
            Some(core::task_template::Target::Sql(sql)) if !sql.statement.trim().is_empty() => Ok(&sql.statement),
            Some(core::task_template::Target::Sql(_)) => {
                Err(AgentError::invalid_argument("template.sql.statement: the SQL statement is empty"))
            }
            _ => {
                Err(AgentError::invalid_argument("template.sql: this task type needs a SQL statement in the template"))
            }
        }
    }

    /// One input as `T`; errors name the input.
    pub fn input<T: FromValue>(&self, name: &str) -> Result<T, AgentError> {
        get_input(&self.inputs, name)
    }

    /// All inputs as plain values; errors name the input.
    pub fn input_values(&self) -> Result<std::collections::BTreeMap<String, Value>, AgentError> {
        literal_map_to_values(&self.inputs, "inputs")
    }

    /// Whether the task's interface declares an output with this name.
    pub fn declares_output(&self, name: &str) -> bool {
        self.template
            .interface
            .as_ref()
            .and_then(|i| i.outputs.as_ref())
            .is_some_and(|o| o.variables.contains_key(name))
    }

    /// A stable key for this task *attempt*, built from the task execution id and retry
    /// attempt, or `None` when Propeller sent no execution id. Agents use it to make
    /// `create` idempotent: Propeller may call `CreateTask` more than once per attempt.
    pub fn attempt_key(&self) -> Option<String> {
        let id = self.metadata.as_ref()?.task_execution_id.as_ref()?;
        let node = id.node_execution_id.as_ref()?;
        let exec = node.execution_id.as_ref()?;
        let task = id.task_id.as_ref();
        let parts = [
            exec.org.as_str(),
            exec.project.as_str(),
            exec.domain.as_str(),
            exec.name.as_str(),
            node.node_id.as_str(),
            task.map_or("", |t| t.name.as_str()),
            task.map_or("", |t| t.version.as_str()),
        ];
        if exec.name.is_empty() {
            return None;
        }
        Some(format!("{}/{}", parts.join("/"), id.retry_attempt))
    }
}

impl TaskRequest {
    /// A deterministic id for this task attempt within `scope` (one scope per agent, so two
    /// agents never share ids), or `None` without an execution id. External jobs named by it
    /// make a repeated `CreateTask` find the job it already started.
    pub fn attempt_id(&self, scope: &str) -> Option<uuid::Uuid> {
        let key = self.attempt_key()?;
        Some(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("flyte-agents/{scope}/{key}").as_bytes()))
    }

    /// [`TaskRequest::attempt_id`], or a random id when the request has no execution id.
    pub fn attempt_id_or_random(&self, scope: &str) -> uuid::Uuid {
        self.attempt_id(scope).unwrap_or_else(uuid::Uuid::new_v4)
    }
}

/// Per-call context: secrets, deadline and what the call is about.
#[derive(Debug, Clone)]
pub struct Context {
    category: TaskCategory,
    secrets: SecretStore,
    connection: ConnectionSecrets,
    deadline: Option<Instant>,
    output_prefix: Option<String>,
    protocol: Protocol,
}

impl Context {
    /// A context for a call about `category`.
    pub fn new(category: TaskCategory, secrets: SecretStore) -> Self {
        let connection = ConnectionSecrets::default();
        Self { category, secrets, connection, deadline: None, output_prefix: None, protocol: Protocol::default() }
    }

    /// Sets the protocol generation the call came in on.
    #[must_use]
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Which protocol generation asked: flytekit (Flyte 1) and flyte-sdk (Flyte 2) give the
    /// same task type different templates and meanings, so an agent reads this, never
    /// guesses from the template's shape.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Sets the secrets the request itself carried (Flyte 2's `connection`); they win
    /// over the pod's secrets for this call.
    #[must_use]
    pub fn with_connection(mut self, connection: ConnectionSecrets) -> Self {
        self.connection = connection;
        self
    }

    /// Sets the caller's deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets the output prefix (sent with `GetTask` by Propeller ≥ 1.15).
    #[must_use]
    pub fn with_output_prefix(mut self, prefix: Option<String>) -> Self {
        self.output_prefix = prefix.filter(|p| !p.is_empty());
        self
    }

    /// The task category of the call.
    pub fn category(&self) -> &TaskCategory {
        &self.category
    }

    /// A secret by key: the one the request sent, else the pod's (see
    /// [`crate::secrets`]); `FAILED_PRECONDITION` when neither has it.
    pub fn secret(&self, key: &str) -> Result<Secret, AgentError> {
        match self.connection.get(key) {
            Some(sent) => Ok(sent),
            None => self.secrets.get(key),
        }
    }

    /// A credential the task brings itself: flyte-sdk's plugins name it `key` in the task's
    /// `custom.secrets` and the backend sends it in the request's connection (Flyte 2). When
    /// the request carries it, the call uses it and nothing of the pod's. When the task
    /// `declared` it and the request does not carry it, the call fails with
    /// `FAILED_PRECONDITION` naming the key: it must never run as the pod's identity instead.
    /// `None` otherwise: the agent uses its own credentials, as for Flyte 1.
    pub fn task_credential(&self, key: &str, declared: bool) -> Result<Option<Secret>, AgentError> {
        match self.connection.get(key) {
            Some(sent) => Ok(Some(sent)),
            None if declared => Err(AgentError::failed_precondition(format!(
                "the task declares the secret '{key}' (template.custom.secrets) but the request's connection does \
                 not carry it; the agent does not run a task that brings its own credentials under the agent's \
                 (check that the secret exists where the Flyte backend resolves the task's secrets)"
            ))),
            None => Ok(None),
        }
    }

    /// The agent's own secret `key` (the pod's), whatever the request carries: for a
    /// credential that belongs with another of the agent's own (a passphrase with its key).
    pub fn agent_secret(&self, key: &str) -> Result<Option<Secret>, AgentError> {
        self.secrets.get_optional(key)
    }

    /// A secret that may be absent, looked up as [`Context::secret`] does.
    pub fn optional_secret(&self, key: &str) -> Result<Option<Secret>, AgentError> {
        match self.connection.get(key) {
            Some(sent) => Ok(Some(sent)),
            None => self.secrets.get_optional(key),
        }
    }

    /// When the caller gives up, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline; `None` without one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The output prefix, when the caller sent one.
    pub fn output_prefix(&self) -> Option<&str> {
        self.output_prefix.as_deref()
    }
}

/// The protocol generation of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Flyte 1: `flyteidl.service.*AgentService`.
    #[default]
    Flyteidl,
    /// Flyte 2: `flyteidl2.connector.*`.
    Flyteidl2,
}

impl Protocol {
    /// The label value: the protocol's package root.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flyteidl => "flyteidl",
            Self::Flyteidl2 => "flyteidl2",
        }
    }
}

/// What `GetTaskMetrics` asks for.
#[derive(Debug, Clone, Default)]
pub struct MetricsQuery {
    /// Metric names; empty means the agent's default set.
    pub queries: Vec<String>,
    /// Start of the range (inclusive).
    pub start_time: Option<prost_types::Timestamp>,
    /// End of the range (inclusive).
    pub end_time: Option<prost_types::Timestamp>,
    /// Resolution.
    pub step: Option<prost_types::Duration>,
}

/// What `GetTaskLogs` asks for.
#[derive(Debug, Clone, Default)]
pub struct LogsQuery {
    /// How many lines; 0 means the agent's default.
    pub lines: u64,
    /// Page token from a previous call; empty for the first page.
    pub token: String,
}

/// One log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When it was written.
    pub timestamp: Option<prost_types::Timestamp>,
    /// The text, line terminator included.
    pub message: String,
    /// Whether the user's code or the system wrote it.
    pub originator: admin::LogLineOriginator,
}

/// A stream of log lines.
pub type LogLineStream = Pin<Box<dyn Stream<Item = Result<LogLine, AgentError>> + Send>>;

/// A page of logs: the token of the next page and the lines, streamed as they are read.
pub struct Logs {
    /// Token for the next page; empty when there is none.
    pub next_token: String,
    /// The lines.
    pub lines: LogLineStream,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("next_token", &self.next_token).finish_non_exhaustive()
    }
}

/// The job handle an async agent stores in Propeller between calls (flytekit's
/// `ResourceMeta`). It is encoded as JSON; decoding accepts what flytekit's
/// `ResourceMeta.encode()` writes. Keep it small and free of secrets: Propeller stores
/// it in the workflow's state.
pub trait ResourceMeta: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> ResourceMeta for T {}

/// An agent for long-running jobs. Stateless: `get` and `delete` may reach any replica,
/// so everything they need must be in the meta.
pub trait AsyncAgent: Send + Sync + 'static {
    /// The job handle.
    type Meta: ResourceMeta;

    /// Display name in `ListAgents`, e.g. "Bigquery Connector" (or override [`Self::name`]).
    /// The registry refuses an agent without a name.
    const NAME: &'static str = "";

    /// The task types served, each at version 0 (or override [`Self::task_categories`]).
    /// The registry refuses an agent that serves nothing.
    const TASK_TYPES: &'static [&'static str] = &[];

    /// Display name in `ListAgents`: [`Self::NAME`] unless overridden.
    fn name(&self) -> &str {
        Self::NAME
    }

    /// The task categories this agent serves: [`Self::TASK_TYPES`] at version 0 unless
    /// overridden.
    fn task_categories(&self) -> Vec<TaskCategory> {
        Self::TASK_TYPES.iter().map(|t| TaskCategory::new(*t, 0)).collect()
    }

    /// Starts the job and returns its handle. Must return fast (submit, don't wait), and
    /// should be idempotent per attempt (see [`TaskRequest::attempt_key`]).
    fn create(&self, ctx: &Context, task: TaskRequest) -> impl Future<Output = Result<Self::Meta, AgentError>> + Send;

    /// Reports the job's state. A failed job is `Ok` with a failed phase; transient
    /// trouble reaching the service should not fail the task.
    fn get(&self, ctx: &Context, meta: Self::Meta) -> impl Future<Output = Result<Resource, AgentError>> + Send;

    /// Cancels the job. Must be idempotent: cancelling a finished, cancelled or unknown
    /// job succeeds.
    fn delete(&self, ctx: &Context, meta: Self::Meta) -> impl Future<Output = Result<(), AgentError>> + Send;

    /// Execution metrics of the job. Optional.
    fn get_metrics(
        &self,
        ctx: &Context,
        meta: Self::Meta,
        query: MetricsQuery,
    ) -> impl Future<Output = Result<Vec<core::ExecutionMetricResult>, AgentError>> + Send {
        let _ = (ctx, meta, query);
        std::future::ready(Err(AgentError::unimplemented(format!("agent '{}' does not report metrics", self.name()))))
    }

    /// Logs of the job. Optional.
    fn get_logs(
        &self,
        ctx: &Context,
        meta: Self::Meta,
        query: LogsQuery,
    ) -> impl Future<Output = Result<Logs, AgentError>> + Send {
        let _ = (ctx, meta, query);
        std::future::ready(Err(AgentError::unimplemented(format!("agent '{}' does not serve logs", self.name()))))
    }
}

/// An agent that answers within the call (`ExecuteTaskSync`).
pub trait SyncAgent: Send + Sync + 'static {
    /// Display name in `ListAgents`, e.g. "ChatGPT Connector" (or override [`Self::name`]).
    const NAME: &'static str = "";

    /// The task types served, each at version 0 (or override [`Self::task_categories`]).
    const TASK_TYPES: &'static [&'static str] = &[];

    /// Display name in `ListAgents`: [`Self::NAME`] unless overridden.
    fn name(&self) -> &str {
        Self::NAME
    }

    /// The task categories this agent serves: [`Self::TASK_TYPES`] at version 0 unless
    /// overridden.
    fn task_categories(&self) -> Vec<TaskCategory> {
        Self::TASK_TYPES.iter().map(|t| TaskCategory::new(*t, 0)).collect()
    }

    /// Runs the task. The resource must be terminal; the server turns anything else
    /// into a retryable failure, since Propeller has nothing to poll for a sync task.
    fn execute(&self, ctx: &Context, task: TaskRequest) -> impl Future<Output = Result<Resource, AgentError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_sent_with_the_request_win_over_the_pods() {
        let pod =
            crate::testing::secrets(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", "pod-key-value"), ("_FSEC_OTHER", "pod-other")]);
        let sent = ConnectionSecrets::new([("snowflake_private_key".to_owned(), "sent-key-value".to_owned())]).unwrap();
        let ctx = Context::new(TaskCategory::new("snowflake", 0), pod.clone()).with_connection(sent);
        assert_eq!(ctx.secret("snowflake_private_key").unwrap().expose(), "sent-key-value");
        assert_eq!(ctx.optional_secret("SNOWFLAKE_PRIVATE_KEY").unwrap().unwrap().expose(), "sent-key-value");
        // What the request did not send still comes from the pod.
        assert_eq!(ctx.secret("other").unwrap().expose(), "pod-other");
        assert!(ctx.optional_secret("missing").unwrap().is_none());
        let plain = Context::new(TaskCategory::new("snowflake", 0), pod);
        assert_eq!(plain.secret("snowflake_private_key").unwrap().expose(), "pod-key-value");
    }

    #[test]
    fn a_declared_task_credential_comes_from_the_request_or_the_call_fails() {
        let pod = crate::testing::secrets(&[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", "pod-token")]);
        let sent = ConnectionSecrets::new([("databricks_token".to_owned(), "tenant-token".to_owned())]).unwrap();
        let category = TaskCategory::new("databricks", 0);
        let ctx = Context::new(category.clone(), pod.clone()).with_connection(sent).with_protocol(Protocol::Flyteidl2);
        assert_eq!(ctx.protocol(), Protocol::Flyteidl2);
        for declared in [true, false] {
            let token = ctx.task_credential("databricks_token", declared).unwrap().unwrap();
            assert_eq!(token.expose(), "tenant-token");
        }
        let bare = Context::new(category, pod);
        assert_eq!(bare.protocol(), Protocol::Flyteidl, "a context is Flyte 1's unless the front end says");
        assert!(bare.task_credential("databricks_token", false).unwrap().is_none(), "undeclared: the agent's own");
        let err = bare.task_credential("databricks_token", true).unwrap_err();
        assert!(matches!(&err, AgentError::FailedPrecondition(m) if m.contains("'databricks_token'")), "{err:?}");
        assert!(!err.message().contains("pod-token"));

        let mut task = TaskRequest::default();
        assert!(!task.declares_secret("databricks_token"));
        task.declared_secrets.insert("databricks_token".into());
        assert!(task.declares_secret("databricks_token") && !task.declares_secret("snowflake_private_key"));
    }

    #[test]
    fn category_displays_like_flytekit() {
        assert_eq!(TaskCategory::new("dummy", 0).to_string(), "dummy_v0");
    }

    #[test]
    fn custom_numbers_come_out_as_integers_and_errors_name_the_key() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Settings {
            num_workers: u32,
            name: String,
        }
        let custom = serde_json::json!({"num_workers": 2.0, "name": "x"});
        let task = TaskRequest {
            template: core::TaskTemplate {
                custom: Some(crate::json::json_to_struct(custom.as_object().unwrap())),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(task.custom_as::<Settings>().unwrap().num_workers, 2);
        let bad = TaskRequest::default();
        let err = bad.custom_as::<Settings>().unwrap_err();
        assert_eq!(err, AgentError::invalid_argument("template.custom: missing field `num_workers`"));
        assert!(bad.sql_statement().is_err());
    }

    #[test]
    fn attempt_key_is_stable_and_changes_with_the_retry() {
        let mut md = admin::TaskExecutionMetadata {
            task_execution_id: Some(core::TaskExecutionIdentifier {
                task_id: Some(core::Identifier { name: "t".into(), version: "v1".into(), ..Default::default() }),
                node_execution_id: Some(core::NodeExecutionIdentifier {
                    node_id: "n0".into(),
                    execution_id: Some(core::WorkflowExecutionIdentifier {
                        project: "p".into(),
                        domain: "d".into(),
                        name: "exec1".into(),
                        org: String::new(),
                    }),
                }),
                retry_attempt: 0,
            }),
            ..Default::default()
        };
        let key = |md: &admin::TaskExecutionMetadata| {
            TaskRequest { metadata: Some(md.clone()), ..Default::default() }.attempt_key()
        };
        let first = key(&md).unwrap();
        assert_eq!(first, key(&md).unwrap());
        md.task_execution_id.as_mut().unwrap().retry_attempt = 1;
        assert_ne!(first, key(&md).unwrap());
        assert_eq!(TaskRequest::default().attempt_key(), None);
    }
}
