//! The Propeller-like executor against the test agents: in-process and over gRPC, and a
//! cancelled task's job deleted at the agent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_core::AgentService;
use agent_core::literals::Value;
use agent_core::prelude::*;
use agent_core::testing::{TestServer, secrets, test_config};
use executor::testing::TestServerExt as _;
use executor::{ExecutorOptions, LocalExecutor, Outcome, Progress};
use testbed::task;
use testbed::test_agent::{self, ASYNC_TYPE, Counting, SYNC_TYPE};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn local_executor_runs_tasks_in_process_and_over_grpc() {
    let service = AgentService::new(test_agent::registry(), secrets(&[]));
    let fast = ExecutorOptions { poll_interval: Duration::from_millis(20), ..Default::default() };
    let in_process = LocalExecutor::new(service.clone(), fast.clone());
    let server = TestServer::start_with(service, test_config()).await;
    let remote = server.executor(Duration::from_millis(20)).await;
    let never = CancellationToken::new();

    let t = task(ASYNC_TYPE, serde_json::json!({"duration_ms": 60}), &[("x", Value::Integer(5))]);
    let mut polls = 0;
    let a =
        in_process.run(t.clone(), &never, |p| polls += usize::from(matches!(p, Progress::Polled(_)))).await.unwrap();
    let b = remote.run(t, &never, |_| {}).await.unwrap();
    for outcome in [a, b] {
        let Outcome::Finished(r) = outcome else { panic!("not finished") };
        assert_eq!(r.output_values().unwrap()["y"], Value::Integer(10));
    }
    assert!(polls >= 2, "polled until terminal ({polls} polls)");

    let s = task(SYNC_TYPE, serde_json::json!({}), &[("name", "sync".into())]);
    let Outcome::Finished(r) = remote.run(s, &never, |_| {}).await.unwrap() else { panic!() };
    assert_eq!(r.output_values().unwrap()["greeting"], Value::String("hello, sync".into()));
}

#[tokio::test]
async fn cancelling_the_executor_deletes_the_job() {
    let deletes = Arc::new(AtomicUsize::new(0));
    let registry = Registry::builder().async_agent(Counting(deletes.clone())).unwrap();
    let server = TestServer::start(registry).await;
    let executor = server.executor(Duration::from_millis(10)).await;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let outcome = executor.run(task("counting", serde_json::json!({}), &[]), &cancel, |_| {}).await.unwrap();
    assert_eq!(outcome, Outcome::Cancelled { delete: Some(Ok(())) });
    assert_eq!(deletes.load(Ordering::SeqCst), 1);
}
