//! `cargo xtask`: every automation task of the workspace (codegen, tests, benchmarks,
//! the demo). CI and the GitHub workflows call these subcommands and nothing else.

// A command-line tool: printing progress and results is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod codegen;
mod tasks;

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
    /// Run the demo: start an agent server and run tasks through it like Propeller does.
    Demo,
    /// Run every test: lint, Rust tests, and the end-to-end suite with the official Python client.
    Test,
    /// Check formatting and run clippy with warnings denied.
    Lint,
    /// Benchmark the agent server against a bare tonic server (release build).
    Bench {
        /// Arguments for the benchmark, e.g. `--seconds 10 --concurrency 64`.
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
        Command::Demo => tasks::demo(&root),
        Command::Test => tasks::test(&root),
        Command::Lint => tasks::lint(&root),
        Command::E2e { pytest_args } => tasks::e2e(&root, &pytest_args),
        Command::Bench { args } => tasks::bench(&root, &args),
    }
}

/// The workspace root: xtask lives one level below it.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}
