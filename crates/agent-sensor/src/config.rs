//! Settings of the sensor agent: the `sensor` section of the configuration. The storage
//! endpoints and account names default to the variables flytekit's data persistence
//! reads; keys and client secrets are agent secrets (same names), never settings.

use std::path::PathBuf;

use serde::Deserialize;

/// flytekit's variables, as defaults of the settings they mean.
pub(crate) const ENV: &[(&str, &str)] = &[
    ("s3_endpoint", "FLYTE_AWS_ENDPOINT"),
    ("s3_region", "AWS_REGION"),
    ("azure_account", "FLYTE_AZURE_STORAGE_ACCOUNT_NAME"),
    ("azure_tenant_id", "FLYTE_AZURE_TENANT_ID"),
    ("azure_client_id", "FLYTE_AZURE_CLIENT_ID"),
];

/// `sensor.*` settings (`AGENT_SENSOR__<KEY>` in the environment).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Local directories a FileSensor may watch (on the agent's own filesystem: a shared
    /// volume). Empty by default: a task must not probe the pod's files.
    pub local_roots: Vec<PathBuf>,
    /// S3 endpoint (MinIO, an emulator); default `FLYTE_AWS_ENDPOINT`, else AWS.
    pub s3_endpoint: Option<String>,
    /// S3 region; default `AWS_REGION`, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Azure storage account for `abfs://container/path` paths that name none; default
    /// `FLYTE_AZURE_STORAGE_ACCOUNT_NAME`.
    pub azure_account: Option<String>,
    /// Azure AD tenant for a service principal; default `FLYTE_AZURE_TENANT_ID`.
    pub azure_tenant_id: Option<String>,
    /// Azure AD client for a service principal; default `FLYTE_AZURE_CLIENT_ID`.
    pub azure_client_id: Option<String>,
    /// Blob endpoint for Azure (Azurite, a private endpoint), e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub azure_endpoint: Option<String>,
    /// GCS endpoint (an emulator), e.g. `http://127.0.0.1:9023`; credentials are then not
    /// used.
    pub gcs_endpoint: Option<String>,
    /// Buckets (S3, GCS) or `account/container` (Azure) sensors may watch; empty: any the
    /// agent's credentials reach.
    pub allowed_buckets: Vec<String>,
    /// Extra PEM bundle of CAs to trust (a private storage endpoint's).
    pub ca_bundle: Option<PathBuf>,
}
