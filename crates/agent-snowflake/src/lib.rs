//! The Snowflake agent: runs `snowflake` tasks (flytekit's `SnowflakeTask`) through
//! Snowflake's SQL API v2 with key-pair JWT authentication, a drop-in for flytekit's
//! Python agent that binds inputs instead of formatting them into the SQL.

mod account;
mod agent;
mod bindings;
mod client;
mod config;
mod jwt;

pub use agent::{SnowflakeAgent, SnowflakeMeta, TASK_TYPE};
pub use config::{Config, HELP};

/// The agents this binary serves, from the `snowflake` settings.
pub async fn registry(settings: &agent_core::config::Settings) -> Result<agent_core::Registry, String> {
    let config: Config = settings.section_of(&HELP).map_err(|e| e.to_string())?;
    agent_core::Registry::builder().async_agent(SnowflakeAgent::new(config)?).map_err(|e| e.to_string())
}
