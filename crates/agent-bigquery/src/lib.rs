//! The BigQuery agent: runs `bigquery_query_job_task` tasks (flytekit's `BigQueryTask`) as
//! BigQuery query jobs, a drop-in for flytekit's Python agent.

mod agent;
mod client;
mod config;
mod credentials;
mod params;

pub use agent::{BigQueryAgent, BigQueryMeta, TASK_TYPE};
pub use config::{Config, HELP};

/// The agents this binary serves, from the `bigquery` settings.
pub async fn registry(settings: &agent_core::config::Settings) -> Result<agent_core::Registry, String> {
    let config: Config = settings.section_of(&HELP).map_err(|e| e.to_string())?;
    agent_core::Registry::builder().async_agent(BigQueryAgent::new(&config).await?).map_err(|e| e.to_string())
}
