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
    // Clients and servers differ in one thing: the servers' codec reports a request that
    // does not decode as INVALID_ARGUMENT (tonic's prost codec says INTERNAL), while a
    // client that cannot decode a response keeps the prost codec's INTERNAL. tonic-build
    // takes one codec per run, so each service goes through two generators.
    let clients = tonic_prost_build::configure().build_client(true).build_server(false).service_generator();
    let servers = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path(SERVER_CODEC)
        .service_generator();
    let mut config = tonic_prost_build::Config::new();
    config.service_generator(Box::new(Both(clients, servers)));
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_fds_with_config(fds.clone(), config)
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

/// The codec of the generated servers (`crates/agent-core/src/grpc/codec.rs`).
const SERVER_CODEC: &str = "crate::grpc::codec::RequestCodec";

/// Runs two service generators over each service, in order: a service's client, then its
/// server, as one tonic-build run with both would.
struct Both(Box<dyn prost_build::ServiceGenerator>, Box<dyn prost_build::ServiceGenerator>);

impl prost_build::ServiceGenerator for Both {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        self.0.generate(service.clone(), buf);
        self.1.generate(service, buf);
    }

    fn finalize(&mut self, buf: &mut String) {
        self.0.finalize(buf);
        self.1.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.0.finalize_package(package, buf);
        self.1.finalize_package(package, buf);
    }
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
        let root = crate::workspace::root();
        let generated = generate(&root).unwrap();
        let stale = stale_files(&root.join(GEN_DIR), &generated).unwrap();
        assert!(stale.is_empty(), "stale generated files: {stale:?}; run `cargo xtask codegen`");
    }
}
