//! The ChatGPT agent (sync): one chat completion per task, answered within the call.

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use agent_core::prelude::*;

use crate::client::{Client, ORG_FIELD, SERVICE, Sdk, failure};
use crate::config::Config;

/// The task type flytekit's `ChatGPTTask` declares.
pub const TASK_TYPE: &str = "chatgpt";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Custom {
    openai_organization: Option<String>,
    chatgpt_config: Map<String, Json>,
}

/// The agent.
#[derive(Debug, Clone)]
pub struct ChatGptAgent(Client);

impl ChatGptAgent {
    /// An agent with the given settings.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Self(Client::new(&config, config.chat_timeout)?))
    }

    /// The SDK for the call and the completion request the task asks for.
    fn request(&self, ctx: &Context, task: &TaskRequest) -> Result<(Sdk, Json), AgentError> {
        let custom: Custom = task.custom_as()?;
        if custom.chatgpt_config.get("model").and_then(Json::as_str).is_none_or(str::is_empty) {
            let missing = "template.custom.chatgpt_config.model: missing; ChatGPTTask needs a model";
            return Err(AgentError::invalid_argument(missing));
        }
        // The task's settings go to the API as they are (integral numbers as integers);
        // the message input is the one user message, as flytekit sends it.
        let mut request = custom.chatgpt_config;
        request.insert("messages".into(), json!([{"role": "user", "content": task.input::<String>("message")?}]));
        request.insert("stream".into(), json!(false));
        let sdk = self.0.sdk(ctx, custom.openai_organization.as_deref(), ORG_FIELD)?;
        Ok((sdk, Json::Object(request)))
    }
}

impl SyncAgent for ChatGptAgent {
    const NAME: &str = "ChatGPT Connector";
    const TASK_TYPES: &[&str] = &[TASK_TYPE];

    fn execute(&self, ctx: &Context, task: TaskRequest) -> impl Future<Output = Result<Resource, AgentError>> + Send {
        // The request is built before the future, which then keeps only it while the
        // completion is awaited, not the whole task: a call in flight stays small. Boxed,
        // since what the future captures it keeps apart from what it unpacks.
        let prepared = self.request(ctx, &task).map(Box::new);
        async move {
            let prepared = prepared?;
            let (sdk, request) = (&prepared.0, &prepared.1);
            // Serialized from a reference: a copy per attempt would be kept for the whole call.
            let chat = |_| async move { sdk.chat().create_byot::<&Json, Json>(request).await };
            // A failed completion is the task's result, not an RPC error: Propeller retries a
            // transient one as a new attempt.
            Ok(match self.0.calls.retried_sdk(ctx, &SERVICE, "chat completion", chat, failure).await {
                Ok(completion) => {
                    let content = completion.pointer("/choices/0/message/content").and_then(Json::as_str);
                    Resource::succeeded().with_output("o0", content.unwrap_or_default().to_owned())
                }
                Err(f) => f.into_sync_result(),
            })
        }
    }
}
