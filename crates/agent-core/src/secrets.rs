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
//!
//! # Scrubbing
//!
//! Every text that leaves the process (results, metas, errors, log lines) is scrubbed of
//! three kinds of values, each kept where nobody else can push it out:
//! - the pod's secrets, recorded when [`SecretStore`] reads them and never forgotten
//!   (only an operator's rotations retire old values of a key, never a request);
//! - credentials agents derive (OAuth tokens, JWTs: [`Secret::new`]), scrubbed for as long
//!   as any copy of them is alive, so the list is bounded by what the agents hold and a
//!   request cannot evict one;
//! - a request's own secrets, carried with the call ([`ConnectionSecrets`], also made
//!   the current call's by [`scoped`] so its log lines are scrubbed too) and never put in
//!   a global list, so a refused request leaves nothing behind.
//!
//! One Aho-Corasick automaton replaces every value (and its JSON-, Debug- and
//! form-escaped spellings) in a single pass.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use secrecy::{ExposeSecret, SecretString};

use crate::error::AgentError;

/// What a scrubbed value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// A secret value. `Debug` and `Display` print `[REDACTED]`; only [`Secret::expose`]
/// gives the value, so it cannot end up in a log line or an error by accident.
#[derive(Clone)]
pub struct Secret(Arc<Held>);

struct Held {
    value: SecretString,
    /// Whether this value counts as a live derived credential (see [`Secret::new`]).
    tracked: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.tracked {
            release(self.value.expose_secret());
        }
    }
}

impl Secret {
    /// Wraps a credential (e.g. an OAuth token or a JWT the agent made) and scrubs it from
    /// every text that leaves the process for as long as this value or a clone of it is
    /// alive.
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        let tracked = retain(&value);
        Self(Arc::new(Held { value: SecretString::from(value), tracked }))
    }

    /// A value scrubbed by other means: the pod's secrets (recorded by [`SecretStore`]) and
    /// a request's (scrubbed through its [`ConnectionSecrets`]).
    fn untracked(value: String) -> Self {
        Self(Arc::new(Held { value: SecretString::from(value), tracked: false }))
    }

    /// The value. Call this only where it is handed to the external service.
    pub fn expose(&self) -> &str {
        self.0.value.expose_secret()
    }

    /// `text` with this value replaced by `[REDACTED]`, for a value the process-wide
    /// scrubber does not know (one read from a request, see the `Deserialize` impl).
    pub fn scrub_from(&self, text: &str) -> String {
        let value = self.expose();
        if value.len() < MIN_REDACTED_LEN { text.to_owned() } else { text.replace(value, REDACTED) }
    }
}

/// Secrets can be read from JSON (e.g. the token a Python agent stored in its resource
/// meta) but deliberately not written: a struct holding one cannot be serialized back out
/// unless that field is skipped. A value read this way comes from a request, so it never
/// joins the process-wide scrub list: a forged meta could otherwise make every other
/// caller's results, links and metas lose whatever text it names. The agent that uses it
/// scrubs it from its own answers ([`Secret::scrub_from`]).
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(Secret::untracked)
    }
}

/// Writes a secret setting as `[REDACTED]` (`null` when unset), never its value: put
/// `#[serde(serialize_with = "agent_core::secrets::serialize_redacted")]` on an
/// `Option<Secret>` field of a settings section, which is serialized only so that `--help`
/// and its checks see every key (see [`crate::describe`]).
pub fn serialize_redacted<S: serde::Serializer>(secret: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Values shorter than this are not scrubbed: they would match ordinary words.
const MIN_REDACTED_LEN: usize = 6;
/// Values of one pod secret kept after rotations (a value may still be in use by a call
/// that read it before the rotation). Only the operator changes a pod secret.
const MAX_POD_VALUES_PER_KEY: usize = 16;

/// Most secrets one request may carry (Flyte 2 `connection.secrets`). A connection names
/// the few credentials of one task; more is refused before anything is done with them.
pub const MAX_CONNECTION_SECRETS: usize = 64;
/// Largest value of one connection secret (a PEM key or a service-account JSON is a few KiB).
pub const MAX_CONNECTION_SECRET_BYTES: usize = 64 * 1024;
/// Largest total of one request's connection secrets, keys and values.
pub const MAX_CONNECTION_SECRETS_TOTAL_BYTES: usize = 256 * 1024;
/// Longest key of a secret.
const MAX_KEY_BYTES: usize = 253;

/// The process-wide values: the pod's secrets and the live derived credentials.
#[derive(Default)]
struct Known {
    /// Pod secrets by where they were read, newest last.
    pod: HashMap<String, Vec<String>>,
    /// Derived credentials, with how many live [`Secret`]s hold each.
    live: HashMap<String, usize>,
    /// Bumped on every change, so request scrubbers know when to rebuild.
    generation: u64,
    /// The scrubber of this generation, built on first use.
    scrubber: Option<Arc<Scrubber>>,
}

impl Known {
    fn changed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.scrubber = None;
    }
}

