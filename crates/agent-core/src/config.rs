//! Settings, layered with the `config` crate: built-in defaults < an optional YAML or
//! TOML file < `AGENT_*` environment variables < command-line flags.
//!
//! Server settings are top-level keys (`port`, `metrics_port`, …); each agent reads its
//! own section (`bigquery`, `databricks`, …) with [`Settings::section_of`], as its
//! [`Description`] describes it. Nested keys come from the environment with a double
//! underscore: `AGENT_BIGQUERY__PROJECT`. A list setting given as text (from the
//! environment or `--set`) is split at commas: `AGENT_DATABRICKS__ALLOWED_INSTANCES=a,b`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::describe::Description;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Settings every agent binary shares. (Serialized only for `--help`'s defaults.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. `::` by default: every interface, IPv6 and IPv4 (one
    /// dual-stack socket, as flytekit's `[::]:8000`); `127.0.0.1` keeps the agent
    /// reachable from this machine only.
    pub listen_address: IpAddr,
    /// gRPC port (Propeller's default endpoints use 8000).
    pub port: u16,
    /// Prometheus `/metrics` port; 0 turns the endpoint off.
    pub metrics_port: u16,
    /// Largest gRPC message accepted or sent, in bytes. Propeller sends inputs inline.
    ///
    /// 16 MiB by default: four times the 4 MiB that flytekit's Python agent server (gRPC's
    /// default) accepts, so any task Propeller could send to a Python agent fits. A
    /// request costs about twice its size while it is decoded (tonic's receive buffer, then
    /// the decoded message; the Flyte 2 front end's re-encoding frees the original first),
    /// so one maximum-size request peaks under 90 MiB against the charts' 256 MiB memory
    /// limit; raise that limit with this setting (`tests/limits.rs` measures both).
    pub max_message_size: usize,
    /// The operator's hard ceiling on calls in flight per agent (create, get, delete,
    /// execute); more wait for a slot within their deadline. Below it, each service
    /// endpoint's adaptive limit decides how many calls the service gets (see
    /// `agent_core::http::limit`). 4096 by default: far above what the service limits
    /// allow, and at the ~30 KiB an in-flight call costs (`cargo xtask bench -- --slow`),
    /// about 120 MiB over the ~13 MiB idle, inside the charts' 256 MiB.
    pub max_concurrent_calls: usize,
    /// How long in-flight calls may run after SIGTERM before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How long to keep serving (with health NOT_SERVING) after SIGTERM before refusing
    /// new calls, so load balancers can stop routing here first.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,agent_core=debug`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// TLS for the gRPC port; plaintext when absent (Propeller's default is `insecure: true`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Limits on HTTP/2 connections and calls, so idle or stalled clients cannot hold
    /// connections and memory forever.
    #[serde(default)]
    pub http2: Http2Config,
}

/// HTTP/2 connection and call limits (`http2.*`).
///
/// Propeller is unaffected by the defaults: it sends every call with a deadline (3–10 s
/// by default), starts a call as soon as it connects (ListAgents every 10 s), and gets
/// as many calls at once on its one connection as `max_concurrent_calls` allows (a client
/// past `max_concurrent_streams` queues its calls, it does not fail them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// How often the server pings an HTTP/2 connection to check that the peer is alive.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Calls (streams) open at once on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Time a new connection has to finish its TLS handshake (with TLS), the HTTP/2
    /// preface and the headers of its first call; connections that do not are closed.
    /// Clients reconnect by themselves for their next call.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest a call without a deadline (`grpc-timeout`) may run before it ends with
    /// DEADLINE_EXCEEDED; agents see it as the call's deadline. Calls that carry a
    /// deadline keep theirs, however long.
    #[serde(with = "humantime_serde")]
    pub max_call_duration: Duration,
}

impl Default for Http2Config {
    /// The same values as [`DEFAULTS`] (a test keeps them equal).
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 4096,
            header_read_timeout: Duration::from_secs(20),
            max_call_duration: Duration::from_secs(600),
        }
    }
}

/// Server TLS, and mutual TLS when a client CA is given (Propeller's `insecure: false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain the server presents.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (read at
    /// start-up).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate and key files are checked for a renewal, which new
    /// connections then get without a restart; `0s` turns the checks off.
    #[serde(default = "default_tls_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(60)
}

