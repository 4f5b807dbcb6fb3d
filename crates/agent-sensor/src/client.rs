//! Where a FileSensor looks and how: a path (`s3://`, `gs://`, `abfs://`/`abfss://`/`az://`,
//! or a local path) becomes a bucket and key checked through the `object_store` crate,
//! with the credentials flytekit's data persistence uses (its `FLYTE_AWS_*` and
//! `FLYTE_AZURE_*` variables, else each cloud's default chain: the AWS chain and IRSA,
//! Google's Application Default Credentials, Azure workload identity). The path is the
//! task's, so it is hostile input: bucket and account names are checked before any
//! request, an Azure account is one the configuration names (a service principal's token
//! must not go to another account's endpoint), and local paths stay under the configured
//! roots, symbolic links included.
//!
//! One store per bucket is kept (each holds a connection pool and its credentials);
//! the cache is bounded, since buckets come from tasks.

use std::collections::HashMap;
use std::path::{Component, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agent_core::prelude::*;
use futures_util::StreamExt as _;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt as _, RetryConfig};

use crate::config::Config;

/// Stores kept at most; past that the oldest goes.
const CACHED_STORES: usize = 64;

/// How long one storage call may take (retries included) before the sensor reports it
/// still waiting and tries again at the next poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a path points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// `s3://bucket/key`.
    S3 { bucket: String, key: String },
    /// `gs://bucket/key`.
    Gcs { bucket: String, key: String },
    /// `abfs://container@account.dfs.core.windows.net/key`, or `abfs://container/key`
    /// in the configured account.
    Azure { account: String, container: String, key: String },
    /// A path on the agent's filesystem, under a configured root.
    Local(PathBuf),
}

/// What a check found.
#[derive(Debug)]
pub(crate) enum Found {
    /// The object, or a non-empty folder, is there.
    Yes,
    /// Not yet.
    No,
    /// The storage could not answer now (throttling, a server error, a timeout): ask again.
    Unsure(String),
    /// It never will: access denied, the bucket does not exist.
    Never(String),
}

/// The storage client of the agent.
#[derive(Debug)]
pub(crate) struct Client {
    config: Config,
    /// Each root as configured and as it resolves (they differ when it is a link).
    roots: Vec<(PathBuf, PathBuf)>,
    /// Keys and client secrets, read once at start-up (flytekit's variable names).
    s3_keys: Option<(Secret, Secret)>,
    azure_key: Option<Secret>,
    azure_client_secret: Option<Secret>,
    stores: Mutex<Stores>,
}

/// The stores made so far and the order they were made in (oldest first).
#[derive(Debug, Default)]
struct Stores {
    by_id: HashMap<String, Arc<dyn ObjectStore>>,
    order: std::collections::VecDeque<String>,
}

fn env_secret(name: &str) -> Option<Secret> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).map(Secret::new)
}

impl Client {
    /// The client for `config`; fails on a local root that does not exist.
    pub(crate) fn new(config: Config) -> Result<Self, String> {
        let roots = config
            .local_roots
            .iter()
            .map(|r| {
                let real = std::fs::canonicalize(r).map_err(|e| format!("sensor.local_roots: {}: {e}", r.display()))?;
                Ok::<_, String>((r.clone(), real))
            })
            .collect::<Result<_, _>>()?;
        let s3_keys = env_secret("FLYTE_AWS_ACCESS_KEY_ID").zip(env_secret("FLYTE_AWS_SECRET_ACCESS_KEY"));
        Ok(Self {
            roots,
            s3_keys,
            azure_key: env_secret("FLYTE_AZURE_STORAGE_ACCOUNT_KEY"),
            azure_client_secret: env_secret("FLYTE_AZURE_CLIENT_SECRET"),
            config,
            stores: Mutex::default(),
        })
    }

