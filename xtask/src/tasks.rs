//! The test, lint and end-to-end tasks: what `.ci/run` and the workflows call.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs a command, echoing it, and fails if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    println!("$ {shown}");
    let status = cmd.status().with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// The cargo that runs us, so a toolchain override applies to the children too.
pub(crate) fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root);
    // Incremental caches roughly add a quarter to the disk a full build needs, and CI
    // runners have little to spare; a developer can still opt in by setting it.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// `cargo fmt --check`, clippy with warnings denied, then hadolint and actionlint.
pub(crate) fn lint(root: &Path) -> Result<()> {
    ensure_components(root)?;
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]))?;
    crate::charts::lint_shipping(root)
}

/// The Rust tests, which include the codegen freshness check.
pub(crate) fn unit(root: &Path) -> Result<()> {
    run(cargo(root).args(["test", "--workspace", "--all-features"]))
}

/// Every test: lint, the Rust tests, the charts, the end-to-end suite against the official
/// Python client, the demo, a scaffolded agent's checks, and one image built and run (the CI
/// workflow tests every image).
pub(crate) fn test(root: &Path) -> Result<()> {
    lint(root)?;
    unit(root)?;
    crate::charts::check(root)?;
    e2e(root, &[])?;
    crate::demo::demo(root)?;
    // A CI-sized soak: every async agent under injected faults, no task wrongly failed.
    soak(root, &["--seconds", "4", "--concurrency", "8", "--fault-percent", "3"].map(String::from), false)?;
    crate::new_agent::check(root)?;
    crate::images::test(root, &crate::images::TestArgs::default())
}

/// Builds the agent binaries the suite starts, prepares the Python environment, runs pytest.
pub(crate) fn e2e(root: &Path, pytest_args: &[String]) -> Result<()> {
    // Same features as `cargo test --workspace --all-features`, so its build is reused.
    run(cargo(root).args(["build", "--workspace", "--all-features", "--bins", "--example", "test_agent"]))?;
    let venv = crate::tools::venv(root, "e2e-venv", &root.join("tests/e2e/requirements.txt"))?;
    let bin = venv.join("bin");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    run(Command::new(bin.join("python"))
        .current_dir(root)
        .env("PATH", path)
        .env("AGENT_TEST_BINARY", root.join("target/debug/examples/test_agent"))
        .env("AGENT_BIN_DIR", root.join("target/debug"))
        .args(["-m", "pytest", "tests/e2e", "-q", "-p", "no:cacheprovider"])
        .args(pytest_args))
}

/// Builds the test agent and the benchmark in release mode and runs the benchmark.
pub(crate) fn bench(root: &Path, args: &[String]) -> Result<()> {
    run(cargo(root).args([
        "build",
        "--release",
        "--workspace",
        "--bins",
        "--example",
        "test_agent",
        "--example",
        "bench",
    ]))?;
    run(Command::new(root.join("target/release/examples/bench")).args(args))
}

/// The soak harness (`bench --soak`): release binaries for the full run, or the debug
/// build the end-to-end suite made for the short run in `cargo xtask test`.
pub(crate) fn soak(root: &Path, args: &[String], release: bool) -> Result<()> {
    let profile = if release { "release" } else { "debug" };
    let mut build = cargo(root);
    build.args(["build", "--workspace", "--all-features", "--bins", "--example", "bench"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    run(Command::new(root.join("target").join(profile).join("examples/bench")).arg("--soak").args(args))
}

/// A minimal rustup profile lacks rustfmt and clippy; add them rather than fail.
fn ensure_components(root: &Path) -> Result<()> {
    let have = |sub: &str| cargo(root).args([sub, "--version"]).output().is_ok_and(|o| o.status.success());
    if have("fmt") && have("clippy") {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
}
