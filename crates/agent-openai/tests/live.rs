//! Against the real OpenAI API: runs only when `OPENAI_LIVE_API_KEY` is set (model from
//! `OPENAI_LIVE_MODEL`, default gpt-4o-mini); otherwise it says so and passes. One tiny chat
//! completion. It always compiles, so it cannot rot.

use agent_core::AgentService;
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::core;
use agent_core::prelude::*;
use agent_core::testing::secrets;
use agent_openai::{ChatGptAgent, Config};

#[tokio::test]
async fn one_chat_completion_on_real_openai() {
    let Ok(key) = std::env::var("OPENAI_LIVE_API_KEY") else {
        #[allow(clippy::print_stdout)]
        {
            println!("skipping: set OPENAI_LIVE_API_KEY to run against OpenAI");
        }
        return;
    };
    let model = std::env::var("OPENAI_LIVE_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
    let agent = ChatGptAgent::new(Config { base_url: None, ..Config::default() }).unwrap();
    let service = AgentService::new(
        Registry::builder().sync_agent(agent).unwrap(),
        secrets(&[("_FSEC_FLYTE_OPENAI_API_KEY", &key)]),
    );
    let custom = serde_json::json!({"chatgpt_config": {"model": model, "max_tokens": 5}});
    let task = TaskRequest {
        template: core::TaskTemplate {
            r#type: "chatgpt".into(),
            custom: custom.as_object().map(json_to_struct),
            ..Default::default()
        },
        inputs: values_to_literal_map([("message", Value::from("Say OK."))]),
        ..Default::default()
    };
    let r = service.execute(task, Default::default()).await.expect("ExecuteTaskSync");
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
}
