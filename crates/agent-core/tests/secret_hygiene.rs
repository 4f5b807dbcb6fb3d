//! Secret hygiene through real gRPC: agents whose service repeats the key it was sent
//! (in results, outputs, links, custom info, metas, metric data, log lines and errors),
//! over Flyte 1 and Flyte 2, with the pod's secret and a per-request one; and the attacks
//! on the redaction list (flushing it with junk connection secrets, and a request with
//! 60,000 of them).

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use agent_core::pb::admin::{self, execute_task_sync_request as sync_req, execute_task_sync_response as sync_resp};
use agent_core::pb::v2::connector as c;
use agent_core::prelude::*;
use agent_core::testing::flyte2::{self, connection};
use agent_core::testing::{CapturedLogs, Code, TestServer, secrets, test_config};
use agent_core::{AgentService, LogLine, Logs};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

const ECHO_SYNC: &str = "echo_sync";
const ECHO_ASYNC: &str = "echo_async";
/// The key every echo agent sends to its "service".
const KEY: &str = "flyte_echo_key";

/// What a careless service answers: the key it was sent, in every field it can reach.
fn echoed(key: &Secret) -> String {
    format!("HTTP 401: invalid key {} (Authorization: Bearer {})", key.expose(), key.expose())
}

/// A sync agent that puts the service's echo everywhere a result can carry text, and logs it.
struct EchoSync;

impl SyncAgent for EchoSync {
    fn name(&self) -> &str {
        "Echo Sync"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(ECHO_SYNC, 0)]
    }

    async fn execute(&self, ctx: &Context, _task: TaskRequest) -> Result<Resource, AgentError> {
        let key = ctx.secret(KEY)?;
        let text = echoed(&key);
        tracing::warn!(message = "Retrying after 503.", error = %text);
        let info = serde_json::json!({"service": {"said": [text.clone()]}});
        Ok(Resource::succeeded()
            .with_message(text.clone())
            .with_output("answer", text.clone())
            .with_output("nested", Value::Collection(vec![Value::String(text.clone())]))
            .with_log_link(LogLink::new(format!("Console {}", key.expose()), format!("https://x/?k={}", key.expose())))
            .with_custom_info(info.as_object().cloned().unwrap_or_default()))
    }
}

#[derive(Serialize, Deserialize)]
struct EchoMeta {
    job: String,
}

/// An async agent whose every call repeats the key; `create` with `custom.wait` holds the
/// key while the test does something else (`read` tells it the key was read, `release`
/// lets it go on).
#[derive(Default)]
struct EchoAsync {
    read: Arc<Notify>,
    release: Arc<Notify>,
}

impl AsyncAgent for EchoAsync {
    type Meta = EchoMeta;

    fn name(&self) -> &str {
        "Echo Async"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(ECHO_ASYNC, 0)]
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<EchoMeta, AgentError> {
        let key = ctx.secret(KEY)?;
        if task.custom().contains_key("wait") {
            self.read.notify_one();
            self.release.notified().await;
            return Err(AgentError::unavailable(echoed(&key)));
        }
        tracing::warn!(message = "Retrying after 503.", error = %echoed(&key));
        // A careless agent that keeps what the service said in its meta.
        Ok(EchoMeta { job: echoed(&key) })
    }

    async fn get(&self, ctx: &Context, _meta: EchoMeta) -> Result<Resource, AgentError> {
        let key = ctx.secret(KEY)?;
        Ok(Resource::failed(echoed(&key)).with_output("error", echoed(&key)))
    }

    async fn delete(&self, ctx: &Context, _meta: EchoMeta) -> Result<(), AgentError> {
        Err(AgentError::permission_denied(echoed(&ctx.secret(KEY)?)))
    }

    async fn get_metrics(
        &self,
        ctx: &Context,
        _meta: EchoMeta,
        _query: MetricsQuery,
    ) -> Result<Vec<agent_core::pb::core::ExecutionMetricResult>, AgentError> {
        let text = echoed(&ctx.secret(KEY)?);
        let data = serde_json::json!({"message": text});
        Ok(vec![agent_core::pb::core::ExecutionMetricResult {
            metric: "EXECUTION_METRIC_USED_CPU_AVG".into(),
            data: Some(agent_core::json::json_to_struct(data.as_object().unwrap())),
        }])
    }

    async fn get_logs(&self, ctx: &Context, _meta: EchoMeta, _query: LogsQuery) -> Result<Logs, AgentError> {
        let text = echoed(&ctx.secret(KEY)?);
        let lines = futures_util::stream::iter([
            Ok(LogLine {
                timestamp: Some(SystemTime::now().into()),
                message: format!("{text}\n"),
                originator: admin::LogLineOriginator::User,
            }),
            Err(AgentError::unavailable(text)),
        ]);
        Ok(Logs { next_token: String::new(), lines: Box::pin(lines) })
    }
}

/// Every log line of this test binary, through the scrubbing writer the agents use.
fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let out = CapturedLogs::default();
        let writer = agent_core::telemetry::Scrubbed(out.clone());
        tracing_subscriber::fmt().json().with_writer(writer).with_max_level(tracing::Level::INFO).init();
        out
    })
}

