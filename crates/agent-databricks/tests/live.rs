//! Against a real Databricks workspace: runs only when `DATABRICKS_LIVE_INSTANCE`,
//! `DATABRICKS_LIVE_TOKEN` and `DATABRICKS_LIVE_CLUSTER_ID` are set; otherwise it says so and
//! passes. It submits a tiny notebook-free run on an existing cluster and cancels it, so it
//! costs (almost) nothing. It always compiles, so it cannot rot.

use std::time::Duration;

use agent_core::AgentService;
use agent_core::json::json_to_struct;
use agent_core::pb::core;
use agent_core::prelude::*;
use agent_core::testing::secrets;
use agent_databricks::{Config, DatabricksAgent};

#[tokio::test]
async fn submit_poll_and_cancel_on_real_databricks() {
    let vars = ["DATABRICKS_LIVE_INSTANCE", "DATABRICKS_LIVE_TOKEN", "DATABRICKS_LIVE_CLUSTER_ID"]
        .map(|v| std::env::var(v).ok());
    let [Some(instance), Some(token), Some(cluster)] = vars else {
        #[allow(clippy::print_stdout)]
        {
            println!(
                "skipping: set DATABRICKS_LIVE_INSTANCE, DATABRICKS_LIVE_TOKEN and DATABRICKS_LIVE_CLUSTER_ID to run against Databricks"
            );
        }
        return;
    };
    let config = Config { default_instance: Some(instance), ..Config::default() };
    let agent = DatabricksAgent::new(config).unwrap();
    let service = AgentService::new(
        Registry::builder().async_agent(agent).unwrap(),
        secrets(&[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", &token)]),
    );
    let custom =
        serde_json::json!({"databricksConf": {"run_name": "flyte-agents live test", "existing_cluster_id": cluster}});
    let task = TaskRequest {
        template: core::TaskTemplate {
            r#type: "databricks".into(),
            custom: custom.as_object().map(json_to_struct),
            target: Some(core::task_template::Target::Container(core::Container {
                args: vec!["--help".into()],
                ..Default::default()
            })),
            ..Default::default()
        },
        ..Default::default()
    };
    let meta = service.create(task, Default::default()).await.expect("runs/submit");
    let category = TaskCategory::new("databricks", 0);
    let r = service.get(category.clone(), &meta, Default::default()).await.expect("runs/get");
    assert_ne!(r.phase, Phase::Succeeded, "a fresh run cannot have finished yet");
    service.delete(category.clone(), &meta, Default::default()).await.expect("runs/cancel");
    tokio::time::sleep(Duration::from_secs(5)).await;
    service.delete(category, &meta, Default::default()).await.expect("cancel is idempotent");
}