    /// Where `path` points, checked: `INVALID_ARGUMENT` naming the problem otherwise.
    pub(crate) fn locate(&self, path: &str) -> Result<Location, AgentError> {
        let bad = |why: &str| AgentError::invalid_argument(format!("inputs.path '{path}': {why}"));
        let location = if let Some(rest) = path.strip_prefix("s3://").or_else(|| path.strip_prefix("s3a://")) {
            let (bucket, key) = split(rest);
            check_bucket(bucket).map_err(|e| bad(&e))?;
            Location::S3 { bucket: bucket.to_owned(), key: key.to_owned() }
        } else if let Some(rest) = path.strip_prefix("gs://") {
            let (bucket, key) = split(rest);
            check_bucket(bucket).map_err(|e| bad(&e))?;
            Location::Gcs { bucket: bucket.to_owned(), key: key.to_owned() }
        } else if let Some(rest) = ["abfs://", "abfss://", "az://"].iter().find_map(|scheme| path.strip_prefix(scheme))
        {
            let (head, key) = split(rest);
            let (container, account) = match head.split_once('@') {
                Some((container, host)) => {
                    let account = host
                        .strip_suffix(".dfs.core.windows.net")
                        .or_else(|| host.strip_suffix(".blob.core.windows.net"))
                        .ok_or_else(|| bad("the account host must be ACCOUNT.dfs.core.windows.net"))?;
                    (container, account.to_owned())
                }
                None => match &self.config.azure_account {
                    Some(a) => (head, a.clone()),
                    None => {
                        return Err(bad("names no storage account, and the agent has none configured \
                             (sensor.azure_account or FLYTE_AZURE_STORAGE_ACCOUNT_NAME)"));
                    }
                },
            };
            check_account(&account).map_err(|e| bad(&e))?;
            check_container(container).map_err(|e| bad(&e))?;
            // A service principal's token goes to the account's endpoint: only to accounts
            // the operator named.
            let configured = self.config.azure_account.as_deref() == Some(account.as_str());
            let listed = self.config.allowed_buckets.iter().any(|b| b == &format!("{account}/{container}"));
            // With a list, only what it names; without one, the agent's own account.
            let allowed = if self.config.allowed_buckets.is_empty() { configured } else { listed };
            if !allowed {
                return Err(bad(&format!(
                    "the storage account '{account}' is not the agent's (sensor.azure_account) nor listed in \
                     sensor.allowed_buckets as {account}/{container}"
                )));
            }
            Location::Azure { account, container: container.to_owned(), key: key.to_owned() }
        } else if path.starts_with('/') || path.starts_with("file://") {
            Location::Local(self.local(path.strip_prefix("file://").unwrap_or(path)).map_err(|e| bad(&e))?)
        } else {
            return Err(bad(
                "not a path the FileSensor knows: s3://, gs://, abfs://, abfss://, az:// or an absolute local path",
            ));
        };
        let bucket = match &location {
            Location::S3 { bucket, .. } | Location::Gcs { bucket, .. } => Some(bucket.clone()),
            Location::Azure { .. } | Location::Local(_) => None,
        };
        if let Some(bucket) = bucket
            && !self.config.allowed_buckets.is_empty()
            && !self.config.allowed_buckets.contains(&bucket)
        {
            return Err(bad(&format!("the bucket '{bucket}' is not in sensor.allowed_buckets")));
        }
        Ok(location)
    }

