//! `cargo xtask`: every automation task of the workspace (codegen, tests, benchmarks,
//! the demo). CI and the GitHub workflows call these subcommands and nothing else.

mod codegen;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Codegen { check } => codegen::run(&root, check),
    }
}

/// The workspace root: xtask lives one level below it.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}
