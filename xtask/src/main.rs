//! `cargo xtask`: every automation task of the workspace (codegen, tests, benchmarks,
//! the demo). CI and the GitHub workflows call these subcommands and nothing else.
//!
//! The modules stand in layers, every import pointing down (the test at the bottom of
//! this file holds them there):
//! - leaves, importing nothing from the crate: `exec` (running commands, capturing their
//!   output) and `workspace` (the root, version, `rust-version`, agents, chart task
//!   types, a free port);
//! - tools, importing only leaves: `tools` (venvs, apt packages, rustup targets and
//!   components, cargo-deny);
//! - one module per command, importing only leaves and tools, never each other: `bench`,
//!   `charts`, `codegen`, `demo`, `deny`, `e2e`, `flyte2`, `images`, `lint`, `new_agent`;
//! - this file: the command line, dispatch, and the `test` pipeline that strings the
//!   commands together.

// A command-line tool: printing progress and results is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod charts;
mod codegen;
mod demo;
mod deny;
mod e2e;
mod exec;
mod flyte2;
mod images;
mod lint;
mod new_agent;
mod tools;
mod workspace;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Automation for the Flyte agents workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the protocol code in crates/agent-core/src/gen from proto/.
    Codegen {
        /// Only check that the committed code is up to date.
        #[arg(long)]
        check: bool,
    },
    /// Run the demo: every agent against its local emulator, one sample task each through
    /// agentctl, like Propeller would run them.
    Demo,
    /// Run every test: lint, each crate checked alone, cargo-deny, Rust tests, chart checks,
    /// the end-to-end suite with the official Python client, the Flyte 2 oracle suite, the demo, a short soak, the
    /// scaffold check, and an image built, run and probed.
    Test,
    /// Check formatting, run clippy with warnings denied, check the workspace rust-version
    /// against the dependencies', lint the Dockerfile and workflows.
    Lint,
    /// `cargo check` each workspace crate on its own (no feature unification across crates).
    CheckCrates,
    /// cargo-deny: licenses, duplicate versions, sources, and advisories where the RustSec
    /// database can be fetched.
    Deny,
    /// Run the Rust tests (unit, integration, doc).
    Unit,
    /// Lint, render and validate every Helm chart offline.
    Charts,
    /// Package every agent chart into DIR (for releases).
    PackageCharts {
        /// Chart version and appVersion [default: the workspace version]; a leading `v` is dropped.
        #[arg(long)]
        version: Option<String>,
        /// Directory for the `.tgz` files.
        #[arg(long, default_value = "target/charts")]
        out: PathBuf,
    },
    /// Build one container image per agent (static musl binaries, FROM scratch).
    BuildImages(images::BuildArgs),
    /// Build images, run them, and check health, ListAgents and metrics from outside.
    ImageTest(images::TestArgs),
    /// Scaffold a new agent: crates/agent-NAME (trait impl, config, main, emulator-backed
    /// tests) and charts/agent-NAME.
    NewAgent {
        /// The agent's name, e.g. `my-service` (crate agent-my-service, task type my_service).
        name: String,
    },
    /// Scaffold an agent into a copy of the working tree and run its tests and checks there.
    NewAgentCheck,
    /// Join per-architecture images (TAG-ARCH) into one multi-arch tag.
    PushManifest(images::ManifestArgs),
    /// Benchmark the agent server against a bare tonic server (release build).
    Bench {
        /// Arguments for the benchmark, e.g. `--seconds 10 --concurrency 64`.
        args: Vec<String>,
    },
    /// Soak every async agent against its emulator with injected faults (release build);
    /// fails if a task fails wrongly or an external job is duplicated.
    Soak {
        /// Arguments, e.g. `--seconds 60 --concurrency 32 --fault-percent 5`.
        args: Vec<String>,
    },
    /// Run only the end-to-end suite (extra arguments go to pytest).
    E2e {
        /// Arguments for pytest, e.g. `-k sync`.
        pytest_args: Vec<String>,
    },
    /// Run only the Flyte 2 oracle suite: flyte-sdk's own connectors and our agents on the
    /// same flyte-sdk-serialized tasks (extra arguments go to pytest).
    Flyte2 {
        /// Arguments for pytest, e.g. `-k snowflake`.
        pytest_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace::root();
    match cli.command {
        Command::Codegen { check } => codegen::run(&root, check),
        Command::Demo => demo::demo(&root),
        Command::Test => test(&root),
        Command::Lint => lint::lint(&root),
        Command::CheckCrates => lint::check_crates(&root),
        Command::Deny => deny::deny(&root),
        Command::Unit => lint::unit(&root),
        Command::Charts => charts::check(&root),
        Command::PackageCharts { version, out } => charts::package(&root, version.as_deref(), &root.join(out)),
        Command::BuildImages(args) => images::build(&root, &args).map(drop),
        Command::ImageTest(args) => images::test(&root, &args),
        Command::NewAgent { name } => new_agent::scaffold(&root, &name),
        Command::NewAgentCheck => new_agent::check(&root),
        Command::PushManifest(args) => images::push_manifest(&root, &args),
        Command::E2e { pytest_args } => e2e::e2e(&root, &pytest_args),
        Command::Flyte2 { pytest_args } => flyte2::flyte2(&root, &pytest_args),
        Command::Bench { args } => bench::bench(&root, &args),
        Command::Soak { args } => bench::soak(&root, &args, true),
    }
}

