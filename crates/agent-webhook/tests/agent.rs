//! The webhook agent through real gRPC against a local HTTP server: methods, templating,
//! status codes, slow and huge answers, redirects and the address rules.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::AgentService;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::convert::resource_from_v2;
use agent_core::pb::{admin, core};
use agent_core::prelude::*;
use agent_core::testing::flyte2;
use agent_core::testing::{Code, TestServer, conformance, secrets, test_config};
use agent_webhook::{Config, TASK_TYPE, WebhookAgent};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{Value as Json, json};

/// What the local server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
}

#[derive(Clone, Default)]
struct Hooks(Arc<Mutex<Vec<Seen>>>);

impl Hooks {
    fn last(&self) -> Seen {
        self.0.lock().unwrap().last().cloned().expect("a request reached the server")
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn hook(State(h): State<Hooks>, method: Method, uri: Uri, headers: HeaderMap, body: String) -> impl IntoResponse {
    let echo = headers.get("x-echo").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    h.0.lock().unwrap().push(Seen { method, uri, headers, body });
    format!("received{echo}")
}

async fn status(Path(code): Path<u16>) -> impl IntoResponse {
    (StatusCode::from_u16(code).unwrap(), "nope")
}

async fn redirect(Query(q): Query<std::collections::HashMap<String, String>>) -> impl IntoResponse {
    (StatusCode::FOUND, [("location", q["to"].clone())], "")
}

async fn slow() -> impl IntoResponse {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

async fn huge() -> impl IntoResponse {
    "x".repeat(3 * 1024 * 1024)
}

async fn streamed() -> impl IntoResponse {
    // No length announced: the agent finds out while reading.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'y'; 64 * 1024])));
    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
}

async fn serve() -> (SocketAddr, Hooks) {
    let hooks = Hooks::default();
    let app = Router::new()
        .route("/hook", axum::routing::any(hook))
        .route("/hook/{*rest}", axum::routing::any(hook))
        .route("/status/{code}", axum::routing::any(status))
        .route("/redirect", axum::routing::any(redirect))
        .route("/slow", axum::routing::any(slow))
        .route("/huge", axum::routing::any(huge))
        .route("/streamed", axum::routing::any(streamed))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hooks)
}

struct Env {
    addr: SocketAddr,
    hooks: Hooks,
    server: TestServer,
}

/// The agent, allowed to call the local server (loopback is forbidden by default).
async fn env_configured(tweak: impl FnOnce(&mut Config)) -> Env {
    let (addr, hooks) = serve().await;
    let mut config = Config { allow_cidrs: vec!["127.0.0.1/32".into()], ..Config::default() };
    tweak(&mut config);
    let registry = Registry::builder().sync_agent(WebhookAgent::new(config).unwrap()).unwrap();
    let server = TestServer::start_with(AgentService::new(registry, secrets(&[])), test_config()).await;
    Env { addr, hooks, server }
}

async fn env() -> Env {
    env_configured(|_| {}).await
}

/// A task as flytekit's `WebhookTask.get_custom` writes it (numbers are doubles).
fn task(custom: Json, inputs: Vec<(&str, Value)>) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: TASK_TYPE.into(),
            custom: Some(agent_core::json::json_to_struct(custom.as_object().unwrap())),
            ..Default::default()
        },
        inputs: values_to_literal_map(inputs),
        ..Default::default()
    }
}

fn custom(url: &str, method: &str, data: Json) -> Json {
    json!({"url": url, "method": method, "headers": {"Content-Type": "application/json"}, "data": data,
           "show_data": true, "show_url": true, "timeout_sec": 10.0})
}

async fn execute(env: &Env, t: &TaskRequest) -> Result<Resource, agent_core::testing::Status> {
    use admin::execute_task_sync_request::Part;
    let msgs = [
        admin::ExecuteTaskSyncRequest {
            part: Some(Part::Header(admin::CreateRequestHeader {
                template: Some(t.template.clone()),
                ..Default::default()
            })),
        },
        admin::ExecuteTaskSyncRequest { part: Some(Part::Inputs(t.inputs.clone())) },
    ];
    let mut s = env.server.sync_client().await.execute_task_sync(tokio_stream::iter(msgs)).await?.into_inner();
    match s.message().await?.and_then(|m| m.res) {
        Some(admin::execute_task_sync_response::Res::Header(h)) => Ok(Resource::from_proto(&h.resource.unwrap())),
        other => panic!("{other:?}"),
    }
}

