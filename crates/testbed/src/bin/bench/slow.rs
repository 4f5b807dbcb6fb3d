//! `bench --slow`: the agents against slow and rate-limited services, where what counts
//! is how many calls a replica keeps in flight and how it answers 429s, not CPU per call.
//!
//! Each scenario starts an emulator over HTTPS (HTTP/2 offered, as the real services do)
//! with a fixed latency and optionally a token-bucket rate limit, starts the agent binary
//! against it, and runs N closed-loop callers, each call with Propeller's 10 s deadline.
//! After a warm-up it measures: calls/s against the ideal (in flight ÷ latency, or the
//! rate limit when lower), p50/p99 (of calls sent after the warm-up), calls the agent
//! refused because their deadline could no longer be met (a sync task's retryable
//! failure, a poll's "still running", a create's UNAVAILABLE, each naming the limit),
//! other failures, the service's 429s, the agent's peak RSS and RSS per in-flight call,
//! and the adaptive limit it ended at.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_core::pb::admin::{self, execute_task_sync_request as sync_req, execute_task_sync_response as sync_resp};
use agent_core::pb::core;
use agent_core::pb::service::async_agent_service_client::AsyncAgentServiceClient;
use agent_core::pb::service::sync_agent_service_client::SyncAgentServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use super::{Proc, free_port, mib, rss_kib, sibling, start_emulator, wait_serving};

/// Propeller's per-call deadline in the connector plugin's defaults.
const DEADLINE: Duration = Duration::from_secs(10);
/// The text every refusal for a deadline that can no longer be met carries.
const REFUSED: &str = "was not sent";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// ChatGPT ExecuteTaskSync.
    Chat,
    /// OpenAI Batch CreateTask then GetTask.
    Batch,
    /// Databricks CreateTask then GetTask.
    Databricks,
}

struct Scenario {
    name: &'static str,
    kind: Kind,
    latency_ms: u64,
    rate_limit: Option<u32>,
    in_flight: usize,
    warmup: Duration,
    measure: Duration,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    refused: u64,
    failed: u64,
    /// Least time a refused call still had before its deadline.
    refused_min_left: Option<Duration>,
    /// Most time a refused call still had before its deadline.
    refused_max_left: Option<Duration>,
    examples: Vec<String>,
}

enum Outcome {
    Ok,
    Refused,
    Failed(String),
}

