//! An OpenAI API emulator: `POST /v1/chat/completions` and the Batch API (`POST /v1/batches`,
//! `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`) with OpenAI's JSON shapes and
//! error bodies. Batches move validating → in_progress → finalizing → completed over time.
//!
//! Control endpoints: `GET /_emulator/openai/state` (batches and chat request counts, with the
//! organizations seen), `POST|DELETE /_emulator/faults`, and the shared `GET /_emulator/stats`
//! and `GET|PUT /_emulator/shaping` (see [`crate::shaping`]).

// Helpers return ready-made HTTP error responses; their size is irrelevant in an emulator.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::faults::Faults;
use crate::http::json_response;
use crate::shaping::Shaping;

/// Keys, models and timing.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Accepted API keys.
    pub api_keys: Vec<String>,
    /// Known models.
    pub models: Vec<String>,
    /// Time a batch spends in each of validating, in_progress and finalizing.
    pub step: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_keys: vec!["sk-emulator-key".into()],
            models: vec!["gpt-4o-mini".into(), "gpt-4o".into(), "gpt-3.5-turbo".into()],
            step: Duration::from_millis(100),
        }
    }
}

#[derive(Debug)]
struct Batch {
    body: Json,
    created: Instant,
    cancelled_at: Option<Instant>,
    fails: bool,
}

#[derive(Debug, Default)]
struct St {
    batches: BTreeMap<u64, (String, Batch)>,
    next: u64,
    chat_requests: u64,
    organizations: Vec<String>,
}

/// The emulator; clone handles share state.
#[derive(Debug, Clone)]
pub struct OpenAi {
    state: Arc<Mutex<St>>,
    faults: Faults,
    shaping: Shaping,
    settings: Arc<Settings>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// OpenAI's error body.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Json {
    let (ty, code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        404 => ("invalid_request_error", "not_found"),
        429 => ("requests", "rate_limit_exceeded"),
        400 => ("invalid_request_error", "invalid_value"),
        _ => ("server_error", "server_error"),
    };
    json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
}

