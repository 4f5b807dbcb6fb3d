//! The Databricks agent: runs flytekit's `spark` (`Databricks` config) and `databricks`
//! (`DatabricksV2`) tasks as Databricks one-time runs (Jobs API 2.1), a drop-in for
//! flytekit's Python agent that keeps tokens out of Propeller's state.

mod agent;
mod auth;
mod client;
mod config;
mod spec;

pub use agent::{DatabricksAgent, DatabricksMeta, SPARK_TASK_TYPE, TASK_TYPE};
pub use config::{Config, HELP};

/// The agent's registry from loaded settings: what the binary serves. Fails on a setting
/// that would fail every task, so a misconfigured agent never starts.
pub async fn registry(settings: &agent_core::config::Settings) -> Result<agent_core::Registry, String> {
    let config: Config = settings.section_of(&HELP).map_err(|e| e.to_string())?;
    let agent = DatabricksAgent::new(config)?;
    agent_core::Registry::builder().async_agent(agent).map_err(|e| e.to_string())
}
