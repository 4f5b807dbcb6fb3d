//! The Flyte 1.x front end: `flyteidl.service.{AsyncAgentService, SyncAgentService,
//! AgentMetadataService}` over [`AgentService`]. Translation only; the rules live in
//! `service.rs`.

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status::to_status;
use super::{LogHeader, deadline, stream_logs};
use crate::agent::{LogsQuery, MetricsQuery, TaskRequest};
use crate::error::AgentError;
use crate::pb::admin::{self, execute_task_sync_request as sync_req, execute_task_sync_response as sync_resp};
use crate::pb::service::{agent_metadata_service_server, async_agent_service_server, sync_agent_service_server};
use crate::registry::{AgentInfo, resolve_category};
use crate::service::{AgentService, CallInfo};

#[derive(Clone, Debug)]
pub(crate) struct V1 {
    svc: AgentService,
}

impl V1 {
    pub(crate) fn new(svc: AgentService) -> Self {
        Self { svc }
    }
}

fn category_of(c: Option<&admin::TaskCategory>, task_type: &str) -> Result<crate::agent::TaskCategory, Status> {
    resolve_category(c.map(|c| (c.name.as_str(), c.version)), task_type).map_err(|e| to_status(&e))
}

fn agent_proto(a: &AgentInfo) -> admin::Agent {
    #[allow(deprecated)]
    admin::Agent {
        name: a.name.clone(),
        // Propellers before the TaskCategory refactor read only this list.
        supported_task_types: a.categories.iter().map(|c| c.name.clone()).collect(),
        is_sync: a.is_sync,
        supported_task_categories: a.categories.iter().map(|c| c.to_proto()).collect(),
    }
}

fn task_request(
    template: Option<crate::pb::core::TaskTemplate>,
    inputs: Option<crate::pb::core::LiteralMap>,
    output_prefix: String,
    metadata: Option<admin::TaskExecutionMetadata>,
) -> Result<Box<TaskRequest>, Status> {
    let template = template.ok_or_else(|| {
        to_status(&AgentError::invalid_argument("template is missing; the request must carry the task template"))
    })?;
    let inputs = inputs.unwrap_or_default();
    Ok(Box::new(TaskRequest { template, inputs, output_prefix, metadata, ..Default::default() }))
}

