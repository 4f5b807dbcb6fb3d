//! The Flyte 2 front end: `flyteidl2.connector.{AsyncConnectorService,
//! ConnectorMetadataService}` over the same [`AgentService`] as Flyte 1, so agents do not
//! know which generation called them.
//!
//! Flyte 2's `core` types keep Flyte 1's field numbers and types and only add fields
//! (`pb_compat_tests` below checks this for every type crossed here), so a template,
//! literal or execution id crosses between the generations by re-encoding: bytes written
//! from one decode as the other, fields only Flyte 2 has are dropped on the way in and
//! left unset on the way out. What differs in shape is translated by hand: named
//! inputs and outputs, log links, and `connection` (per-request secrets).
//!
//! Flyte 2 has no sync service. A sync agent is served as an async one whose create
//! runs the call and returns the finished [`Resource`] as the resource meta, and whose
//! get hands it back; nothing is kept between the calls.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures_util::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{LogHeader, deadline, recode, recode_owned, stream_logs};
use crate::agent::{LogsQuery, MetricsQuery, TaskCategory, TaskRequest};
use crate::error::AgentError;
use crate::pb::v2::connector::{self as c, async_connector_service_server, connector_metadata_service_server};
use crate::pb::v2::{core as core2, logs, task};
use crate::pb::{admin, core};
use crate::registry::AgentInfo;
use crate::resource::{Phase, Resource, scrub_literal_map, scrub_struct};
use crate::secrets::{ConnectionSecrets, Scrubber};
use crate::service::{AgentService, CallInfo, Protocol};

/// Largest finished sync result carried as a resource meta. The Flyte 2 backend stores
/// the meta with the action's state; a ChatGPT answer is a few KiB, and anything near
/// this size would bloat that state. A larger result fails the task with a message
/// saying so (the call is not repeated, so the cost is not paid twice).
pub(crate) const MAX_SYNC_RESULT_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub(crate) struct V2 {
    svc: AgentService,
}

impl V2 {
    pub(crate) fn new(svc: AgentService) -> Self {
        Self { svc }
    }

    /// The call of a request, with the secrets its `connection` carries: too many or too
    /// large are refused here, before anything else is done with the request.
    fn call<T>(req: &Request<T>, connection: Option<&core2::Connection>) -> Result<CallInfo, Status> {
        let connection = match connection {
            Some(c) => ConnectionSecrets::new(c.secrets.iter().map(|(k, v)| (k.clone(), v.clone())))
                .map_err(|e| to_status(&e))?,
            None => ConnectionSecrets::default(),
        };
        Ok(CallInfo { deadline: deadline(req), protocol: Protocol::Flyteidl2, connection, ..CallInfo::default() })
    }

    fn category(c: Option<&c::TaskCategory>) -> Result<TaskCategory, Status> {
        match c {
            Some(c) if !c.name.is_empty() => Ok(TaskCategory::new(&c.name, c.version)),
            _ => Err(invalid("task_category is missing: send the task type and version CreateTask was called with")),
        }
    }
}

fn invalid(message: impl Into<String>) -> Status {
    to_status(&AgentError::invalid_argument(message))
}

/// Re-encodes a message of one generation as the other. Only used between types whose
/// shared fields agree (see the module docs), where it cannot lose anything either side
/// has in common.
fn transcode<A: Message, B: Message + Default>(what: &str, from: &A) -> Result<B, Status> {
    recode(from).map_err(|e| invalid(format!("{what} could not be read: {e}")))
}

/// Named literals as a literal map, for `what` (`inputs`, `outputs`). A name given twice
/// would make the map ambiguous, so it is refused rather than one value dropped.
pub(crate) fn from_named(named: Vec<task::NamedLiteral>, what: &str) -> Result<core::LiteralMap, AgentError> {
    let invalid = AgentError::invalid_argument;
    let mut literals = std::collections::HashMap::with_capacity(named.len());
    for (i, n) in named.into_iter().enumerate() {
        if n.name.is_empty() {
            return Err(invalid(format!("{what}.literals[{i}] has no name")));
        }
        let Some(value) = n.value else {
            return Err(invalid(format!("{what}.literals[{i}] ('{}') has no value", n.name)));
        };
        let value: core::Literal = recode_owned(value)
            .map_err(|e| invalid(format!("{what}.literals[{i}] ('{}') could not be read: {e}", n.name)))?;
        if literals.insert(n.name.clone(), value).is_some() {
            return Err(invalid(format!("{what}: '{}' is given more than once", n.name)));
        }
    }
    Ok(core::LiteralMap { literals })
}

