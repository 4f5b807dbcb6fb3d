//! The OpenAI agents: ChatGPT (sync, `chatgpt`) answers within the call; Batch (async,
//! `openai-batch`) runs an OpenAI batch. Drop-ins for flytekit's Python agents.

mod batch;
mod chatgpt;
mod client;
mod config;

pub use batch::{BATCH_TYPE, BatchAgent, BatchMeta};
pub use chatgpt::{CHATGPT_TYPE, ChatGptAgent};
pub use config::Config;
