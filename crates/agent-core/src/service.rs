//! The protocol-independent core of the server: routes calls to agents, decodes and
//! encodes resource meta (through the registry's erased agents), enforces the protocol's
//! rules and records flytekit's Prometheus metrics. The gRPC front ends translate
//! protocol messages to and from these calls and nothing more, so another protocol
//! generation can serve the same agents.
//!
//! Every call's result passes through here, so this is where its texts are scrubbed of
//! secrets (see [`crate::secrets`]): resources (messages, links, outputs, custom info),
//! metas, metric data, log lines and error messages, against the pod's secrets, live
//! derived credentials and the call's own connection secrets. The agent's work runs in
//! the call's scope, so its log lines are scrubbed of the call's secrets too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures_util::Stream;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::agent::Protocol;
use crate::agent::{Context, LogLine, LogLineStream, Logs, LogsQuery, MetricsQuery, TaskCategory, TaskRequest};
use crate::error::AgentError;
use crate::pb::core;
use crate::registry::{AgentInfo, Entry, Registry};
use crate::resource::{Phase, Resource, scrub_struct};
use crate::secrets::{ConnectionSecrets, Scrubber, SecretStore, scoped};
use crate::telemetry::metrics as m;

/// The agents of a binary plus what every call needs.
#[derive(Clone, Debug)]
pub struct AgentService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    secrets: SecretStore,
    /// Per agent (shared by its categories): calls in flight towards its service.
    limits: HashMap<TaskCategory, (Arc<Semaphore>, usize)>,
}

/// Per-call information a front end passes in.
#[derive(Debug, Clone, Default)]
pub struct CallInfo {
    /// The caller's deadline.
    pub deadline: Option<Instant>,
    /// The output prefix, when the request carries one.
    pub output_prefix: Option<String>,
    /// Which protocol generation the call came in on (a metrics label).
    pub protocol: Protocol,
    /// Secrets the request carried (Flyte 2), preferred to the pod's for this call.
    pub connection: ConnectionSecrets,
}

impl AgentService {
    /// A service over `registry`, resolving secrets from `secrets`.
    pub fn new(registry: Registry, secrets: SecretStore) -> Self {
        Self { inner: Arc::new(Inner { registry, secrets, limits: HashMap::new() }) }
    }

