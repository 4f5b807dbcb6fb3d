//! Test support for agent crates (feature `test-util`): a real server on a loopback port,
//! gRPC clients for it, and a conformance suite every agent must pass.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::config::{LogFormat, ServerConfig};
use crate::pb::service::agent_metadata_service_client::AgentMetadataServiceClient;
use crate::pb::service::async_agent_service_client::AsyncAgentServiceClient;
use crate::pb::service::sync_agent_service_client::SyncAgentServiceClient;
use crate::registry::Registry;
use crate::secrets::{EnvSource, SecretStore};
use crate::server::AgentServer;
use crate::service::AgentService;

pub use tonic::{Code, Request, Status};

/// Settings for a test server: loopback, any free port, no metrics endpoint.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        listen_address: [127, 0, 0, 1].into(),
        port: 0,
        metrics_port: 0,
        max_message_size: 64 * 1024 * 1024,
        max_concurrent_calls: 64,
        grace_period: Duration::from_secs(5),
        shutdown_delay: Duration::ZERO,
        log_format: LogFormat::Human,
        log_level: "info".into(),
        tls: None,
        http2: crate::config::Http2Config::default(),
    }
}

/// A secret store that sees only the given variables (and no files).
pub fn secrets(vars: &[(&str, &str)]) -> SecretStore {
    let mut map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    map.entry("FLYTE_SECRETS_DEFAULT_DIR".into()).or_insert_with(|| "/nonexistent-secrets-dir".into());
    SecretStore::new(EnvSource::Map(Arc::new(map)))
}

/// An agent's settings section as the agent reads it ([`crate::config::Settings::section_of`]:
/// its service's variables and list splitting included) when the environment holds only
/// `vars`, or the configuration error's text.
pub fn section_of<T: serde::de::DeserializeOwned>(
    described: &crate::describe::Description,
    vars: &[(&str, &str)],
) -> Result<T, String> {
    let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let settings = crate::config::Settings::load(&crate::config::CliArgs::default(), Some(env));
    settings.and_then(|s| s.section_of(described)).map_err(|e| e.to_string())
}

/// An agent's settings section `key` as the agent loads it (its `env_defaults` included)
/// when the environment holds only `vars`, or the configuration error's text.
pub fn section<T: serde::de::DeserializeOwned>(
    key: &str,
    env_defaults: &[(&str, &str)],
    vars: &[(&str, &str)],
) -> Result<T, String> {
    let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let settings = crate::config::Settings::load(&crate::config::CliArgs::default(), Some(env));
    settings.and_then(|s| s.section(key, env_defaults)).map_err(|e| e.to_string())
}

/// An agent server running in this process on `127.0.0.1:<free port>`.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

impl TestServer {
    /// Serves `registry` with no secrets.
    pub async fn start(registry: Registry) -> Self {
        Self::start_with(AgentService::new(registry, secrets(&[])), test_config()).await
    }

