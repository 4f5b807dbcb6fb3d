//! `cargo xtask`: every automation task of the workspace (codegen, tests, benchmarks,
//! the demo). CI and the GitHub workflows call these subcommands and nothing else.

// A command-line tool: printing progress and results is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod charts;
mod codegen;
mod demo;
mod images;
mod new_agent;
mod tasks;
mod tools;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Automation for the Flyte agents workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the protocol code in crates/agent-core/src/gen from proto/.
    Codegen {
        /// Only check that the committed code is up to date.
        #[arg(long)]
        check: bool,
    },
    /// Run the demo: every agent against its local emulator, one sample task each through
    /// agentctl, like Propeller would run them.
    Demo,
    /// Run every test: lint, Rust tests, chart checks, the end-to-end suite with the official
    /// Python client, and an image built, run and probed.
    Test,
    /// Check formatting, run clippy with warnings denied, lint the Dockerfile and workflows.
    Lint,
    /// Run the Rust tests (unit, integration, doc).
    Unit,
    /// Lint, render and validate every Helm chart offline.
    Charts,
    /// Package every agent chart into DIR (for releases).
    PackageCharts {
        /// Chart version and appVersion [default: the workspace version]; a leading `v` is dropped.
        #[arg(long)]
        version: Option<String>,
        /// Directory for the `.tgz` files.
        #[arg(long, default_value = "target/charts")]
        out: PathBuf,
    },
    /// Build one container image per agent (static musl binaries, FROM scratch).
    BuildImages(images::BuildArgs),
    /// Build images, run them, and check health, ListAgents and metrics from outside.
    ImageTest(images::TestArgs),
    /// Scaffold a new agent: crates/agent-NAME (trait impl, config, main, emulator-backed
    /// tests) and charts/agent-NAME.
    NewAgent {
        /// The agent's name, e.g. `my-service` (crate agent-my-service, task type my_service).
        name: String,
    },
    /// Scaffold an agent into a copy of the working tree and run its tests and checks there.
    NewAgentCheck,
    /// Join per-architecture images (TAG-ARCH) into one multi-arch tag.
    PushManifest(images::ManifestArgs),
    /// Benchmark the agent server against a bare tonic server (release build).
    Bench {
        /// Arguments for the benchmark, e.g. `--seconds 10 --concurrency 64`.
        args: Vec<String>,
    },
    /// Soak every async agent against its emulator with injected faults (release build);
    /// fails if a task fails wrongly or an external job is duplicated.
    Soak {
        /// Arguments, e.g. `--seconds 60 --concurrency 32 --fault-percent 5`.
        args: Vec<String>,
    },
    /// Run only the end-to-end suite (extra arguments go to pytest).
    E2e {
        /// Arguments for pytest, e.g. `-k sync`.
        pytest_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Codegen { check } => codegen::run(&root, check),
        Command::Demo => demo::demo(&root),
        Command::Test => tasks::test(&root),
        Command::Lint => tasks::lint(&root),
        Command::Unit => tasks::unit(&root),
        Command::Charts => charts::check(&root),
        Command::PackageCharts { version, out } => charts::package(&root, version.as_deref(), &root.join(out)),
        Command::BuildImages(args) => images::build(&root, &args).map(drop),
        Command::ImageTest(args) => images::test(&root, &args),
        Command::NewAgent { name } => new_agent::scaffold(&root, &name),
        Command::NewAgentCheck => new_agent::check(&root),
        Command::PushManifest(args) => images::push_manifest(&root, &args),
        Command::E2e { pytest_args } => tasks::e2e(&root, &pytest_args),
        Command::Bench { args } => tasks::bench(&root, &args),
        Command::Soak { args } => tasks::soak(&root, &args, true),
    }
}

/// The workspace root: xtask lives one level below it.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}