static KNOWN: LazyLock<RwLock<Known>> = LazyLock::new(RwLock::default);

fn known_read() -> std::sync::RwLockReadGuard<'static, Known> {
    KNOWN.read().unwrap_or_else(PoisonError::into_inner)
}

fn known_write() -> std::sync::RwLockWriteGuard<'static, Known> {
    KNOWN.write().unwrap_or_else(PoisonError::into_inner)
}

/// Counts one more live holder of a derived credential; `false` when it is too short to
/// be scrubbed.
fn retain(value: &str) -> bool {
    if value.len() < MIN_REDACTED_LEN {
        return false;
    }
    let mut known = known_write();
    let count = known.live.entry(value.to_owned()).or_insert(0);
    *count += 1;
    if *count == 1 {
        known.changed();
    }
    true
}

fn release(value: &str) {
    let mut known = known_write();
    let Some(count) = known.live.get_mut(value) else { return };
    *count -= 1;
    if *count == 0 {
        known.live.remove(value);
        known.changed();
    }
}

/// Records a pod secret read from `location`. The usual case, the value already known,
/// takes only the shared lock.
fn note_pod_secret(location: &str, value: &str) {
    if value.len() < MIN_REDACTED_LEN {
        return;
    }
    if known_read().pod.get(location).is_some_and(|values| values.iter().any(|v| v == value)) {
        return;
    }
    let mut known = known_write();
    let values = known.pod.entry(location.to_owned()).or_default();
    if values.iter().any(|v| v == value) {
        return;
    }
    if values.len() >= MAX_POD_VALUES_PER_KEY {
        values.remove(0);
    }
    values.push(value.to_owned());
    known.changed();
}

/// The scrubber for the process-wide values, and its generation.
fn global() -> (u64, Arc<Scrubber>) {
    {
        let known = known_read();
        if let Some(s) = &known.scrubber {
            return (known.generation, s.clone());
        }
    }
    let mut known = known_write();
    if known.scrubber.is_none() {
        let values = known.pod.values().flatten().chain(known.live.keys()).map(String::as_str);
        let scrubber = Arc::new(Scrubber::new(values));
        known.scrubber = Some(scrubber);
    }
    (known.generation, known.scrubber.clone().expect("set above"))
}

/// Replaces every secret value with `[REDACTED]`: the pod's secrets, live derived
/// credentials and, inside a call ([`scoped`]), the secrets that call carried.
pub fn redact(text: &str) -> String {
    redact_cow(text).into_owned()
}

/// [`redact`] without a copy when there is nothing to scrub.
pub(crate) fn redact_cow(text: &str) -> Cow<'_, str> {
    match CALL.try_with(ConnectionSecrets::scrubber) {
        Ok(scrubber) => scrubber.scrub(text),
        Err(_) => global().1.scrub(text),
    }
}

tokio::task_local! {
    /// The secrets of the call being served on this task.
    static CALL: ConnectionSecrets;
}

/// Runs `fut` (an agent's work for one call) with `secrets` as the current call's, so that
/// [`redact`] (and so every log line written meanwhile) scrubs them too. (Not an `async
/// fn`, which would keep `fut` twice for the whole call.)
pub fn scoped<F: Future>(secrets: ConnectionSecrets, fut: F) -> impl Future<Output = F::Output> {
    CALL.scope(secrets, fut)
}

