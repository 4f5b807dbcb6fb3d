//! The OpenAI agents through real gRPC against the OpenAI emulator.

use std::time::Duration;

use agent_core::AgentService;
use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::{admin, core};
use agent_core::prelude::*;
use agent_core::testing::{Code, TestServer, conformance, create_request, secrets, test_config};
use agent_openai::{BATCH_TYPE, BatchAgent, CHATGPT_TYPE, ChatGptAgent, Config};
use emulators::openai::{OpenAi, Settings};
use emulators::{FaultAction, FaultRule, Running};
use serde_json::json;

const KEY: &str = "sk-emulator-key";

struct Env {
    ai: OpenAi,
    _emulator: Running,
    server: TestServer,
}

async fn env_with(vars: &[(&str, &str)]) -> Env {
    env_configured(vars, |_| {}).await
}

async fn env_configured(vars: &[(&str, &str)], tweak: impl FnOnce(&mut Config)) -> Env {
    let ai = OpenAi::new(Settings { step: Duration::from_millis(40), ..Settings::default() });
    let emulator = ai.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut config = Config {
        base_url: Some(format!("{}/v1", emulator.url())),
        chat_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    tweak(&mut config);
    let registry = Registry::builder()
        .sync_agent(ChatGptAgent::new(config.clone()).unwrap())
        .unwrap()
        .async_agent(BatchAgent::new(config).unwrap())
        .unwrap();
    let server = TestServer::start_with(AgentService::new(registry, secrets(vars)), test_config()).await;
    Env { ai, _emulator: emulator, server }
}

async fn env() -> Env {
    env_with(&[("_FSEC_FLYTE_OPENAI_API_KEY", KEY)]).await
}

fn chat_task(config: serde_json::Value, message: Option<&str>) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: CHATGPT_TYPE.into(),
            custom: Some(json_to_struct(
                json!({"openai_organization": "org-flyte", "chatgpt_config": config}).as_object().unwrap(),
            )),
            ..Default::default()
        },
        inputs: values_to_literal_map(message.map(|m| ("message", Value::from(m)))),
        ..Default::default()
    }
}

fn batch_task(file: &str) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: BATCH_TYPE.into(),
            custom: Some(json_to_struct(json!({"openai_organization": null, "config": {}}).as_object().unwrap())),
            ..Default::default()
        },
        inputs: values_to_literal_map([("input_file_id", Value::from(file))]),
        ..Default::default()
    }
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

#[tokio::test]
async fn chatgpt_passes_conformance_and_sends_integers_and_the_organization() {
    let env = env().await;
    let t = chat_task(json!({"model": "gpt-4o-mini", "temperature": 0.7, "max_tokens": 100.0}), Some("hello"));
    let r = conformance::sync_agent(&env.server, t).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    assert_eq!(r.output_values().unwrap()["o0"], Value::String("echo: hello".into()));
    let (requests, orgs) = env.ai.chat_requests();
    assert!(requests >= 1);
    assert_eq!(orgs, ["org-flyte"]);
}

#[tokio::test]
async fn chatgpt_failures_are_results_not_rpc_errors() {
    let env = env().await;
    let r = execute(&env, &chat_task(json!({"model": "gpt-99"}), Some("hi"))).await.unwrap();
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.contains("gpt-99") && r.message.contains("404"), "{}", r.message);
    env.ai.faults().push(
        FaultRule { times: None, ..FaultRule::new(FaultAction::Status { code: 503, retry_after_secs: None }, 0) }
            .path("/chat"),
    );
    let r = execute(&env, &chat_task(json!({"model": "gpt-4o-mini"}), Some("hi"))).await.unwrap();
    assert_eq!(r.phase, Phase::RetryableFailed, "{}", r.message);
    assert!(!r.message.contains(KEY));
    env.ai.faults().clear();
    // A single 429 is absorbed by the kit's retry inside the deadline.
    env.ai.faults().push(FaultRule::new(FaultAction::Status { code: 429, retry_after_secs: Some(0) }, 1).path("/chat"));
    assert_eq!(
        execute(&env, &chat_task(json!({"model": "gpt-4o-mini"}), Some("hi"))).await.unwrap().phase,
        Phase::Succeeded
    );
}

