//! The demo behind `cargo xtask demo`: starts the test agent binary on loopback, then runs
//! tasks through it over gRPC the way Propeller does (an async task polled to completion,
//! a sync task, and an async task cancelled midway), printing progress and a summary.

// A demo reports on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use agent_core::executor::{ExecutorOptions, LocalExecutor, Outcome, Progress};
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, literal_map_to_json, values_to_literal_map};
use agent_core::pb::core;
use agent_core::{GrpcBackend, TaskRequest};
use tokio_util::sync::CancellationToken;

fn task(task_type: &str, custom: serde_json::Value, inputs: Vec<(&str, Value)>) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: task_type.into(),
            custom: custom.as_object().map(json_to_struct),
            ..Default::default()
        },
        inputs: values_to_literal_map(inputs),
        output_prefix: "file:///tmp/flyte-agents-demo/outputs".into(),
        metadata: None,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(18000);
    let binary = std::env::current_exe().expect("own path").with_file_name("test_agent");
    let started = Instant::now();
    let mut child = match Command::new(&binary)
        .args([
            "--listen-address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--metrics-port",
            "0",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {}: {e}", binary.display());
            return ExitCode::FAILURE;
        }
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let backend = loop {
        match GrpcBackend::connect(&endpoint, Duration::from_secs(10)).await {
            Ok(b) => break b,
            Err(_) if started.elapsed() < Duration::from_secs(10) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                eprintln!("agent did not come up: {e}");
                let _ = child.kill();
                return ExitCode::FAILURE;
            }
        }
    };
    println!(
        "Agent server (test agents) listening on {endpoint}, up in {:.0} ms\n",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let executor = LocalExecutor::new(
        backend,
        ExecutorOptions { poll_interval: Duration::from_millis(250), ..Default::default() },
    );

    let runs = [
        (
            "async, polled to completion",
            task("test_async", serde_json::json!({"duration_ms": 1200}), vec![("x", Value::Integer(21))]),
            None,
        ),
        ("sync, one call", task("test_sync", serde_json::json!({}), vec![("name", "Flyte".into())]), None),
        (
            "async, cancelled after 600 ms",
            task("test_async", serde_json::json!({"duration_ms": 60_000}), vec![]),
            Some(Duration::from_millis(600)),
        ),
    ];
    let mut summary = Vec::new();
    let mut all_ok = true;
    for (label, t, cancel_after) in runs {
        println!("▶ {} — {label}", t.template.r#type);
        let cancel = CancellationToken::new();
        if let Some(after) = cancel_after {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                c.cancel();
            });
        }
        let t0 = Instant::now();
        let outcome = executor
            .run(t.clone(), &cancel, |p| match p {
                Progress::Created(n) => println!("  created (job handle {n} bytes)"),
                Progress::Polled(r) => {
                    println!("  {:>7.2}s {:<10} {}", t0.elapsed().as_secs_f64(), r.phase.as_str(), r.message)
                }
                Progress::GetFailed(e) => println!("  GetTask failed: {e}"),
            })
            .await;
        let (result, detail) = match outcome {
            Ok(Outcome::Finished(r)) => {
                let outputs =
                    r.outputs.as_ref().map(|o| literal_map_to_json(o).map(|j| j.to_string()).unwrap_or_default());
                all_ok &= r.phase == agent_core::Phase::Succeeded;
                (r.phase.as_str().to_owned(), outputs.unwrap_or_default())
            }
            Ok(Outcome::Cancelled { delete }) => {
                let deleted = matches!(delete, Some(Ok(())));
                all_ok &= deleted;
                ("CANCELLED".to_owned(), format!("DeleteTask {}", if deleted { "ok" } else { "failed" }))
            }
            Err(e) => {
                all_ok = false;
                ("ERROR".to_owned(), e.to_string())
            }
        };
        println!("  → {result} {detail}\n");
        summary.push((t.template.r#type.clone(), label, result, t0.elapsed(), detail));
    }

    println!("| task type  | run                           | result    | time    | details");
    println!("|------------|-------------------------------|-----------|---------|--------");
    for (ty, label, result, took, detail) in &summary {
        println!("| {ty:<10} | {label:<29} | {result:<9} | {:>6.2}s | {detail}", took.as_secs_f64());
    }
    // SIGTERM, as Kubernetes stops a pod; the agent drains and exits 0.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait();
    println!("\nAgent server stopped ({})", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