/// The built-in defaults, as a YAML document (`--help` shows them, read back through
/// [`ServerConfig`]).
pub const DEFAULTS: &str = "\
listen_address: \"::\"
port: 8000
metrics_port: 9090
max_message_size: 16777216
max_concurrent_calls: 4096
grace_period: 25s
shutdown_delay: 0s
log_format: human
log_level: info
http2:
  keepalive_interval: 60s
  keepalive_timeout: 20s
  max_concurrent_streams: 4096
  header_read_timeout: 20s
  max_call_duration: 10m
";

/// Keys of [`ServerConfig`]; anything else at the top level must be an agent section.
pub(crate) const SERVER_KEYS: &[&str] = &[
    "listen_address",
    "port",
    "metrics_port",
    "max_message_size",
    "max_concurrent_calls",
    "grace_period",
    "shutdown_delay",
    "log_format",
    "log_level",
    "tls",
    "http2",
];

/// Every server setting, for `--help`: its key, its flag (`""`: only `--set` sets it) and
/// one line about it. A test keeps it equal to [`ServerConfig`]'s keys, [`SERVER_KEYS`] and
/// the flags [`CliArgs`] has, so no setting goes unlisted.
pub(crate) const SERVER_SETTINGS: &[(&str, &str, &str)] = &[
    (
        "listen_address",
        "--listen-address",
        "Address to listen on; :: is every interface, IPv6 and IPv4 (one socket); 127.0.0.1 keeps the agent local.",
    ),
    ("port", "--port", "gRPC port: the agent services, gRPC health (the Kubernetes probe) and reflection."),
    ("metrics_port", "--metrics-port", "Prometheus /metrics port; 0 turns it off."),
    (
        "max_message_size",
        "--max-message-size",
        "Largest gRPC message received or sent, in bytes (Propeller sends inputs inline).",
    ),
    (
        "max_concurrent_calls",
        "--max-concurrent-calls",
        "Hard ceiling on calls in flight per agent; more wait for a slot within their deadline.",
    ),
    ("grace_period", "--grace-period", "How long in-flight calls may run after SIGTERM."),
    (
        "shutdown_delay",
        "",
        "How long to keep accepting calls after SIGTERM (health NOT_SERVING), so load balancers stop routing here.",
    ),
    ("log_format", "--log-format", "human (for a terminal) or json (one object per line)."),
    ("log_level", "--log-level", "Log filter, e.g. info or info,agent_core=debug; RUST_LOG overrides it."),
    (
        "tls.cert_file",
        "--tls-cert",
        "PEM certificate chain the server presents; with tls.key_file, gRPC is served over TLS (else plaintext).",
    ),
    ("tls.key_file", "--tls-key", "PEM private key of tls.cert_file."),
    (
        "tls.client_ca_file",
        "--tls-client-ca",
        "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).",
    ),
    (
        "tls.reload_interval",
        "",
        "How often the certificate and key files are checked for a renewal (no restart needed); 0s turns it off.",
    ),
    ("http2.keepalive_interval", "", "How often the server pings each connection to check that the peer is alive."),
    ("http2.keepalive_timeout", "", "How long a ping may go unanswered before the connection is closed."),
    (
        "http2.max_concurrent_streams",
        "",
        "Calls open at once on one connection; a client past it queues its next call until one ends.",
    ),
    (
        "http2.header_read_timeout",
        "",
        "Time a new connection has for its TLS handshake, the HTTP/2 preface and its first call's headers.",
    ),
    (
        "http2.max_call_duration",
        "",
        "The deadline of a call that carries none (grpc-timeout); calls with a deadline keep theirs.",
    ),
];

/// Command-line flags common to every agent binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CliArgs {
    /// Configuration file (YAML or TOML, by extension). Also `AGENT_CONFIG`.
    #[arg(long, env = "AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC port [default: 8000].
    #[arg(long)]
    pub port: Option<u16>,
    /// Prometheus metrics port, 0 to disable [default: 9090].
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// Address to listen on [default: ::, IPv6 and IPv4].
    #[arg(long, value_name = "IP")]
    pub listen_address: Option<IpAddr>,
    /// Largest gRPC message in bytes [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    /// Hard ceiling on calls in flight per agent [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_concurrent_calls: Option<usize>,
    /// Time allowed for in-flight calls after SIGTERM, e.g. 25s [default: 25s].
    #[arg(long, value_name = "DURATION")]
    pub grace_period: Option<String>,
    /// Log format [default: human].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or debug [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Serve gRPC over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA bundle (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Any setting as KEY=VALUE (repeatable), e.g. --set http2.max_call_duration=90s; a list as a,b.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// A configuration error, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Loaded settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server settings.
    pub server: ServerConfig,
    raw: config::Config,
    /// Agent sections read so far, so that [`Settings::check_all_used`] can tell a
    /// misspelled key from a section.
    sections: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// The environment `load` was given (tests); `None` reads the process environment.
    env: Option<std::sync::Arc<HashMap<String, String>>>,
}

