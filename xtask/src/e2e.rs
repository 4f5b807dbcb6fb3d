//! `cargo xtask e2e`: the end-to-end suite (`tests/e2e`), the agent binaries driven by
//! the official flyteidl Python client.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::exec::{cargo, run};

/// Builds the agent binaries the suite starts, prepares the Python environment, runs pytest.
pub(crate) fn e2e(root: &Path, pytest_args: &[String]) -> Result<()> {
    // Same features as `cargo test --workspace --all-features`, so its build is reused.
    run(cargo(root).args(["build", "--workspace", "--all-features", "--bins"]))?;
    let venv = crate::tools::venv(root, "e2e-venv", &root.join("tests/e2e/requirements.txt"))?;
    let bin = venv.join("bin");
    // Azurite (Azure Blob Storage's emulator) comes from npm; the other storage emulators
    // (moto, gcp-storage-emulator) are in the Python environment.
    let node = crate::tools::node_tools(root, "e2e-node", &root.join("tests/e2e/package.json"))?;
    let path = format!("{}:{}:{}", bin.display(), node.display(), std::env::var("PATH").unwrap_or_default());
    run(Command::new(bin.join("python"))
        .current_dir(root)
        .env("PATH", path)
        .env("AGENT_TEST_BINARY", root.join("target/debug/test_agent"))
        .env("AGENT_BIN_DIR", root.join("target/debug"))
        .args(["-m", "pytest", "tests/e2e", "-q", "-p", "no:cacheprovider"])
        .args(pytest_args))
}