    /// The same service with at most `max` calls in flight per agent (create, get, delete,
    /// execute), so a burst of Propeller calls cannot exhaust the external service's
    /// quota; further calls wait for a slot within their deadline.
    pub fn limit_calls(self, max: usize) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            registry: shared.registry.clone(),
            secrets: shared.secrets.clone(),
            limits: HashMap::new(),
        });
        let mut limits = HashMap::new();
        for agent in inner.registry.agents() {
            let semaphore = Arc::new(Semaphore::new(max.max(1)));
            for category in &agent.categories {
                limits.insert(category.clone(), (semaphore.clone(), max.max(1)));
            }
        }
        Self { inner: Arc::new(Inner { limits, ..inner }) }
    }

    /// A slot for a call to the agent of `category`, waited for within half of the time
    /// the call has left (the other half is for the call itself). `Err` names the limit.
    async fn slot(&self, category: &TaskCategory, call: &CallInfo) -> Result<Option<OwnedSemaphorePermit>, String> {
        let Some((semaphore, max)) = self.inner.limits.get(category) else { return Ok(None) };
        let acquire = semaphore.clone().acquire_owned();
        let permit = match call.deadline {
            None => acquire.await.ok(),
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now()) / 2;
                tokio::time::timeout(wait, acquire).await.ok().and_then(Result::ok)
            }
        };
        permit.map(Some).ok_or_else(|| {
            format!(
                "the agent already has {max} calls in flight towards its service (max_concurrent_calls), \
                 and none finished in time for this one"
            )
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    fn context(&self, category: &TaskCategory, call: &CallInfo) -> Context {
        Context::new(category.clone(), self.inner.secrets.clone())
            .with_connection(call.connection.clone())
            .with_protocol(call.protocol)
            .with_deadline(call.deadline)
            .with_output_prefix(call.output_prefix.clone())
    }

    fn async_agent(
        &self,
        category: &TaskCategory,
        op: &str,
    ) -> Result<Arc<dyn crate::erased::DynAsyncAgent>, AgentError> {
        match self.inner.registry.lookup(category)? {
            Entry::Async(a) => Ok(a.clone()),
            Entry::Sync(_) => Err(AgentError::failed_precondition(format!(
                "task category {category} is served by a sync agent, which has no {op}; Propeller calls \
                 ExecuteTaskSync for it when ListAgents reports is_sync (static agentForTaskTypes routing treats \
                 every type as async)"
            ))),
        }
    }

    /// Starts a job: `CreateTask`. Returns the encoded resource meta.
    ///
    /// The task travels boxed (the front ends box it): a `TaskRequest` is about 2.5 KiB,
    /// and each async layer it passed through by value would keep its own copy for the
    /// whole call, which is most of what a call in flight costs.
    pub async fn create(&self, task: impl Into<Box<TaskRequest>>, call: CallInfo) -> Result<Vec<u8>, AgentError> {
        let task = task.into();
        let category = task.category();
        m::observe_input_bytes(self.metric_label(&category), prost::Message::encoded_len(&task.inputs));
        let result = self
            .measured(&category, "create", call.protocol, async {
                if category.name.is_empty() {
                    return Err(AgentError::invalid_argument(
                        "template.type is empty; the template names no task type",
                    ));
                }
                let agent = self.async_agent(&category, "CreateTask")?;
                let _slot = self.slot(&category, &call).await.map_err(AgentError::unavailable)?;
                scoped(call.connection.clone(), agent.create(&self.context(&category, &call), task)).await
            })
            .await;
        let scrubber = call.connection.scrubber();
        // A meta holding a secret is an agent's bug; the value still never leaves.
        result.map(|meta| scrubber.scrub_bytes(&meta).into_owned()).map_err(|e| scrub_error(e, &scrubber))
    }

    /// Reports a job: `GetTask`.
    pub async fn get(&self, category: TaskCategory, meta: &[u8], call: CallInfo) -> Result<Resource, AgentError> {
        let result = self
            .measured(&category, "get", call.protocol, async {
                let agent = self.async_agent(&category, "GetTask")?;
                // Busy is not the job's failure: report it still running, Propeller polls again.
                let _slot = match self.slot(&category, &call).await {
                    Ok(slot) => slot,
                    Err(busy) => return Ok(Resource::running().with_message(format!("{busy}; will check again"))),
                };
                scoped(call.connection.clone(), agent.get(&self.context(&category, &call), meta)).await
            })
            .await;
        scrubbed(&call.connection, result)
    }

    /// Cancels a job: `DeleteTask`.
    pub async fn delete(&self, category: TaskCategory, meta: &[u8], call: CallInfo) -> Result<(), AgentError> {
        let result = self
            .measured(&category, "delete", call.protocol, async {
                let agent = self.async_agent(&category, "DeleteTask")?;
                let _slot = self.slot(&category, &call).await.map_err(AgentError::unavailable)?;
                scoped(call.connection.clone(), agent.delete(&self.context(&category, &call), meta)).await
            })
            .await;
        result.map_err(|e| scrub_error(e, &call.connection.scrubber()))
    }

    /// Runs a sync task: `ExecuteTaskSync`. The result is always terminal. The task is
    /// boxed as for [`Self::create`].
    pub async fn execute(&self, task: impl Into<Box<TaskRequest>>, call: CallInfo) -> Result<Resource, AgentError> {
        let task = task.into();
        let category = task.category();
        m::observe_input_bytes(self.metric_label(&category), prost::Message::encoded_len(&task.inputs));
        let result = self
            .measured(&category, "do", call.protocol, async {
                let agent = match self.inner.registry.lookup(&category)? {
                    Entry::Sync(s) => s.clone(),
                    Entry::Async(_) => {
                        return Err(AgentError::failed_precondition(format!(
                            "task category {category} is served by an async agent; call CreateTask, then GetTask"
                        )));
                    }
                };
                let _slot = match self.slot(&category, &call).await {
                    Ok(slot) => slot,
                    Err(busy) => return Ok(Resource::retryable_failure(busy)),
                };
                let resource =
                    scoped(call.connection.clone(), agent.execute(&self.context(&category, &call), task)).await?;
                Ok(ensure_terminal(resource))
            })
            .await;
        scrubbed(&call.connection, result)
    }

    /// Execution metrics of a job: `GetTaskMetrics`.
    pub async fn get_metrics(
        &self,
        category: TaskCategory,
        meta: &[u8],
        query: MetricsQuery,
        call: CallInfo,
    ) -> Result<Vec<core::ExecutionMetricResult>, AgentError> {
        let scrubber = || call.connection.scrubber();
        let agent = self.async_agent(&category, "GetTaskMetrics")?;
        let ctx = self.context(&category, &call);
        let mut results = scoped(call.connection.clone(), agent.get_metrics(&ctx, meta, query))
            .await
            .map_err(|e| scrub_error(e, &scrubber()))?;
        let scrubber = scrubber();
        for r in &mut results {
            scrubber.scrub_in_place(&mut r.metric);
            if let Some(data) = &mut r.data {
                scrub_struct(data, &scrubber);
            }
        }
        Ok(results)
    }

    /// Logs of a job: `GetTaskLogs`.
    pub async fn get_logs(
        &self,
        category: TaskCategory,
        meta: &[u8],
        query: LogsQuery,
        call: CallInfo,
    ) -> Result<Logs, AgentError> {
        let agent = self.async_agent(&category, "GetTaskLogs")?;
        let ctx = self.context(&category, &call);
        let connection = call.connection;
        let logs = scoped(connection.clone(), agent.get_logs(&ctx, meta, query))
            .await
            .map_err(|e| scrub_error(e, &connection.scrubber()))?;
        let mut next_token = logs.next_token;
        connection.scrubber().scrub_in_place(&mut next_token);
        Ok(Logs { next_token, lines: Box::pin(ScrubbedLines { lines: logs.lines, connection }) })
    }

    /// The `task_type` metric label: the category's name when this binary serves it.
    fn metric_label<'a>(&self, category: &'a TaskCategory) -> &'a str {
        if self.inner.registry.is_sync(category).is_some() { &category.name } else { m::UNKNOWN_TASK_TYPE }
    }

    /// Runs one operation, recording flytekit's success/failure counters and latency. A
    /// combinator rather than an `async fn`: an `async fn` keeps its future argument twice
    /// for the whole call (once as the argument, once as the future it awaits), and this
    /// wraps every call in flight.
    pub(crate) fn measured<'a, T: 'a>(
        &'a self,
        category: &'a TaskCategory,
        operation: &'static str,
        protocol: Protocol,
        fut: impl std::future::Future<Output = Result<T, AgentError>> + 'a,
    ) -> impl std::future::Future<Output = Result<T, AgentError>> + 'a {
        let start = Instant::now();
        futures_util::FutureExt::map(fut, move |result| {
            m::record(self.metric_label(category), operation, protocol.as_str(), start, result.as_ref().err());
            result
        })
    }

    /// Every agent: `ListAgents`.
    pub fn list_agents(&self) -> &[AgentInfo] {
        self.inner.registry.agents()
    }

    /// One agent by display name: `GetAgent`.
    pub fn get_agent(&self, name: &str) -> Result<&AgentInfo, AgentError> {
        self.inner.registry.agents().iter().find(|a| a.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.inner.registry.agents().iter().map(|a| a.name.as_str()).collect();
            AgentError::not_found(format!("no agent is named '{name}'; this deployment has: {}", names.join(", ")))
        })
    }
}

