//! `agent-databricks`: the Databricks agent server.

use std::process::ExitCode;

use agent_core::Registry;

fn main() -> ExitCode {
    let info = agent_core::server::BinaryInfo {
        name: "agent-databricks",
        about: "Flyte agent for Databricks runs (task types spark and databricks)",
        version: env!("CARGO_PKG_VERSION"),
    };
    agent_core::server::run(info, async |settings| {
        let config: agent_databricks::Config = settings.section("databricks").map_err(|e| e.to_string())?;
        let agent = agent_databricks::DatabricksAgent::new(config)?;
        Registry::builder().async_agent(agent).map_err(|e| e.to_string())
    })
}
