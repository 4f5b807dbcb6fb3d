//! Process start-up for agent binaries: flags, settings, telemetry, the gRPC server and
//! graceful shutdown on SIGTERM/SIGINT. An agent's `main` is a call to [`run`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tokio::net::TcpListener;

use crate::config::{CliArgs, ServerConfig, Settings};
use crate::describe::Description;
use crate::grpc::{self, ServeOptions};
use crate::registry::Registry;
use crate::secrets::SecretStore;
use crate::service::AgentService;

/// Turns transparent huge pages off for this process. An agent's memory is thousands of
/// small, short-lived call states; where the node backs the allocator's regions with 2 MiB
/// pages (THP `always`, or `madvise`, which mimalloc asks for), a whole page is resident
/// as soon as one call touches it. Measured with mimalloc (`bench -- --slow`): idle RSS
/// 21 → 13 MiB, and about 2 KiB less per call in flight. An agent that waits on network
/// services gains nothing from fewer TLB misses.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // Refused only by kernels before 3.15, which then keep their own setting.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Binds the gRPC port. `::` (the default) is one dual-stack socket, IPv6 and IPv4 alike,
/// whatever the host's `bindv6only` says, so the agent becomes ready on IPv4-only,
/// dual-stack and IPv6-only clusters. A host without IPv6 at all gets `0.0.0.0` instead,
/// with a warning. Returns the address actually bound, which the metrics port shares.
fn listen(address: IpAddr, port: u16) -> Result<(TcpListener, IpAddr), String> {
    let bind = |address: IpAddr| -> std::io::Result<TcpListener> {
        let at = SocketAddr::new(address, port);
        let socket = socket2::Socket::new(socket2::Domain::for_address(at), socket2::Type::STREAM, None)?;
        if address.is_ipv6() && address.is_unspecified() {
            socket.set_only_v6(false)?;
        }
        // A restarted agent rebinds at once, past connections still in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&at.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        TcpListener::from_std(socket.into())
    };
    let unspecified_v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    match bind(address) {
        Ok(l) => Ok((l, address)),
        Err(e) if address == unspecified_v6 && no_ipv6(&e) => {
            let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            let l =
                bind(v4).map_err(|e4| format!("port: cannot listen on [::]:{port} ({e}) nor on {v4}:{port} ({e4})"))?;
            tracing::warn!(message = "IPv6 is not available; listening on IPv4 only.", error = %e, address = %v4);
            Ok((l, v4))
        }
        Err(e) => Err(format!("port: cannot listen on {}: {e}", SocketAddr::new(address, port))),
    }
}

/// Whether a bind failed because the host has no IPv6 (the family is not supported, or
/// `::` is not an address here), not because the port is taken or not allowed.
fn no_ipv6(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if e.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error()) {
        return true;
    }
    e.kind() == std::io::ErrorKind::AddrNotAvailable
}

/// Names the binary in `--help`, logs and traces.
#[derive(Debug, Clone, Copy)]
pub struct BinaryInfo {
    /// Binary name, e.g. `agent-bigquery`.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Version shown by `--version`.
    pub version: &'static str,
    /// What the agent reads (its settings section, secrets, environment variables), which
    /// `--help` lists beside the server settings; `None` for a binary without a section.
    pub description: Option<&'static Description>,
}

#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: CliArgs,
}

/// The `main` of an agent binary: `agent_core::main!("one line for --help", registry,
/// HELP)`, where `registry` is the agent crate's `async fn registry(&Settings) ->
/// Result<Registry, String>` and `HELP` the [`Description`] of what it reads, which `--help`
/// lists. The binary's name and version come from its package. The allocator is the
/// binary's own choice (`#[global_allocator]` beside this).
#[macro_export]
macro_rules! main {
    ($about:expr, $registry:path, $description:path) => {
        fn main() -> ::std::process::ExitCode {
            let info = $crate::server::BinaryInfo {
                name: env!("CARGO_PKG_NAME"),
                about: $about,
                version: env!("CARGO_PKG_VERSION"),
                description: Some(&$description),
            };
            $crate::server::run(info, $registry)
        }
    };
}

