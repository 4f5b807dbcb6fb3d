//! `cargo xtask codegen`: compiles `proto/` into the Rust code committed under
//! `crates/agent-core/src/gen/`, with no system `protoc` (protox parses the files).
//!
//! The output is committed so that image builds and IDEs need no build script;
//! `--check` (and the `generated_code_is_fresh` test) prove it matches `proto/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::Message;

/// Proto files compiled; everything they import comes along.
const ROOTS: &[&str] =
    &["flyteidl/service/agent.proto", "flyteidl/core/errors.proto", "flyteidl2/connector/service.proto"];

/// Where the generated code lives, relative to the workspace root.
pub(crate) const GEN_DIR: &str = "crates/agent-core/src/gen";

/// File name of the encoded `FileDescriptorSet`, served by gRPC reflection and
/// compared with the official descriptors by the compatibility test.
pub(crate) const DESCRIPTOR_FILE: &str = "descriptor.bin";

pub(crate) fn run(root: &Path, check: bool) -> Result<()> {
    let generated = generate(root)?;
    let gen_dir = root.join(GEN_DIR);
    if check {
        let stale = stale_files(&gen_dir, &generated)?;
        if !stale.is_empty() {
            bail!(
                "generated protocol code is stale ({}); run `cargo xtask codegen` and commit the result",
                stale.join(", ")
            );
        }
        return Ok(());
    }
    fs::create_dir_all(&gen_dir)?;
    for entry in fs::read_dir(&gen_dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !generated.contains_key(&name) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for (name, bytes) in &generated {
        fs::write(gen_dir.join(name), bytes)?;
    }
    Ok(())
}

/// Names of files whose committed content differs from a fresh generation.
pub(crate) fn stale_files(gen_dir: &Path, generated: &BTreeMap<String, Vec<u8>>) -> Result<Vec<String>> {
    let mut stale = Vec::new();
    for (name, bytes) in generated {
        match fs::read(gen_dir.join(name)) {
            Ok(existing) if &existing == bytes => {}
            _ => stale.push(name.clone()),
        }
    }
    for entry in fs::read_dir(gen_dir).with_context(|| format!("reading {}", gen_dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !generated.contains_key(&name) {
            stale.push(format!("{name} (not generated any more)"));
        }
    }
    Ok(stale)
}

/// Generates every file of `gen/` in memory: file name → content.
pub(crate) fn generate(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let proto_dir = root.join("proto");
    let mut fds = protox::compile(ROOTS, [&proto_dir]).context("compiling proto/")?;
    // Source positions would make the descriptor depend on formatting and bloat it.
    for file in &mut fds.file {
        file.source_code_info = None;
    }

    let out = scratch_dir()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_fds(fds.clone())
        .context("generating Rust code")?;

    let mut files = BTreeMap::new();
    for entry in fs::read_dir(&out)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).context("odd file name")?.to_owned();
        files.insert(name, fs::read(&path)?);
    }
    fs::remove_dir_all(&out)?;
    files.insert(DESCRIPTOR_FILE.to_owned(), fds.encode_to_vec());
    Ok(files)
}

fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-codegen-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when someone edits `proto/` without regenerating (or edits `gen/` by hand).
    #[test]
    fn generated_code_is_fresh() {
        let root = crate::workspace_root();
        let generated = generate(&root).unwrap();
        let stale = stale_files(&root.join(GEN_DIR), &generated).unwrap();
        assert!(stale.is_empty(), "stale generated files: {stale:?}; run `cargo xtask codegen`");
    }
}
