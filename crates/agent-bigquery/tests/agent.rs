//! The BigQuery agent through real gRPC against the BigQuery emulator: conformance,
//! configuration honoured, parameters, idempotent create, state mapping, faults.

use std::time::Duration;

use agent_bigquery::{BigQueryAgent, Config, TASK_TYPE};
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::{admin, core};
use agent_core::prelude::*;
use agent_core::testing::{Code, TestServer, conformance, create_request as create_req, get_request};
use emulators::bigquery::{BigQuery, ForcedState, JobError, OutcomeRule, Timing};
use emulators::{FaultAction, FaultRule, Running};
use executor::Outcome;
use executor::testing::TestServerExt as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Env {
    bq: BigQuery,
    _emulator: Running,
    server: TestServer,
}

async fn env_with(timing: Timing, config: impl FnOnce(&mut Config)) -> Env {
    let bq = BigQuery::new(timing);
    let emulator = bq.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut cfg = Config { emulator_host: Some(emulator.host()), ..Config::default() };
    cfg.rest.attempt_timeout = Duration::from_secs(2);
    config(&mut cfg);
    let agent = BigQueryAgent::new(&cfg).await.unwrap();
    let server = TestServer::start(Registry::builder().async_agent(agent).unwrap()).await;
    Env { bq, _emulator: emulator, server }
}

async fn env() -> Env {
    env_with(Timing { pending: Duration::from_millis(30), running: Duration::from_millis(60) }, |_| {}).await
}