/// The `info` output, decoded from flytekit's msgpack.
fn info(r: &Resource) -> Json {
    match &r.output_values().unwrap()["info"] {
        Value::Binary { value, tag } if tag == "msgpack" => rmp_serde::from_slice(value).unwrap(),
        other => panic!("info is not msgpack: {other:?}"),
    }
}

#[tokio::test]
async fn a_post_is_sent_as_flytekit_sends_it_and_passes_conformance() {
    let env = env().await;
    let url = format!("http://{}/hook/{{inputs.id}}", env.addr);
    let data = json!({"text": "{inputs.s}", "n": "{inputs.id}", "said": "id={inputs.id} f={inputs.f}", "k": 1});
    let t = task(
        custom(&url, "POST", data),
        vec![("s", Value::from("hi")), ("id", Value::from(7i64)), ("f", Value::from(2.0))],
    );
    let r = conformance::sync_agent(&env.server, t).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    assert_eq!(r.message, "Webhook was successfully invoked!");
    let seen = env.hooks.last();
    assert_eq!((seen.method, seen.uri.path()), (Method::POST, "/hook/7"));
    let body: Json = serde_json::from_str(&seen.body).unwrap();
    // One placeholder is the typed value; text gets Python's str(); Struct numbers stay floats.
    assert_eq!(body, json!({"text": "hi", "n": 7, "said": "id=7 f=2.0", "k": 1.0}));
    assert!(seen.body.contains("\"k\":1.0"), "{}", seen.body);
    assert_eq!(seen.headers["content-type"], "application/json");
    let info = info(&r);
    let keys: Vec<&str> = info.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["input_data", "response_data", "status_code", "url"]);
    assert_eq!(info["status_code"], json!(200));
    assert_eq!(info["response_data"], json!("received"));
    assert_eq!(info["input_data"], body);
    assert_eq!(info["url"], json!(format!("http://{}/hook/7", env.addr)));
}

#[tokio::test]
async fn a_get_sends_data_as_query_parameters_and_hides_what_is_not_asked_for() {
    let env = env().await;
    let mut c =
        custom(&format!("http://{}/hook", env.addr), "get", json!({"q": "{inputs.s}", "on": true, "ids": [1, 2]}));
    c["show_data"] = json!(false);
    c["show_url"] = json!(false);
    let r = execute(&env, &task(c, vec![("s", Value::from("a b"))])).await.unwrap();
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    let seen = env.hooks.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.uri.query(), Some("ids=1.0&ids=2.0&on=true&q=a+b"));
    assert!(seen.body.is_empty());
    let keys: Vec<String> = info(&r).as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["response_data", "status_code"]);
    // A hand-made template without data: a POST with no body, as httpx sends for json=None.
    let r = execute(&env, &task(json!({"url": format!("http://{}/hook", env.addr)}), vec![])).await.unwrap();
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    let seen = env.hooks.last();
    assert_eq!((seen.method, seen.body.as_str()), (Method::POST, ""));
}

#[tokio::test]
async fn other_statuses_fail_with_flytekits_message_and_passing_trouble_is_retryable() {
    let env = env().await;
    let at = |code: u16| task(custom(&format!("http://{}/status/{code}", env.addr), "POST", json!({})), vec![]);
    let r = execute(&env, &at(404)).await.unwrap();
    assert_eq!((r.phase, r.message.as_str()), (Phase::Failed, "Webhook failed with status code 404, response: nope"));
    for code in [429, 500, 503] {
        let r = execute(&env, &at(code)).await.unwrap();
        assert_eq!(r.phase, Phase::RetryableFailed, "{code}: {}", r.message);
    }
    // Nothing listens on port 9 of loopback: no connection is retryable.
    let r = execute(&env, &task(custom("http://127.0.0.1:9/", "POST", json!({})), vec![])).await.unwrap();
    assert_eq!(r.phase, Phase::RetryableFailed, "{}", r.message);
    assert!(r.message.contains("could not be reached"), "{}", r.message);
}