async fn server(pod_key: &str) -> (TestServer, Arc<Notify>, Arc<Notify>) {
    logs();
    let agent = EchoAsync::default();
    let (read, release) = (agent.read.clone(), agent.release.clone());
    let registry = Registry::builder().sync_agent(EchoSync).and_then(|r| r.async_agent(agent)).unwrap();
    let var = format!("_FSEC_{}", KEY.to_uppercase());
    let service = AgentService::new(registry, secrets(&[(var.as_str(), pod_key)]));
    (TestServer::start_with(service, test_config()).await, read, release)
}

fn task(task_type: &str, custom: serde_json::Value) -> TaskRequest {
    TaskRequest {
        template: agent_core::pb::core::TaskTemplate {
            r#type: task_type.into(),
            custom: Some(agent_core::json::json_to_struct(custom.as_object().unwrap())),
            ..Default::default()
        },
        output_prefix: "s3://bucket/prefix/0".into(),
        ..Default::default()
    }
}

#[track_caller]
fn assert_clean(what: &str, bytes: &[u8], secrets: &[&str]) {
    let text = String::from_utf8_lossy(bytes);
    for s in secrets {
        assert!(!text.contains(s), "{what} contains the secret {s}: {text}");
    }
}

#[tokio::test]
async fn flyte1_results_errors_metas_metrics_and_log_lines_carry_no_pod_secret() {
    const POD: &str = "sk-pod-openai-key-f1-7c1d2e";
    let (server, _, _) = server(POD).await;

    // ExecuteTaskSync: the ChatGPT-like case, service text in the result.
    let t = task(ECHO_SYNC, serde_json::json!({}));
    let header = admin::ExecuteTaskSyncRequest {
        part: Some(sync_req::Part::Header(admin::CreateRequestHeader {
            template: Some(t.template.clone()),
            output_prefix: t.output_prefix.clone(),
            ..Default::default()
        })),
    };
    let inputs = admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(t.inputs.clone())) };
    let mut sync = server.sync_client().await;
    let mut answers = sync.execute_task_sync(tokio_stream::iter([header, inputs])).await.unwrap().into_inner();
    let first = answers.message().await.unwrap().unwrap();
    assert_clean("ExecuteTaskSync", &first.encode_to_vec(), &[POD]);
    let Some(sync_resp::Res::Header(h)) = first.res else { panic!("a header") };
    let resource = h.resource.unwrap();
    assert!(resource.message.contains("invalid key [REDACTED]"), "{}", resource.message);
    assert!(resource.log_links[0].uri.ends_with("?k=[REDACTED]"), "{:?}", resource.log_links);

    // The async lifecycle: meta, failed result, metrics, logs, delete error.
    let mut client = server.async_client().await;
    let t = task(ECHO_ASYNC, serde_json::json!({}));
    let meta = client.create_task(agent_core::testing::create_request(&t)).await.unwrap().into_inner().resource_meta;
    assert_clean("CreateTask meta", &meta, &[POD]);
    let got = client.get_task(agent_core::testing::get_request(ECHO_ASYNC, &meta)).await.unwrap().into_inner();
    assert_clean("GetTask", &got.encode_to_vec(), &[POD]);
    assert!(got.resource.unwrap().message.contains("[REDACTED]"));
    #[allow(deprecated)]
    let metrics = client
        .get_task_metrics(admin::GetTaskMetricsRequest {
            task_category: Some(admin::TaskCategory { name: ECHO_ASYNC.into(), version: 0 }),
            resource_meta: meta.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_clean("GetTaskMetrics", &metrics.encode_to_vec(), &[POD]);
    #[allow(deprecated)]
    let mut lines = client
        .get_task_logs(admin::GetTaskLogsRequest {
            task_category: Some(admin::TaskCategory { name: ECHO_ASYNC.into(), version: 0 }),
            resource_meta: meta.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    loop {
        match lines.message().await {
            Ok(Some(part)) => {
                assert_clean("GetTaskLogs", &part.encode_to_vec(), &[POD]);
                seen += 1;
            }
            Ok(None) => panic!("the log stream ends with the agent's error"),
            Err(status) => {
                assert_clean("GetTaskLogs error", status.message().as_bytes(), &[POD]);
                break;
            }
        }
    }
    assert_eq!(seen, 2, "header and one body");
    #[allow(deprecated)]
    let err = client
        .delete_task(admin::DeleteTaskRequest {
            task_category: Some(admin::TaskCategory { name: ECHO_ASYNC.into(), version: 0 }),
            resource_meta: meta,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_clean("DeleteTask error", err.message().as_bytes(), &[POD]);
    let logged = logs().text();
    assert!(logged.contains("Retrying after 503."), "the agent's warning was logged");
    assert_clean("logs", logged.as_bytes(), &[POD]);
}

#[tokio::test]
async fn flyte2_connection_secrets_stay_out_of_metas_results_errors_and_log_lines() {
    const POD: &str = "sk-pod-openai-key-f2-3b4a5c";
    const SENT: &str = "sk-per-request-f2-9e8d7c";
    let (server, _, _) = server(POD).await;
    let mut client = server.connector_client().await;
    let conn = || Some(connection(ECHO_SYNC, &[(KEY, SENT)]));

    // A sync agent over Flyte 2: the finished result is the meta, and GetTask returns it.
    let create = flyte2::create_request(&task(ECHO_SYNC, serde_json::json!({})), conn());
    let meta = client.create_task(create).await.unwrap().into_inner().resource_meta;
    assert_clean("CreateTask meta", &meta, &[POD, SENT]);
    let got = client.get_task(flyte2::get_request(ECHO_SYNC, &meta, conn())).await.unwrap().into_inner();
    assert_clean("GetTask", &got.encode_to_vec(), &[POD, SENT]);
    let resource = got.resource.unwrap();
    assert!(resource.message.contains("invalid key [REDACTED]"), "{}", resource.message);

    // A meta written before results were scrubbed is scrubbed on its way back.
    let old = c::Resource {
        message: format!("key {SENT}"),
        phase: agent_core::pb::v2::core::task_execution::Phase::Failed as i32,
        ..Default::default()
    };
    let got = client.get_task(flyte2::get_request(ECHO_SYNC, &old.encode_to_vec(), conn())).await.unwrap();
    assert_eq!(got.into_inner().resource.unwrap().message, "key [REDACTED]");

    // The async lifecycle with the request's secret.
    let conn = || Some(connection(ECHO_ASYNC, &[(KEY, SENT)]));
    let create = flyte2::create_request(&task(ECHO_ASYNC, serde_json::json!({})), conn());
    let meta = client.create_task(create).await.unwrap().into_inner().resource_meta;
    assert_clean("CreateTask meta", &meta, &[POD, SENT]);
    let got = client.get_task(flyte2::get_request(ECHO_ASYNC, &meta, conn())).await.unwrap().into_inner();
    assert_clean("GetTask", &got.encode_to_vec(), &[POD, SENT]);
    let err = client.delete_task(flyte2::delete_request(ECHO_ASYNC, &meta, conn())).await.unwrap_err();
    assert_clean("DeleteTask error", err.message().as_bytes(), &[POD, SENT]);
    assert!(err.message().contains("[REDACTED]"), "{}", err.message());

    // The agent's log lines (JSON, as in production) while serving these calls.
    assert_clean("logs", logs().text().as_bytes(), &[POD, SENT]);
    // And the request's secret was never made known process-wide.
    assert_eq!(agent_core::secrets::redact(SENT), SENT);
}

#[tokio::test]
async fn junk_connection_secrets_cannot_flush_the_pods_key_from_the_redaction_list() {
    const POD: &str = "sk-pod-openai-key-flush-0a9b8c";
    let (server, read, release) = server(POD).await;

    // A call reads the pod's key, then waits before it fails with an error repeating it.
    let mut client = server.async_client().await;
    let leaky = agent_core::testing::create_request(&task(ECHO_ASYNC, serde_json::json!({"wait": true})));
    let call = tokio::spawn(async move { client.create_task(leaky).await });
    read.notified().await;

    // Meanwhile, 1,100 Flyte 2 GetTasks each bring one junk secret and are refused.
    let mut v2 = server.connector_client().await;
    for i in 0..1100 {
        let junk = format!("junk-connection-secret-{i:05}");
        let req = flyte2::get_request(ECHO_ASYNC, b"not a meta", Some(connection(ECHO_ASYNC, &[("k", &junk)])));
        assert_eq!(v2.get_task(req).await.unwrap_err().code(), Code::InvalidArgument);
    }
    // Nothing of theirs was kept.
    assert_eq!(agent_core::secrets::redact("junk-connection-secret-00007"), "junk-connection-secret-00007");

    release.notify_one();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(!err.message().contains(POD), "the pod's key leaked: {}", err.message());
    assert!(err.message().contains("invalid key [REDACTED]"), "{}", err.message());
}

#[tokio::test]
async fn a_request_with_60000_connection_secrets_is_refused_before_they_are_looked_at() {
    let (server, _, _) = server("sk-pod-openai-key-60k-5f6e7d").await;
    let many: Vec<(String, String)> =
        (0..60_000).map(|i| (format!("k{i}"), format!("junk-60k-secret-{i:06}"))).collect();
    let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut v2 = server.connector_client().await;
    let req = flyte2::get_request(ECHO_ASYNC, b"{}", Some(connection(ECHO_ASYNC, &pairs)));
    let err = v2.get_task(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("connection.secrets: a request may carry at most 64 secrets"), "{}", err.message());
    assert!(!err.message().contains("junk-60k"), "{}", err.message());
    // The same for CreateTask, before the template is even read.
    let mut create = flyte2::create_request(&task(ECHO_SYNC, serde_json::json!({})), None);
    create.connection = Some(connection(ECHO_SYNC, &pairs));
    create.template = None;
    let err = v2.create_task(create).await.unwrap_err();
    assert!(err.message().contains("at most 64 secrets"), "{}", err.message());
    assert_eq!(agent_core::secrets::redact("junk-60k-secret-000001"), "junk-60k-secret-000001");
}
