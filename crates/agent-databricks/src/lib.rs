//! The Databricks agent: runs flytekit's `spark` (`Databricks` config) and `databricks`
//! (`DatabricksV2`) tasks as Databricks one-time runs (Jobs API 2.1), a drop-in for
//! flytekit's Python agent that keeps tokens out of Propeller's state.

mod agent;
mod auth;
mod client;
mod config;
mod spec;

pub use agent::{DatabricksAgent, DatabricksMeta};
pub use config::Config;
