//! The Snowflake agent through real gRPC against the Snowflake SQL API emulator, which
//! verifies the key-pair JWT with the registered public key.

use std::collections::HashMap;
use std::time::Duration;

use agent_core::AgentService;
use agent_core::http::RestSettings;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::{admin, core};
use agent_core::prelude::*;
use agent_core::testing::{Code, TestServer, conformance, create_request as create_req, secrets, test_config};
use agent_snowflake::{Config, SnowflakeAgent, TASK_TYPE};
use emulators::snowflake::{Settings, Snowflake, StatementRule};
use emulators::{FaultAction, FaultRule, Running};

const KEY: &str = include_str!("fixtures/rsa_key.p8");
const ENCRYPTED: &str = include_str!("fixtures/rsa_key_encrypted.p8");
const PUBLIC: &str = include_str!("fixtures/rsa_key.pub");

struct Env {
    sf: Snowflake,
    _emulator: Running,
    server: TestServer,
}

async fn env_with(secret_vars: &[(&str, &str)]) -> Env {
    let sf = Snowflake::new(Settings {
        users: HashMap::from([("XY12345-US-EAST-1.FLYTE".to_owned(), PUBLIC.to_owned())]),
        running: Duration::from_millis(80),
    })
    .unwrap();
    let emulator = sf.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let rest = RestSettings { attempt_timeout: Duration::from_secs(2), ..RestSettings::default() };
    let config = Config { base_url: Some(emulator.url()), rest, ..Config::default() };
    let agent = SnowflakeAgent::new(config).unwrap();
    let service = AgentService::new(Registry::builder().async_agent(agent).unwrap(), secrets(secret_vars));
    let server = TestServer::start_with(service, test_config()).await;
    Env { sf, _emulator: emulator, server }
}

