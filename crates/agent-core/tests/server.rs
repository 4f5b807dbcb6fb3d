//! Every RPC and error path of the Flyte 1.x front end, through real gRPC on loopback,
//! against the test agents.

use std::sync::Arc;
use std::time::Duration;

use agent_core::AgentService;
use agent_core::literals::Value;
use agent_core::pb::admin;
use agent_core::prelude::*;
use agent_core::testing::{Code, TestServer, conformance, secrets, test_config};
use testbed::task;
use testbed::test_agent::{self, ASYNC_TYPE, Counting, SYNC_TYPE};

fn create_req(t: &TaskRequest) -> admin::CreateTaskRequest {
    admin::CreateTaskRequest {
        inputs: Some(t.inputs.clone()),
        template: Some(t.template.clone()),
        output_prefix: t.output_prefix.clone(),
        task_execution_metadata: None,
    }
}

#[allow(deprecated)]
fn get_req(name: &str, meta: Vec<u8>) -> admin::GetTaskRequest {
    admin::GetTaskRequest {
        task_type: name.into(),
        resource_meta: meta,
        task_category: Some(admin::TaskCategory { name: name.into(), version: 0 }),
        output_prefix: String::new(),
    }
}

fn sync_stream(t: &TaskRequest) -> impl tokio_stream::Stream<Item = admin::ExecuteTaskSyncRequest> + use<> {
    use admin::execute_task_sync_request::Part;
    tokio_stream::iter([
        admin::ExecuteTaskSyncRequest {
            part: Some(Part::Header(admin::CreateRequestHeader {
                template: Some(t.template.clone()),
                output_prefix: t.output_prefix.clone(),
                task_execution_metadata: None,
                max_dataset_size_bytes: 0,
            })),
        },
        admin::ExecuteTaskSyncRequest { part: Some(Part::Inputs(t.inputs.clone())) },
    ])
}

async fn execute(server: &TestServer, t: &TaskRequest) -> Result<Resource, agent_core::testing::Status> {
    use admin::execute_task_sync_response::Res;
    let mut stream = server.sync_client().await.execute_task_sync(sync_stream(t)).await?.into_inner();
    match stream.message().await?.and_then(|m| m.res) {
        Some(Res::Header(h)) => Ok(Resource::from_proto(&h.resource.unwrap())),
        other => panic!("unexpected response {other:?}"),
    }
}

