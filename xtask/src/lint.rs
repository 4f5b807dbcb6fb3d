//! `cargo xtask lint` and `unit`: the static checks and the Rust tests.

use std::path::Path;

use anyhow::{Context, Result};

use crate::exec::{cargo, run};
use crate::tools;

/// `cargo fmt --check`, clippy with warnings denied, then hadolint, actionlint, yamllint
/// and GitHub's workflow schema.
pub(crate) fn lint(root: &Path) -> Result<()> {
    tools::ensure_components(root)?;
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]))?;
    lint_shipping(root)
}

/// The Rust tests, which include the codegen freshness check.
pub(crate) fn unit(root: &Path) -> Result<()> {
    run(cargo(root).args(["test", "--workspace", "--all-features"]))
}

/// Lints the Dockerfile and the GitHub workflows (part of `cargo xtask lint`).
fn lint_shipping(root: &Path) -> Result<()> {
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
