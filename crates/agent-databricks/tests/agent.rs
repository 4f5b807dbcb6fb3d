//! The Databricks agent through real gRPC against the Databricks emulator over HTTPS:
//! conformance, the submitted spec, idempotent submit, each auth type, token expiry and
//! the 401 refresh, the allowlist, faults and state mapping.

use std::collections::HashMap;
use std::time::Duration;

use agent_core::AgentService;
use agent_core::http::RestSettings;
use agent_core::json::json_to_struct;
use agent_core::pb::{admin, core};
use agent_core::prelude::*;
use agent_core::testing::{
    Code, TestServer, conformance, create_request as create_req, get_request, secrets, test_config,
};
use agent_databricks::{Config, DatabricksAgent};
use emulators::databricks::{Databricks, RunRule, Settings};
use emulators::tls::TestCa;
use emulators::{FaultAction, FaultRule, Running};
use serde_json::json;

const PAT: &str = "dapi-emulator-token";

struct Env {
    db: Databricks,
    emulator: Running,
    server: TestServer,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn env_with(
    settings: Settings,
    secrets_env: &[(&str, &str)],
    tweak: impl FnOnce(&mut Config, &std::path::Path),
) -> Env {
    let ca = TestCa::generate().unwrap();
    let db = Databricks::new(settings);
    let emulator = db.start(([127, 0, 0, 1], 0).into(), Some(&ca)).await.unwrap();
    let dir = std::env::temp_dir().join(format!("dbx-test-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.ca_pem()).unwrap();
    let mut config = Config {
        default_instance: Some(emulator.host()),
        auth_type: None,
        client_id: None,
        client_secret: None,
        rest: RestSettings {
            ca_bundle: Some(dir.join("ca.pem")),
            attempt_timeout: Duration::from_secs(2),
            ..RestSettings::default()
        },
        ..Config::default()
    };
    tweak(&mut config, &dir);
    let agent = DatabricksAgent::new(config).unwrap();
    let service = AgentService::new(Registry::builder().async_agent(agent).unwrap(), secrets(secrets_env));
    let server = TestServer::start_with(service, test_config()).await;
    Env { db, emulator, server, _dir: TempDir(dir) }
}

fn uuid_like() -> String {
    format!(
        "{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

fn fast() -> Settings {
    Settings { pending: Duration::from_millis(20), running: Duration::from_millis(60), ..Settings::default() }
}

async fn pat_env() -> Env {
    env_with(fast(), &[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", PAT)], |_, _| {}).await
}

fn task(task_type: &str, custom: serde_json::Value) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: task_type.into(),
            custom: Some(json_to_struct(custom.as_object().unwrap())),
            target: Some(core::task_template::Target::Container(core::Container {
                image: "flyteorg/flytekit:spark".into(),
                args: vec!["pyflyte-fast-execute".into(), "--output-prefix".into(), "s3://b/o".into()],
                env: vec![core::KeyValuePair { key: "foo".into(), value: "bar".into() }],
                ..Default::default()
            })),
            ..Default::default()
        },
        output_prefix: "s3://b/o".into(),
        ..Default::default()
    }
}

fn classic(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"sparkConf": {"spark.driver.memory": "1000M"},
        "databricksConf": {"run_name": "flyte run", "new_cluster": {"spark_version": "13.3.x", "num_workers": 1.0}, "timeout_seconds": 3600.0}});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

fn attempt(mut t: TaskRequest, exec: &str, retry: u32) -> TaskRequest {
    t.metadata = Some(admin::TaskExecutionMetadata {
        namespace: "proj-dev".into(),
        task_execution_id: Some(core::TaskExecutionIdentifier {
            task_id: Some(core::Identifier { name: "dbx".into(), version: "v1".into(), ..Default::default() }),
            node_execution_id: Some(core::NodeExecutionIdentifier {
                node_id: "n0".into(),
                execution_id: Some(core::WorkflowExecutionIdentifier {
                    name: exec.into(),
                    project: "proj".into(),
                    domain: "dev".into(),
                    org: String::new(),
                }),
            }),
            retry_attempt: retry,
        }),
        ..Default::default()
    });
    t
}

async fn get(env: &Env, task_type: &str, meta: &[u8]) -> Resource {
    env.server.get_resource(task_type, meta).await
}

async fn create(env: &Env, t: &TaskRequest) -> Result<Vec<u8>, agent_core::testing::Status> {
    env.server.async_client().await.create_task(create_req(t)).await.map(|r| r.into_inner().resource_meta)
}

async fn wait_terminal(env: &Env, task_type: &str, meta: &[u8]) -> Resource {
    for _ in 0..200 {
        let r = get(env, task_type, meta).await;
        if r.phase.is_terminal() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("run did not finish");
}

#[tokio::test]
async fn both_task_types_pass_conformance_over_https_with_a_pat() {
    let env = pat_env().await;
    for ty in ["spark", "databricks"] {
        let r = conformance::async_agent(&env.server, task(ty, classic(json!({}))), Duration::from_secs(10)).await;
        assert_eq!(r.phase, Phase::Succeeded, "{ty}: {}", r.message);
        assert!(
            r.log_links[0].uri.starts_with(&format!("https://{}/?o=", env.emulator.host())),
            "{}",
            r.log_links[0].uri
        );
        assert!(r.outputs.is_none(), "the job writes outputs.pb itself");
    }
    let runs = env.db.runs();
    let spec = &runs[0].spec;
    // Integers stayed integers (the emulator rejects 1.0 for num_workers, as Databricks does).
    assert_eq!(spec["new_cluster"]["num_workers"], json!(1));
    assert_eq!(spec["new_cluster"]["spark_env_vars"]["FLYTE_FAIL_ON_ERROR"], "true");
    assert_eq!(spec["spark_python_task"]["parameters"][0], "pyflyte-fast-execute");
    assert_eq!(runs[0].auth, "pat");
}

#[tokio::test]
async fn repeated_submits_for_one_attempt_make_one_run_and_metas_hold_no_token() {
    let env = pat_env().await;
    let t = attempt(task("databricks", classic(json!({}))), "exec-1", 0);
    let m1 = create(&env, &t).await.unwrap();
    let m2 = create(&env, &t).await.unwrap();
    assert_eq!(m1, m2);
    assert_eq!(env.db.runs().len(), 1);
    assert_eq!(env.db.request_counts().0, 2);
    let m3 = create(&env, &attempt(task("databricks", classic(json!({}))), "exec-1", 1)).await.unwrap();
    assert_ne!(m1, m3);
    let text = String::from_utf8(m1).unwrap();
    assert!(!text.contains(PAT) && !text.contains("auth_token"), "{text}");
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(meta["auth_type"], "pat");
    assert_eq!(meta["namespace"], "proj-dev");
}

#[tokio::test]
async fn delete_cancels_and_is_idempotent() {
    let env = pat_env().await;
    env.db.add_rule(RunRule {
        run_name_contains: "long".into(),
        end: "SUCCESS".into(),
        message: String::new(),
        running_ms: Some(600_000),
    });
    let mut c = classic(json!({}));
    c["databricksConf"]["run_name"] = json!("a long run");
    let meta = create(&env, &task("databricks", c)).await.unwrap();
    let mut client = env.server.async_client().await;
    let del = |m: &[u8]| admin::DeleteTaskRequest {
        resource_meta: m.to_vec(),
        task_category: Some(admin::TaskCategory { name: "databricks".into(), version: 0 }),
        ..Default::default()
    };
    client.delete_task(del(&meta)).await.unwrap();
    client.delete_task(del(&meta)).await.unwrap();
    assert_eq!(get(&env, "databricks", &meta).await.phase, Phase::Aborted);
    let unknown = format!(r#"{{"databricks_instance": "{}", "run_id": "999"}}"#, env.emulator.host());
    client.delete_task(del(unknown.as_bytes())).await.unwrap();
    assert_eq!(get(&env, "databricks", unknown.as_bytes()).await.phase, Phase::Failed);
}

#[tokio::test]
async fn oauth_m2m_caches_tokens_and_refreshes_once_on_401() {
    let env = env_with(fast(), &[], |c, _| {
        c.auth_type = Some("oauth_m2m".into());
        c.client_id = Some("emulator-client".into());
        c.client_secret = Some(Secret::new("emulator-secret"));
    })
    .await;
    let meta = create(&env, &task("databricks", classic(json!({})))).await.unwrap();
    let r = wait_terminal(&env, "databricks", &meta).await;
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(env.db.runs()[0].auth, "oauth");
    assert_eq!(env.db.request_counts().1, 1, "one token for the submit and every poll");
    // Databricks revokes the token: the next call gets a 401, refreshes, and succeeds.
    env.db.revoke_tokens();
    assert_eq!(get(&env, "databricks", &meta).await.phase, Phase::Succeeded);
    assert_eq!(env.db.request_counts().1, 2);
    let text = String::from_utf8(meta).unwrap();
    assert!(!text.contains("dbx-oauth-") && !text.contains("emulator-secret"), "{text}");
    assert!(text.contains(r#""auth_type":"oauth_m2m""#) && text.contains(r#""client_id":"emulator-client""#));
}

#[tokio::test]
async fn tokens_are_renewed_before_they_expire() {
    let settings = Settings { token_ttl: Duration::from_secs(2), ..fast() };
    let env = env_with(settings, &[], |c, _| {
        c.auth_type = Some("oauth_m2m".into());
        c.client_id = Some("emulator-client".into());
        c.client_secret = Some(Secret::new("emulator-secret"));
    })
    .await;
    let meta = create(&env, &task("databricks", classic(json!({})))).await.unwrap();
    assert_eq!(env.db.request_counts().1, 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _ = get(&env, "databricks", &meta).await;
    assert_eq!(env.db.request_counts().1, 2, "a token past its usable life is replaced before use");
}

#[tokio::test]
async fn oidc_federation_exchanges_the_workload_token() {
    let env = env_with(fast(), &[], |c, dir| {
        std::fs::write(dir.join("jwt"), "emulator-subject-jwt\n").unwrap();
        c.oidc_token_file = Some(dir.join("jwt").to_string_lossy().into_owned());
    })
    .await;
    let custom =
        classic(json!({"databricksAuthType": "oidc_federation", "databricksClientId": "emulator-federated-client"}));
    let meta = create(&env, &task("databricks", custom)).await.unwrap();
    assert_eq!(wait_terminal(&env, "databricks", &meta).await.phase, Phase::Succeeded);
    assert_eq!(env.db.runs()[0].auth, "oauth");
    // A client the workspace does not trust is refused with a clear error.
    let wrong = classic(json!({"databricksAuthType": "oidc_federation", "databricksClientId": "someone-else"}));
    let err = create(&env, &task("databricks", wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("someone-else"), "{}", err.message());
    // A token endpoint that repeats the request: the workload's subject token is scrubbed.
    env.db.faults().push(FaultRule::new(FaultAction::Echo { code: 400 }, 1).path("/oidc/v1/token"));
    let other = classic(json!({"databricksAuthType": "oidc_federation", "databricksClientId": "another-client"}));
    let err = create(&env, &task("databricks", other)).await.unwrap_err();
    assert!(err.message().contains("[REDACTED]"), "the echo came back: {}", err.message());
    assert!(!err.message().contains("emulator-subject-jwt"), "{}", err.message());
}

#[tokio::test]
async fn credentials_only_go_to_allowlisted_instances() {
    let env = pat_env().await;
    let evil = classic(json!({"databricksInstance": "evil.example.com"}));
    let err = create(&env, &task("databricks", evil)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("evil.example.com"));
    let forged = br#"{"databricks_instance": "evil.example.com", "run_id": "1"}"#;
    let err = env.server.async_client().await.get_task(get_request("databricks", forged)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(!err.message().contains(PAT));
    assert_eq!(env.db.request_counts().0, 0);
}

#[tokio::test]
async fn a_pat_stored_by_the_python_agent_is_used_for_its_run() {
    // This agent has no PAT of its own; the Python-era meta carries one.
    let env = env_with(fast(), &[], |_, _| {}).await;
    let err = create(&env, &task("databricks", classic(json!({})))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN"), "{}", err.message());
    let with_pat = env_with(fast(), &[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", PAT)], |_, _| {}).await;
    let meta: serde_json::Value =
        serde_json::from_slice(&create(&with_pat, &task("databricks", classic(json!({})))).await.unwrap()).unwrap();
    // Hand the run to the agent without a PAT, in the Python agent's 1.16.31 form.
    let py = format!(
        r#"{{"databricks_instance": "{}", "run_id": "{}", "auth_token": "{PAT}", "auth_type": "pat", "client_id": null, "oauth_secret_name": "databricks-oauth", "oidc_token_file": null, "oidc_service_account": null, "oidc_audience": null, "namespace": ""}}"#,
        with_pat.emulator.host(),
        meta["run_id"].as_str().unwrap()
    );
    let env2 = env_with(fast(), &[], |c, _| c.default_instance = Some(with_pat.emulator.host())).await;
    let r = get(&env2, "databricks", py.as_bytes()).await;
    assert_ne!(r.phase, Phase::Failed, "{}", r.message);
}

#[tokio::test]
async fn transient_errors_on_polls_never_fail_the_task() {
    let env = pat_env().await;
    let meta = create(&env, &task("databricks", classic(json!({})))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    for action in [
        FaultAction::Status { code: 429, retry_after_secs: Some(1) },
        FaultAction::Status { code: 503, retry_after_secs: None },
        FaultAction::Drop,
        FaultAction::Malformed,
    ] {
        let before = env.db.faults().injected();
        env.db.faults().push(FaultRule::new(action.clone(), 2).method("GET"));
        assert_eq!(get(&env, "databricks", &meta).await.phase, Phase::Succeeded, "{action:?}");
        assert_eq!(env.db.faults().injected(), before + 2);
    }
    env.db.faults().push(FaultRule {
        times: None,
        ..FaultRule::new(FaultAction::Status { code: 503, retry_after_secs: None }, 0)
    });
    let mut req = agent_core::testing::Request::new(get_request("databricks", &meta));
    req.set_timeout(Duration::from_millis(1500));
    let r = env.server.async_client().await.get_task(req).await.unwrap().into_inner();
    let r = Resource::from_proto(&r.resource.unwrap());
    assert_eq!(r.phase, Phase::Running);
    assert!(r.message.contains("503"), "{}", r.message);
}

#[tokio::test]
async fn run_outcomes_map_to_phases() {
    let env = pat_env().await;
    let outcomes = HashMap::from([
        ("cloud", ("INTERNAL_ERROR", Phase::RetryableFailed)),
        ("broken", ("FAILED", Phase::Failed)),
        ("slow", ("TIMEDOUT", Phase::Failed)),
    ]);
    for (name, (end, _)) in &outcomes {
        env.db.add_rule(RunRule {
            run_name_contains: (*name).into(),
            end: (*end).into(),
            message: format!("{name} happened"),
            running_ms: None,
        });
    }
    for (name, (_, phase)) in outcomes {
        let mut c = classic(json!({}));
        c["databricksConf"]["run_name"] = json!(name);
        let meta = create(&env, &task("databricks", c)).await.unwrap();
        let r = wait_terminal(&env, "databricks", &meta).await;
        assert_eq!(r.phase, phase, "{name}: {}", r.message);
        assert_eq!(r.message, format!("{name} happened"));
    }
    // A state Databricks may add later keeps the task running.
    let meta = create(&env, &task("databricks", classic(json!({})))).await.unwrap();
    let run_id: u64 =
        serde_json::from_slice::<serde_json::Value>(&meta).unwrap()["run_id"].as_str().unwrap().parse().unwrap();
    env.db.force(run_id, json!({"state": {"life_cycle_state": "HIBERNATING"}, "status": {"state": "HIBERNATING"}}));
    let r = get(&env, "databricks", &meta).await;
    assert_eq!(r.phase, Phase::Running);
    assert!(r.message.contains("HIBERNATING"));
}

#[tokio::test]
async fn malformed_tasks_are_refused_precisely() {
    let env = env_with(fast(), &[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", PAT)], |c, _| c.default_instance = None).await;
    let err = create(&env, &task("databricks", classic(json!({})))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("databricksInstance"), "{}", err.message());
    let env = pat_env().await;
    let err = create(&env, &task("databricks", json!({"databricksConf": {"run_name": "x"}}))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("existing_cluster_id") && err.message().contains("environments"));
    let err = create(&env, &task("databricks", classic(json!({"databricksAuthType": "kerberos"})))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn hostile_metas_templates_and_inputs_are_handled() {
    let env = pat_env().await;
    conformance::hostile_inputs(&env.server, task("databricks", classic(json!({}))), 48).await;
}

/// Counts every request the emulator receives (control endpoints aside): a zero-delay
/// fault that never retires.
fn record_requests(db: &Databricks) {
    db.faults().push(FaultRule { times: None, ..FaultRule::new(FaultAction::Delay { ms: 0 }, 0) });
}

#[tokio::test]
async fn files_named_by_templates_or_metas_are_never_read_nor_sent() {
    // Red team: a task or a forged meta names a file; before the fix the agent read it and
    // sent its content (the environment, with the PAT) as the subject token, and a missing
    // file answered differently, so the filesystem could be probed.
    let env = env_with(fast(), &[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", PAT)], |c, dir| {
        std::fs::write(dir.join("jwt"), "emulator-subject-jwt\n").unwrap();
        c.oidc_token_file = Some(dir.join("jwt").to_string_lossy().into_owned());
    })
    .await;
    let configured = env._dir.0.join("jwt").to_string_lossy().into_owned();
    record_requests(&env.db);
    let missing = env._dir.0.join("no-such-token").to_string_lossy().into_owned();
    let hostile = ["/proc/self/environ", "/etc/shadow", "/etc/passwd", missing.as_str()];
    let mut client = env.server.async_client().await;
    let mut answers = Vec::new();
    for path in hostile {
        for auth_type in ["oidc_federation", "pat"] {
            let custom = classic(json!({"databricksAuthType": auth_type,
                "databricksClientId": "emulator-federated-client", "databricksOidcTokenFile": path}));
            let err = create(&env, &task("databricks", custom)).await.unwrap_err();
            answers.push(("template", err.code(), err.message().to_owned()));
        }
        let meta = json!({"databricks_instance": env.emulator.host(), "run_id": "1", "auth_type": "oidc_federation",
            "client_id": "emulator-federated-client", "oidc_token_file": path, "namespace": ""})
        .to_string();
        let err = client.get_task(get_request("databricks", meta.as_bytes())).await.unwrap_err();
        answers.push(("meta", err.code(), err.message().to_owned()));
        let del = admin::DeleteTaskRequest {
            resource_meta: meta.into_bytes(),
            task_category: Some(admin::TaskCategory { name: "databricks".into(), version: 0 }),
            ..Default::default()
        };
        let err = client.delete_task(del).await.unwrap_err();
        answers.push(("meta", err.code(), err.message().to_owned()));
    }
    for (source, code, message) in &answers {
        assert_eq!(*code, Code::PermissionDenied, "{source}: {message}");
        assert!(message.contains("databricks.oidc_token_file"), "{message}");
        assert!(!message.contains("/etc") && !message.contains("/proc") && !message.contains(PAT), "{message}");
        let first = answers.iter().find(|(s, ..)| s == source).unwrap();
        assert_eq!(message, &first.2, "one answer whatever the file, so nothing can be probed");
    }
    assert_eq!(env.db.request_counts(), (0, 0), "no token exchange, no submit");
    assert_eq!(env.db.faults().injected(), 0, "the emulator saw no request at all");

    // Run ids go into requests too: anything but an integer is refused before a byte is sent.
    for run_id in ["", "1&run_id=2", "../2.0/clusters/list", "1 "] {
        let meta = json!({"databricks_instance": env.emulator.host(), "run_id": run_id}).to_string();
        let err = client.get_task(get_request("databricks", meta.as_bytes())).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{run_id:?}: {}", err.message());
        assert!(err.message().contains("run_id"), "{}", err.message());
    }
    assert_eq!(env.db.faults().injected(), 0);

    // The configured file, named or not (a Python agent's meta stores it, or null), works.
    env.db.faults().clear();
    let custom = classic(json!({"databricksAuthType": "oidc_federation",
        "databricksClientId": "emulator-federated-client", "databricksOidcTokenFile": configured}));
    let meta = create(&env, &task("databricks", custom)).await.unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["oidc_token_file"], json!(configured));
    let r = get(&env, "databricks", meta.to_string().as_bytes()).await;
    assert_ne!(r.phase, Phase::Failed, "{}", r.message);
    meta["oidc_token_file"] = serde_json::Value::Null;
    let r = wait_terminal(&env, "databricks", meta.to_string().as_bytes()).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
}

#[tokio::test]
async fn an_invalid_auth_type_stops_the_agent_at_start_up() {
    use agent_core::config::{CliArgs, Settings};
    let from_env = |value: &str| {
        let env = HashMap::from([("AGENT_DATABRICKS__AUTH_TYPE".to_owned(), value.to_owned())]);
        Settings::load(&CliArgs::default(), Some(env)).unwrap()
    };
    let from_flag = |value: &str| {
        let cli = CliArgs { overrides: vec![format!("databricks.auth_type={value}")], ..CliArgs::default() };
        Settings::load(&cli, Some(HashMap::new())).unwrap()
    };
    let dir = std::env::temp_dir().join(format!("dbx-config-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let from_file = |value: &str| {
        let path = dir.join("agent.yaml");
        std::fs::write(&path, format!("databricks:\n  auth_type: {value}\n")).unwrap();
        let cli = CliArgs { config: Some(path), ..CliArgs::default() };
        Settings::load(&cli, Some(HashMap::new())).unwrap()
    };
    for bad in ["kerberos", "PAT", "oauth"] {
        for settings in [from_env(bad), from_flag(bad), from_file(bad)] {
            let err = agent_databricks::registry(&settings).await.unwrap_err();
            assert!(
                err.contains("databricks.auth_type")
                    && err.contains("AGENT_DATABRICKS__AUTH_TYPE")
                    && err.contains("pat, oauth_m2m, oidc_federation"),
                "{err}"
            );
        }
        let config = Config { auth_type: Some(bad.into()), ..Config::default() };
        assert!(DatabricksAgent::new(config).is_err(), "{bad} must not start");
    }
    for good in ["pat", "oauth_m2m", "oidc_federation"] {
        for settings in [from_env(good), from_flag(good), from_file(good)] {
            assert!(agent_databricks::registry(&settings).await.is_ok(), "{good}");
        }
    }
}

/// The red-team case: a template or forged meta naming a host in disguise as its instance
/// gets no token, and nothing reaches that host.
#[tokio::test]
async fn no_token_leaves_for_a_host_a_task_or_meta_names() {
    use agent_core::testing::hostile::{Trap, assert_refused, hostile_hosts};
    let trap = Trap::start().await;
    let env = pat_env().await;
    let mut values = hostile_hosts(trap.addr());
    // The allowed instance with something appended or prepended is another host.
    let allowed = env.emulator.host();
    values.extend([
        format!("{allowed}@{}", trap.addr()),
        format!("{}#{allowed}", trap.addr()),
        format!("{allowed}.{}", trap.addr().ip()),
        format!("https://{allowed}@{}", trap.addr()),
    ]);
    for value in values {
        let t = task("spark", classic(json!({"databricksInstance": value})));
        let meta = json!({"databricks_instance": value, "run_id": "1"}).to_string();
        assert_refused(&env.server, "spark", Some(&t), &[meta.into_bytes()], &format!("instance {value:?}")).await;
    }
    assert_eq!(trap.reached(), 0, "a hostile instance reached the attacker's host");
    assert!(env.db.runs().is_empty(), "nothing was submitted");
}

/// A token stored in a Python agent's meta is the request's own value: an echo of it is
/// scrubbed from that call's answer, and the value never joins the process-wide scrub
/// list, so a forged meta cannot make other callers' results lose text it names.
#[tokio::test]
async fn a_token_stored_in_a_meta_is_scrubbed_from_its_own_answers_only() {
    let env = env_with(fast(), &[], |_, _| {}).await;
    env.db.faults().push(FaultRule::new(FaultAction::Echo { code: 503 }, 1000).path("runs/get"));
    let meta =
        json!({"databricks_instance": env.emulator.host(), "run_id": "1", "auth_token": PAT, "auth_type": "pat"});
    let r = env.server.get_resource("spark", meta.to_string().as_bytes()).await;
    assert!(r.message.contains("[REDACTED]"), "the echo came back: {}", r.message);
    assert!(!r.message.contains(PAT), "{}", r.message);
    // A forged "token" naming ordinary text leaves other texts alone.
    let forged =
        json!({"databricks_instance": env.emulator.host(), "run_id": "1", "auth_token": "databricks_instance"});
    let _ = env.server.get_resource("spark", forged.to_string().as_bytes()).await;
    assert_eq!(agent_core::secrets::redact("databricks_instance"), "databricks_instance");
}

/// Idempotency tokens starting `flyte-` are the agent's: a task choosing one could make
/// another task's create adopt a run it prepared.
#[tokio::test]
async fn a_task_cannot_choose_the_agents_idempotency_tokens() {
    let env = pat_env().await;
    let mut custom = classic(json!({}));
    custom["databricksConf"]["idempotency_token"] = json!("flyte-0123456789abcdef");
    let err = create(&env, &task("spark", custom)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(env.db.runs().is_empty());
    let mut own = classic(json!({}));
    own["databricksConf"]["idempotency_token"] = json!("my-own-token");
    assert!(create(&env, &task("spark", own)).await.is_ok(), "a user's own token still works");
}

/// A stored token that cannot be a header value is the meta's fault, not a transient
/// failure that would keep the task running forever.
#[tokio::test]
async fn a_stored_token_that_cannot_be_sent_is_an_invalid_argument() {
    let env = pat_env().await;
    let meta = json!({"databricks_instance": env.emulator.host(), "run_id": "1", "auth_token": "dapi-x\nInjected: 1"});
    let err =
        env.server.async_client().await.get_task(get_request("spark", meta.to_string().as_bytes())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// A flyte-sdk task (Flyte 2) runs as flyte-sdk's connector runs it: under the token its
/// request brings (never the agent's), with flyte-sdk's entrypoint, and a meta in
/// flyte-sdk's two-key form. A task that declares its token and arrives without it is
/// refused before anything is sent.
#[tokio::test]
async fn flyte2_tasks_run_under_their_own_token_with_flyte_sdks_run() {
    use agent_core::pb::v2::core::task_execution::Phase as Phase2;
    use agent_core::testing::flyte2;
    const TENANT: &str = "dapi-tenant-token";
    // The agent's own PAT is one the workspace refuses: only the tenant's token can work.
    let settings = Settings { pats: vec![TENANT.into()], ..fast() };
    let env = env_with(settings, &[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", "dapi-not-for-tenants")], |_, _| {}).await;
    let sdk = json!({
        "databricksConf": {"run_name": "flyte2 run", "timeout_seconds": 3600.0,
                           "new_cluster": {"spark_version": "13.3.x", "num_workers": 2.0}},
        "sparkConf": {"spark.executor.memory": "4g"},
        "executorPath": "/opt/venv/bin/python",
        "mainApplicationFile": "local:///opt/venv/bin/runtime.py",
        "databricksInstance": env.emulator.host(),
        "secrets": {"databricks_token": "databricks_token_secret"},
    });
    let t = task("databricks", sdk);
    let mut client = env.server.connector_client().await;
    let conn = || Some(flyte2::connection("databricks", &[("databricks_token", TENANT)]));
    let meta = client.create_task(flyte2::create_request(&t, conn())).await.unwrap().into_inner().resource_meta;
    let written: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    let keys: Vec<_> = written.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["databricks_instance", "run_id"], "flyte-sdk's DatabricksJobMetadata has these keys only");
    let run = env.db.runs().pop().unwrap();
    assert_eq!(run.spec["spark_python_task"]["python_file"], "flyteplugins/databricks/entrypoint.py");
    assert_eq!(run.spec["git_source"]["git_commit"], "194364210c47c49ce66c419e8fb68d6f9c06fd7e");
    assert_eq!(run.spec["new_cluster"]["spark_env_vars"], json!({"foo": "bar"}), "no FLYTE_FAIL_ON_ERROR");
    assert_eq!(run.spec["new_cluster"]["spark_conf"], json!({"spark.executor.memory": "4g"}));
    let mut phase = Phase2::Undefined as i32;
    for _ in 0..100 {
        let r = client.get_task(flyte2::get_request("databricks", &meta, conn())).await.unwrap().into_inner();
        phase = r.resource.unwrap().phase;
        if phase == Phase2::Succeeded as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(phase, Phase2::Succeeded as i32);
    client.delete_task(flyte2::delete_request("databricks", &meta, conn())).await.unwrap();

    // Declared but not sent: refused, naming the key, and nothing reaches the workspace.
    let before = env.db.request_counts().0;
    let err = client.create_task(flyte2::create_request(&t, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("'databricks_token'"), "{}", err.message());
    assert_eq!(env.db.request_counts().0, before);
    // A poll without the token: flyte-sdk's meta cannot record that the task brought one, so
    // it runs as the agent (a documented limit), which this workspace refuses.
    let err = client.get_task(flyte2::get_request("databricks", &meta, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

/// With every slot to the workspace taken by slow calls, a create whose deadline would
/// pass first is UNAVAILABLE (Propeller retries it) and a poll reports the run still
/// running; neither reaches the service, and both answer before their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_cannot_get_a_slot_in_time_are_unavailable_or_still_running() {
    let env = env_with(fast(), &[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", PAT)], |c, _| {
        c.rest.initial_concurrency = 1;
        c.rest.attempt_timeout = Duration::from_secs(10);
    })
    .await;
    let t = task("databricks", classic(json!({})));
    let meta = create(&env, &t).await.unwrap();
    // That answer raised the limit (slow start, to 2 or 3); four slow creates take every slot.
    env.db.shaping().set_latency(Some(emulators::Latency::fixed(Duration::from_secs(5))));
    let holders = async {
        let all = futures_util::future::join_all((0..4).map(|_| create(&env, &t))).await;
        all.iter().all(Result::is_ok)
    };
    let late = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent_before = env.db.shaping().stats().requests;
        let start = std::time::Instant::now();
        let created = env.server.async_client().await.create_task(timed(create_req(&t))).await;
        let polled = env.server.async_client().await.get_task(timed(get_request("databricks", &meta))).await;
        let took = start.elapsed();
        (created, polled, took, env.db.shaping().stats().requests - sent_before)
    };
    let (held, (created, polled, took, sent)) = tokio::join!(holders, late);
    assert!(held, "the slow creates succeed");
    let refused = created.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(refused.message().contains("adaptive concurrency limit"), "{}", refused.message());
    let polled = Resource::from_proto(&polled.unwrap().into_inner().resource.unwrap());
    assert_eq!(polled.phase, Phase::Running, "{}", polled.message);
    assert!(polled.message.contains("was not sent"), "{}", polled.message);
    // Each answered within its 2 s deadline, and neither reached the service.
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(sent, 0);
}

/// A request with a 2 s deadline.
fn timed<T>(msg: T) -> agent_core::testing::Request<T> {
    let mut r = agent_core::testing::Request::new(msg);
    r.set_timeout(Duration::from_secs(2));
    r
}