/// For echo faults: a chat completion whose content is `text` (the ChatGPT agent's output),
/// or a batch that failed with `text` as its first error (the batch agent's message).
pub(crate) fn echo_body(path: &str, text: &str) -> Option<Json> {
    if path.ends_with("/chat/completions") {
        return Some(json!({
            "id": "chatcmpl-echo", "object": "chat.completion", "created": now_secs(), "model": "echo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }));
    }
    let id = path.split_once("/batches/")?.1.split('/').next()?;
    Some(json!({
        "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-echo",
        "errors": {"object": "list", "data": [{"code": "echo", "message": text, "param": null, "line": null}]},
        "completion_window": "24h", "status": "failed", "output_file_id": null, "error_file_id": null,
        "created_at": now_secs(), "failed_at": now_secs(), "request_counts": {"total": 0, "completed": 0, "failed": 0},
    }))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &error_body(status, message))
}

impl OpenAi {
    /// An emulator with these settings.
    pub fn new(settings: Settings) -> Self {
        Self {
            state: Arc::default(),
            faults: Faults::default(),
            shaping: Shaping::default(),
            settings: Arc::new(settings),
        }
    }

    /// The router with this emulator's faults, shaping and formats.
    fn service(&self) -> crate::http::Service {
        crate::http::Service {
            router: self.router(),
            faults: self.faults.clone(),
            shaping: self.shaping.clone(),
            formats: crate::http::Formats { error: error_body, echo: echo_body },
        }
    }

    /// The fault rules.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Latency, rate limit and counters (see [`crate::shaping`]).
    pub fn shaping(&self) -> &Shaping {
        &self.shaping
    }

    /// Every batch, as the API would return it now.
    pub fn batches(&self) -> Vec<Json> {
        let st = self.lock();
        let now = Instant::now();
        st.batches.values().map(|(_, b)| self.batch_json(b, now)).collect()
    }

    /// Makes every batch look `by` older to the API (`created_at` and `expires_at`), as if
    /// it had been created that long ago; its status still moves at the emulator's pace.
    /// Tests use it for what happens to batches older than a few minutes.
    pub fn age_batches(&self, by: Duration) {
        for (_, b) in self.lock().batches.values_mut() {
            for field in ["created_at", "expires_at"] {
                if let Some(t) = b.body[field].as_u64() {
                    b.body[field] = json!(t.saturating_sub(by.as_secs()));
                }
            }
        }
    }

    /// `(chat completion requests, organizations seen)`.
    pub fn chat_requests(&self) -> (u64, Vec<String>) {
        let st = self.lock();
        (st.chat_requests, st.organizations.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Response<Body>> {
        let key = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match key {
            Some(k) if self.settings.api_keys.iter().any(|a| a == k) => Ok(()),
            _ => Err(error(StatusCode::UNAUTHORIZED, "Incorrect API key provided.")),
        }
    }

    fn batch_json(&self, b: &Batch, now: Instant) -> Json {
        let mut body = b.body.clone();
        let steps = now.saturating_duration_since(b.created).as_millis() / self.settings.step.as_millis().max(1);
        let status = match (b.cancelled_at, b.fails, steps) {
            (Some(at), _, _) if now.saturating_duration_since(at) < self.settings.step => "cancelling",
            (Some(_), _, _) => "cancelled",
            (None, true, 0) => "validating",
            (None, true, _) => "failed",
            (None, false, 0) => "validating",
            (None, false, 1) => "in_progress",
            (None, false, 2) => "finalizing",
            (None, false, _) => "completed",
        };
        body["status"] = json!(status);
        match status {
            "failed" => {
                body["errors"] = json!({"object": "list", "data": [{"code": "invalid_json_line",
                    "message": "This line is not parseable as valid JSON.", "param": null, "line": 1}]});
                body["failed_at"] = json!(now_secs());
            }
            "completed" => {
                body["output_file_id"] = json!(format!("file-out-{}", body["id"].as_str().unwrap_or_default()));
                body["completed_at"] = json!(now_secs());
                body["request_counts"] = json!({"total": 1, "completed": 1, "failed": 0});
            }
            "in_progress" | "finalizing" => body["in_progress_at"] = json!(now_secs()),
            "cancelled" => body["cancelled_at"] = json!(now_secs()),
            _ => {}
        }
        body
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/batches", post(create_batch).get(list_batches))
            .route("/v1/batches/{id}", get(get_batch))
            .route("/v1/batches/{id}/cancel", post(cancel_batch))
            .route("/_emulator/openai/state", get(state))
            .route("/_emulator/faults", post(add_fault).delete(clear_faults))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "Invalid URL") })
            .with_state(self.clone())
    }
}

async fn chat(State(ai): State<OpenAi>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    if let Err(r) = ai.authenticate(&headers) {
        return r;
    }
    let org = headers.get("openai-organization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    {
        let mut st = ai.lock();
        st.chat_requests += 1;
        if !org.is_empty() && !st.organizations.contains(&org) {
            st.organizations.push(org);
        }
    }
    let Ok(req) = serde_json::from_slice::<Json>(&body) else {
        return error(StatusCode::BAD_REQUEST, "We could not parse the JSON body of your request.");
    };
    let model = req.get("model").and_then(Json::as_str).unwrap_or_default().to_owned();
    if model.is_empty() {
        return error(StatusCode::BAD_REQUEST, "you must provide a model parameter");
    }
    if !ai.settings.models.contains(&model) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
        );
    }
    for field in ["max_tokens", "max_completion_tokens", "n", "seed"] {
        if let Some(v) = req.get(field).filter(|v| !(v.is_i64() || v.is_u64() || v.is_null())) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid type for '{field}': expected an integer, but got {v} instead."),
            );
        }
    }
    let content = req
        .pointer("/messages")
        .and_then(Json::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .map(str::to_owned);
    let Some(content) = content else {
        return error(StatusCode::BAD_REQUEST, "'messages' must contain a user message");
    };
    json_response(
        StatusCode::OK,
        &json!({
            "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            "object": "chat.completion",
            "created": now_secs(),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {content}"), "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }),
    )
}