impl Settings {
    /// Loads the layers, reading the environment from `env` (the process environment, or a
    /// map in tests).
    pub fn load(cli: &CliArgs, env: Option<HashMap<String, String>>) -> Result<Self, ConfigError> {
        let err = |e: config::ConfigError| ConfigError(e.to_string());
        let mut b = config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml));
        if let Some(path) = &cli.config {
            if !path.is_file() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            b = b.add_source(config::File::from(path.as_path()).required(true));
        }
        // Values stay text until a setting's type asks for a number: a secret such as
        // `0012345678` must reach the agent verbatim, not as the number 12345678.
        let mut environment =
            config::Environment::with_prefix("AGENT").prefix_separator("_").separator("__").try_parsing(false);
        let env = env.map(std::sync::Arc::new);
        if let Some(map) = &env {
            environment = environment.source(Some(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
        }
        b = b.add_source(environment);
        b = b
            .set_override_option("port", cli.port.map(i64::from))
            .map_err(err)?
            .set_override_option("metrics_port", cli.metrics_port.map(i64::from))
            .map_err(err)?
            .set_override_option("listen_address", cli.listen_address.map(|a| a.to_string()))
            .map_err(err)?
            .set_override_option("max_message_size", cli.max_message_size.map(|v| v.to_string()))
            .map_err(err)?
            .set_override_option("max_concurrent_calls", cli.max_concurrent_calls.map(|v| v.to_string()))
            .map_err(err)?
            .set_override_option("grace_period", cli.grace_period.clone())
            .map_err(err)?
            .set_override_option("log_format", cli.log_format.map(|f| format!("{f:?}").to_lowercase()))
            .map_err(err)?
            .set_override_option("log_level", cli.log_level.clone())
            .map_err(err)?
            .set_override_option("tls.cert_file", cli.tls_cert.as_ref().map(|p| p.display().to_string()))
            .map_err(err)?
            .set_override_option("tls.key_file", cli.tls_key.as_ref().map(|p| p.display().to_string()))
            .map_err(err)?
            .set_override_option("tls.client_ca_file", cli.tls_client_ca.as_ref().map(|p| p.display().to_string()))
            .map_err(err)?;
        for kv in &cli.overrides {
            let (k, v) = kv.split_once('=').ok_or_else(|| ConfigError(format!("--set {kv}: expected KEY=VALUE")))?;
            b = b.set_override(k.trim(), v.trim()).map_err(err)?;
        }
        let raw = b.build().map_err(err)?;
        let server = server_config(&raw)?;
        Ok(Self { server, raw, sections: Default::default(), env })
    }

    /// Fails, naming them, if the settings hold top-level keys that are neither server
    /// settings nor a section an agent read: a misspelled `max_concurent_calls` in a file
    /// or `AGENT_MAX_CONCURENT_CALLS` must stop start-up, not be silently ignored. Call it
    /// after every agent has read its section.
    pub fn check_all_used(&self) -> Result<(), ConfigError> {
        let table = self
            .raw
            .clone()
            .try_deserialize::<HashMap<String, config::Value>>()
            .map_err(|e| ConfigError(e.to_string()))?;
        let sections = self.sections.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut unknown: Vec<&String> = table
            .keys()
            // `AGENT_CONFIG` names the file; it is a flag's variable, not a setting.
            .filter(|k| !SERVER_KEYS.contains(&k.as_str()) && !sections.contains(*k) && k.as_str() != "config")
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort();
        let known: Vec<&str> = SERVER_KEYS.iter().copied().chain(sections.iter().map(String::as_str)).collect();
        let shown: Vec<String> =
            unknown.iter().map(|k| format!("{k} (AGENT_{} in the environment)", k.to_uppercase())).collect();
        Err(ConfigError(format!(
            "unknown setting{} {}; the settings are: {}",
            if unknown.len() == 1 { "" } else { "s" },
            shown.join(", "),
            known.join(", ")
        )))
    }

    /// An agent's section as its [`Description`] describes it: the section's key, the
    /// service's variables that default its keys, and its list settings, which are split at
    /// commas when given as text (the environment's and `--set`'s values always are).
    pub fn section_of<T: DeserializeOwned>(&self, described: &Description) -> Result<T, ConfigError> {
        self.read(described.section, described.env_defaults, &described.list_keys())
    }

    /// Section `key`, e.g. `bigquery`; a missing section deserializes from nothing, so types
    /// with defaults work without any configuration. `env_defaults` pairs a key of the
    /// section with the environment variable the service's own tools read for it (e.g.
    /// `("base_url", "SNOWFLAKE_BASE_URL")`): a non-blank variable is the key's default,
    /// below the file, `AGENT_*` and flags, so every agent layers such variables one way.
    /// Agents read theirs with [`Settings::section_of`], which also splits lists.
    pub fn section<T: DeserializeOwned>(&self, key: &str, env_defaults: &[(&str, &str)]) -> Result<T, ConfigError> {
        self.read(key, env_defaults, &[])
    }

    /// Section `key` with `lists` (keys within it) split from text.
    fn read<T: DeserializeOwned>(
        &self,
        key: &str,
        env_defaults: &[(&str, &str)],
        lists: &[String],
    ) -> Result<T, ConfigError> {
        if let Some(top) = key.split('.').next() {
            self.sections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(top.to_owned());
        }
        let err = |e: config::ConfigError| ConfigError(format!("{key}: {e}"));
        let mut layered = config::Config::builder().add_source(self.raw.clone());
        for (field, var) in env_defaults {
            let value = match &self.env {
                Some(map) => map.get(*var).cloned(),
                None => std::env::var(var).ok(),
            };
            if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
                layered = layered.set_default(format!("{key}.{field}"), value).map_err(err)?;
            }
        }
        let mut built = layered.build().map_err(err)?;
        // The environment and `--set` give text (values stay text, so a secret such as
        // `0012345678` arrives verbatim); a list setting's text is its comma-separated
        // items. The `config` crate's own `list_separator` applies only with
        // `try_parsing(true)`, which would turn every other variable into a number or a
        // bool first, so the split happens here, for the keys the type declares as lists.
        let mut split = config::Config::builder().add_source(built.clone());
        let mut any = false;
        for list in lists {
            let path = format!("{key}.{list}");
            let Ok(value) = built.get::<config::Value>(&path) else { continue };
            if let config::ValueKind::String(text) = &value.kind {
                split = split.set_override(&path, split_list(text)).map_err(err)?;
                any = true;
            }
        }
        if any {
            built = split.build().map_err(err)?;
        }
        match built.get::<T>(key) {
            Ok(v) => Ok(v),
            Err(config::ConfigError::NotFound(_)) => {
                serde_json::from_value(serde_json::json!({})).map_err(|e| ConfigError(format!("{key}: {e}")))
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// A list setting's text as its items: split at commas, each trimmed, empty ones dropped
/// (so an empty text is the empty list, which clears a default list).
fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

/// The server settings' defaults, serialized as `--help` shows them. TLS is off by default,
/// so its files have no default; its other keys show theirs.
pub(crate) fn server_defaults() -> Result<serde_json::Value, String> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml))
        .build()
        .map_err(|e| e.to_string())?;
    let server = server_config(&raw).map_err(|e| e.to_string())?;
    let mut value = serde_json::to_value(server).map_err(|e| e.to_string())?;
    let tls: TlsConfig = serde_json::from_value(serde_json::json!({"cert_file": "", "key_file": ""}))
        .map_err(|e| format!("tls: {e}"))?;
    let mut tls = serde_json::to_value(tls).map_err(|e| e.to_string())?;
    for file in ["cert_file", "key_file"] {
        tls[file] = serde_json::Value::Null;
    }
    value["tls"] = tls;
    Ok(value)
}

