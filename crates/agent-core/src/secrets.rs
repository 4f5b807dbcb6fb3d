//! Secrets, resolved the way flytekit resolves them inside an agent, and a type that
//! never shows its value.
//!
//! Lookup order for a key such as `flyte_databricks_access_token`:
//! 1. the environment variable `<env prefix><KEY>` (prefix `_FSEC_`, overridable with
//!    `FLYTE_SECRETS_ENV_PREFIX`), key upper-cased;
//! 2. the file `<dir>/<file prefix><key>` (dir `/etc/secrets`, overridable with
//!    `FLYTE_SECRETS_DEFAULT_DIR`; prefix empty, overridable with
//!    `FLYTE_SECRETS_FILE_PREFIX`), key lower-cased.
//!
//! Values are trimmed. They are read on every call, so a rotated Kubernetes secret is
//! picked up without a restart.
//!
//! A Flyte 2 caller may also send secrets with a request (`connection.secrets`):
//! [`ConnectionSecrets`] holds them, and for that request they win over the pod's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret, SecretString};

use crate::error::AgentError;

/// A secret value. `Debug` and `Display` print `[REDACTED]`; only [`Secret::expose`]
/// gives the value, so it cannot end up in a log line or an error by accident.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value and remembers it, so that [`redact`] can scrub it from any text
    /// that leaves the process.
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        remember(&value);
        Self(SecretString::from(value))
    }

    /// The value. Call this only where it is handed to the external service.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Secrets can be read from JSON (e.g. the token a Python agent stored in its resource
/// meta) but deliberately not written: a struct holding one cannot be serialized back out
/// unless that field is skipped.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(Secret::new)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Values shorter than this are not scrubbed: they would match ordinary words.
const MIN_REDACTED_LEN: usize = 6;
/// Cap on remembered values, so a process that sees many rotations stays bounded.
const MAX_REMEMBERED: usize = 1024;

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

fn remember(value: &str) {
    if value.len() < MIN_REDACTED_LEN {
        return;
    }
    // Flyte 2 requests each bring their secrets: the usual case, a value already known,
    // takes only the shared lock.
    if KNOWN.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|k| k == value) {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !known.iter().any(|k| k == value) {
        if known.len() >= MAX_REMEMBERED {
            known.remove(0);
        }
        known.push(value.to_owned());
    }
}

/// Replaces every secret value this process has seen with `[REDACTED]`. Applied to every
/// error message before it leaves the process.
pub fn redact(text: &str) -> String {
    let known = KNOWN.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = text.to_owned();
    for k in known.iter() {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), "[REDACTED]");
        }
    }
    out
}

/// Where environment variables come from: the process, or a map in tests (the process
/// environment is global and tests run in parallel).
#[derive(Clone, Debug)]
pub enum EnvSource {
    /// `std::env::var`.
    Process,
    /// A fixed map.
    Map(Arc<HashMap<String, String>>),
}

impl EnvSource {
    /// Reads a variable; unset and non-UTF-8 both read as `None`.
    pub fn get(&self, key: &str) -> Option<String> {
        match self {
            Self::Process => std::env::var(key).ok(),
            Self::Map(m) => m.get(key).cloned(),
        }
    }
}

/// Resolves secrets by key, as described in the module docs.
#[derive(Clone, Debug)]
pub struct SecretStore {
    env: EnvSource,
    env_prefix: String,
    dir: PathBuf,
    file_prefix: String,
}

impl SecretStore {
    /// Reads the layout settings (`FLYTE_SECRETS_*`) from `env`.
    pub fn new(env: EnvSource) -> Self {
        let env_prefix = env.get("FLYTE_SECRETS_ENV_PREFIX").unwrap_or_else(|| "_FSEC_".to_owned());
        let dir = env.get("FLYTE_SECRETS_DEFAULT_DIR").unwrap_or_else(|| "/etc/secrets".to_owned());
        let file_prefix = env.get("FLYTE_SECRETS_FILE_PREFIX").unwrap_or_default();
        Self { env, env_prefix, dir: PathBuf::from(dir), file_prefix }
    }

    /// The store for this process's environment.
    pub fn from_process_env() -> Self {
        Self::new(EnvSource::Process)
    }