    /// A local path, refused unless it stays under a configured root.
    fn local(&self, path: &str) -> Result<PathBuf, String> {
        if self.roots.is_empty() {
            return Err("local paths are not watched: the agent has no sensor.local_roots (a task must not probe \
                        the agent pod's files)"
                .to_owned());
        }
        let p = std::path::Path::new(path);
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err("'..' is not allowed".to_owned());
        }
        let inside = |p: &std::path::Path| self.roots.iter().any(|(r, real)| p.starts_with(r) || p.starts_with(real));
        if !inside(p) {
            return Err("is not under the agent's sensor.local_roots".to_owned());
        }
        Ok(p.to_path_buf())
    }

    /// Whether `location` exists: an object, or a folder with something in it (as
    /// flytekit's filesystems answer `exists`).
    pub(crate) async fn exists(&self, location: &Location) -> Found {
        match location {
            Location::Local(path) => self.exists_locally(path).await,
            Location::S3 { key, .. } | Location::Gcs { key, .. } | Location::Azure { key, .. } => {
                let store = match self.store(location) {
                    Ok(s) => s,
                    Err(e) => return Found::Never(e),
                };
                match tokio::time::timeout(CALL_TIMEOUT * 2, exists_in(store.as_ref(), key)).await {
                    Ok(found) => found,
                    Err(_) => {
                        Found::Unsure(format!("the storage did not answer within {} s", (CALL_TIMEOUT * 2).as_secs()))
                    }
                }
            }
        }
    }

    /// A local path's existence, told only inside the roots. A link may lead out of them, so
    /// the nearest ancestor that exists is resolved and must be inside, whether or not the
    /// path itself exists: a task that can write links under a root then learns nothing
    /// about files outside it (an escaping path is refused the same way either way).
    async fn exists_locally(&self, path: &std::path::Path) -> Found {
        let inside = |real: &std::path::Path| self.roots.iter().any(|(_, r)| real.starts_with(r));
        let escaped =
            || Found::Never("the path leads (through a link) out of the agent's sensor.local_roots".to_owned());
        let mut at = Some(path);
        while let Some(p) = at {
            match tokio::fs::canonicalize(p).await {
                Ok(real) if !inside(&real) => return escaped(),
                Ok(_) if p == path => return Found::Yes,
                Ok(_) => return Found::No,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => at = p.parent(),
                // No detail: an error text could tell what is there.
                Err(_) => return Found::Unsure("the path cannot be checked".to_owned()),
            }
        }
        Found::No
    }

    /// The store for the location's bucket, made on first use.
    fn store(&self, location: &Location) -> Result<Arc<dyn ObjectStore>, String> {
        let id = match location {
            Location::S3 { bucket, .. } => format!("s3://{bucket}"),
            Location::Gcs { bucket, .. } => format!("gs://{bucket}"),
            Location::Azure { account, container, .. } => format!("az://{account}/{container}"),
            Location::Local(_) => return Err("local paths have no store".to_owned()),
        };
        if let Some(s) = self.stores.lock().unwrap_or_else(PoisonError::into_inner).by_id.get(&id) {
            return Ok(s.clone());
        }
        let store = self.build(location).map_err(|e| format!("cannot set up the storage client: {e}"))?;
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        // Another poll may have made it meanwhile: keep one, so the order never repeats an
        // id and the bound holds.
        if let Some(s) = stores.by_id.get(&id) {
            return Ok(s.clone());
        }
        while stores.by_id.len() >= CACHED_STORES {
            let Some(oldest) = stores.order.pop_front() else { break };
            stores.by_id.remove(&oldest);
        }
        stores.order.push_back(id.clone());
        stores.by_id.insert(id, store.clone());
        Ok(store)
    }

    fn options(&self, endpoint: Option<&str>) -> Result<ClientOptions, object_store::Error> {
        let mut options = ClientOptions::new().with_timeout(CALL_TIMEOUT).with_connect_timeout(Duration::from_secs(5));
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            options = options.with_allow_http(true);
        }
        if let Some(path) = &self.config.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| object_store::Error::Generic {
                store: "sensor",
                source: format!("sensor.ca_bundle {}: {e}", path.display()).into(),
            })?;
            for cert in object_store::Certificate::from_pem_bundle(&pem)? {
                options = options.with_root_certificate(cert);
            }
        }
        Ok(options)
    }

    fn build(&self, location: &Location) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        // Retries stay short: the next poll is the retry that matters.
        let retry = RetryConfig { max_retries: 2, retry_timeout: CALL_TIMEOUT, ..RetryConfig::default() };
        Ok(match location {
            Location::S3 { bucket, .. } => {
                let endpoint = self.config.s3_endpoint.as_deref();
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(self.config.s3_region.as_deref().unwrap_or("us-east-1"))
                    .with_retry(retry)
                    .with_client_options(self.options(endpoint)?)
                    .with_http_connector(crate::traced::TracedConnector);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                if let Some((id, key)) = &self.s3_keys {
                    b = b.with_access_key_id(id.expose()).with_secret_access_key(key.expose());
                }
                Arc::new(b.build()?)
            }
            Location::Gcs { bucket, .. } => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(self.options(self.config.gcs_endpoint.as_deref())?)
                    .with_http_connector(crate::traced::TracedConnector);
                if let Some(e) = &self.config.gcs_endpoint {
                    // An emulator: no credentials to send.
                    b = b.with_base_url(e).with_skip_signature(true);
                }
                Arc::new(b.build()?)
            }
            Location::Azure { account, container, .. } => {
                let endpoint = self.config.azure_endpoint.as_deref();
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_account(account)
                    .with_container_name(container)
                    .with_retry(retry)
                    .with_client_options(self.options(endpoint)?)
                    .with_http_connector(crate::traced::TracedConnector);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e.to_owned()).with_allow_http(e.starts_with("http://"));
                }
                if let Some(key) = &self.azure_key {
                    b = b.with_access_key(key.expose());
                }
                if let (Some(tenant), Some(client), Some(secret)) =
                    (&self.config.azure_tenant_id, &self.config.azure_client_id, &self.azure_client_secret)
                {
                    b = b.with_tenant_id(tenant).with_client_id(client).with_client_secret(secret.expose());
                }
                Arc::new(b.build()?)
            }
            Location::Local(_) => unreachable!("local paths are checked without a store"),
        })
    }
}