/// Runs an agent binary: parses flags, loads settings, calls `build` to register the
/// agents (it may read its own config section), serves until SIGTERM or SIGINT, drains,
/// and exits 0. Bad flags or settings exit 2 with a message naming the setting.
pub fn run(info: BinaryInfo, build: impl AsyncFnOnce(&Settings) -> Result<Registry, String>) -> ExitCode {
    no_huge_pages();
    // Every setting with its default and variable, the secrets under the names this
    // process's FLYTE_SECRETS_* give them, and the variables read.
    let help = crate::describe::help(info.description, &SecretStore::from_process_env());
    let command = Cli::command().name(info.name).about(info.about).version(info.version).after_help(help);
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let settings = match Settings::load(&cli.args, None) {
        Ok(s) => s,
        Err(e) => return fail(info, &e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(info, &format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let telemetry = match crate::telemetry::init(&settings.server, info.name) {
            Ok(t) => t,
            Err(e) => return fail(info, &e),
        };
        let registry = match build(&settings).await {
            Ok(r) => r,
            Err(e) => return fail(info, &e),
        };
        if let Err(e) = settings.check_all_used() {
            return fail(info, &e.to_string());
        }
        let server =
            AgentServer::new(AgentService::new(registry, SecretStore::from_process_env()), settings.server.clone());
        let code = match server.serve_until(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(info, &e),
        };
        telemetry.shutdown();
        code
    })
}

fn fail(info: BinaryInfo, message: &str) -> ExitCode {
    // Logging may not be set up yet, and this must reach the operator either way.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{}: {message}", info.name);
    }
    ExitCode::from(2)
}

/// Resolves on the first SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A configured server for a set of agents.
#[derive(Debug)]
pub struct AgentServer {
    service: AgentService,
    config: ServerConfig,
}

impl AgentServer {
    /// A server for `service` with the given settings.
    pub fn new(service: AgentService, config: ServerConfig) -> Self {
        Self { service: service.limit_calls(config.max_concurrent_calls), config }
    }

    /// Binds the gRPC and metrics ports and serves until `shutdown` resolves, then drains.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
        let (listener, address) = listen(self.config.listen_address, self.config.port)?;
        if self.config.metrics_port != 0 {
            crate::telemetry::serve_metrics(SocketAddr::new(address, self.config.metrics_port))?;
        }
        self.serve_on(listener, shutdown).await
    }

    /// Serves on an already bound listener (tests bind port 0) until `shutdown` resolves.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        for a in self.service.list_agents() {
            let categories: Vec<String> = a.categories.iter().map(ToString::to_string).collect();
            tracing::info!(message = "Serving agent.", name = %a.name, categories = %categories.join(","), is_sync = a.is_sync);
        }
        let tls = self.config.tls.as_ref().map(grpc::ServerTls::new).transpose()?;
        let security = match &self.config.tls {
            None => "plaintext",
            Some(t) if t.client_ca_file.is_some() => "mutual TLS",
            Some(_) => "TLS",
        };
        tracing::info!(message = "Listening.", address = %addr, security, metrics_port = self.config.metrics_port);
        let options = ServeOptions {
            max_message_size: self.config.max_message_size,
            grace_period: self.config.grace_period,
            shutdown_delay: self.config.shutdown_delay,
            tls,
            http2: self.config.http2.clone(),
        };
        grpc::serve(self.service, listener, options, shutdown).await.map_err(|e| format!("gRPC server failed: {e}"))?;
        tracing::info!(message = "Stopped.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    #[tokio::test]
    async fn the_default_address_is_one_socket_for_ipv4_and_ipv6() {
        let (listener, bound) = super::listen(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).unwrap();
        let port = listener.local_addr().unwrap().port();
        if bound.is_ipv4() {
            // This host has no IPv6 at all: the fallback took over, IPv4 still works.
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            return;
        }
        assert!(listener.local_addr().unwrap().is_ipv6());
        // IPv4 clients reach the IPv6 socket (as ::ffff:127.0.0.1), so do IPv6 ones.
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("IPv4 on the dual-stack socket");
        let (peer, _) = listener.accept().await.unwrap();
        assert!(peer.peer_addr().unwrap().ip().to_canonical().is_loopback());
        if let Ok(_v6) = tokio::net::TcpStream::connect(("::1", port)).await {
            listener.accept().await.unwrap();
        }
        // An address that is not the default fails plainly, naming the setting.
        let taken = super::listen("127.0.0.1".parse().unwrap(), 0).unwrap().0;
        let again = super::listen("127.0.0.1".parse().unwrap(), taken.local_addr().unwrap().port());
        let err = again.expect_err("a port in use is refused");
        assert!(err.starts_with("port: cannot listen on 127.0.0.1:"), "{err}");
    }
}
