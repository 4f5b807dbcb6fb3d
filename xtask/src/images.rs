//! `cargo xtask build-images`, `image-test` and `push-manifest`: one container image per
//! agent from `docker/Dockerfile`.
//!
//! The binaries are built here with cargo for the host's musl target (static, so the
//! image can be `FROM scratch`), staged into a small build context with the CA bundle and
//! a passwd file, then handed to whichever engine the machine has: docker buildx where a
//! Docker daemon answers, else buildah or podman with chroot isolation, which need no
//! daemon and no registry (the CI machines have neither).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::exec::{cargo, output, run};
use crate::workspace::free_port;
use crate::{tools, workspace};

/// The default registry images are tagged for.
pub(crate) const DEFAULT_REGISTRY: &str = "ghcr.io/flyte-agents-rs";

/// The non-root user and group the images run as.
const USER: &str = "65532:65532";

/// Options of `cargo xtask build-images`.
#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// Agent to build (repeatable; by default every crates/agent-* except agent-core).
    #[arg(long = "agent", value_name = "NAME")]
    agents: Vec<String>,
    /// Image tag [default: the workspace version].
    #[arg(long)]
    tag: Option<String>,
    /// Registry (and namespace) images are named under.
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    registry: String,
    /// Push the images after building them.
    #[arg(long)]
    push: bool,
    /// Print the commands without running them.
    #[arg(long)]
    dry_run: bool,
    /// Container engine [default: docker if its daemon answers, else buildah, else podman].
    #[arg(long, value_enum)]
    engine: Option<Engine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    Docker,
    Buildah,
    Podman,
}

impl Engine {
    fn docker_daemon() -> bool {
        tools::have("docker") && Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success())
    }

    fn detect() -> Result<Self> {
        if Self::docker_daemon() {
            return Ok(Self::Docker);
        }
        if tools::have("buildah") {
            return Ok(Self::Buildah);
        }
        if tools::have("podman") {
            return Ok(Self::Podman);
        }
        // No engine at all: the daemonless one can be installed from the distribution.
        tools::ensure_commands(&[("buildah", "buildah")])?;
        Ok(Self::Buildah)
    }

    /// The engine's command with the storage settings that work without privileges
    /// beyond root in a container: vfs unless `STORAGE_DRIVER` says otherwise.
    fn command(self) -> Command {
        let mut cmd = Command::new(match self {
            Self::Docker => "docker",
            Self::Buildah => "buildah",
            Self::Podman => "podman",
        });
        if self != Self::Docker && std::env::var_os("STORAGE_DRIVER").is_none() {
            cmd.args(["--storage-driver", "vfs"]);
        }
        cmd
    }
}

/// The Rust target and OCI platform for the machine's architecture.
fn host_platform() -> Result<(&'static str, &'static str)> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => ("x86_64-unknown-linux-musl", "linux/amd64"),
        "aarch64" => ("aarch64-unknown-linux-musl", "linux/arm64"),
        other => bail!("no musl image build for the {other} architecture"),
    })
}

/// The agents named on the command line (all if none), checked against the crates.
fn select_agents(root: &Path, wanted: &[String]) -> Result<Vec<String>> {
    let all = workspace::agents(root)?;
    if wanted.is_empty() || wanted.iter().any(|w| w == "all") {
        return Ok(all);
    }
    for w in wanted {
        let name = w.strip_prefix("agent-").unwrap_or(w);
        ensure!(all.iter().any(|a| a == name), "no agent {w:?}; the agents are {}", all.join(", "));
    }
    Ok(wanted.iter().map(|w| w.strip_prefix("agent-").unwrap_or(w).to_owned()).collect())
}

/// One built image.
#[derive(Debug)]
pub(crate) struct Built {
    agent: String,
    image: String,
}

