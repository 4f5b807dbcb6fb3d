//! Facts about the workspace that several commands read: where it is, its version and
//! `rust-version`, its agents and the task types their charts route, and a free loopback
//! port. A leaf: it imports nothing from the crate, so any command may use it without
//! importing another command (see the layer table in `main.rs`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The workspace root: xtask lives one level below it.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// A `key = "value"` of the root manifest's `[workspace.package]` table.
fn package_field(root: &Path, key: &str) -> Result<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let prefix = format!("{key} = ");
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(|v| v.trim_matches('"').to_owned()))
        .with_context(|| format!("no {key} in [workspace.package]"))
}

/// The workspace version, from the root manifest.
pub(crate) fn version(root: &Path) -> Result<String> {
    package_field(root, "version")
}

/// The workspace's `rust-version` (the oldest Rust it promises to build with).
pub(crate) fn rust_version(root: &Path) -> Result<String> {
    package_field(root, "rust-version")
}

/// Every agent crate: `crates/agent-NAME` except agent-core.
pub(crate) fn agents(root: &Path) -> Result<Vec<String>> {
    let mut agents = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(agent) = name.strip_prefix("agent-")
            && agent != "core"
        {
            agents.push(agent.to_owned());
        }
    }
    agents.sort();
    Ok(agents)
}

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

/// A loopback port nobody listens on right now (the OS picks it), for a child to bind.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_root_manifest() {
        let root = root();
        assert!(!version(&root).unwrap().is_empty());
        assert!(rust_version(&root).unwrap().starts_with("1."));
        let agents = agents(&root).unwrap();
        assert!(agents.iter().any(|a| a == "openai"), "{agents:?}");
        assert!(!agents.iter().any(|a| a == "core"), "agent-core is the library, not an agent");
        assert!(task_types(&root, "openai").unwrap().iter().any(|t| t == "chatgpt"));
    }
}