async fn create_batch(State(ai): State<OpenAi>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    if let Err(r) = ai.authenticate(&headers) {
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Json>(&body) else {
        return error(StatusCode::BAD_REQUEST, "We could not parse the JSON body of your request.");
    };
    let input = req.get("input_file_id").and_then(Json::as_str).unwrap_or_default().to_owned();
    if !input.starts_with("file-") {
        return error(StatusCode::BAD_REQUEST, &format!("Invalid 'input_file_id': '{input}'."));
    }
    let endpoint = req.get("endpoint").and_then(Json::as_str).unwrap_or_default().to_owned();
    if !["/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses"].contains(&endpoint.as_str()) {
        return error(StatusCode::BAD_REQUEST, &format!("Invalid 'endpoint': '{endpoint}'."));
    }
    if req.get("completion_window").and_then(Json::as_str) != Some("24h") {
        return error(StatusCode::BAD_REQUEST, "Invalid 'completion_window': only '24h' is supported.");
    }
    let mut st = ai.lock();
    st.next += 1;
    let id = format!("batch_{:024x}", st.next);
    let body = json!({
        "id": id, "object": "batch", "endpoint": endpoint, "errors": null, "input_file_id": input,
        "completion_window": "24h", "status": "validating", "output_file_id": null, "error_file_id": null,
        "created_at": now_secs(), "in_progress_at": null, "expires_at": now_secs() + 86_400, "finalizing_at": null,
        "completed_at": null, "failed_at": null, "expired_at": null, "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": req.get("metadata").cloned().unwrap_or(Json::Null),
    });
    let batch = Batch { body, created: Instant::now(), cancelled_at: None, fails: input.contains("bad") };
    let out = ai.batch_json(&batch, Instant::now());
    let n = st.next;
    st.batches.insert(n, (id, batch));
    json_response(StatusCode::OK, &out)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_batches(State(ai): State<OpenAi>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response<Body> {
    if let Err(r) = ai.authenticate(&headers) {
        return r;
    }
    let st = ai.lock();
    let now = Instant::now();
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    // Most recent first, as OpenAI lists them.
    let all: Vec<Json> = st.batches.values().rev().map(|(_, b)| ai.batch_json(b, now)).collect();
    let start = q.after.as_ref().and_then(|a| all.iter().position(|b| b["id"] == a.as_str())).map_or(0, |p| p + 1);
    let page: Vec<Json> = all.iter().skip(start).take(limit).cloned().collect();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "first_id": page.first().map(|b| b["id"].clone()), "last_id": page.last().map(|b| b["id"].clone()),
                "has_more": start + page.len() < all.len(), "data": page}),
    )
}

fn find<'a>(st: &'a mut St, id: &str) -> Option<&'a mut Batch> {
    st.batches.values_mut().find(|(bid, _)| bid == id).map(|(_, b)| b)
}

async fn get_batch(State(ai): State<OpenAi>, headers: HeaderMap, Path(id): Path<String>) -> Response<Body> {
    if let Err(r) = ai.authenticate(&headers) {
        return r;
    }
    let mut st = ai.lock();
    match find(&mut st, &id) {
        Some(b) => {
            let body = ai.batch_json(b, Instant::now());
            json_response(StatusCode::OK, &body)
        }
        None => error(StatusCode::NOT_FOUND, &format!("No batch found with id '{id}'.")),
    }
}

async fn cancel_batch(State(ai): State<OpenAi>, headers: HeaderMap, Path(id): Path<String>) -> Response<Body> {
    if let Err(r) = ai.authenticate(&headers) {
        return r;
    }
    let now = Instant::now();
    let mut st = ai.lock();
    let step = ai.settings.step;
    match find(&mut st, &id) {
        Some(b) => {
            let status = ai.batch_json(b, now)["status"].as_str().unwrap_or_default().to_owned();
            if ["completed", "failed", "expired"].contains(&status.as_str()) {
                return error(StatusCode::CONFLICT, &format!("Cannot cancel a batch with status '{status}'."));
            }
            if b.cancelled_at.is_none() {
                b.cancelled_at = Some(now);
            }
            let _ = step;
            let body = ai.batch_json(b, now);
            json_response(StatusCode::OK, &body)
        }
        None => error(StatusCode::NOT_FOUND, &format!("No batch found with id '{id}'.")),
    }
}

async fn state(State(ai): State<OpenAi>) -> Response<Body> {
    let (chats, orgs) = ai.chat_requests();
    json_response(StatusCode::OK, &json!({"batches": ai.batches(), "chat_requests": chats, "organizations": orgs}))
}

async fn add_fault(State(ai): State<OpenAi>, axum::Json(rule): axum::Json<crate::faults::FaultRule>) -> Response<Body> {
    ai.faults.push(rule);
    json_response(StatusCode::OK, &json!({}))
}

async fn clear_faults(State(ai): State<OpenAi>) -> Response<Body> {
    ai.faults.clear();
    json_response(StatusCode::OK, &json!({}))
}

crate::http::serving!(OpenAi);
