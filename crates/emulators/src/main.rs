//! `emulators`: runs the service emulators on loopback ports for local runs and benchmarks,
//! each optionally slowed down and rate limited (`--latency-ms`, `--rate-limit`; see
//! `emulators::shaping`).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use emulators::tls::TestCa;
use emulators::{Shaping, ShapingSettings};

#[derive(Parser)]
#[command(name = "emulators", version, about = "Local emulators of the services Flyte agents call")]
struct Cli {
    /// Address to listen on (loopback by default; the emulators have no authentication).
    #[arg(long, default_value = "127.0.0.1", global = true)]
    bind: IpAddr,
    #[command(subcommand)]
    service: Service,
}

/// Latency and rate limit of the service's requests, shared by every emulator.
#[derive(Args)]
struct ShapingArgs {
    /// Median latency added to each service request, in milliseconds.
    #[arg(long, value_name = "MEDIAN")]
    latency_ms: Option<u64>,
    /// 99th percentile of that latency, in milliseconds (log-normal between the two; fixed
    /// latency without it). Needs --latency-ms.
    #[arg(long, value_name = "P99", requires = "latency_ms")]
    latency_p99_ms: Option<u64>,
    /// Requests per second the service accepts (token bucket); beyond, HTTP 429 with
    /// Retry-After and OpenAI's x-ratelimit-* headers.
    #[arg(long, value_name = "REQS_PER_SEC")]
    rate_limit: Option<f64>,
    /// The bucket's capacity: requests accepted in a burst (default: one second's worth).
    /// Needs --rate-limit.
    #[arg(long, value_name = "N", requires = "rate_limit")]
    burst: Option<u32>,
}

impl ShapingArgs {
    fn settings(&self) -> ShapingSettings {
        ShapingSettings {
            latency_ms: self.latency_ms,
            latency_p99_ms: self.latency_p99_ms,
            rate_limit: self.rate_limit,
            burst: self.burst,
        }
    }
}

/// HTTPS for the emulators that serve plain HTTP by default.
#[derive(Args)]
struct TlsArgs {
    /// Serve HTTPS (ALPN h2 and http/1.1) with a fresh test CA instead of plain HTTP.
    #[arg(long)]
    tls: bool,
    /// Where to write the test CA certificate (PEM) clients must trust. Needs --tls.
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca_out: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The test CA when `--tls` was given, its certificate written to `--ca-out`.
    fn ca(&self) -> Result<Option<TestCa>, ExitCode> {
        if self.tls { test_ca(self.ca_out.as_deref()).map(Some) } else { Ok(None) }
    }
}

/// A fresh test CA, its certificate written to `out`.
fn test_ca(out: Option<&std::path::Path>) -> Result<TestCa, ExitCode> {
    let ca = TestCa::generate().map_err(|e| {
        tracing::error!(message = "Cannot create the test CA.", error = %e);
        ExitCode::from(2)
    })?;
    if let Some(path) = out
        && let Err(e) = std::fs::write(path, ca.ca_pem())
    {
        tracing::error!(message = "Cannot write the CA certificate.", path = %path.display(), error = %e);
        return Err(ExitCode::from(2));
    }
    Ok(ca)
}