/// `bucket/key…` split at the first slash; the key without a trailing slash.
fn split(rest: &str) -> (&str, &str) {
    match rest.split_once('/') {
        Some((b, k)) => (b, k.trim_end_matches('/')),
        None => (rest, ""),
    }
}

/// S3's and GCS's bucket naming rules, which also keep a bucket from changing the URL.
fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=222).contains(&bucket.len())
        && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!("'{bucket}' is not a bucket name (lower-case letters, digits, '-', '.', '_')"))
    }
}

/// Azure storage account names: 3-24 lower-case letters and digits.
fn check_account(account: &str) -> Result<(), String> {
    let ok = (3..=24).contains(&account.len()) && account.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!("'{account}' is not a storage account name (3-24 lower-case letters and digits)"))
    }
}

/// Azure container names: 3-63 lower-case letters, digits and single dashes.
fn check_container(container: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&container.len())
        && container.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    if ok { Ok(()) } else { Err(format!("'{container}' is not a container name (lower-case letters, digits, '-')")) }
}

/// The object at `key`, or else anything under `key/`; with no key, whether the bucket
/// answers at all.
async fn exists_in(store: &dyn ObjectStore, key: &str) -> Found {
    if !key.is_empty() {
        let location = Key::from(key);
        let mut head = store.head(&location).await.map(drop);
        // A store without HEAD (gcp-storage-emulator answers 501) is asked with a GET
        // whose body is never read: dropping it closes the answer. Such a store may also
        // leave out the metadata headers object_store reads; the 200 that carried them
        // is the answer that matters.
        if head.as_ref().is_err_and(|e| e.to_string().contains("501 Not Implemented")) {
            head = match store.get(&location).await {
                Err(e) if e.to_string().contains("Header missing from response") => Ok(()),
                other => other.map(drop),
            };
        }
        match head {
            Ok(()) => return Found::Yes,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return judge(e),
        }
    }
    let prefix = (!key.is_empty()).then(|| Key::from(key));
    match store.list(prefix.as_ref()).next().await {
        Some(Ok(_)) => Found::Yes,
        None if key.is_empty() => Found::Yes,
        None => Found::No,
        // Listing inside a bucket never finds nothing with a 404: the bucket (or Azure
        // container) is not there. object_store passes S3's NoSuchBucket on as a generic
        // error with the status.
        Some(Err(object_store::Error::NotFound { .. })) => Found::Never("the bucket does not exist".to_owned()),
        Some(Err(e)) if e.to_string().contains("404 Not Found") => Found::Never("the bucket does not exist".to_owned()),
        Some(Err(e)) => judge(e),
    }
}

