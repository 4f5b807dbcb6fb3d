//! The Flyte 2 front end (`flyteidl2.connector`) over real gRPC, against the test agents:
//! discovery, the async lifecycle, sync agents through the async service, per-request
//! secrets, precise errors, and both generations served at once.

use std::time::Duration;

use agent_core::AgentService;
use agent_core::literals::Value;
use agent_core::pb::v2::connector as c;
use agent_core::pb::v2::core::task_execution::Phase as Phase2;
use agent_core::pb::{admin, core};
use agent_core::prelude::*;
use agent_core::testing::flyte2::{self, connection};
use agent_core::testing::{Code, TestServer, secrets, test_config};
use testbed::task;
use testbed::test_agent::{self, ASYNC_TYPE, SYNC_TYPE};

/// The named outputs of a Flyte 2 resource as plain values.
fn outputs(r: &c::Resource) -> Vec<(String, Value)> {
    use prost::Message;
    r.outputs
        .iter()
        .flat_map(|o| &o.literals)
        .map(|n| {
            let v1 = core::Literal::decode(n.value.as_ref().unwrap().encode_to_vec().as_slice()).unwrap();
            (n.name.clone(), Value::from_literal(&v1, &n.name).unwrap())
        })
        .collect()
}

async fn poll(server: &TestServer, task_type: &str, meta: &[u8], conn: Option<&str>) -> c::Resource {
    let mut client = server.connector_client().await;
    for _ in 0..200 {
        let conn = conn.map(|v| connection(task_type, &[("flyte_conn_token", v)]));
        let r = client.get_task(flyte2::get_request(task_type, meta, conn)).await.unwrap().into_inner();
        let r = r.resource.unwrap();
        if r.phase != Phase2::Running as i32 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the task did not finish");
}

#[tokio::test]
async fn list_connectors_and_get_connector_describe_every_agent() {
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.connector_metadata_client().await;
    let list = client.list_connectors(c::ListConnectorsRequest {}).await.unwrap().into_inner();
    let mut summary: Vec<_> = list
        .connectors
        .iter()
        .map(|a| (a.name.clone(), a.supported_task_categories.iter().map(|c| (c.name.clone(), c.version)).collect()))
        .collect::<Vec<(String, Vec<(String, i32)>)>>();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("Test Async Agent".to_owned(), vec![(ASYNC_TYPE.to_owned(), 0)]),
            ("Test Sync Agent".to_owned(), vec![(SYNC_TYPE.to_owned(), 0)]),
        ]
    );
    let one = client.get_connector(c::GetConnectorRequest { name: "Test Sync Agent".into() }).await.unwrap();
    assert_eq!(one.into_inner().connector.unwrap().supported_task_categories[0].name, SYNC_TYPE);
    let missing = client.get_connector(c::GetConnectorRequest { name: "Nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("Test Async Agent"), "{}", missing.message());
}

#[tokio::test]
async fn an_async_task_runs_create_get_delete_with_named_outputs() {
    let server = TestServer::start(test_agent::registry()).await;
    let t = task(ASYNC_TYPE, serde_json::json!({"duration_ms": 60}), &[("x", Value::Integer(21))]);
    let mut client = server.connector_client().await;
    let meta = client.create_task(flyte2::create_request(&t, None)).await.unwrap().into_inner().resource_meta;
    let r = poll(&server, ASYNC_TYPE, &meta, None).await;
    assert_eq!(r.phase, Phase2::Succeeded as i32);
    assert_eq!(outputs(&r), [("y".to_owned(), Value::Integer(42))]);
    assert_eq!(r.message, "done");
    assert_eq!(r.log_links[0].name, "Test Console");
    assert!(r.log_links[0].ready, "the test agent's console is a dashboard");
    assert_eq!(r.log_links[0].link_type, agent_core::pb::v2::core::task_log::LinkType::Dashboard as i32);
    assert!(r.custom_info.as_ref().unwrap().fields.contains_key("job_id"));
    client.delete_task(flyte2::delete_request(ASYNC_TYPE, &meta, None)).await.unwrap();

    // A failed job is a resource with a failed phase, as in Flyte 1.
    let failing = task(ASYNC_TYPE, serde_json::json!({"outcome": "fail"}), &[]);
    let meta = client.create_task(flyte2::create_request(&failing, None)).await.unwrap().into_inner().resource_meta;
    let r = poll(&server, ASYNC_TYPE, &meta, None).await;
    assert_eq!(r.phase, Phase2::Failed as i32);
    assert!(r.message.contains("the job failed"));
}

#[tokio::test]
async fn logs_and_metrics_are_served_in_flyte2_messages() {
    use c::get_task_logs_response::Part;
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.connector_client().await;
    let t = task(ASYNC_TYPE, serde_json::json!({}), &[]);
    let meta = client.create_task(flyte2::create_request(&t, None)).await.unwrap().into_inner().resource_meta;
    let req = c::GetTaskLogsRequest {
        resource_meta: meta.clone(),
        lines: 3,
        token: String::new(),
        task_category: Some(flyte2::category(ASYNC_TYPE)),
    };
    // flyte-sdk's order: a page's lines first, then a header with the next page's token,
    // and no header after the last page.
    let mut req = req;
    let mut pages = Vec::new();
    loop {
        let mut stream = client.get_task_logs(req.clone()).await.unwrap().into_inner();
        let mut parts = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            parts.push(m.part.unwrap());
        }
        let header = parts.iter().position(|p| matches!(p, Part::Header(_)));
        assert!(header.is_none_or(|i| i == parts.len() - 1), "the header closes the page: {parts:?}");
        let lines: Vec<String> = parts
            .iter()
            .filter_map(|p| if let Part::Body(b) = p { Some(b.lines.iter().map(|l| l.message.clone())) } else { None })
            .flatten()
            .collect();
        pages.push(lines);
        match parts.pop() {
            Some(Part::Header(h)) => {
                assert!(!h.token.is_empty(), "a header is sent only when another page follows");
                req.token = h.token;
            }
            _ => break,
        }
        assert!(pages.len() < 50, "the pages end");
    }
    assert!(pages.len() > 1, "the test agent's logs span pages: {pages:?}");
    assert_eq!(pages[0].len(), 3);
    assert!(pages[0][0].ends_with("line 0\n"), "{pages:?}");
    let req = c::GetTaskMetricsRequest {
        resource_meta: meta,
        queries: vec!["EXECUTION_METRIC_LIMIT_MEMORY_BYTES".into()],
        task_category: Some(flyte2::category(ASYNC_TYPE)),
        ..Default::default()
    };
    let results = client.get_task_metrics(req).await.unwrap().into_inner().results;
    assert_eq!(results[0].metric, "EXECUTION_METRIC_LIMIT_MEMORY_BYTES");
    assert!(results[0].data.as_ref().unwrap().fields.contains_key("values"));
}

