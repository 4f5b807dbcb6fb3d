//! Benchmark of the agent server (not a timed test): start-to-SERVING time, idle and peak
//! RSS, and GetTask / ExecuteTaskSync throughput with p50/p99 latency over loopback, for
//! the test agent and, as the baseline, a bare tonic server answering the same RPCs with
//! a constant. Run it with `cargo xtask bench`; `--slow` runs the agents against slow and
//! rate-limited emulators instead (see `slow.rs`).
//!
//! Client and server share the machine's cores, for the agent and the baseline alike, so
//! the ratio between the two is the figure to read.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod slow;
mod soak;

use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_core::pb::admin::{self, execute_task_sync_request as sync_req, execute_task_sync_response as sync_resp};
use agent_core::pb::core;
use agent_core::pb::service::async_agent_service_client::AsyncAgentServiceClient;
use agent_core::pb::service::sync_agent_service_client::SyncAgentServiceClient;
use agent_core::pb::service::{async_agent_service_server, sync_agent_service_server};
use futures_util::Stream;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

// The allocator of the agent binaries: the client shares the cores with the agent, so it
// runs with the same one, as it always has.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Options {
    duration: Duration,
    concurrency: usize,
    connections: usize,
    starts: usize,
    /// Run the agent without its Prometheus endpoint, to see what metrics cost.
    no_metrics: bool,
    /// Benchmark agent-bigquery against the BigQuery emulator instead.
    bigquery: bool,
    /// Benchmark agent-databricks against the Databricks emulator instead.
    databricks: bool,
    /// Benchmark agent-snowflake against the Snowflake emulator instead.
    snowflake: bool,
    /// Benchmark agent-openai's ChatGPT agent against the OpenAI emulator instead.
    openai: bool,
    /// Benchmark agent-webhook against the webhook receiver instead.
    webhook: bool,
    /// Benchmark agent-sensor's polls instead.
    sensor: bool,
    /// Soak the async agents against their emulators with injected faults instead.
    soak: bool,
    /// Run the slow-service scenarios instead (`--seconds` is each one's measured time).
    slow: bool,
    /// Only this slow-service scenario (from 1).
    scenario: Option<usize>,
    /// Probability of each kind of fault on each emulator request, in the soak.
    fault_rate: f64,
    /// Agent and baseline are measured alternately this many times; medians are reported,
    /// which keeps a noisy neighbour from deciding the ratio.
    rounds: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("bare-server") {
        let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("bench bare-server PORT");
        tokio::runtime::Runtime::new().expect("runtime").block_on(bare_server(port));
        return;
    }
    let mut o = Options {
        duration: Duration::from_secs(5),
        concurrency: 32,
        connections: 4,
        starts: 20,
        no_metrics: false,
        rounds: 3,
        bigquery: false,
        databricks: false,
        snowflake: false,
        openai: false,
        webhook: false,
        sensor: false,
        soak: false,
        slow: false,
        scenario: None,
        fault_rate: 0.02,
    };
    let mut seconds_given = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| usage());
        match a.as_str() {
            "--seconds" => {
                o.duration = Duration::from_secs(value());
                seconds_given = true;
            }
            "--slow" => o.slow = true,
            "--scenario" => o.scenario = Some(value() as usize),
            "--concurrency" => o.concurrency = value() as usize,
            "--connections" => o.connections = value() as usize,
            "--starts" => o.starts = value() as usize,
            "--no-metrics" => o.no_metrics = true,
            "--bigquery" => o.bigquery = true,
            "--databricks" => o.databricks = true,
            "--snowflake" => o.snowflake = true,
            "--openai" => o.openai = true,
            "--webhook" => o.webhook = true,
            "--sensor" => o.sensor = true,
            "--rounds" => o.rounds = value().max(1) as usize,
            "--soak" => o.soak = true,
            "--fault-percent" => o.fault_rate = value() as f64 / 100.0,
            _ => usage(),
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if o.soak {
        let clean = rt.block_on(soak::run(&o));
        std::process::exit(if clean { 0 } else { 1 });
    }
    if o.slow {
        let measure = if seconds_given { o.duration } else { Duration::from_secs(20) };
        rt.block_on(slow::run(measure, o.scenario));
    } else if o.bigquery {
        rt.block_on(bench_bigquery(o));
    } else if o.databricks {
        rt.block_on(bench_databricks(o));
    } else if o.snowflake {
        rt.block_on(bench_snowflake(o));
    } else if o.openai {
        rt.block_on(bench_openai(o));
    } else if o.webhook {
        rt.block_on(bench_webhook(o));
    } else if o.sensor {
        rt.block_on(bench_sensor(o));
    } else {
        rt.block_on(run(o));
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--seconds N] [--concurrency N] [--connections N] [--starts N] [--rounds N] [--no-metrics] [--bigquery | --databricks | --snowflake | --openai | --webhook | --sensor] | bench --slow [--seconds N] [--scenario N] | bench --soak [--seconds N] [--concurrency N] [--fault-percent P] | bench bare-server PORT"
    );
    std::process::exit(2)
}