/// What a storage error means for the sensor.
fn judge(e: object_store::Error) -> Found {
    match e {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            Found::Never(format!("access denied: {e}"))
        }
        object_store::Error::NotFound { .. } => Found::Never(format!("not found: {e}")),
        other => Found::Unsure(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(f: impl FnOnce(&mut Config)) -> Client {
        let mut c = Config::default();
        f(&mut c);
        Client::new(c).unwrap()
    }

    #[test]
    fn paths_are_parsed_and_checked_before_any_request() {
        let c = client(|c| c.azure_account = Some("flyteacct".into()));
        assert_eq!(
            c.locate("s3://my-bucket/data/x.csv").unwrap(),
            Location::S3 { bucket: "my-bucket".into(), key: "data/x.csv".into() }
        );
        assert_eq!(c.locate("gs://b-1/dir/").unwrap(), Location::Gcs { bucket: "b-1".into(), key: "dir".into() });
        assert_eq!(
            c.locate("abfs://data@flyteacct.dfs.core.windows.net/a/b").unwrap(),
            Location::Azure { account: "flyteacct".into(), container: "data".into(), key: "a/b".into() }
        );
        assert_eq!(
            c.locate("az://data/a").unwrap(),
            Location::Azure { account: "flyteacct".into(), container: "data".into(), key: "a".into() }
        );
        for bad in [
            "s3://Bad_Bucket/x",
            "s3://b/x",
            "s3://evil.com:443@bucket/x",
            "gs://bucket?x/y",
            "abfs://data@attacker.dfs.core.windows.net/a",
            "abfs://data@flyteacct.evil.net/a",
            "http://example.com/x",
            "relative/path",
            "/etc/passwd",
        ] {
            let e = c.locate(bad).unwrap_err().to_string();
            assert!(e.contains("inputs.path"), "{bad}: {e}");
        }
        let listed = client(|c| {
            c.azure_account = Some("flyteacct".into());
            c.allowed_buckets = vec!["flyteacct/data".into()];
        });
        assert!(listed.locate("az://data/x").is_ok());
        assert!(listed.locate("az://other/x").is_err(), "a list names every container allowed");
        let only = client(|c| c.allowed_buckets = vec!["ok-bucket".into()]);
        assert!(only.locate("s3://ok-bucket/x").is_ok());
        assert!(only.locate("s3://other-bucket/x").unwrap_err().to_string().contains("sensor.allowed_buckets"));
    }

    #[tokio::test]
    async fn local_paths_stay_under_the_roots_links_included() {
        let dir = std::env::temp_dir().join(format!("sensor-roots-{}", std::process::id()));
        let (root, outside) = (dir.join("root"), dir.join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).unwrap();
        let c = client(|c| c.local_roots = vec![root.clone()]);
        let root = std::fs::canonicalize(&root).unwrap();
        let file = root.join("ready.flag");
        let at = |p: &std::path::Path| c.locate(p.to_str().unwrap());
        assert!(matches!(c.exists(&at(&file).unwrap()).await, Found::No));
        std::fs::write(&file, "").unwrap();
        assert!(matches!(c.exists(&at(&file).unwrap()).await, Found::Yes));
        assert!(at(&root.join("../outside/secret")).is_err());
        assert!(at(&outside.join("secret")).is_err());
        assert!(matches!(c.exists(&at(&root.join("link")).unwrap()).await, Found::Never(_)));
        // A link to a folder outside: whether a file there exists or not, the same refusal.
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        assert!(matches!(c.exists(&at(&root.join("out/secret")).unwrap()).await, Found::Never(_)));
        assert!(matches!(c.exists(&at(&root.join("out/missing")).unwrap()).await, Found::Never(_)));
        assert!(matches!(c.exists(&at(&root.join("out/a/b/c")).unwrap()).await, Found::Never(_)));
        assert!(client(|_| {}).locate(file.to_str().unwrap()).unwrap_err().to_string().contains("local_roots"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
