//! The agentctl binary against a real agent server (the OpenAI agents, sync and async)
//! backed by the OpenAI emulator: list, health, runs to success and failure, bad files,
//! and Ctrl-C turning into DeleteTask.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use agent_core::AgentService;
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::core;
use agent_core::prelude::*;
use agent_core::testing::{TestServer, secrets, test_config};
use agent_openai::{BATCH_TYPE, BatchAgent, CHATGPT_TYPE, ChatGptAgent, Config};
use emulators::Running;
use emulators::openai::{OpenAi, Settings};
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Env {
    ai: OpenAi,
    _emulator: Running,
    server: TestServer,
    dir: PathBuf,
}

async fn env(step: Duration) -> Env {
    env_with_key(step, "sk-emulator-key").await
}

/// An environment whose agent holds `pod_key` as its OpenAI key.
async fn env_with_key(step: Duration, pod_key: &str) -> Env {
    let ai = OpenAi::new(Settings { step, ..Settings::default() });
    let emulator = ai.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let config = Config { base_url: Some(format!("{}/v1", emulator.url())), ..Config::default() };
    let registry = Registry::builder()
        .sync_agent(ChatGptAgent::new(config.clone()).unwrap())
        .unwrap()
        .async_agent(BatchAgent::new(config).unwrap())
        .unwrap();
    let service = AgentService::new(registry, secrets(&[("_FSEC_FLYTE_OPENAI_API_KEY", pod_key)]));
    let server = TestServer::start_with(service, test_config()).await;
    let dir = std::env::temp_dir().join(format!("agentctl-test-{}-{}", std::process::id(), server.addr().port()));
    std::fs::create_dir_all(&dir).unwrap();
    Env { ai, _emulator: emulator, server, dir }
}

impl Env {
    fn agentctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentctl"));
        cmd.arg("--endpoint").arg(self.server.endpoint()).args(args).kill_on_drop(true);
        cmd
    }

    async fn output(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.agentctl(args).output().await.unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
    }

    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    }
}

fn template(task_type: &str, custom: serde_json::Value) -> core::TaskTemplate {
    core::TaskTemplate {
        r#type: task_type.into(),
        custom: custom.as_object().map(json_to_struct),
        ..Default::default()
    }
}

/// `flyteidl.admin.TaskSpec { template = 1 }`, as `pyflyte package` writes it.
fn task_spec(t: &core::TaskTemplate) -> Vec<u8> {
    let inner = t.encode_to_vec();
    let mut out = vec![0x0a];
    prost::encoding::encode_varint(inner.len() as u64, &mut out);
    out.extend(inner);
    out
}

fn chat_json(model: &str) -> String {
    json!({"type": "chatgpt", "custom": {"openai_organization": "org-x", "chatgpt_config": {"model": model}}})
        .to_string()
}

#[tokio::test]
async fn list_and_health() {
    let env = env(Duration::from_millis(50)).await;
    let (code, out, _) = env.output(&["list"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("AGENT") && lines[0].contains("TASK TYPES"), "{out}");
    assert!(lines.iter().any(|l| l.contains("sync") && l.contains("chatgpt (v0)")), "{out}");
    assert!(lines.iter().any(|l| l.contains("async") && l.contains("openai-batch (v0)")), "{out}");

    let (code, out, _) = env.output(&["health"]).await;
    assert_eq!((code, out.trim()), (0, "SERVING"));

    let unreachable = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--endpoint", "http://127.0.0.1:1", "health"])
        .output()
        .await
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect to http://127.0.0.1:1"));
}

#[tokio::test]
async fn sync_task_prints_its_outputs() {
    let env = env(Duration::from_millis(50)).await;
    let t = env.file("chat.json", chat_json("gpt-4o-mini"));
    let inputs = values_to_literal_map([("message", Value::from("Say hello"))]);
    let i = env.file("inputs.pb", inputs.encode_to_vec());
    let (code, out, err) = env.output(&["run", "--task-type", CHATGPT_TYPE, "--template", &t, "--inputs", &i]).await;
    assert_eq!(code, 0, "{err}");
    let outputs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(outputs["o0"].as_str().is_some_and(|s| s.contains("Say hello")), "{out}");
    assert!(err.contains("SUCCEEDED") && err.contains("the task succeeded"), "{err}");
    assert_eq!(env.ai.chat_requests().0, 1);
}

#[tokio::test]
async fn async_task_from_a_task_spec_is_polled_to_success() {
    let env = env(Duration::from_millis(100)).await;
    let spec = task_spec(&template(BATCH_TYPE, json!({"openai_organization": null, "config": {}})));
    let t = env.file("batch.pb", spec);
    let i = env.file(
        "inputs.json",
        json!({"literals": {"input_file_id": {"scalar": {"primitive": {"stringValue": "file-abc"}}}}}).to_string(),
    );
    let (code, out, err) = env
        .output(&["run", "--task-type", BATCH_TYPE, "--template", &t, "--inputs", &i, "--poll-interval", "50ms"])
        .await;
    assert_eq!(code, 0, "{err}");
    // Without a terminal, every change is a line: created, then phases, then the summary.
    let created = err.find("created (resource meta of").expect(&err);
    let running = err.find("RUNNING").expect(&err);
    assert!(created < running, "{err}");
    assert!(err.contains("SUCCEEDED: completed"), "{err}");
    // The agent's one output, `result` (flytekit's BatchResult, msgpack-encoded).
    let outputs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outputs.as_object().unwrap().keys().collect::<Vec<_>>(), ["result"], "{out}");
    assert_eq!(env.ai.batches().len(), 1);
}