/// A workspace binary next to this one (`target/<profile>/NAME`): the test agent, the agents,
/// the emulators.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe().expect("own path").with_file_name(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

struct Proc {
    child: Child,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent(no_metrics: bool) -> Proc {
    let port = free_port();
    let metrics_port = if no_metrics { 0 } else { free_port() };
    let child = Command::new(sibling("test_agent"))
        .args([
            "--listen-address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--metrics-port",
            &metrics_port.to_string(),
        ])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start test_agent (build it with `cargo build --release -p testbed --bins`)");
    Proc { child, port }
}

fn spawn_bare() -> Proc {
    let port = free_port();
    let child = Command::new(std::env::current_exe().expect("own path"))
        .args(["bare-server", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the bare server");
    Proc { child, port }
}

async fn wait_serving(port: u16, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
            let mut h = HealthClient::new(ch);
            let status = h.check(HealthCheckRequest { service: String::new() }).await.map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < timeout, "server on {port} not SERVING within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// VmRSS and VmHWM (peak) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn template(task_type: &str) -> core::TaskTemplate {
    core::TaskTemplate { r#type: task_type.into(), ..Default::default() }
}

fn inputs() -> core::LiteralMap {
    agent_core::literals::values_to_literal_map([("x", agent_core::literals::Value::Integer(7))])
}

#[derive(Clone)]
enum Rpc {
    GetTask,
    /// GetTask through the Flyte 2 front end (`flyteidl2.connector`), same meta.
    GetTaskFlyte2,
    ExecuteTaskSync,
    /// The same CreateTask over and over (no execution id, so each is a new external job).
    CreateTask(Box<admin::CreateTaskRequest>),
    /// ExecuteTaskSync of a given template and inputs.
    Sync(Box<(core::TaskTemplate, core::LiteralMap)>),
}

struct LoadResult {
    calls: u64,
    errors: u64,
    seconds: f64,
    /// Calls per second (for merged results, the median of the rounds).
    rate: f64,
    hist: Histogram<u64>,
}

async fn load(port: u16, rpc: Rpc, meta: Vec<u8>, o: &Options) -> LoadResult {
    load_task_type(port, rpc, meta, "test_async", o).await
}

async fn load_task_type(port: u16, rpc: Rpc, meta: Vec<u8>, task_type: &'static str, o: &Options) -> LoadResult {
    let mut channels = Vec::new();
    for _ in 0..o.connections {
        channels
            .push(Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.expect("connect"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut workers = Vec::new();
    for i in 0..o.concurrency {
        let ch = channels[i % channels.len()].clone();
        let stop = stop.clone();
        let meta = meta.clone();
        let rpc = rpc.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let (mut calls, mut errors) = (0u64, 0u64);
            let mut a = AsyncAgentServiceClient::new(ch.clone());
            let mut c2 =
                agent_core::pb::v2::connector::async_connector_service_client::AsyncConnectorServiceClient::new(
                    ch.clone(),
                );
            let get2 = agent_core::pb::v2::connector::GetTaskRequest {
                resource_meta: meta.clone(),
                task_category: Some(agent_core::pb::v2::connector::TaskCategory { name: task_type.into(), version: 0 }),
                output_prefix: "s3://bucket/out/0".into(),
                connection: None,
            };
            let mut s = SyncAgentServiceClient::new(ch);
            #[allow(deprecated)]
            let get = admin::GetTaskRequest {
                task_type: task_type.into(),
                resource_meta: meta,
                task_category: Some(admin::TaskCategory { name: task_type.into(), version: 0 }),
                output_prefix: "s3://bucket/out/0".into(),
            };
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match rpc {
                    Rpc::GetTask => a.get_task(get.clone()).await.is_ok_and(|r| r.into_inner().resource.is_some()),
                    Rpc::GetTaskFlyte2 => {
                        c2.get_task(get2.clone()).await.is_ok_and(|r| r.into_inner().resource.is_some())
                    }
                    Rpc::CreateTask(ref req) => {
                        a.create_task((**req).clone()).await.is_ok_and(|r| !r.into_inner().resource_meta.is_empty())
                    }
                    Rpc::ExecuteTaskSync | Rpc::Sync(_) => {
                        let (tmpl, ins) = match &rpc {
                            Rpc::Sync(b) => (b.0.clone(), b.1.clone()),
                            _ => (template("test_sync"), inputs()),
                        };
                        let msgs = [
                            admin::ExecuteTaskSyncRequest {
                                part: Some(sync_req::Part::Header(admin::CreateRequestHeader {
                                    template: Some(tmpl),
                                    output_prefix: "s3://bucket/out/0".into(),
                                    ..Default::default()
                                })),
                            },
                            admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(ins)) },
                        ];
                        match s.execute_task_sync(tokio_stream::iter(msgs)).await {
                            Ok(r) => match r.into_inner().message().await {
                                Ok(Some(admin::ExecuteTaskSyncResponse { res: Some(sync_resp::Res::Header(h)) })) => {
                                    h.resource.is_some_and(|r| r.phase == core::task_execution::Phase::Succeeded as i32)
                                }
                                _ => false,
                            },
                            Err(_) => false,
                        }
                    }
                };
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                hist.saturating_record(us);
                calls += 1;
                errors += u64::from(!ok);
            }
            (hist, calls, errors)
        }));
    }
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = LoadResult {
        calls: 0,
        errors: 0,
        seconds: 0.0,
        rate: 0.0,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    };
    for w in workers {
        let (h, c, e) = w.await.expect("worker");
        total.hist.add(h).expect("same bounds");
        total.calls += c;
        total.errors += e;
    }
    total.seconds = start.elapsed().as_secs_f64();
    total.rate = total.calls as f64 / total.seconds;
    total
}

fn row(name: &str, r: &LoadResult) -> String {
    format!(
        "| {name:<34} | {:>9.0} | {:>7.2} | {:>7.2} | {:>7.2} | {:>6} |",
        r.rate,
        r.hist.value_at_quantile(0.50) as f64 / 1000.0,
        r.hist.value_at_quantile(0.99) as f64 / 1000.0,
        r.hist.max() as f64 / 1000.0,
        r.errors
    )
}

async fn run(o: Options) {
    println!(
        "Benchmark: {} s per load, {} concurrent callers over {} connections, loopback, {} cores\n",
        o.duration.as_secs(),
        o.concurrency,
        o.connections,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Start-up: time from spawn to health SERVING, several starts.
    let mut starts = Vec::new();
    for _ in 0..o.starts {
        let t = Instant::now();
        let p = spawn_agent(o.no_metrics);
        wait_serving(p.port, Duration::from_secs(10)).await;
        starts.push(t.elapsed());
    }
    starts.sort();

    let mut results: [Vec<LoadResult>; 5] = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let (mut idle_rss, mut peak_rss, mut bare_idle) = (0, 0, 0);
    let mut meta = Vec::new();
    for round in 0..o.rounds {
        let agent = spawn_agent(o.no_metrics);
        wait_serving(agent.port, Duration::from_secs(10)).await;
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            idle_rss = rss_kib(agent.child.id()).0;
            let ch = Channel::from_shared(format!("http://127.0.0.1:{}", agent.port)).unwrap().connect().await.unwrap();
            let create = admin::CreateTaskRequest {
                template: Some(template("test_async")),
                inputs: Some(inputs()),
                ..Default::default()
            };
            meta =
                AsyncAgentServiceClient::new(ch).create_task(create).await.expect("create").into_inner().resource_meta;
        }
        results[0].push(load(agent.port, Rpc::GetTask, meta.clone(), &o).await);
        results[2].push(load(agent.port, Rpc::ExecuteTaskSync, meta.clone(), &o).await);
        results[4].push(load(agent.port, Rpc::GetTaskFlyte2, meta.clone(), &o).await);
        peak_rss = peak_rss.max(rss_kib(agent.child.id()).1);
        drop(agent);

        let bare = spawn_bare();
        wait_serving(bare.port, Duration::from_secs(10)).await;
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            bare_idle = rss_kib(bare.child.id()).0;
        }
        results[1].push(load(bare.port, Rpc::GetTask, meta.clone(), &o).await);
        results[3].push(load(bare.port, Rpc::ExecuteTaskSync, meta.clone(), &o).await);
        drop(bare);
    }
    let merged: Vec<LoadResult> = results.into_iter().map(merge).collect();