#[tokio::test]
async fn slow_and_huge_answers_are_bounded() {
    let env = env_configured(|c| c.max_response_bytes = 1024 * 1024).await;
    let mut c = custom(&format!("http://{}/slow", env.addr), "POST", json!({}));
    c["timeout_sec"] = json!(0.5);
    let start = std::time::Instant::now();
    let r = execute(&env, &task(c, vec![])).await.unwrap();
    assert_eq!(r.phase, Phase::RetryableFailed, "{}", r.message);
    assert!(r.message.contains("did not answer within 0.5 s"), "{}", r.message);
    assert!(start.elapsed() < Duration::from_secs(3));
    for path in ["huge", "streamed"] {
        let r = execute(&env, &task(custom(&format!("http://{}/{path}", env.addr), "POST", json!({})), vec![]))
            .await
            .unwrap();
        assert_eq!(r.phase, Phase::Failed, "{path}: {}", r.message);
        assert!(r.message.contains("webhook.max_response_bytes"), "{}", r.message);
    }
}

#[tokio::test]
async fn forbidden_addresses_are_never_reached() {
    // Default rules: loopback is forbidden, as a literal and as a name that resolves to it.
    let (addr, hooks) = serve().await;
    let registry = |c: Config| Registry::builder().sync_agent(WebhookAgent::new(c).unwrap()).unwrap();
    let server =
        TestServer::start_with(AgentService::new(registry(Config::default()), secrets(&[])), test_config()).await;
    let env = Env { addr, hooks: hooks.clone(), server };
    for url in [
        format!("http://{addr}/hook"),
        format!("http://[::1]:{}/hook", addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://2130706433/".to_owned(),
        format!("http://localhost:{}/hook", addr.port()),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
    ] {
        let err = execute(&env, &task(custom(&url, "POST", json!({})), vec![])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {}", err.message());
        assert!(err.message().contains("does not call"), "{}", err.message());
    }
    // A name the host rules let through is refused on the address it resolves to.
    let open_names = Config { deny_hosts: vec![], ..Config::default() };
    let server = TestServer::start_with(AgentService::new(registry(open_names), secrets(&[])), test_config()).await;
    let env = Env { addr, hooks: hooks.clone(), server };
    let r = execute(&env, &task(custom(&format!("http://localhost:{}/hook", addr.port()), "POST", json!({})), vec![]))
        .await
        .unwrap();
    assert_eq!(r.phase, Phase::Failed, "{}", r.message);
    assert!(r.message.contains("loopback") && r.message.contains("webhook.allow_cidrs"), "{}", r.message);
    assert_eq!(hooks.count(), 0, "no request reached the server");
}

#[tokio::test]
async fn redirects_are_failures_as_in_flytekit_unless_allowed_and_each_is_checked() {
    let env = env().await;
    let to = |target: &str| format!("http://{}/redirect?to={target}", env.addr);
    let ok = format!("http://{}/hook", env.addr);
    let r = execute(&env, &task(custom(&to(&ok), "POST", json!({})), vec![])).await.unwrap();
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.starts_with("Webhook failed with status code 302"), "{}", r.message);

    let env = env_configured(|c| c.max_redirects = 3).await;
    let to = |target: &str| format!("http://{}/redirect?to={target}", env.addr);
    let ok = format!("http://{}/hook", env.addr);
    let r = execute(&env, &task(custom(&to(&ok), "GET", json!({})), vec![])).await.unwrap();
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    for forbidden in ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://[fd00:ec2::254]/"] {
        let r = execute(&env, &task(custom(&to(forbidden), "GET", json!({})), vec![])).await.unwrap();
        assert_eq!(r.phase, Phase::Failed, "{forbidden}: {}", r.message);
        assert!(r.message.contains("a redirect to"), "{}", r.message);
    }
    // A loop ends at the limit.
    let looped = to(&to(&to(&to(&to(&ok)))));
    let r = execute(&env, &task(custom(&looped, "GET", json!({})), vec![])).await.unwrap();
    assert_eq!(r.phase, Phase::Failed, "{}", r.message);
    assert!(r.message.contains("webhook.max_redirects"), "{}", r.message);
}

