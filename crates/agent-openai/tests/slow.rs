//! agent-openai against a slow and rate-limited OpenAI emulator: calls share HTTP/2
//! connections, a rate limit slows calls down without failing one, and a call that cannot
//! be served within its deadline ends as a retryable failure naming the limit.

use std::time::{Duration, Instant};

use agent_core::AgentService;
use agent_core::config::ServerConfig;
use agent_core::http::RestSettings;
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::{admin, core};
use agent_core::prelude::*;
use agent_core::testing::{Request, TestServer, secrets, test_config};
use agent_openai::{CHATGPT_TYPE, ChatGptAgent, Config};
use emulators::openai::{OpenAi, Settings};
use emulators::tls::TestCa;
use emulators::{Latency, RateLimit, Running};
use serde_json::json;

struct Env {
    ai: OpenAi,
    _emulator: Running,
    server: TestServer,
    dir: std::path::PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The emulator over HTTPS (HTTP/2 offered) and the ChatGPT agent trusting its CA.
async fn env(initial_concurrency: usize) -> Env {
    env_with(initial_concurrency, test_config().max_concurrent_calls).await
}

/// [`env`] with the agent's ceiling on calls in flight.
async fn env_with(initial_concurrency: usize, max_concurrent_calls: usize) -> Env {
    let ca = TestCa::generate().unwrap();
    let ai = OpenAi::new(Settings::default());
    let emulator = ai.start_https(([127, 0, 0, 1], 0).into(), &ca).await.unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("openai-slow-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.ca_pem()).unwrap();
    let config = Config {
        base_url: Some(format!("{}/v1", emulator.url())),
        chat_timeout: Duration::from_secs(10),
        rest: RestSettings { ca_bundle: Some(dir.join("ca.pem")), initial_concurrency, ..RestSettings::default() },
        ..Config::default()
    };
    let registry = Registry::builder().sync_agent(ChatGptAgent::new(config).unwrap()).unwrap();
    let service = AgentService::new(registry, secrets(&[("_FSEC_FLYTE_OPENAI_API_KEY", "sk-emulator-key")]));
    let server = TestServer::start_with(service, ServerConfig { max_concurrent_calls, ..test_config() }).await;
    Env { ai, _emulator: emulator, server, dir }
}

/// One ChatGPT task through ExecuteTaskSync with Propeller's kind of deadline.
async fn chat(server: &TestServer, deadline: Duration) -> Resource {
    use admin::execute_task_sync_request::Part;
    let custom = json!({"chatgpt_config": {"model": "gpt-4o-mini"}});
    let template = core::TaskTemplate {
        r#type: CHATGPT_TYPE.into(),
        custom: Some(json_to_struct(custom.as_object().unwrap())),
        ..Default::default()
    };
    let msgs = [
        admin::ExecuteTaskSyncRequest {
            part: Some(Part::Header(admin::CreateRequestHeader { template: Some(template), ..Default::default() })),
        },
        admin::ExecuteTaskSyncRequest {
            part: Some(Part::Inputs(values_to_literal_map([("message", Value::from("hi"))]))),
        },
    ];
    let mut request = Request::new(tokio_stream::iter(msgs));
    request.set_timeout(deadline);
    let mut answer = server.sync_client().await.execute_task_sync(request).await.unwrap().into_inner();
    match answer.message().await.unwrap().and_then(|m| m.res) {
        Some(admin::execute_task_sync_response::Res::Header(h)) => Resource::from_proto(&h.resource.unwrap()),
        other => panic!("{other:?}"),
    }
}

async fn many(server: &TestServer, n: usize, deadline: Duration) -> Vec<Resource> {
    futures_util::future::join_all((0..n).map(|_| chat(server, deadline))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_share_one_http2_connection() {
    let env = env(256).await;
    env.ai.shaping().set_latency(Some(Latency::fixed(Duration::from_millis(300))));
    // The first call agrees HTTP/2 (ALPN); the next hundred ride on that connection.
    assert_eq!(chat(&env.server, Duration::from_secs(10)).await.phase, Phase::Succeeded);
    let start = Instant::now();
    let results = many(&env.server, 100, Duration::from_secs(10)).await;
    assert!(results.iter().all(|r| r.phase == Phase::Succeeded), "{:?}", results[0]);
    // A hundred 300 ms calls at once, not one after another.
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert_eq!(env.ai.shaping().stats().connections, 1, "one TCP+TLS connection for every call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_a_connections_streams_take_more_lanes_that_trust_the_same_ca() {
    let env = env_with(256, 1024).await;
    env.ai.shaping().set_latency(Some(Latency::fixed(Duration::from_millis(500))));
    assert_eq!(chat(&env.server, Duration::from_secs(10)).await.phase, Phase::Succeeded);
    // 250 at once: lanes 1 and 2 open their own HTTP/2 connections, each checking the
    // emulator's certificate against the configured CA bundle as lane 0 did.
    let results = many(&env.server, 250, Duration::from_secs(10)).await;
    assert!(
        results.iter().all(|r| r.phase == Phase::Succeeded),
        "{:?}",
        results.iter().find(|r| r.phase != Phase::Succeeded)
    );
    assert_eq!(env.ai.shaping().stats().connections, 3, "100 streams per connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_service_slows_calls_down_and_fails_none() {
    let env = env(256).await;
    env.ai.shaping().set_latency(Some(Latency::fixed(Duration::from_millis(100))));
    env.ai.shaping().set_rate_limit(Some(RateLimit::new(40.0, Some(10)).unwrap()));
    // 120 calls at once against 40 a second (10 at once): the agent starts at 256 in
    // flight, so the first round trip is mostly refused; it must back off, wait out the
    // service's Retry-After, and still finish every call within its deadline.
    let first = many(&env.server, 120, Duration::from_secs(10)).await;
    let failed: Vec<_> = first.iter().filter(|r| r.phase != Phase::Succeeded).collect();
    assert!(failed.is_empty(), "{} failed, e.g. {}", failed.len(), failed[0].message);
    let after_first = env.ai.shaping().stats();
    assert_eq!(after_first.requests - after_first.rate_limited, 120, "one accepted completion per task");
    assert!(after_first.rate_limited > 0, "the service did push back");
    // The limit it learnt stays: the next burst is refused far less.
    let second = many(&env.server, 120, Duration::from_secs(10)).await;
    assert!(second.iter().all(|r| r.phase == Phase::Succeeded));
    let after_second = env.ai.shaping().stats();
    let refused_second = after_second.rate_limited - after_first.rate_limited;
    assert!(
        refused_second * 2 < after_first.rate_limited,
        "429s: {} in the first burst, {refused_second} in the second",
        after_first.rate_limited
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_be_served_in_time_is_a_retryable_failure_naming_the_limit() {
    let env = env(1).await;
    env.ai.shaping().set_latency(Some(Latency::fixed(Duration::from_secs(3))));
    let server = &env.server;
    let (slow, late) = tokio::join!(chat(server, Duration::from_secs(10)), async {
        // The first call holds the one slot for 3 s; this one's deadline is 2 s away.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        (chat(server, Duration::from_secs(2)).await, start.elapsed())
    });
    assert_eq!(slow.phase, Phase::Succeeded, "{}", slow.message);
    let (late, took) = late;
    assert_eq!(late.phase, Phase::RetryableFailed, "{}", late.message);
    assert!(
        late.message.contains("adaptive concurrency limit") && late.message.contains("chat completion was not sent"),
        "{}",
        late.message
    );
    // It answered before its deadline, so Propeller reads the result instead of a timeout.
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(env.ai.shaping().stats().requests, 1, "the late call never reached the service");
}