    println!("Medians of {} rounds; latency percentiles over all calls of all rounds.\n", o.rounds);
    println!("| server / RPC                       |     req/s | p50 ms  | p99 ms  | max ms  | errors |");
    println!("|------------------------------------|-----------|---------|---------|---------|--------|");
    let names = [
        "agent GetTask",
        "bare tonic GetTask (constant)",
        "agent ExecuteTaskSync",
        "bare tonic ExecuteTaskSync (const)",
        "agent GetTask over Flyte 2",
    ];
    for (name, r) in names.iter().zip(&merged) {
        println!("{}", row(name, r));
    }
    println!();
    println!(
        "agent throughput vs bare tonic: GetTask {:.0}%, ExecuteTaskSync {:.0}%",
        merged[0].rate / merged[1].rate * 100.0,
        merged[2].rate / merged[3].rate * 100.0
    );
    println!("Flyte 2 GetTask vs Flyte 1 GetTask on the same agent: {:.0}%", merged[4].rate / merged[0].rate * 100.0);
    let pct = |q: f64| ms(starts[((starts.len() - 1) as f64 * q).round() as usize]);
    println!(
        "start to SERVING (spawn → health SERVING): median {:.1} ms, p90 {:.1} ms, min {:.1} ms over {} starts",
        pct(0.5),
        pct(0.9),
        pct(0.0),
        starts.len()
    );
    println!(
        "agent RSS: idle {:.1} MiB, peak under load {:.1} MiB (bare tonic idle {:.1} MiB)",
        mib(idle_rss),
        mib(peak_rss),
        mib(bare_idle)
    );
}

