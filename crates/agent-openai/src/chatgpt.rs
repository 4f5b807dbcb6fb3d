//! The ChatGPT agent (sync): one chat completion per task, answered within the call.

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use agent_core::prelude::*;

use crate::client::{Clients, Failure, budget, classify, task_organization};
use crate::config::Config;

/// The task type flytekit's `ChatGPTTask` declares.
pub const CHATGPT_TYPE: &str = "chatgpt";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Custom {
    #[serde(default)]
    openai_organization: Option<String>,
    chatgpt_config: Map<String, Json>,
}

/// The agent.
#[derive(Debug, Clone)]
pub struct ChatGptAgent {
    clients: Clients,
    config: Config,
}

impl ChatGptAgent {
    /// An agent with the given settings.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Self { clients: Clients::new(&config)?, config })
    }
}

impl SyncAgent for ChatGptAgent {
    fn name(&self) -> &str {
        "ChatGPT Connector"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(CHATGPT_TYPE, 0)]
    }

    async fn execute(&self, ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        let custom: Custom = task.custom_as()?;
        let organization = task_organization(custom.openai_organization)?;
        let model = custom.chatgpt_config.get("model").and_then(Json::as_str).unwrap_or_default();
        if model.is_empty() {
            return Err(AgentError::invalid_argument(
                "template.custom.chatgpt_config.model: missing; ChatGPTTask needs a model",
            ));
        }
        let message: String = task.input("message")?;
        // The task's settings go to the API as they are (integral numbers as integers);
        // the message input is the one user message, as flytekit sends it.
        let mut request = custom.chatgpt_config;
        request.insert("messages".into(), json!([{"role": "user", "content": message}]));
        request.insert("stream".into(), json!(false));
        let client = self.clients.client(ctx, organization.as_deref())?;
        let limit = budget(ctx, self.config.chat_timeout);
        let answer = tokio::time::timeout(limit, client.chat().create_byot::<_, Json>(Json::Object(request))).await;
        Ok(match answer {
            Ok(Ok(completion)) => {
                let content = completion
                    .pointer("/choices/0/message/content")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned();
                Resource::succeeded().with_output("o0", content)
            }
            Ok(Err(e)) => match classify(&e) {
                Failure::Transient(m) => Resource::retryable_failure(m),
                Failure::Rejected(m) | Failure::NotFound(m) => Resource::failed(m),
            },
            Err(_) => Resource::retryable_failure(format!("OpenAI did not answer within {} ms", limit.as_millis())),
        })
    }
}
