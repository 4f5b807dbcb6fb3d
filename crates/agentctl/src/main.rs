//! `agentctl`: talk to any running Flyte agent over gRPC, without a Flyte deployment.
//!
//! `list` and `health` ask what Propeller and the kubelet ask; `run` drives one task the
//! way Propeller does (CreateTask, then GetTask until a terminal phase, or
//! ExecuteTaskSync for a sync agent; DeleteTask when interrupted) and prints its outputs
//! as JSON. `run --flyte2` does the same over Flyte 2's `flyteidl2.connector`, with
//! `--secret` for the request's `connection`, as a Flyte 2 backend would.
//!
//! `--tls`, `--ca-cert`, `--cert`/`--key` and `--server-name` (or an `https://` endpoint)
//! speak TLS or mutual TLS to agents serving it (`connect.rs`).
//!
//! Exit codes: 0 the task succeeded (or the agent is healthy); 1 the task ended in
//! another phase (or the agent is not SERVING); 2 a bad flag or file; 3 the agent could
//! not be reached or refused the call; 130 interrupted.

// A command-line tool: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod connect;
mod display;
mod input;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent_core::literals::literal_map_to_json;
use agent_core::{AgentError, Phase, TaskRequest};
use clap::{Parser, Subcommand};
use executor::{ExecutorOptions, GrpcBackend, LocalExecutor, Outcome};
use tokio_util::sync::CancellationToken;

// The agents' allocator: agentctl ran with it in every workspace build (the demo, the
// end-to-end suite) through agent-core's former `mimalloc` feature, and keeps it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "agentctl", version, about = "Run Flyte tasks against a Flyte agent over gRPC, like FlytePropeller")]
struct Cli {
    /// The agent's gRPC endpoint: http://HOST:PORT (plaintext), https://HOST:PORT (TLS),
    /// or HOST:PORT (TLS if any TLS flag is given).
    // No scheme by default, so that `--tls` or `--ca-cert` alone reach a local agent over TLS.
    #[arg(long, env = "AGENTCTL_ENDPOINT", default_value = "127.0.0.1:8000", global = true)]
    endpoint: String,
    /// Deadline of each call, like Propeller's per-RPC timeouts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(flatten)]
    tls: connect::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the agents and the task types they serve (ListAgents).
    List,
    /// Check the agent's gRPC health (what a Kubernetes probe asks).
    Health {
        /// Service name to check; empty means the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Run one task to completion and print its outputs as JSON.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Task type (Propeller routes on it); it must match the template's.
    #[arg(long)]
    task_type: String,
    /// Task type version.
    #[arg(long, default_value_t = 0)]
    task_version: i32,
    /// The task template: TaskTemplate or TaskSpec, protobuf binary or JSON.
    #[arg(long)]
    template: PathBuf,
    /// The inputs: LiteralMap, protobuf binary or JSON (none if omitted).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Where the task writes its outputs.
    #[arg(long, default_value = "file:///tmp/agentctl/outputs")]
    output_prefix: String,
    /// Time between GetTask calls.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Speak Flyte 2 (`flyteidl2.connector`) instead of Flyte 1; sync agents then answer
    /// through CreateTask and GetTask.
    #[arg(long)]
    flyte2: bool,
    /// A secret sent with every Flyte 2 request (`connection.secrets`), preferred by the
    /// agent to its own: KEY=VALUE, or KEY=@FILE to read the value from a file.
    #[arg(long = "secret", value_name = "KEY=VALUE", requires = "flyte2")]
    secrets: Vec<String>,
}

/// Why agentctl stopped short of a task result, mapped to an exit code.
enum Failure {
    Usage(String),
    Agent(AgentError),
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Self::Agent(e)
    }
}

impl From<input::InputError> for Failure {
    fn from(e: input::InputError) -> Self {
        Self::Usage(e.0)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("agentctl: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Agent(e)) => {
            eprintln!("agentctl: {e}");
            ExitCode::from(3)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    let channel = connect::connect(&cli.endpoint, &cli.tls, cli.timeout).await.map_err(|e| match e {
        connect::ConnectError::Usage(m) => Failure::Usage(m),
        connect::ConnectError::Agent(m) => Failure::Agent(AgentError::unavailable(m)),
    })?;
    let backend = GrpcBackend::from_channel(channel, cli.timeout);
    match cli.command {
        Command::List => {
            let agents = backend.list_agents().await?;
            print!("{}", display::agents_table(&agents));
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { service } => {
            let serving = backend.health(&service).await?;
            println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
            Ok(if serving { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Run(args) => {
            let backend = if args.flyte2 { backend.flyte2(input::secrets(&args.secrets)?) } else { backend };
            run(backend, args).await
        }
    }
}

async fn run(backend: GrpcBackend, args: RunArgs) -> Result<ExitCode, Failure> {
    let mut template = input::template(&args.template, &args.task_type)?;
    template.task_type_version = args.task_version;
    let inputs = match &args.inputs {
        Some(path) => input::inputs(path)?,
        None => Default::default(),
    };
    let task = TaskRequest { template, inputs, output_prefix: args.output_prefix, ..TaskRequest::default() };
    let executor = LocalExecutor::new(
        backend,
        ExecutorOptions { poll_interval: args.poll_interval, ..ExecutorOptions::default() },
    );

    // Ctrl-C cancels: the executor then sends DeleteTask for a created job, as Propeller
    // does when a workflow is aborted.
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });

    let started = Instant::now();
    let mut progress = display::Progress::new(&args.task_type, started);
    let outcome = executor.run(task, &cancel, |p| progress.update(p)).await;
    progress.finish();
    match outcome? {
        Outcome::Finished(resource) => {
            eprintln!("{}", display::summary(&resource, started.elapsed()));
            if let Some(outputs) = &resource.outputs {
                let json = literal_map_to_json(outputs)?;
                println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
            }
            Ok(if resource.phase == Phase::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Outcome::Cancelled { delete } => {
            match delete {
                None => eprintln!("interrupted before a job was created"),
                Some(Ok(())) => eprintln!("interrupted: DeleteTask sent, the job is cancelled"),
                Some(Err(e)) => eprintln!("interrupted, but DeleteTask failed: {e}"),
            }
            Ok(ExitCode::from(130))
        }
    }
}