/// Every test: lint, each crate checked alone, cargo-deny, the Rust tests, the charts, the
/// end-to-end suite against the official Python client, the Flyte 2 oracle suite against
/// flyte-sdk's own connectors, the demo, a short soak, a
/// scaffolded agent's checks, and one image built and run (the CI workflow tests every
/// image).
fn test(root: &Path) -> Result<()> {
    lint::lint(root)?;
    lint::check_crates(root)?;
    deny::deny(root)?;
    lint::unit(root)?;
    charts::check(root)?;
    e2e::e2e(root, &[])?;
    flyte2::flyte2(root, &[])?;
    demo::demo(root)?;
    // A CI-sized soak: every async agent under injected faults, no task wrongly failed.
    bench::soak(root, &["--seconds", "4", "--concurrency", "8", "--fault-percent", "3"].map(String::from), false)?;
    new_agent::check(root)?;
    images::test(root, &images::TestArgs::default())
}

/// The layering of the modules, checked from their source: a module may name (`crate::m`
/// or `super::m`) only modules of a lower layer, so the leaves stay leaves, the commands
/// never lean on each other, and no import cycle can come back.
#[cfg(test)]
mod layers {
    /// Every module and its layer. A new module gets its row here, or the test fails.
    const LAYERS: &[(&str, usize)] = &[
        ("exec", LEAF),
        ("workspace", LEAF),
        ("tools", TOOLS),
        ("bench", COMMAND),
        ("charts", COMMAND),
        ("codegen", COMMAND),
        ("demo", COMMAND),
        ("deny", COMMAND),
        ("e2e", COMMAND),
        ("flyte2", COMMAND),
        ("images", COMMAND),
        ("lint", COMMAND),
        ("new_agent", COMMAND),
        ("main", MAIN),
    ];
    const LEAF: usize = 0;
    const TOOLS: usize = 1;
    const COMMAND: usize = 2;
    const MAIN: usize = 3;
    const LAYER_NAMES: [&str; 4] = ["leaf", "tools", "command", "main"];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// `source` with comments removed and string and char literals emptied, so a path in
    /// a doc comment or a string (codegen's `"crate::grpc::…"`) is not taken for an import.
    fn code_only(source: &str) -> String {
        let s: Vec<char> = source.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        while i < s.len() {
            let at = |k: usize| s.get(k).copied().unwrap_or('\0');
            let ident_before = i > 0 && (s[i - 1].is_alphanumeric() || s[i - 1] == '_');
            if s[i] == '/' && at(i + 1) == '/' {
                while i < s.len() && s[i] != '\n' {
                    i += 1;
                }
            } else if s[i] == '/' && at(i + 1) == '*' {
                i += 2;
                while i < s.len() && !(s[i] == '*' && at(i + 1) == '/') {
                    i += 1;
                }
                i += 2;
            } else if s[i] == 'r' && !ident_before && (at(i + 1) == '"' || at(i + 1) == '#') {
                let mut j = i + 1;
                while at(j) == '#' {
                    j += 1;
                }
                if at(j) != '"' {
                    out.push(s[i]);
                    i += 1;
                    continue;
                }
                let hashes = j - i - 1;
                let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                let rest: String = s[j + 1..].iter().collect();
                i = j + 1 + rest.find(&close).map_or(rest.chars().count(), |k| rest[..k].chars().count() + close.len());
                out.push_str("\"\"");
            } else if s[i] == '"' {
                i += 1;
                while i < s.len() && s[i] != '"' {
                    i += if s[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            } else if s[i] == '\'' && at(i + 1) == '\\' {
                // An escaped char literal: '\'', '\\', '\n', '\u{…}'.
                i += 3;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if s[i] == '\'' && at(i + 2) == '\'' {
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    }

    /// The crate modules `source` names: the first segment after each `crate::` or
    /// `super::`, including each item of a `crate::{a, b::c}` group.
    fn named_modules(source: &str) -> Vec<String> {
        let code = code_only(source);
        let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
        let mut named = Vec::new();
        for prefix in ["crate::", "super::"] {
            for (at, _) in code.match_indices(prefix) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = code[at + prefix.len()..].trim_start();
                if let Some(group) = rest.strip_prefix('{') {
                    let (mut depth, mut item_start, mut items) = (0, 0, Vec::new());
                    for (k, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => {
                                items.push(&group[item_start..k]);
                                break;
                            }
                            '}' => depth -= 1,
                            ',' if depth == 0 => {
                                items.push(&group[item_start..k]);
                                item_start = k + 1;
                            }
                            _ => {}
                        }
                    }
                    named.extend(items.iter().map(|item| ident(item.trim())).filter(|m| !m.is_empty()));
                } else {
                    let m = ident(rest);
                    if !m.is_empty() {
                        named.push(m);
                    }
                }
            }
        }
        named
    }

    /// What breaks the layering in `files` (module name, source).
    fn violations(files: &[(String, String)]) -> Vec<String> {
        let mut found = Vec::new();
        for (module, _) in LAYERS {
            if !files.iter().any(|(m, _)| m == module) {
                found.push(format!("{module}.rs is in the layer table but not in xtask/src"));
            }
        }
        for (module, source) in files {
            let Some(own) = layer(module) else {
                found.push(format!("{module}.rs has no layer: add it to LAYERS in main.rs"));
                continue;
            };
            for named in named_modules(source) {
                if named == "self" || named == *module {
                    continue;
                }
                match layer(&named) {
                    Some(theirs) if theirs < own => {}
                    Some(theirs) => found.push(format!(
                        "{module} ({}) uses {named} ({}): a module may use only lower layers",
                        LAYER_NAMES[own], LAYER_NAMES[theirs]
                    )),
                    // An item of main.rs (the top layer), or a module missing from LAYERS.
                    None if own < MAIN => found.push(format!(
                        "{module} ({}) uses crate::{named}, which is not a module of a lower layer",
                        LAYER_NAMES[own]
                    )),
                    None => {}
                }
            }
        }
        found
    }

    fn sources() -> Vec<(String, String)> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let module = path.file_stem().unwrap().to_string_lossy().into_owned();
                files.push((module, std::fs::read_to_string(&path).unwrap()));
            }
        }
        files.sort();
        files
    }

