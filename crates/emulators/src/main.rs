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
    /// BigQuery jobs API (point agents at it with BIGQUERY_EMULATOR_HOST=host:port) and
    /// Google's token endpoint for service-account keys (`POST /token`).
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
        /// A service-account key file (Google's JSON) whose account `POST /token` accepts
        /// (repeatable); jobs then run as the account whose access token created them.
        #[arg(long = "service-account", value_name = "FILE")]
        service_accounts: Vec<std::path::PathBuf>,
    },
    /// Databricks Jobs API 2.1 and OAuth token endpoint, over HTTPS with a fresh test CA.
    Databricks {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 9443)]
        port: u16,
        /// Where to write the test CA certificate (PEM) clients must trust.
        #[arg(long, value_name = "FILE")]
        ca_out: Option<std::path::PathBuf>,
        /// Serve plain HTTP instead of HTTPS.
        #[arg(long)]
        plain_http: bool,
        /// Accepted personal access token (repeatable).
        #[arg(long = "pat", default_value = "dapi-emulator-token")]
        pats: Vec<String>,
        /// OAuth client for client credentials, as ID:SECRET (repeatable).
        #[arg(long = "oauth-client", default_value = "emulator-client:emulator-secret")]
        oauth_clients: Vec<String>,
        /// Federated client for token exchange, as ID:SUBJECT_TOKEN (repeatable).
        #[arg(long = "federated-client", default_value = "emulator-federated-client:emulator-subject-jwt")]
        federated: Vec<String>,
        /// Lifetime of issued OAuth tokens, in seconds.
        #[arg(long, default_value_t = 3600)]
        token_ttl_secs: u64,
        /// Milliseconds a run stays PENDING.
        #[arg(long, default_value_t = 100)]
        pending_ms: u64,
        /// Milliseconds a run stays RUNNING.
        #[arg(long, default_value_t = 400)]
        running_ms: u64,
    },
    /// Snowflake SQL API v2 with key-pair JWT auth (point agents at it with SNOWFLAKE_BASE_URL).
    Snowflake {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 9060)]
        port: u16,
        /// A user and the public key (SPKI PEM file) registered for it, as ACCOUNT.USER=FILE
        /// (repeatable; the same user twice registers its second key, RSA_PUBLIC_KEY_2).
        #[arg(long = "user", value_name = "ACCOUNT.USER=FILE")]
        users: Vec<String>,
        /// Milliseconds a statement runs.
        #[arg(long, default_value_t = 300)]
        running_ms: u64,
    },
    /// OpenAI chat completions and Batch API (point agents at it with OPENAI_BASE_URL=http://HOST/v1).
    Openai {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 9070)]
        port: u16,
        /// Accepted API key (repeatable).
        #[arg(long = "api-key", default_value = "sk-emulator-key")]
        api_keys: Vec<String>,
        /// Milliseconds a batch spends in each state before completing.
        #[arg(long, default_value_t = 100)]
        step_ms: u64,
    },
}

fn pairs(v: &[String]) -> std::collections::HashMap<String, String> {
    v.iter().filter_map(|p| p.split_once(':')).map(|(a, b)| (a.to_owned(), b.to_owned())).collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let running = match cli.service {
        Service::Bigquery { port, pending_ms, running_ms, service_accounts } => {
            let timing = emulators::bigquery::Timing {
                pending: std::time::Duration::from_millis(pending_ms),
                running: std::time::Duration::from_millis(running_ms),
            };
            let mut bq = emulators::bigquery::BigQuery::new(timing);
            for file in &service_accounts {
                let key = std::fs::read_to_string(file).map_err(|e| e.to_string());
                bq = match key.and_then(|k| bq.with_service_account(&k)) {
                    Ok(bq) => bq,
                    Err(e) => {
                        tracing::error!(message = "Bad service account key.", file = %file.display(), error = %e);
                        return ExitCode::from(2);
                    }
                };
            }
            bq.start(SocketAddr::new(cli.bind, port)).await
        }
        Service::Databricks {
            port,
            ca_out,
            plain_http,
            pats,
            oauth_clients,
            federated,
            token_ttl_secs,
            pending_ms,
            running_ms,
        } => {
            let settings = emulators::databricks::Settings {
                pats,
                oauth_clients: pairs(&oauth_clients),
                federated: pairs(&federated),
                token_ttl: std::time::Duration::from_secs(token_ttl_secs),
                pending: std::time::Duration::from_millis(pending_ms),
                running: std::time::Duration::from_millis(running_ms),
            };
            let ca = if plain_http {
                None
            } else {
                match emulators::tls::TestCa::generate() {
                    Ok(ca) => Some(ca),
                    Err(e) => {
                        tracing::error!(message = "Cannot create the test CA.", error = %e);
                        return ExitCode::from(2);
                    }
                }
            };
            if let (Some(ca), Some(path)) = (&ca, &ca_out)
                && let Err(e) = std::fs::write(path, ca.ca_pem())
            {
                tracing::error!(message = "Cannot write the CA certificate.", path = %path.display(), error = %e);
                return ExitCode::from(2);
            }
            emulators::databricks::Databricks::new(settings).start(SocketAddr::new(cli.bind, port), ca.as_ref()).await
        }
        Service::Openai { port, api_keys, step_ms } => {
            let settings = emulators::openai::Settings {
                api_keys,
                step: std::time::Duration::from_millis(step_ms),
                ..emulators::openai::Settings::default()
            };
            emulators::openai::OpenAi::new(settings).start(SocketAddr::new(cli.bind, port)).await
        }
        Service::Snowflake { port, users, running_ms } => {
            let mut keys = std::collections::HashMap::new();
            for u in &users {
                let Some((name, file)) = u.split_once('=') else {
                    tracing::error!(message = "--user takes ACCOUNT.USER=FILE.", value = %u);
                    return ExitCode::from(2);
                };
                match std::fs::read_to_string(file) {
                    // The same user twice: its second key (RSA_PUBLIC_KEY_2).
                    Ok(pem) => keys.entry(name.to_owned()).or_insert_with(String::new).push_str(&format!("{pem}\n")),
                    Err(e) => {
                        tracing::error!(message = "Cannot read the public key.", file = %file, error = %e);
                        return ExitCode::from(2);
                    }
                }
            }
            let settings =
                emulators::snowflake::Settings { users: keys, running: std::time::Duration::from_millis(running_ms) };
            match emulators::snowflake::Snowflake::new(settings) {
                Ok(sf) => sf.start(SocketAddr::new(cli.bind, port)).await,
                Err(e) => {
                    tracing::error!(message = "Bad user key.", error = %e);
                    return ExitCode::from(2);
                }
            }
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