#[tokio::test]
async fn sync_agents_answer_through_create_then_get() {
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.connector_client().await;
    let t = task(SYNC_TYPE, serde_json::json!({}), &[("name", "flyte".into())]);
    let meta = client.create_task(flyte2::create_request(&t, None)).await.unwrap().into_inner().resource_meta;
    let r = poll(&server, SYNC_TYPE, &meta, None).await;
    assert_eq!(r.phase, Phase2::Succeeded as i32);
    assert_eq!(r.message, "answered over flyteidl2", "the agent is told which generation asked");
    assert_eq!(
        outputs(&r),
        [("greeting".to_owned(), Value::String("hello, flyte".into())), ("name".to_owned(), "flyte".into())]
    );
    // Asking again gives the same answer: the result travels in the meta, not in the server.
    assert_eq!(poll(&server, SYNC_TYPE, &meta, None).await, r);
    client.delete_task(flyte2::delete_request(SYNC_TYPE, &meta, None)).await.unwrap();

    // A non-terminal sync answer becomes a retryable failure, as in Flyte 1.
    let pending = task(SYNC_TYPE, serde_json::json!({"outcome": "pending"}), &[]);
    let meta = client.create_task(flyte2::create_request(&pending, None)).await.unwrap().into_inner().resource_meta;
    assert_eq!(poll(&server, SYNC_TYPE, &meta, None).await.phase, Phase2::RetryableFailed as i32);
    // A call that could not be served is an RPC error, as ExecuteTaskSync's is.
    let broken = task(SYNC_TYPE, serde_json::json!({"error": "unavailable"}), &[]);
    let err = client.create_task(flyte2::create_request(&broken, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // A meta that is not a finished result is refused.
    let err = client.get_task(flyte2::get_request(SYNC_TYPE, b"{\"job_id\": \"x\"}", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn connection_secrets_serve_their_request_and_get_and_delete_use_their_own() {
    const VALUE: &str = "conn-secret-5d4c3b2a19";
    // The pod has no `flyte_conn_token`: only a request can bring it.
    let service = AgentService::new(test_agent::registry(), secrets(&[]));
    let server = TestServer::start_with(service, test_config()).await;
    let t = task(ASYNC_TYPE, serde_json::json!({"secret": "flyte_conn_token", "duration_ms": 30}), &[]);

    let err = server.async_client().await.create_task(agent_core::testing::create_request(&t)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "Flyte 1 has no connection: {}", err.message());
    let mut client = server.connector_client().await;
    let err = client.create_task(flyte2::create_request(&t, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Keys match whatever their case, like the pod's secrets.
    let conn = connection(ASYNC_TYPE, &[("FLYTE_CONN_TOKEN", VALUE)]);
    let meta = client.create_task(flyte2::create_request(&t, Some(conn))).await.unwrap().into_inner().resource_meta;
    assert!(!String::from_utf8_lossy(&meta).contains(VALUE), "the meta holds the secret");
    // GetTask and DeleteTask use the connection sent with them, not one remembered.
    let err = client.get_task(flyte2::get_request(ASYNC_TYPE, &meta, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(poll(&server, ASYNC_TYPE, &meta, Some(VALUE)).await.phase, Phase2::Succeeded as i32);
    let err = client.delete_task(flyte2::delete_request(ASYNC_TYPE, &meta, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let conn = connection(ASYNC_TYPE, &[("flyte_conn_token", VALUE)]);
    client.delete_task(flyte2::delete_request(ASYNC_TYPE, &meta, Some(conn))).await.unwrap();

    // A careless agent error quoting the credential is scrubbed.
    let leaky = task(ASYNC_TYPE, serde_json::json!({"secret": "flyte_conn_token", "error": "internal"}), &[]);
    let conn = connection(ASYNC_TYPE, &[("flyte_conn_token", VALUE)]);
    let err = client.create_task(flyte2::create_request(&leaky, Some(conn))).await.unwrap_err();
    assert_eq!(err.message(), "unexpected answer for credential [REDACTED]");
}

#[tokio::test]
async fn bad_flyte2_requests_get_precise_codes() {
    let server = TestServer::start(test_agent::registry()).await;
    let mut client = server.connector_client().await;
    let err = client.create_task(c::CreateTaskRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("template is missing"));

    let mut twice = flyte2::create_request(&task(ASYNC_TYPE, serde_json::json!({}), &[("x", Value::Integer(1))]), None);
    let inputs = twice.inputs.as_mut().unwrap();
    inputs.literals.push(inputs.literals[0].clone());
    let err = client.create_task(twice).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("'x' is given more than once"));

    let unknown = flyte2::create_request(&task("nope_type", serde_json::json!({}), &[]), None);
    assert_eq!(client.create_task(unknown).await.unwrap_err().code(), Code::NotFound);

    let no_category = c::GetTaskRequest { resource_meta: b"{}".to_vec(), ..Default::default() };
    let err = client.get_task(no_category).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("task_category"));
    let err = client.get_task(flyte2::get_request(ASYNC_TYPE, b"{\"job", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("resource_meta"));
}

#[tokio::test]
async fn one_server_answers_flyte1_and_flyte2_at_once() {
    let server = TestServer::start(test_agent::registry()).await;
    let t = task(ASYNC_TYPE, serde_json::json!({"duration_ms": 40}), &[("x", Value::Integer(5))]);
    let v1 = async {
        let mut client = server.async_client().await;
        let meta =
            client.create_task(agent_core::testing::create_request(&t)).await.unwrap().into_inner().resource_meta;
        loop {
            let r = server.get_resource(ASYNC_TYPE, &meta).await;
            if r.phase.is_terminal() {
                return (r, meta);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let v2 = async {
        let mut client = server.connector_client().await;
        let meta = client.create_task(flyte2::create_request(&t, None)).await.unwrap().into_inner().resource_meta;
        (poll(&server, ASYNC_TYPE, &meta, None).await, meta)
    };
    let ((r1, meta1), (r2, meta2)) = tokio::join!(v1, v2);
    assert_eq!(r1.output_values().unwrap()["y"], Value::Integer(10));
    assert_eq!(outputs(&r2), [("y".to_owned(), Value::Integer(10))]);
    // The metas are the agent's, whichever generation asked: each side can read the other's.
    assert_eq!(server.get_resource(ASYNC_TYPE, &meta2).await.phase, Phase::Succeeded);
    assert_eq!(poll(&server, ASYNC_TYPE, &meta1, None).await.phase, Phase2::Succeeded as i32);
    let listed = server.metadata_client().await.list_agents(admin::ListAgentsRequest {}).await.unwrap();
    assert_eq!(listed.into_inner().agents.len(), 2);
}
