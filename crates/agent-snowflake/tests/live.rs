//! Against a real Snowflake account: runs only when `SNOWFLAKE_LIVE_ACCOUNT`,
//! `SNOWFLAKE_LIVE_USER`, `SNOWFLAKE_LIVE_WAREHOUSE` and `SNOWFLAKE_LIVE_PRIVATE_KEY_FILE` are
//! set; otherwise it says so and passes. It always compiles, so it cannot rot.

use std::time::Duration;

use agent_core::AgentService;
use agent_core::pb::core;
use agent_core::prelude::*;
use agent_core::testing::secrets;
use agent_snowflake::{Config, SnowflakeAgent};
use executor::{ExecutorOptions, LocalExecutor, Outcome};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn select_one_on_real_snowflake() {
    let vars = [
        "SNOWFLAKE_LIVE_ACCOUNT",
        "SNOWFLAKE_LIVE_USER",
        "SNOWFLAKE_LIVE_WAREHOUSE",
        "SNOWFLAKE_LIVE_PRIVATE_KEY_FILE",
    ]
    .map(|v| std::env::var(v).ok());
    let [Some(account), Some(user), Some(warehouse), Some(key_file)] = vars else {
        #[allow(clippy::print_stdout)]
        {
            println!(
                "skipping: set SNOWFLAKE_LIVE_ACCOUNT, _USER, _WAREHOUSE and _PRIVATE_KEY_FILE to run against Snowflake"
            );
        }
        return;
    };
    let key = std::fs::read_to_string(key_file).expect("private key file");
    let agent = SnowflakeAgent::new(Config { base_url: None, ..Config::default() }).unwrap();
    let service = AgentService::new(
        Registry::builder().async_agent(agent).unwrap(),
        secrets(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", &key)]),
    );
    let executor =
        LocalExecutor::new(service, ExecutorOptions { poll_interval: Duration::from_secs(1), ..Default::default() });
    let config = [("account", account), ("user", user), ("warehouse", warehouse)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let task = TaskRequest {
        template: core::TaskTemplate {
            r#type: "snowflake".into(),
            config,
            target: Some(core::task_template::Target::Sql(core::Sql { statement: "select 1".into(), dialect: 1 })),
            ..Default::default()
        },
        ..Default::default()
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), executor.run(task, &CancellationToken::new(), |_| {}))
        .await
        .unwrap()
        .unwrap();
    let Outcome::Finished(r) = outcome else { panic!("{outcome:?}") };
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
}
