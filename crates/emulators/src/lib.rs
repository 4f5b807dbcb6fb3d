//! Local emulators of the external HTTP APIs the agents call, for tests, local runs and
//! benchmarks: they speak the real endpoints, JSON shapes and error bodies, keep state,
//! and inject faults on request. Use them in-process ([`bigquery::BigQuery::start`]) or
//! through the `emulators` binary.

pub mod bigquery;
pub mod databricks;
pub mod faults;
mod http;
pub mod openai;
pub mod snowflake;
pub mod tls;

pub use faults::{FaultAction, FaultRule, Faults};
pub use http::Running;