/// `cargo xtask build-images`.
pub(crate) fn build(root: &Path, args: &BuildArgs) -> Result<Vec<Built>> {
    let agents = select_agents(root, &args.agents)?;
    let version = workspace::version(root)?;
    let tag = args.tag.clone().unwrap_or_else(|| version.clone());
    let (target, platform) = host_platform()?;
    let engine = match args.engine {
        Some(engine) => engine,
        None if args.dry_run => Engine::detect().unwrap_or(Engine::Buildah),
        None => Engine::detect()?,
    };
    let context = root.join("target/images/context");

    // `cargo auditable build`: each binary carries its dependency list, so scanners can
    // tell which crates (and versions) a stripped static binary holds.
    let mut cargo_build = cargo(root);
    cargo_build.args(["auditable", "build", "--release", "--locked", "--target", target]);
    for agent in &agents {
        cargo_build.args(["--package", &format!("agent-{agent}"), "--bin", &format!("agent-{agent}")]);
    }
    if args.dry_run {
        println!("would run: {}", shown(&cargo_build));
    } else {
        tools::ensure_rust_target(target)?;
        // aws-lc-sys (rustls' crypto) compiles C, and for musl that takes musl-gcc.
        tools::ensure_commands(&[("musl-gcc", "musl-tools")])?;
        let auditable = tools::cargo_tool(root, "cargo-auditable", "cargo-auditable", tools::CARGO_AUDITABLE)?;
        run(cargo_build.env("PATH", with_path(&auditable)?))?;
        stage_context(root, &context, target, &agents)?;
        write_sboms(root, &context, &agents)?;
    }

    let revision = output(Command::new("git").current_dir(root).args(["rev-parse", "HEAD"])).unwrap_or_default();
    // The commit time, not the wall clock: the same commit builds the same labels.
    let created = output(Command::new("git").current_dir(root).args(["log", "-1", "--format=%cI"])).unwrap_or_default();
    let mut built = Vec::new();
    for agent in &agents {
        let image = format!("{}/agent-{agent}:{tag}", args.registry.trim_end_matches('/'));
        let mut build = engine.command();
        match engine {
            Engine::Docker => {
                build.args(["buildx", "build", "--platform", platform, if args.push { "--push" } else { "--load" }])
            }
            Engine::Buildah => build.args(["bud", "--isolation", "chroot", "--platform", platform]),
            Engine::Podman => build.args(["build", "--isolation", "chroot", "--platform", platform]),
        };
        build
            .arg("--file")
            .arg(root.join("docker/Dockerfile"))
            .args(["--build-arg", &format!("AGENT={agent}")])
            .args(["--build-arg", &format!("VERSION={tag}")])
            .args(["--build-arg", &format!("REVISION={revision}")])
            .args(["--build-arg", &format!("CREATED={created}")])
            .args(["--tag", &image])
            .arg(&context);
        let mut push = engine.command();
        push.args(["push", &image]);
        if engine == Engine::Buildah {
            push.arg(format!("docker://{image}"));
        }
        if args.dry_run {
            println!("would run: {}", shown(&build));
            if args.push && engine != Engine::Docker {
                println!("would run: {}", shown(&push));
            }
        } else {
            run(&mut build)?;
            if args.push && engine != Engine::Docker {
                run(&mut push)?;
            }
        }
        built.push(Built { agent: agent.clone(), image });
    }
    let verb = match (args.dry_run, args.push) {
        (true, _) => "would build",
        (false, true) => "built and pushed",
        (false, false) => "built",
    };
    println!("{verb} with {engine:?} for {platform}:");
    for b in &built {
        println!("  {}", b.image);
    }
    Ok(built)
}

/// A command as it would be typed.
fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(s, " {}", arg.to_string_lossy());
    }
    s
}

/// The build context: `bin/agent-*` and the `rootfs/` files a scratch image needs.
fn stage_context(root: &Path, context: &Path, target: &str, agents: &[String]) -> Result<()> {
    if context.exists() {
        std::fs::remove_dir_all(context)?;
    }
    let bin = context.join("bin");
    let etc = context.join("rootfs/etc");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(etc.join("ssl/certs"))?;
    for agent in agents {
        let name = format!("agent-{agent}");
        std::fs::copy(root.join("target").join(target).join("release").join(&name), bin.join(&name))?;
    }
    std::fs::copy(ca_bundle()?, etc.join("ssl/certs/ca-certificates.crt"))?;
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/:/sbin/nologin\nagent:x:65532:65532:agent:/:/sbin/nologin\n")?;
    std::fs::write(etc.join("group"), "root:x:0:\nagent:x:65532:\n")?;
    Ok(())
}