/// A literal map as named literals, sorted by name so that equal maps give equal messages.
pub(crate) fn to_named(map: &core::LiteralMap) -> Result<Vec<task::NamedLiteral>, prost::DecodeError> {
    let sorted: BTreeMap<&String, &core::Literal> = map.literals.iter().collect();
    sorted
        .into_iter()
        .map(|(name, value)| Ok(task::NamedLiteral { name: name.clone(), value: Some(recode(value)?) }))
        .collect()
}

/// The CreateTaskRequest a Flyte 2 backend sends for `task` (the `executor` crate's client
/// and the test helpers send it, through [`crate::pb::convert`]).
pub(crate) fn create_request(
    task: &TaskRequest,
    connection: Option<core2::Connection>,
) -> Result<c::CreateTaskRequest, prost::DecodeError> {
    Ok(c::CreateTaskRequest {
        inputs: Some(task::Inputs { literals: to_named(&task.inputs)?, context: Vec::new() }),
        template: Some(recode(&task.template)?),
        output_prefix: task.output_prefix.clone(),
        task_execution_metadata: task.metadata.as_ref().map(recode).transpose()?,
        connection,
    })
}

/// A Flyte 2 resource as [`Resource`] (what the `executor` crate's client reads, through
/// [`crate::pb::convert`]).
pub(crate) fn resource_from_v2(r: &c::Resource) -> Result<Resource, AgentError> {
    let unreadable = |e: prost::DecodeError| AgentError::internal(format!("the agent's answer could not be read: {e}"));
    let v1 = admin::Resource {
        outputs: r.outputs.as_ref().map(|o| from_named(o.literals.clone(), "outputs")).transpose()?,
        message: r.message.clone(),
        log_links: r.log_links.iter().map(recode).collect::<Result<_, _>>().map_err(unreadable)?,
        phase: r.phase,
        custom_info: r.custom_info.clone(),
        ..Default::default()
    };
    Ok(Resource::from_proto(&v1))
}

/// Removes the task's connection spec from `custom`: the keys Flyte 2's connector plugin
/// reads as the task's `Connection` (`secrets`, `configs`, `taskType` or `task_type`). It
/// is the backend's plumbing (the secrets it names arrive resolved in `connection`), not
/// the agent's settings, and agents that refuse unknown settings would refuse the task.
/// Only values of the spec's shape (maps of strings or nulls, a string) are taken for it.
/// Returns the keys of `secrets` that name a secret (flyte-sdk writes a null name for a
/// secret the task did not configure): the credentials the task declares.
fn strip_connection_spec(template: &mut core::TaskTemplate) -> std::collections::BTreeSet<String> {
    use prost_types::value::Kind;
    let mut declared = std::collections::BTreeSet::new();
    let Some(custom) = template.custom.as_mut() else { return declared };
    let is_string_map = |v: &prost_types::Value| match &v.kind {
        Some(Kind::StructValue(s)) => {
            s.fields.values().all(|v| matches!(v.kind, Some(Kind::StringValue(_) | Kind::NullValue(_))))
        }
        _ => false,
    };
    if let Some(secrets) = custom.fields.get("secrets").filter(|v| is_string_map(v))
        && let Some(Kind::StructValue(s)) = &secrets.kind
    {
        let named = |v: &prost_types::Value| matches!(&v.kind, Some(Kind::StringValue(n)) if !n.trim().is_empty());
        declared.extend(s.fields.iter().filter(|(_, v)| named(v)).map(|(k, _)| k.clone()));
    }
    custom.fields.retain(|key, value| {
        let spec = match key.as_str() {
            "secrets" | "configs" => is_string_map(value),
            "taskType" | "task_type" => matches!(value.kind, Some(Kind::StringValue(_))),
            _ => false,
        };
        !spec
    });
    declared
}

