//! What an agent binary reads, declared once beside its settings type: each key of its
//! settings section with one line about it, the secrets it reads (Flyte's layout, and those
//! only a Flyte 2 request brings), and the other environment variables it or its SDK read.
//!
//! One [`Description`] serves three ends, so none can disagree with another:
//! - `--help` lists every server setting and every key of the agent's section with its
//!   default (the settings type's `Default`, serialized) and environment variable, the
//!   secrets under the names flytekit reads them by, and the variables;
//! - [`Settings::section_of`] reads the section, splitting list settings given as text
//!   (`AGENT_DATABRICKS__ALLOWED_INSTANCES=a,b`, `--set databricks.allowed_instances=a,b`),
//!   and only those: which keys are lists comes from the type, not from a list kept by hand;
//! - [`Description::problems`], which every agent's tests run
//!   (`testing::conformance::description`), fails when a key of the type is missing from the
//!   description, a described key is not a setting, or a list does not split (or a text does).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};

use crate::config::{CliArgs, Settings};
use crate::secrets::SecretStore;

/// A name and one line about it: a settings key (within the section, dotted when nested),
/// a secret's key, or an environment variable.
pub type Entry = (&'static str, &'static str);

/// What an agent binary reads; see the module docs. An agent crate builds one in a `const`
/// beside its settings type and hands it to `agent_core::main!`:
///
/// ```
/// # use agent_core::Description;
/// # use agent_core::http::RestSettings;
/// # #[derive(Default, serde::Serialize, serde::Deserialize)]
/// # #[serde(default, deny_unknown_fields)]
/// # struct Config { base_url: Option<String>, #[serde(flatten)] rest: RestSettings }
/// # const ENV: &[(&str, &str)] = &[("base_url", "MY_SERVICE_BASE_URL")];
/// # const API_KEY: &str = "MY_SERVICE_API_KEY";
/// pub const HELP: Description = Description::of::<Config>("my_service")
///     .settings(&[("base_url", "Base URL of the service's API.")])
///     .flattened(RestSettings::HELP)
///     .env_defaults(ENV)
///     .secrets(&[(API_KEY, "The service's API key.")]);
///
/// // What each agent's tests check (through `testing::conformance::description`).
/// assert_eq!(HELP.problems(), Vec::<String>::new());
/// ```
///
/// The settings type must serialize every key (a secret with
/// [`crate::secrets::serialize_redacted`]) and read from any one key alone
/// (`#[serde(default)]`); list settings are `Vec`s.
#[derive(Debug, Clone, Copy)]
pub struct Description {
    pub(crate) section: &'static str,
    settings: &'static [Entry],
    flattened: &'static [Entry],
    pub(crate) env_defaults: &'static [(&'static str, &'static str)],
    secrets: &'static [Entry],
    request_secrets: &'static [Entry],
    environment: &'static [Entry],
    /// The type's `Default`, serialized: every key, with its default.
    defaults: fn() -> Result<Json, String>,
    /// Whether the type reads this part of a section (one key, alone).
    accepts: fn(Json) -> Result<(), String>,
    /// The section as the agent reads it from loaded settings, serialized.
    read: fn(&Settings, &Description) -> Result<Json, String>,
}

impl Description {
    /// The description of section `section`, read as a `T`; the builders below add to it.
    pub const fn of<T: Default + Serialize + DeserializeOwned>(section: &'static str) -> Self {
        Self {
            section,
            settings: &[],
            flattened: &[],
            env_defaults: &[],
            secrets: &[],
            request_secrets: &[],
            environment: &[],
            defaults: defaults_of::<T>,
            accepts: accepts::<T>,
            read: read::<T>,
        }
    }

    /// The section's own keys, each with one line about it.
    pub const fn settings(self, settings: &'static [Entry]) -> Self {
        Self { settings, ..self }
    }

    /// The keys of a struct flattened into the section (`http::RestSettings::HELP`); an own
    /// line for one of them wins (an agent that refuses `ca_bundle` says so).
    pub const fn flattened(self, flattened: &'static [Entry]) -> Self {
        Self { flattened, ..self }
    }

    /// The service's own variables that default keys of the section (the crate's `ENV`),
    /// as [`Settings::section`] takes them.
    pub const fn env_defaults(self, env_defaults: &'static [(&'static str, &'static str)]) -> Self {
        Self { env_defaults, ..self }
    }