/// Runs every scenario (or only the `only`th, from 1), each measured for `measure`.
pub(super) async fn run(measure: Duration, only: Option<usize>) {
    let s = |name, kind, latency_ms, rate_limit, in_flight, warmup_s| Scenario {
        name,
        kind,
        latency_ms,
        rate_limit,
        in_flight,
        warmup: Duration::from_secs(warmup_s),
        measure,
    };
    let scenarios = [
        s("ChatGPT sync, 1 s, 256 in flight", Kind::Chat, 1000, None, 256, 5),
        s("ChatGPT sync, 1 s, 2048 in flight", Kind::Chat, 1000, None, 2048, 5),
        s("OpenAI Batch create/get, 500 ms, 1024 in flight", Kind::Batch, 500, None, 1024, 5),
        s("Databricks create/get, 500 ms, 1024 in flight", Kind::Databricks, 500, None, 1024, 5),
        s("ChatGPT sync, 1 s, 2048 offered, 200 req/s limit", Kind::Chat, 1000, Some(200), 2048, 10),
    ];
    println!(
        "Slow services: each call has a {} s deadline; figures after a warm-up (10 s for the rate-limited case), \
         measured for {} s; loopback HTTPS with HTTP/2, {} cores\n",
        DEADLINE.as_secs(),
        measure.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| scenario | calls/s | ideal | % of ideal | p50 ms | p99 ms | refused (deadline) | failed | 429s (share) | service connections | limit at end | RSS idle → peak MiB | KiB per call in flight |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (_, sc) in scenarios.iter().enumerate().filter(|(i, _)| only.is_none_or(|o| o == i + 1)) {
        one(sc).await;
    }
}

async fn one(sc: &Scenario) {
    let dir = std::env::temp_dir().join(format!("agent-bench-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let ca = dir.join("ca.pem");
    let ca_arg = ca.to_string_lossy().into_owned();
    let mut args: Vec<String> = match sc.kind {
        Kind::Chat | Kind::Batch => {
            ["openai", "--port", "0", "--tls", "--ca-out", &ca_arg, "--step-ms", "0"].map(String::from).to_vec()
        }
        Kind::Databricks => {
            ["databricks", "--port", "0", "--ca-out", &ca_arg, "--pending-ms", "0", "--running-ms", "0"]
                .map(String::from)
                .to_vec()
        }
    };
    args.extend(["--latency-ms".to_owned(), sc.latency_ms.to_string()]);
    if let Some(rate) = sc.rate_limit {
        args.extend(["--rate-limit".to_owned(), rate.to_string()]);
    }
    let (mut emulator, host) = start_emulator(&args);
    let mut env = vec![("SSL_CERT_FILE".to_owned(), ca_arg.clone())];
    let agent_bin = match sc.kind {
        Kind::Chat | Kind::Batch => {
            env.push(("OPENAI_BASE_URL".into(), format!("https://{host}/v1")));
            env.push(("_FSEC_FLYTE_OPENAI_API_KEY".into(), "sk-emulator-key".into()));
            "agent-openai"
        }
        Kind::Databricks => {
            env.push(("FLYTE_DATABRICKS_INSTANCE".into(), host.clone()));
            env.push(("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN".into(), "dapi-emulator-token".into()));
            "agent-databricks"
        }
    };
    let metrics_port = free_port();
    let agent = spawn(agent_bin, &env, metrics_port);
    wait_serving(agent.port, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(agent.child.id()).0;
    let control = agent_core::http::client("bench", Some(&ca), "ca").expect("control client");
    let stats_url = format!("https://{host}/_emulator/stats");

    let mut channels = Vec::new();
    for _ in 0..4 {
        let url = format!("http://127.0.0.1:{}", agent.port);
        channels.push(Channel::from_shared(url).unwrap().connect().await.expect("connect"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let window = (start + sc.warmup, start + sc.warmup + sc.measure);
    let mut workers = Vec::new();
    for i in 0..sc.in_flight {
        let ch = channels[i % channels.len()].clone();
        let stop = stop.clone();
        let kind = sc.kind;
        workers.push(tokio::spawn(async move { caller(kind, ch, stop, window).await }));
    }
    tokio::time::sleep_until(window.0.into()).await;
    let before = stats(&control, &stats_url).await;
    tokio::time::sleep_until(window.1.into()).await;
    let after = stats(&control, &stats_url).await;
    let limit = scrape_limit(&control, metrics_port).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut tally = Tally::default();
    for w in workers {
        let (h, t) = w.await.expect("worker");
        hist.add(h).expect("same bounds");
        tally.ok += t.ok;
        tally.refused += t.refused;
        tally.failed += t.failed;
        tally.refused_min_left = min_opt(tally.refused_min_left, t.refused_min_left);
        tally.refused_max_left = tally.refused_max_left.max(t.refused_max_left);
        if tally.examples.len() < 3 {
            tally.examples.extend(t.examples);
        }
    }
    let peak = rss_kib(agent.child.id()).1;
    drop(agent);
    let _ = emulator.kill();
    let _ = emulator.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let secs = sc.measure.as_secs_f64();
    let rate = tally.ok as f64 / secs;
    let mut ideal = sc.in_flight as f64 / (sc.latency_ms as f64 / 1000.0);
    if let Some(limit) = sc.rate_limit {
        ideal = ideal.min(f64::from(limit));
    }
    let (requests, throttled) = (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
    let share = if requests == 0 { 0.0 } else { throttled as f64 / requests as f64 * 100.0 };
    let per_call = peak.saturating_sub(idle) as f64 / sc.in_flight as f64;
    println!(
        "| {} | {:.0} | {:.0} | {:.0}% | {:.0} | {:.0} | {} | {} | {} ({:.2}%) | {} | {} | {:.1} → {:.1} | {:.1} |",
        sc.name,
        rate,
        ideal,
        rate / ideal * 100.0,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        tally.refused,
        tally.failed,
        throttled,
        share,
        after.2,
        limit.unwrap_or_else(|| "?".into()),
        mib(idle),
        mib(peak),
        per_call,
    );
    if tally.refused > 0 {
        let left = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        println!(
            "  refused calls had {:.2}–{:.2} s of their deadline left (the service's latency plus the answer margin \
             is {:.2} s)",
            left(tally.refused_min_left),
            left(tally.refused_max_left),
            sc.latency_ms as f64 / 1000.0 + 0.5
        );
    }
    for e in &tally.examples {
        println!("  failure: {e}");
    }
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn spawn(agent: &str, env: &[(String, String)], metrics_port: u16) -> Proc {
    let port = free_port();
    let child = std::process::Command::new(sibling(agent))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args(["--metrics-port", &metrics_port.to_string(), "--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the agent binary");
    Proc { child, port }
}

/// The emulator's (service requests, 429s, connections).
async fn stats(client: &reqwest::Client, url: &str) -> (u64, u64, u64) {
    let body: serde_json::Value = match client.get(url).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    let n = |k: &str| body[k].as_u64().unwrap_or(0);
    (n("requests"), n("rate_limited"), n("connections"))
}

/// The agent's adaptive limit(s) from its `/metrics`.
async fn scrape_limit(client: &reqwest::Client, port: u16) -> Option<String> {
    let text = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?.text().await.ok()?;
    let limits: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(agent_core::http::limit::metric::LIMIT))
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    (!limits.is_empty()).then(|| limits.join("/"))
}

async fn caller(kind: Kind, ch: Channel, stop: Arc<AtomicBool>, window: (Instant, Instant)) -> (Histogram<u64>, Tally) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut tally = Tally::default();
    let mut sync = SyncAgentServiceClient::new(ch.clone());
    let mut jobs = AsyncAgentServiceClient::new(ch);
    let (template, inputs) = task(kind);
    while !stop.load(Ordering::Relaxed) {
        let calls: Vec<(Instant, Instant, Outcome)> = match kind {
            Kind::Chat => vec![chat(&mut sync, &template, &inputs).await],
            Kind::Batch | Kind::Databricks => create_get(&mut jobs, &template, &inputs).await,
        };
        for (sent, done, outcome) in calls {
            if done < window.0 || done > window.1 {
                continue;
            }
            match outcome {
                Outcome::Ok => {
                    tally.ok += 1;
                    // Latency only of calls sent after the warm-up: the first ones queue while
                    // the limit opens up.
                    if sent >= window.0 {
                        hist.saturating_record(u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX).max(1));
                    }
                }
                Outcome::Refused => {
                    tally.refused += 1;
                    let left = (sent + DEADLINE).saturating_duration_since(done);
                    tally.refused_min_left = min_opt(tally.refused_min_left, Some(left));
                    tally.refused_max_left = tally.refused_max_left.max(Some(left));
                }
                Outcome::Failed(why) => {
                    tally.failed += 1;
                    if tally.examples.is_empty() {
                        tally.examples.push(why);
                    }
                }
            }
        }
    }
    (hist, tally)
}

fn task(kind: Kind) -> (core::TaskTemplate, core::LiteralMap) {
    use agent_core::literals::{Value, values_to_literal_map};
    let custom = |v: serde_json::Value| v.as_object().map(agent_core::json::json_to_struct);
    match kind {
        Kind::Chat => (
            core::TaskTemplate {
                r#type: "chatgpt".into(),
                custom: custom(serde_json::json!({"chatgpt_config": {"model": "gpt-4o-mini"}})),
                ..Default::default()
            },
            values_to_literal_map([("message", Value::from("hello"))]),
        ),
        Kind::Batch => (
            core::TaskTemplate {
                r#type: "openai-batch".into(),
                custom: custom(serde_json::json!({"config": {}})),
                ..Default::default()
            },
            values_to_literal_map([("input_file_id", Value::from("file-bench"))]),
        ),
        Kind::Databricks => (
            core::TaskTemplate {
                r#type: "databricks".into(),
                custom: custom(serde_json::json!({"databricksConf": {"existing_cluster_id": "bench"}})),
                target: Some(core::task_template::Target::Container(core::Container {
                    image: "flyteorg/flytekit:spark".into(),
                    args: vec!["pyflyte-execute".into()],
                    ..Default::default()
                })),
                ..Default::default()
            },
            core::LiteralMap::default(),
        ),
    }
}

fn deadline<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(DEADLINE);
    r
}

async fn chat(
    client: &mut SyncAgentServiceClient<Channel>,
    template: &core::TaskTemplate,
    inputs: &core::LiteralMap,
) -> (Instant, Instant, Outcome) {
    let sent = Instant::now();
    let msgs = [
        admin::ExecuteTaskSyncRequest {
            part: Some(sync_req::Part::Header(admin::CreateRequestHeader {
                template: Some(template.clone()),
                output_prefix: "s3://bucket/out/0".into(),
                ..Default::default()
            })),
        },
        admin::ExecuteTaskSyncRequest { part: Some(sync_req::Part::Inputs(inputs.clone())) },
    ];
    let outcome = match client.execute_task_sync(deadline(tokio_stream::iter(msgs))).await {
        Ok(r) => match r.into_inner().message().await {
            Ok(Some(admin::ExecuteTaskSyncResponse { res: Some(sync_resp::Res::Header(h)) })) => {
                let r = h.resource.unwrap_or_default();
                if r.phase == core::task_execution::Phase::Succeeded as i32 {
                    Outcome::Ok
                } else if r.message.contains(REFUSED) {
                    Outcome::Refused
                } else {
                    Outcome::Failed(format!("phase {}: {}", r.phase, r.message))
                }
            }
            other => Outcome::Failed(format!("{other:?}")),
        },
        Err(s) => Outcome::Failed(format!("{:?}: {}", s.code(), s.message())),
    };
    (sent, Instant::now(), outcome)
}

async fn create_get(
    client: &mut AsyncAgentServiceClient<Channel>,
    template: &core::TaskTemplate,
    inputs: &core::LiteralMap,
) -> Vec<(Instant, Instant, Outcome)> {
    let sent = Instant::now();
    let create = admin::CreateTaskRequest {
        template: Some(template.clone()),
        inputs: Some(inputs.clone()),
        output_prefix: "s3://bucket/out/0".into(),
        ..Default::default()
    };
    let meta = match client.create_task(deadline(create)).await {
        Ok(r) => r.into_inner().resource_meta,
        Err(s) if s.message().contains(REFUSED) => return vec![(sent, Instant::now(), Outcome::Refused)],
        Err(s) => {
            let why = format!("create {:?}: {}", s.code(), s.message());
            return vec![(sent, Instant::now(), Outcome::Failed(why))];
        }
    };
    let created = Instant::now();
    #[allow(deprecated)]
    let get = admin::GetTaskRequest {
        task_type: template.r#type.clone(),
        resource_meta: meta,
        task_category: Some(admin::TaskCategory { name: template.r#type.clone(), version: 0 }),
        output_prefix: "s3://bucket/out/0".into(),
    };
    let outcome = match client.get_task(deadline(get)).await {
        Ok(r) => {
            let r = r.into_inner().resource.unwrap_or_default();
            if r.message.contains(REFUSED) {
                Outcome::Refused
            } else if r.phase == core::task_execution::Phase::Failed as i32 {
                Outcome::Failed(format!("get: job failed: {}", r.message))
            } else {
                Outcome::Ok
            }
        }
        Err(s) => Outcome::Failed(format!("get {:?}: {}", s.code(), s.message())),
    };
    vec![(sent, created, Outcome::Ok), (created, Instant::now(), outcome)]
}