fn task_request(
    template: Option<core2::TaskTemplate>,
    inputs: Option<task::Inputs>,
    output_prefix: String,
    metadata: Option<c::TaskExecutionMetadata>,
) -> Result<Box<TaskRequest>, Status> {
    let template = template.ok_or_else(|| invalid("template is missing; the request must carry the task template"))?;
    let mut template: core::TaskTemplate = transcode("template", &template)?;
    let declared_secrets = strip_connection_spec(&mut template);
    Ok(Box::new(TaskRequest {
        template,
        declared_secrets,
        inputs: from_named(inputs.unwrap_or_default().literals, "inputs").map_err(|e| to_status(&e))?,
        output_prefix,
        metadata: metadata
            .map(|m| transcode::<_, admin::TaskExecutionMetadata>("task_execution_metadata", &m))
            .transpose()?,
    }))
}

/// A [`Resource`] in Flyte 2's shape. Outputs are listed by name, so the message is the
/// same for the same outputs.
fn resource_to_v2(resource: &Resource) -> Result<c::Resource, Status> {
    let v1 = resource.to_proto();
    let outputs = v1
        .outputs
        .as_ref()
        .map(|map| to_named(map).map_err(|e| invalid(format!("the outputs could not be written: {e}"))))
        .transpose()?
        .map(|literals| task::Outputs { literals, produced_artifacts: Vec::new() });
    let log_links = v1
        .log_links
        .iter()
        .zip(&resource.log_links)
        .map(|(l, ours)| {
            let mut link: core2::TaskLog = transcode("log link", l)?;
            let kind =
                if ours.dashboard { core2::task_log::LinkType::Dashboard } else { core2::task_log::LinkType::External };
            link.link_type = kind as i32;
            // As flyte-sdk's connectors mark them: a dashboard (the job's page at the service)
            // is ready as soon as the job exists; other links are left to the UI to decide.
            link.ready = ours.dashboard;
            Ok(link)
        })
        .collect::<Result<_, Status>>()?;
    Ok(c::Resource { outputs, message: v1.message, log_links, phase: v1.phase, custom_info: v1.custom_info })
}

/// The resource meta of a finished sync call: the result itself, or a failure saying it
/// was too large to carry.
fn sync_result_meta(category: &TaskCategory, resource: &Resource) -> Result<Vec<u8>, Status> {
    let bytes = resource_to_v2(resource)?.encode_to_vec();
    if bytes.len() <= MAX_SYNC_RESULT_BYTES {
        return Ok(bytes);
    }
    tracing::warn!(message = "Sync result too large for a Flyte 2 resource meta.", %category, bytes = bytes.len());
    let failed = Resource::failed(format!(
        "the {category} call finished, but its result is {} bytes, more than the {MAX_SYNC_RESULT_BYTES} bytes a \
         Flyte 2 connector can hand back through the resource meta (Flyte 2 has no sync call); ask for a smaller \
         result, or run the task on a Flyte 1 backend, which calls ExecuteTaskSync",
        bytes.len()
    ));
    Ok(resource_to_v2(&failed)?.encode_to_vec())
}

fn read_sync_result(meta: &[u8]) -> Result<c::Resource, AgentError> {
    let invalid = AgentError::invalid_argument;
    if meta.is_empty() {
        return Err(invalid("resource_meta is empty; send the bytes CreateTask returned"));
    }
    let resource = c::Resource::decode(meta).map_err(|_| {
        invalid("resource_meta is not a result of this sync connector; send the bytes CreateTask returned")
    })?;
    if Phase::from_proto(resource.phase).is_none_or(|p| !p.is_terminal()) {
        return Err(invalid("resource_meta is not a finished result of this sync connector"));
    }
    Ok(resource)
}

/// Scrubs the texts of a Flyte 2 resource: message, links, custom info and outputs.
fn scrub_v2_resource(resource: &mut c::Resource, scrubber: &Scrubber) -> Result<(), Status> {
    scrubber.scrub_in_place(&mut resource.message);
    for link in &mut resource.log_links {
        scrubber.scrub_in_place(&mut link.name);
        scrubber.scrub_in_place(&mut link.uri);
    }
    if let Some(info) = &mut resource.custom_info {
        scrub_struct(info, scrubber);
    }
    if let Some(outputs) = &mut resource.outputs {
        let mut map = from_named(std::mem::take(&mut outputs.literals), "outputs").map_err(|e| to_status(&e))?;
        scrub_literal_map(&mut map, scrubber);
        outputs.literals = to_named(&map).map_err(|e| invalid(format!("the outputs could not be written: {e}")))?;
    }
    Ok(())
}

