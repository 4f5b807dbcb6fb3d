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

/// `cargo xtask package-charts`: one `.tgz` per chart (library included; the umbrella chart
/// with every agent chart inside) in `out`.
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

/// Packages each chart with the release version as both chart version and appVersion (the
/// image tag), from a copy of `charts/` whose Chart.yaml files carry that version: the agent
/// charts first (their library resolved), then the umbrella chart, which packs the agent
/// charts as its dependencies and so needs them at the release version too.
const PACKAGE: &str = r#"
import pathlib, shutil, sys, tempfile
import helm_python as helm
import yaml
charts, out, version = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
helm.disable_logging()
with tempfile.TemporaryDirectory() as tmp:
    copy = pathlib.Path(tmp) / "charts"
    shutil.copytree(charts, copy, symlinks=True, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    dirs = [p for p in sorted(copy.iterdir()) if (p / "Chart.yaml").is_file() and p.name != "agent-common"]
    dirs.sort(key=lambda p: not p.name.startswith("agent-"))
    for chart in dirs:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        meta["version"] = meta["appVersion"] = version
        for dep in meta.get("dependencies", []):
            if dep["name"] != "agent-common":
                dep["version"] = version
        (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    for chart in dirs:
        helm.dependency_update(chart)
        print(helm.package(chart, destination=out, version=version, app_version=version))
"#;