/// One figure from several rounds: the median rate, all latencies, all errors.
fn merge(rounds: Vec<LoadResult>) -> LoadResult {
    let mut rates: Vec<f64> = rounds.iter().map(|r| r.calls as f64 / r.seconds).collect();
    rates.sort_by(f64::total_cmp);
    let mut out = LoadResult {
        calls: 0,
        errors: 0,
        seconds: 0.0,
        rate: rates[rates.len() / 2],
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    };
    for r in rounds {
        out.calls += r.calls;
        out.errors += r.errors;
        out.seconds += r.seconds;
        out.hist.add(r.hist).expect("same bounds");
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The baseline: tonic with nothing but the two RPCs, answering with constants.
#[derive(Clone)]
struct Bare {
    resource: admin::Resource,
}

#[tonic::async_trait]
impl async_agent_service_server::AsyncAgentService for Bare {
    async fn create_task(
        &self,
        _: Request<admin::CreateTaskRequest>,
    ) -> Result<Response<admin::CreateTaskResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get_task(&self, _: Request<admin::GetTaskRequest>) -> Result<Response<admin::GetTaskResponse>, Status> {
        Ok(Response::new(admin::GetTaskResponse { resource: Some(self.resource.clone()) }))
    }
    async fn delete_task(
        &self,
        _: Request<admin::DeleteTaskRequest>,
    ) -> Result<Response<admin::DeleteTaskResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get_task_metrics(
        &self,
        _: Request<admin::GetTaskMetricsRequest>,
    ) -> Result<Response<admin::GetTaskMetricsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type GetTaskLogsStream = Pin<Box<dyn Stream<Item = Result<admin::GetTaskLogsResponse, Status>> + Send>>;
    async fn get_task_logs(
        &self,
        _: Request<admin::GetTaskLogsRequest>,
    ) -> Result<Response<Self::GetTaskLogsStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

#[tonic::async_trait]
impl sync_agent_service_server::SyncAgentService for Bare {
    type ExecuteTaskSyncStream = Pin<Box<dyn Stream<Item = Result<admin::ExecuteTaskSyncResponse, Status>> + Send>>;
    async fn execute_task_sync(
        &self,
        req: Request<Streaming<admin::ExecuteTaskSyncRequest>>,
    ) -> Result<Response<Self::ExecuteTaskSyncStream>, Status> {
        let mut s = req.into_inner();
        let _header = s.message().await?;
        let _inputs = s.message().await?;
        let resp = admin::ExecuteTaskSyncResponse {
            res: Some(sync_resp::Res::Header(admin::ExecuteTaskSyncResponseHeader {
                resource: Some(self.resource.clone()),
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(resp)))))
    }
}

async fn bare_server(port: u16) {
    // The same answer the test agent gives: SUCCEEDED with one output and a log link.
    let resource = agent_core::Resource::succeeded()
        .with_message("done")
        .with_output("y", 14_i64)
        .with_log_link(agent_core::LogLink::new("Test Console", "https://console.example.com/jobs/x"))
        .to_proto();
    let bare = Bare { resource };
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    Server::builder()
        .add_service(health)
        .add_service(async_agent_service_server::AsyncAgentServiceServer::new(bare.clone()))
        .add_service(sync_agent_service_server::SyncAgentServiceServer::new(bare))
        .serve(([127, 0, 0, 1], port).into())
        .await
        .expect("bare server");
}

/// An agent binary benchmarked against its service's emulator binary.
struct External {
    title: &'static str,
    emulator_args: Vec<String>,
    agent: &'static str,
    env: Vec<(String, String)>,
    task_type: &'static str,
    template: core::TaskTemplate,
    measure_create: bool,
    /// Inputs of each task (the soak sends them with every CreateTask).
    inputs: core::LiteralMap,
    /// Scheme, control path and JSON key listing the emulator's external jobs.
    jobs: (&'static str, &'static str, &'static str),
}

/// GetTask through agent-bigquery, each call a real HTTP round trip to the emulator.
async fn bench_bigquery(o: Options) {
    bench_external(o, bigquery_setup).await;
}

fn bigquery_setup(host: &str, _dir: &std::path::Path) -> External {
    let custom = serde_json::json!({"ProjectID": "bench", "Location": "US"});
    External {
        title: "agent-bigquery against the BigQuery emulator (each call = one BigQuery REST call over loopback HTTP)",
        emulator_args: ["bigquery", "--port", "0", "--pending-ms", "0", "--running-ms", "0"].map(String::from).to_vec(),
        agent: "agent-bigquery",
        env: vec![("BIGQUERY_EMULATOR_HOST".into(), host.to_owned())],
        task_type: "bigquery_query_job_task",
        template: core::TaskTemplate {
            r#type: "bigquery_query_job_task".into(),
            custom: custom.as_object().map(agent_core::json::json_to_struct),
            target: Some(core::task_template::Target::Sql(core::Sql { statement: "SELECT 1".into(), dialect: 1 })),
            ..Default::default()
        },
        measure_create: false,
        inputs: core::LiteralMap::default(),
        jobs: ("http", "/_emulator/bigquery/jobs", "jobs"),
    }
}

/// CreateTask and GetTask through agent-databricks against the Databricks emulator over HTTPS.
async fn bench_databricks(o: Options) {
    bench_external(o, databricks_setup).await;
}

fn databricks_setup(host: &str, dir: &std::path::Path) -> External {
    let ca = dir.join("ca.pem");
    External {
        title: "agent-databricks against the Databricks emulator (each call = one Jobs API call over loopback HTTPS)",
        emulator_args: vec![
            "databricks".into(),
            "--port".into(),
            "0".into(),
            "--ca-out".into(),
            ca.to_string_lossy().into_owned(),
            "--pending-ms".into(),
            "0".into(),
            "--running-ms".into(),
            "0".into(),
        ],
        agent: "agent-databricks",
        env: vec![
            ("FLYTE_DATABRICKS_INSTANCE".into(), host.to_owned()),
            ("SSL_CERT_FILE".into(), ca.to_string_lossy().into_owned()),
            ("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN".into(), "dapi-emulator-token".into()),
        ],
        task_type: "databricks",
        template: core::TaskTemplate {
            r#type: "databricks".into(),
            custom: serde_json::json!({"databricksConf": {"existing_cluster_id": "bench"}})
                .as_object()
                .map(agent_core::json::json_to_struct),
            target: Some(core::task_template::Target::Container(core::Container {
                image: "flyteorg/flytekit:spark".into(),
                args: vec!["pyflyte-execute".into()],
                ..Default::default()
            })),
            ..Default::default()
        },
        measure_create: true,
        inputs: core::LiteralMap::default(),
        jobs: ("https", "/_emulator/databricks/runs", "runs"),
    }
}

/// Starts `emulators ARGS` and returns it with the `host:port` it prints first.
fn start_emulator(args: &[String]) -> (Child, String) {
    use std::io::BufRead;
    let mut emulator = Command::new(sibling("emulators"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the emulators binary (cargo build --release --workspace)");
    let mut host = String::new();
    std::io::BufReader::new(emulator.stdout.take().expect("stdout")).read_line(&mut host).expect("emulator address");
    (emulator, host.trim().to_owned())
}

/// Starts an agent binary of the workspace on a free loopback port with `env`.
fn spawn_workspace_agent(agent: &str, env: &[(String, String)], log_level: &str) -> Proc {
    let port = free_port();
    let child = Command::new(sibling(agent))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args(["--metrics-port", &free_port().to_string(), "--log-level", log_level])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent binary");
    Proc { child, port }
}

/// Start-to-SERVING times over `o.starts` starts (sorted), then one agent left running and
/// its idle RSS in KiB.
async fn start_measured(o: &Options, agent: &str, env: &[(String, String)]) -> (Vec<Duration>, Proc, u64) {
    let mut starts = Vec::new();
    for _ in 0..o.starts {
        let t = Instant::now();
        let p = spawn_workspace_agent(agent, env, "warn");
        wait_serving(p.port, Duration::from_secs(10)).await;
        starts.push(t.elapsed());
    }
    starts.sort();
    let running = spawn_workspace_agent(agent, env, "warn");
    wait_serving(running.port, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(running.child.id()).0;
    (starts, running, idle)
}

/// ExecuteTaskSync through agent-openai's ChatGPT agent against the OpenAI emulator.
async fn bench_openai(o: Options) {
    let custom = serde_json::json!({"openai_organization": "org", "chatgpt_config": {"model": "gpt-4o-mini", "max_tokens": 100.0}});
    let sync = Sync {
        title: "agent-openai ChatGPT ExecuteTaskSync against the OpenAI emulator (each call = one chat completion over loopback HTTP)",
        label: "agent-openai ExecuteTaskSync",
        agent: "agent-openai",
        emulator: "openai",
        task_type: "chatgpt",
        custom,
        inputs: vec![("message", agent_core::literals::Value::from("hello"))],
    };
    bench_sync(o, sync, |host, _| {
        vec![
            ("OPENAI_BASE_URL".to_owned(), format!("http://{host}/v1")),
            ("_FSEC_FLYTE_OPENAI_API_KEY".to_owned(), "sk-emulator-key".to_owned()),
        ]
    })
    .await;
}

/// ExecuteTaskSync through agent-webhook against the webhook receiver: flytekit's
/// WebhookTask with a templated URL and JSON body.
async fn bench_webhook(o: Options) {
    let sync = Sync {
        title: "agent-webhook ExecuteTaskSync against the webhook receiver (each call = one templated POST over loopback HTTP, its address checked)",
        label: "agent-webhook ExecuteTaskSync",
        agent: "agent-webhook",
        emulator: "webhook",
        task_type: "webhook",
        custom: serde_json::json!({"url": "http://RECEIVER/runs/{inputs.run}", "method": "POST",
            "headers": {"Content-Type": "application/json"}, "data": {"text": "run {inputs.run} done", "run": "{inputs.run}"},
            "show_data": false, "show_url": true, "timeout_sec": 10.0}),
        inputs: vec![("run", agent_core::literals::Value::from("r-42"))],
    };
    bench_sync(o, sync, |_, dir| {
        // The receiver listens on loopback, which webhooks may not reach by default.
        let config = dir.join("webhook.yaml");
        std::fs::write(&config, "webhook:\n  allow_cidrs: [\"127.0.0.1/32\"]\n").expect("bench config");
        vec![("AGENT_CONFIG".to_owned(), config.to_string_lossy().into_owned())]
    })
    .await;
}

/// GetTask polls through agent-sensor's FileSensor: a local flag file, and, when the e2e
/// environment has moto (`cargo xtask e2e` installs it), an S3 object in moto's server.
async fn bench_sensor(o: Options) {
    let dir = std::env::temp_dir().join(format!("agent-bench-sensor-{}", std::process::id()));
    let incoming = dir.join("incoming");
    std::fs::create_dir_all(&incoming).expect("scratch dir");
    let flag = incoming.join("ready.flag");
    std::fs::write(&flag, "").expect("flag file");
    let moto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-venv/bin/moto_server");
    let mut env = Vec::new();
    let mut s3 = None;
    if moto.exists() {
        let port = free_port();
        let child = std::process::Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http.get(&url).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Unsigned requests: moto's server accepts them, as it accepts any key.
        let bucket = http.put(format!("{url}/bench-bucket")).send().await.expect("create bucket");
        assert!(bucket.status().is_success(), "{}", bucket.status());
        let object = http.put(format!("{url}/bench-bucket/runs/ready.flag")).body("x").send().await.expect("put");
        assert!(object.status().is_success(), "{}", object.status());
        env.extend([
            ("FLYTE_AWS_ENDPOINT".to_owned(), url),
            ("FLYTE_AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
            ("FLYTE_AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
        ]);
        s3 = Some(child);
    }
    let config = dir.join("sensor.yaml");
    std::fs::write(&config, format!("sensor:\n  local_roots: [\"{}\"]\n", incoming.display())).expect("config");
    env.push(("AGENT_CONFIG".to_owned(), config.to_string_lossy().into_owned()));
    let (starts, agent, idle) = start_measured(&o, "agent-sensor", &env).await;
    let meta = |path: &str| {
        serde_json::json!({"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor",
                           "sensor_config": null, "inputs": {"path": path}})
        .to_string()
        .into_bytes()
    };
    let mut rows = Vec::new();
    let mut cases = vec![("agent-sensor GetTask (local file)", meta(&flag.to_string_lossy()))];
    if s3.is_some() {
        cases.push(("agent-sensor GetTask (S3, moto)", meta("s3://bench-bucket/runs/ready.flag")));
    }
    for (label, m) in cases {
        let mut rounds = Vec::new();
        for _ in 0..o.rounds {
            rounds.push(load_task_type(agent.port, Rpc::GetTask, m.clone(), "sensor", &o).await);
        }
        rows.push(row(label, &merge(rounds)));
    }
    let peak = rss_kib(agent.child.id()).1;
    drop(agent);
    if let Some(mut child) = s3 {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(
        "agent-sensor FileSensor polls (each GetTask = one existence check; S3 in moto's Python server when it is installed)",
        &o,
        &rows,
        (&starts, idle, peak),
    );
}

/// One sync agent benchmarked against its emulator.
struct Sync {
    title: &'static str,
    label: &'static str,
    agent: &'static str,
    emulator: &'static str,
    task_type: &'static str,
    /// `template.custom`; `RECEIVER` in its strings becomes the emulator's host.
    custom: serde_json::Value,
    inputs: Vec<(&'static str, agent_core::literals::Value)>,
}

async fn bench_sync(o: Options, sync: Sync, env: impl FnOnce(&str, &std::path::Path) -> Vec<(String, String)>) {
    let (mut emulator, host) = start_emulator(&[sync.emulator, "--port", "0"].map(String::from));
    let dir = std::env::temp_dir().join(format!("agent-bench-{}-{}", sync.emulator, std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let env = env(&host, &dir);
    let (starts, agent, idle) = start_measured(&o, sync.agent, &env).await;
    let custom: serde_json::Value =
        serde_json::from_str(&sync.custom.to_string().replace("RECEIVER", &host)).expect("the same JSON");
    let tmpl = core::TaskTemplate {
        r#type: sync.task_type.into(),
        custom: custom.as_object().map(agent_core::json::json_to_struct),
        ..Default::default()
    };
    let ins = agent_core::literals::values_to_literal_map(sync.inputs);
    let mut rounds = Vec::new();
    for _ in 0..o.rounds {
        rounds.push(
            load_task_type(
                agent.port,
                Rpc::Sync(Box::new((tmpl.clone(), ins.clone()))),
                Vec::new(),
                sync.task_type,
                &o,
            )
            .await,
        );
    }
    let peak = rss_kib(agent.child.id()).1;
    drop(agent);
    let _ = emulator.kill();
    let _ = emulator.wait();
    let _ = std::fs::remove_dir_all(&dir);
    report(sync.title, &o, &[row(sync.label, &merge(rounds))], (&starts, idle, peak));
}

/// CreateTask and GetTask through agent-snowflake against the SQL API emulator (JWT verified
/// on every call by the emulator).
async fn bench_snowflake(o: Options) {
    bench_external(o, snowflake_setup).await;
}

fn snowflake_setup(host: &str, _dir: &std::path::Path) -> External {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-snowflake/tests/fixtures");
    let key = std::fs::read_to_string(fixtures.join("rsa_key.p8")).expect("test key");
    let public = fixtures.join("rsa_key.pub").to_string_lossy().into_owned();
    External {
        title: "agent-snowflake against the Snowflake SQL API emulator (each call = one SQL API call with a verified JWT)",
        emulator_args: vec![
            "snowflake".into(),
            "--port".into(),
            "0".into(),
            "--user".into(),
            format!("BENCH.FLYTE={public}"),
            "--running-ms".into(),
            "0".into(),
        ],
        agent: "agent-snowflake",
        env: vec![("SNOWFLAKE_BASE_URL".into(), format!("http://{host}")), ("_FSEC_SNOWFLAKE_PRIVATE_KEY".into(), key)],
        task_type: "snowflake",
        template: core::TaskTemplate {
            r#type: "snowflake".into(),
            config: [("user", "flyte"), ("account", "bench"), ("database", "DB"), ("warehouse", "WH")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            target: Some(core::task_template::Target::Sql(core::Sql { statement: "select 1".into(), dialect: 1 })),
            ..Default::default()
        },
        measure_create: true,
        inputs: core::LiteralMap::default(),
        jobs: ("http", "/_emulator/snowflake/statements", "statements"),
    }
}

/// OpenAI Batch jobs (soak only: its throughput is the chat agent's, measured above).
fn openai_batch_setup(host: &str, _dir: &std::path::Path) -> External {
    External {
        title: "agent-openai Batch against the OpenAI emulator",
        emulator_args: ["openai", "--port", "0", "--step-ms", "0"].map(String::from).to_vec(),
        agent: "agent-openai",
        env: vec![
            ("OPENAI_BASE_URL".into(), format!("http://{host}/v1")),
            ("_FSEC_FLYTE_OPENAI_API_KEY".into(), "sk-emulator-key".into()),
        ],
        task_type: "openai-batch",
        template: core::TaskTemplate {
            r#type: "openai-batch".into(),
            custom: serde_json::json!({"config": {}}).as_object().map(agent_core::json::json_to_struct),
            ..Default::default()
        },
        measure_create: true,
        inputs: agent_core::literals::values_to_literal_map([(
            "input_file_id",
            agent_core::literals::Value::from("file-soak"),
        )]),
        jobs: ("http", "/_emulator/openai/state", "batches"),
    }
}

async fn bench_external(o: Options, setup: fn(&str, &std::path::Path) -> External) {
    let dir = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    // The emulator prints its address first; the CA file (if any) is written before that.
    let (mut emulator, host) = start_emulator(&setup("", &dir).emulator_args);
    let ext = setup(&host, &dir);
    let (starts, agent, idle) = start_measured(&o, ext.agent, &ext.env).await;
    let ch = Channel::from_shared(format!("http://127.0.0.1:{}", agent.port)).unwrap().connect().await.unwrap();
    let create = admin::CreateTaskRequest { template: Some(ext.template.clone()), ..Default::default() };
    let meta =
        AsyncAgentServiceClient::new(ch).create_task(create.clone()).await.expect("create").into_inner().resource_meta;
    let mut gets = Vec::new();
    let mut creates = Vec::new();
    for _ in 0..o.rounds {
        gets.push(load_task_type(agent.port, Rpc::GetTask, meta.clone(), ext.task_type, &o).await);
        if ext.measure_create {
            creates.push(
                load_task_type(agent.port, Rpc::CreateTask(Box::new(create.clone())), meta.clone(), ext.task_type, &o)
                    .await,
            );
        }
    }
    let peak = rss_kib(agent.child.id()).1;
    drop(agent);
    let _ = emulator.kill();
    let _ = emulator.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let mut rows = vec![row(&format!("{} GetTask", ext.agent), &merge(gets))];
    if ext.measure_create {
        rows.push(row(&format!("{} CreateTask", ext.agent), &merge(creates)));
    }
    report(ext.title, &o, &rows, (&starts, idle, peak));
}

/// Prints one agent's table: the load, a row per RPC measured, then start-up (start times)
/// and memory (idle and peak RSS, KiB).
fn report(title: &str, o: &Options, rows: &[String], (starts, idle, peak): (&[Duration], u64, u64)) {
    println!("{title}");
    println!(
        "{} callers over {} connections, median of {} rounds of {} s\n",
        o.concurrency,
        o.connections,
        o.rounds,
        o.duration.as_secs()
    );
    println!("| server / RPC                       |     req/s | p50 ms  | p99 ms  | max ms  | errors |");
    println!("|------------------------------------|-----------|---------|---------|---------|--------|");
    for r in rows {
        println!("{r}");
    }
    println!(
        "\nstart to SERVING: median {:.1} ms over {} starts; RSS idle {:.1} MiB, peak under load {:.1} MiB",
        ms(starts[starts.len() / 2]),
        starts.len(),
        mib(idle),
        mib(peak)
    );
}