fn server_config(raw: &config::Config) -> Result<ServerConfig, ConfigError> {
    let table =
        raw.clone().try_deserialize::<HashMap<String, config::Value>>().map_err(|e| ConfigError(e.to_string()))?;
    let pick = |t: &HashMap<String, config::Value>| -> serde_json::Map<String, serde_json::Value> {
        SERVER_KEYS.iter().filter_map(|k| t.get(*k).map(|v| ((*k).to_owned(), value_to_json(v)))).collect()
    };
    let given = pick(&table);
    let parse = |m: serde_json::Map<String, serde_json::Value>| serde_json::from_value::<ServerConfig>(m.into());
    let parsed = parse(given.clone()).map_err(|e| {
        // serde reports the problem but not always the key; find the key whose value
        // alone breaks the defaults, and name it with every way to set it.
        let defaults = pick(&defaults_table());
        let key = SERVER_KEYS
            .iter()
            .find(|k| {
                let mut probe = defaults.clone();
                if let Some(v) = given.get(**k) {
                    probe.insert((**k).to_owned(), v.clone());
                }
                parse(probe).is_err()
            })
            .copied()
            .unwrap_or("server settings");
        if key == "tls" {
            return ConfigError(format!(
                "tls: {e} (set tls.cert_file and tls.key_file, optionally tls.client_ca_file, in the config file, \
                 as AGENT_TLS__CERT_FILE and AGENT_TLS__KEY_FILE, or with --tls-cert and --tls-key)"
            ));
        }
        if key == "http2" {
            return ConfigError(format!(
                "http2: {e} (set http2.<setting> in the config file, as AGENT_HTTP2__<SETTING> or with \
                 --set http2.<setting>=VALUE)"
            ));
        }
        ConfigError(format!(
            "{key}: {e} (set in the config file, as AGENT_{} or with --{})",
            key.to_uppercase(),
            key.replace('_', "-")
        ))
    })?;
    if parsed.max_message_size < 4 * 1024 {
        return Err(ConfigError("max_message_size: must be at least 4096 bytes".into()));
    }
    if parsed.max_concurrent_calls == 0 {
        return Err(ConfigError("max_concurrent_calls: must be at least 1".into()));
    }
    let h = &parsed.http2;
    for (key, value) in [
        ("keepalive_interval", h.keepalive_interval),
        ("keepalive_timeout", h.keepalive_timeout),
        ("header_read_timeout", h.header_read_timeout),
        ("max_call_duration", h.max_call_duration),
    ] {
        // Zero would mean "never" for some and "at once" for others; neither is a limit.
        if value.is_zero() {
            return Err(ConfigError(format!("http2.{key}: must be longer than 0s")));
        }
    }
    if h.max_concurrent_streams == 0 {
        return Err(ConfigError("http2.max_concurrent_streams: must be at least 1".into()));
    }
    Ok(parsed)
}

