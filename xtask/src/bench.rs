//! `cargo xtask bench` and `soak`: the benchmark harness and its soak mode against the
//! agents and their emulators.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::exec::{cargo, run};

/// Builds the test agent and the benchmark in release mode and runs the benchmark.
pub(crate) fn bench(root: &Path, args: &[String]) -> Result<()> {
    run(cargo(root).args(["build", "--release", "--workspace", "--bins"]))?;
    run(Command::new(root.join("target/release/bench")).args(args))
}

/// The soak harness (`bench --soak`): release binaries for the full run, or the debug
/// build the end-to-end suite made for the short run in `cargo xtask test`.
pub(crate) fn soak(root: &Path, args: &[String], release: bool) -> Result<()> {
    let profile = if release { "release" } else { "debug" };
    let mut build = cargo(root);
    build.args(["build", "--workspace", "--all-features", "--bins"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    run(Command::new(root.join("target").join(profile).join("bench")).arg("--soak").args(args))
}
