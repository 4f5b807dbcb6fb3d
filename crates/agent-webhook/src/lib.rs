//! The webhook agent: runs flytekit's `WebhookTask` (task type `webhook`, sync), one HTTP
//! call per task, answered within the call. A drop-in for the connector every flytekit
//! image registers with `pyflyte serve`.
//!
//! The shape every agent of the workspace has: `agent.rs` (the trait and the result),
//! `client.rs` (where calls go and how), `config.rs` (the settings section), plus what this agent alone needs: `template.rs`
//! (flytekit's `{inputs.…}` placeholders) and `guard.rs` (which addresses a webhook may
//! reach: a task names any URL, so the agent checks where it actually connects).

mod agent;
mod client;
mod config;
mod guard;
mod template;

pub use agent::{TASK_TYPE, WebhookAgent};
pub use config::{Config, HELP};

/// The agents this binary serves, from the `webhook` settings.
pub async fn registry(settings: &agent_core::config::Settings) -> Result<agent_core::Registry, String> {
    let config: Config = settings.section_of(&HELP).map_err(|e| e.to_string())?;
    agent_core::Registry::builder().sync_agent(WebhookAgent::new(config)?).map_err(|e| e.to_string())
}
