//! `cargo xtask charts` and `package-charts`: the Helm charts under `charts/`, checked and
//! packaged with Helm's own Go SDK (the `helm-python-sdk` binding), offline.
//!
//! There is no helm binary to install on these machines, so the checks live in a pytest
//! suite (`tests/charts`) that renders every chart with several value sets and validates
//! the manifests against Kubernetes' strict schemas.

use std::path::Path;

use anyhow::{Context, Result};

use crate::tasks::run;
use crate::tools;

/// The task types an agent's chart routes, from its `agents.flyte.org/*-task-types`
/// annotations (the e2e suite checks them against the agent's ListAgents answer).
pub(crate) fn task_types(root: &Path, agent: &str) -> Result<Vec<String>> {
    let chart = root.join("charts").join(format!("agent-{agent}")).join("Chart.yaml");
    let text = std::fs::read_to_string(&chart).with_context(|| format!("reading {}", chart.display()))?;
    let mut types = Vec::new();
    for kind in ["async", "sync"] {
        let key = format!("agents.flyte.org/{kind}-task-types:");
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(key.as_str()))
            .with_context(|| format!("{} has no {key} annotation", chart.display()))?;
        types.extend(
            value.trim().trim_matches('"').split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from),
        );
    }
    Ok(types)
}

/// `cargo xtask charts`: lint, render, validate (see `tests/charts`).
pub(crate) fn check(root: &Path) -> Result<()> {
    check_in(root, root, &[])
}

/// The chart suite of the tree at `tree` (the workspace, or a copy of it), with the tools
/// of the workspace at `root`; `pytest_args` narrows it.
pub(crate) fn check_in(root: &Path, tree: &Path, pytest_args: &[&str]) -> Result<()> {
    let venv = tools::tools_venv(root)?;
    let mut pytest = tools::venv_command(&venv, "python");
    pytest.current_dir(tree).args(["-m", "pytest", "tests/charts", "-q", "-p", "no:cacheprovider"]).args(pytest_args);
    run(&mut pytest)
}

/// `cargo xtask package-charts`: one `.tgz` per agent chart (library included) in `out`.
pub(crate) fn package(root: &Path, version: Option<&str>, out: &Path) -> Result<()> {
    let venv = tools::tools_venv(root)?;
    std::fs::create_dir_all(out)?;
    let version = match version {
        Some(v) => v.trim_start_matches('v').to_owned(),
        None => crate::images::workspace_version(root)?,
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

/// Lints the Dockerfile and the GitHub workflows (part of `cargo xtask lint`).
pub(crate) fn lint_shipping(root: &Path) -> Result<()> {
    let venv = tools::tools_venv(root)?;
    run(tools::venv_command(&venv, "hadolint").current_dir(root).arg("docker/Dockerfile"))?;
    run(tools::venv_command(&venv, "actionlint").current_dir(root))?;
    let mut yamllint = tools::venv_command(&venv, "yamllint");
    yamllint.current_dir(root).args([
        "-s",
        "-d",
        "{extends: default, rules: {line-length: {max: 140}, truthy: {check-keys: false}, document-start: disable}}",
        ".github/workflows",
    ]);
    run(&mut yamllint)?;
    let mut schema = tools::venv_command(&venv, "check-jsonschema");
    schema.current_dir(root).args(["--builtin-schema", "vendor.github-workflows"]);
    for entry in std::fs::read_dir(root.join(".github/workflows"))? {
        schema.arg(entry?.path());
    }
    // A second opinion next to actionlint, from GitHub's published schema.
    run(&mut schema).context("a workflow does not match GitHub's workflow schema")
}
