//! executor: a local executor that drives an agent the way FlytePropeller does: for an
//! async agent, create → poll get until a terminal phase → outputs, and delete on
//! cancellation; for a sync agent, one execute. It runs in-process (against an
//! [`AgentService`]) or over gRPC against a running agent ([`GrpcBackend`]).
//!
//! agentctl, the tests and the soak use it; agent binaries never link it, so it lives
//! beside agent-core rather than in it.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use agent_core::service::{AgentService, CallInfo};
use agent_core::{AgentError, Resource, TaskCategory, TaskRequest};

mod grpc;
#[cfg(feature = "test-util")]
pub mod testing;

pub use grpc::GrpcBackend;

/// Where calls go: an in-process service or a remote agent.
pub trait Backend: Send + Sync {
    /// Whether the category is served by a sync agent.
    fn is_sync<'a>(&'a self, category: &'a TaskCategory) -> BoxFuture<'a, Result<bool, AgentError>>;
    /// `CreateTask`.
    fn create(&self, task: TaskRequest) -> BoxFuture<'_, Result<Vec<u8>, AgentError>>;
    /// `GetTask`.
    fn get<'a>(
        &'a self,
        category: &'a TaskCategory,
        meta: &'a [u8],
        output_prefix: &'a str,
    ) -> BoxFuture<'a, Result<Resource, AgentError>>;
    /// `DeleteTask`.
    fn delete<'a>(&'a self, category: &'a TaskCategory, meta: &'a [u8]) -> BoxFuture<'a, Result<(), AgentError>>;
    /// `ExecuteTaskSync`.
    fn execute(&self, task: TaskRequest) -> BoxFuture<'_, Result<Resource, AgentError>>;
}

impl Backend for AgentService {
    fn is_sync<'a>(&'a self, category: &'a TaskCategory) -> BoxFuture<'a, Result<bool, AgentError>> {
        Box::pin(async move { Ok(self.registry().is_sync(category).unwrap_or(false)) })
    }
    fn create(&self, task: TaskRequest) -> BoxFuture<'_, Result<Vec<u8>, AgentError>> {
        Box::pin(AgentService::create(self, task, CallInfo::default()))
    }
    fn get<'a>(
        &'a self,
        category: &'a TaskCategory,
        meta: &'a [u8],
        output_prefix: &'a str,
    ) -> BoxFuture<'a, Result<Resource, AgentError>> {
        let call = CallInfo { output_prefix: Some(output_prefix.to_owned()), ..CallInfo::default() };
        Box::pin(AgentService::get(self, category.clone(), meta, call))
    }
    fn delete<'a>(&'a self, category: &'a TaskCategory, meta: &'a [u8]) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(AgentService::delete(self, category.clone(), meta, CallInfo::default()))
    }
    fn execute(&self, task: TaskRequest) -> BoxFuture<'_, Result<Resource, AgentError>> {
        Box::pin(AgentService::execute(self, task, CallInfo::default()))
    }
}

/// How the executor polls.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Time between `GetTask` calls (Propeller's default resync is 30 s).
    pub poll_interval: Duration,
    /// `GetTask` failures tolerated before the task fails (Propeller: more than 5).
    pub max_get_failures: u32,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(1), max_get_failures: 5 }
    }
}

/// What happened to a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It reached a terminal phase (which may be a failure).
    Finished(Resource),
    /// It was cancelled; `delete` says whether the job was cancelled at the service.
    Cancelled {
        /// The result of `DeleteTask`, `None` when nothing had been created yet.
        delete: Option<Result<(), AgentError>>,
    },
}

/// What the executor reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// `CreateTask` returned a job handle of this many bytes.
    Created(usize),
    /// A `GetTask` answered.
    Polled(Resource),
    /// A `GetTask` failed; Propeller counts these.
    GetFailed(AgentError),
}

/// Drives tasks through a [`Backend`].
#[derive(Debug, Clone)]
pub struct LocalExecutor<B> {
    backend: B,
    options: ExecutorOptions,
}

impl<B: Backend> LocalExecutor<B> {
    /// An executor over `backend`.
    pub fn new(backend: B, options: ExecutorOptions) -> Self {
        Self { backend, options }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Runs `task` to a terminal phase, or until `cancel` fires (then deletes the job).
    pub async fn run(
        &self,
        task: TaskRequest,
        cancel: &CancellationToken,
        mut on_progress: impl FnMut(&Progress) + Send,
    ) -> Result<Outcome, AgentError> {
        let category = task.category();
        if self.backend.is_sync(&category).await? {
            return tokio::select! {
                r = self.backend.execute(task) => r.map(Outcome::Finished),
                () = cancel.cancelled() => Ok(Outcome::Cancelled { delete: None }),
            };
        }
        let output_prefix = task.output_prefix.clone();
        let meta = tokio::select! {
            r = self.backend.create(task) => r?,
            () = cancel.cancelled() => return Ok(Outcome::Cancelled { delete: None }),
        };
        on_progress(&Progress::Created(meta.len()));
        let mut failures = 0;
        loop {
            match self.backend.get(&category, &meta, &output_prefix).await {
                Ok(resource) => {
                    let done = resource.phase.is_terminal();
                    on_progress(&Progress::Polled(resource.clone()));
                    if done {
                        return Ok(Outcome::Finished(resource));
                    }
                }
                Err(e) => {
                    failures += 1;
                    on_progress(&Progress::GetFailed(e.clone()));
                    if failures > self.options.max_get_failures {
                        return Err(e.context(&format!("GetTask failed {failures} times")));
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.poll_interval) => {}
                () = cancel.cancelled() => {
                    let delete = self.backend.delete(&category, &meta).await;
                    return Ok(Outcome::Cancelled { delete: Some(delete) });
                }
            }
        }
    }
}