#[tokio::test]
async fn connection_secrets_fill_headers_and_never_show() {
    let env = env_configured(|c| c.max_redirects = 3).await;
    const TOKEN: &str = "wh-s3cr3t-token-9041";
    let mut c = custom(&format!("http://{}/hook", env.addr), "POST", json!({"a": 1}));
    c["headers"] = json!({"Authorization": "Bearer {secrets.hook_token}", "X-Echo": "{secrets.hook_token}"});
    let t = task(c, vec![]);
    let mut client = env.server.connector_client().await;
    let conn = || Some(flyte2::connection(TASK_TYPE, &[("hook_token", TOKEN)]));
    let meta = client.create_task(flyte2::create_request(&t, conn())).await.unwrap().into_inner().resource_meta;
    let got = client.get_task(flyte2::get_request(TASK_TYPE, &meta, conn())).await.unwrap().into_inner();
    let r = resource_from_v2(&got.resource.unwrap()).unwrap();
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    assert_eq!(env.hooks.last().headers["authorization"], format!("Bearer {TOKEN}"));
    // The server echoed the secret into its answer: the output and the meta hide it.
    let info = info(&r);
    assert!(!info["response_data"].as_str().unwrap().contains(TOKEN), "{info}");
    assert!(!String::from_utf8_lossy(&meta).contains(TOKEN));

    // Not sent with the request: refused, and the pod's secrets are never used.
    let err = client.create_task(flyte2::create_request(&t, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("hook_token"));

    // In the URL or body, a secret would be shown: refused.
    let mut c = custom(&format!("http://{}/hook?t={{secrets.hook_token}}", env.addr), "POST", json!({}));
    c["show_url"] = json!(true);
    let err = client.create_task(flyte2::create_request(&task(c, vec![]), conn())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("headers only") && !err.message().contains(TOKEN), "{}", err.message());
}

#[tokio::test]
async fn malformed_templates_get_precise_errors() {
    let env = env().await;
    let url = format!("http://{}/hook", env.addr);
    for (custom, want) in [
        (json!({"method": "POST"}), "template.custom.url: missing"),
        (json!({"url": "not a url"}), "is not a URL"),
        (json!({"url": "file:///etc/passwd"}), "not http or https"),
        (json!({"url": url, "method": "TRACE"}), "template.custom.method"),
        (json!({"url": url, "headers": {"Bad Name": "x"}}), "is not a header name"),
        (json!({"url": url, "headers": {"X": "a\nb"}}), "template.custom.headers.X"),
        (json!({"url": url, "timeout_sec": -1.0}), "template.custom.timeout_sec"),
        (json!({"url": url, "show_url": "yes"}), "template.custom.show_url"),
        (json!({"url": format!("{url}/{{inputs.nope}}")}), "names no input 'nope'"),
    ] {
        let err = execute(&env, &task(custom.clone(), vec![])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{custom}: {}", err.message());
        assert!(err.message().contains(want), "{custom}: {}", err.message());
    }
    assert_eq!(env.hooks.count(), 0);
}

/// The red-team case: a loopback listener (standing in for anything inside the pod or the
/// cluster) named in every disguise a URL can take is never reached with the default
/// rules, whether the call is refused up front or at the address it resolves to.
#[tokio::test]
async fn no_disguise_of_a_forbidden_address_reaches_it() {
    use agent_core::testing::hostile::{Trap, hostile_hosts};
    let trap = Trap::start().await;
    let registry = Registry::builder().sync_agent(WebhookAgent::new(Config::default()).unwrap()).unwrap();
    let server = TestServer::start_with(AgentService::new(registry, secrets(&[])), test_config()).await;
    let (addr, hooks) = serve().await;
    let env = Env { addr, hooks, server };
    let (ip, port) = (trap.addr().ip(), trap.addr().port());
    let mut urls: Vec<String> = hostile_hosts(trap.addr())
        .into_iter()
        .map(|h| if h.contains("://") { h } else { format!("http://{h}") })
        .collect();
    urls.extend([
        format!("http://0x7f000001:{port}/"),
        format!("http://017700000001:{port}/"),
        format!("http://[::ffff:7f00:1]:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://localhost.:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://{ip}:{port}/{{inputs.path}}"),
    ]);
    for url in urls {
        let t = task(custom(&url, "POST", json!({})), vec![("path", Value::from("x"))]);
        match execute(&env, &t).await {
            Ok(r) => assert!(r.phase.is_terminal() && r.phase != Phase::Succeeded, "{url}: {r:?}"),
            Err(s) => assert!(matches!(s.code(), Code::InvalidArgument), "{url}: {s:?}"),
        }
    }
    assert_eq!(trap.reached(), 0, "a disguised forbidden address was reached");
}
