//! The agentctl binary against a real agent server (the OpenAI agents, sync and async)
//! backed by the OpenAI emulator: list, health, runs to success and failure, bad files,
//! Ctrl-C turning into DeleteTask, and TLS and mutual TLS with certificates from a
//! throwaway CA (trust, names, client certificates, bad files).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use agent_core::AgentService;
use agent_core::config::{ServerConfig, TlsConfig};
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::core;
use agent_core::prelude::*;
use agent_core::testing::pki::Ca;
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
    env_with(step, pod_key, test_config()).await
}

/// An environment whose agent server runs with `server` settings (TLS, say).
async fn env_with(step: Duration, pod_key: &str, server: ServerConfig) -> Env {
    let ai = OpenAi::new(Settings { step, ..Settings::default() });
    let emulator = ai.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let config = Config { base_url: Some(format!("{}/v1", emulator.url())), ..Config::default() };
    let registry = Registry::builder()
        .sync_agent(ChatGptAgent::new(config.clone()).unwrap())
        .unwrap()
        .async_agent(BatchAgent::new(config).unwrap())
        .unwrap();
    let service = AgentService::new(registry, secrets(&[("_FSEC_FLYTE_OPENAI_API_KEY", pod_key)]));
    let server = TestServer::start_with(service, server).await;
    let dir = std::env::temp_dir().join(format!("agentctl-test-{}-{}", std::process::id(), server.addr().port()));
    std::fs::create_dir_all(&dir).unwrap();
    Env { ai, _emulator: emulator, server, dir }
}

impl Env {
    fn agentctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare(&["--endpoint", &self.server.endpoint()]);
        cmd.args(args);
        cmd
    }

    async fn output(&self, args: &[&str]) -> (i32, String, String) {
        output(self.agentctl(args)).await
    }

    /// agentctl with `args` only (the test names the endpoint), and none of the settings
    /// the environment running the tests may hold.
    fn bare(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentctl"));
        for var in ["AGENTCTL_TLS", "AGENTCTL_CA_CERT", "AGENTCTL_CERT", "AGENTCTL_KEY", "AGENTCTL_SERVER_NAME"] {
            cmd.env_remove(var);
        }
        cmd.args(args).kill_on_drop(true);
        cmd
    }

    /// `https://127.0.0.1:PORT`: the server's certificates name no IP address.
    fn https(&self) -> String {
        format!("https://{}", self.server.addr())
    }

    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    }
}

async fn output(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().await.unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
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
    // With no scheme and no TLS flag, plaintext.
    let (code, out, err) = output(env.bare(&["--endpoint", &env.server.addr().to_string(), "health"])).await;
    assert_eq!((code, out.trim()), (0, "SERVING"), "{err}");

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

// TLS and mutual TLS. The agent's certificate names `agent.flyte` only, as a cluster
// certificate names SERVICE.NAMESPACE, while agentctl dials 127.0.0.1: without
// `--server-name` the names differ, which is what a port-forward looks like.

const AGENT_NAME: &str = "agent.flyte";

/// Files of a throwaway PKI: the agents' CA, the agent's certificate, the client CA and a
/// client certificate it issued, and a CA nobody trusts with a certificate of its own.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_ca: String,
    client_cert: String,
    client_key: String,
    rogue_ca: String,
    rogue_cert: String,
    rogue_key: String,
    /// The key file's content, which no message may quote.
    client_key_pem: String,
}

fn pki(dir: &std::path::Path) -> Pki {
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    };
    let authority = Ca::new("agents CA");
    let (server_cert, server_key) = authority.issue(&[AGENT_NAME]);
    let clients = Ca::new("client CA");
    let (client_cert, client_key) = clients.issue(&["flytepropeller"]);
    let rogue = Ca::new("rogue CA");
    let (rogue_cert, rogue_key) = rogue.issue(&["flytepropeller"]);
    Pki {
        ca: write("ca.pem", &authority.pem),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_ca: write("client-ca.pem", &clients.pem),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
        rogue_ca: write("rogue-ca.pem", &rogue.pem),
        rogue_cert: write("rogue.pem", &rogue_cert),
        rogue_key: write("rogue-key.pem", &rogue_key),
        client_key_pem: client_key,
    }
}

/// Server settings serving `pki`'s certificate, asking for client certificates when
/// `mutual`. (From JSON, as the config file would give them, so settings added later
/// take their defaults.)
fn tls_config(pki: &Pki, mutual: bool) -> ServerConfig {
    let mut tls = json!({"cert_file": pki.server_cert, "key_file": pki.server_key});
    if mutual {
        tls["client_ca_file"] = json!(pki.client_ca);
    }
    let tls: TlsConfig = serde_json::from_value(tls).unwrap();
    ServerConfig { tls: Some(tls), ..test_config() }
}