#[tokio::test]
async fn flyte2_runs_sync_and_async_tasks_with_the_requests_secret() {
    // The agent's own key is refused by the service; only the request's works.
    let env = env_with_key(Duration::from_millis(50), "sk-revoked-pod-key").await;
    let t = env.file("chat.json", chat_json("gpt-4o-mini"));
    let i = env.file("inputs.pb", values_to_literal_map([("message", Value::from("over Flyte 2"))]).encode_to_vec());
    let (code, _, err) = env.output(&["run", "--task-type", CHATGPT_TYPE, "--template", &t, "--inputs", &i]).await;
    assert_eq!(code, 1, "Flyte 1 uses the agent's key: {err}");
    let key = env.file("key", "sk-emulator-key\n");
    let secret = format!("FLYTE_OPENAI_API_KEY=@{key}");
    let args = ["run", "--task-type", CHATGPT_TYPE, "--template", &t, "--inputs", &i, "--flyte2", "--secret", &secret];
    let (code, out, err) = env.output(&args).await;
    assert_eq!(code, 0, "{err}");
    let outputs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(outputs["o0"].as_str().is_some_and(|s| s.contains("over Flyte 2")), "{out}");
    // A sync agent over Flyte 2 is created, then its result is read back.
    assert!(err.contains("created (resource meta of") && err.contains("SUCCEEDED"), "{err}");
    assert!(!err.contains("sk-emulator-key"), "{err}");

    let b = env.file("batch.json", json!({"type": BATCH_TYPE, "custom": {"config": {}}}).to_string());
    let bi =
        env.file("batch-inputs.pb", values_to_literal_map([("input_file_id", Value::from("file-2"))]).encode_to_vec());
    let args = [
        "run",
        "--task-type",
        BATCH_TYPE,
        "--template",
        &b,
        "--inputs",
        &bi,
        "--poll-interval",
        "50ms",
        "--flyte2",
        "--secret",
        "flyte_openai_api_key=sk-emulator-key",
    ];
    let (code, out, err) = env.output(&args).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"result\""), "{out}");
    assert_eq!(env.ai.batches().len(), 1);

    // --secret means nothing to Flyte 1.
    let (code, _, err) = env.output(&["run", "--task-type", BATCH_TYPE, "--template", &b, "--secret", "k=v"]).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn a_failed_task_exits_non_zero_with_the_reason() {
    let env = env(Duration::from_millis(50)).await;
    let t = env.file("chat.json", chat_json("gpt-no-such-model"));
    let i = env.file(
        "inputs.json",
        json!({"literals": {"message": {"scalar": {"primitive": {"stringValue": "hi"}}}}}).to_string(),
    );
    let (code, out, err) = env.output(&["run", "--task-type", CHATGPT_TYPE, "--template", &t, "--inputs", &i]).await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("FAILED") && err.contains("gpt-no-such-model"), "{err}");
}

#[tokio::test]
async fn bad_files_and_mismatched_task_types_exit_2() {
    let env = env(Duration::from_millis(50)).await;
    let missing = env.dir.join("missing.pb");
    let (code, _, err) =
        env.output(&["run", "--task-type", CHATGPT_TYPE, "--template", &missing.to_string_lossy()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the template file") && err.contains("missing.pb"), "{err}");

    let t = env.file("chat.pb", template(CHATGPT_TYPE, json!({})).encode_to_vec());
    let (code, _, err) = env.output(&["run", "--task-type", "snowflake", "--template", &t]).await;
    assert_eq!(code, 2);
    assert!(err.contains("task type 'chatgpt', not 'snowflake'"), "{err}");

    let bad = env.file("inputs.json", "{\"literals\": {\"message\": 42}}");
    let t = env.file("chat.json", chat_json("gpt-4o-mini"));
    let (code, _, err) = env.output(&["run", "--task-type", CHATGPT_TYPE, "--template", &t, "--inputs", &bad]).await;
    assert_eq!(code, 2);
    assert!(err.contains("is not a LiteralMap"), "{err}");
    assert_eq!(env.ai.chat_requests().0, 0, "nothing reaches the agent's service");
}

#[tokio::test]
async fn ctrl_c_sends_delete_task() {
    // Batches stay in each state for a minute: the task is still running when interrupted.
    let env = env(Duration::from_secs(60)).await;
    let t = env.file("batch.json", json!({"type": BATCH_TYPE, "custom": {"config": {}}}).to_string());
    let i = env.file(
        "inputs.json",
        json!({"literals": {"input_file_id": {"scalar": {"primitive": {"stringValue": "file-abc"}}}}}).to_string(),
    );
    let mut child = env
        .agentctl(&["run", "--task-type", BATCH_TYPE, "--template", &t, "--inputs", &i, "--poll-interval", "50ms"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap() {
        seen.push(line.clone());
        if line.contains("created (resource meta") {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    let code = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(code.code(), Some(130), "{seen:?}");
    assert!(seen.iter().any(|l| l.contains("DeleteTask sent")), "{seen:?}");
    let batches = env.ai.batches();
    assert_eq!(batches.len(), 1);
    assert!(batches[0]["status"].as_str().is_some_and(|s| s.starts_with("cancel")), "{batches:?}");
}