    /// Resolves `key`, or fails with `FAILED_PRECONDITION` saying where it looked.
    pub fn get(&self, key: &str) -> Result<Secret, AgentError> {
        let (var, path) = self.locations(key);
        if let Some(v) = self.env.get(&var) {
            let v = v.trim();
            if !v.is_empty() {
                return Ok(Secret::new(v));
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
            Ok(_) => Err(AgentError::failed_precondition(format!(
                "secret '{key}' is empty: the file {} has no content and the environment variable {var} is not set",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AgentError::failed_precondition(format!(
                "secret '{key}' is not configured: set the environment variable {var} or mount the file {} \
                 (e.g. as a key of the agent's Kubernetes secret)",
                path.display()
            ))),
            Err(e) => Err(AgentError::failed_precondition(format!(
                "secret '{key}' could not be read from {}: {e}",
                path.display()
            ))),
        }
    }

    /// Like [`SecretStore::get`], but `None` when the secret is not configured at all.
    pub fn get_optional(&self, key: &str) -> Result<Option<Secret>, AgentError> {
        let (var, path) = self.locations(key);
        if self.env.get(&var).is_none() && !path.exists() {
            return Ok(None);
        }
        self.get(key).map(Some)
    }

    /// The environment variable and file consulted for `key`.
    pub fn locations(&self, key: &str) -> (String, PathBuf) {
        let var = format!("{}{}", self.env_prefix, key.to_uppercase());
        let path = self.dir.join(format!("{}{}", self.file_prefix, key.to_lowercase()));
        (var, path)
    }
}

/// Secrets sent with one request (Flyte 2's `connection.secrets`), which take precedence
/// over the pod's for that request. Keys match whatever their case, as the pod's layout
/// does (upper case for variables, lower case for files). Empty values count as not sent.
/// `Debug` shows the keys only.
#[derive(Clone, Default)]
pub struct ConnectionSecrets(Option<Arc<HashMap<String, Secret>>>);

impl ConnectionSecrets {
    /// The secrets of one request, from its `(key, value)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let map: HashMap<String, Secret> = pairs
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| (k.to_lowercase(), Secret::new(v.trim())))
            .collect();
        Self((!map.is_empty()).then(|| Arc::new(map)))
    }

    /// The secret sent for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Secret> {
        self.0.as_ref()?.get(&key.to_lowercase()).cloned()
    }

    /// Whether the request sent no secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl std::fmt::Debug for ConnectionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&str> = self.0.iter().flat_map(|m| m.keys().map(String::as_str)).collect();
        keys.sort_unstable();
        f.debug_struct("ConnectionSecrets").field("keys", &keys).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_secrets_match_any_case_and_never_print() {
        let c = ConnectionSecrets::new([
            ("snowflake_private_key".to_owned(), " -----PEM value-----\n".to_owned()),
            ("FLYTE_OPENAI_API_KEY".to_owned(), "sk-per-request-1234".to_owned()),
            ("empty".to_owned(), "  ".to_owned()),
        ]);
        assert_eq!(c.get("SNOWFLAKE_PRIVATE_KEY").unwrap().expose(), "-----PEM value-----");
        assert_eq!(c.get("flyte_openai_api_key").unwrap().expose(), "sk-per-request-1234");
        assert!(c.get("empty").is_none() && c.get("other").is_none());
        let shown = format!("{c:?}");
        assert!(shown.contains("flyte_openai_api_key") && !shown.contains("sk-per-request"), "{shown}");
        assert!(redact("key sk-per-request-1234 refused").contains("[REDACTED]"));
        assert!(ConnectionSecrets::new([("k".to_owned(), String::new())]).is_empty());
    }

    fn store(pairs: &[(&str, &str)]) -> SecretStore {
        SecretStore::new(EnvSource::Map(Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())))
    }

    #[test]
    fn env_var_wins_and_is_trimmed() {
        let s = store(&[("_FSEC_FLYTE_TOKEN", "  s3cr3t-env \n")]);
        assert_eq!(s.get("flyte_token").unwrap().expose(), "s3cr3t-env");
    }

    #[test]
    fn file_is_read_with_prefix_and_lowercased_key() {
        let dir = std::env::temp_dir().join(format!("secrets-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pre_snowflake_private_key"), "-----KEY-----\n").unwrap();
        let s = store(&[
            ("FLYTE_SECRETS_DEFAULT_DIR", dir.to_str().unwrap()),
            ("FLYTE_SECRETS_FILE_PREFIX", "pre_"),
            ("FLYTE_SECRETS_ENV_PREFIX", "_X_"),
        ]);
        assert_eq!(s.get("SNOWFLAKE_PRIVATE_KEY").unwrap().expose(), "-----KEY-----");
        assert_eq!(s.locations("a").0, "_X_A");
        std::fs::write(dir.join("pre_empty"), "  \n").unwrap();
        assert!(s.get("empty").unwrap_err().message().contains("is empty"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_secret_says_where_it_looked() {
        let s = store(&[("FLYTE_SECRETS_DEFAULT_DIR", "/nonexistent-dir")]);
        let err = s.get("flyte_openai_api_key").unwrap_err();
        assert!(matches!(err, AgentError::FailedPrecondition(_)));
        assert!(err.message().contains("_FSEC_FLYTE_OPENAI_API_KEY"), "{err}");
        assert!(err.message().contains("/nonexistent-dir/flyte_openai_api_key"), "{err}");
        assert!(s.get_optional("flyte_openai_api_key").unwrap().is_none());
    }

    #[test]
    fn secrets_never_print_and_are_redacted_from_text() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s} {s:?}"), "[REDACTED] Secret([REDACTED])");
        assert_eq!(redact("token hunter2-very-secret rejected"), "token [REDACTED] rejected");
        assert_eq!(redact("short abc"), "short abc");
    }
}