#[tonic::async_trait]
impl async_agent_service_server::AsyncAgentService for V1 {
    async fn create_task(
        &self,
        req: Request<admin::CreateTaskRequest>,
    ) -> Result<Response<admin::CreateTaskResponse>, Status> {
        let call = CallInfo { deadline: deadline(&req), ..CallInfo::default() };
        // The request is consumed here, so it is not kept for the whole call.
        let task = {
            let r = req.into_inner();
            task_request(r.template, r.inputs, r.output_prefix, r.task_execution_metadata)?
        };
        let resource_meta = self.svc.create(task, call).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(admin::CreateTaskResponse { resource_meta }))
    }

    #[allow(deprecated)]
    async fn get_task(&self, req: Request<admin::GetTaskRequest>) -> Result<Response<admin::GetTaskResponse>, Status> {
        let mut call = CallInfo { deadline: deadline(&req), ..CallInfo::default() };
        let r = req.into_inner();
        let category = category_of(r.task_category.as_ref(), &r.task_type)?;
        call.output_prefix = Some(r.output_prefix);
        let resource = self.svc.get(category, &r.resource_meta, call).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(admin::GetTaskResponse { resource: Some(resource.to_proto()) }))
    }

    #[allow(deprecated)]
    async fn delete_task(
        &self,
        req: Request<admin::DeleteTaskRequest>,
    ) -> Result<Response<admin::DeleteTaskResponse>, Status> {
        let call = CallInfo { deadline: deadline(&req), ..CallInfo::default() };
        let r = req.into_inner();
        let category = category_of(r.task_category.as_ref(), &r.task_type)?;
        self.svc.delete(category, &r.resource_meta, call).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(admin::DeleteTaskResponse {}))
    }

    #[allow(deprecated)]
    async fn get_task_metrics(
        &self,
        req: Request<admin::GetTaskMetricsRequest>,
    ) -> Result<Response<admin::GetTaskMetricsResponse>, Status> {
        let call = CallInfo { deadline: deadline(&req), ..CallInfo::default() };
        let r = req.into_inner();
        let category = category_of(r.task_category.as_ref(), &r.task_type)?;
        let query = MetricsQuery { queries: r.queries, start_time: r.start_time, end_time: r.end_time, step: r.step };
        let results = self.svc.get_metrics(category, &r.resource_meta, query, call).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(admin::GetTaskMetricsResponse { results }))
    }

    type GetTaskLogsStream = Pin<Box<dyn Stream<Item = Result<admin::GetTaskLogsResponse, Status>> + Send>>;

    #[allow(deprecated)]
    async fn get_task_logs(
        &self,
        req: Request<admin::GetTaskLogsRequest>,
    ) -> Result<Response<Self::GetTaskLogsStream>, Status> {
        use admin::get_task_logs_response::Part;
        let call = CallInfo { deadline: deadline(&req), ..CallInfo::default() };
        let r = req.into_inner();
        let category = category_of(r.task_category.as_ref(), &r.task_type)?;
        let query = LogsQuery { lines: r.lines, token: r.token };
        let logs = self.svc.get_logs(category, &r.resource_meta, query, call).await.map_err(|e| to_status(&e))?;

        let stream = stream_logs(
            logs,
            LogHeader::First,
            |token| admin::GetTaskLogsResponse { part: Some(Part::Header(admin::GetTaskLogsResponseHeader { token })) },
            |lines| {
                let lines: Vec<admin::LogLine> = lines
                    .into_iter()
                    .map(|l| admin::LogLine {
                        timestamp: l.timestamp,
                        message: l.message,
                        originator: l.originator as i32,
                    })
                    .collect();
                let body = admin::GetTaskLogsResponseBody {
                    results: lines.iter().map(|l| l.message.clone()).collect(),
                    structured_lines: lines,
                };
                admin::GetTaskLogsResponse { part: Some(Part::Body(body)) }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl sync_agent_service_server::SyncAgentService for V1 {
    type ExecuteTaskSyncStream = Pin<Box<dyn Stream<Item = Result<admin::ExecuteTaskSyncResponse, Status>> + Send>>;

    /// Propeller's sequence: a header, then the inputs, then half-close; it reads exactly
    /// one response, which must be a header. We answer after the inputs (not waiting for
    /// the half-close), with one header message.
    async fn execute_task_sync(
        &self,
        req: Request<Streaming<admin::ExecuteTaskSyncRequest>>,
    ) -> Result<Response<Self::ExecuteTaskSyncStream>, Status> {
        let call = CallInfo { deadline: deadline(&req), ..CallInfo::default() };
        // Read in a future of its own, boxed and freed once the task is read: the messages
        // (a template is kilobytes) would otherwise size the future kept for the whole call.
        // The stream is dropped with it, so its buffers are not kept either; a client may
        // still send on its side, which is then discarded.
        let task = Box::pin(read_sync_task(req.into_inner())).await?;
        let resource = self.svc.execute(task, call).await.map_err(|e| to_status(&e))?;
        let response = admin::ExecuteTaskSyncResponse {
            res: Some(sync_resp::Res::Header(admin::ExecuteTaskSyncResponseHeader {
                resource: Some(resource.to_proto()),
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(response)))))
    }
}

#[tonic::async_trait]
impl agent_metadata_service_server::AgentMetadataService for V1 {
    async fn get_agent(
        &self,
        req: Request<admin::GetAgentRequest>,
    ) -> Result<Response<admin::GetAgentResponse>, Status> {
        let agent = self.svc.get_agent(&req.get_ref().name).map_err(|e| to_status(&e))?;
        Ok(Response::new(admin::GetAgentResponse { agent: Some(agent_proto(agent)) }))
    }

    async fn list_agents(
        &self,
        _req: Request<admin::ListAgentsRequest>,
    ) -> Result<Response<admin::ListAgentsResponse>, Status> {
        Ok(Response::new(admin::ListAgentsResponse {
            agents: self.svc.list_agents().iter().map(agent_proto).collect(),
        }))
    }
}

/// The task an `ExecuteTaskSync` stream carries: the header, then the inputs (absent when
/// the client half-closes after the header).
async fn read_sync_task(mut stream: Streaming<admin::ExecuteTaskSyncRequest>) -> Result<Box<TaskRequest>, Status> {
    let invalid = |m: &str| to_status(&AgentError::invalid_argument(m));
    let header = match stream.message().await? {
        Some(admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Header(h)) }) => h,
        Some(_) => {
            return Err(invalid("the first ExecuteTaskSync message must be the header (template, output prefix)"));
        }
        None => return Err(invalid("the ExecuteTaskSync stream ended before the header was sent")),
    };
    let inputs = match stream.message().await? {
        Some(admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(i)) }) => Some(i),
        // A task without inputs may half-close right after the header.
        None => None,
        Some(_) => return Err(invalid("the second ExecuteTaskSync message must carry the inputs")),
    };
    task_request(header.template, inputs, header.output_prefix, header.task_execution_metadata)
}