    /// The agent's own secrets (Flyte's layout, [`crate::secrets`]), by key.
    pub const fn secrets(self, secrets: &'static [Entry]) -> Self {
        Self { secrets, ..self }
    }

    /// Secrets only a Flyte 2 request brings (`connection.secrets`), never the pod's.
    pub const fn request_secrets(self, request_secrets: &'static [Entry]) -> Self {
        Self { request_secrets, ..self }
    }

    /// Other environment variables the agent, or the SDK it uses, reads.
    pub const fn environment(self, environment: &'static [Entry]) -> Self {
        Self { environment, ..self }
    }

    /// The described keys: the agent's own, then the flattened ones it does not describe itself.
    fn entries(&self) -> Vec<Entry> {
        let own = |key: &str| self.settings.iter().any(|(k, _)| *k == key);
        self.settings.iter().chain(self.flattened.iter().filter(|(k, _)| !own(k))).copied().collect()
    }

    /// Every key of the section's type, with its default.
    fn defaults(&self) -> Result<BTreeMap<String, Json>, String> {
        let value =
            (self.defaults)().map_err(|e| format!("{}: the default settings do not serialize: {e}", self.section))?;
        if !value.is_object() {
            return Err(format!("{}: the settings type must be a struct (a table of keys)", self.section));
        }
        let mut keys = BTreeMap::new();
        leaves("", &value, &mut keys);
        Ok(keys)
    }

    /// Whether `key`, whose default is `default`, is a list: its default is one, or (an
    /// optional setting) its type reads one.
    fn is_list(&self, key: &str, default: &Json) -> bool {
        default.is_array() || (default.is_null() && (self.accepts)(nested(key, json!([]))).is_ok())
    }

    /// The section's list settings (keys within it), which are split when given as text.
    pub(crate) fn list_keys(&self) -> Vec<String> {
        let Ok(defaults) = self.defaults() else { return Vec::new() };
        defaults.iter().filter(|(k, v)| self.is_list(k, v)).map(|(k, _)| k.clone()).collect()
    }

    /// What disagrees between this description and the settings type, one line each; empty
    /// when nothing does. Agents' tests run it through `testing::conformance::description`.
    pub fn problems(&self) -> Vec<String> {
        let section = self.section;
        let defaults = match self.defaults() {
            Ok(d) => d,
            Err(e) => return vec![e],
        };
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for (key, _) in self.settings {
            if !seen.insert(*key) {
                problems.push(format!("{section}.{key} is described twice"));
            }
        }
        let entries = self.entries();
        let lines = entries.iter().chain(self.secrets).chain(self.request_secrets).chain(self.environment);
        for (name, about) in lines {
            if name.trim().is_empty() || about.trim().is_empty() || about.contains('\n') {
                problems.push(format!("{name:?}: needs a name and one line about it, got {about:?}"));
            }
        }
        let described: BTreeSet<&str> = entries.iter().map(|(k, _)| *k).collect();
        for key in defaults.keys().filter(|k| !described.contains(k.as_str())) {
            problems.push(format!("{section}.{key} is a setting that --help does not list: describe it"));
        }
        for key in &described {
            match defaults.get(*key) {
                None => problems.push(format!("{section}.{key} is described but is not a setting of the section")),
                Some(default) => {
                    if let Err(e) = (self.accepts)(nested(key, default.clone())) {
                        problems.push(format!("{section}.{key}: its default, written out, does not read back: {e}"));
                    }
                }
            }
        }
        for (key, var) in self.env_defaults.iter().filter(|(k, _)| !defaults.contains_key(*k)) {
            problems.push(format!("{section}.{key}, which {var} defaults, is not a setting of the section"));
        }
        for (key, _) in self.secrets {
            if let Err(e) = crate::secrets::check_key(key) {
                problems.push(format!("secret {key}: {}", e.message()));
            }
        }
        for (key, default) in &defaults {
            problems.extend(self.text_problems(key, default));
        }
        problems
    }