/// A call's resource, or its error, scrubbed of every secret value the call could expose.
fn scrubbed(connection: &ConnectionSecrets, result: Result<Resource, AgentError>) -> Result<Resource, AgentError> {
    let scrubber = connection.scrubber();
    match result {
        Ok(mut resource) => {
            resource.scrub(&scrubber);
            Ok(resource)
        }
        Err(e) => Err(scrub_error(e, &scrubber)),
    }
}

/// The same error with its message scrubbed.
pub(crate) fn scrub_error(e: AgentError, scrubber: &Scrubber) -> AgentError {
    let changed = match scrubber.scrub(e.message()) {
        Cow::Owned(m) => Some(m),
        Cow::Borrowed(_) => None,
    };
    let Some(m) = changed else { return e };
    match e {
        AgentError::NotFound(_) => AgentError::NotFound(m),
        AgentError::InvalidArgument(_) => AgentError::InvalidArgument(m),
        AgentError::FailedPrecondition(_) => AgentError::FailedPrecondition(m),
        AgentError::PermissionDenied(_) => AgentError::PermissionDenied(m),
        AgentError::Unavailable(_) => AgentError::Unavailable(m),
        AgentError::DeadlineExceeded(_) => AgentError::DeadlineExceeded(m),
        AgentError::Unimplemented(_) => AgentError::Unimplemented(m),
        AgentError::Internal(_) => AgentError::Internal(m),
    }
}

/// A job's log lines, scrubbed as they stream; the agent's reader runs in the call's
/// scope, so what it logs meanwhile is scrubbed too.
struct ScrubbedLines {
    lines: LogLineStream,
    connection: ConnectionSecrets,
}

impl Stream for ScrubbedLines {
    type Item = Result<LogLine, AgentError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = crate::secrets::sync_scoped(&this.connection, || this.lines.as_mut().poll_next(cx));
        polled.map(|item| {
            item.map(|line| {
                let scrubber = this.connection.scrubber();
                match line {
                    Ok(mut line) => {
                        scrubber.scrub_in_place(&mut line.message);
                        Ok(line)
                    }
                    Err(e) => Err(scrub_error(e, &scrubber)),
                }
            })
        })
    }
}

/// Propeller has no resource meta to poll for a sync task, so a non-terminal answer
/// would leave the task hanging; it becomes a retryable failure that says why.
fn ensure_terminal(resource: Resource) -> Resource {
    if resource.phase.is_terminal() {
        return resource;
    }
    let phase = resource.phase;
    tracing::warn!(message = "Sync agent returned a non-terminal phase.", %phase);
    Resource {
        phase: Phase::RetryableFailed,
        message: format!(
            "the sync agent returned phase {phase}, but a sync task must finish within the call: {}",
            resource.message
        ),
        ..resource
    }
}
