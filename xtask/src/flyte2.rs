//! `cargo xtask flyte2`: the Flyte 2 oracle suite (`tests/flyte2`). Tasks serialized by
//! flyte-sdk and its connector plugins (pinned in `tests/flyte2/requirements.txt`, in their
//! own venv: flytekit's e2e venv pins other versions of shared packages) go both to
//! flyte-sdk's own connector code, run in-process with its service calls captured, and to
//! our agent binaries against the emulators; the suite asserts the same external requests.

use std::path::Path;

use anyhow::Result;

use crate::exec::{cargo, run};

/// Builds the binaries the suite starts (the build `cargo xtask e2e` makes, so after it this
/// is a no-op), prepares `target/flyte2-venv`, runs pytest.
pub(crate) fn flyte2(root: &Path, pytest_args: &[String]) -> Result<()> {
    run(cargo(root).args(["build", "--workspace", "--all-features", "--bins"]))?;
    let venv = crate::tools::venv(root, "flyte2-venv", &root.join("tests/flyte2/requirements.txt"))?;
    run(crate::tools::pytest(&venv, root, "tests/flyte2")
        .env("AGENT_BIN_DIR", root.join("target/debug"))
        .args(pytest_args))
}
