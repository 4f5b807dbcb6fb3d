//! `max_concurrent_calls`: a burst of calls reaches an agent's service at most N at a time;
//! the rest wait for a slot within their deadline, and a call whose deadline passes while
//! waiting gets the answer Propeller handles best (GetTask: still running; ExecuteTaskSync:
//! a retryable failure; CreateTask: UNAVAILABLE), never a failed job.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_core::AgentService;
use agent_core::prelude::*;
use agent_core::service::CallInfo;
use agent_core::testing::{TestServer, secrets, test_config};
use executor::Backend;
use serde::{Deserialize, Serialize};

/// Counts the calls in flight and remembers the most seen at once.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
    calls: AtomicUsize,
}

impl Gauge {
    async fn hold(&self, for_: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(for_).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct SlowSync(Arc<Gauge>, Duration);

impl SyncAgent for SlowSync {
    fn name(&self) -> &str {
        "slow sync"
    }
    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new("slow_sync", 0)]
    }
    async fn execute(&self, _: &Context, _: TaskRequest) -> Result<Resource, AgentError> {
        self.0.hold(self.1).await;
        Ok(Resource::succeeded())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: u32,
}

#[derive(Debug)]
struct SlowAsync(Arc<Gauge>, Duration);

impl AsyncAgent for SlowAsync {
    type Meta = Meta;
    fn name(&self) -> &str {
        "slow async"
    }
    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new("slow_async", 0)]
    }
    async fn create(&self, _: &Context, _: TaskRequest) -> Result<Meta, AgentError> {
        self.0.hold(self.1).await;
        Ok(Meta { id: 1 })
    }
    async fn get(&self, _: &Context, _: Meta) -> Result<Resource, AgentError> {
        self.0.hold(self.1).await;
        Ok(Resource::succeeded())
    }
    async fn delete(&self, _: &Context, _: Meta) -> Result<(), AgentError> {
        self.0.hold(self.1).await;
        Ok(())
    }
}

fn service(max: usize, hold: Duration) -> (AgentService, Arc<Gauge>, Arc<Gauge>) {
    let (sync, asynchronous) = (Arc::new(Gauge::default()), Arc::new(Gauge::default()));
    let registry = Registry::builder()
        .sync_agent(SlowSync(sync.clone(), hold))
        .unwrap()
        .async_agent(SlowAsync(asynchronous.clone(), hold))
        .unwrap();
    (AgentService::new(registry, secrets(&[])).limit_calls(max), sync, asynchronous)
}

fn task(task_type: &str) -> TaskRequest {
    TaskRequest {
        template: agent_core::pb::core::TaskTemplate { r#type: task_type.into(), ..Default::default() },
        ..Default::default()
    }
}

fn within(d: Duration) -> CallInfo {
    CallInfo { deadline: Some(std::time::Instant::now() + d), ..CallInfo::default() }
}

#[tokio::test]
async fn a_burst_reaches_each_agent_at_most_max_at_a_time_and_every_call_succeeds() {
    let (svc, sync, asynchronous) = service(3, Duration::from_millis(40));
    let mut calls = Vec::new();
    for i in 0..24 {
        let svc = svc.clone();
        calls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                svc.execute(task("slow_sync"), within(Duration::from_secs(10))).await.map(|r| r.phase)
            } else {
                svc.create(task("slow_async"), within(Duration::from_secs(10))).await.map(|_| Phase::Succeeded)
            }
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), Phase::Succeeded);
    }
    // Each agent has its own slots: both reached the limit, neither passed it.
    assert_eq!(sync.most.load(Ordering::SeqCst), 3);
    assert_eq!(asynchronous.most.load(Ordering::SeqCst), 3);
    assert_eq!(sync.calls.load(Ordering::SeqCst) + asynchronous.calls.load(Ordering::SeqCst), 24);
}