/// Runs `f` (one poll of a call's stream) with `secrets` as the current call's.
pub(crate) fn sync_scoped<R>(secrets: &ConnectionSecrets, f: impl FnOnce() -> R) -> R {
    CALL.sync_scope(secrets.clone(), f)
}

/// Replaces a set of values, and their escaped spellings, in one pass.
pub(crate) struct Scrubber {
    /// The values, for building a request's scrubber on top of this one.
    values: Vec<String>,
    engine: Engine,
}

enum Engine {
    /// Nothing to scrub.
    Empty,
    Automaton(AhoCorasick),
    /// Only if the automaton cannot be built (it is far below the crate's limits).
    Naive(Vec<String>),
}

impl Scrubber {
    fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<String> =
            values.into_iter().filter(|v| v.len() >= MIN_REDACTED_LEN).map(str::to_owned).collect();
        values.sort_unstable();
        values.dedup();
        let mut patterns: Vec<String> = Vec::with_capacity(values.len());
        for v in &values {
            patterns.push(v.clone());
            // How the value looks in a JSON log line or body, in `{:?}` output, and in a
            // form-encoded body or query string a service may echo.
            // Writing a string as JSON cannot fail; the fallback keeps the slicing below sound.
            let json = serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"));
            let debug = format!("{v:?}");
            for spelled in [&json[1..json.len() - 1], &debug[1..debug.len() - 1], &form_encoded(v)] {
                if spelled != v && spelled.len() >= MIN_REDACTED_LEN {
                    patterns.push(spelled.to_owned());
                }
            }
        }
        patterns.sort_unstable();
        patterns.dedup();
        let engine = if patterns.is_empty() {
            Engine::Empty
        } else {
            // Leftmost-longest: when one value contains another, the whole of it goes.
            match AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns) {
                Ok(ac) => Engine::Automaton(ac),
                Err(_) => {
                    patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
                    Engine::Naive(patterns)
                }
            }
        };
        Self { values, engine }
    }

    /// Whether `bytes` hold any of the values.
    pub(crate) fn matches(&self, bytes: &[u8]) -> bool {
        match &self.engine {
            Engine::Empty => false,
            Engine::Automaton(ac) => ac.is_match(bytes),
            Engine::Naive(patterns) => patterns.iter().any(|p| bytes.windows(p.len()).any(|w| w == p.as_bytes())),
        }
    }

    /// `text` with every value replaced; borrowed when nothing matched.
    pub(crate) fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.engine {
            Engine::Empty => Cow::Borrowed(text),
            Engine::Automaton(ac) => {
                if !ac.is_match(text) {
                    return Cow::Borrowed(text);
                }
                let mut out = String::with_capacity(text.len());
                ac.replace_all_with(text, &mut out, |_, _, dst| {
                    dst.push_str(REDACTED);
                    true
                });
                Cow::Owned(out)
            }
            Engine::Naive(patterns) => {
                if !patterns.iter().any(|p| text.contains(p.as_str())) {
                    return Cow::Borrowed(text);
                }
                let mut out = text.to_owned();
                for p in patterns {
                    out = out.replace(p.as_str(), REDACTED);
                }
                Cow::Owned(out)
            }
        }
    }

    /// Like [`Scrubber::scrub`], for bytes (a JSON resource meta).
    pub(crate) fn scrub_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.engine {
            Engine::Empty => Cow::Borrowed(bytes),
            Engine::Automaton(ac) => {
                if !ac.is_match(bytes) {
                    return Cow::Borrowed(bytes);
                }
                let mut out = Vec::with_capacity(bytes.len());
                ac.replace_all_with_bytes(bytes, &mut out, |_, _, dst| {
                    dst.extend_from_slice(REDACTED.as_bytes());
                    true
                });
                Cow::Owned(out)
            }
            Engine::Naive(_) => match std::str::from_utf8(bytes) {
                Ok(text) => match self.scrub(text) {
                    Cow::Borrowed(_) => Cow::Borrowed(bytes),
                    Cow::Owned(s) => Cow::Owned(s.into_bytes()),
                },
                Err(_) => Cow::Borrowed(bytes),
            },
        }
    }

    /// Overwrites every value in `bytes` with `*`, keeping the length (for encoded data
    /// whose framing must survive, such as msgpack).
    pub(crate) fn mask_bytes(&self, bytes: &mut [u8]) {
        let spans: Vec<std::ops::Range<usize>> = match &self.engine {
            Engine::Empty => return,
            Engine::Automaton(ac) => ac.find_iter(&*bytes).map(|m| m.range()).collect(),
            Engine::Naive(patterns) => patterns
                .iter()
                .flat_map(|p| {
                    let p = p.as_bytes();
                    bytes.windows(p.len()).enumerate().filter(move |(_, w)| *w == p).map(move |(i, _)| i..i + p.len())
                })
                .collect(),
        };
        for span in spans {
            bytes[span].fill(b'*');
        }
    }

    /// Scrubs a string in place.
    pub(crate) fn scrub_in_place(&self, text: &mut String) {
        if let Cow::Owned(s) = self.scrub(text) {
            *text = s;
        }
    }
}

