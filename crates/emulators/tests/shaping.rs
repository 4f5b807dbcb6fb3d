//! Latency, rate limits and counters of the emulators, over loopback as a benchmark sees
//! them: the 429s and OpenAI's rate-limit headers, the latency of service routes (not of
//! control routes), faults before shaping, and HTTP/2 calls multiplexed over one connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use emulators::openai::OpenAi;
use emulators::tls::TestCa;
use emulators::{FaultAction, FaultRule, Latency, RateLimit, Running, Stats};
use serde_json::{Value as Json, json};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn chat_body() -> Json {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

async fn chat(client: &reqwest::Client, running: &Running) -> reqwest::Response {
    client
        .post(format!("{}/v1/chat/completions", running.url()))
        .bearer_auth("sk-emulator-key")
        .json(&chat_body())
        .send()
        .await
        .expect("the emulator answers")
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

/// A client trusting only `ca`, offering h2 and http/1.1 over ALPN.
fn https_client(ca: &TestCa) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder().tls_certs_only([cert]).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_bucket_gets_429s_in_the_services_format_with_openai_headers() {
    let ai = OpenAi::new(emulators::openai::Settings::default());
    // 1 token a second into a bucket of 5: the 10 requests below arrive well within a
    // second, so exactly 5 find a token whatever the machine's load.
    ai.shaping().set_rate_limit(Some(RateLimit::new(1.0, Some(5)).unwrap()));
    let running = ai.start(loopback()).await.unwrap();
    let client = reqwest::Client::new();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), running.url());
            tokio::spawn(async move {
                client
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth("sk-emulator-key")
                    .json(&chat_body())
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let (ok, limited): (Vec<_>, Vec<_>) = answers.into_iter().partition(|r| r.status() == 200);
    assert_eq!(
        (ok.len(), limited.len()),
        (5, 5),
        "{:?}",
        limited.iter().map(reqwest::Response::status).collect::<Vec<_>>()
    );
    // Every answer carries the bucket's state; the five admitted took tokens 5, 4, … 1.
    let mut remaining: Vec<u32> = ok
        .iter()
        .map(|r| {
            assert_eq!(header(r, "x-ratelimit-limit-requests"), "5");
            assert!(
                header(r, "x-ratelimit-reset-requests").ends_with('s'),
                "{}",
                header(r, "x-ratelimit-reset-requests")
            );
            header(r, "x-ratelimit-remaining-requests").parse().unwrap()
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2, 3, 4]);
    for r in limited {
        assert_eq!(header(&r, "retry-after"), "1");
        let ms: u64 = header(&r, "retry-after-ms").parse().unwrap();
        assert!((1..=1000).contains(&ms), "{ms}");
        assert_eq!(
            (header(&r, "x-ratelimit-limit-requests"), header(&r, "x-ratelimit-remaining-requests")),
            ("5", "0")
        );
        // Five tokens missing at one a second: full again in (4 s, 5 s].
        let reset = header(&r, "x-ratelimit-reset-requests").to_owned();
        assert!(reset == "5s" || (reset.starts_with("4.") && reset.ends_with('s')), "{reset}");
        let body: Json = r.json().await.unwrap();
        assert_eq!(
            (body["error"]["type"].as_str(), body["error"]["code"].as_str()),
            (Some("requests"), Some("rate_limit_exceeded"))
        );
        assert!(body["error"]["message"].as_str().unwrap().starts_with("Rate limit reached for requests"), "{body}");
    }
    // Rate-limited calls never reached the route; control routes are not counted.
    assert_eq!(ai.chat_requests().0, 5);
    let want = Stats { requests: 10, rate_limited: 5, connections: ai.shaping().stats().connections };
    assert_eq!(ai.shaping().stats(), want);
    let stats: Stats =
        client.get(format!("{}/_emulator/stats", running.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!((stats.requests, stats.rate_limited), (10, 5));
    assert!(stats.connections >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_service_routes_only_and_is_set_over_http() {
    let ai = OpenAi::new(emulators::openai::Settings::default());
    let running = ai.start(loopback()).await.unwrap();
    let client = reqwest::Client::new();
    let shaping_url = format!("{}/_emulator/shaping", running.url());
    let set = client.put(&shaping_url).json(&json!({"latency_ms": 400})).send().await.unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(set.json::<Json>().await.unwrap(), json!({"latency_ms": 400}));
    assert_eq!(ai.shaping().settings().latency_ms, Some(400));

    let started = Instant::now();
    assert_eq!(chat(&client, &running).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    // Control routes, shared and per emulator, answer without the latency.
    for path in ["/_emulator/stats", "/_emulator/openai/state", "/_emulator/shaping"] {
        let started = Instant::now();
        assert_eq!(client.get(format!("{}{path}", running.url())).send().await.unwrap().status(), 200);
        assert!(started.elapsed() < Duration::from_millis(200), "{path}: {:?}", started.elapsed());
    }
    // Bad settings: 400 in the service's format, naming the problem; nothing changes.
    let bad = client.put(&shaping_url).json(&json!({"latency_ms": 200, "latency_p99_ms": 100})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Json = bad.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("must not be below the median"), "{body}");
    let bad = client.put(&shaping_url).json(&json!({"rate_limit": 0})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(ai.shaping().settings().latency_ms, Some(400));
    // `{}` turns shaping off.
    assert_eq!(client.put(&shaping_url).json(&json!({})).send().await.unwrap().status(), 200);
    let started = Instant::now();
    let fast = chat(&client, &running).await;
    assert!(started.elapsed() < Duration::from_millis(200), "{:?}", started.elapsed());
    assert!(fast.headers().get("x-ratelimit-limit-requests").is_none(), "no rate limit, no headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_come_before_the_rate_limit() {
    let ai = OpenAi::new(emulators::openai::Settings::default());
    ai.shaping().set_rate_limit(Some(RateLimit::new(0.001, Some(1)).unwrap()));
    ai.shaping().set_latency(Some(Latency::fixed(Duration::from_millis(300))));
    ai.faults().push(FaultRule::new(FaultAction::Status { code: 503, retry_after_secs: None }, 1));
    let running = ai.start(loopback()).await.unwrap();
    let client = reqwest::Client::new();
    // The fault is answered as without shaping: at once, no token taken, no headers.
    let started = Instant::now();
    let faulted = chat(&client, &running).await;
    assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
    assert_eq!(faulted.status(), 503);
    assert!(faulted.headers().get("x-ratelimit-remaining-requests").is_none());
    let admitted = chat(&client, &running).await;
    assert_eq!((admitted.status().as_u16(), header(&admitted, "x-ratelimit-remaining-requests")), (200, "0"));
    // The refusal is immediate too: the latency applies only to admitted requests.
    let started = Instant::now();
    let refused = chat(&client, &running).await;
    assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
    assert_eq!(refused.status(), 429);
    // A token every 1000 s: Retry-After rounds 999.x s up.
    assert_eq!(header(&refused, "retry-after"), "1000");
    let stats = ai.shaping().stats();
    assert_eq!((stats.requests, stats.rate_limited), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emulator_rate_limits_in_its_own_error_format_and_serves_https() {
    let ca = TestCa::generate().unwrap();
    let client = https_client(&ca);
    let limit = || Some(RateLimit::new(0.001, Some(1)).unwrap());

    let bq = emulators::bigquery::BigQuery::new(emulators::bigquery::Timing::default());
    bq.shaping().set_rate_limit(limit());
    let sf = emulators::snowflake::Snowflake::new(emulators::snowflake::Settings::default()).unwrap();
    sf.shaping().set_rate_limit(limit());
    let db = emulators::databricks::Databricks::new(emulators::databricks::Settings::default());
    db.shaping().set_rate_limit(limit());
    let servers = [
        (
            bq.start_https(loopback(), &ca).await.unwrap(),
            "/bigquery/v2/projects/p/jobs/j1",
            "/error/status",
            "RESOURCE_EXHAUSTED",
        ),
        (sf.start_https(loopback(), &ca).await.unwrap(), "/api/v2/statements/h1", "/code", "000610"),
        (
            db.start(loopback(), Some(&ca)).await.unwrap(),
            "/api/2.1/jobs/runs/get?run_id=1",
            "/error_code",
            "REQUEST_LIMIT_EXCEEDED",
        ),
    ];
    for (running, path, pointer, code) in &servers {
        assert!(running.url().starts_with("https://"), "{}", running.url());
        let first = client.get(format!("{}{path}", running.url())).send().await.unwrap();
        assert_ne!(first.status(), 429, "{path}");
        assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "0");
        let second = client.get(format!("{}{path}", running.url())).send().await.unwrap();
        assert_eq!(second.status(), 429, "{path}");
        // One token missing at one per 1000 s, a few milliseconds after it was taken.
        let reset = header(&second, "x-ratelimit-reset-requests");
        assert!(reset == "16m40s" || reset.starts_with("16m39."), "{reset}");
        let body: Json = second.json().await.unwrap();
        assert_eq!(body.pointer(pointer).and_then(Json::as_str), Some(*code), "{body}");
        let stats: Stats =
            client.get(format!("{}/_emulator/stats", running.url())).send().await.unwrap().json().await.unwrap();
        assert_eq!((stats.requests, stats.rate_limited), (2, 1), "{path}");
    }
    // Plain HTTP stays the default.
    let plain = emulators::bigquery::BigQuery::default().start(loopback()).await.unwrap();
    assert!(plain.url().starts_with("http://"));
}

/// A warmed-up HTTP/2 client and an emulator over HTTPS.
async fn h2_setup() -> (OpenAi, Running, reqwest::Client) {
    let ca = TestCa::generate().unwrap();
    let ai = OpenAi::new(emulators::openai::Settings::default());
    let running = ai.start_https(loopback(), &ca).await.unwrap();
    let client = https_client(&ca);
    // One call first: until ALPN has said h2, a client cannot know the connection will
    // multiplex, so concurrent first calls would each open their own.
    let warm = chat(&client, &running).await;
    assert_eq!((warm.status().as_u16(), warm.version()), (200, reqwest::Version::HTTP_2));
    (ai, running, client)
}

async fn concurrent_chats(client: &reqwest::Client, running: &Running, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), running.url());
            tokio::spawn(async move {
                let r = client
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth("sk-emulator-key")
                    .json(&chat_body())
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.version())
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), (200, reqwest::Version::HTTP_2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http2_calls_share_one_connection() {
    let (ai, running, client) = h2_setup().await;
    concurrent_chats(&client, &running, 50).await;
    assert_eq!(ai.shaping().stats(), Stats { requests: 51, rate_limited: 0, connections: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_slow_calls_are_in_flight_at_once_on_one_connection() {
    let (ai, running, client) = h2_setup().await;
    let latency = Duration::from_millis(1500);
    ai.shaping().set_latency(Some(Latency::fixed(latency)));
    // 700 calls of 1.5 s each: all in flight together take one latency; a cap of hyper's
    // default 200 streams would serialize them into four rounds (6 s).
    let started = Instant::now();
    concurrent_chats(&client, &running, 700).await;
    let took = started.elapsed();
    assert!(took >= latency && took < 2 * latency, "{took:?}");
    assert_eq!(ai.shaping().stats().connections, 1);
}