/// Applies the shaping flags, or says what is wrong with them.
fn shape(shaping: &Shaping, args: &ShapingArgs) -> Result<(), ExitCode> {
    shaping.apply(&args.settings()).map_err(|e| {
        tracing::error!(message = "Bad latency or rate-limit flags.", error = %e);
        ExitCode::from(2)
    })
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
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        shaping: ShapingArgs,
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
        #[command(flatten)]
        shaping: ShapingArgs,
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
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        shaping: ShapingArgs,
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
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        shaping: ShapingArgs,
    },
    /// An OpenTelemetry collector: traces received over OTLP/gRPC, listed at
    /// `GET /_emulator/otlp/spans` (point OTEL_EXPORTER_OTLP_ENDPOINT at http://ADDRESS).
    Otlp {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 4317)]
        port: u16,
    },
    /// A webhook receiver: any request answered 200 and remembered
    /// (`GET /_emulator/webhook/requests`); `/status/CODE` answers that status.
    Webhook {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 9080)]
        port: u16,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        shaping: ShapingArgs,
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
        Service::Bigquery { port, pending_ms, running_ms, service_accounts, tls, shaping } => {
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
            if let Err(code) = shape(bq.shaping(), &shaping) {
                return code;
            }
            let addr = SocketAddr::new(cli.bind, port);
            match tls.ca() {
                Ok(Some(ca)) => bq.start_https(addr, &ca).await,
                Ok(None) => bq.start(addr).await,
                Err(code) => return code,
            }
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
            shaping,
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
                match test_ca(ca_out.as_deref()) {
                    Ok(ca) => Some(ca),
                    Err(code) => return code,
                }
            };
            let db = emulators::databricks::Databricks::new(settings);
            if let Err(code) = shape(db.shaping(), &shaping) {
                return code;
            }
            db.start(SocketAddr::new(cli.bind, port), ca.as_ref()).await
        }
        Service::Openai { port, api_keys, step_ms, tls, shaping } => {
            let settings = emulators::openai::Settings {
                api_keys,
                step: std::time::Duration::from_millis(step_ms),
                ..emulators::openai::Settings::default()
            };
            let ai = emulators::openai::OpenAi::new(settings);
            if let Err(code) = shape(ai.shaping(), &shaping) {
                return code;
            }
            let addr = SocketAddr::new(cli.bind, port);
            match tls.ca() {
                Ok(Some(ca)) => ai.start_https(addr, &ca).await,
                Ok(None) => ai.start(addr).await,
                Err(code) => return code,
            }
        }
        Service::Otlp { port } => emulators::otlp::Collector::new().start(SocketAddr::new(cli.bind, port)).await,
        Service::Webhook { port, tls, shaping } => {
            let rx = emulators::webhook::Receiver::new();
            if let Err(code) = shape(rx.shaping(), &shaping) {
                return code;
            }
            let addr = SocketAddr::new(cli.bind, port);
            match tls.ca() {
                Ok(Some(ca)) => rx.start_https(addr, &ca).await,
                Ok(None) => rx.start(addr).await,
                Err(code) => return code,
            }
        }
        Service::Snowflake { port, users, running_ms, tls, shaping } => {
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
            let sf = match emulators::snowflake::Snowflake::new(settings) {
                Ok(sf) => sf,
                Err(e) => {
                    tracing::error!(message = "Bad user key.", error = %e);
                    return ExitCode::from(2);
                }
            };
            if let Err(code) = shape(sf.shaping(), &shaping) {
                return code;
            }
            let addr = SocketAddr::new(cli.bind, port);
            match tls.ca() {
                Ok(Some(ca)) => sf.start_https(addr, &ca).await,
                Ok(None) => sf.start(addr).await,
                Err(code) => return code,
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Service};

    #[test]
    fn every_emulator_takes_the_shaping_flags_and_https_where_plain_is_the_default() {
        Cli::command().debug_assert();
        let flags = ["--latency-ms", "10", "--latency-p99-ms", "40", "--rate-limit", "2.5", "--burst", "7"];
        for service in ["bigquery", "databricks", "snowflake", "openai", "webhook"] {
            let cli = Cli::try_parse_from(["emulators", service].into_iter().chain(flags)).unwrap();
            let shaping = match &cli.service {
                Service::Bigquery { shaping, .. }
                | Service::Databricks { shaping, .. }
                | Service::Snowflake { shaping, .. }
                | Service::Openai { shaping, .. }
                | Service::Webhook { shaping, .. } => shaping.settings(),
                Service::Otlp { .. } => unreachable!(),
            };
            let want = emulators::ShapingSettings {
                latency_ms: Some(10),
                latency_p99_ms: Some(40),
                rate_limit: Some(2.5),
                burst: Some(7),
            };
            assert_eq!(shaping, want, "{service}");
            // A p99 without a median, a burst without a rate: refused by the parser.
            assert!(Cli::try_parse_from(["emulators", service, "--latency-p99-ms", "5"]).is_err(), "{service}");
            assert!(Cli::try_parse_from(["emulators", service, "--burst", "5"]).is_err(), "{service}");
        }
        for service in ["bigquery", "snowflake", "openai", "webhook"] {
            let cli = Cli::try_parse_from(["emulators", service, "--tls", "--ca-out", "ca.pem"]).unwrap();
            let tls = match &cli.service {
                Service::Bigquery { tls, .. }
                | Service::Snowflake { tls, .. }
                | Service::Openai { tls, .. }
                | Service::Webhook { tls, .. } => tls,
                Service::Databricks { .. } | Service::Otlp { .. } => unreachable!(),
            };
            assert!(tls.tls && tls.ca_out.as_deref() == Some(std::path::Path::new("ca.pem")), "{service}");
            // Plain HTTP by default; a CA file without --tls is a mistake worth a refusal.
            let plain = Cli::try_parse_from(["emulators", service]).unwrap();
            assert!(
                matches!(plain.service, Service::Bigquery { ref tls, .. } | Service::Snowflake { ref tls, .. } | Service::Openai { ref tls, .. } | Service::Webhook { ref tls, .. } if !tls.tls)
            );
            assert!(Cli::try_parse_from(["emulators", service, "--ca-out", "ca.pem"]).is_err(), "{service}");
        }
    }
}
