//! The sensor agent through real gRPC on local paths: conformance, RUNNING until the file
//! appears, flytekit's metas accepted, other sensor classes refused with where to route
//! them. The cloud stores are exercised against their emulators in `tests/e2e`.

use std::time::Duration;

use agent_core::AgentService;
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::core;
use agent_core::prelude::*;
use agent_core::testing::{Code, TestServer, conformance, create_request, get_request, secrets, test_config};
use agent_sensor::{Config, SensorAgent, TASK_TYPE};
use serde_json::json;

struct Env {
    root: std::path::PathBuf,
    server: TestServer,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn env(name: &str) -> Env {
    let root = std::env::temp_dir().join(format!("sensor-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(root).unwrap();
    let config = Config { local_roots: vec![root.clone()], ..Config::default() };
    let registry = Registry::builder().async_agent(SensorAgent::new(config).unwrap()).unwrap();
    let server = TestServer::start_with(AgentService::new(registry, secrets(&[])), test_config()).await;
    Env { root, server }
}

/// A sensor task as flytekit's `FileSensor` serializes it (`SensorMetadata`, no inputs).
fn task(module: &str, class: &str, path: &str) -> TaskRequest {
    let custom = json!({"sensor_module": module, "sensor_name": class, "sensor_config": null, "inputs": null});
    TaskRequest {
        template: core::TaskTemplate {
            r#type: TASK_TYPE.into(),
            custom: Some(json_to_struct(custom.as_object().unwrap())),
            ..Default::default()
        },
        inputs: values_to_literal_map([("path", Value::from(path))]),
        ..Default::default()
    }
}

fn file_sensor(path: &str) -> TaskRequest {
    task("flytekit.sensor.file_sensor", "FileSensor", path)
}

#[tokio::test]
async fn a_file_sensor_runs_until_the_file_exists() {
    let env = env("appears").await;
    let file = env.root.join("ready.flag");
    let t = file_sensor(file.to_str().unwrap());
    let mut client = env.server.async_client().await;
    let meta = client.create_task(create_request(&t)).await.unwrap().into_inner().resource_meta;
    // flytekit's SensorMetadata, with the inputs as plain values.
    let written: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(
        written,
        json!({"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor", "sensor_config": null,
               "inputs": {"path": file.to_str().unwrap()}})
    );
    let poll = |m: Vec<u8>| {
        let mut c = client.clone();
        async move {
            let r = c.get_task(get_request(TASK_TYPE, &m)).await.unwrap().into_inner().resource.unwrap();
            Resource::from_proto(&r)
        }
    };
    let r = poll(meta.clone()).await;
    assert_eq!(r.phase, Phase::Running);
    assert!(r.message.contains("waiting for") && r.message.contains("ready.flag"), "{}", r.message);
    std::fs::write(&file, "").unwrap();
    assert_eq!(poll(meta.clone()).await.phase, Phase::Succeeded);
    // A folder exists as soon as it does.
    let dir = env.root.join("out");
    std::fs::create_dir_all(&dir).unwrap();
    let r = conformance::async_agent(&env.server, file_sensor(dir.to_str().unwrap()), Duration::from_secs(10)).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
}

#[tokio::test]
async fn metas_flytekits_sensor_engine_wrote_are_polled() {
    let env = env("metas").await;
    std::fs::write(env.root.join("x"), "").unwrap();
    let path = env.root.join("x");
    // json.dumps(asdict(SensorMetadata(...))): Python's separators, keys in field order.
    let meta = format!(
        "{{\"sensor_module\": \"flytekit.sensor.file_sensor\", \"sensor_name\": \"FileSensor\", \"sensor_config\": null, \
         \"inputs\": {{\"path\": \"{}\"}}}}",
        path.display()
    );
    let mut client = env.server.async_client().await;
    let r = client.get_task(get_request(TASK_TYPE, meta.as_bytes())).await.unwrap().into_inner().resource.unwrap();
    assert_eq!(Resource::from_proto(&r).phase, Phase::Succeeded);
    let delete = agent_core::pb::admin::DeleteTaskRequest {
        resource_meta: meta.into_bytes(),
        task_category: Some(agent_core::agent::TaskCategory::new(TASK_TYPE, 0).to_proto()),
        ..Default::default()
    };
    client.delete_task(delete).await.unwrap();
}

#[tokio::test]
async fn other_sensor_classes_are_refused_naming_them_and_where_to_route() {
    let env = env("custom").await;
    let t = task("my_pkg.sensors", "QueueSensor", "anything");
    let err = env.server.async_client().await.create_task(create_request(&t)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let m = err.message();
    assert!(m.contains("my_pkg.sensors.QueueSensor") && m.contains("Python connector"), "{m}");
    let meta =
        br#"{"sensor_module": "my_pkg.sensors", "sensor_name": "QueueSensor", "sensor_config": null, "inputs": {}}"#;
    let err = env.server.async_client().await.get_task(get_request(TASK_TYPE, meta)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn paths_outside_the_roots_are_refused_before_any_check() {
    let env = env("outside").await;
    for path in ["/etc/passwd", "/proc/self/environ", "relative", "s3://Not_A_Bucket/x", "http://169.254.169.254/"] {
        let err = env.server.async_client().await.create_task(create_request(&file_sensor(path))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {}", err.message());
        assert!(err.message().contains("inputs.path"), "{}", err.message());
    }
    let escape = format!("{}/../../etc/passwd", env.root.display());
    let err = env.server.async_client().await.create_task(create_request(&file_sensor(&escape))).await.unwrap_err();
    assert!(err.message().contains("'..'"), "{}", err.message());
}

/// The red-team case: a host in every disguise, put where a path names a bucket, account
/// or container, is refused before any request (the trap is never reached), with the
/// agent configured for an Azure account so a token would have somewhere to go.
#[tokio::test]
async fn no_disguised_host_in_a_path_is_called() {
    use agent_core::testing::hostile::{Trap, hostile_hosts};
    let trap = Trap::start().await;
    let config = Config { azure_account: Some("flyteacct".into()), ..Config::default() };
    let registry = Registry::builder().async_agent(SensorAgent::new(config).unwrap()).unwrap();
    let server = TestServer::start_with(AgentService::new(registry, secrets(&[])), test_config()).await;
    for host in hostile_hosts(trap.addr()) {
        for path in [
            format!("s3://{host}/key"),
            format!("gs://{host}/key"),
            format!("abfs://data@{host}/key"),
            format!("abfss://{host}@flyteacct.dfs.core.windows.net/key"),
        ] {
            let err = server.async_client().await.create_task(create_request(&file_sensor(&path))).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{path}: {}", err.message());
        }
    }
    assert_eq!(trap.reached(), 0, "a disguised host was called");
}