#[tokio::test]
async fn a_call_that_cannot_get_a_slot_in_time_gets_a_safe_answer() {
    let (svc, sync, asynchronous) = service(1, Duration::from_millis(600));
    // Occupy both agents' only slot.
    let busy_sync = tokio::spawn({
        let svc = svc.clone();
        async move { svc.execute(task("slow_sync"), within(Duration::from_secs(5))).await }
    });
    let busy_async = tokio::spawn({
        let svc = svc.clone();
        async move { svc.create(task("slow_async"), within(Duration::from_secs(5))).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    let r = svc.execute(task("slow_sync"), within(Duration::from_millis(200))).await.unwrap();
    assert_eq!(r.phase, Phase::RetryableFailed);
    assert!(r.message.contains("max_concurrent_calls"), "{}", r.message);

    let meta = serde_json::to_vec(&Meta { id: 1 }).unwrap();
    let category = TaskCategory::new("slow_async", 0);
    let r = svc.get(category.clone(), &meta, within(Duration::from_millis(200))).await.unwrap();
    assert_eq!(r.phase, Phase::Running, "busy is not the job's failure");
    assert!(r.message.contains("max_concurrent_calls"), "{}", r.message);

    let err = svc.create(task("slow_async"), within(Duration::from_millis(200))).await.unwrap_err();
    assert!(matches!(err, AgentError::Unavailable(_)), "{err:?}");
    let err = svc.delete(category, &meta, within(Duration::from_millis(200))).await.unwrap_err();
    assert!(matches!(err, AgentError::Unavailable(_)), "{err:?}");

    assert!(busy_sync.await.unwrap().is_ok() && busy_async.await.unwrap().is_ok());
    // Nothing beyond the one slot reached the agents.
    assert_eq!((sync.calls.load(Ordering::SeqCst), asynchronous.calls.load(Ordering::SeqCst)), (1, 1));
}

#[tokio::test]
async fn the_server_applies_its_configured_limit() {
    let (svc, sync, _) = service(64, Duration::from_millis(40));
    let config = agent_core::config::ServerConfig { max_concurrent_calls: 2, ..test_config() };
    let server = TestServer::start_with(svc, config).await;
    let backend = executor::GrpcBackend::connect(&server.endpoint(), Duration::from_secs(10)).await.unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move { backend.execute(task("slow_sync")).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().phase, Phase::Succeeded);
    }
    assert_eq!(sync.most.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_callers_grpc_timeout_bounds_the_wait_for_a_slot() {
    use agent_core::pb::admin::{self, execute_task_sync_request as sync_req, execute_task_sync_response as sync_resp};
    let (svc, sync, _) = service(1, Duration::from_secs(2));
    let config = agent_core::config::ServerConfig { max_concurrent_calls: 1, ..test_config() };
    let server = TestServer::start_with(svc, config).await;
    let backend = executor::GrpcBackend::connect(&server.endpoint(), Duration::from_secs(10)).await.unwrap();
    let holder = tokio::spawn(async move { backend.execute(task("slow_sync")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Propeller's deadline travels as grpc-timeout; the agent answers within it.
    let header = admin::ExecuteTaskSyncRequest {
        part: Some(sync_req::Part::Header(admin::CreateRequestHeader {
            template: Some(task("slow_sync").template),
            ..Default::default()
        })),
    };
    let inputs = admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(Default::default())) };
    let mut request = tonic::Request::new(tokio_stream::iter([header, inputs]));
    request.set_timeout(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let mut stream = server.sync_client().await.execute_task_sync(request).await.unwrap().into_inner();
    let Some(admin::ExecuteTaskSyncResponse { res: Some(sync_resp::Res::Header(h)) }) = stream.message().await.unwrap()
    else {
        panic!("expected a header");
    };
    assert!(started.elapsed() < Duration::from_millis(400), "answered after {:?}", started.elapsed());
    let r = Resource::from_proto(&h.resource.unwrap());
    assert_eq!(r.phase, Phase::RetryableFailed);
    assert!(r.message.contains("max_concurrent_calls"), "{}", r.message);
    assert_eq!(holder.await.unwrap().unwrap().phase, Phase::Succeeded);
    assert_eq!(sync.calls.load(Ordering::SeqCst), 1);
}

/// A server whose HTTP/2 limits are `http2`, with the slow agents above.
async fn limited(http2: agent_core::config::Http2Config) -> TestServer {
    let (svc, _, _) = service(64, Duration::from_millis(10));
    TestServer::start_with(svc, agent_core::config::ServerConfig { http2, ..test_config() }).await
}

/// An ExecuteTaskSync whose headers are sent but whose request body never is.
async fn stalled_sync_call(
    server: &TestServer,
    timeout: Option<Duration>,
) -> Result<tonic::Response<tonic::Streaming<agent_core::pb::admin::ExecuteTaskSyncResponse>>, tonic::Status> {
    let never = futures_util::stream::pending::<agent_core::pb::admin::ExecuteTaskSyncRequest>();
    let mut request = tonic::Request::new(never);
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    server.sync_client().await.execute_task_sync(request).await
}

#[tokio::test]
async fn a_connection_that_sends_half_a_preface_is_closed_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = Duration::from_millis(300);
    let server = limited(agent_core::config::Http2Config { header_read_timeout: limit, ..Default::default() }).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        tcp.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..12]).await.unwrap();
        conns.push(tcp);
    }
    let started = std::time::Instant::now();
    for mut tcp in conns {
        // The server's SETTINGS may come first; then the connection must end.
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "a half-open connection was still open after {:?}", started.elapsed());
    }
    assert!(started.elapsed() >= limit - Duration::from_millis(100), "closed too early: {:?}", started.elapsed());
    // A client that completes its call in time is served as usual.
    server.metadata_client().await.list_agents(agent_core::pb::admin::ListAgentsRequest {}).await.unwrap();
}

#[tokio::test]
async fn a_call_without_a_deadline_whose_request_never_arrives_ends_after_max_call_duration() {
    let max = Duration::from_millis(500);
    let server = limited(agent_core::config::Http2Config { max_call_duration: max, ..Default::default() }).await;
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), stalled_sync_call(&server, None))
        .await
        .expect("a call without a deadline was never ended")
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("http2.max_call_duration"), "{}", status.message());
    assert!(took >= max && took < max + Duration::from_secs(2), "ended after {took:?}");

    // A caller's own deadline is kept, even a longer one.
    let started = std::time::Instant::now();
    let status = stalled_sync_call(&server, Some(Duration::from_millis(1500))).await.unwrap_err();
    assert!(matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "cut short after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_connection_cannot_open_more_than_max_concurrent_streams() {
    let server = limited(agent_core::config::Http2Config { max_concurrent_streams: 2, ..Default::default() }).await;
    let channel = server.channel().await;
    let sync = agent_core::pb::service::sync_agent_service_client::SyncAgentServiceClient::new(channel.clone());
    let hold = |mut client: agent_core::pb::service::sync_agent_service_client::SyncAgentServiceClient<_>| {
        tokio::spawn(async move {
            let never = futures_util::stream::pending::<agent_core::pb::admin::ExecuteTaskSyncRequest>();
            client.execute_task_sync(never).await
        })
    };
    let (first, second) = (hold(sync.clone()), hold(sync.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The server's SETTINGS allow two streams on this connection: a third call waits.
    let mut metadata = agent_core::pb::service::agent_metadata_service_client::AgentMetadataServiceClient::new(channel);
    let third = tokio::spawn(async move { metadata.list_agents(agent_core::pb::admin::ListAgentsRequest {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third stream was opened beside two held ones");

    // Ending one held call frees a stream for it.
    first.abort();
    let listed = tokio::time::timeout(Duration::from_secs(5), third).await.expect("the third call never ran");
    assert!(listed.unwrap().is_ok());
    second.abort();
}

/// The smallest memory limit any chart gives an agent, in bytes, from the charts' values.
fn chart_memory_limit() -> u64 {
    let charts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts");
    let mut limits = Vec::new();
    for entry in std::fs::read_dir(&charts).unwrap() {
        let values = entry.unwrap().path().join("values.yaml");
        if !values.is_file() {
            continue;
        }
        let parsed = config::Config::builder()
            .add_source(config::File::from(values.as_path()).format(config::FileFormat::Yaml))
            .build()
            .unwrap();
        let Ok(limit) = parsed.get_string("resources.limits.memory") else { continue };
        let (number, unit) = limit.split_at(limit.find(|c: char| !c.is_ascii_digit()).unwrap_or(limit.len()));
        let scale: u64 = match unit {
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "" => 1,
            other => panic!("{}: unexpected memory unit {other:?}", values.display()),
        };
        limits.push(number.parse::<u64>().unwrap() * scale);
    }
    limits.into_iter().min().expect("no chart sets resources.limits.memory")
}

/// The test agent binary (testbed's `test_agent`), built as `cargo test --workspace
/// --all-features` and the e2e suite build it (so the same artifacts: a no-op there).
fn test_agent_binary() -> std::path::PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--all-features", "--bin", "test_agent"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building the test agent failed");
    // target/<profile>/deps/limits-… → target/<profile>/test_agent
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("test_agent")
}

/// Stops the agent process when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident memory of process `pid` so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Runs the test agent in a process of its own, calls `send` with a channel to it, and
/// returns the process's peak resident memory (bytes) before and after the call.
async fn peak_rss_of<F: Future<Output = ()>>(
    binary: &std::path::Path,
    send: impl FnOnce(tonic::transport::Channel) -> F,
) -> (u64, u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agent = Child(
        std::process::Command::new(binary)
            .args(["--listen-address", "127.0.0.1", "--port", &port.to_string(), "--metrics-port", "0"])
            .args(["--log-level", "warn"])
            .env_remove("AGENT_CONFIG")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = agent.0.id();
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(endpoint.clone()).unwrap().connect().await {
            Ok(c) => break c,
            Err(e) => assert!(std::time::Instant::now() < deadline, "the test agent never listened: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let idle = peak_rss(pid);
    send(channel).await;
    (idle, peak_rss(pid))
}

#[tokio::test]
async fn one_maximum_size_request_of_either_generation_fits_the_charts_memory_limit() {
    use agent_core::literals::Value;
    let limit = chart_memory_limit();
    let defaults = agent_core::config::Settings::load(&Default::default(), Some(Default::default())).unwrap();
    let max = defaults.server.max_message_size;
    let binary = test_agent_binary();

    // Inputs as one large string literal, the request as close to max_message_size as fits.
    let sized = |payload: usize| {
        let mut task = task("test_async");
        task.inputs =
            agent_core::literals::values_to_literal_map([("blob".to_owned(), Value::String("x".repeat(payload)))]);
        task
    };
    let overhead = prost::Message::encoded_len(&agent_core::testing::create_request(&sized(0)))
        .max(prost::Message::encoded_len(&agent_core::testing::flyte2::create_request(&sized(0), None)));
    // Length prefixes of the large fields grow by a few bytes each: leave room for them.
    let task = sized(max - overhead - 64);
    let v1 = agent_core::testing::create_request(&task);
    let v2 = agent_core::testing::flyte2::create_request(&task, None);
    drop(task);
    assert!(prost::Message::encoded_len(&v1) <= max && prost::Message::encoded_len(&v1) > max - 1024);
    assert!(prost::Message::encoded_len(&v2) <= max && prost::Message::encoded_len(&v2) > max - 1024);

    let (idle, flyte1) = peak_rss_of(&binary, |channel| async move {
        let mut client = agent_core::pb::service::async_agent_service_client::AsyncAgentServiceClient::new(channel)
            .max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(v1);
        request.set_timeout(Duration::from_secs(60));
        client.create_task(request).await.expect("Flyte 1 CreateTask");
    })
    .await;
    let (_, flyte2) = peak_rss_of(&binary, |channel| async move {
        let mut client =
            agent_core::pb::v2::connector::async_connector_service_client::AsyncConnectorServiceClient::new(channel)
                .max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(v2);
        request.set_timeout(Duration::from_secs(60));
        client.create_task(request).await.expect("Flyte 2 CreateTask");
    })
    .await;

    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let report = format!(
        "max_message_size {:.0} MiB; peak RSS idle {:.1} MiB, with one Flyte 1 CreateTask {:.1} MiB, with one \
         Flyte 2 CreateTask {:.1} MiB; chart limit {:.0} MiB",
        mib(max as u64),
        mib(idle),
        mib(flyte1),
        mib(flyte2),
        mib(limit)
    );
    // Shown with --nocapture: the figures the README quotes.
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    assert!(flyte1.max(flyte2) < limit, "{report}");
}