/// `PATH` with `dir` first.
fn with_path(dir: &Path) -> Result<std::ffi::OsString> {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)))?)
}

/// Where the SBOM of an agent's image is written beside the image (CI keeps it as an
/// artifact); the same file is inside the image at [`SBOM_IN_IMAGE`].
pub(crate) fn sbom_path(root: &Path, agent: &str) -> PathBuf {
    root.join("target/images/sbom").join(format!("agent-{agent}.cdx.json"))
}

/// Where the image keeps its SBOM (see docker/Dockerfile).
const SBOM_IN_IMAGE: &str = "usr/share/doc/agent/sbom.cdx.json";

/// One CycloneDX SBOM per agent, read back from what `cargo auditable` embedded in the
/// staged binary, so the SBOM lists exactly the crates linked into what ships.
fn write_sboms(root: &Path, context: &Path, agents: &[String]) -> Result<()> {
    let tool = tools::cargo_tool(root, "auditable2cdx", "auditable2cdx", tools::AUDITABLE2CDX)?;
    std::fs::create_dir_all(context.join("sbom"))?;
    for agent in agents {
        let binary = context.join("bin").join(format!("agent-{agent}"));
        let sbom = output(Command::new(tool.join("auditable2cdx")).arg(&binary))
            .with_context(|| format!("reading the dependency list cargo auditable embedded in {}", binary.display()))?;
        check_sbom(&sbom, agent)?;
        std::fs::write(context.join("sbom").join(format!("agent-{agent}.cdx.json")), &sbom)?;
        let beside = sbom_path(root, agent);
        std::fs::create_dir_all(beside.parent().unwrap_or(root))?;
        std::fs::write(&beside, &sbom)?;
    }
    Ok(())
}

/// An SBOM is CycloneDX JSON naming the agent's crate as the component it describes and
/// listing the crates every agent links (the gRPC server, the TLS stack, agent-core).
fn check_sbom(text: &str, agent: &str) -> Result<()> {
    let bom: Value = serde_json::from_str(text).context("the SBOM is not JSON")?;
    ensure!(bom["bomFormat"] == "CycloneDX", "the SBOM is not CycloneDX: {}", bom["bomFormat"]);
    let name = format!("agent-{agent}");
    ensure!(
        bom["metadata"]["component"]["name"] == name.as_str(),
        "the SBOM describes {}",
        bom["metadata"]["component"]["name"]
    );
    let components: Vec<&str> =
        bom["components"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    for needed in ["agent-core", "tonic", "rustls", "tokio"] {
        ensure!(components.contains(&needed), "the SBOM of {name} does not list {needed}");
    }
    Ok(())
}

/// The machine's CA bundle: the agents call BigQuery, Databricks, Snowflake and OpenAI
/// over HTTPS and a scratch image has no certificates of its own.
fn ca_bundle() -> Result<PathBuf> {
    let candidates = [
        std::env::var("SSL_CERT_FILE").unwrap_or_default(),
        "/etc/ssl/certs/ca-certificates.crt".into(),
        "/etc/pki/tls/certs/ca-bundle.crt".into(),
        "/etc/ssl/cert.pem".into(),
    ];
    candidates
        .iter()
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no CA certificate bundle found; set SSL_CERT_FILE to one")
}

/// Options of `cargo xtask push-manifest`.
#[derive(Debug, clap::Args)]
pub(crate) struct ManifestArgs {
    /// Agent (repeatable; by default every agent).
    #[arg(long = "agent", value_name = "NAME")]
    agents: Vec<String>,
    /// The multi-arch tag to create; the per-arch images are `TAG-ARCH`.
    #[arg(long)]
    tag: String,
    /// Architectures pushed before, e.g. amd64 and arm64.
    #[arg(long = "arch", required = true)]
    arches: Vec<String>,
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    registry: String,
    /// Print the commands without running them.
    #[arg(long)]
    dry_run: bool,
}

/// `cargo xtask push-manifest`: joins per-architecture images pushed by `build-images
/// --tag TAG-ARCH --push` on native runners into one multi-arch tag.
pub(crate) fn push_manifest(root: &Path, args: &ManifestArgs) -> Result<()> {
    for agent in select_agents(root, &args.agents)? {
        let image = format!("{}/agent-{agent}:{}", args.registry.trim_end_matches('/'), args.tag);
        let sources: Vec<String> = args.arches.iter().map(|a| format!("{image}-{a}")).collect();
        let mut cmd = Command::new("docker");
        cmd.args(["buildx", "imagetools", "create", "--tag", &image]).args(&sources);
        if args.dry_run {
            println!("would run: {}", shown(&cmd));
        } else {
            run(&mut cmd)?;
        }
    }
    Ok(())
}

/// Options of `cargo xtask image-test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Agent to test (repeatable, or `all`).
    #[arg(long = "agent", value_name = "NAME", default_value = "openai")]
    agents: Vec<String>,
    /// Container engine [default: as for build-images].
    #[arg(long, value_enum)]
    engine: Option<Engine>,
}