    /// How setting `key` reads from text, through the environment and through `--set`: a
    /// list splits at commas (and an empty text is the empty list), anything else that
    /// takes text stays whole, commas included.
    fn text_problems(&self, key: &str, default: &Json) -> Vec<String> {
        let path = format!("{}.{key}", self.section);
        let var = env_name(&path);
        let mut problems = Vec::new();
        let mut expect = |text: &str, wanted: &dyn Fn(Option<&Json>) -> bool, what: &str| {
            let from_env = self.read_from(&[(&var, text)], &[]);
            let from_flag = self.read_from(&[], &[format!("{path}={text}")]);
            for (how, got) in [(format!("{var}={text:?}"), from_env), (format!("--set {path}={text:?}"), from_flag)] {
                match got {
                    Ok(section) if wanted(at(&section, key)) => {}
                    Ok(section) => problems.push(format!("{how}: {what}, got {:?}", at(&section, key))),
                    Err(e) => problems.push(format!("{how}: {what}, got the error {e}")),
                }
            }
        };
        if self.is_list(key, default) {
            let two = json!(["a", "b"]);
            expect("a,b", &|v| v == Some(&two), "a list of two");
            expect(" a , b ,", &|v| v == Some(&two), "a list of two");
            expect("", &|v| v == Some(&json!([])), "an empty list");
        } else if (self.accepts)(nested(key, json!("x,y"))).is_ok() {
            expect("x,y", &|v| v.is_some_and(|v| !v.is_array()), "one value, not split");
        }
        problems
    }

    /// The section read from settings loaded with only `vars` and `sets` (`--set`).
    fn read_from(&self, vars: &[(&str, &str)], sets: &[String]) -> Result<Json, String> {
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let cli = CliArgs { overrides: sets.to_vec(), ..CliArgs::default() };
        let settings = Settings::load(&cli, Some(env)).map_err(|e| e.to_string())?;
        (self.read)(&settings, self)
    }
}

fn defaults_of<T: Default + Serialize>() -> Result<Json, String> {
    serde_json::to_value(T::default()).map_err(|e| e.to_string())
}

fn accepts<T: DeserializeOwned>(part: Json) -> Result<(), String> {
    serde_json::from_value::<T>(part).map(drop).map_err(|e| e.to_string())
}

fn read<T: DeserializeOwned + Serialize>(settings: &Settings, described: &Description) -> Result<Json, String> {
    let section: T = settings.section_of(described).map_err(|e| e.to_string())?;
    serde_json::to_value(section).map_err(|e| e.to_string())
}