    /// Serves `service` with `config` (its port is ignored: a free one is used).
    pub async fn start_with(service: AgentService, config: ServerConfig) -> Self {
        let listener = TcpListener::bind((config.listen_address, 0)).await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel();
        let server = AgentServer::new(service, config);
        let task = tokio::spawn(server.serve_on(listener, async move {
            let _ = rx.await;
        }));
        Self { addr, shutdown: Some(tx), task }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint()).expect("valid endpoint").connect().await.expect("connect to test server")
    }

    /// An `AsyncAgentService` client.
    pub async fn async_client(&self) -> AsyncAgentServiceClient<Channel> {
        AsyncAgentServiceClient::new(self.channel().await)
    }

    /// A `SyncAgentService` client.
    pub async fn sync_client(&self) -> SyncAgentServiceClient<Channel> {
        SyncAgentServiceClient::new(self.channel().await)
    }

    /// An `AgentMetadataService` client.
    pub async fn metadata_client(&self) -> AgentMetadataServiceClient<Channel> {
        AgentMetadataServiceClient::new(self.channel().await)
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down gracefully and waits for the server to stop.
    pub async fn stop(mut self) -> Result<(), String> {
        self.begin_shutdown();
        (&mut self.task).await.map_err(|e| e.to_string())?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// The CreateTaskRequest Propeller sends for `task`.
pub fn create_request(task: &crate::agent::TaskRequest) -> crate::pb::admin::CreateTaskRequest {
    crate::pb::admin::CreateTaskRequest {
        inputs: Some(task.inputs.clone()),
        template: Some(task.template.clone()),
        output_prefix: task.output_prefix.clone(),
        task_execution_metadata: task.metadata.clone(),
    }
}

/// The GetTaskRequest Propeller sends for `meta` of version 0 of `task_type` (with the
/// deprecated `task_type` field set too, as Propeller does).
#[allow(deprecated)]
pub fn get_request(task_type: &str, meta: &[u8]) -> crate::pb::admin::GetTaskRequest {
    crate::pb::admin::GetTaskRequest {
        task_type: task_type.into(),
        resource_meta: meta.to_vec(),
        task_category: Some(crate::pb::admin::TaskCategory { name: task_type.into(), version: 0 }),
        output_prefix: String::new(),
    }
}

impl TestServer {
    /// GetTask for `meta`, which must answer with a resource.
    pub async fn get_resource(&self, task_type: &str, meta: &[u8]) -> crate::resource::Resource {
        let answer = self.async_client().await.get_task(get_request(task_type, meta)).await;
        let resource = answer.expect("GetTask").into_inner().resource.expect("GetTask answers a resource");
        crate::resource::Resource::from_proto(&resource)
    }
}

pub mod arbitrary;
pub mod hostile;
pub mod pki;

/// A log writer that keeps what it is given, for tests that check log lines (put it behind
/// [`crate::telemetry::Scrubbed`] to see what an agent's logs would hold).
#[derive(Clone, Debug, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}

/// What a Flyte 2 backend sends: `flyteidl2.connector` requests built from the same
/// [`crate::agent::TaskRequest`] the Flyte 1 helpers use (re-encoded, as the generations'
/// shared types allow), with an optional `connection`.
pub mod flyte2 {
    use tonic::transport::Channel;

    use super::TestServer;
    use crate::agent::{TaskCategory, TaskRequest};
    use crate::pb::v2::connector::async_connector_service_client::AsyncConnectorServiceClient;
    use crate::pb::v2::connector::connector_metadata_service_client::ConnectorMetadataServiceClient;
    use crate::pb::v2::connector::{self as c};
    use crate::pb::v2::core as core2;

    /// A `connection` carrying `secrets`.
    pub fn connection(task_type: &str, secrets: &[(&str, &str)]) -> core2::Connection {
        core2::Connection {
            task_type: task_type.into(),
            secrets: secrets.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            configs: Default::default(),
        }
    }

    /// The CreateTaskRequest a Flyte 2 backend sends for `task`, inputs sorted by name.
    pub fn create_request(task: &TaskRequest, connection: Option<core2::Connection>) -> c::CreateTaskRequest {
        crate::grpc::v2::create_request(task, connection).expect("the generations share these types' fields")
    }

    /// The category of version 0 of `task_type`.
    pub fn category(task_type: &str) -> c::TaskCategory {
        TaskCategory::new(task_type, 0).to_v2()
    }

    /// The GetTaskRequest for `meta` of version 0 of `task_type`.
    pub fn get_request(task_type: &str, meta: &[u8], connection: Option<core2::Connection>) -> c::GetTaskRequest {
        c::GetTaskRequest {
            resource_meta: meta.to_vec(),
            task_category: Some(category(task_type)),
            output_prefix: String::new(),
            connection,
        }
    }

    /// The DeleteTaskRequest for `meta` of version 0 of `task_type`.
    pub fn delete_request(task_type: &str, meta: &[u8], connection: Option<core2::Connection>) -> c::DeleteTaskRequest {
        c::DeleteTaskRequest { resource_meta: meta.to_vec(), task_category: Some(category(task_type)), connection }
    }

    impl TestServer {
        /// An `AsyncConnectorService` client.
        pub async fn connector_client(&self) -> AsyncConnectorServiceClient<Channel> {
            AsyncConnectorServiceClient::new(self.channel().await)
        }

        /// A `ConnectorMetadataService` client.
        pub async fn connector_metadata_client(&self) -> ConnectorMetadataServiceClient<Channel> {
            ConnectorMetadataServiceClient::new(self.channel().await)
        }
    }
}

/// Checks every agent must pass, run through real gRPC against a [`TestServer`].
pub mod conformance {
    use std::time::{Duration, Instant};

    use tonic::Code;

    use super::{TestServer, flyte2};
    use crate::agent::{TaskCategory, TaskRequest};
    use crate::pb::admin::{self, execute_task_sync_request as sync_req, execute_task_sync_response as sync_resp};
    use crate::resource::{Phase, Resource};

    /// Checks an agent's [`crate::describe::Description`] against its settings type, and
    /// panics naming every disagreement: a key `--help` does not list, a listed key that is
    /// not a setting, a list setting that does not split from the environment or `--set`, a
    /// text setting that does. One line in each agent's tests:
    /// `conformance::description(&config::HELP)`.
    #[track_caller]
    pub fn description(described: &crate::describe::Description) {
        let problems = described.problems();
        assert!(
            problems.is_empty(),
            "the description of the `{}` settings disagrees with its type:\n  {}",
            described.section,
            problems.join("\n  ")
        );
    }

    /// The `ListAgents` entry that lists `category`; panics when none does.
    pub async fn listed_agent(server: &TestServer, category: &TaskCategory) -> admin::Agent {
        let agents =
            server.metadata_client().await.list_agents(admin::ListAgentsRequest {}).await.unwrap().into_inner();
        agents
            .agents
            .into_iter()
            .find(|a| a.supported_task_categories.contains(&category.to_proto()))
            .unwrap_or_else(|| panic!("ListAgents does not list {category}"))
    }

    /// The code of a streaming call that must fail, whether it fails on open or on the
    /// first message.
    pub async fn stream_error_code<T>(result: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>) -> Code {
        match result {
            Err(s) => s.code(),
            Ok(r) => match r.into_inner().message().await {
                Err(s) => s.code(),
                Ok(m) => panic!(
                    "expected the call to fail, got {}",
                    if m.is_some() { "a message" } else { "an empty stream" }
                ),
            },
        }
    }

    /// Resource meta larger than this is flagged: Propeller keeps it in etcd.
    pub const MAX_SENSIBLE_META: usize = 4096;

    #[allow(deprecated)]
    fn get_request(task: &TaskRequest, meta: Vec<u8>) -> admin::GetTaskRequest {
        admin::GetTaskRequest {
            task_type: task.template.r#type.clone(),
            resource_meta: meta,
            task_category: Some(task.category().to_proto()),
            output_prefix: task.output_prefix.clone(),
        }
    }

    /// For an async agent: it is listed; create returns a small JSON meta; get reaches a
    /// terminal phase within `timeout` (the final resource is returned for agent-specific
    /// checks); delete is idempotent; a malformed meta is `INVALID_ARGUMENT`, an unknown
    /// category `NOT_FOUND` and a missing template `INVALID_ARGUMENT`.
    #[allow(deprecated)]
    pub async fn async_agent(server: &TestServer, task: TaskRequest, timeout: Duration) -> Resource {
        let category = task.category();
        let listed = listed_agent(server, &category).await;
        assert!(!listed.is_sync, "{category} must be listed as async");
        assert!(
            listed.supported_task_types.contains(&category.name),
            "deprecated supported_task_types lacks {category}"
        );

        let mut client = server.async_client().await;
        let create = admin::CreateTaskRequest {
            inputs: Some(task.inputs.clone()),
            template: Some(task.template.clone()),
            output_prefix: task.output_prefix.clone(),
            task_execution_metadata: task.metadata.clone(),
        };
        let meta = client.create_task(create).await.unwrap().into_inner().resource_meta;
        assert!(!meta.is_empty() && meta.len() <= MAX_SENSIBLE_META, "resource meta is {} bytes", meta.len());
        assert!(serde_json::from_slice::<serde_json::Value>(&meta).is_ok(), "resource meta is not JSON");

        let deadline = Instant::now() + timeout;
        let resource = loop {
            let r = client.get_task(get_request(&task, meta.clone())).await.unwrap().into_inner().resource.unwrap();
            assert_ne!(r.phase, 0, "GetTask must always set a phase");
            let resource = Resource::from_proto(&r);
            if resource.phase.is_terminal() {
                break resource;
            }
            assert!(
                Instant::now() < deadline,
                "{category} did not finish within {timeout:?} (last phase {})",
                resource.phase
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        for _ in 0..2 {
            let del = admin::DeleteTaskRequest {
                task_type: category.name.clone(),
                resource_meta: meta.clone(),
                task_category: Some(category.to_proto()),
            };
            client.delete_task(del).await.expect("delete must be idempotent");
        }

        let bad = client.get_task(get_request(&task, b"{not json".to_vec())).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "malformed meta: {bad:?}");
        let mut unknown = get_request(&task, meta.clone());
        unknown.task_category = Some(admin::TaskCategory { name: "no_such_task_type".into(), version: 0 });
        assert_eq!(client.get_task(unknown).await.unwrap_err().code(), Code::NotFound);
        let no_template = admin::CreateTaskRequest::default();
        assert_eq!(client.create_task(no_template).await.unwrap_err().code(), Code::InvalidArgument);
        resource
    }

    /// For a sync agent: it is listed as sync; Propeller's message sequence gets exactly
    /// one header response with a terminal phase (returned); a stream that starts with
    /// inputs is `INVALID_ARGUMENT`; an unknown category is `NOT_FOUND`.
    pub async fn sync_agent(server: &TestServer, task: TaskRequest) -> Resource {
        let category = task.category();
        assert!(listed_agent(server, &category).await.is_sync, "{category} must be listed as sync");

        let header = |t: &TaskRequest| admin::ExecuteTaskSyncRequest {
            part: Some(sync_req::Part::Header(admin::CreateRequestHeader {
                template: Some(t.template.clone()),
                output_prefix: t.output_prefix.clone(),
                task_execution_metadata: t.metadata.clone(),
                max_dataset_size_bytes: 0,
            })),
        };
        let inputs = admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(task.inputs.clone())) };
        let mut client = server.sync_client().await;
        let mut responses =
            client.execute_task_sync(tokio_stream::iter([header(&task), inputs.clone()])).await.unwrap().into_inner();
        let first = responses.message().await.unwrap().expect("one response");
        let resource = match first.res {
            Some(sync_resp::Res::Header(h)) => Resource::from_proto(&h.resource.expect("resource")),
            other => panic!("first response must be a header, got {other:?}"),
        };
        assert!(resource.phase.is_terminal(), "sync result must be terminal, got {}", resource.phase);
        assert!(responses.message().await.unwrap().is_none(), "exactly one response");

        let err = client.execute_task_sync(tokio_stream::iter([inputs.clone()])).await;
        let code = match err {
            Err(s) => s.code(),
            Ok(r) => r.into_inner().message().await.unwrap_err().code(),
        };
        assert_eq!(code, Code::InvalidArgument);

        let mut other = task.clone();
        other.template.r#type = "no_such_task_type".into();
        let err = client.execute_task_sync(tokio_stream::iter([header(&other), inputs])).await;
        let code = match err {
            Err(s) => s.code(),
            Ok(r) => r.into_inner().message().await.unwrap_err().code(),
        };
        assert_eq!(code, Code::NotFound);
        assert_ne!(resource.phase, Phase::RetryableFailed, "{}", resource.message);
        resource
    }

    /// Codes that mean the agent did not handle its input: a panic or an unmapped failure.
    fn unhandled(code: Code) -> bool {
        matches!(code, Code::Internal | Code::Unknown | Code::DeadlineExceeded)
    }

    fn check(what: &str, input: &dyn std::fmt::Debug, result: Result<Option<i32>, tonic::Status>) {
        let shown = format!("{input:?}");
        let shown: String = shown.chars().take(600).collect();
        match result {
            Ok(Some(0)) => panic!("{what} answered phase UNDEFINED for {shown}"),
            Ok(_) => {}
            Err(s) => assert!(!unhandled(s.code()), "{what} answered {:?} ({}) for {shown}", s.code(), s.message()),
        }
    }

    /// Hostile input never makes an agent panic, hang or fail obscurely: `cases` random
    /// resource metas (bytes, broken JSON, the right keys with wrong values) to GetTask and
    /// DeleteTask, and `task`'s template with random `custom`, `config`, SQL and inputs
    /// (literals of every kind) to CreateTask or ExecuteTaskSync; and the same over Flyte 2
    /// (`flyteidl2.connector`, where a sync agent is reached through CreateTask and GetTask).
    /// Every call answers within its deadline with a result or a precise error: never
    /// INTERNAL, UNKNOWN or DEADLINE_EXCEEDED. Inputs are drawn with proptest, the same
    /// every run.
    #[allow(deprecated)]
    pub async fn hostile_inputs(server: &TestServer, task: TaskRequest, cases: usize) {
        use super::arbitrary;
        use crate::json::{json_to_struct, struct_to_json};
        use proptest::prelude::*;

        let category = task.category();
        let is_sync = listed_agent(server, &category).await.is_sync;
        fn timed<T>(msg: T) -> tonic::Request<T> {
            let mut r = tonic::Request::new(msg);
            r.set_timeout(Duration::from_secs(5));
            r
        }
        if !is_sync {
            let mut client = server.async_client().await;
            for meta in arbitrary::sample(arbitrary::resource_meta(), cases) {
                let got = client.get_task(timed(get_request(&task, meta.clone()))).await;
                check(
                    "GetTask",
                    &String::from_utf8_lossy(&meta),
                    got.map(|r| r.into_inner().resource.map(|r| r.phase)),
                );
                let del = admin::DeleteTaskRequest {
                    task_type: category.name.clone(),
                    resource_meta: meta.clone(),
                    task_category: Some(category.to_proto()),
                };
                check(
                    "DeleteTask",
                    &String::from_utf8_lossy(&meta),
                    client.delete_task(timed(del)).await.map(|_| None),
                );
            }
        }

        let mut flyte2_client = server.connector_client().await;
        let category2 = category.to_v2();
        for meta in arbitrary::sample(arbitrary::resource_meta(), cases) {
            let get = crate::pb::v2::connector::GetTaskRequest {
                resource_meta: meta.clone(),
                task_category: Some(category2.clone()),
                ..Default::default()
            };
            let got = flyte2_client.get_task(timed(get)).await;
            let shown = String::from_utf8_lossy(&meta);
            check("Flyte 2 GetTask", &shown, got.map(|r| r.into_inner().resource.map(|r| r.phase)));
            let del = crate::pb::v2::connector::DeleteTaskRequest {
                resource_meta: meta.clone(),
                task_category: Some(category2.clone()),
                connection: None,
            };
            check("Flyte 2 DeleteTask", &shown, flyte2_client.delete_task(timed(del)).await.map(|_| None));
        }

        let real_custom = task.template.custom.as_ref().map(struct_to_json).unwrap_or_default();
        let variants = (
            arbitrary::json_object(2),
            any::<bool>(),
            prop::collection::hash_map(
                prop::sample::select(vec!["user", "account", "database", "schema", "warehouse"]),
                any::<String>(),
                0..5,
            ),
            prop::option::of(any::<String>()),
            arbitrary::literal_map(),
        );
        for (custom, overlay, config, sql, inputs) in arbitrary::sample(variants, cases) {
            let mut t = task.clone();
            // Overlaying keeps the real keys' neighbours valid, so the agent gets further in.
            let custom = if overlay { real_custom.clone().into_iter().chain(custom).collect() } else { custom };
            t.template.custom = Some(json_to_struct(&custom));
            t.template.config.extend(config.into_iter().map(|(k, v)| (k.to_owned(), v)));
            if let (Some(statement), Some(crate::pb::core::task_template::Target::Sql(s))) =
                (sql, t.template.target.as_mut())
            {
                s.statement = statement;
            }
            t.inputs = inputs;
            let input = (&t.template.custom, &t.template.config, &t.template.target, &t.inputs);
            if is_sync {
                let header = admin::ExecuteTaskSyncRequest {
                    part: Some(sync_req::Part::Header(admin::CreateRequestHeader {
                        template: Some(t.template.clone()),
                        ..Default::default()
                    })),
                };
                let inputs = admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(t.inputs.clone())) };
                let mut client = server.sync_client().await;
                let result = match client.execute_task_sync(timed(tokio_stream::iter([header, inputs]))).await {
                    Ok(stream) => match stream.into_inner().message().await {
                        Ok(Some(admin::ExecuteTaskSyncResponse { res: Some(sync_resp::Res::Header(h)) })) => {
                            Ok(h.resource.map(|r| r.phase))
                        }
                        Ok(other) => panic!("ExecuteTaskSync answered {other:?} for {input:?}"),
                        Err(s) => Err(s),
                    },
                    Err(s) => Err(s),
                };
                check("ExecuteTaskSync", &input, result);
            } else {
                let create = admin::CreateTaskRequest {
                    inputs: Some(t.inputs.clone()),
                    template: Some(t.template.clone()),
                    output_prefix: t.output_prefix.clone(),
                    task_execution_metadata: t.metadata.clone(),
                };
                let mut client = server.async_client().await;
                check("CreateTask", &input, client.create_task(timed(create)).await.map(|_| None));
            }
            let created = flyte2_client.create_task(timed(flyte2::create_request(&t, None))).await;
            check("Flyte 2 CreateTask", &input, created.map(|_| None));
        }
    }
}
