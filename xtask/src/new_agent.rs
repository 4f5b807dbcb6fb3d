//! `cargo xtask new-agent NAME`: scaffolds `crates/agent-NAME` (trait impl, config, main,
//! tests against a local emulator of the service) and `charts/agent-NAME` from
//! `xtask/templates/`. Nothing else needs registering: the workspace takes every crate
//! under `crates/`, `build-images` every `agent-*` crate, and the chart and e2e checks
//! every chart; only the umbrella chart `charts/flyte-agents` lists its agents by hand
//! (Chart.yaml, values.yaml, values.schema.json), and a chart test fails until it does.
//!
//! `cargo xtask new-agent-check` proves the scaffold works as generated: it copies the
//! working tree, scaffolds an agent into the copy, and runs its tests, clippy, rustfmt and
//! the chart checks there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::exec::run;
use crate::tools;

/// The spellings of an agent's name the templates use.
struct Names {
    /// `my-service`: crate `agent-my-service`, chart, image.
    kebab: String,
    /// `my_service`: Rust crate path, config section, task type.
    snake: String,
    /// `MyService`: type names.
    camel: String,
    /// `MY_SERVICE`: environment variables and secret names.
    upper: String,
}

impl Names {
    fn new(name: &str) -> Result<Self> {
        let name = name.strip_prefix("agent-").unwrap_or(name);
        let valid = name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.contains("--");
        ensure!(valid, "agent name {name:?}: use lower-case letters, digits and single dashes, e.g. my-service");
        ensure!(name != "core", "agent-core is the shared library, not an agent");
        let snake = name.replace('-', "_");
        let camel = name
            .split('-')
            .map(|part| {
                let mut c = part.chars();
                c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
            })
            .collect();
        Ok(Self { kebab: name.to_owned(), upper: snake.to_ascii_uppercase(), snake, camel })
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("__crate__", &self.snake)
            .replace("__section__", &self.snake)
            .replace("__task_type__", &self.snake)
            .replace("__Name__", &self.camel)
            .replace("__NAME__", &self.upper)
            .replace("__name__", &self.kebab)
    }
}

/// Copies `from` (a template folder) to `to`, filling in names and dropping `.tmpl`.
fn render_dir(from: &Path, to: &Path, names: &Names) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = to.join(name.strip_suffix(".tmpl").unwrap_or(&name));
        if entry.file_type()?.is_dir() {
            written.extend(render_dir(&entry.path(), &target, names)?);
        } else {
            std::fs::create_dir_all(to)?;
            std::fs::write(&target, names.fill(&std::fs::read_to_string(entry.path())?))?;
            written.push(target);
        }
    }
    Ok(written)
}

/// Scaffolds agent `name` into the workspace at `root`.
pub(crate) fn scaffold(root: &Path, name: &str) -> Result<()> {
    let names = Names::new(name)?;
    let krate = root.join("crates").join(format!("agent-{}", names.kebab));
    let chart = root.join("charts").join(format!("agent-{}", names.kebab));
    for existing in [&krate, &chart] {
        ensure!(!existing.exists(), "{} already exists", existing.display());
    }
    let templates = root.join("xtask/templates");
    let mut written = render_dir(&templates.join("agent"), &krate, &names)?;
    written.extend(render_dir(&templates.join("chart"), &chart, &names)?);
    // Every agent chart shares the one values schema.
    std::os::unix::fs::symlink("../agent-common/schema/agent-values.schema.json", chart.join("values.schema.json"))?;
    println!("Created agent-{} (task type {}):", names.kebab, names.snake);
    for path in &written {
        println!("  {}", path.strip_prefix(root).unwrap_or(path).display());
    }
    println!(
        "Next: make src/agent.rs speak the service's API and the emulator in tests/agent.rs speak it too, \
         then `cargo test -p agent-{0}`. The image (`cargo xtask build-images --agent {0}`) and the chart checks \
         pick it up by themselves; add it to the umbrella chart charts/flyte-agents (Chart.yaml, values.yaml, \
         values.schema.json).",
        names.kebab
    );
    Ok(())
}

/// `cargo xtask new-agent-check`.
pub(crate) fn check(root: &Path) -> Result<()> {
    let copy = root.join("target/scaffold-check");
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    copy_worktree(root, &copy)?;
    let checked = check_copy(root, &copy);
    // The copy's crates build into the main target dir under the same names (cargo names a
    // workspace crate's artifacts by its path within the workspace), and their fingerprints
    // then point at the copy's sources. Removing the copy makes those fingerprints stale, so
    // the next build in the checkout compiles its own sources again instead of reusing the
    // copy's artifacts.
    std::fs::remove_dir_all(&copy).with_context(|| format!("removing {}", copy.display()))?;
    checked
}

