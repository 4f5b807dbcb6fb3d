//! The OpenAI agents: ChatGPT (sync, `chatgpt`) answers within the call; Batch (async,
//! `openai-batch`) runs an OpenAI batch. Drop-ins for flytekit's Python agents.

mod batch;
mod chatgpt;
mod client;
mod config;

pub use batch::{BatchAgent, BatchMeta, TASK_TYPE as BATCH_TYPE};
pub use chatgpt::{ChatGptAgent, TASK_TYPE as CHATGPT_TYPE};
pub use config::{Config, HELP};

/// The agents this binary serves, from the `openai` settings.
pub async fn registry(settings: &agent_core::config::Settings) -> Result<agent_core::Registry, String> {
    let config: Config = settings.section_of(&HELP).map_err(|e| e.to_string())?;
    let (chatgpt, batch) = (ChatGptAgent::new(config.clone())?, BatchAgent::new(config)?);
    let builder = agent_core::Registry::builder().sync_agent(chatgpt);
    builder.and_then(|r| r.async_agent(batch)).map_err(|e| e.to_string())
}
