//! `cargo xtask lint`, `unit` and `check-crates`: the static checks and the Rust tests.
//!
//! `lint` also holds the workspace's `rust-version` to what the dependency tree needs:
//! cargo only warns (or fails on an old toolchain with a confusing error) when a
//! dependency needs a newer Rust than the workspace promises.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::exec::{cargo, output, run};
use crate::{tools, workspace};

/// `cargo fmt --check`, clippy with warnings denied, the workspace `rust-version` against
/// the dependencies', then hadolint, actionlint, yamllint and GitHub's workflow schema.
pub(crate) fn lint(root: &Path) -> Result<()> {
    tools::ensure_components(root)?;
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]))?;
    check_rust_version(root)?;
    lint_shipping(root)
}

/// The Rust tests, which include the codegen freshness check.
pub(crate) fn unit(root: &Path) -> Result<()> {
    run(cargo(root).args(["test", "--workspace", "--all-features"]))
}

/// `cargo xtask check-crates`: `cargo check` of each workspace crate on its own, once for
/// its library and binaries and once with its tests, examples and benches. A workspace
/// build unifies features across crates, so a crate that uses a feature only a sibling
/// turns on (agent-core's `mimalloc` or `test-util`, a tokio feature) builds there and
/// breaks for whoever builds it alone, as `cargo install` or a release of one agent does.
pub(crate) fn check_crates(root: &Path) -> Result<()> {
    let metadata = metadata(root)?;
    let crates = workspace_crates(&metadata)?;
    for name in &crates {
        run(cargo(root).args(["check", "--quiet", "--package", name]))?;
        run(cargo(root).args(["check", "--quiet", "--package", name, "--all-targets"]))?;
    }
    println!("each of {} crates checks on its own: {}", crates.len(), crates.join(", "));
    Ok(())
}

/// `cargo metadata` of the workspace, dependencies resolved from Cargo.lock.
fn metadata(root: &Path) -> Result<Value> {
    let json = output(cargo(root).args(["metadata", "--format-version", "1", "--locked"]))?;
    serde_json::from_str(&json).context("reading cargo metadata")
}

/// The names of the workspace's own crates, sorted.
fn workspace_crates(metadata: &Value) -> Result<Vec<String>> {
    let members = members(metadata)?;
    let mut names: Vec<String> = packages(metadata)?
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(&id)))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The package ids of the workspace's own crates.
fn members(metadata: &Value) -> Result<Vec<&str>> {
    let members = metadata["workspace_members"].as_array().context("cargo metadata lists no workspace_members")?;
    Ok(members.iter().filter_map(Value::as_str).collect())
}

/// Every package of the resolved tree, the workspace's own included.
fn packages(metadata: &Value) -> Result<&Vec<Value>> {
    metadata["packages"].as_array().context("cargo metadata lists no packages")
}

/// A `rust-version` (`1.91` or `1.91.0`) as comparable numbers.
fn parse_rust_version(v: &str) -> Result<[u64; 3]> {
    let mut parts = [0; 3];
    let mut fields = v.trim().split('.');
    for part in &mut parts {
        if let Some(field) = fields.next() {
            *part = field.parse().with_context(|| format!("rust-version {v:?} is not MAJOR.MINOR[.PATCH]"))?;
        }
    }
    if fields.next().is_some() || v.trim().is_empty() {
        bail!("rust-version {v:?} is not MAJOR.MINOR[.PATCH]");
    }
    Ok(parts)
}

/// The dependencies whose `rust-version` is above `ours`, as `(name version, needed)`,
/// the newest need first. The workspace's own crates inherit `ours` and are skipped.
fn newer_than(ours: &str, metadata: &Value) -> Result<Vec<(String, String)>> {
    let floor = parse_rust_version(ours)?;
    let members = members(metadata)?;
    let mut newer = Vec::new();
    for package in packages(metadata)? {
        if package["id"].as_str().is_some_and(|id| members.contains(&id)) {
            continue;
        }
        let Some(needed) = package["rust_version"].as_str() else { continue };
        let parsed = parse_rust_version(needed)?;
        if parsed > floor {
            let name =
                format!("{} {}", package["name"].as_str().unwrap_or("?"), package["version"].as_str().unwrap_or("?"));
            newer.push((parsed, name, needed.to_owned()));
        }
    }
    newer.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(newer.into_iter().map(|(_, name, needed)| (name, needed)).collect())
}

/// Fails when the workspace `rust-version` is below any dependency's in Cargo.lock.
pub(crate) fn check_rust_version(root: &Path) -> Result<()> {
    let ours = workspace::rust_version(root)?;
    let newer = newer_than(&ours, &metadata(root)?)?;
    if let Some((_, needed)) = newer.first() {
        let list: Vec<String> = newer.iter().map(|(name, needed)| format!("{name} needs {needed}")).collect();
        bail!(
            "the workspace promises rust-version {ours}, but {}; set rust-version = \"{needed}\" in the root Cargo.toml",
            list.join(", ")
        );
    }
    println!("rust-version {ours} covers every dependency in Cargo.lock");
    Ok(())
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tree() -> Value {
        json!({
            "workspace_members": ["path+file:///w/crates/agent-core#0.1.0"],
            "packages": [
                {"id": "path+file:///w/crates/agent-core#0.1.0", "name": "agent-core", "version": "0.1.0", "rust_version": "1.99"},
                {"id": "registry+x#google-cloud-auth@1.18.0", "name": "google-cloud-auth", "version": "1.18.0", "rust_version": "1.91.0"},
                {"id": "registry+x#tokio@1.48.0", "name": "tokio", "version": "1.48.0", "rust_version": "1.70"},
                {"id": "registry+x#old@1.0.0", "name": "old", "version": "1.0.0", "rust_version": null},
            ],
        })
    }

    #[test]
    fn a_dependency_needing_a_newer_rust_than_the_workspace_is_named() {
        assert_eq!(
            newer_than("1.88", &tree()).unwrap(),
            [("google-cloud-auth 1.18.0".to_owned(), "1.91.0".to_owned())]
        );
        assert!(newer_than("1.91", &tree()).unwrap().is_empty(), "1.91 and 1.91.0 are the same floor");
        assert!(newer_than("1.92.1", &tree()).unwrap().is_empty());
        assert!(newer_than("1.x", &tree()).is_err());
        assert_eq!(workspace_crates(&tree()).unwrap(), ["agent-core"]);
    }

    /// The real tree: the root Cargo.toml's `rust-version` is at least every dependency's
    /// in Cargo.lock (google-cloud-* need 1.91 while it said 1.88).
    #[test]
    fn workspace_rust_version_covers_every_dependency() {
        check_rust_version(&workspace::root()).unwrap();
    }
}
