//! `agent-databricks`: the Databricks agent server.

use std::process::ExitCode;

fn main() -> ExitCode {
    let info = agent_core::server::BinaryInfo {
        name: "agent-databricks",
        about: "Flyte agent for Databricks runs (task types spark and databricks)",
        version: env!("CARGO_PKG_VERSION"),
    };
    agent_core::server::run(info, async |settings| agent_databricks::registry(settings))
}
