//! agent-core: everything Flyte agents share.
//!
//! An agent crate implements [`AsyncAgent`] (create / get / delete) or [`SyncAgent`]
//! (execute) in flytekit's vocabulary, registers it in a [`Registry`], and calls
//! [`server::run`] from `main`. This crate owns the protocol ([`pb`], generated from
//! `proto/`), the gRPC front end, health and reflection, configuration, secrets,
//! telemetry and literal helpers: the SDK an agent is written against and the runtime that
//! serves it, nothing else.
//!
//! Agent crates never touch tonic: only this crate serves gRPC (the `executor` crate holds
//! the client that drives an agent from outside).

#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod describe;
mod erased;
pub mod error;
mod grpc;
pub mod http;
pub mod json;
pub mod literals;
pub mod pb;
pub mod registry;
pub mod resource;
pub mod retry;
pub mod secrets;
pub mod server;
pub mod service;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;

pub use agent::{
    AsyncAgent, Context, LogLine, Logs, LogsQuery, MetricsQuery, ResourceMeta, SyncAgent, TaskCategory, TaskRequest,
};
pub use describe::Description;
pub use error::AgentError;
/// Protobuf well-known types (`Timestamp`, `Duration`, `Struct`) used in the protocol messages.
pub use prost_types;
pub use registry::Registry;
pub use resource::{FailureDetail, FailureOrigin, LogLink, Phase, Resource};
pub use secrets::Secret;
pub use service::AgentService;

/// What an agent crate needs, in one import.
pub mod prelude {
    pub use crate::agent::{
        AsyncAgent, Context, LogsQuery, MetricsQuery, Protocol, SyncAgent, TaskCategory, TaskRequest,
    };
    pub use crate::error::AgentError;
    pub use crate::literals::Value;
    pub use crate::registry::Registry;
    pub use crate::resource::{FailureDetail, FailureOrigin, LogLink, Phase, Resource};
    pub use crate::secrets::Secret;
}