/// A TLS agent: the directory of its PKI and the environment.
async fn tls_env(mutual: bool) -> (Pki, Env) {
    // The PKI goes in a directory of its own, made before the server starts.
    let dir = std::env::temp_dir().join(format!(
        "agentctl-pki-{}-{}",
        std::process::id(),
        if mutual { "mutual" } else { "tls" }
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki(&dir);
    let env = env_with(Duration::from_millis(50), "sk-emulator-key", tls_config(&pki, mutual)).await;
    (pki, env)
}

/// One line on stderr, no panic, nothing of the client key.
fn one_line(err: &str, pki: &Pki) {
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for line in pki.client_key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!err.contains(line), "the key leaked: {err}");
    }
}

#[tokio::test]
async fn tls_with_the_agents_ca_and_server_name() {
    let (pki, env) = tls_env(false).await;
    let https = env.https();

    // The agent's CA and the name its certificate is for: list, health and a run.
    let trusting = ["--endpoint", &https, "--ca-cert", &pki.ca, "--server-name", AGENT_NAME];
    let (code, out, err) = output(env.bare(&[&trusting[..], &["list"]].concat())).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("chatgpt (v0)"), "{out}");
    let (code, out, err) = output(env.bare(&[&trusting[..], &["health"]].concat())).await;
    assert_eq!((code, out.trim()), (0, "SERVING"), "{err}");
    let t = env.file("chat.json", chat_json("gpt-4o-mini"));
    let i = env.file("inputs.pb", values_to_literal_map([("message", Value::from("over TLS"))]).encode_to_vec());
    let run = ["run", "--task-type", CHATGPT_TYPE, "--template", &t, "--inputs", &i];
    let (code, out, err) = output(env.bare(&[&trusting[..], &run[..]].concat())).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("over TLS"), "{out}");

    // No scheme: the TLS flags make it https://; the flags also come from the environment.
    let mut cmd = env.bare(&["--endpoint", &env.server.addr().to_string(), "health"]);
    cmd.env("AGENTCTL_CA_CERT", &pki.ca).env("AGENTCTL_SERVER_NAME", AGENT_NAME);
    let (code, out, err) = output(cmd).await;
    assert_eq!((code, out.trim()), (0, "SERVING"), "{err}");

    // Without --server-name the certificate is checked for 127.0.0.1, which it is not for.
    let (code, _, err) = output(env.bare(&["--endpoint", &https, "--ca-cert", &pki.ca, "list"])).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("not valid for 127.0.0.1 (it is for {AGENT_NAME})")), "{err}");
    assert!(err.contains("--server-name"), "{err}");
    one_line(&err, &pki);

    // A name the certificate is not for.
    let (code, _, err) =
        output(env.bare(&["--endpoint", &https, "--ca-cert", &pki.ca, "--server-name", "other.flyte", "list"])).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not valid for other.flyte"), "{err}");
    one_line(&err, &pki);

    // A CA that did not issue the agent's certificate.
    let (code, _, err) =
        output(env.bare(&["--endpoint", &https, "--ca-cert", &pki.rogue_ca, "--server-name", AGENT_NAME, "list"]))
            .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not issued by a CA in --ca-cert") && err.contains("rogue-ca.pem"), "{err}");
    one_line(&err, &pki);

    // --tls trusts the system's roots, which SSL_CERT_FILE replaces: with the agents' CA
    // there it connects, with another CA it is refused and told to pass --ca-cert.
    let mut cmd = env.bare(&["--endpoint", &https, "--tls", "--server-name", AGENT_NAME, "health"]);
    cmd.env("SSL_CERT_FILE", &pki.ca);
    let (code, out, err) = output(cmd).await;
    assert_eq!((code, out.trim()), (0, "SERVING"), "{err}");
    let mut cmd = env.bare(&["--endpoint", &https, "--server-name", AGENT_NAME, "health"]);
    cmd.env("SSL_CERT_FILE", &pki.rogue_ca);
    let (code, _, err) = output(cmd).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not issued by a CA this system trusts") && err.contains("--ca-cert"), "{err}");
    one_line(&err, &pki);

    // Plaintext at the TLS port gets nowhere, and is told to try TLS.
    let (code, _, err) = output(env.bare(&["--endpoint", &env.server.endpoint(), "list"])).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("https://"), "{err}");
    one_line(&err, &pki);
}

