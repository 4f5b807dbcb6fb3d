//! `cargo xtask deny`: cargo-deny over Cargo.lock with the root `deny.toml`: licenses,
//! duplicate versions, sources (crates.io only), and security advisories.
//!
//! The advisories come from the RustSec database, a git repository on github.com. Where
//! it cannot be fetched (some build machines reach only the package registries), the
//! advisory check is skipped with a line saying so and why, and the other three still
//! run; on GitHub Actions, where it is always reachable, a failed fetch fails the task.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::exec::run;
use crate::tools;

pub(crate) fn deny(root: &Path) -> Result<()> {
    let bin = tools::cargo_deny(root)?.join("cargo-deny");
    let deny = |args: &[&str]| -> Command {
        // Run as `cargo-deny`, not through cargo: it finds cargo (for `cargo metadata`)
        // through the CARGO variable cargo sets for us.
        let mut cmd = Command::new(&bin);
        cmd.current_dir(root).arg("--locked").args(args);
        cmd
    };
    let mut fetch = deny(&["fetch", "db"]);
    println!("$ {}", format!("{fetch:?}").replace('"', ""));
    let fetch = fetch.output()?;
    if fetch.status.success() {
        return run(&mut deny(&["check", "--disable-fetch"]));
    }
    let stderr = String::from_utf8_lossy(&fetch.stderr);
    let reason = stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no error message");
    if std::env::var_os("GITHUB_ACTIONS").is_some() {
        bail!("could not fetch the RustSec advisory database: {reason}");
    }
    let skipped = format!(
        "advisories: SKIPPED, the RustSec advisory database could not be fetched from this machine ({reason}); \
         licenses, bans and sources are checked, and advisories are checked wherever the database is reachable \
         (every CI run on GitHub)"
    );
    println!("{skipped}");
    run(&mut deny(&["check", "licenses", "bans", "sources"]))?;
    println!("{skipped}");
    Ok(())
}
