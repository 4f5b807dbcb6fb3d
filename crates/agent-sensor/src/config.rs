//! Settings of the sensor agent: the `sensor` section of the configuration. The storage
//! endpoints and account names default to the variables flytekit's data persistence
//! reads; keys and client secrets are agent secrets (same names), never settings.

use std::path::PathBuf;

use agent_core::Description;
use serde::{Deserialize, Serialize};

/// flytekit's variables, as defaults of the settings they mean.
pub(crate) const ENV: &[(&str, &str)] = &[
    ("s3_endpoint", "FLYTE_AWS_ENDPOINT"),
    ("s3_region", "AWS_REGION"),
    ("azure_account", "FLYTE_AZURE_STORAGE_ACCOUNT_NAME"),
    ("azure_tenant_id", "FLYTE_AZURE_TENANT_ID"),
    ("azure_client_id", "FLYTE_AZURE_CLIENT_ID"),
];

/// What the agent reads, for `--help` (a test keeps it equal to [`Config`]).
pub const HELP: Description = Description::of::<Config>("sensor")
    .settings(&[
        ("local_roots", "Local directories a FileSensor may watch (a shared volume); empty: none."),
        ("s3_endpoint", "S3 endpoint (MinIO, an emulator); else AWS."),
        ("s3_region", "S3 region; else us-east-1."),
        ("azure_account", "Azure storage account of paths that name none, and the one a token may go to."),
        ("azure_tenant_id", "Azure AD tenant of a service principal."),
        ("azure_client_id", "Azure AD client of a service principal."),
        ("azure_endpoint", "Blob endpoint for Azure (Azurite, a private endpoint)."),
        ("gcs_endpoint", "GCS endpoint (an emulator); no credentials are sent to it."),
        ("allowed_buckets", "Buckets (S3, GCS) or account/container (Azure) sensors may watch; empty: any."),
        ("ca_bundle", "Extra PEM bundle of CAs to trust (a private storage endpoint's)."),
    ])
    .env_defaults(ENV)
    .environment(&[
        ("FLYTE_AWS_ACCESS_KEY_ID, FLYTE_AWS_SECRET_ACCESS_KEY", "S3 access key (flytekit's names), read at start-up."),
        ("FLYTE_AZURE_STORAGE_ACCOUNT_KEY", "Azure storage account key, read at start-up."),
        ("FLYTE_AZURE_CLIENT_SECRET", "Azure service principal's secret (with azure_tenant_id, azure_client_id)."),
        ("AWS_*", "The AWS default chain without flytekit's key (AWS_ACCESS_KEY_ID, IRSA's AWS_ROLE_ARN, ...)."),
        ("GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_*", "Google's Application Default Credentials."),
        ("AZURE_*", "Azure's workload identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, ...)."),
    ]);

/// `sensor.*` settings (`AGENT_SENSOR__<KEY>` in the environment).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` lists every setting, and lists split from the environment and `--set`.
    #[test]
    fn the_description_matches_the_settings() {
        agent_core::testing::conformance::description(&HELP);
        let vars = [("AGENT_SENSOR__ALLOWED_BUCKETS", "landing,acct/inbox")];
        let config: Config = agent_core::testing::section_of(&HELP, &vars).unwrap();
        assert_eq!(config.allowed_buckets, ["landing", "acct/inbox"]);
    }
}