/// The settings in `value` by dotted key: a table's keys are settings of their own, anything
/// else (a list, an empty table) is one setting.
fn leaves(prefix: &str, value: &Json, out: &mut BTreeMap<String, Json>) {
    match value {
        Json::Object(table) if !table.is_empty() || prefix.is_empty() => {
            for (k, v) in table {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaves(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// `value` at dotted `key` of a section: `a.b` → `{"a": {"b": value}}`.
fn nested(key: &str, value: Json) -> Json {
    key.rsplit('.').fold(value, |inner, part| json!({ part: inner }))
}

/// What is at dotted `key` of `value`.
fn at<'a>(value: &'a Json, key: &str) -> Option<&'a Json> {
    key.split('.').try_fold(value, |v, part| v.get(part))
}

/// The environment variable of the setting at dotted `key` (from the top): `AGENT_`, then
/// the key in capitals with its dots as `__` (`databricks.default_instance` →
/// `AGENT_DATABRICKS__DEFAULT_INSTANCE`).
pub fn env_name(key: &str) -> String {
    format!("AGENT_{}", key.replace('.', "__").to_uppercase())
}

/// Variables every agent binary reads besides its settings' own.
const CORE_ENVIRONMENT: &[Entry] = &[
    ("AGENT_CONFIG", "The configuration file, as --config."),
    ("RUST_LOG", "Log filter; wins over log_level."),
    ("FLYTE_SECRETS_ENV_PREFIX", "Prefix of the secrets' environment variables (default _FSEC_)."),
    ("FLYTE_SECRETS_DEFAULT_DIR", "Directory of the secrets' files (default /etc/secrets)."),
    ("FLYTE_SECRETS_FILE_PREFIX", "Prefix of the secrets' file names (default none)."),
    ("SSL_CERT_FILE", "PEM bundle of trusted CAs for the agent's HTTPS calls, in place of the system's."),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP/gRPC collector: traces are exported when it is set."),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "The collector for traces, in place of OTEL_EXPORTER_OTLP_ENDPOINT."),
    ("OTEL_SERVICE_NAME", "The traces' service.name (default: the binary's name)."),
    ("OTEL_RESOURCE_ATTRIBUTES", "More attributes of the traces' resource (key=value,...)."),
    ("OTEL_EXPORTER_OTLP_*, OTEL_BSP_*", "The trace exporter's and batch processor's settings, as the SDK reads them."),
];

/// How settings layer, at the top of the settings part of `--help`.
const LAYERS: &str = "\
Settings, each layer over the one before: the defaults below; a file (--config FILE or
AGENT_CONFIG; YAML or TOML, with the keys below); environment variables (AGENT_, then the key
in capitals with each dot as __); flags (those above, and --set KEY=VALUE for any key). Values
from the environment stay text until a setting asks for a number. A list takes comma-separated
items from the environment or --set (a,b; an empty value is the empty list).
";

/// `--help`'s text after the flags: how settings layer, every server setting, the agent's
/// settings, the secrets it reads (their names as `secrets` resolves them, so an operator's
/// `FLYTE_SECRETS_*` show), and the other environment variables.
pub(crate) fn help(agent: Option<&Description>, secrets: &SecretStore) -> String {
    let mut out = String::from(LAYERS);
    out.push_str("\nServer settings:\n");
    let mut server = BTreeMap::new();
    if let Ok(defaults) = crate::config::server_defaults() {
        leaves("", &defaults, &mut server);
    }
    for (key, flag, about) in crate::config::SERVER_SETTINGS {
        let mut how = format!("env {}", env_name(key));
        if !flag.is_empty() {
            let _ = write!(how, ", flag {flag}");
        }
        entry(&mut out, key, Some((server.get(*key).unwrap_or(&Json::Null), false)), about, &how);
    }
    let Some(d) = agent else {
        environment(&mut out, &[]);
        return out;
    };
    let defaults = d.defaults().unwrap_or_default();
    let _ = writeln!(out, "\nSettings of the agent ({}.*):", d.section);
    for (key, about) in d.entries() {
        let path = format!("{}.{key}", d.section);
        let default = defaults.get(key).unwrap_or(&Json::Null);
        let mut how = format!("env {}", env_name(&path));
        if let Some((_, var)) = d.env_defaults.iter().find(|(k, _)| *k == key) {
            let _ = write!(how, ", else {var}");
        }
        entry(&mut out, &path, Some((default, d.is_list(key, default))), about, &how);
    }
    if !d.secrets.is_empty() {
        out.push_str(
            "\nSecrets, as flytekit reads them: an environment variable, else a file, read on each use\n\
             (a Flyte 2 request's connection secret of the same name wins for that request):\n",
        );
        for (key, about) in d.secrets {
            let (var, file) = secrets.locations(key);
            entry(&mut out, key, None, about, &format!("env {var}, else file {}", file.display()));
        }
    }
    if !d.request_secrets.is_empty() {
        out.push_str("\nSecrets only a Flyte 2 request brings (connection.secrets), for that request alone:\n");
        for (key, about) in d.request_secrets {
            entry(&mut out, key, None, about, "");
        }
    }
    environment(&mut out, d.environment);
    out
}

fn environment(out: &mut String, agent: &[Entry]) {
    out.push_str("\nOther environment variables:\n");
    for (name, about) in agent.iter().chain(CORE_ENVIRONMENT) {
        entry(out, name, None, about, "");
    }
}

/// One entry: `name = default` (a setting) or `name`, then the line about it, then how to set it.
fn entry(out: &mut String, name: &str, default: Option<(&Json, bool)>, about: &str, how: &str) {
    let _ = match default {
        Some((value, true)) => writeln!(out, "  {name} = {} (list)", shown(value)),
        Some((value, false)) => writeln!(out, "  {name} = {}", shown(value)),
        None => writeln!(out, "  {name}"),
    };
    let _ = writeln!(out, "      {about}");
    if !how.is_empty() {
        let _ = writeln!(out, "      {how}");
    }
}

/// A default as it would be written in the environment or with `--set`.
fn shown(value: &Json) -> String {
    let text = |v: &Json| match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value {
        Json::Null => "none".to_owned(),
        Json::Array(items) if items.is_empty() => "empty".to_owned(),
        Json::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => text(other),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::CommandFactory;
    use serde::Deserialize;

    use super::*;
    use crate::http::RestSettings;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        hosts: Vec<String>,
        roots: Option<Vec<PathBuf>>,
        name: Option<String>,
        #[serde(serialize_with = "crate::secrets::serialize_redacted")]
        token: Option<crate::Secret>,
        #[serde(with = "humantime_serde")]
        wait: Duration,
        #[serde(flatten)]
        rest: RestSettings,
    }

    impl Default for Section {
        fn default() -> Self {
            Self {
                hosts: vec!["localhost".into()],
                roots: None,
                name: None,
                token: None,
                wait: Duration::from_secs(3),
                rest: RestSettings::default(),
            }
        }
    }

    const OWN: &[Entry] = &[
        ("hosts", "Hosts."),
        ("roots", "Roots."),
        ("name", "A name."),
        ("token", "A token."),
        ("wait", "How long."),
        ("ca_bundle", "Refused here."),
    ];

    const SECTION: Description = Description::of::<Section>("sec")
        .settings(OWN)
        .flattened(RestSettings::HELP)
        .env_defaults(&[("name", "SEC_NAME")])
        .secrets(&[("SEC_API_KEY", "The key.")])
        .request_secrets(&[("sec_token", "A task's own token.")])
        .environment(&[("SEC_HOME", "Where it lives.")]);

    #[test]
    fn a_complete_description_has_no_problems_and_knows_its_lists() {
        assert_eq!(SECTION.problems(), Vec::<String>::new());
        assert_eq!(SECTION.list_keys(), ["hosts", "roots"]);
    }

    #[test]
    fn a_missing_or_unknown_key_is_a_problem() {
        let missing = Description::of::<Section>("sec").settings(&OWN[1..]).flattened(RestSettings::HELP);
        let problems = missing.problems();
        assert!(problems.iter().any(|p| p.contains("sec.hosts") && p.contains("does not list")), "{problems:?}");
        let unknown = Description::of::<Section>("sec")
            .settings(&[("hosts", "h"), ("roots", "r"), ("name", "n"), ("token", "t"), ("wait", "w"), ("hostz", "x")])
            .flattened(RestSettings::HELP)
            .env_defaults(&[("nam", "SEC_NAME")]);
        let problems = unknown.problems();
        assert!(problems.iter().any(|p| p.contains("sec.hostz") && p.contains("not a setting")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("sec.nam,")), "{problems:?}");
        let bad = Description::of::<Section>("sec")
            .settings(&[("hosts", "two\nlines")])
            .flattened(RestSettings::HELP)
            .secrets(&[("../key", "a path")]);
        let problems = bad.problems();
        assert!(problems.iter().any(|p| p.contains("one line")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("../key")), "{problems:?}");
    }

    /// Lists split from the environment and `--set`; text settings keep their commas, and
    /// environment values stay text (a secret of digits arrives as written).
    #[test]
    fn lists_split_from_the_environment_and_flags_and_nothing_else_does() {
        let load = |vars: &[(&str, &str)], sets: &[&str]| {
            let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let cli = CliArgs { overrides: sets.iter().map(|s| (*s).to_owned()).collect(), ..CliArgs::default() };
            Settings::load(&cli, Some(env)).unwrap().section_of::<Section>(&SECTION).unwrap()
        };
        let s = load(&[("AGENT_SEC__HOSTS", "a.example.com,b.example.com"), ("AGENT_SEC__NAME", "x,y")], &[]);
        assert_eq!(s.hosts, ["a.example.com", "b.example.com"]);
        assert_eq!(s.name.as_deref(), Some("x,y"), "a text setting is not split");
        let s = load(&[("AGENT_SEC__TOKEN", "0012345678")], &["sec.roots=/a, /b", "sec.hosts="]);
        assert_eq!(s.roots, Some(vec![PathBuf::from("/a"), PathBuf::from("/b")]));
        assert!(s.hosts.is_empty(), "an empty value clears a default list");
        assert_eq!(s.token.as_ref().map(crate::Secret::expose), Some("0012345678"));
        // A list in a file stays the file's list, commas and all.
        let dir = std::env::temp_dir().join(format!("describe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.yaml");
        std::fs::write(&file, "sec:\n  hosts: [\"a,b\", c]\n").unwrap();
        let cli = CliArgs { config: Some(file), ..CliArgs::default() };
        let s = Settings::load(&cli, Some(Default::default())).unwrap().section_of::<Section>(&SECTION).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(s.hosts, ["a,b", "c"]);
        // The section's own variable still defaults its key.
        let s = load(&[("SEC_NAME", "from-the-service")], &[]);
        assert_eq!(s.name.as_deref(), Some("from-the-service"));
    }

    #[test]
    fn the_server_settings_listed_are_every_server_setting_with_its_flag() {
        let mut keys = BTreeMap::new();
        leaves("", &crate::config::server_defaults().unwrap(), &mut keys);
        let listed: Vec<&str> = crate::config::SERVER_SETTINGS.iter().map(|(k, _, _)| *k).collect();
        let actual: Vec<&str> = keys.keys().map(String::as_str).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, actual, "SERVER_SETTINGS and ServerConfig's keys disagree");
        let mut tops: Vec<&str> = listed.iter().map(|k| k.split('.').next().unwrap()).collect();
        tops.dedup();
        assert_eq!(tops, crate::config::SERVER_KEYS, "SERVER_KEYS and the listed settings disagree");
        // Each flag named is a flag, and each flag but --config and --set sets a listed setting.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CliArgs,
        }
        let command = Cli::command();
        let mut flags: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !["config", "set"].contains(l))
            .map(|l| format!("--{l}"))
            .collect();
        let mut named: Vec<String> = crate::config::SERVER_SETTINGS
            .iter()
            .filter(|(_, f, _)| !f.is_empty())
            .map(|(_, f, _)| f.to_string())
            .collect();
        flags.sort();
        named.sort();
        assert_eq!(flags, named);
        // Each listed key, set through its variable, is read as a server setting.
        for (key, default) in &keys {
            let value = match (key.as_str(), default) {
                ("tls.cert_file" | "tls.key_file" | "tls.client_ca_file", _) => "/x.pem".to_owned(),
                (_, Json::String(s)) => s.clone(),
                (_, other) => other.to_string(),
            };
            let mut vars = vec![(env_name(key), value)];
            if key.starts_with("tls.") {
                vars.extend([
                    ("AGENT_TLS__CERT_FILE".into(), "/c.pem".into()),
                    ("AGENT_TLS__KEY_FILE".into(), "/k.pem".into()),
                ]);
            }
            let env = vars.into_iter().collect();
            let loaded = Settings::load(&CliArgs::default(), Some(env)).unwrap();
            loaded.check_all_used().unwrap();
        }
    }

    #[test]
    fn help_lists_every_setting_secret_and_variable_with_its_names() {
        let text = help(Some(&SECTION), &crate::testing::secrets(&[("FLYTE_SECRETS_DEFAULT_DIR", "/run/s")]));
        for expected in [
            "  port = 8000\n",
            "env AGENT_PORT, flag --port",
            "  tls.cert_file = none\n",
            "env AGENT_TLS__CERT_FILE, flag --tls-cert",
            "  tls.reload_interval = 1m\n",
            "  http2.max_call_duration = 10m\n",
            "env AGENT_HTTP2__MAX_CONCURRENT_STREAMS",
            "  sec.hosts = localhost (list)\n",
            "  sec.roots = none (list)\n",
            "  sec.name = none\n      A name.\n      env AGENT_SEC__NAME, else SEC_NAME\n",
            "  sec.ca_bundle = none\n      Refused here.\n",
            "  sec.attempt_timeout = 5s\n",
            "  SEC_API_KEY\n      The key.\n      env _FSEC_SEC_API_KEY, else file /run/s/sec_api_key\n",
            "  sec_token\n      A task's own token.\n",
            "  SEC_HOME\n",
            "  OTEL_EXPORTER_OTLP_ENDPOINT\n",
        ] {
            assert!(text.contains(expected), "{expected:?} is not in:\n{text}");
        }
        let bare = help(None, &crate::testing::secrets(&[]));
        assert!(bare.contains("  http2.keepalive_timeout = 20s\n") && !bare.contains("Secrets"), "{bare}");
    }
}