#[tokio::test]
async fn tls_to_a_plaintext_agent_says_so() {
    let env = env(Duration::from_millis(50)).await;
    let dir = env.dir.join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki(&dir);
    let endpoint = format!("https://{}", env.server.addr());
    let (code, _, err) = output(env.bare(&["--endpoint", &endpoint, "--ca-cert", &pki.ca, "list"])).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("did not answer in TLS") && err.contains("http://"), "{err}");
    one_line(&err, &pki);
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_agents_client_ca() {
    let (pki, env) = tls_env(true).await;
    let https = env.https();
    let trusting = ["--endpoint", &https, "--ca-cert", &pki.ca, "--server-name", AGENT_NAME];

    let identity = ["--cert", &pki.client_cert, "--key", &pki.client_key];
    let (code, out, err) = output(env.bare(&[&trusting[..], &identity[..], &["list"]].concat())).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("openai-batch (v0)"), "{out}");
    let t = env.file("chat.json", chat_json("gpt-4o-mini"));
    let i = env.file("inputs.pb", values_to_literal_map([("message", Value::from("over mTLS"))]).encode_to_vec());
    let run = ["run", "--task-type", CHATGPT_TYPE, "--template", &t, "--inputs", &i];
    let (code, out, err) = output(env.bare(&[&trusting[..], &identity[..], &run[..]].concat())).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("over mTLS"), "{out}");

    // No client certificate: refused, and told which flags give one.
    let (code, out, err) = output(env.bare(&[&trusting[..], &["list"]].concat())).await;
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("requires a client certificate") && err.contains("--cert"), "{err}");
    one_line(&err, &pki);
    let (code, _, err) = output(env.bare(&[&trusting[..], &run[..]].concat())).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("requires a client certificate"), "{err}");
    assert_eq!(env.ai.chat_requests().0, 1, "the refused run reached nothing");

    // A certificate from a CA the agent does not trust for clients.
    let rogue = ["--cert", &pki.rogue_cert, "--key", &pki.rogue_key];
    let (code, _, err) = output(env.bare(&[&trusting[..], &rogue[..], &["list"]].concat())).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("refused the client certificate") && err.contains("rogue.pem"), "{err}");
    one_line(&err, &pki);
}

#[tokio::test]
async fn bad_tls_flags_and_files_are_usage_errors() {
    let env = env(Duration::from_millis(50)).await;
    let dir = env.dir.join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki(&dir);
    let https = format!("https://{}", env.server.addr());
    let usage = |args: Vec<&str>| {
        let mut full = vec!["--endpoint", https.as_str()];
        full.extend(args);
        full.push("list");
        env.bare(&full)
    };

    // One of --cert and --key without the other.
    for (flag, other) in [("--cert", "--key"), ("--key", "--cert")] {
        let (code, _, err) = output(usage(vec!["--ca-cert", &pki.ca, flag, &pki.client_cert])).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(other) && err.contains("required"), "{err}");
    }

    let missing = dir.join("missing.pem").to_string_lossy().into_owned();
    let not_pem = env.file("not.pem", "just some text\n");
    // Looks like a key, is not one: its content must not be echoed.
    let fake_key =
        env.file("fake-key.pem", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n");
    let encrypted = env.file(
        "encrypted.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["--ca-cert", &missing], &["--ca-cert", "missing.pem", "cannot read"]),
        (vec!["--ca-cert", &not_pem], &["--ca-cert", "not.pem", "no PEM certificate"]),
        (vec!["--ca-cert", &pki.ca, "--cert", &missing, "--key", &pki.client_key], &["--cert", "missing.pem"]),
        (vec!["--ca-cert", &pki.ca, "--cert", &not_pem, "--key", &pki.client_key], &["--cert", "no PEM certificate"]),
        (vec!["--ca-cert", &pki.ca, "--cert", &pki.client_cert, "--key", &missing], &["--key", "missing.pem"]),
        (vec!["--ca-cert", &pki.ca, "--cert", &pki.client_cert, "--key", &not_pem], &["--key", "no PEM private key"]),
        (vec!["--ca-cert", &pki.ca, "--cert", &pki.client_cert, "--key", &fake_key], &["--key", "fake-key.pem"]),
        (vec!["--ca-cert", &pki.ca, "--cert", &pki.client_cert, "--key", &encrypted], &["--key", "encrypted"]),
        // The key of another certificate.
        (
            vec!["--ca-cert", &pki.ca, "--cert", &pki.client_cert, "--key", &pki.rogue_key],
            &["rogue-key.pem", "does not belong to the certificate", "client.pem"],
        ),
        (vec!["--ca-cert", &pki.ca, "--server-name", "not a name"], &["--server-name", "not a DNS name"]),
    ];
    for (args, expected) in cases {
        let (code, _, err) = output(usage(args.clone())).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        for e in expected {
            assert!(err.contains(e), "{args:?}: expected '{e}' in {err}");
        }
        one_line(&err, &pki);
        assert!(!err.contains("c2VjcmV0LWtleS1ieXRlcw"), "{err}");
        let rogue_key = std::fs::read_to_string(&pki.rogue_key).unwrap();
        for line in rogue_key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!err.contains(line), "a key leaked: {err}");
        }
    }

    // TLS flags with an explicit http:// endpoint contradict each other.
    let (code, _, err) = output(env.bare(&["--endpoint", &env.server.endpoint(), "--ca-cert", &pki.ca, "list"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is plaintext (http://) but --ca-cert asks for TLS") && err.contains("https://"), "{err}");
    assert_eq!(env.ai.chat_requests().0, 0);
}