/// The checks of [`check`], in the copy at `copy`.
fn check_copy(root: &Path, copy: &Path) -> Result<()> {
    let copy = copy.to_path_buf();
    scaffold(&copy, "example-service")?;
    let cargo = |args: &[&str]| {
        let mut c = crate::exec::cargo(&copy);
        // Share the main build's dependencies; only the copy's workspace crates build again.
        c.env("CARGO_TARGET_DIR", root.join("target")).args(args);
        c
    };
    run(&mut cargo(&["fmt", "--package", "agent-example-service", "--check"]))?;
    run(&mut cargo(&["clippy", "--package", "agent-example-service", "--all-targets", "--", "-D", "warnings"]))?;
    run(&mut cargo(&["test", "--package", "agent-example-service"]))?;
    // The chart suite, as `cargo xtask charts` runs it, narrowed to the new chart.
    let tools_venv = tools::tools_venv(root)?;
    run(tools::pytest(&tools_venv, &copy, "tests/charts").args(["-k", "agent-example-service"]))?;
    // The chart's configuration starts the binary, which lists the task types the chart routes.
    run(&mut cargo(&["build", "--package", "agent-example-service", "--bin", "agent-example-service"]))?;
    let e2e = tools::venv(root, "e2e-venv", &root.join("tests/e2e/requirements.txt"))?;
    run(tools::pytest(&e2e, &copy, "tests/e2e/test_charts_agree.py")
        .env("AGENT_BIN_DIR", root.join("target/debug"))
        .args(["-k", "example-service"]))?;
    println!(
        "The scaffolded agent builds, passes clippy, rustfmt and its tests, its chart passes the chart checks, \
         and its binary serves what its chart routes."
    );
    Ok(())
}

/// The files git knows about (tracked, or new and not ignored), as they are on disk.
fn copy_worktree(root: &Path, to: &Path) -> Result<()> {
    let out = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output()
        .context("listing the working tree with git")?;
    if !out.status.success() {
        bail!("git ls-files failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for rel in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel)?);
        let (from, dest) = (root.join(rel), to.join(rel));
        let Ok(meta) = std::fs::symlink_metadata(&from) else { continue };
        std::fs::create_dir_all(dest.parent().unwrap_or(to))?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &dest)?;
        } else {
            std::fs::copy(&from, &dest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn files(dir: &Path, suffix: &str) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(suffix).map(str::to_owned))
            .collect()
    }

    /// The scaffold generates the shape every agent crate has, so copying either gives the
    /// same thing: the same common files, the trait impls in the agent modules, the service
    /// (or what a task may name: address rules, storage locations) declared once in `client.rs`,
    /// the settings and `HELP` (what `--help` lists, checked against them by a test) in
    /// `config.rs`, `registry` reading the section through `HELP` in `lib.rs`, `main.rs` the
    /// allocator and `agent_core::main!` with `HELP`, and no gRPC in the agent.
    #[test]
    fn every_agent_crate_has_the_scaffolds_shape() {
        let root = crate::workspace::root();
        let common: BTreeSet<String> = ["client", "config", "lib", "main"].map(String::from).into();
        let template_dir = root.join("xtask/templates/agent/src");
        let template = files(&template_dir, ".rs.tmpl");
        assert_eq!(template, &common | &BTreeSet::from(["agent".to_owned()]));
        // The scaffold has what the checks below ask of every agent crate.
        let tmpl = |f: &str| std::fs::read_to_string(template_dir.join(f)).unwrap();
        assert!(tmpl("config.rs.tmpl").contains("pub const HELP: Description"));
        assert!(tmpl("config.rs.tmpl").contains("conformance::description(&HELP)"));
        assert!(tmpl("lib.rs.tmpl").contains(".section_of(&HELP)"));
        assert!(tmpl("main.rs.tmpl").contains("agent___crate__::HELP"));
        let agents = crate::workspace::agents(&root).unwrap();
        assert!(agents.len() >= 4, "{agents:?}");
        for agent in agents {
            let dir = root.join(format!("crates/agent-{agent}"));
            let read = |f: &str| std::fs::read_to_string(dir.join("src").join(f)).unwrap();
            let src = files(&dir.join("src"), ".rs");
            assert!(src.is_superset(&common), "agent-{agent} lacks one of {common:?}: {src:?}");
            let impls: Vec<&String> = src
                .iter()
                .filter(|f| {
                    let text = read(&format!("{f}.rs"));
                    text.contains("impl AsyncAgent for") || text.contains("impl SyncAgent for")
                })
                .collect();
            // One agent: `agent.rs`. Several in one binary (OpenAI's): one module each, no agent.rs.
            let one = impls == [&"agent".to_owned()];
            let several = impls.len() > 1 && !src.contains("agent");
            assert!(one || several, "agent-{agent}: trait impls in {impls:?}");
            // client.rs says where calls go: the one service an agent calls, or, where a
            // task names the destination, what it may name: the webhook agent's address
            // rules, the sensor agent's storage locations.
            let client = read("client.rs");
            assert!(
                ["const SERVICE: Service", "rules: Arc<Rules>", "pub(crate) enum Location"]
                    .iter()
                    .any(|declared| client.contains(declared)),
                "agent-{agent}: client.rs declares no SERVICE, address rules or storage locations"
            );
            // config.rs describes the section for --help, and its test holds the two together.
            let config = read("config.rs");
            assert!(
                config.contains("pub const HELP: Description") && config.contains("conformance::description(&HELP)"),
                "agent-{agent}: config.rs has no HELP checked by conformance::description"
            );
            let lib = read("lib.rs");
            assert!(lib.contains("pub async fn registry("), "agent-{agent}: lib.rs has no registry");
            assert!(lib.contains(".section_of(&HELP)"), "agent-{agent}: lib.rs does not read its section through HELP");
            let main = read("main.rs");
            assert!(
                main.contains("#[global_allocator]")
                    && main.contains("agent_core::main!(")
                    && main.contains(&format!("agent_{}::HELP", agent.replace('-', "_"))),
                "agent-{agent}: {main}"
            );
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(!manifest.contains("tonic"), "agent-{agent} depends on tonic: only agent-core speaks gRPC");
        }
    }
}