/// `application/x-www-form-urlencoded` spelling (what reqwest's `.form()` and `.query()`
/// send).
fn form_encoded(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether `key` can name a secret: letters, digits, `_`, `-` and `.`, not starting with
/// a dot. Keys become file names under the secrets directory, so nothing else (no `/`,
/// no `..`) may reach the file system.
pub(crate) fn check_key(key: &str) -> Result<(), AgentError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        return Ok(());
    }
    let shown: String = key.chars().take(64).collect();
    Err(AgentError::invalid_argument(format!(
        "'{}' is not a valid secret key: use letters, digits, '_', '-' and '.' ({MAX_KEY_BYTES} bytes at most, no \
         leading dot)",
        shown.escape_debug()
    )))
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

    /// Resolves `key`, or fails with `FAILED_PRECONDITION` saying where it looked
    /// (`INVALID_ARGUMENT` for a key that cannot name a secret). The value is scrubbed
    /// from every text that leaves the process from now on.
    pub fn get(&self, key: &str) -> Result<Secret, AgentError> {
        check_key(key)?;
        let (var, path) = self.locations(key);
        if let Some(v) = self.env.get(&var) {
            let v = v.trim();
            if !v.is_empty() {
                return Ok(self.pod_secret(&var, v));
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(v) if !v.trim().is_empty() => Ok(self.pod_secret(&path.to_string_lossy(), v.trim())),
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
        check_key(key)?;
        let (var, path) = self.locations(key);
        if self.env.get(&var).is_none() && !path.exists() {
            return Ok(None);
        }
        self.get(key).map(Some)
    }

    fn pod_secret(&self, location: &str, value: &str) -> Secret {
        note_pod_secret(location, value);
        Secret::untracked(value.to_owned())
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
///
/// It is also the call's scrubber ([`ConnectionSecrets::redact`]): the pod's secrets and
/// live derived credentials plus these values, which are kept nowhere else.
#[derive(Clone, Default)]
pub struct ConnectionSecrets(Option<Arc<Sent>>);

struct Sent {
    secrets: HashMap<String, Secret>,
    /// The scrubber for these values on top of the process-wide ones, and the generation
    /// of the process-wide values it was built with.
    scrubber: Mutex<Option<(u64, Arc<Scrubber>)>>,
}

impl ConnectionSecrets {
    /// The secrets of one request, from its `(key, value)` pairs. More than
    /// [`MAX_CONNECTION_SECRETS`] pairs, or values or keys larger than the limits, are
    /// refused with `INVALID_ARGUMENT` as soon as they are seen; the message names the
    /// limit and (for a size) the key, never a value.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, AgentError> {
        let invalid = AgentError::invalid_argument;
        let mut secrets = HashMap::new();
        let mut total = 0usize;
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            if i >= MAX_CONNECTION_SECRETS {
                return Err(invalid(format!(
                    "connection.secrets: a request may carry at most {MAX_CONNECTION_SECRETS} secrets; send only the \
                     ones the task uses"
                )));
            }
            let shown: String = k.chars().take(64).collect();
            if k.len() > MAX_KEY_BYTES {
                return Err(invalid(format!(
                    "connection.secrets: the key '{}…' is longer than {MAX_KEY_BYTES} bytes",
                    shown.escape_debug()
                )));
            }
            if v.len() > MAX_CONNECTION_SECRET_BYTES {
                return Err(invalid(format!(
                    "connection.secrets['{}']: the value is {} bytes, more than the {MAX_CONNECTION_SECRET_BYTES} \
                     bytes a secret may have",
                    shown.escape_debug(),
                    v.len()
                )));
            }
            total += k.len() + v.len();
            if total > MAX_CONNECTION_SECRETS_TOTAL_BYTES {
                return Err(invalid(format!(
                    "connection.secrets: more than {MAX_CONNECTION_SECRETS_TOTAL_BYTES} bytes of secrets in one request"
                )));
            }
            let v = v.trim();
            if !v.is_empty() {
                secrets.insert(k.to_lowercase(), Secret::untracked(v.to_owned()));
            }
        }
        Ok(Self((!secrets.is_empty()).then(|| Arc::new(Sent { secrets, scrubber: Mutex::new(None) }))))
    }

    /// The secret sent for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Secret> {
        self.0.as_ref()?.secrets.get(&key.to_lowercase()).cloned()
    }

    /// Whether the request sent no secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// `text` with every secret value replaced: the pod's, live derived credentials, and
    /// the ones this request carried.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.scrubber().scrub(text)
    }

    /// The scrubber of this request, rebuilt only when the process-wide values changed.
    pub(crate) fn scrubber(&self) -> Arc<Scrubber> {
        let (generation, global) = global();
        let Some(sent) = &self.0 else { return global };
        let mut cached = sent.scrubber.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built_for, s)) = cached.as_ref()
            && *built_for == generation
        {
            return s.clone();
        }
        let own = sent.secrets.values().map(Secret::expose);
        let s = Arc::new(Scrubber::new(global.values.iter().map(String::as_str).chain(own)));
        *cached = Some((generation, s.clone()));
        s
    }
}

