//! The BigQuery agent: runs `bigquery_query_job_task` tasks (flytekit's `BigQueryTask`) as
//! BigQuery query jobs, a drop-in for flytekit's Python agent.

mod agent;
mod client;
mod config;
mod ids;
mod params;

pub use agent::{BigQueryAgent, BigQueryMeta, TASK_TYPE};
pub use config::Config;
