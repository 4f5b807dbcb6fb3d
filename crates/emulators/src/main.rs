//! `emulators`: runs the service emulators on loopback ports for local runs and benchmarks.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "emulators", version, about = "Local emulators of the services Flyte agents call")]
struct Cli {
    /// Address to listen on (loopback by default; the emulators have no authentication).
    #[arg(long, default_value = "127.0.0.1", global = true)]
    bind: IpAddr,
    #[command(subcommand)]
    service: Service,
}

#[derive(Subcommand)]
enum Service {
    /// BigQuery jobs API (point agents at it with BIGQUERY_EMULATOR_HOST=host:port).
    Bigquery {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 9050)]
        port: u16,
        /// Milliseconds a job stays PENDING.
        #[arg(long, default_value_t = 100)]
        pending_ms: u64,
        /// Milliseconds a job stays RUNNING.
        #[arg(long, default_value_t = 400)]
        running_ms: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let running = match cli.service {
        Service::Bigquery { port, pending_ms, running_ms } => {
            let timing = emulators::bigquery::Timing {
                pending: std::time::Duration::from_millis(pending_ms),
                running: std::time::Duration::from_millis(running_ms),
            };
            emulators::bigquery::BigQuery::new(timing).start(SocketAddr::new(cli.bind, port)).await
        }
    };
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(message = "Cannot listen.", error = %e);
            return ExitCode::from(2);
        }
    };
    // The first line on stdout is the address, so scripts can start it on port 0.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", running.host());
    }
    tracing::info!(message = "Emulator listening.", address = %running.addr());
    stop_signal().await;
    running.stop().await;
    ExitCode::SUCCESS
}

/// Ctrl-C, or SIGTERM from a process manager.
async fn stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