impl std::fmt::Debug for ConnectionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&str> = self.0.iter().flat_map(|m| m.secrets.keys().map(String::as_str)).collect();
        keys.sort_unstable();
        f.debug_struct("ConnectionSecrets").field("keys", &keys).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_read_from_a_request_never_joins_the_process_wide_list() {
        let forged: Secret = serde_json::from_str(r#""databricks_instance""#).unwrap();
        assert_eq!(redact("{\"databricks_instance\": \"x\"}"), "{\"databricks_instance\": \"x\"}", "while it is alive");
        assert_eq!(forged.scrub_from("token databricks_instance echoed"), "token [REDACTED] echoed");
    }

    #[test]
    fn connection_secrets_match_any_case_and_never_print() {
        let c = ConnectionSecrets::new([
            ("snowflake_private_key".to_owned(), " -----PEM value-----\n".to_owned()),
            ("FLYTE_OPENAI_API_KEY".to_owned(), "sk-per-request-1234".to_owned()),
            ("empty".to_owned(), "  ".to_owned()),
        ])
        .unwrap();
        assert_eq!(c.get("SNOWFLAKE_PRIVATE_KEY").unwrap().expose(), "-----PEM value-----");
        assert_eq!(c.get("flyte_openai_api_key").unwrap().expose(), "sk-per-request-1234");
        assert!(c.get("empty").is_none() && c.get("other").is_none());
        let shown = format!("{c:?}");
        assert!(shown.contains("flyte_openai_api_key") && !shown.contains("sk-per-request"), "{shown}");
        assert!(ConnectionSecrets::new([("k".to_owned(), String::new())]).unwrap().is_empty());
    }

    #[test]
    fn a_requests_secrets_are_scrubbed_through_that_request_only() {
        let c = ConnectionSecrets::new([("flyte_token".to_owned(), "conn-only-value-8a7b6c".to_owned())]).unwrap();
        assert_eq!(c.redact("key conn-only-value-8a7b6c refused"), "key [REDACTED] refused");
        // Nothing global: another call's text is not scanned for it, and nothing is kept.
        assert_eq!(redact("key conn-only-value-8a7b6c refused"), "key conn-only-value-8a7b6c refused");
        assert!(!known_read().live.contains_key("conn-only-value-8a7b6c"));
        // Inside the call's scope, plain `redact` (and so every log line) knows them.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let inside = rt.block_on(scoped(c.clone(), async { redact("echo conn-only-value-8a7b6c") }));
        assert_eq!(inside, "echo [REDACTED]");
    }

    #[test]
    fn connection_secrets_are_bounded_and_refused_early() {
        // 60,000 are refused after looking at the 65th: the cost does not grow with the count.
        let pulled = std::cell::Cell::new(0);
        let many = (0..60_000).map(|i| (format!("k{i}"), format!("junk-value-{i:08}"))).inspect(|_| {
            pulled.set(pulled.get() + 1);
        });
        let err = ConnectionSecrets::new(many).unwrap_err();
        assert!(matches!(&err, AgentError::InvalidArgument(m) if m.contains("at most 64 secrets")), "{err}");
        assert_eq!(pulled.get(), MAX_CONNECTION_SECRETS + 1);
        let big = ConnectionSecrets::new([("k".to_owned(), "x".repeat(MAX_CONNECTION_SECRET_BYTES + 1))]);
        assert!(big.unwrap_err().message().contains("connection.secrets['k']: the value is 65537 bytes"));
        let total = (0..8).map(|i| (format!("k{i}"), "y".repeat(MAX_CONNECTION_SECRET_BYTES)));
        assert!(ConnectionSecrets::new(total).unwrap_err().message().contains("bytes of secrets in one request"));
        let long_key = ConnectionSecrets::new([("k".repeat(300), "value-1234".to_owned())]);
        assert!(long_key.unwrap_err().message().contains("longer than 253 bytes"));
    }

    #[test]
    fn derived_credentials_are_scrubbed_while_alive() {
        let token = Secret::new("derived-token-0f1e2d3c");
        let copy = token.clone();
        drop(token);
        assert_eq!(redact("Bearer derived-token-0f1e2d3c"), "Bearer [REDACTED]");
        drop(copy);
        // Gone once no one can send it any more: the list is what the agents hold.
        assert_eq!(redact("Bearer derived-token-0f1e2d3c"), "Bearer derived-token-0f1e2d3c");
    }

    #[test]
    fn pod_secrets_are_never_pushed_out() {
        let pod = store(&[("_FSEC_FLYTE_POD_KEY", "pod-key-never-evicted-99")]);
        pod.get("flyte_pod_key").unwrap();
        // Many derived credentials and requests come and go…
        for i in 0..3000 {
            let _t = Secret::new(format!("short-lived-token-{i:06}"));
            let _c = ConnectionSecrets::new([("k".to_owned(), format!("junk-conn-secret-{i:06}"))]).unwrap();
        }
        // …and the pod's key is still scrubbed, even though its Secret was dropped.
        assert_eq!(redact("x pod-key-never-evicted-99 y"), "x [REDACTED] y");
    }

    #[test]
    fn escaped_spellings_and_overlaps_are_scrubbed() {
        let pem = Secret::new("-----BEGIN KEY-----\nMIIEabc\"def\n-----END KEY-----");
        let json = serde_json::json!({"error": format!("bad key {}", pem.expose())}).to_string();
        assert!(!redact(&json).contains("MIIEabc"), "{}", redact(&json));
        let debug = format!("{:?}", pem.expose());
        assert_eq!(redact(&debug), "\"[REDACTED]\"");
        let form = Secret::new("client secret+/=42");
        assert_eq!(redact("client_secret=client+secret%2B%2F%3D42&x=1"), "client_secret=[REDACTED]&x=1");
        // A value inside a longer one: the longer goes whole.
        let inner = Secret::new("abcdef123");
        let outer = ConnectionSecrets::new([("k".to_owned(), "xyz-abcdef123-more".to_owned())]).unwrap();
        assert_eq!(outer.redact("[xyz-abcdef123-more]"), "[[REDACTED]]");
        drop((form, inner));
    }

    #[test]
    fn keys_cannot_reach_outside_the_secrets_directory() {
        let s = store(&[("FLYTE_SECRETS_DEFAULT_DIR", "/etc")]);
        for key in ["../etc/passwd", "a/b", ".hidden", "", "x y"] {
            let err = s.get(key).unwrap_err();
            assert!(matches!(&err, AgentError::InvalidArgument(m) if m.contains("not a valid secret key")), "{err}");
            assert!(s.get_optional(key).is_err());
        }
        assert!(s.get("flyte-openai.api_key_2").unwrap_err().message().contains("is not configured"));
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