impl Default for TestArgs {
    fn default() -> Self {
        // The OpenAI image serves a sync and an async agent: the widest single check.
        Self { agents: vec!["openai".into()], engine: None }
    }
}

/// `cargo xtask image-test`: builds the images, runs each one, and checks from outside
/// that it is healthy and lists its task types, as Kubernetes and Propeller would.
pub(crate) fn test(root: &Path, args: &TestArgs) -> Result<()> {
    let build_args = BuildArgs {
        agents: args.agents.clone(),
        tag: Some("test".into()),
        registry: "localhost/flyte-agents".into(),
        push: false,
        dry_run: false,
        engine: args.engine,
    };
    if args.engine != Some(Engine::Docker) && !Engine::docker_daemon() {
        // Everything a daemonless run needs, in one apt transaction.
        tools::ensure_commands(&[("buildah", "buildah"), ("umoci", "umoci"), ("musl-gcc", "musl-tools")])?;
    }
    let engine = match args.engine {
        Some(engine) => engine,
        None => Engine::detect()?,
    };
    let venv = tools::tools_venv(root)?;
    let built = build(root, &BuildArgs { engine: Some(engine), ..build_args })?;
    let mut report = String::new();
    for b in &built {
        let result = match engine {
            Engine::Docker => run_docker(root, &venv, b)?,
            Engine::Buildah | Engine::Podman => run_unpacked(root, &venv, engine, b)?,
        };
        let _ = writeln!(
            report,
            "  {:<48} {:>6.1} MiB compressed  {:>6.1} MiB on disk  SERVING after {:>4} ms  task types: {}",
            b.image,
            result.compressed as f64 / 1048576.0,
            result.unpacked as f64 / 1048576.0,
            result.ready.as_millis(),
            result.task_types.join(", ")
        );
    }
    println!("image test passed:\n{report}");
    Ok(())
}

/// What a run of an image showed.
struct Observed {
    compressed: u64,
    unpacked: u64,
    ready: Duration,
    task_types: Vec<String>,
}

