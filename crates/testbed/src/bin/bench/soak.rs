//! `bench --soak`: simulated Propeller loops against every async agent whose service we
//! emulate (not the sensor: its storage emulators come from PyPI and npm and inject no
//! faults) while its emulator injects faults (429 with Retry-After, 503, dropped connections, lost
//! responses, slow answers) at a chosen rate. Each loop runs tasks one after another:
//! CreateTask with a fresh task execution id, GetTask every 100 ms until a terminal
//! phase, each call with Propeller's 10 s deadline. Half the loops speak Flyte 1
//! (`flyteidl.service`), half Flyte 2 (`flyteidl2.connector`), against the same agent. Reports tasks run, tasks wrongly
//! failed (must be 0), external jobs beyond one per task (duplicates, must be 0), GetTask
//! latency and the agent's peak RSS. `cargo xtask soak` runs it; the test suite runs a
//! short one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_core::pb::admin;
use agent_core::pb::core::{Identifier, NodeExecutionIdentifier, TaskExecutionIdentifier, WorkflowExecutionIdentifier};
use agent_core::prelude::{TaskCategory, TaskRequest};
use executor::Backend as _;
use executor::GrpcBackend;
use hdrhistogram::Histogram;

use super::{External, Options, free_port, rss_kib, spawn_workspace_agent, start_emulator, wait_serving};

/// Propeller's per-call deadline in the connector plugin's defaults.
const DEADLINE: Duration = Duration::from_secs(10);

struct Outcome {
    agent: &'static str,
    tasks: u64,
    succeeded: u64,
    wrongly_failed: u64,
    jobs: u64,
    duplicates: u64,
    hist: Histogram<u64>,
    peak_rss_kib: u64,
    failures: Vec<String>,
}

/// Runs the soak for every async agent; true when nothing failed wrongly or duplicated.
pub(super) async fn run(o: &Options) -> bool {
    let setups: [fn(&str, &std::path::Path) -> External; 4] =
        [super::bigquery_setup, super::databricks_setup, super::snowflake_setup, super::openai_batch_setup];
    println!(
        "Soak: {} Propeller loops per agent (half over Flyte 2) for {} s, each fault kind injected on {:.1}% of emulator requests",
        o.concurrency,
        o.duration.as_secs(),
        o.fault_rate * 100.0
    );
    let mut results = Vec::new();
    for setup in setups {
        results.push(soak_one(o, setup).await);
    }
    println!(
        "\n| agent            | tasks | succeeded | wrongly failed | external jobs | duplicates | GetTask p50 ms | p99 ms | peak RSS MiB |"
    );
    println!(
        "|------------------|-------|-----------|----------------|---------------|------------|----------------|--------|--------------|"
    );
    let mut clean = true;
    for r in &results {
        println!(
            "| {:<16} | {:>5} | {:>9} | {:>14} | {:>13} | {:>10} | {:>14.2} | {:>6.2} | {:>12.1} |",
            r.agent,
            r.tasks,
            r.succeeded,
            r.wrongly_failed,
            r.jobs,
            r.duplicates,
            r.hist.value_at_quantile(0.5) as f64 / 1000.0,
            r.hist.value_at_quantile(0.99) as f64 / 1000.0,
            r.peak_rss_kib as f64 / 1024.0
        );
        clean &= r.wrongly_failed == 0 && r.duplicates == 0 && r.tasks > 0;
        for f in r.failures.iter().take(5) {
            println!("  {}: {f}", r.agent);
        }
    }
    clean
}

/// The emulator's control endpoint, over HTTPS with the test CA where the emulator uses it.
fn control(ext: &External, host: &str, dir: &std::path::Path) -> (reqwest::Client, String) {
    let ca = dir.join("ca.pem");
    let client =
        agent_core::http::client("soak", (ext.jobs.0 == "https").then_some(ca.as_path()), "soak").expect("HTTP client");
    (client, format!("{}://{host}", ext.jobs.0))
}

