//! A gRPC client for the agent services, used by the [`LocalExecutor`](crate::LocalExecutor)
//! to drive a running agent the way Propeller does (Flyte 1) or a Flyte 2 backend does (`flyteidl2.connector`,
//! with per-request secrets).

use std::time::Duration;

use futures_util::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use agent_core::pb::admin::{self, execute_task_sync_request as sync_req, execute_task_sync_response as sync_resp};
use agent_core::pb::convert;
use agent_core::pb::service::agent_metadata_service_client::AgentMetadataServiceClient;
use agent_core::pb::service::async_agent_service_client::AsyncAgentServiceClient;
use agent_core::pb::service::sync_agent_service_client::SyncAgentServiceClient;
use agent_core::pb::v2;
use agent_core::pb::v2::connector::async_connector_service_client::AsyncConnectorServiceClient;
use agent_core::{AgentError, Resource, TaskCategory, TaskRequest};

use crate::Backend;

/// An agent reached over gRPC.
#[derive(Debug, Clone)]
pub struct GrpcBackend {
    channel: Channel,
    timeout: Duration,
    /// `Some`: speak Flyte 2, sending these secrets in every request's `connection`.
    flyte2: Option<ConnectionSecrets>,
}

/// Secrets for Flyte 2's `connection`; `Debug` shows the keys only.
#[derive(Clone, Default)]
struct ConnectionSecrets(Vec<(String, String)>);

impl std::fmt::Debug for ConnectionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| k)).finish()
    }
}

