//! Against real BigQuery: runs only when `BIGQUERY_LIVE_PROJECT` names a project and
//! Application Default Credentials are available; otherwise it says so and passes.
//! It always compiles, so it cannot rot.

use std::time::Duration;

use agent_bigquery::{BigQueryAgent, Config, TASK_TYPE};
use agent_core::AgentService;
use agent_core::json::json_to_struct;
use agent_core::pb::core;
use agent_core::prelude::*;
use agent_core::testing::secrets;
use executor::{ExecutorOptions, LocalExecutor, Outcome};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn select_one_on_real_bigquery() {
    let Ok(project) = std::env::var("BIGQUERY_LIVE_PROJECT") else {
        // Printed so a CI log shows the test did not exercise anything.
        #[allow(clippy::print_stdout)]
        {
            println!("skipping: set BIGQUERY_LIVE_PROJECT (and Google credentials) to run against BigQuery");
        }
        return;
    };
    let config = Config { emulator_host: None, ..Config::default() };
    let agent = BigQueryAgent::new(&config).await.expect("client with Application Default Credentials");
    let service = AgentService::new(Registry::builder().async_agent(agent).unwrap(), secrets(&[]));
    let executor =
        LocalExecutor::new(service, ExecutorOptions { poll_interval: Duration::from_secs(1), ..Default::default() });
    let custom = serde_json::json!({"ProjectID": project, "Location": std::env::var("BIGQUERY_LIVE_LOCATION").unwrap_or("US".into())});
    let task = TaskRequest {
        template: core::TaskTemplate {
            r#type: TASK_TYPE.into(),
            custom: custom.as_object().map(json_to_struct),
            target: Some(core::task_template::Target::Sql(core::Sql {
                statement: "SELECT 1 AS one".into(),
                dialect: 1,
            })),
            ..Default::default()
        },
        ..Default::default()
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), executor.run(task, &CancellationToken::new(), |_| {}))
        .await
        .expect("finished within two minutes")
        .expect("ran");
    let Outcome::Finished(r) = outcome else { panic!("{outcome:?}") };
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
}