async fn soak_one(o: &Options, setup: fn(&str, &std::path::Path) -> External) -> Outcome {
    let dir = std::env::temp_dir().join(format!("agent-soak-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut args = setup("", &dir).emulator_args;
    // Jobs that take a while, so polls overlap with faults.
    for (flag, value) in [("--pending-ms", "100"), ("--running-ms", "300"), ("--step-ms", "100")] {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args[i + 1] = value.into();
        }
    }
    let (mut emulator, host) = start_emulator(&args);
    let ext = setup(&host, &dir);
    let agent = spawn_workspace_agent(ext.agent, &ext.env, "error");
    let port = agent.port;
    wait_serving(port, Duration::from_secs(20)).await;

    let (http, base) = control(&ext, &host, &dir);
    let faults = [
        serde_json::json!({"kind": "status", "code": 429, "retry_after_secs": 1}),
        serde_json::json!({"kind": "status", "code": 503}),
        serde_json::json!({"kind": "drop"}),
        serde_json::json!({"kind": "drop_response"}),
        serde_json::json!({"kind": "delay", "ms": 300}),
    ];
    for action in faults {
        let rule = serde_json::json!({"action": action, "probability": o.fault_rate});
        http.post(format!("{base}/_emulator/faults")).json(&rule).send().await.expect("inject faults");
    }

    let flyte1 = GrpcBackend::connect(&format!("http://127.0.0.1:{port}"), DEADLINE).await.expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let next_task = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for i in 0..o.concurrency {
        let (stop, next_task) = (stop.clone(), next_task.clone());
        let (template, inputs, task_type) = (ext.template.clone(), ext.inputs.clone(), ext.task_type);
        let (client, template) = if i % 2 == 0 {
            (flyte1.clone(), template)
        } else {
            (flyte1.clone().flyte2(Vec::new()), flyte_sdk_shape(template))
        };
        loops.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let (mut tasks, mut succeeded, mut failures) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let n = next_task.fetch_add(1, Ordering::Relaxed);
                tasks += 1;
                match run_task(&client, &template, &inputs, task_type, n, &mut hist).await {
                    Ok(()) => succeeded += 1,
                    Err(why) => failures.push(format!("task {n}: {why}")),
                }
            }
            (tasks, succeeded, failures, hist)
        }));
    }
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome {
        agent: ext.agent,
        tasks: 0,
        succeeded: 0,
        wrongly_failed: 0,
        jobs: 0,
        duplicates: 0,
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        peak_rss_kib: 0,
        failures: Vec::new(),
    };
    for l in loops {
        let (tasks, succeeded, failures, hist) = l.await.expect("soak loop");
        out.tasks += tasks;
        out.succeeded += succeeded;
        out.wrongly_failed += failures.len() as u64;
        out.failures.extend(failures);
        out.hist.add(hist).expect("merge histograms");
    }
    out.peak_rss_kib = rss_kib(agent.child.id()).1;
    let _ = http.delete(format!("{base}/_emulator/faults")).send().await;
    let listing: serde_json::Value =
        http.get(format!("{base}{}", ext.jobs.1)).send().await.expect("list jobs").json().await.expect("jobs JSON");
    out.jobs = listing[ext.jobs.2].as_array().map_or(0, |a| a.len() as u64);
    // Every task has its own execution id, so any job beyond one per task is a duplicate.
    out.duplicates = out.jobs.saturating_sub(out.tasks);
    drop(agent);
    let _ = emulator.kill();
    let _ = emulator.wait();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// One task the way Propeller runs it: create, then poll to a terminal phase, tolerating
/// up to five failed polls.
async fn run_task(
    client: &GrpcBackend,
    template: &agent_core::pb::core::TaskTemplate,
    inputs: &agent_core::pb::core::LiteralMap,
    task_type: &str,
    n: u64,
    hist: &mut Histogram<u64>,
) -> Result<(), String> {
    let metadata = admin::TaskExecutionMetadata {
        task_execution_id: Some(TaskExecutionIdentifier {
            task_id: Some(Identifier {
                project: "soak".into(),
                domain: "dev".into(),
                name: "t".into(),
                ..Default::default()
            }),
            node_execution_id: Some(NodeExecutionIdentifier {
                node_id: "n0".into(),
                execution_id: Some(WorkflowExecutionIdentifier {
                    project: "soak".into(),
                    domain: "dev".into(),
                    name: format!("soak-{}-{n}", std::process::id()),
                    ..Default::default()
                }),
            }),
            retry_attempt: 0,
        }),
        namespace: "soak-dev".into(),
        ..Default::default()
    };
    let prefix = format!("s3://bucket/soak/{n}");
    let task = TaskRequest {
        template: template.clone(),
        inputs: inputs.clone(),
        output_prefix: prefix.clone(),
        metadata: Some(metadata),
        ..TaskRequest::default()
    };
    let meta = client.create(task).await.map_err(|e| format!("CreateTask: {e}"))?;
    let category = TaskCategory::new(task_type, 0);
    let mut failed_polls = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let answer = client.get(&category, &meta, &prefix).await;
        let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
        match answer {
            Ok(r) if r.phase.is_terminal() => {
                return if r.phase == agent_core::Phase::Succeeded {
                    Ok(())
                } else {
                    Err(format!("{}: {}", r.phase, r.message))
                };
            }
            Ok(_) => {}
            Err(e) => {
                failed_polls += 1;
                if failed_polls > 5 {
                    return Err(format!("GetTask failed {failed_polls} times, last {e}"));
                }
            }
        }
    }
}

/// The template as flyte-sdk would serialize the task for a Flyte 2 backend: its plugins
/// keep the connection settings flytekit puts in `config` (Snowflake's) in `custom`.
fn flyte_sdk_shape(mut template: agent_core::pb::core::TaskTemplate) -> agent_core::pb::core::TaskTemplate {
    if template.config.is_empty() {
        return template;
    }
    let mut custom = template.custom.take().map(|c| agent_core::json::struct_to_json(&c)).unwrap_or_default();
    custom.extend(std::mem::take(&mut template.config).into_iter().map(|(k, v)| (k, v.into())));
    template.custom = Some(agent_core::json::json_to_struct(&custom));
    template
}