fn results_interface() -> core::TypedInterface {
    let sd = core::LiteralType {
        r#type: Some(core::literal_type::Type::StructuredDatasetType(core::StructuredDatasetType::default())),
        ..Default::default()
    };
    core::TypedInterface {
        inputs: None,
        outputs: Some(core::VariableMap {
            variables: [("results".to_owned(), core::Variable { r#type: Some(sd), ..Default::default() })].into(),
        }),
    }
}

fn task(sql: &str, custom: serde_json::Value, inputs: Vec<(&str, Value)>) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: TASK_TYPE.into(),
            custom: Some(json_to_struct(custom.as_object().unwrap())),
            target: Some(core::task_template::Target::Sql(core::Sql { statement: sql.into(), dialect: 1 })),
            interface: Some(results_interface()),
            metadata: Some(core::TaskMetadata {
                runtime: Some(core::RuntimeMetadata { version: "1.16.31".into(), r#type: 1, flavor: "python".into() }),
                ..Default::default()
            }),
            ..Default::default()
        },
        inputs: values_to_literal_map(inputs),
        output_prefix: "gs://bucket/out/0".into(),
        ..Default::default()
    }
}

fn attempt(mut t: TaskRequest, exec: &str, retry: u32) -> TaskRequest {
    t.metadata = Some(admin::TaskExecutionMetadata {
        task_execution_id: Some(core::TaskExecutionIdentifier {
            task_id: Some(core::Identifier { name: "bq.task".into(), version: "v1".into(), ..Default::default() }),
            node_execution_id: Some(core::NodeExecutionIdentifier {
                node_id: "n0".into(),
                execution_id: Some(core::WorkflowExecutionIdentifier {
                    project: "proj".into(),
                    domain: "dev".into(),
                    name: exec.into(),
                    org: String::new(),
                }),
            }),
            retry_attempt: retry,
        }),
        ..Default::default()
    });
    t
}

fn get_req(meta: &[u8]) -> admin::GetTaskRequest {
    get_request(TASK_TYPE, meta)
}

async fn get(env: &Env, meta: &[u8]) -> Resource {
    env.server.get_resource(TASK_TYPE, meta).await
}

fn custom() -> serde_json::Value {
    json!({"ProjectID": "flyte-test", "Location": "US", "Domain": "dev"})
}

async fn run(env: &Env, t: TaskRequest) -> Resource {
    let exec = env.server.executor(Duration::from_millis(20)).await;
    match exec.run(t, &CancellationToken::new(), |_| {}).await.unwrap() {
        Outcome::Finished(r) => r,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn passes_the_conformance_suite_and_returns_the_results_table() {
    let env = env().await;
    let r = conformance::async_agent(&env.server, task("SELECT 1", custom(), vec![]), Duration::from_secs(10)).await;
    assert_eq!(r.phase, Phase::Succeeded);
    let Value::StructuredDataset { uri, .. } = &r.output_values().unwrap()["results"] else { panic!() };
    assert!(uri.starts_with("bq://flyte-test:_"), "{uri}");
    assert!(r.log_links[0].uri.contains("&j=bq:US:flyte_"), "{}", r.log_links[0].uri);
}

#[tokio::test]
async fn query_job_config_keys_are_honoured() {
    let env = env().await;
    let mut c = custom();
    c.as_object_mut().unwrap().extend(
        json!({
            "destinationTable": {"projectId": "p", "datasetId": "d", "tableId": "t"},
            "writeDisposition": "WRITE_TRUNCATE", "createDisposition": "CREATE_IF_NEEDED",
            "priority": "BATCH", "maximumBytesBilled": "1000000", "useLegacySql": false,
            "defaultDataset": {"projectId": "p", "datasetId": "ds"}, "allowLargeResults": true,
            "labels": {"team": "data"}, "jobTimeoutMs": "60000"
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    let r = run(&env, task("SELECT * FROM t", c, vec![])).await;
    assert_eq!(
        r.output_values().unwrap()["results"],
        Value::StructuredDataset { uri: "bq://p:d.t".into(), format: String::new() }
    );
    let jobs = env.bq.jobs();
    let conf = &jobs[0].configuration;
    let q = &conf["query"];
    assert_eq!(q["writeDisposition"], "WRITE_TRUNCATE");
    assert_eq!(q["createDisposition"], "CREATE_IF_NEEDED");
    assert_eq!(q["priority"], "BATCH");
    assert_eq!(q["maximumBytesBilled"], "1000000");
    assert_eq!(q["defaultDataset"]["datasetId"], "ds");
    assert_eq!(q["allowLargeResults"], true);
    assert_eq!(conf["labels"]["team"], "data");
    assert_eq!(conf["jobTimeoutMs"], "60000");
    assert!(q.get("ProjectID").is_none() && q.get("Domain").is_none());
    assert_eq!(jobs[0].location, "US");
}

#[tokio::test]
async fn inputs_become_named_parameters_and_standard_sql_is_the_default() {
    let env = env().await;
    let t = task(
        "SELECT @version, @name, @ids",
        custom(),
        vec![("version", Value::Integer(3)), ("name", "x".into()), ("ids", vec![1_i64, 2].into())],
    );
    assert_eq!(run(&env, t).await.phase, Phase::Succeeded);
    let q = env.bq.jobs()[0].configuration["query"].clone();
    assert_eq!(q["parameterMode"], "NAMED");
    assert_eq!(q["useLegacySql"], false);
    let params = q["queryParameters"].as_array().unwrap();
    assert_eq!(params.len(), 3);
    let ids = params.iter().find(|p| p["name"] == "ids").unwrap();
    assert_eq!(ids["parameterType"], json!({"type": "ARRAY", "arrayType": {"type": "INT64"}}));
    // A query that uses an undeclared parameter fails as a job, as in BigQuery.
    let r = run(&env, task("SELECT @missing", custom(), vec![])).await;
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.contains("Query parameter 'missing' not found"), "{}", r.message);
}

#[tokio::test]
async fn repeated_creates_for_one_attempt_make_one_job() {
    let env = env().await;
    let mut client = env.server.async_client().await;
    let t = attempt(task("SELECT 1", custom(), vec![]), "exec-1", 0);
    let m1 = client.create_task(create_req(&t)).await.unwrap().into_inner().resource_meta;
    let m2 = client.create_task(create_req(&t)).await.unwrap().into_inner().resource_meta;
    assert_eq!(m1, m2);
    assert_eq!(env.bq.jobs().len(), 1);
    assert_eq!(env.bq.insert_requests(), 2);
    // The next retry attempt is a new job.
    let retry = attempt(task("SELECT 1", custom(), vec![]), "exec-1", 1);
    let m3 = client.create_task(create_req(&retry)).await.unwrap().into_inner().resource_meta;
    assert_ne!(m1, m3);
    assert_eq!(env.bq.jobs().len(), 2);
    // Metas have the Python agent's keys.
    let meta: serde_json::Value = serde_json::from_slice(&m1).unwrap();
    assert_eq!(meta.as_object().unwrap().keys().collect::<Vec<_>>(), ["job_id", "location", "project"]);
}

#[tokio::test]
async fn a_lost_insert_response_does_not_create_a_second_job() {
    let env = env().await;
    env.bq.faults().push(FaultRule::new(FaultAction::DropResponse, 1).method("POST").path("/jobs"));
    let t = attempt(task("SELECT 1", custom(), vec![]), "exec-lost", 0);
    let meta = env.server.async_client().await.create_task(create_req(&t)).await.unwrap().into_inner().resource_meta;
    assert_eq!(env.bq.jobs().len(), 1, "the retried insert adopted the job");
    assert_eq!(env.bq.insert_requests(), 2);
    assert!(!meta.is_empty());
}

#[tokio::test]
async fn job_failures_map_to_failed_retryable_and_aborted() {
    let env = env().await;
    env.bq.add_rule(OutcomeRule {
        query_contains: "SYNTAX".into(),
        error: Some(JobError {
            reason: "invalidQuery".into(),
            message: "Syntax error: Unexpected end".into(),
            location: "query".into(),
        }),
        pending_ms: None,
        running_ms: None,
    });
    env.bq.add_rule(OutcomeRule {
        query_contains: "FLAKY".into(),
        error: Some(JobError {
            reason: "backendError".into(),
            message: "Backend error".into(),
            location: String::new(),
        }),
        pending_ms: None,
        running_ms: None,
    });
    let r = run(&env, task("SELECT SYNTAX", custom(), vec![])).await;
    assert_eq!(
        (r.phase, r.message.as_str()),
        (Phase::Failed, "BigQuery job failed: invalidQuery: Syntax error: Unexpected end")
    );
    assert_eq!(run(&env, task("SELECT FLAKY", custom(), vec![])).await.phase, Phase::RetryableFailed);

    // Cancel a long job: delete, then it reports ABORTED; deleting again is fine.
    env.bq.add_rule(OutcomeRule {
        query_contains: "LONG".into(),
        error: None,
        pending_ms: Some(0),
        running_ms: Some(600_000),
    });
    let mut client = env.server.async_client().await;
    let meta = client
        .create_task(create_req(&task("SELECT LONG", custom(), vec![])))
        .await
        .unwrap()
        .into_inner()
        .resource_meta;
    assert_eq!(get(&env, &meta).await.phase, Phase::Running);
    let del = || admin::DeleteTaskRequest {
        resource_meta: meta.clone(),
        task_category: Some(admin::TaskCategory { name: TASK_TYPE.into(), version: 0 }),
        ..Default::default()
    };
    client.delete_task(del()).await.unwrap();
    client.delete_task(del()).await.unwrap();
    assert_eq!(get(&env, &meta).await.phase, Phase::Aborted);
    // Unknown jobs: deleting succeeds, getting fails the task (not the RPC).
    let ghost = br#"{"job_id": "ghost", "project": "flyte-test", "location": "US"}"#;
    let del_ghost = admin::DeleteTaskRequest {
        resource_meta: ghost.to_vec(),
        task_category: Some(admin::TaskCategory { name: TASK_TYPE.into(), version: 0 }),
        ..Default::default()
    };
    client.delete_task(del_ghost).await.unwrap();
    assert_eq!(get(&env, ghost).await.phase, Phase::Failed);
}

#[tokio::test]
async fn unknown_states_are_waited_on_not_errors() {
    let env = env_with(Timing { pending: Duration::ZERO, running: Duration::from_secs(600) }, |_| {}).await;
    let meta = env
        .server
        .async_client()
        .await
        .create_task(create_req(&task("SELECT 1", custom(), vec![])))
        .await
        .unwrap()
        .into_inner()
        .resource_meta;
    let job_id = serde_json::from_slice::<serde_json::Value>(&meta).unwrap()["job_id"].as_str().unwrap().to_owned();
    assert!(env.bq.force("flyte-test", &job_id, ForcedState { state: "SUSPENDED".into(), error: None }));
    let r = get(&env, &meta).await;
    assert_eq!(r.phase, Phase::Running);
    assert!(r.message.contains("SUSPENDED"));
}

#[tokio::test]
async fn transient_api_errors_are_retried_and_never_fail_the_task() {
    let env = env().await;
    let t = task("SELECT 1", custom(), vec![]);
    let meta = env.server.async_client().await.create_task(create_req(&t)).await.unwrap().into_inner().resource_meta;
    tokio::time::sleep(Duration::from_millis(150)).await;
    for action in [
        FaultAction::Status { code: 503, retry_after_secs: None },
        FaultAction::Status { code: 500, retry_after_secs: None },
        FaultAction::Status { code: 429, retry_after_secs: Some(1) },
        FaultAction::Drop,
        FaultAction::Malformed,
    ] {
        let before = env.bq.faults().injected();
        env.bq.faults().push(FaultRule::new(action.clone(), 2).method("GET"));
        let r = get(&env, &meta).await;
        assert_eq!(r.phase, Phase::Succeeded, "{action:?}: {}", r.message);
        assert_eq!(env.bq.faults().injected(), before + 2, "{action:?} was injected twice and retried past");
    }
    // A BigQuery that stays down past the call's budget: still not a failure.
    env.bq.faults().push(FaultRule {
        times: None,
        ..FaultRule::new(FaultAction::Status { code: 503, retry_after_secs: None }, 0)
    });
    let mut req = tonic_request(get_req(&meta));
    req.set_timeout(Duration::from_millis(1500));
    let r = env.server.async_client().await.get_task(req).await.unwrap().into_inner();
    let r = Resource::from_proto(&r.resource.unwrap());
    assert_eq!(r.phase, Phase::Running);
    assert!(r.message.contains("HTTP 503"), "{}", r.message);
    env.bq.faults().clear();
}

fn tonic_request<T>(msg: T) -> agent_core::testing::Request<T> {
    agent_core::testing::Request::new(msg)
}

#[tokio::test]
async fn many_tasks_under_faults_all_succeed_with_one_job_each() {
    let env = env().await;
    for action in [
        FaultAction::Status { code: 503, retry_after_secs: None },
        FaultAction::Status { code: 429, retry_after_secs: Some(0) },
        FaultAction::Drop,
        FaultAction::DropResponse,
    ] {
        env.bq.faults().push(FaultRule { probability: Some(0.08), times: None, ..FaultRule::new(action, 0) });
    }
    let mut handles = Vec::new();
    for i in 0..20 {
        let exec = env.server.executor(Duration::from_millis(25)).await;
        let mut client = env.server.async_client().await;
        handles.push(tokio::spawn(async move {
            let t = attempt(task("SELECT 1", custom(), vec![]), &format!("exec-{i}"), 0);
            // Propeller may create twice; the executor then runs the task to the end.
            let _ = client.create_task(create_req(&t)).await;
            exec.run(t, &CancellationToken::new(), |_| {}).await
        }));
    }
    let mut failed = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok(Outcome::Finished(r)) if r.phase == Phase::Succeeded => {}
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(failed.is_empty(), "wrongly failed tasks: {failed:#?}");
    assert_eq!(env.bq.jobs().len(), 20, "one BigQuery job per task");
    assert!(env.bq.faults().injected() > 0, "faults were injected");
}

#[tokio::test]
async fn malformed_tasks_are_invalid_arguments_naming_the_problem() {
    let env = env().await;
    let mut client = env.server.async_client().await;
    let no_project = task("SELECT 1", json!({"Location": "US"}), vec![]);
    let mut no_sql = task("SELECT 1", custom(), vec![]);
    no_sql.template.target = None;
    let mut bad_key = custom();
    bad_key["writeDisposition"] = json!(["not", "a", "string"]);
    let map_input = task("SELECT @m", custom(), vec![("m", Value::Map(Default::default()))]);
    for (t, needle) in [
        (no_project, "ProjectID"),
        (no_sql, "template.sql"),
        (task("SELECT 1", bad_key, vec![]), "template.custom"),
        (map_input, "inputs.m"),
    ] {
        let err = client.create_task(create_req(&t)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{needle}: {err:?}");
        assert!(err.message().contains(needle), "{needle}: {}", err.message());
    }
    assert!(env.bq.jobs().is_empty());
}

#[tokio::test]
async fn sends_flytekits_user_agent() {
    let env = env().await;
    let meta = env
        .server
        .async_client()
        .await
        .create_task(create_req(&task("SELECT 1", custom(), vec![])))
        .await
        .unwrap()
        .into_inner()
        .resource_meta;
    let id = serde_json::from_slice::<serde_json::Value>(&meta).unwrap()["job_id"].as_str().unwrap().to_owned();
    let ua = env.bq.user_agent("flyte-test", &id).unwrap();
    assert!(ua.contains("Flytekit/1.16.31 (GPN:Union;dev)"), "{ua}");
}

/// A flyte-sdk task (Flyte 2) is sent as flyte-sdk's connector sends it: its user agent,
/// datetimes as DATETIME, and a meta with flyte-sdk's keys (`user_agent` included).
#[tokio::test]
async fn flyte2_tasks_send_flyte_sdks_user_agent_and_datetimes() {
    use agent_core::prost_types::Timestamp;
    use agent_core::testing::flyte2;
    let env = env().await;
    let at = Value::Datetime(Timestamp { seconds: 1_704_164_645, nanos: 0 });
    let t = task("SELECT @at", custom(), vec![("at", at)]);
    let mut client = env.server.connector_client().await;
    let meta = client.create_task(flyte2::create_request(&t, None)).await.unwrap().into_inner().resource_meta;
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    let keys: std::collections::BTreeSet<_> = meta.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["job_id", "location", "project", "user_agent"].into(), "flyte-sdk's BigQueryMetadata keys");
    assert_eq!(meta["user_agent"], "Flyte/1.16.31 (GPN:Union;dev)");
    let id = meta["job_id"].as_str().unwrap();
    assert!(env.bq.user_agent("flyte-test", id).unwrap().starts_with("Flyte/1.16.31 (GPN:Union;dev)"));
    let job = env.bq.jobs().into_iter().find(|j| j.job_id == id).unwrap();
    let p = &job.configuration["query"]["queryParameters"][0];
    assert_eq!(
        (&p["parameterType"]["type"], &p["parameterValue"]["value"]),
        (&json!("DATETIME"), &json!("2024-01-02T03:04:05.000000"))
    );
}

/// A service-account key a flyte-sdk task brings is the job's identity: the agent makes its
/// own token exchange at the key's token_uri, only when that endpoint is one it trusts, and
/// a task that declares a key it did not bring is refused.
#[tokio::test]
async fn flyte2_jobs_run_as_the_service_account_the_request_brings() {
    use agent_core::testing::flyte2;
    const KEY: &str = include_str!("../../agent-snowflake/tests/fixtures/rsa_key.p8");
    let key_file = |token_uri: &str| {
        json!({"type": "service_account", "client_email": "tenant@p.iam.gserviceaccount.com", "private_key_id": "k1",
               "private_key": KEY, "token_uri": token_uri})
        .to_string()
    };
    let bq = BigQuery::new(Timing { pending: Duration::from_millis(30), running: Duration::from_millis(60) })
        .with_service_account(&key_file("unused"))
        .unwrap();
    let emulator = bq.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut cfg = Config { emulator_host: Some(emulator.host()), ..Config::default() };
    cfg.rest.attempt_timeout = Duration::from_secs(2);
    let agent = BigQueryAgent::new(&cfg).await.unwrap();
    let server = TestServer::start(Registry::builder().async_agent(agent).unwrap()).await;
    let mut client = server.connector_client().await;
    // The key is declared as flyte-sdk declares it, by the name of the secret it is in.
    let mut declared = custom();
    declared["secrets"] = json!({"google_application_credentials": "tenant-sa-key"});
    let t = task("SELECT 1", declared, vec![]);

    let own = key_file(&format!("http://{}/token", emulator.host()));
    let conn = flyte2::connection("bigquery_query_job_task", &[("google_application_credentials", &own)]);
    let meta = client.create_task(flyte2::create_request(&t, Some(conn))).await.unwrap().into_inner().resource_meta;
    let id = serde_json::from_slice::<serde_json::Value>(&meta).unwrap()["job_id"].as_str().unwrap().to_owned();
    let job = bq.jobs().into_iter().find(|j| j.job_id == id).unwrap();
    assert_eq!(job.service_account.as_deref(), Some("tenant@p.iam.gserviceaccount.com"));
    assert_eq!(bq.token_requests(), 1);

    // A key file pointing its assertion elsewhere is refused before anything is signed or sent.
    let elsewhere = key_file("https://tokens.example.net/token");
    let conn = flyte2::connection("bigquery_query_job_task", &[("google_application_credentials", &elsewhere)]);
    let err = client.create_task(flyte2::create_request(&t, Some(conn))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Not a key file: refused without quoting it, also when it is the key file encoded twice
    // (one JSON string holding it), which serde's own message would quote.
    for bad in ["not json at all".to_owned(), serde_json::to_string(&own).unwrap()] {
        let conn = flyte2::connection("bigquery_query_job_task", &[("google_application_credentials", &bad)]);
        let err = client.create_task(flyte2::create_request(&t, Some(conn))).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let m = err.message();
        assert!(!m.contains("not json") && !m.contains("PRIVATE KEY") && !m.contains("client_email\\"), "{m}");
    }
    // Declared and not brought: refused, and the job never runs as the agent.
    let err = client.create_task(flyte2::create_request(&t, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!((bq.insert_requests(), bq.token_requests()), (1, 1));
}

#[tokio::test]
async fn hostile_metas_templates_and_inputs_are_handled() {
    let env = env().await;
    conformance::hostile_inputs(&env.server, task("SELECT @x", custom(), vec![]), 48).await;
}

#[tokio::test]
async fn hostile_ids_in_metas_and_templates_never_reach_bigquery() {
    // Red team: before, a meta's job id went into the URL path as it was (`/`, `%2F`, empty:
    // other endpoints, or INTERNAL), and a template's Domain with a line break into a header.
    let env = env().await;
    // Count every request the emulator receives: a zero-delay fault that never retires.
    env.bq.faults().push(FaultRule { times: None, ..FaultRule::new(FaultAction::Delay { ms: 0 }, 0) });
    let mut client = env.server.async_client().await;
    let metas = [
        ("job_id", json!({"job_id": "a/b", "project": "flyte-test", "location": "US"})),
        ("job_id", json!({"job_id": "", "project": "flyte-test", "location": "US"})),
        ("job_id", json!({"job_id": "j%2F..%2F..", "project": "flyte-test", "location": "US"})),
        ("job_id", json!({"job_id": "../../projects/other/jobs/x", "project": "flyte-test"})),
        ("job_id", json!({"job_id": "j\r\nX-Injected: 1", "project": "flyte-test"})),
        ("project", json!({"job_id": "flyte_1", "project": "other/jobs/x", "location": "US"})),
        ("project", json!({"job_id": "flyte_1", "project": "flyte-test%2F..", "location": "US"})),
        ("project", json!({"job_id": "flyte_1", "project": "", "location": "US"})),
        ("location", json!({"job_id": "flyte_1", "project": "flyte-test", "location": "US&x=1"})),
        ("location", json!({"job_id": "flyte_1", "project": "flyte-test", "location": "US\n"})),
    ];
    for (key, meta) in &metas {
        let bytes = meta.to_string().into_bytes();
        let err = client.get_task(get_req(&bytes)).await.unwrap_err();
        let del = admin::DeleteTaskRequest {
            resource_meta: bytes,
            task_category: Some(admin::TaskCategory { name: TASK_TYPE.into(), version: 0 }),
            ..Default::default()
        };
        let del_err = client.delete_task(del).await.unwrap_err();
        for e in [err, del_err] {
            assert_eq!(e.code(), Code::InvalidArgument, "{meta}: {}", e.message());
            assert!(e.message().contains(&format!("resource meta: {key}")), "{}", e.message());
            assert!(
                !e.message().chars().any(char::is_control) && !e.message().contains("X-Injected"),
                "{}",
                e.message()
            );
        }
    }
    let templates = [
        ("ProjectID", json!({"ProjectID": "p\r\nX-Injected: 1", "Location": "US"})),
        ("ProjectID", json!({"ProjectID": "other/jobs", "Location": "US"})),
        ("ProjectID", json!({"ProjectID": "", "Location": "US"})),
        ("Location", json!({"ProjectID": "flyte-test", "Location": "US\r\nX-Injected: 1"})),
        ("Location", json!({"ProjectID": "flyte-test", "Location": "us/central1"})),
        ("Domain", json!({"ProjectID": "flyte-test", "Location": "US", "Domain": "dev\r\nX-Injected: 1"})),
        ("Domain", json!({"ProjectID": "flyte-test", "Location": "US", "Domain": "dev\n"})),
        ("Domain", json!({"ProjectID": "flyte-test", "Location": "US", "Domain": "dev\0"})),
        ("Domain", json!({"ProjectID": "flyte-test", "Location": "US", "Domain": "dev\u{7f}"})),
    ];
    for (key, custom) in templates {
        let err = client.create_task(create_req(&task("SELECT 1", custom.clone(), vec![]))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{custom}: {}", err.message());
        assert!(err.message().contains(&format!("template.custom.{key}")), "{}", err.message());
        assert!(
            !err.message().chars().any(char::is_control) && !err.message().contains("X-Injected"),
            "{}",
            err.message()
        );
    }
    // The flytekit version goes into the user agent too.
    let mut t = task("SELECT 1", custom(), vec![]);
    t.template.metadata.as_mut().unwrap().runtime.as_mut().unwrap().version = "1.16\r\nX-Injected: 1".into();
    let err = client.create_task(create_req(&t)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("template.metadata.runtime.version"), "{}", err.message());
    assert_eq!(env.bq.faults().injected(), 0, "the emulator saw no request");
    assert_eq!(env.bq.insert_requests(), 0);
    // The legacy domain-scoped project form and ids BigQuery itself issues still pass.
    env.bq.faults().clear();
    let meta = json!({"job_id": "bquxjob_1a2b_3c", "project": "example.com:flyte-test", "location": "us-central1"});
    let r = get(&env, meta.to_string().as_bytes()).await;
    assert_eq!(r.phase, Phase::Failed, "an unknown job, asked about: {}", r.message);
}

/// The red-team case: BigQuery's host comes from configuration only. Hosts in disguise in
/// every value a template or meta carries (project, location, domain, job id) may be
/// refused or sent to the emulator as data, but never reach another host.
#[tokio::test]
async fn no_credential_leaves_for_a_host_a_task_or_meta_names() {
    use agent_core::testing::hostile::{Trap, assert_contained, hostile_hosts};
    let trap = Trap::start().await;
    let env = env().await;
    for value in hostile_hosts(trap.addr()) {
        for key in ["ProjectID", "Location", "Domain"] {
            let mut custom = json!({"ProjectID": "flyte-project", "Location": "US", "Domain": "flyte.org"});
            custom[key] = json!(value);
            let t = task("select 1", custom, vec![]);
            assert_contained(&env.server, TASK_TYPE, Some(&t), &[], &format!("{key} {value:?}")).await;
        }
        let metas = ["job_id", "project", "location"].map(|key| {
            let mut meta = json!({"job_id": "j1", "project": "flyte-project", "location": "US"});
            meta[key] = json!(value);
            meta.to_string().into_bytes()
        });
        assert_contained(&env.server, TASK_TYPE, None, &metas, &format!("meta {value:?}")).await;
    }
    assert_eq!(trap.reached(), 0, "a hostile value reached the attacker's host");
}
