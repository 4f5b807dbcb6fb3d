//! `cargo xtask demo`: every agent against its local emulator, with no credentials. It
//! starts the emulators and the agent binaries on loopback ports, runs the sample task of
//! each task type (`crates/agentctl/samples`) through `agentctl run` the way Propeller
//! would, then a sync and an async task again the way a Flyte 2 backend would
//! (`agentctl run --flyte2`), prints a summary table and stops everything with SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::exec::{cargo, run};
use crate::workspace::free_port;

/// A child process stopped with SIGTERM (then killed) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    self.child.kill()?;
                    bail!("{} did not stop within 10 s of SIGTERM", self.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `emulators SERVICE --port 0 ARGS` and returns it with the `host:port` it prints.
fn emulator(bin: &Path, service: &str, args: &[&str]) -> Result<(Proc, String)> {
    let mut child = Command::new(bin.join("emulators"))
        .args([service, "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the {service} emulator"))?;
    let mut host = String::new();
    BufReader::new(child.stdout.take().context("emulator stdout")?).read_line(&mut host)?;
    let host = host.trim().to_owned();
    if host.is_empty() {
        bail!("the {service} emulator did not start");
    }
    Ok((Proc { name: format!("{service} emulator"), child }, host))
}

/// Starts an agent binary on a loopback port with `env` and waits until it is SERVING.
fn agent(bin: &Path, name: &str, env: &[(&str, String)]) -> Result<(Proc, String)> {
    let port = free_port()?;
    let mut cmd = Command::new(bin.join(name));
    cmd.args(["--listen-address", "127.0.0.1", "--port", &port.to_string(), "--metrics-port", "0"])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc { name: name.to_owned(), child: cmd.spawn().with_context(|| format!("starting {name}"))? };
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = Command::new(bin.join("agentctl")).args(["--endpoint", &endpoint, "health"]).output()?;
        if health.status.success() {
            return Ok((proc, endpoint));
        }
        if Instant::now() > deadline {
            bail!("{name} was not SERVING within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One row of the summary.
struct Row {
    agent: &'static str,
    task_type: &'static str,
    mode: &'static str,
    result: String,
    elapsed: Duration,
    outputs: String,
}

pub(crate) fn demo(root: &Path) -> Result<()> {
    // The same build as the end-to-end suite's, so `cargo xtask test` reuses it.
    run(cargo(root).args(["build", "-q", "--workspace", "--all-features", "--bins"]))?;
    let bin = root.join("target/debug");
    let work = root.join("target/demo");
    std::fs::create_dir_all(&work)?;
    let samples = root.join("crates/agentctl/samples");
    let snowflake_key = root.join("crates/agent-snowflake/tests/fixtures");

    println!("Starting the emulators and the agents on loopback…");
    let ca = work.join("databricks-ca.pem");
    let user = format!("XY12345-US-EAST-1.FLYTE={}", snowflake_key.join("rsa_key.pub").display());
    let (bq, bq_host) = emulator(&bin, "bigquery", &["--pending-ms", "300", "--running-ms", "1500"])?;
    let (dbx, dbx_host) = emulator(
        &bin,
        "databricks",
        &["--ca-out", &ca.to_string_lossy(), "--pending-ms", "500", "--running-ms", "1500"],
    )?;
    let (sf, sf_host) = emulator(&bin, "snowflake", &["--user", &user, "--running-ms", "1500"])?;
    let (oai, oai_host) = emulator(&bin, "openai", &["--step-ms", "500"])?;
    let (hooks, hooks_host) = emulator(&bin, "webhook", &[])?;
    let mut procs = vec![bq, dbx, sf, oai, hooks];
    // Webhooks may not reach loopback unless the operator allows it; the receiver is there.
    let webhook_config = work.join("webhook.yaml");
    std::fs::write(&webhook_config, "webhook:\n  allow_cidrs: [\"127.0.0.1/32\"]\n")?;
    // The sample (serialized by flytekit) names the receiver's default port.
    let webhook_samples = work.join("webhook-samples");
    std::fs::create_dir_all(&webhook_samples)?;
    let template = std::fs::read_to_string(samples.join("webhook.template.json"))?;
    std::fs::write(webhook_samples.join("webhook.template.json"), template.replace("127.0.0.1:9080", &hooks_host))?;
    std::fs::copy(samples.join("webhook.inputs.json"), webhook_samples.join("webhook.inputs.json"))?;

    let key = std::fs::read_to_string(snowflake_key.join("rsa_key.p8"))?;
    // The sensor watches a local folder (the cloud stores need their emulators from PyPI and
    // npm; the end-to-end suite runs those); the flag it waits for is already there.
    let incoming = work.join("incoming");
    std::fs::create_dir_all(&incoming)?;
    std::fs::write(incoming.join("ready.flag"), "")?;
    let sensor_config = work.join("sensor.yaml");
    std::fs::write(&sensor_config, format!("sensor:\n  local_roots: [\"{}\"]\n", incoming.display()))?;
    let sensor_samples = work.join("sensor-samples");
    std::fs::create_dir_all(&sensor_samples)?;
    std::fs::copy(samples.join("sensor.template.json"), sensor_samples.join("sensor.template.json"))?;
    let inputs = std::fs::read_to_string(samples.join("sensor.inputs.json"))?;
    let flag = incoming.join("ready.flag").to_string_lossy().into_owned();
    std::fs::write(sensor_samples.join("sensor.inputs.json"), inputs.replace("/data/incoming/ready.flag", &flag))?;
    let agents: [(&str, Vec<(&str, String)>); 6] = [
        ("agent-bigquery", vec![("BIGQUERY_EMULATOR_HOST", bq_host)]),
        (
            "agent-databricks",
            vec![
                ("FLYTE_DATABRICKS_INSTANCE", dbx_host),
                ("SSL_CERT_FILE", ca.to_string_lossy().into_owned()),
                ("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", "dapi-emulator-token".into()),
            ],
        ),
        (
            "agent-snowflake",
            vec![("SNOWFLAKE_BASE_URL", format!("http://{sf_host}")), ("_FSEC_SNOWFLAKE_PRIVATE_KEY", key)],
        ),
        (
            "agent-openai",
            vec![
                ("OPENAI_BASE_URL", format!("http://{oai_host}/v1")),
                ("_FSEC_FLYTE_OPENAI_API_KEY", "sk-emulator-key".into()),
            ],
        ),
        ("agent-webhook", vec![("AGENT_CONFIG", webhook_config.to_string_lossy().into_owned())]),
        ("agent-sensor", vec![("AGENT_CONFIG", sensor_config.to_string_lossy().into_owned())]),
    ];
    let mut endpoints = std::collections::HashMap::new();
    for (name, env) in &agents {
        let (proc, endpoint) = agent(&bin, name, env)?;
        println!("  {name:<17} {endpoint}");
        procs.push(proc);
        endpoints.insert(*name, endpoint);
    }

    // The last four go over Flyte 2 (`flyteidl2.connector`) to the same agents: tasks
    // flyte-sdk serialized (`samples/flyte2`), with the credentials they declare sent with
    // the requests as a Flyte 2 backend sends connection secrets.
    let key_secret = format!("snowflake_private_key=@{}", snowflake_key.join("rsa_key.p8").display());
    let snowflake2: [&str; 3] = ["--flyte2", "--secret", &key_secret];
    let databricks2: [&str; 3] = ["--flyte2", "--secret", "databricks_token=dapi-emulator-token"];
    let (flytekit, flyte_sdk) = (samples.clone(), samples.join("flyte2"));
    let tasks: [(&str, &str, &str, &[&str], &Path); 11] = [
        ("agent-bigquery", "bigquery_query_job_task", "async", &[], &flytekit),
        ("agent-databricks", "databricks", "async", &[], &flytekit),
        ("agent-snowflake", "snowflake", "async", &[], &flytekit),
        ("agent-openai", "chatgpt", "sync", &[], &flytekit),
        ("agent-openai", "openai-batch", "async", &[], &flytekit),
        ("agent-webhook", "webhook", "sync", &[], &webhook_samples),
        ("agent-sensor", "sensor", "async", &[], &sensor_samples),
        ("agent-openai", "chatgpt", "Flyte 2", &["--flyte2"], &flytekit),
        ("agent-snowflake", "snowflake", "Flyte 2", &snowflake2, &flyte_sdk),
        ("agent-databricks", "databricks", "Flyte 2", &databricks2, &flyte_sdk),
        ("agent-bigquery", "bigquery_query_job_task", "Flyte 2", &["--flyte2"], &flyte_sdk),
    ];
    let mut rows = Vec::new();
    for (agent, task_type, mode, extra, samples) in tasks {
        let sample = match task_type {
            "bigquery_query_job_task" => "bigquery",
            other => other,
        };
        println!("\n── {task_type} ({mode}) on {agent} ──");
        let mut cmd = Command::new(bin.join("agentctl"));
        cmd.args(["--endpoint", &endpoints[agent], "run", "--task-type", task_type, "--poll-interval", "250ms"])
            .arg("--template")
            .arg(samples.join(format!("{sample}.template.json")))
            .args(extra);
        let inputs: PathBuf = samples.join(format!("{sample}.inputs.json"));
        if inputs.exists() {
            cmd.arg("--inputs").arg(inputs);
        }
        let started = Instant::now();
        let out = cmd.stderr(Stdio::inherit()).output()?;
        let outputs = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
        let result = match out.status.code() {
            Some(0) => "SUCCEEDED".to_owned(),
            Some(1) => "FAILED".to_owned(),
            other => format!("error (exit {other:?})"),
        };
        rows.push(Row { agent, task_type, mode, result, elapsed: started.elapsed(), outputs });
    }

    let mut stopped = Vec::new();
    for p in procs.iter_mut().rev() {
        stopped.push(p.stop());
    }
    println!("\n{:<17} {:<24} {:<8} {:<10} {:>7}  outputs", "agent", "task type", "mode", "result", "time");
    for r in &rows {
        let outputs: String = if r.outputs.chars().count() > 60 {
            r.outputs.chars().take(57).chain("...".chars()).collect()
        } else {
            r.outputs.clone()
        };
        println!(
            "{:<17} {:<24} {:<8} {:<10} {:>6.1}s  {}",
            r.agent,
            r.task_type,
            r.mode,
            r.result,
            r.elapsed.as_secs_f64(),
            if outputs.is_empty() { "-".into() } else { outputs }
        );
    }
    stopped.into_iter().collect::<Result<Vec<()>>>()?;
    println!("\nAll emulators and agents stopped.");
    let failed = rows.iter().filter(|r| r.result != "SUCCEEDED").count();
    if failed > 0 {
        bail!("{failed} demo task(s) did not succeed");
    }
    Ok(())
}