#[tokio::test]
async fn test_agents_pass_the_conformance_suite() {
    let server = TestServer::start(test_agent::registry()).await;
    let r = conformance::async_agent(
        &server,
        task(ASYNC_TYPE, serde_json::json!({"duration_ms": 100}), &[("x", Value::Integer(21))]),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(r.output_values().unwrap()["y"], Value::Integer(42));
    assert_eq!(r.log_links[0].name, "Test Console");
    let r = conformance::sync_agent(&server, task(SYNC_TYPE, serde_json::json!({}), &[("name", "flyte".into())])).await;
    assert_eq!(r.output_values().unwrap()["greeting"], Value::String("hello, flyte".into()));
    assert_eq!(r.message, "answered over flyteidl", "the agent is told which generation asked");
}

#[tokio::test]
async fn list_and_get_agent_fill_categories_types_and_is_sync() {
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.metadata_client().await;
    let list = client.list_agents(admin::ListAgentsRequest {}).await.unwrap().into_inner();
    let summary: Vec<_> = list
        .agents
        .iter()
        .map(|a| {
            #[allow(deprecated)]
            let types = a.supported_task_types.clone();
            (
                a.name.clone(),
                a.is_sync,
                types,
                a.supported_task_categories.iter().map(|c| (c.name.clone(), c.version)).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Test Async Agent".into(), false, vec![ASYNC_TYPE.to_string()], vec![(ASYNC_TYPE.to_string(), 0)]),
            ("Test Sync Agent".into(), true, vec![SYNC_TYPE.to_string()], vec![(SYNC_TYPE.to_string(), 0)]),
        ]
    );
    let one = client.get_agent(admin::GetAgentRequest { name: "Test Sync Agent".into() }).await.unwrap().into_inner();
    assert!(one.agent.unwrap().is_sync);
    let missing = client.get_agent(admin::GetAgentRequest { name: "Nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("Test Async Agent"), "{}", missing.message());
}

#[tokio::test]
async fn failed_jobs_are_resources_not_rpc_errors() {
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.async_client().await;
    for (outcome, phase) in [("fail", Phase::Failed), ("retryable", Phase::RetryableFailed)] {
        let t = task(ASYNC_TYPE, serde_json::json!({"outcome": outcome}), &[]);
        let meta = client.create_task(create_req(&t)).await.unwrap().into_inner().resource_meta;
        let r = client.get_task(get_req(ASYNC_TYPE, meta)).await.unwrap().into_inner().resource.unwrap();
        assert_eq!(Resource::from_proto(&r).phase, phase);
        #[allow(deprecated)]
        let state = r.state;
        assert_ne!(state, admin::State::Succeeded as i32);
    }
    let r = execute(&server, &task(SYNC_TYPE, serde_json::json!({"outcome": "fail"}), &[])).await.unwrap();
    assert_eq!(r.phase, Phase::Failed);
}

#[tokio::test]
async fn errors_map_to_precise_codes_with_actionable_messages() {
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.async_client().await;
    let cases = [
        (serde_json::json!({"error": "unavailable"}), vec![], Code::Unavailable, "unavailable"),
        (serde_json::json!({"error": "precondition"}), vec![], Code::FailedPrecondition, "precondition"),
        (serde_json::json!({"error": "invalid"}), vec![], Code::InvalidArgument, "template.custom.error"),
        (serde_json::json!({"unknown_key": 1}), vec![], Code::InvalidArgument, "unknown field `unknown_key`"),
        (
            serde_json::json!({}),
            vec![("x", Value::String("ten".into()))],
            Code::InvalidArgument,
            "inputs.x: expected integer, got string",
        ),
        (serde_json::json!({"secret": "flyte_test_token"}), vec![], Code::FailedPrecondition, "_FSEC_FLYTE_TEST_TOKEN"),
        (serde_json::json!({"error": "panic"}), vec![], Code::Internal, "failed unexpectedly"),
    ];
    for (custom, inputs, code, needle) in cases {
        let t = task(ASYNC_TYPE, custom.clone(), &inputs);
        let err = client.create_task(create_req(&t)).await.unwrap_err();
        assert_eq!(err.code(), code, "{custom}: {err:?}");
        assert!(err.message().contains(needle), "{custom}: {}", err.message());
        assert!(!err.message().contains("Traceback") && err.message().len() <= 2048);
    }
    // The server survived the panic.
    let ok = task(ASYNC_TYPE, serde_json::json!({}), &[]);
    assert!(client.create_task(create_req(&ok)).await.is_ok());

    let unknown = task("no_such_type", serde_json::json!({}), &[]);
    let err = client.create_task(create_req(&unknown)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no_such_type_v0") && err.message().contains("test_async_v0"), "{}", err.message());

    let mut no_type = ok.clone();
    no_type.template.r#type.clear();
    assert_eq!(client.create_task(create_req(&no_type)).await.unwrap_err().code(), Code::InvalidArgument);

    // Sync categories refuse the async RPCs and vice versa, saying which to use.
    let err = client.create_task(create_req(&task(SYNC_TYPE, serde_json::json!({}), &[]))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("ExecuteTaskSync"));
    let err = execute(&server, &task(ASYNC_TYPE, serde_json::json!({}), &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    #[allow(deprecated)]
    let no_category = admin::GetTaskRequest { resource_meta: b"{}".to_vec(), ..Default::default() };
    assert_eq!(client.get_task(no_category).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn secrets_are_resolved_and_never_leak_into_statuses() {
    let service = AgentService::new(test_agent::registry(), secrets(&[("_FSEC_FLYTE_TEST_TOKEN", "tok-9f8e7d6c5b4a")]));
    let server = TestServer::start_with(service, test_config()).await;
    let mut client = server.async_client().await;
    let ok = task(ASYNC_TYPE, serde_json::json!({"secret": "flyte_test_token"}), &[]);
    let meta = client.create_task(create_req(&ok)).await.unwrap().into_inner().resource_meta;
    assert!(!String::from_utf8_lossy(&meta).contains("tok-9f8e7d6c5b4a"));
    let leaky = task(ASYNC_TYPE, serde_json::json!({"secret": "flyte_test_token", "error": "internal"}), &[]);
    let err = client.create_task(create_req(&leaky)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(err.message(), "unexpected answer for credential [REDACTED]");
}

#[tokio::test]
async fn get_falls_back_to_the_deprecated_task_type_and_accepts_flytekit_json() {
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.async_client().await;
    // Exactly what flytekit's ResourceMeta.encode() writes for a dataclass with these
    // fields: ", " / ": " separators, None as null, and `x` missing (older dataclass).
    let py = br#"{"job_id": "py-1", "started_at_ms": 0, "duration_ms": 0, "outcome": null}"#.to_vec();
    #[allow(deprecated)]
    let legacy = admin::GetTaskRequest { task_type: ASYNC_TYPE.into(), resource_meta: py, ..Default::default() };
    let r = client.get_task(legacy).await.unwrap().into_inner().resource.unwrap();
    let r = Resource::from_proto(&r);
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(r.output_values().unwrap()["y"], Value::Integer(0));
}

#[tokio::test]
async fn sync_protocol_sequence_edge_cases() {
    use admin::execute_task_sync_request::Part;
    let server = TestServer::start(test_agent::registry()).await;
    // A non-terminal sync answer becomes a retryable failure that says why.
    let r = execute(&server, &task(SYNC_TYPE, serde_json::json!({"outcome": "pending"}), &[])).await.unwrap();
    assert_eq!(r.phase, Phase::RetryableFailed);
    assert!(r.message.contains("RUNNING"), "{}", r.message);
    // Half-close right after the header: no inputs.
    let t = task(SYNC_TYPE, serde_json::json!({}), &[]);
    let header_only = tokio_stream::iter([admin::ExecuteTaskSyncRequest {
        part: Some(Part::Header(admin::CreateRequestHeader {
            template: Some(t.template.clone()),
            ..Default::default()
        })),
    }]);
    let mut s = server.sync_client().await.execute_task_sync(header_only).await.unwrap().into_inner();
    assert!(s.message().await.unwrap().is_some());
    // Two headers.
    let h = admin::ExecuteTaskSyncRequest {
        part: Some(Part::Header(admin::CreateRequestHeader {
            template: Some(t.template.clone()),
            ..Default::default()
        })),
    };
    let res = server.sync_client().await.execute_task_sync(tokio_stream::iter([h.clone(), h])).await;
    let code = match res {
        Err(s) => s.code(),
        Ok(r) => r.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(code, Code::InvalidArgument);
    // An empty stream.
    let res = server.sync_client().await.execute_task_sync(tokio_stream::iter(Vec::new())).await;
    let code = match res {
        Err(s) => s.code(),
        Ok(r) => r.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(code, Code::InvalidArgument);
}

#[tokio::test]
#[allow(deprecated)]
async fn metrics_and_logs_are_served_and_logs_stream() {
    use admin::get_task_logs_response::Part;
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.async_client().await;
    let meta = client
        .create_task(create_req(&task(ASYNC_TYPE, serde_json::json!({}), &[])))
        .await
        .unwrap()
        .into_inner()
        .resource_meta;
    let category = Some(admin::TaskCategory { name: ASYNC_TYPE.into(), version: 0 });

    let metrics = client
        .get_task_metrics(admin::GetTaskMetricsRequest {
            resource_meta: meta.clone(),
            queries: vec!["EXECUTION_METRIC_LIMIT_MEMORY_BYTES".into()],
            task_category: category.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metrics.results[0].metric, "EXECUTION_METRIC_LIMIT_MEMORY_BYTES");

    let mut token = String::new();
    let mut pages = 0;
    let mut lines = Vec::new();
    loop {
        let req = admin::GetTaskLogsRequest {
            resource_meta: meta.clone(),
            lines: 150,
            token: token.clone(),
            task_category: category.clone(),
            ..Default::default()
        };
        let mut stream = client.get_task_logs(req).await.unwrap().into_inner();
        let Some(Part::Header(h)) = stream.message().await.unwrap().unwrap().part else { panic!("header first") };
        let mut bodies = 0;
        while let Some(msg) = stream.message().await.unwrap() {
            let Some(Part::Body(b)) = msg.part else { panic!("bodies after the header") };
            assert_eq!(b.results.len(), b.structured_lines.len());
            lines.extend(b.structured_lines.into_iter().map(|l| l.message));
            bodies += 1;
        }
        assert!(bodies >= 2, "150 lines must arrive in more than one message");
        pages += 1;
        if h.token.is_empty() {
            break;
        }
        token = h.token;
    }
    assert_eq!(pages, 3);
    assert_eq!(lines.len(), 450);
    assert!(lines[449].ends_with("line 449\n"));

    let bad_token = admin::GetTaskLogsRequest {
        resource_meta: meta.clone(),
        token: "x".into(),
        task_category: category.clone(),
        ..Default::default()
    };
    assert_eq!(client.get_task_logs(bad_token).await.unwrap_err().code(), Code::InvalidArgument);
    let sync_cat = admin::GetTaskLogsRequest { resource_meta: meta, task_type: SYNC_TYPE.into(), ..Default::default() };
    assert_eq!(client.get_task_logs(sync_cat).await.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test]
#[allow(deprecated)]
async fn optional_operations_are_unimplemented_by_default() {
    let server = TestServer::start(Registry::builder().async_agent(Counting(Arc::default())).unwrap()).await;
    let mut client = server.async_client().await;
    let category = Some(admin::TaskCategory { name: "counting".into(), version: 0 });
    let m = admin::GetTaskMetricsRequest {
        resource_meta: b"\"job\"".to_vec(),
        task_category: category.clone(),
        ..Default::default()
    };
    assert_eq!(client.get_task_metrics(m).await.unwrap_err().code(), Code::Unimplemented);
    let l =
        admin::GetTaskLogsRequest { resource_meta: b"\"job\"".to_vec(), task_category: category, ..Default::default() };
    assert_eq!(client.get_task_logs(l).await.unwrap_err().code(), Code::Unimplemented);
}

#[tokio::test]
async fn health_serves_and_turns_not_serving_while_draining_in_flight_calls() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut config = test_config();
    config.shutdown_delay = Duration::from_millis(300);
    let mut server = TestServer::start_with(AgentService::new(test_agent::registry(), secrets(&[])), config).await;
    let mut health = HealthClient::new(server.channel().await);
    for svc in [
        "",
        "flyteidl.service.AsyncAgentService",
        "flyteidl.service.SyncAgentService",
        "flyteidl.service.AgentMetadataService",
    ] {
        let r = health.check(HealthCheckRequest { service: svc.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "service '{svc}'");
    }
    // A slow sync call in flight when shutdown starts must complete.
    let slow = task(SYNC_TYPE, serde_json::json!({"sleep_ms": 600}), &[]);
    let mut sync = server.sync_client().await;
    let in_flight =
        tokio::spawn(async move { sync.execute_task_sync(sync_stream(&slow)).await.map(|r| r.into_inner()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(r.status, ServingStatus::NotServing as i32);
    let mut responses = in_flight.await.unwrap().unwrap();
    let first = responses.message().await.unwrap().unwrap();
    assert!(matches!(first.res, Some(admin::execute_task_sync_response::Res::Header(_))));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_requests_are_refused_not_fatal() {
    let mut config = test_config();
    config.max_message_size = 64 * 1024;
    let server = TestServer::start_with(AgentService::new(test_agent::registry(), secrets(&[])), config).await;
    let big = task(ASYNC_TYPE, serde_json::json!({}), &[("blob", Value::String("x".repeat(200 * 1024)))]);
    let err = server.async_client().await.create_task(create_req(&big)).await.unwrap_err();
    // tonic's code for a message over the limit; the message names both sizes.
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("65536"), "{}", err.message());
    let ok = task(ASYNC_TYPE, serde_json::json!({}), &[]);
    assert!(server.async_client().await.create_task(create_req(&ok)).await.is_ok());
}

#[tokio::test]
async fn hostile_metas_templates_and_inputs_are_handled() {
    let server = TestServer::start(test_agent::registry()).await;
    conformance::hostile_inputs(&server, task(ASYNC_TYPE, serde_json::json!({}), &[]), 96).await;
    conformance::hostile_inputs(&server, task(SYNC_TYPE, serde_json::json!({}), &[]), 96).await;
}

/// Raw bytes in and out, so a test can send what no generated client would.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawCoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(buf);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

#[tokio::test]
async fn undecodable_requests_to_every_rpc_of_both_generations_are_invalid_arguments() {
    use prost::Message as _;
    let server = TestServer::start(test_agent::registry()).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    // Eleven 0xff bytes: a varint longer than protobuf allows, so no message type decodes it.
    let garbage = vec![0xff_u8; 11];
    let fds = prost_types::FileDescriptorSet::decode(agent_core::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut checked = Vec::new();
    for file in &fds.file {
        if !matches!(file.package(), "flyteidl.service" | "flyteidl2.connector") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                grpc.ready().await.unwrap();
                let request = tonic::Request::new(tokio_stream::once(garbage.clone()));
                let result = grpc
                    .streaming(
                        request,
                        tonic::codegen::http::uri::PathAndQuery::try_from(path.clone()).unwrap(),
                        RawCodec,
                    )
                    .await;
                // A streaming answer may start before the request is read: the error then
                // ends the stream.
                let status = match result {
                    Err(status) => status,
                    Ok(response) => response.into_inner().message().await.expect_err(&path),
                };
                let input = method.input_type().trim_start_matches('.');
                assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
                assert!(
                    status.message().contains(&format!("the request could not be decoded as {input}")),
                    "{path}: {}",
                    status.message()
                );
                assert!(!status.message().contains("\u{ff}") && !status.message().contains("255"), "{path}");
                checked.push(path);
            }
        }
    }
    // Both generations: Flyte 1's 8 RPCs (create, get, delete, metrics, logs, sync, get
    // agent, list) and Flyte 2's 7.
    assert_eq!(checked.len(), 15, "{checked:?}");
    assert!(checked.iter().any(|p| p.starts_with("/flyteidl2.connector.AsyncConnectorService/")), "{checked:?}");
}