fn connector(a: &AgentInfo) -> c::Connector {
    c::Connector {
        name: a.name.clone(),
        supported_task_categories: a.categories.iter().map(TaskCategory::to_v2).collect(),
    }
}

#[tonic::async_trait]
impl async_connector_service_server::AsyncConnectorService for V2 {
    async fn create_task(&self, req: Request<c::CreateTaskRequest>) -> Result<Response<c::CreateTaskResponse>, Status> {
        let call = Self::call(&req, req.get_ref().connection.as_ref())?;
        // The request is consumed here, so it is not kept for the whole call.
        let task = {
            let r = req.into_inner();
            task_request(r.template, r.inputs, r.output_prefix, r.task_execution_metadata)?
        };
        let category = task.category();
        let resource_meta = if self.svc.registry().is_sync(&category) == Some(true) {
            let resource = self.svc.execute(task, call).await.map_err(|e| to_status(&e))?;
            sync_result_meta(&category, &resource)?
        } else {
            self.svc.create(task, call).await.map_err(|e| to_status(&e))?
        };
        Ok(Response::new(c::CreateTaskResponse { resource_meta }))
    }

    async fn get_task(&self, req: Request<c::GetTaskRequest>) -> Result<Response<c::GetTaskResponse>, Status> {
        let mut call = Self::call(&req, req.get_ref().connection.as_ref())?;
        let r = req.into_inner();
        let category = Self::category(r.task_category.as_ref())?;
        let resource = if self.svc.registry().is_sync(&category) == Some(true) {
            let read = async { read_sync_result(&r.resource_meta) };
            let mut resource =
                self.svc.measured(&category, "get", Protocol::Flyteidl2, read).await.map_err(|e| to_status(&e))?;
            // Scrubbed when it was made; a meta written before then (or one a caller made
            // up) is scrubbed again, with this call's secrets.
            let scrubber = call.connection.scrubber();
            if scrubber.matches(&r.resource_meta) {
                scrub_v2_resource(&mut resource, &scrubber)?;
            }
            resource
        } else {
            call.output_prefix = Some(r.output_prefix);
            let resource = self.svc.get(category, &r.resource_meta, call).await.map_err(|e| to_status(&e))?;
            resource_to_v2(&resource)?
        };
        Ok(Response::new(c::GetTaskResponse { resource: Some(resource) }))
    }

    async fn delete_task(&self, req: Request<c::DeleteTaskRequest>) -> Result<Response<c::DeleteTaskResponse>, Status> {
        let call = Self::call(&req, req.get_ref().connection.as_ref())?;
        let r = req.into_inner();
        let category = Self::category(r.task_category.as_ref())?;
        // A sync call finished inside CreateTask: there is nothing left to cancel.
        if self.svc.registry().is_sync(&category) != Some(true) {
            self.svc.delete(category, &r.resource_meta, call).await.map_err(|e| to_status(&e))?;
        }
        Ok(Response::new(c::DeleteTaskResponse {}))
    }

    async fn get_task_metrics(
        &self,
        req: Request<c::GetTaskMetricsRequest>,
    ) -> Result<Response<c::GetTaskMetricsResponse>, Status> {
        let call = Self::call(&req, None)?;
        let r = req.into_inner();
        let category = Self::category(r.task_category.as_ref())?;
        let query = MetricsQuery { queries: r.queries, start_time: r.start_time, end_time: r.end_time, step: r.step };
        let results = self.svc.get_metrics(category, &r.resource_meta, query, call).await.map_err(|e| to_status(&e))?;
        let results = results.iter().map(|m| transcode("metric result", m)).collect::<Result<_, _>>()?;
        Ok(Response::new(c::GetTaskMetricsResponse { results }))
    }

    type GetTaskLogsStream = Pin<Box<dyn Stream<Item = Result<c::GetTaskLogsResponse, Status>> + Send>>;