impl GrpcBackend {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:8000`); every call gets `timeout`, as
    /// Propeller gives every call its configured deadline.
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Self, AgentError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| AgentError::invalid_argument(format!("endpoint '{endpoint}': {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| AgentError::unavailable(format!("cannot connect to {endpoint}: {e}")))?;
        Ok(Self::from_channel(channel, timeout))
    }

    /// An agent reached over `channel`, which the caller connected (over TLS, say: agentctl
    /// builds its own, so that its errors can name the flags to fix); every call gets
    /// `timeout`.
    pub fn from_channel(channel: Channel, timeout: Duration) -> Self {
        Self { channel, timeout, flyte2: None }
    }

    /// The same agent over Flyte 2 (`flyteidl2.connector`), sending `secrets` as each
    /// request's `connection.secrets`, as a Flyte 2 backend does. Sync agents then run
    /// through CreateTask and GetTask, Flyte 2 having no sync call.
    #[must_use]
    pub fn flyte2(mut self, secrets: Vec<(String, String)>) -> Self {
        self.flyte2 = Some(ConnectionSecrets(secrets));
        self
    }

    fn connection(&self, category: &TaskCategory) -> Option<v2::core::Connection> {
        let secrets = self.flyte2.as_ref()?;
        Some(v2::core::Connection {
            task_type: category.name.clone(),
            secrets: secrets.0.iter().cloned().collect(),
            configs: Default::default(),
        })
    }

    /// The channel, for other clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `grpc.health.v1.Health/Check` for `service` (`""`: the whole server, as a
    /// Kubernetes probe asks). `Ok(true)` when SERVING.
    pub async fn health(&self, service: &str) -> Result<bool, AgentError> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut client = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        let r = client.check(self.request(request)).await.map_err(|s| from_status(&s))?;
        Ok(r.into_inner().status == ServingStatus::Serving as i32)
    }

    /// `ListAgents`: what the agent serves, as Propeller discovers it.
    pub async fn list_agents(&self) -> Result<Vec<admin::Agent>, AgentError> {
        let mut client = AgentMetadataServiceClient::new(self.channel.clone());
        let r = client.list_agents(self.request(admin::ListAgentsRequest {})).await.map_err(|s| from_status(&s))?;
        Ok(r.into_inner().agents)
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }
}

/// A status from an agent, back in the error type.
fn from_status(s: &Status) -> AgentError {
    let m = s.message().to_owned();
    match s.code() {
        Code::NotFound => AgentError::NotFound(m),
        Code::InvalidArgument | Code::OutOfRange => AgentError::InvalidArgument(m),
        Code::FailedPrecondition => AgentError::FailedPrecondition(m),
        Code::PermissionDenied | Code::Unauthenticated => AgentError::PermissionDenied(m),
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => AgentError::Unavailable(m),
        Code::DeadlineExceeded => AgentError::DeadlineExceeded(m),
        Code::Unimplemented => AgentError::Unimplemented(m),
        _ => AgentError::Internal(format!("{:?}: {m}", s.code())),
    }
}

impl Backend for GrpcBackend {
    /// Asks `ListAgents`, like Propeller's discovery; categories it does not list are async.
    /// Over Flyte 2 every agent is async: sync ones answer through CreateTask and GetTask.
    fn is_sync<'a>(&'a self, category: &'a TaskCategory) -> BoxFuture<'a, Result<bool, AgentError>> {
        Box::pin(async move {
            if self.flyte2.is_some() {
                return Ok(false);
            }
            let mut client = AgentMetadataServiceClient::new(self.channel.clone());
            match client.list_agents(self.request(admin::ListAgentsRequest {})).await {
                Ok(r) => Ok(r.into_inner().agents.iter().any(|a| {
                    a.is_sync
                        && a.supported_task_categories
                            .iter()
                            .any(|c| c.name == category.name && c.version == category.version)
                })),
                Err(s) if s.code() == Code::Unimplemented => Ok(false),
                Err(s) => Err(from_status(&s)),
            }
        })
    }

    fn create(&self, task: TaskRequest) -> BoxFuture<'_, Result<Vec<u8>, AgentError>> {
        Box::pin(async move {
            if self.flyte2.is_some() {
                let connection = self.connection(&task.category());
                let req = convert::v2_create_request(&task, connection)
                    .map_err(|e| AgentError::invalid_argument(format!("the task cannot be sent over Flyte 2: {e}")))?;
                let mut client = AsyncConnectorServiceClient::new(self.channel.clone());
                let r = client.create_task(self.request(req)).await.map_err(|s| from_status(&s))?;
                return Ok(r.into_inner().resource_meta);
            }
            let mut client = AsyncAgentServiceClient::new(self.channel.clone());
            let req = admin::CreateTaskRequest {
                inputs: Some(task.inputs),
                template: Some(task.template),
                output_prefix: task.output_prefix,
                task_execution_metadata: task.metadata,
            };
            let r = client.create_task(self.request(req)).await.map_err(|s| from_status(&s))?;
            Ok(r.into_inner().resource_meta)
        })
    }

    #[allow(deprecated)]
    fn get<'a>(
        &'a self,
        category: &'a TaskCategory,
        meta: &'a [u8],
        output_prefix: &'a str,
    ) -> BoxFuture<'a, Result<Resource, AgentError>> {
        Box::pin(async move {
            if self.flyte2.is_some() {
                let req = v2::connector::GetTaskRequest {
                    resource_meta: meta.to_vec(),
                    task_category: Some(category.to_v2()),
                    output_prefix: output_prefix.to_owned(),
                    connection: self.connection(category),
                };
                let mut client = AsyncConnectorServiceClient::new(self.channel.clone());
                let r = client.get_task(self.request(req)).await.map_err(|s| from_status(&s))?;
                return convert::resource_from_v2(&r.into_inner().resource.unwrap_or_default());
            }
            let mut client = AsyncAgentServiceClient::new(self.channel.clone());
            let req = admin::GetTaskRequest {
                task_type: category.name.clone(),
                resource_meta: meta.to_vec(),
                task_category: Some(category.to_proto()),
                output_prefix: output_prefix.to_owned(),
            };
            let r = client.get_task(self.request(req)).await.map_err(|s| from_status(&s))?;
            let resource = r.into_inner().resource.unwrap_or_default();
            Ok(Resource::from_proto(&resource))
        })
    }

    #[allow(deprecated)]
    fn delete<'a>(&'a self, category: &'a TaskCategory, meta: &'a [u8]) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            if self.flyte2.is_some() {
                let req = v2::connector::DeleteTaskRequest {
                    resource_meta: meta.to_vec(),
                    task_category: Some(category.to_v2()),
                    connection: self.connection(category),
                };
                let mut client = AsyncConnectorServiceClient::new(self.channel.clone());
                client.delete_task(self.request(req)).await.map_err(|s| from_status(&s))?;
                return Ok(());
            }
            let mut client = AsyncAgentServiceClient::new(self.channel.clone());
            let req = admin::DeleteTaskRequest {
                task_type: category.name.clone(),
                resource_meta: meta.to_vec(),
                task_category: Some(category.to_proto()),
            };
            client.delete_task(self.request(req)).await.map_err(|s| from_status(&s))?;
            Ok(())
        })
    }

    /// Propeller's sequence: header, inputs, half-close, then exactly one response.
    fn execute(&self, task: TaskRequest) -> BoxFuture<'_, Result<Resource, AgentError>> {
        Box::pin(async move {
            let mut client = SyncAgentServiceClient::new(self.channel.clone());
            let header = admin::ExecuteTaskSyncRequest {
                part: Some(sync_req::Part::Header(admin::CreateRequestHeader {
                    template: Some(task.template),
                    output_prefix: task.output_prefix,
                    task_execution_metadata: task.metadata,
                    max_dataset_size_bytes: 0,
                })),
            };
            let inputs = admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(task.inputs)) };
            let outbound = tokio_stream::iter([header, inputs]);
            let mut responses =
                client.execute_task_sync(self.request(outbound)).await.map_err(|s| from_status(&s))?.into_inner();
            match responses.message().await.map_err(|s| from_status(&s))? {
                Some(admin::ExecuteTaskSyncResponse { res: Some(sync_resp::Res::Header(h)) }) => {
                    Ok(Resource::from_proto(&h.resource.unwrap_or_default()))
                }
                Some(_) => Err(AgentError::internal("expected a header in the ExecuteTaskSync response")),
                None => Err(AgentError::internal("the agent closed ExecuteTaskSync without a response")),
            }
        })
    }
}