fn defaults_table() -> HashMap<String, config::Value> {
    config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize::<HashMap<String, config::Value>>())
        .unwrap_or_default()
}

fn value_to_json(v: &config::Value) -> serde_json::Value {
    use config::ValueKind as K;
    match &v.kind {
        K::Nil => serde_json::Value::Null,
        K::Boolean(b) => (*b).into(),
        K::I64(i) => (*i).into(),
        K::I128(i) => serde_json::Value::String(i.to_string()),
        K::U64(u) => (*u).into(),
        K::U128(u) => serde_json::Value::String(u.to_string()),
        K::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number),
        K::String(s) => parse_scalar(s),
        K::Table(t) => serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()),
        K::Array(a) => serde_json::Value::Array(a.iter().map(value_to_json).collect()),
    }
}

/// Strings from flags and `--set` are untyped; numbers in them become numbers.
fn parse_scalar(s: &str) -> serde_json::Value {
    if let Ok(i) = s.parse::<i64>() {
        return i.into();
    }
    serde_json::Value::String(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_match_the_python_server() {
        let s = Settings::load(&CliArgs::default(), env(&[])).unwrap();
        assert_eq!(s.server.port, 8000);
        assert_eq!(s.server.metrics_port, 9090);
        assert_eq!(s.server.listen_address.to_string(), "::");
        assert_eq!(s.server.grace_period, Duration::from_secs(25));
        assert_eq!(s.server.log_format, LogFormat::Human);
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = std::env::temp_dir().join(format!("cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.yaml");
        std::fs::write(&file, "port: 7000\nmetrics_port: 7001\nlog_level: debug\nbigquery:\n  project: from-file\n")
            .unwrap();
        let cli = CliArgs { config: Some(file.clone()), port: Some(6000), ..Default::default() };
        let s =
            Settings::load(&cli, env(&[("AGENT_METRICS_PORT", "5001"), ("AGENT_BIGQUERY__LOCATION", "EU")])).unwrap();
        assert_eq!(s.server.port, 6000, "flag beats file");
        assert_eq!(s.server.metrics_port, 5001, "env beats file");
        assert_eq!(s.server.log_level, "debug", "file beats default");

        #[derive(Deserialize, Debug, Default)]
        #[serde(default)]
        struct Bq {
            project: String,
            location: String,
        }
        let bq: Bq = s.section("bigquery", &[]).unwrap();
        assert_eq!((bq.project.as_str(), bq.location.as_str()), ("from-file", "EU"));
        let none: Bq = s.section("snowflake", &[]).unwrap();
        assert_eq!(none.project, "");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_services_own_variable_is_a_default_below_every_layer() {
        #[derive(Deserialize, Debug, Default)]
        #[serde(default)]
        struct Sf {
            base_url: Option<String>,
            role: Option<String>,
        }
        let defaults = [("base_url", "SNOWFLAKE_BASE_URL"), ("role", "SNOWFLAKE_ROLE")];
        let vars = [("SNOWFLAKE_BASE_URL", "http://emulator:1"), ("SNOWFLAKE_ROLE", "  ")];
        let sf: Sf = Settings::load(&CliArgs::default(), env(&vars)).unwrap().section("snowflake", &defaults).unwrap();
        assert_eq!(sf.base_url.as_deref(), Some("http://emulator:1"), "the variable fills an unset key");
        assert_eq!(sf.role, None, "a blank variable is no value");
        let set = [("SNOWFLAKE_BASE_URL", "http://emulator:1"), ("AGENT_SNOWFLAKE__BASE_URL", "http://set:2")];
        let sf: Sf = Settings::load(&CliArgs::default(), env(&set)).unwrap().section("snowflake", &defaults).unwrap();
        assert_eq!(sf.base_url.as_deref(), Some("http://set:2"), "the agent's own setting wins");
        let cli = CliArgs { overrides: vec!["snowflake.base_url=http://flag:3".into()], ..Default::default() };
        let sf: Sf = Settings::load(&cli, env(&vars)).unwrap().section("snowflake", &defaults).unwrap();
        assert_eq!(sf.base_url.as_deref(), Some("http://flag:3"), "a flag wins");
    }

    #[test]
    fn tls_is_off_by_default_and_set_from_env_or_flags() {
        assert_eq!(Settings::load(&CliArgs::default(), env(&[])).unwrap().server.tls, None);
        let from_env = env(&[("AGENT_TLS__CERT_FILE", "/tls/cert.pem"), ("AGENT_TLS__KEY_FILE", "/tls/key.pem")]);
        let tls = Settings::load(&CliArgs::default(), from_env).unwrap().server.tls.unwrap();
        assert_eq!((tls.cert_file.to_str(), tls.key_file.to_str()), (Some("/tls/cert.pem"), Some("/tls/key.pem")));
        assert_eq!(tls.client_ca_file, None);
        let cli = CliArgs {
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            tls_client_ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        let tls = Settings::load(&cli, env(&[])).unwrap().server.tls.unwrap();
        assert_eq!(tls.client_ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        let half = CliArgs { tls_cert: Some("/c.pem".into()), ..Default::default() };
        let err = Settings::load(&half, env(&[])).unwrap_err().to_string();
        assert!(err.contains("key_file") && err.contains("--tls-key"), "{err}");
    }

    #[test]
    fn http2_limits_default_as_documented_and_are_set_by_key() {
        let s = Settings::load(&CliArgs::default(), env(&[])).unwrap();
        assert_eq!(s.server.http2, Http2Config::default(), "DEFAULTS and Http2Config::default() disagree");
        let s = Settings::load(
            &CliArgs { overrides: vec!["http2.max_call_duration=90s".into()], ..Default::default() },
            env(&[("AGENT_HTTP2__MAX_CONCURRENT_STREAMS", "16")]),
        )
        .unwrap();
        assert_eq!(s.server.http2.max_call_duration, Duration::from_secs(90));
        assert_eq!(s.server.http2.max_concurrent_streams, 16);
        assert_eq!(s.server.http2.header_read_timeout, Http2Config::default().header_read_timeout);
        for (k, v, name) in [
            ("AGENT_HTTP2__KEEPALIVE_INTERVAL", "often", "http2"),
            ("AGENT_HTTP2__HEADER_READ_TIMEOUT", "0s", "http2.header_read_timeout"),
            ("AGENT_HTTP2__MAX_CONCURRENT_STREAMS", "0", "http2.max_concurrent_streams"),
        ] {
            let err = Settings::load(&CliArgs::default(), env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(name), "{k}={v}: {err}");
        }
    }

    #[test]
    fn set_flag_overrides_any_key() {
        let cli = CliArgs { overrides: vec!["grace_period=3s".into(), "x.y=1".into()], ..Default::default() };
        let s = Settings::load(&cli, env(&[])).unwrap();
        assert_eq!(s.server.grace_period, Duration::from_secs(3));
        assert_eq!(s.section::<i64>("x.y", &[]).unwrap(), 1);
        let bad = CliArgs { overrides: vec!["novalue".into()], ..Default::default() };
        assert!(Settings::load(&bad, env(&[])).unwrap_err().to_string().contains("KEY=VALUE"));
    }

    #[test]
    fn secrets_from_the_environment_stay_verbatim_and_numbers_still_parse() {
        #[derive(Deserialize, Debug)]
        struct Section {
            client_secret: String,
            timeout_secs: u64,
            enabled: bool,
        }
        let s = Settings::load(
            &CliArgs::default(),
            env(&[
                ("AGENT_X__CLIENT_SECRET", "0012345678"),
                ("AGENT_X__TIMEOUT_SECS", "30"),
                ("AGENT_X__ENABLED", "true"),
                ("AGENT_MAX_CONCURRENT_CALLS", "12"),
            ]),
        )
        .unwrap();
        let x: Section = s.section("x", &[]).unwrap();
        assert_eq!((x.client_secret.as_str(), x.timeout_secs, x.enabled), ("0012345678", 30, true));
        assert_eq!(s.server.max_concurrent_calls, 12);
    }

    #[test]
    fn misspelled_top_level_keys_fail_naming_them() {
        let s = Settings::load(&CliArgs::default(), env(&[("AGENT_MAX_CONCURENT_CALLS", "8")])).unwrap();
        let err = s.check_all_used().unwrap_err().to_string();
        assert!(err.contains("max_concurent_calls") && err.contains("AGENT_MAX_CONCURENT_CALLS"), "{err}");
        assert!(err.contains("max_concurrent_calls"), "the known settings are listed: {err}");

        let dir = std::env::temp_dir().join(format!("cfg-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.yaml");
        std::fs::write(&file, "max_concurent_calls: 8\nsnowflake:\n  role: r\n").unwrap();
        let cli = CliArgs { config: Some(file), ..Default::default() };
        let s = Settings::load(&cli, env(&[("AGENT_CONFIG", "/ignored")])).unwrap();
        #[derive(Deserialize, Debug, Default)]
        struct Sf {
            #[allow(dead_code)]
            role: String,
        }
        let _: Sf = s.section("snowflake", &[]).unwrap();
        let err = s.check_all_used().unwrap_err().to_string();
        assert!(err.contains("max_concurent_calls") && !err.contains("snowflake ("), "{err}");
        let ok = Settings::load(&CliArgs::default(), env(&[("AGENT_PORT", "8001")])).unwrap();
        assert!(ok.check_all_used().is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (k, v, name) in [
            ("AGENT_PORT", "eighty", "port"),
            ("AGENT_PORT", "70000", "port"),
            ("AGENT_LISTEN_ADDRESS", "localhost:1", "listen_address"),
            ("AGENT_GRACE_PERIOD", "soon", "grace_period"),
            ("AGENT_LOG_FORMAT", "xml", "log_format"),
            ("AGENT_MAX_MESSAGE_SIZE", "12", "max_message_size"),
        ] {
            let err = Settings::load(&CliArgs::default(), env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(name), "{k}={v}: {err}");
        }
        let missing = CliArgs { config: Some("/nonexistent/agent.yaml".into()), ..Default::default() };
        assert!(Settings::load(&missing, env(&[])).unwrap_err().to_string().contains("/nonexistent/agent.yaml"));
    }
}