    #[test]
    fn every_import_points_down() {
        let found = violations(&sources());
        assert!(found.is_empty(), "xtask's layering is broken:\n  {}", found.join("\n  "));
    }

    fn file(module: &str, source: &str) -> (String, String) {
        (module.to_owned(), source.to_owned())
    }

    /// The cycles the old layout had are each caught, and what is only a string or a
    /// comment is not.
    #[test]
    fn imports_sideways_or_up_are_caught() {
        let mut files: Vec<(String, String)> = LAYERS.iter().map(|(m, _)| file(m, "")).collect();
        let ok = violations(&files);
        assert!(ok.is_empty(), "{ok:?}");
        let set = |files: &mut Vec<(String, String)>, module: &str, source: &str| {
            files.iter_mut().find(|(m, _)| m == module).unwrap().1 = source.to_owned();
        };
        // A command using another command (charts <-> images, lint -> charts).
        set(&mut files, "charts", "use crate::images;\nfn f() { crate::images::workspace_version(); }");
        set(&mut files, "images", "use crate::{tools, charts::task_types};");
        // Tools using a command (tools -> tasks), a leaf using a leaf and main.rs.
        set(&mut files, "tools", "use crate::lint::run;");
        set(&mut files, "exec", "fn f() { let _ = crate::workspace::root(); crate::workspace_root(); }");
        // Not imports: a string, a comment, a char literal next to a path.
        set(&mut files, "codegen", "const C: &str = \"crate::grpc::codec\"; // crate::demo\nfn f() { '\"'; }");
        set(&mut files, "workspace", "/* crate::exec */ const R: &str = r#\"crate::exec \"# ;");
        files.push(file("extra", ""));
        let found = violations(&files);
        let expected = [
            "charts (command) uses images (command)",
            "images (command) uses charts (command)",
            "tools (tools) uses lint (command)",
            "exec (leaf) uses workspace (leaf)",
            "exec (leaf) uses crate::workspace_root, which is not",
            "extra.rs has no layer",
        ];
        for e in expected {
            assert!(found.iter().any(|f| f.starts_with(e)), "{e:?} not in {found:#?}");
        }
        // charts twice (use and call), the rest once each.
        assert_eq!(found.len(), expected.len() + 1, "{found:#?}");
        files.retain(|(m, _)| m != "demo");
        assert!(violations(&files).iter().any(|f| f.starts_with("demo.rs is in the layer table")));
    }
}