#[tokio::test]
async fn chatgpt_bad_input_and_missing_key_are_precise_errors() {
    let env = env().await;
    let err = execute(&env, &chat_task(json!({"model": "gpt-4o-mini"}), None)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("inputs.message"));
    let err = execute(&env, &chat_task(json!({"temperature": 1}), Some("x"))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("model"));
    let no_key = env_with(&[]).await;
    let err = execute(&no_key, &chat_task(json!({"model": "gpt-4o-mini"}), Some("x"))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("_FSEC_FLYTE_OPENAI_API_KEY"));
}

#[tokio::test]
async fn batch_passes_conformance_and_returns_the_batch_as_msgpack() {
    let env = env().await;
    let r = conformance::async_agent(&env.server, batch_task("file-abc"), Duration::from_secs(10)).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    let Value::Binary { value, tag } = &r.output_values().unwrap()["result"] else { panic!() };
    assert_eq!(tag, "msgpack");
    let batch: serde_json::Value = rmp_serde::from_slice(value).unwrap();
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["input_file_id"], "file-abc");
}

#[tokio::test]
async fn batch_failures_cancels_repeats_and_pickles() {
    let env = env().await;
    let mut client = env.server.async_client().await;
    #[allow(deprecated)]
    let get = |m: &[u8]| admin::GetTaskRequest {
        resource_meta: m.to_vec(),
        task_category: Some(admin::TaskCategory { name: BATCH_TYPE.into(), version: 0 }),
        ..Default::default()
    };
    let bad =
        client.create_task(create_request(&batch_task("file-bad-lines"))).await.unwrap().into_inner().resource_meta;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = Resource::from_proto(&client.get_task(get(&bad)).await.unwrap().into_inner().resource.unwrap());
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.contains("This line is not parseable as valid JSON."), "{}", r.message);

    // Repeated creates for one attempt: one batch.
    let mut t = batch_task("file-once");
    t.metadata = Some(admin::TaskExecutionMetadata {
        task_execution_id: Some(core::TaskExecutionIdentifier {
            node_execution_id: Some(core::NodeExecutionIdentifier {
                node_id: "n0".into(),
                execution_id: Some(core::WorkflowExecutionIdentifier { name: "exec-1".into(), ..Default::default() }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let before = env.ai.batches().len();
    let m1 = client.create_task(create_request(&t)).await.unwrap().into_inner().resource_meta;
    let m2 = client.create_task(create_request(&t)).await.unwrap().into_inner().resource_meta;
    assert_eq!(m1, m2);
    assert_eq!(env.ai.batches().len(), before + 1);

    // Cancel a running batch, twice; then cancelling a finished one is fine too.
    let del = |m: &[u8]| admin::DeleteTaskRequest {
        resource_meta: m.to_vec(),
        task_category: Some(admin::TaskCategory { name: BATCH_TYPE.into(), version: 0 }),
        ..Default::default()
    };
    client.delete_task(del(&m1)).await.unwrap();
    client.delete_task(del(&m1)).await.unwrap();
    // Issue 15: a cancelled (or cancelling) batch is ABORTED, no longer FAILED.
    let r = Resource::from_proto(&client.get_task(get(&m1)).await.unwrap().into_inner().resource.unwrap());
    assert_eq!(r.phase, Phase::Aborted, "{}", r.message);
    client.delete_task(del(&bad)).await.unwrap();

    // The Python agent's cloudpickled meta cannot be read; the error says what to do.
    let pickled = [0x80, 0x05, 0x95, 0x4b, 0x00];
    let err = client.get_task(get(&pickled)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pickled"), "{}", err.message());
}

#[tokio::test]
async fn hostile_metas_templates_and_inputs_are_handled() {
    let env = env().await;
    let chat = chat_task(json!({"model": "gpt-4o-mini"}), Some("hello"));
    conformance::hostile_inputs(&env.server, chat, 48).await;
    conformance::hostile_inputs(&env.server, batch_task("file-abc"), 48).await;
}

#[tokio::test]
async fn a_repeated_create_finds_its_batch_behind_more_than_a_page_of_others() {
    // Under load, more than a page of other batches can arrive before the repeat (the soak
    // found a duplicate when only the newest 100 were searched).
    let env = env().await;
    let mut client = env.server.async_client().await;
    let attempt = |n: u32| {
        let mut t = batch_task("file-busy");
        t.metadata = Some(admin::TaskExecutionMetadata {
            task_execution_id: Some(core::TaskExecutionIdentifier {
                node_execution_id: Some(core::NodeExecutionIdentifier {
                    node_id: "n0".into(),
                    execution_id: Some(core::WorkflowExecutionIdentifier { name: "busy".into(), ..Default::default() }),
                }),
                retry_attempt: n,
                ..Default::default()
            }),
            ..Default::default()
        });
        t
    };
    let first = client.create_task(create_request(&attempt(0))).await.unwrap().into_inner().resource_meta;
    for n in 1..=150 {
        client.create_task(create_request(&attempt(n))).await.unwrap();
    }
    let repeat = client.create_task(create_request(&attempt(0))).await.unwrap().into_inner().resource_meta;
    assert_eq!(first, repeat);
    assert_eq!(env.ai.batches().len(), 151);
}

/// A batch task for one attempt of a task named `name` in execution `exec`.
fn batch_attempt(file: &str, exec: &str, name: &str, retry: u32) -> TaskRequest {
    let mut t = batch_task(file);
    t.metadata = Some(admin::TaskExecutionMetadata {
        task_execution_id: Some(core::TaskExecutionIdentifier {
            task_id: Some(core::Identifier { name: name.into(), version: "v1".into(), ..Default::default() }),
            node_execution_id: Some(core::NodeExecutionIdentifier {
                node_id: "n0".into(),
                execution_id: Some(core::WorkflowExecutionIdentifier { name: exec.into(), ..Default::default() }),
            }),
            retry_attempt: retry,
        }),
        ..Default::default()
    });
    t
}

#[tokio::test]
async fn a_long_task_name_still_makes_one_batch_per_attempt() {
    // The attempt key was stored cut to 512 characters but looked up whole: with a long task
    // name every repeated create started another batch.
    let env = env().await;
    let mut client = env.server.async_client().await;
    let t = batch_attempt("file-long", "exec-long", &"t".repeat(600), 0);
    let mut metas = Vec::new();
    for _ in 0..3 {
        metas.push(client.create_task(create_request(&t)).await.unwrap().into_inner().resource_meta);
    }
    assert!(metas.windows(2).all(|w| w[0] == w[1]));
    let batches = env.ai.batches();
    assert_eq!(batches.len(), 1, "one attempt, one batch");
    let mark = batches[0]["metadata"]["flyte_attempt_sha256"].as_str().unwrap();
    assert!(mark.len() == 64 && mark.bytes().all(|b| b.is_ascii_hexdigit()), "{mark}");
    // Another attempt of the same long-named task gets its own batch.
    let retry = batch_attempt("file-long", "exec-long", &"t".repeat(600), 1);
    let other = client.create_task(create_request(&retry)).await.unwrap().into_inner().resource_meta;
    assert_ne!(other, metas[0]);
    assert_eq!(env.ai.batches().len(), 2);
}

#[tokio::test]
async fn a_create_repeated_after_minutes_finds_its_batch_behind_a_page_of_others() {
    // Before, the search stopped at batches older than 5 minutes: a create repeated later,
    // with more than a page of batches made since, started a second batch.
    let env = env().await;
    let mut client = env.server.async_client().await;
    let first =
        client.create_task(create_request(&batch_attempt("file-late", "late", "t", 0))).await.unwrap().into_inner();
    for n in 1..=100 {
        client.create_task(create_request(&batch_attempt("file-late", "late", "t", n))).await.unwrap();
    }
    env.ai.age_batches(Duration::from_secs(20 * 60));
    let repeat =
        client.create_task(create_request(&batch_attempt("file-late", "late", "t", 0))).await.unwrap().into_inner();
    assert_eq!(first.resource_meta, repeat.resource_meta);
    assert_eq!(env.ai.batches().len(), 101);

    // The lookback is a setting: one shorter than the batches' age does not see them.
    let short = env_configured(&[("_FSEC_FLYTE_OPENAI_API_KEY", KEY)], |c| {
        c.batch_lookback = Duration::from_secs(5 * 60);
    })
    .await;
    let mut client = short.server.async_client().await;
    for n in 0..=100 {
        client.create_task(create_request(&batch_attempt("file-late", "late", "t", n))).await.unwrap();
    }
    short.ai.age_batches(Duration::from_secs(20 * 60));
    client.create_task(create_request(&batch_attempt("file-late", "late", "t", 0))).await.unwrap();
    assert_eq!(short.ai.batches().len(), 102);
}

/// Counts every request the emulator receives: a zero-delay fault that never retires.
fn record_requests(ai: &OpenAi) {
    ai.faults().push(FaultRule { times: None, ..FaultRule::new(FaultAction::Delay { ms: 0 }, 0) });
}

#[tokio::test]
async fn header_values_that_cannot_be_headers_are_refused_before_any_request() {
    // Red team: before, async-openai panicked building the OpenAI-Organization header (an
    // INTERNAL answer and a logged backtrace).
    let env = env().await;
    record_requests(&env.ai);
    let long = "o".repeat(300);
    let hostile = ["org-a\nX-Injected: 1", "org-a\r\n", "org-\0", "org-\x7f", "org-\x1b[31m", "org a", long.as_str()];
    let mut client = env.server.async_client().await;
    let mut errors = Vec::new();
    for org in hostile {
        let mut chat = chat_task(json!({"model": "gpt-4o-mini"}), Some("hi"));
        chat.template.custom = Some(json_to_struct(
            json!({"openai_organization": org, "chatgpt_config": {"model": "gpt-4o-mini"}}).as_object().unwrap(),
        ));
        errors.push(("template", execute(&env, &chat).await.unwrap_err()));
        let mut batch = batch_task("file-abc");
        batch.template.custom =
            Some(json_to_struct(json!({"openai_organization": org, "config": {}}).as_object().unwrap()));
        errors.push(("template", client.create_task(create_request(&batch)).await.unwrap_err()));
        let meta = json!({"batch_id": "batch_1", "openai_org": org}).to_string().into_bytes();
        #[allow(deprecated)]
        let get = admin::GetTaskRequest {
            resource_meta: meta.clone(),
            task_category: Some(admin::TaskCategory { name: BATCH_TYPE.into(), version: 0 }),
            ..Default::default()
        };
        errors.push(("resource meta", client.get_task(get).await.unwrap_err()));
        let del = admin::DeleteTaskRequest {
            resource_meta: meta,
            task_category: Some(admin::TaskCategory { name: BATCH_TYPE.into(), version: 0 }),
            ..Default::default()
        };
        errors.push(("resource meta", client.delete_task(del).await.unwrap_err()));
    }
    for (source, err) in &errors {
        let m = err.message();
        assert_eq!(err.code(), Code::InvalidArgument, "{source}: {m}");
        let named = if *source == "template" { "template.custom.openai_organization" } else { "openai_org" };
        assert!(m.contains(named) && m.contains("printable ASCII"), "{m}");
        assert!(!m.contains("org-a") && !m.contains("X-Injected") && !m.contains(&long), "echoed: {m}");
        assert!(!m.chars().any(char::is_control), "{m:?}");
    }
    assert_eq!(env.ai.faults().injected(), 0, "the emulator saw no request");
    assert_eq!(env.ai.chat_requests().0, 0);
    assert!(env.ai.batches().is_empty());

    // An API key a header cannot hold is the agent's configuration at fault.
    let bad_key = env_with(&[("_FSEC_FLYTE_OPENAI_API_KEY", "sk-a\nb")]).await;
    record_requests(&bad_key.ai);
    let err = execute(&bad_key, &chat_task(json!({"model": "gpt-4o-mini"}), Some("x"))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("FLYTE_OPENAI_API_KEY") && !err.message().contains("sk-a"), "{}", err.message());
    assert_eq!(bad_key.ai.faults().injected(), 0);
}

/// The red-team case: the key goes only to the configured base URL. Hosts in disguise in
/// every value a template or meta carries (organization, input file, batch id) may be
/// refused or sent to the emulator as data, but never reach another host; and a base URL
/// with user information is refused at start-up.
#[tokio::test]
async fn no_key_leaves_for_a_host_a_task_or_meta_names() {
    use agent_core::testing::hostile::{Trap, assert_contained, hostile_hosts};
    let trap = Trap::start().await;
    let env = env().await;
    for value in hostile_hosts(trap.addr()) {
        let mut chat = chat_task(json!({"model": "gpt-4o-mini"}), Some("hi"));
        chat.template.custom = Some(json_to_struct(
            json!({"openai_organization": value, "chatgpt_config": {"model": "m"}}).as_object().unwrap(),
        ));
        let _ = execute(&env, &chat).await;
        let mut batch = batch_task(&value);
        batch.template.custom =
            Some(json_to_struct(json!({"openai_organization": value, "config": {}}).as_object().unwrap()));
        let metas = [
            json!({"batch_id": value, "openai_org": "org-flyte"}).to_string().into_bytes(),
            json!({"batch_id": "batch_1", "openai_org": value}).to_string().into_bytes(),
        ];
        assert_contained(&env.server, BATCH_TYPE, Some(&batch), &metas, &format!("{value:?}")).await;
    }
    assert_eq!(trap.reached(), 0, "a hostile value reached the attacker's host");
    let err =
        ChatGptAgent::new(Config { base_url: Some(format!("http://user:pw@{}/v1", trap.addr())), ..Config::default() })
            .unwrap_err();
    assert!(err.contains("openai.base_url"), "{err}");
}

/// The attempt marks in a batch's metadata are the agent's: a task setting them could make
/// another task's create adopt a batch it prepared.
#[tokio::test]
async fn a_task_cannot_set_the_agents_attempt_marks() {
    let env = env().await;
    for key in ["flyte_attempt_sha256", "flyte_attempt"] {
        let mut t = batch_task("file-1");
        t.template.custom = Some(json_to_struct(json!({"config": {"metadata": {key: "victim"}}}).as_object().unwrap()));
        let err = env.server.async_client().await.create_task(create_request(&t)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(key), "{}", err.message());
    }
}

/// Issue 15, the shared poll/cancel policy: a Batch call OpenAI refuses follows the one
/// classification. Before, every refused status check was PERMISSION_DENIED (a 400 too),
/// every refused cancellation INTERNAL, and every refused create INVALID_ARGUMENT (a 403
/// too). A batch OpenAI does not know fails the task naming it, and needs no cancelling;
/// a status check OpenAI does not answer reports the batch still running.
#[tokio::test]
async fn batch_calls_follow_the_shared_classification() {
    let env = env().await;
    let mut client = env.server.async_client().await;
    let meta = client.create_task(create_request(&batch_task("file-abc"))).await.unwrap().into_inner().resource_meta;
    #[allow(deprecated)]
    let get = |m: &[u8]| admin::GetTaskRequest {
        resource_meta: m.to_vec(),
        task_category: Some(admin::TaskCategory { name: BATCH_TYPE.into(), version: 0 }),
        ..Default::default()
    };
    let del = |m: &[u8]| admin::DeleteTaskRequest {
        resource_meta: m.to_vec(),
        task_category: Some(admin::TaskCategory { name: BATCH_TYPE.into(), version: 0 }),
        ..Default::default()
    };
    let refuse = |code: u16, method: &str| {
        env.ai.faults().push(
            FaultRule::new(FaultAction::Status { code, retry_after_secs: None }, 1).method(method).path("/batches"),
        );
    };
    for (status, code) in [(400, Code::InvalidArgument), (401, Code::PermissionDenied), (403, Code::PermissionDenied)] {
        refuse(status, "GET");
        let err = client.get_task(get(&meta)).await.unwrap_err();
        assert_eq!(err.code(), code, "status check answered {status}: {}", err.message());
        refuse(status, "POST");
        let err = client.delete_task(del(&meta)).await.unwrap_err();
        assert_eq!(err.code(), code, "cancellation answered {status}: {}", err.message());
        refuse(status, "POST");
        let err = client.create_task(create_request(&batch_task("file-abc"))).await.unwrap_err();
        assert_eq!(err.code(), code, "create answered {status}: {}", err.message());
        assert!(!err.message().contains(KEY), "{}", err.message());
    }

    let unknown = json!({"batch_id": "batch_nope", "openai_org": null}).to_string().into_bytes();
    let r = Resource::from_proto(&client.get_task(get(&unknown)).await.unwrap().into_inner().resource.unwrap());
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.contains("batch batch_nope"), "{}", r.message);
    client.delete_task(del(&unknown)).await.unwrap();

    env.ai.faults().push(
        FaultRule { times: None, ..FaultRule::new(FaultAction::Status { code: 503, retry_after_secs: None }, 0) }
            .method("GET")
            .path("/batches"),
    );
    // Propeller's deadline bounds the retries.
    let mut request = agent_core::testing::Request::new(get(&meta));
    request.set_timeout(Duration::from_secs(2));
    let r = Resource::from_proto(&client.get_task(request).await.unwrap().into_inner().resource.unwrap());
    assert_eq!(r.phase, Phase::Running, "{}", r.message);
    assert!(r.message.contains("OpenAI") && r.message.contains("will check again"), "{}", r.message);
}

/// The kit's pooled client carries async-openai, so `openai.ca_bundle` applies to OpenAI:
/// a bundle without certificates is refused at start-up, naming the setting. The old key
/// `request_timeout` still reads beside the kit's keys.
#[tokio::test]
async fn a_ca_bundle_without_certificates_is_refused_at_start_up() {
    use agent_core::config::{CliArgs, Settings};
    let path = std::env::temp_dir().join(format!("agent-openai-no-certs-{}.pem", std::process::id()));
    std::fs::write(&path, "no certificate here\n").unwrap();
    let config = Config {
        rest: agent_core::http::RestSettings { ca_bundle: Some(path.clone()), ..Default::default() },
        ..Config::default()
    };
    let settings = |vars: &[(&str, &str)]| {
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::load(&CliArgs::default(), Some(env)).unwrap()
    };
    let timeouts = settings(&[("AGENT_OPENAI__REQUEST_TIMEOUT", "3s"), ("AGENT_OPENAI__RETRY_BUDGET", "9s")]);
    assert!(agent_openai::registry(&timeouts).await.is_ok());
    let bundle = settings(&[("AGENT_OPENAI__CA_BUNDLE", path.to_str().unwrap())]);
    let from_env = agent_openai::registry(&bundle).await.unwrap_err();
    let errors = [ChatGptAgent::new(config.clone()).unwrap_err(), BatchAgent::new(config).unwrap_err(), from_env];
    std::fs::remove_file(&path).unwrap();
    for err in errors {
        assert!(err.contains("openai.ca_bundle") && err.contains("no PEM certificate"), "{err}");
    }
}