async fn env() -> Env {
    env_with(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", KEY)]).await
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

fn task(sql: &str, inputs: Vec<(&str, Value)>, output: bool) -> TaskRequest {
    let config = [
        ("user", "flyte"),
        ("account", "xy12345-us-east-1"),
        ("database", "DB"),
        ("schema", "PUBLIC"),
        ("warehouse", "WH"),
    ];
    TaskRequest {
        template: core::TaskTemplate {
            r#type: TASK_TYPE.into(),
            config: config.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            target: Some(core::task_template::Target::Sql(core::Sql { statement: sql.into(), dialect: 1 })),
            interface: output.then(results_interface),
            ..Default::default()
        },
        inputs: values_to_literal_map(inputs),
        ..Default::default()
    }
}

async fn get(env: &Env, meta: &[u8]) -> Resource {
    env.server.get_resource(TASK_TYPE, meta).await
}

#[tokio::test]
async fn passes_conformance_with_bindings_and_results() {
    let env = env().await;
    let t = task(
        "select * from t where id = %(id)s and name = %(name)s",
        vec![("id", Value::Integer(7)), ("name", "x".into())],
        true,
    );
    let r = conformance::async_agent(&env.server, t, Duration::from_secs(10)).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    let Value::StructuredDataset { uri, .. } = &r.output_values().unwrap()["results"] else { panic!() };
    assert!(uri.starts_with("snowflake://flyte:xy12345-us-east-1/WH/DB/PUBLIC/"), "{uri}");
    let s = &env.sf.statements()[0];
    assert_eq!(s.request["statement"], "select * from t where id = ? and name = ?");
    assert_eq!(s.request["bindings"]["1"], serde_json::json!({"type": "FIXED", "value": "7"}));
    assert_eq!(s.request["warehouse"], "WH");
}

#[tokio::test]
async fn an_encrypted_key_with_its_passphrase_works() {
    let env = env_with(&[
        ("_FSEC_SNOWFLAKE_PRIVATE_KEY", ENCRYPTED),
        ("_FSEC_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", "flyte-test-passphrase"),
    ])
    .await;
    let meta = env
        .server
        .async_client()
        .await
        .create_task(create_req(&task("select 1", vec![], false)))
        .await
        .unwrap()
        .into_inner()
        .resource_meta;
    assert!(!meta.is_empty());
}

#[tokio::test]
async fn missing_or_wrong_keys_are_clear_errors_without_key_material() {
    let env = env_with(&[]).await;
    let err =
        env.server.async_client().await.create_task(create_req(&task("select 1", vec![], false))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("_FSEC_SNOWFLAKE_PRIVATE_KEY"), "{}", err.message());

    let env =
        env_with(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")])
            .await;
    let err =
        env.server.async_client().await.create_task(create_req(&task("select 1", vec![], false))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(!err.message().contains("AAAA"));

    // A valid key the user has not registered: Snowflake (the emulator) rejects the JWT.
    let other = env_with(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", KEY)]).await;
    let mut t = task("select 1", vec![], false);
    t.template.config.insert("user".into(), "someone_else".into());
    let err = other.server.async_client().await.create_task(create_req(&t)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("RSA_PUBLIC_KEY"), "{}", err.message());
}

#[tokio::test]
async fn repeated_creates_for_one_attempt_make_one_statement() {
    let env = env().await;
    let mut t = task("select 1", vec![], false);
    t.metadata = Some(admin::TaskExecutionMetadata {
        task_execution_id: Some(core::TaskExecutionIdentifier {
            node_execution_id: Some(core::NodeExecutionIdentifier {
                node_id: "n0".into(),
                execution_id: Some(core::WorkflowExecutionIdentifier { name: "exec-1".into(), ..Default::default() }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut client = env.server.async_client().await;
    let m1 = client.create_task(create_req(&t)).await.unwrap().into_inner().resource_meta;
    let m2 = client.create_task(create_req(&t)).await.unwrap().into_inner().resource_meta;
    assert_eq!(m1, m2);
    assert_eq!(env.sf.statements().len(), 1);
    assert_eq!(env.sf.submit_requests(), 2);
    let keys: Vec<String> =
        serde_json::from_slice::<serde_json::Value>(&m1).unwrap().as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["account", "database", "has_output", "query_id", "schema", "user", "warehouse"]);
}

#[tokio::test]
async fn failures_cancels_and_faults() {
    let env = env().await;
    env.sf.add_rule(StatementRule {
        statement_contains: "missing_table".into(),
        error: Some((
            "002003".into(),
            "02000".into(),
            "SQL compilation error: Object 'MISSING_TABLE' does not exist".into(),
        )),
        running_ms: None,
    });
    env.sf.add_rule(StatementRule { statement_contains: "slow".into(), error: None, running_ms: Some(600_000) });
    let mut client = env.server.async_client().await;
    let failing = client
        .create_task(create_req(&task("select * from missing_table", vec![], false)))
        .await
        .unwrap()
        .into_inner()
        .resource_meta;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let r = get(&env, &failing).await;
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.contains("MISSING_TABLE") && r.message.contains("02000"), "{}", r.message);

    let slow =
        client.create_task(create_req(&task("select slow", vec![], false))).await.unwrap().into_inner().resource_meta;
    assert_eq!(get(&env, &slow).await.phase, Phase::Running);
    let del = |m: &[u8]| admin::DeleteTaskRequest {
        resource_meta: m.to_vec(),
        task_category: Some(admin::TaskCategory { name: TASK_TYPE.into(), version: 0 }),
        ..Default::default()
    };
    client.delete_task(del(&slow)).await.unwrap();
    client.delete_task(del(&slow)).await.unwrap();
    assert_eq!(get(&env, &slow).await.phase, Phase::Aborted);
    let unknown = br#"{"user": "flyte", "account": "xy12345-us-east-1", "query_id": "nope", "has_output": false}"#;
    client.delete_task(del(unknown)).await.unwrap();
    assert_eq!(get(&env, unknown).await.phase, Phase::Failed);
    // A meta is input: an id that would change the URL never leaves the agent.
    let traversal =
        br#"{"user": "flyte", "account": "xy12345-us-east-1", "query_id": "../../session", "has_output": false}"#;
    let err = client.delete_task(del(traversal)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("query_id"), "{}", err.message());

    let ok = client.create_task(create_req(&task("select 1", vec![], false))).await.unwrap().into_inner().resource_meta;
    tokio::time::sleep(Duration::from_millis(120)).await;
    for action in [
        FaultAction::Status { code: 429, retry_after_secs: Some(1) },
        FaultAction::Status { code: 503, retry_after_secs: None },
        FaultAction::Drop,
    ] {
        let before = env.sf.faults().injected();
        env.sf.faults().push(FaultRule::new(action.clone(), 2).method("GET"));
        assert_eq!(get(&env, &ok).await.phase, Phase::Succeeded, "{action:?}");
        assert_eq!(env.sf.faults().injected(), before + 2);
    }
}

#[tokio::test]
async fn bad_sql_placeholders_are_invalid_arguments() {
    let env = env().await;
    let mut client = env.server.async_client().await;
    let err = client
        .create_task(create_req(&task("select %(nope)s", vec![("x", Value::Integer(1))], false)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("%(nope)s"));
    let mut no_account = task("select 1", vec![], false);
    no_account.template.config.remove("account");
    let err = client.create_task(create_req(&no_account)).await.unwrap_err();
    assert!(err.message().contains("template.config.account"), "{}", err.message());
    assert!(env.sf.statements().is_empty());
}

#[tokio::test]
async fn hostile_metas_templates_and_inputs_are_handled() {
    let env = env().await;
    let t = task("select * from t where id = %(x)s", vec![("x", Value::Integer(7))], true);
    conformance::hostile_inputs(&env.server, t, 48).await;
}

/// The red-team case: with no base URL (as in production), a task or a forged meta naming
/// a host in disguise as its account must not make the agent sign a token for it or send
/// anything there; and an account outside `allowed_accounts` is refused too.
#[tokio::test]
async fn no_token_leaves_for_a_host_a_task_or_meta_names() {
    use agent_core::testing::hostile::{Trap, assert_refused, hostile_hosts};
    let trap = Trap::start().await;
    let agent = SnowflakeAgent::new(Config { base_url: None, ..Config::default() }).unwrap();
    let service = AgentService::new(
        Registry::builder().async_agent(agent).unwrap(),
        secrets(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", KEY)]),
    );
    let server = TestServer::start_with(service, test_config()).await;
    let mut values = hostile_hosts(trap.addr());
    values.extend(["a b", "a:99999", "acme.snowflakecomputing.com"].map(String::from));
    for value in values {
        let mut t = task("select 1", vec![], false);
        t.template.config.insert("account".into(), value.clone());
        let meta = serde_json::json!({"user": "flyte", "account": value, "query_id": "01b2"}).to_string();
        assert_refused(&server, TASK_TYPE, Some(&t), &[meta.into_bytes()], &format!("account {value:?}")).await;
    }
    // Names that would move the fields of the results URI, or grow the token cache.
    for (key, value) in
        [("user", "flyte:evil/x".to_owned()), ("user", "u".repeat(1 << 20)), ("warehouse", "wh/../x".into())]
    {
        let mut t = task("select 1", vec![], false);
        t.template.config.insert(key.into(), value.clone());
        let mut meta = serde_json::json!({"user": "flyte", "account": "xy12345-us-east-1", "query_id": "01b2"});
        meta[key] = serde_json::json!(value);
        assert_refused(&server, TASK_TYPE, Some(&t), &[meta.to_string().into_bytes()], key).await;
    }
    assert_eq!(trap.reached(), 0, "a hostile account reached the attacker's host");

    let agent = SnowflakeAgent::new(Config {
        base_url: None,
        allowed_accounts: vec!["myorg-prod".into()],
        ..Config::default()
    })
    .unwrap();
    let service = AgentService::new(Registry::builder().async_agent(agent).unwrap(), secrets(&[]));
    let server = TestServer::start_with(service, test_config()).await;
    let meta = serde_json::json!({"user": "flyte", "account": "myorg-other", "query_id": "01b2"}).to_string();
    let status = server
        .async_client()
        .await
        .get_task(agent_core::testing::get_request(TASK_TYPE, meta.as_bytes()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("snowflake.allowed_accounts"), "{status:?}");
}

/// A flyte-sdk task (Flyte 2): settings from `custom` (schema PUBLIC by default), the role of
/// its connection_kwargs, a batch row per element, signed with the key its request brings,
/// and refused when it declares a key or passphrase its request lacks.
#[tokio::test]
async fn flyte2_tasks_take_custom_settings_batches_and_the_requests_key() {
    use agent_core::json::json_to_struct;
    use agent_core::testing::flyte2;
    // The pod's key is not the user's: only the request's key can sign.
    let env = env_with(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", ENCRYPTED)]).await;
    let mut t =
        task("insert into t (id) values (%(id)s)", vec![("id", Value::Collection(vec![1.into(), 2.into()]))], false);
    t.template.config.clear();
    let custom = serde_json::json!({
        "account": "xy12345-us-east-1", "user": "flyte", "database": "DB", "warehouse": "WH", "batch": true,
        "connection_kwargs": {"role": "ANALYST"},
        "secrets": {"snowflake_private_key": "SNOWFLAKE_PRIVATE_KEY"},
    });
    t.template.custom = Some(json_to_struct(custom.as_object().unwrap()));
    let mut client = env.server.connector_client().await;
    let conn = flyte2::connection("snowflake", &[("snowflake_private_key", KEY)]);
    let meta = client.create_task(flyte2::create_request(&t, Some(conn))).await.unwrap().into_inner().resource_meta;
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(
        (meta["schema"].as_str(), meta["connection_kwargs"]["role"].as_str()),
        (Some("PUBLIC"), Some("ANALYST"))
    );
    let s = env.sf.statements().pop().unwrap();
    assert_eq!(s.request["statement"], "insert into t (id) VALUES (?), (?)");
    assert_eq!((s.request["schema"].as_str(), s.request["role"].as_str()), (Some("PUBLIC"), Some("ANALYST")));
    assert_eq!(s.request["bindings"]["2"], serde_json::json!({"type": "FIXED", "value": "2"}));

    // Declared, not brought: refused before anything is sent.
    let before = env.sf.submit_requests();
    let err = client.create_task(flyte2::create_request(&t, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("'snowflake_private_key'"), "{}", err.message());
    // A connection setting the SQL API cannot honour is named.
    let mut odd = custom.clone();
    odd["connection_kwargs"] = serde_json::json!({"authenticator": "externalbrowser"});
    t.template.custom = Some(json_to_struct(odd.as_object().unwrap()));
    let conn = flyte2::connection("snowflake", &[("snowflake_private_key", KEY)]);
    let err = client.create_task(flyte2::create_request(&t, Some(conn))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("connection_kwargs.authenticator"), "{}", err.message());
    // A declared passphrase must come with the request too.
    let mut both = custom.clone();
    both["secrets"]["snowflake_private_key_passphrase"] = serde_json::json!("SNOWFLAKE_PASSPHRASE");
    t.template.custom = Some(json_to_struct(both.as_object().unwrap()));
    let conn = flyte2::connection("snowflake", &[("snowflake_private_key", KEY)]);
    let err = client.create_task(flyte2::create_request(&t, Some(conn))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("'snowflake_private_key_passphrase'"), "{}", err.message());
    // A task that brings no key of its own cannot choose the role the agent's key runs with.
    let mut undeclared = custom.clone();
    undeclared.as_object_mut().unwrap().remove("secrets");
    t.template.custom = Some(json_to_struct(undeclared.as_object().unwrap()));
    let err = client.create_task(flyte2::create_request(&t, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("connection_kwargs.role"), "{}", err.message());
    assert_eq!(env.sf.submit_requests(), before);
}

/// A JWT signed with an encrypted key is cached under the key and its passphrase: a caller
/// with the same key but no (or another) passphrase gets no token, and a passphrase a
/// request brings never opens the agent's key.
#[tokio::test]
async fn an_encrypted_keys_token_is_only_for_callers_who_can_open_it() {
    use agent_core::testing::flyte2;
    let env = env_with(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", ENCRYPTED)]).await;
    let mut t = task("select 1", vec![], false);
    t.template.config.clear();
    let custom =
        serde_json::json!({"account": "xy12345-us-east-1", "user": "flyte", "database": "DB", "warehouse": "WH"});
    t.template.custom = Some(agent_core::json::json_to_struct(custom.as_object().unwrap()));
    let mut client = env.server.connector_client().await;
    let with = |secrets: &[(&str, &str)]| flyte2::create_request(&t, Some(flyte2::connection("snowflake", secrets)));
    let pass = "flyte-test-passphrase";
    let key_and_pass = [("snowflake_private_key", ENCRYPTED), ("snowflake_private_key_passphrase", pass)];
    client.create_task(with(&key_and_pass)).await.unwrap();
    // Same key, no passphrase: the cached token is not handed out; the key cannot be opened.
    let err = client.create_task(with(&[("snowflake_private_key", ENCRYPTED)])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("encrypted"), "{}", err.message());
    // A passphrase alone does not open the agent's (encrypted) key.
    let err = client.create_task(with(&[("snowflake_private_key_passphrase", pass)])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}
