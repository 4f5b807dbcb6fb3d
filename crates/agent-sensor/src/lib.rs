//! The sensor agent: runs flytekit's `FileSensor` (task type `sensor`, async), which waits
//! until a file, or a non-empty folder, exists in S3, GCS, Azure Blob Storage or a
//! configured local directory. A drop-in for the sensor engine every flytekit image
//! registers.
//!
//! The shape every agent of the workspace has: `agent.rs` (the trait, flytekit's
//! `SensorMetadata` as the resource meta), `client.rs` (the storage it checks, through the
//! `object_store` crate, with credentials as flytekit's data persistence reads them),
//! `config.rs` (the settings section).

mod agent;
mod client;
mod config;
mod traced;

pub use agent::{SensorAgent, SensorMeta, TASK_TYPE};
pub use config::{Config, HELP};

/// The agents this binary serves, from the `sensor` settings.
pub async fn registry(settings: &agent_core::config::Settings) -> Result<agent_core::Registry, String> {
    let config: Config = settings.section_of(&HELP).map_err(|e| e.to_string())?;
    agent_core::Registry::builder().async_agent(SensorAgent::new(config)?).map_err(|e| e.to_string())
}