    async fn get_task_logs(
        &self,
        req: Request<c::GetTaskLogsRequest>,
    ) -> Result<Response<Self::GetTaskLogsStream>, Status> {
        use c::get_task_logs_response::Part;
        let call = Self::call(&req, None)?;
        let r = req.into_inner();
        let category = Self::category(r.task_category.as_ref())?;
        let query = LogsQuery { lines: r.lines, token: r.token };
        let logs = self.svc.get_logs(category, &r.resource_meta, query, call).await.map_err(|e| to_status(&e))?;
        let stream = stream_logs(
            logs,
            LogHeader::LastWhenMore,
            |token| c::GetTaskLogsResponse { part: Some(Part::Header(c::GetTaskLogsResponseHeader { token })) },
            |lines| {
                let lines = lines
                    .into_iter()
                    .map(|l| logs::dataplane::LogLine {
                        timestamp: l.timestamp,
                        message: l.message,
                        originator: l.originator as i32,
                        short_pod_name: String::new(),
                    })
                    .collect();
                #[allow(deprecated)]
                c::GetTaskLogsResponse {
                    part: Some(Part::Body(c::GetTaskLogsResponseBody { results: Vec::new(), lines })),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl connector_metadata_service_server::ConnectorMetadataService for V2 {
    async fn get_connector(
        &self,
        req: Request<c::GetConnectorRequest>,
    ) -> Result<Response<c::GetConnectorResponse>, Status> {
        let agent = self.svc.get_agent(&req.get_ref().name).map_err(|e| to_status(&e))?;
        Ok(Response::new(c::GetConnectorResponse { connector: Some(connector(agent)) }))
    }

    async fn list_connectors(
        &self,
        _req: Request<c::ListConnectorsRequest>,
    ) -> Result<Response<c::ListConnectorsResponse>, Status> {
        Ok(Response::new(c::ListConnectorsResponse {
            connectors: self.svc.list_agents().iter().map(connector).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_inputs_become_a_literal_map_and_ambiguity_is_refused() {
        let inputs_to_map =
            |i: Option<task::Inputs>| from_named(i.unwrap_or_default().literals, "inputs").map_err(|e| to_status(&e));
        let lit = |i: i64| {
            let v1 = crate::literals::Value::Integer(i).to_literal();
            let v2: core2::Literal = transcode("x", &v1).unwrap();
            v2
        };
        let named = |n: &str, i| task::NamedLiteral { name: n.into(), value: Some(lit(i)) };
        let map = inputs_to_map(Some(task::Inputs { literals: vec![named("a", 1), named("b", 2)], context: vec![] }))
            .unwrap();
        assert_eq!(crate::literals::get_input::<i64>(&map, "b").unwrap(), 2);
        let twice = inputs_to_map(Some(task::Inputs { literals: vec![named("a", 1), named("a", 2)], context: vec![] }));
        assert!(twice.unwrap_err().message().contains("'a' is given more than once"));
        let nameless = inputs_to_map(Some(task::Inputs { literals: vec![named("", 1)], context: vec![] }));
        assert_eq!(nameless.unwrap_err().code(), tonic::Code::InvalidArgument);
        let empty = task::NamedLiteral { name: "z".into(), value: None };
        let valueless = inputs_to_map(Some(task::Inputs { literals: vec![empty], context: vec![] }));
        assert!(valueless.unwrap_err().message().contains("('z') has no value"));
        assert!(inputs_to_map(None).unwrap().literals.is_empty());
    }

    #[test]
    fn the_connection_spec_is_taken_out_of_custom_and_nothing_else() {
        let custom = serde_json::json!({
            "secrets": {"flyte_openai_api_key": "openai-key"},
            "configs": {},
            "taskType": "chatgpt",
            "chatgpt_config": {"model": "m", "secrets": {"nested": "kept"}},
        });
        let mut t = core::TaskTemplate {
            custom: Some(crate::json::json_to_struct(custom.as_object().unwrap())),
            ..Default::default()
        };
        let declared = strip_connection_spec(&mut t);
        assert_eq!(declared.into_iter().collect::<Vec<_>>(), ["flyte_openai_api_key"]);
        let left = crate::json::struct_to_json(t.custom.as_ref().unwrap());
        assert_eq!(
            serde_json::Value::Object(left),
            serde_json::json!({"chatgpt_config": {"model": "m", "secrets": {"nested": "kept"}}})
        );
        // A `secrets` that is not a map of names is someone's setting, not the spec.
        let odd = serde_json::json!({"secrets": ["a"], "task_type": 3});
        let mut t = core::TaskTemplate {
            custom: Some(crate::json::json_to_struct(odd.as_object().unwrap())),
            ..Default::default()
        };
        assert!(strip_connection_spec(&mut t).is_empty());
        assert_eq!(t.custom.unwrap().fields.len(), 2);
        // flyte-sdk names an unconfigured secret with null: the spec, declaring nothing.
        let unset = serde_json::json!({"secrets": {"databricks_token": null, "other": "name"}, "sparkConf": {}});
        let mut t = core::TaskTemplate {
            custom: Some(crate::json::json_to_struct(unset.as_object().unwrap())),
            ..Default::default()
        };
        assert_eq!(strip_connection_spec(&mut t).into_iter().collect::<Vec<_>>(), ["other"]);
        assert_eq!(t.custom.unwrap().fields.keys().collect::<Vec<_>>(), ["sparkConf"]);
    }

    #[test]
    fn resources_keep_outputs_links_and_phase() {
        let r = Resource::succeeded()
            .with_output("b", 2_i64)
            .with_output("a", "text")
            .with_message("done")
            .with_log_link(crate::resource::LogLink::new("Console", "https://console.example/job/1"))
            .with_log_link(crate::resource::LogLink::new("Query", "https://console.example/q/1").dashboard());
        let v2 = resource_to_v2(&r).unwrap();
        let kinds: Vec<_> = v2.log_links.iter().map(|l| l.link_type).collect();
        use core2::task_log::LinkType;
        assert_eq!(kinds, [LinkType::External as i32, LinkType::Dashboard as i32], "flyte-sdk's link types");
        assert_eq!(v2.phase, core2::task_execution::Phase::Succeeded as i32);
        let names: Vec<_> = v2.outputs.as_ref().unwrap().literals.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(v2.log_links[0].uri, "https://console.example/job/1");
        assert_eq!((v2.log_links[0].ready, v2.log_links[1].ready), (false, true), "only dashboards are ready");
        // And back through the sync meta.
        let meta = sync_result_meta(&TaskCategory::new("t", 0), &r).unwrap();
        assert_eq!(read_sync_result(&meta).unwrap(), v2);
    }

    #[test]
    fn oversized_sync_results_fail_the_task_and_bad_metas_are_refused() {
        let big = Resource::succeeded().with_output("answer", "x".repeat(MAX_SYNC_RESULT_BYTES));
        let meta = sync_result_meta(&TaskCategory::new("chatgpt", 0), &big).unwrap();
        assert!(meta.len() < 4096);
        let r = read_sync_result(&meta).unwrap();
        assert_eq!(r.phase, core2::task_execution::Phase::Failed as i32);
        assert!(r.message.contains("more than the 65536 bytes"), "{}", r.message);
        assert!(matches!(read_sync_result(b""), Err(AgentError::InvalidArgument(_))));
        assert!(matches!(read_sync_result(br#"{"job_id": "x"}"#), Err(AgentError::InvalidArgument(_))));
        let running = resource_to_v2(&Resource::running()).unwrap().encode_to_vec();
        assert!(read_sync_result(&running).unwrap_err().message().contains("not a finished result"));
    }
}

/// Proof that re-encoding is sound: for each pair of types crossed above, every field of
/// the Flyte 1 type exists in the Flyte 2 type with the same number, name, kind and
/// cardinality, recursively, and Flyte 2's extra fields are the known additions.
#[cfg(test)]
mod pb_compat_tests {
    use std::collections::BTreeSet;

    use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap()
    }

    /// Flyte 2 fields that Flyte 1 lacks (protocol.md, Appendix A.1): dropped when a
    /// request crosses to the agents, unset on the way back.
    const FLYTE2_ONLY: &[&str] = &[
        "Literal.artifact_id",
        "RetryStrategy.backoff",
        "TaskLog.link_type",
        "TaskLog.ready",
        "TaskLog.icon_uri",
        "TaskMetadata.debuggable",
        "TaskMetadata.log_links",
        "TaskMetadata.image_build_run",
        "TaskMetadata.is_entrypoint",
        "TaskMetadata.code_bundle_uri",
        "TaskMetadata.timeouts",
        "TaskMetadata.produces_artifacts",
        "TaskMetadata.cache_max_age",
        "TaskTemplate.reuse_policy",
        "TaskTemplate.worker_kind",
        "GPUAccelerator.device_class",
        "GPUAccelerator.accelerator_model",
        "DataLoadingConfig.file_input_layout",
        "TimePartition.key",
    ];
    /// Flyte 1 fields Flyte 2 dropped; a request never carries them into Flyte 2.
    const FLYTE1_ONLY: &[&str] = &["TaskExecutionMetadata.overrides"];

    fn compare(
        v1: &MessageDescriptor,
        v2: &MessageDescriptor,
        seen: &mut BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        if !seen.insert(v1.full_name().to_owned()) {
            return;
        }
        let short = |m: &MessageDescriptor, f: &str| format!("{}.{f}", m.name());
        for f1 in v1.fields() {
            let Some(f2) = v2.get_field(f1.number()) else {
                if !FLYTE1_ONLY.contains(&short(v1, f1.name()).as_str()) {
                    problems.push(format!("{}: field {} is missing from Flyte 2", v1.full_name(), f1.number()));
                }
                continue;
            };
            // Flyte 2 spells a map as a list of key/value entries: the same bytes.
            let cardinality =
                (f1.is_list(), f1.is_map()) == (f2.is_list(), f2.is_map()) || (f1.is_map() && f2.is_list());
            let same = f1.name() == f2.name()
                && cardinality
                && f1.containing_oneof().map(|o| o.name().to_owned())
                    == f2.containing_oneof().filter(|o| !o.is_synthetic()).map(|o| o.name().to_owned());
            if !same {
                problems.push(format!("{}.{}: differs in name or cardinality", v1.full_name(), f1.name()));
            }
            match (f1.kind(), f2.kind()) {
                (Kind::Message(m1), Kind::Message(m2)) => compare(&m1, &m2, seen, problems),
                (Kind::Enum(e1), Kind::Enum(e2)) => {
                    for v in e1.values() {
                        if e2.get_value(v.number()).is_none_or(|w| w.name() != v.name()) {
                            problems.push(format!("{}: value {} differs", e1.full_name(), v.name()));
                        }
                    }
                }
                (k1, k2) if k1 == k2 => {}
                (k1, k2) => problems.push(format!("{}.{}: {k1:?} vs {k2:?}", v1.full_name(), f1.name())),
            }
        }
        for f2 in v2.fields() {
            if v1.get_field(f2.number()).is_none() && !FLYTE2_ONLY.contains(&short(v2, f2.name()).as_str()) {
                problems.push(format!(
                    "{}: Flyte 2 adds field {} ({}), unknown here",
                    v2.full_name(),
                    f2.number(),
                    f2.name()
                ));
            }
        }
    }

    #[test]
    fn flyte2_types_crossed_by_re_encoding_extend_their_flyte1_counterparts() {
        let pool = pool();
        let pairs = [
            ("flyteidl.core.TaskTemplate", "flyteidl2.core.TaskTemplate"),
            ("flyteidl.core.Literal", "flyteidl2.core.Literal"),
            ("flyteidl.admin.TaskExecutionMetadata", "flyteidl2.connector.TaskExecutionMetadata"),
            ("flyteidl.core.TaskLog", "flyteidl2.core.TaskLog"),
            ("flyteidl.core.ExecutionMetricResult", "flyteidl2.core.ExecutionMetricResult"),
        ];
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for (a, b) in pairs {
            let (v1, v2) = (pool.get_message_by_name(a).unwrap(), pool.get_message_by_name(b).unwrap());
            compare(&v1, &v2, &mut seen, &mut problems);
        }
        assert!(problems.is_empty(), "{problems:#?}");
        // The walk went deep: literals, types, interfaces, identifiers.
        for name in ["flyteidl.core.LiteralType", "flyteidl.core.StructuredDatasetType", "flyteidl.core.Identity"] {
            assert!(seen.contains(name), "{name} not compared");
        }
    }
}
