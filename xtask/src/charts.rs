//! `cargo xtask charts` and `package-charts`: the Helm charts under `charts/`, checked and
//! packaged with Helm's own Go SDK (the `helm-python-sdk` binding), offline.
//!
//! There is no helm binary to install on these machines, so the checks live in a pytest
//! suite (`tests/charts`) that renders every chart with several value sets and validates
//! the manifests against Kubernetes' strict schemas.

use std::path::Path;

use anyhow::Result;

use crate::exec::run;
use crate::{tools, workspace};

/// `cargo xtask charts`: lint, render, validate (see `tests/charts`).
pub(crate) fn check(root: &Path) -> Result<()> {
    let venv = tools::tools_venv(root)?;
    run(&mut tools::pytest(&venv, root, "tests/charts"))
}

/// `cargo xtask package-charts`: one `.tgz` per agent chart (library included) in `out`.
pub(crate) fn package(root: &Path, version: Option<&str>, out: &Path) -> Result<()> {
    let venv = tools::tools_venv(root)?;
    std::fs::create_dir_all(out)?;
    let version = match version {
        Some(v) => v.trim_start_matches('v').to_owned(),
        None => workspace::version(root)?,
    };
    let mut cmd = tools::venv_command(&venv, "python");
    cmd.current_dir(root).arg("-c").arg(PACKAGE).arg(root.join("charts")).arg(out).arg(&version);
    run(&mut cmd)
}

/// Resolves the library dependency and packages each agent chart with the release
/// version as both chart version and appVersion (the image tag).
const PACKAGE: &str = r#"
import pathlib, sys
import helm_python as helm
charts, out, version = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
helm.disable_logging()
for chart in sorted(p for p in charts.iterdir() if (p / "Chart.yaml").is_file() and p.name != "agent-common"):
    helm.dependency_update(chart)
    print(helm.package(chart, destination=out, version=version, app_version=version))
"#;