/// Runs an image without a daemon: export it as an OCI layout, unpack it with umoci, and
/// start its entrypoint in the unpacked root with the image's user and environment.
fn run_unpacked(root: &Path, venv: &Path, engine: Engine, built: &Built) -> Result<Observed> {
    let work = root.join("target/images");
    let layout = work.join("oci");
    let bundle = work.join("bundle").join(&built.agent);
    if bundle.exists() {
        std::fs::remove_dir_all(&bundle)?;
    }
    std::fs::create_dir_all(bundle.parent().unwrap_or(&work))?;
    let layout_ref = format!("oci:{}:agent-{}", layout.display(), built.agent);
    run(engine.command().args(["push", &built.image, &layout_ref]))?;
    run(Command::new("umoci").args(["unpack", "--image", &layout_ref[4..]]).arg(&bundle))?;

    let config = read_image_config(&layout, &format!("agent-{}", built.agent))?;
    check_image_config(&config.config, &built.agent)?;
    let rootfs = bundle.join("rootfs");
    // What a container runtime (kubelet, docker) writes into every container: without a
    // resolver configuration musl waits 5 s for a DNS server on 127.0.0.1, which Google's
    // client asks about the metadata server at start-up.
    for file in ["etc/resolv.conf", "etc/hosts"] {
        if Path::new("/").join(file).is_file() {
            std::fs::copy(Path::new("/").join(file), rootfs.join(file))?;
        }
    }
    let sbom = std::fs::read_to_string(rootfs.join(SBOM_IN_IMAGE)).context("the image has no SBOM")?;
    check_sbom(&sbom, &built.agent)?;
    let certs = rootfs.join("etc/ssl/certs/ca-certificates.crt");
    ensure!(std::fs::metadata(&certs).is_ok_and(|m| m.len() > 0), "the image has no CA bundle");

    // The runtime spec umoci derived from the image: entrypoint, user, environment.
    let spec: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let process = &spec["process"];
    let argv: Vec<String> = process["args"]
        .as_array()
        .context("no process.args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let uid = process["user"]["uid"].as_u64().unwrap_or(0);
    let gid = process["user"]["gid"].as_u64().unwrap_or(0);
    ensure!(format!("{uid}:{gid}") == USER, "the image runs as {uid}:{gid}, not {USER}");
    let (grpc, metrics) = (free_port()?, free_port()?);
    let mut cmd = Command::new("chroot");
    cmd.arg(format!("--userspec={uid}:{gid}"))
        .arg(&rootfs)
        .args(&argv)
        .args(["--listen-address", "127.0.0.1", "--port", &grpc.to_string()])
        .args(["--metrics-port", &metrics.to_string()])
        .env_clear();
    for var in process["env"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if let Some((k, v)) = var.split_once('=') {
            cmd.env(k, v);
        }
    }
    let started = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("starting the unpacked image")?;
    let mut child = Running(child);
    let (ready, task_types) = probe(root, venv, &built.agent, grpc, metrics, started)?;

    // SIGTERM, as the kubelet sends it: the agent must drain and exit cleanly.
    run(Command::new("kill").args(["-TERM", &child.0.id().to_string()]))?;
    let status = wait_timeout(&mut child.0, Duration::from_secs(30))?;
    ensure!(status.success(), "the agent exited with {status} after SIGTERM");
    Ok(Observed { compressed: config.compressed, unpacked: dir_size(&rootfs)?, ready, task_types })
}

/// Kills the child if the test fails half way.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_timeout(child: &mut std::process::Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(Instant::now() < deadline, "the agent did not exit within {limit:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An image's config from an OCI layout, and the compressed size of its layers.
struct ImageConfig {
    config: Value,
    compressed: u64,
}

fn read_image_config(layout: &Path, tag: &str) -> Result<ImageConfig> {
    let blob = |digest: &str| -> Result<Value> {
        let (alg, hex) = digest.split_once(':').context("bad digest")?;
        Ok(serde_json::from_slice(&std::fs::read(layout.join("blobs").join(alg).join(hex))?)?)
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .context("image not in the OCI layout")?;
    let manifest = blob(manifest["digest"].as_str().unwrap_or_default())?;
    let compressed = manifest["layers"].as_array().into_iter().flatten().filter_map(|l| l["size"].as_u64()).sum();
    let config = blob(manifest["config"]["digest"].as_str().unwrap_or_default())?;
    Ok(ImageConfig { config, compressed })
}

/// The image config promised by `docker/Dockerfile`: entrypoint, non-root user, both ports,
/// OCI labels.
fn check_image_config(image: &Value, agent: &str) -> Result<()> {
    let config = &image["config"];
    ensure!(
        config["Entrypoint"] == serde_json::json!(["/usr/local/bin/agent"]),
        "entrypoint is {}",
        config["Entrypoint"]
    );
    ensure!(config["User"] == USER, "user is {}", config["User"]);
    for port in ["8000/tcp", "9090/tcp"] {
        ensure!(config["ExposedPorts"].get(port).is_some(), "port {port} is not exposed");
    }
    let labels = &config["Labels"];
    for label in
        ["org.opencontainers.image.source", "org.opencontainers.image.version", "org.opencontainers.image.revision"]
    {
        ensure!(labels[label].as_str().is_some_and(|v| !v.is_empty()), "label {label} is missing");
    }
    ensure!(
        labels["org.flyte.agent.name"] == agent,
        "label org.flyte.agent.name is {}",
        labels["org.flyte.agent.name"]
    );
    Ok(())
}

/// Runs an image with Docker (a developer laptop or a GitHub runner).
fn run_docker(root: &Path, venv: &Path, built: &Built) -> Result<Observed> {
    let inspect = output(Command::new("docker").args(["image", "inspect", &built.image]))?;
    let inspect: Value = serde_json::from_str(&inspect)?;
    check_image_config(&serde_json::json!({"config": inspect[0]["Config"]}), &built.agent)?;
    let (grpc, metrics) = (free_port()?, free_port()?);
    let started = Instant::now();
    let id = output(Command::new("docker").args([
        "run",
        "--detach",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--publish",
        &format!("127.0.0.1:{grpc}:8000"),
        "--publish",
        &format!("127.0.0.1:{metrics}:9090"),
        &built.image,
    ]))?;
    let probed = probe(root, venv, &built.agent, grpc, metrics, started);
    let copied = root.join("target/images").join(format!("sbom-of-{}.json", built.agent));
    let sbom = output(Command::new("docker").arg("cp").arg(format!("{id}:/{SBOM_IN_IMAGE}")).arg(&copied))
        .and_then(|_| Ok(std::fs::read_to_string(&copied)?));
    let stop = output(Command::new("docker").args(["stop", "--time", "30", &id]));
    let code = output(Command::new("docker").args(["inspect", "--format", "{{.State.ExitCode}}", &id]));
    let _ = Command::new("docker").args(["rm", "--force", &id]).output();
    let (ready, task_types) = probed?;
    check_sbom(&sbom.context("the image has no SBOM")?, &built.agent)?;
    stop?;
    ensure!(code? == "0", "the agent did not exit cleanly after SIGTERM");
    let size = inspect[0]["Size"].as_u64().unwrap_or(0);
    Ok(Observed { compressed: size, unpacked: size, ready, task_types })
}

/// From outside the image: gRPC health (what the kubelet's probe asks), ListAgents (what
/// Propeller asks), and the metrics endpoint (what Prometheus scrapes).
fn probe(
    root: &Path,
    venv: &Path,
    agent: &str,
    grpc: u16,
    metrics: u16,
    started: Instant,
) -> Result<(Duration, Vec<String>)> {
    let target = format!("127.0.0.1:{grpc}");
    let grpcurl = |args: &[&str]| {
        tools::venv_command(venv, "grpcurl")
            .args(["-plaintext", "-max-time", "2"])
            .args(args)
            .output()
            .map(|o| (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()))
    };
    let deadline = started + Duration::from_secs(20);
    let ready = loop {
        let (ok, out) = grpcurl(&[&target, "grpc.health.v1.Health/Check"])?;
        if ok && out.contains("\"SERVING\"") {
            break started.elapsed();
        }
        ensure!(Instant::now() < deadline, "the image's agent was not SERVING within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (ok, out) = grpcurl(&["-d", "{}", &target, "flyteidl.service.AgentMetadataService/ListAgents"])?;
    ensure!(ok, "ListAgents failed: {out}");
    let listed: Value = serde_json::from_str(&out).context("ListAgents output")?;
    let mut task_types: Vec<String> = listed["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["supportedTaskCategories"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    task_types.sort();
    let mut expected = workspace::task_types(root, agent)?;
    expected.sort();
    ensure!(task_types == expected, "the image lists {task_types:?}; its chart routes {expected:?}");

    let mut conn = TcpStream::connect(("127.0.0.1", metrics)).context("connecting to the metrics port")?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    conn.read_to_string(&mut body)?;
    ensure!(body.starts_with("HTTP/1.1 200"), "metrics endpoint answered {}", body.lines().next().unwrap_or(""));
    Ok((ready, task_types))
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}
