//! A Databricks emulator: Jobs API 2.1 `runs/submit`, `runs/get` and `runs/cancel`, and the
//! OAuth token endpoint `/oidc/v1/token` (client credentials and token exchange), with
//! Databricks' JSON shapes and error bodies. Runs move PENDING → RUNNING → TERMINATED.
//! Serve it over HTTPS with a [`crate::tls::TestCa`], as the real service is.
//!
//! Control endpoints: `GET /_emulator/databricks/runs` (runs and request counts),
//! `POST /_emulator/databricks/rules` ([`RunRule`]), `POST /_emulator/databricks/runs/{id}`
//! (force `state`/`status` JSON verbatim), `DELETE /_emulator/databricks/tokens` (revoke
//! issued OAuth tokens), `POST|DELETE /_emulator/faults`, and the shared `GET /_emulator/stats`
//! and `GET|PUT /_emulator/shaping` (see [`crate::shaping`]).

// Helpers return ready-made HTTP error responses; their size is irrelevant in an emulator.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::faults::Faults;
use crate::http::{Running, json_response};
use crate::shaping::Shaping;
use crate::tls::TestCa;

/// Credentials the emulator accepts and how runs behave.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Personal access tokens accepted as `Authorization: Bearer`.
    pub pats: Vec<String>,
    /// OAuth clients for `client_credentials`: id → secret.
    pub oauth_clients: HashMap<String, String>,
    /// Federation for `token-exchange`: client id → the subject token (JWT) it must present.
    pub federated: HashMap<String, String>,
    /// Lifetime of issued access tokens.
    pub token_ttl: Duration,
    /// Time in PENDING.
    pub pending: Duration,
    /// Time in RUNNING.
    pub running: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pats: vec!["dapi-emulator-token".into()],
            oauth_clients: HashMap::from([("emulator-client".into(), "emulator-secret".into())]),
            federated: HashMap::from([("emulator-federated-client".into(), "emulator-subject-jwt".into())]),
            token_ttl: Duration::from_secs(3600),
            pending: Duration::from_millis(100),
            running: Duration::from_millis(400),
        }
    }
}

/// Steers runs whose `run_name` contains `run_name_contains`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRule {
    /// Substring of `run_name`.
    pub run_name_contains: String,
    /// How the run ends: a `result_state` (e.g. `FAILED`), or `INTERNAL_ERROR` for a
    /// platform failure.
    pub end: String,
    /// `state_message` at the end.
    #[serde(default)]
    pub message: String,
    /// Overrides the time in RUNNING.
    #[serde(default)]
    pub running_ms: Option<u64>,
}

/// What the emulator knows of a run, for tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: u64,
    /// The submitted body.
    pub spec: Json,
    /// `life_cycle_state` now.
    pub life_cycle_state: String,
    /// How the caller authenticated: `pat` or `oauth`.
    pub auth: String,
    /// Which of the configured personal access tokens submitted the run (its position in
    /// [`Settings::pats`], counting from 0), so tests can tell whose identity a run has
    /// without the emulator ever showing a token.
    pub pat: Option<usize>,
}

#[derive(Debug)]
struct Run {
    run_id: u64,
    spec: Json,
    created: Instant,
    created_ms: u64,
    pending: Duration,
    running: Duration,
    end: (String, String),
    cancelled_at: Option<Instant>,
    forced: Option<Json>,
    auth: String,
    pat: Option<usize>,
}

#[derive(Debug, Default)]
struct St {
    runs: BTreeMap<u64, Run>,
    idempotency: HashMap<String, u64>,
    tokens: HashMap<String, Instant>,
    rules: Vec<RunRule>,
    submit_requests: u64,
    token_requests: u64,
    next_id: u64,
}

/// The emulator; clone handles share state.
#[derive(Debug, Clone)]
pub struct Databricks {
    state: Arc<Mutex<St>>,
    faults: Faults,
    shaping: Shaping,
    settings: Arc<Settings>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Databricks' error body: `{"error_code": "...", "message": "..."}`.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Json {
    let code = match status.as_u16() {
        400 => "INVALID_PARAMETER_VALUE",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "RESOURCE_DOES_NOT_EXIST",
        429 => "REQUEST_LIMIT_EXCEEDED",
        503 => "TEMPORARILY_UNAVAILABLE",
        _ => "INTERNAL_ERROR",
    };
    json!({"error_code": code, "message": message})
}

/// For echo faults: the run of `runs/get`, failed with `text` as its state message, which
/// the agent reports as the task's failure.
pub(crate) fn echo_body(path: &str, text: &str) -> Option<Json> {
    path.ends_with("/runs/get").then(|| {
        json!({
            "job_id": 1, "run_id": 1, "run_name": "echo",
            "state": {"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": text,
                      "user_cancelled_or_timedout": false},
            "status": {"state": "TERMINATED",
                       "termination_details": {"code": "RUN_EXECUTION_ERROR", "type": "CLIENT_ERROR", "message": text}},
        })
    })
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &error_body(status, message))
}

/// Fields Databricks types as integers: a `1.0` there is rejected, as the real API does.
const INTEGER_FIELDS: &[&str] =
    &["num_workers", "timeout_seconds", "max_retries", "min_retry_interval_millis", "autotermination_minutes"];

fn check_integers(v: &Json, path: &str) -> Result<(), String> {
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                if INTEGER_FIELDS.contains(&k.as_str()) && !(v.is_i64() || v.is_u64()) {
                    return Err(format!("Expected an integer for field '{path}{k}', got {v}"));
                }
                check_integers(v, &format!("{path}{k}."))?;
            }
            Ok(())
        }
        Json::Array(a) => a.iter().try_for_each(|x| check_integers(x, path)),
        _ => Ok(()),
    }
}

impl Databricks {
    /// An emulator with these settings.
    pub fn new(settings: Settings) -> Self {
        Self {
            state: Arc::default(),
            faults: Faults::default(),
            shaping: Shaping::default(),
            settings: Arc::new(settings),
        }
    }

    /// Serves on `addr` over HTTPS with certificates from `ca` (or plain HTTP without).
    pub async fn start(&self, addr: SocketAddr, ca: Option<&TestCa>) -> std::io::Result<Running> {
        Ok(crate::http::serve(tokio::net::TcpListener::bind(addr).await?, self.service(), ca.map(TestCa::acceptor)))
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

    /// Adds a run rule.
    pub fn add_rule(&self, rule: RunRule) {
        self.lock().rules.push(rule);
    }

    /// Overrides a run's `state`/`status` objects with the given JSON.
    pub fn force(&self, run_id: u64, state: Json) -> bool {
        self.lock().runs.get_mut(&run_id).map(|r| r.forced = Some(state)).is_some()
    }

    /// Revokes every issued OAuth token (PATs stay valid).
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Every run.
    pub fn runs(&self) -> Vec<RunSummary> {
        let st = self.lock();
        let now = Instant::now();
        st.runs
            .values()
            .map(|r| RunSummary {
                run_id: r.run_id,
                spec: r.spec.clone(),
                life_cycle_state: run_state(r, now).0,
                auth: r.auth.clone(),
                pat: r.pat,
            })
            .collect()
    }

    /// `(runs/submit requests, token requests)` seen.
    pub fn request_counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.submit_requests, st.token_requests)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `pat` (with the token's position in the settings) or `oauth` for a valid bearer token.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(String, Option<usize>), Response<Body>> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "Missing or malformed Authorization header"))?;
        if let Some(i) = self.settings.pats.iter().position(|p| p == token) {
            return Ok(("pat".into(), Some(i)));
        }
        match self.lock().tokens.get(token) {
            Some(expiry) if *expiry > Instant::now() => Ok(("oauth".into(), None)),
            Some(_) => Err(error(StatusCode::UNAUTHORIZED, "Token expired")),
            None => Err(error(StatusCode::UNAUTHORIZED, "Invalid access token")),
        }
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/api/2.1/jobs/runs/submit", post(submit))
            .route("/api/2.1/jobs/runs/get", get(get_run))
            .route("/api/2.1/jobs/runs/cancel", post(cancel))
            .route("/oidc/v1/token", post(token))
            .route("/_emulator/databricks/runs", get(list_runs))
            .route("/_emulator/databricks/rules", post(add_rule))
            .route("/_emulator/databricks/runs/{run_id}", post(force_run))
            .route("/_emulator/databricks/tokens", delete(revoke))
            .route("/_emulator/faults", post(add_fault).delete(clear_faults))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "No API found") })
            .with_state(self.clone())
    }
}

/// `(life_cycle_state, result_state, message, termination type)` of a run now.
fn run_state(run: &Run, now: Instant) -> (String, Option<String>, String, Option<(String, String)>) {
    if run.cancelled_at.is_some() {
        return (
            "TERMINATED".into(),
            Some("CANCELED".into()),
            "Run cancelled.".into(),
            Some(("USER_CANCELED".into(), "SUCCESS".into())),
        );
    }
    let elapsed = now.saturating_duration_since(run.created);
    if elapsed < run.pending {
        return ("PENDING".into(), None, "Waiting for cluster".into(), None);
    }
    if elapsed < run.pending + run.running {
        return ("RUNNING".into(), None, "In run".into(), None);
    }
    let (end, message) = &run.end;
    match end.as_str() {
        "INTERNAL_ERROR" => {
            ("INTERNAL_ERROR".into(), None, message.clone(), Some(("INTERNAL_ERROR".into(), "INTERNAL_ERROR".into())))
        }
        "SUCCESS" => {
            ("TERMINATED".into(), Some("SUCCESS".into()), message.clone(), Some(("SUCCESS".into(), "SUCCESS".into())))
        }
        other => (
            "TERMINATED".into(),
            Some(other.to_owned()),
            message.clone(),
            Some(("RUN_EXECUTION_ERROR".into(), "CLIENT_ERROR".into())),
        ),
    }
}

fn run_json(run: &Run, host: &str, now: Instant) -> Json {
    let job_id = 1000 + run.run_id;
    let (life, result, message, termination) = run_state(run, now);
    let mut state = json!({"life_cycle_state": life, "state_message": message, "user_cancelled_or_timedout": run.cancelled_at.is_some()});
    if let Some(r) = &result {
        state["result_state"] = json!(r);
    }
    let mut status = json!({"state": if life == "INTERNAL_ERROR" { "TERMINATED" } else { life.as_str() }});
    if let Some((code, ty)) = termination {
        status["termination_details"] = json!({"code": code, "type": ty, "message": message});
    }
    let mut body = json!({
        "job_id": job_id,
        "run_id": run.run_id,
        "number_in_job": 1,
        "run_name": run.spec.get("run_name").cloned().unwrap_or(json!("Untitled")),
        "run_page_url": format!("https://{host}/?o=1234567890#job/{job_id}/run/{}", run.run_id),
        "run_type": "SUBMIT_RUN",
        "start_time": run.created_ms,
        "state": state,
        "status": status,
    });
    if let Some(forced) = &run.forced {
        for k in ["state", "status"] {
            if let Some(v) = forced.get(k) {
                body[k] = v.clone();
            }
        }
    }
    body
}

/// The host the client addressed: `Host` on HTTP/1.1, the URI's authority on HTTP/2.
fn host_of(headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| headers.get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| "localhost".to_owned())
}

async fn submit(State(db): State<Databricks>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let (auth, pat) = match db.authenticate(&headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    db.lock().submit_requests += 1;
    let Ok(spec) = serde_json::from_slice::<Json>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Malformed request body: not JSON");
    };
    if let Err(m) = check_integers(&spec, "") {
        return error(StatusCode::BAD_REQUEST, &m);
    }
    let has_compute = ["existing_cluster_id", "new_cluster", "tasks"].iter().any(|k| spec.get(k).is_some());
    if !has_compute {
        return error(StatusCode::BAD_REQUEST, "One of existing_cluster_id, new_cluster or tasks must be specified");
    }
    let mut st = db.lock();
    let token = spec.get("idempotency_token").and_then(Json::as_str).map(str::to_owned);
    if let Some(t) = &token {
        if t.len() > 64 {
            return error(StatusCode::BAD_REQUEST, "idempotency_token must be at most 64 characters");
        }
        // Same token, same run: Databricks returns the existing run instead of a new one.
        if let Some(id) = st.idempotency.get(t) {
            return json_response(StatusCode::OK, &json!({"run_id": id}));
        }
    }
    st.next_id += 1;
    let run_id = 700_000 + st.next_id;
    let name = spec.get("run_name").and_then(Json::as_str).unwrap_or_default().to_owned();
    let rule =
        st.rules.iter().find(|r| !r.run_name_contains.is_empty() && name.contains(&r.run_name_contains)).cloned();
    let end = rule.as_ref().map_or(("SUCCESS".into(), String::new()), |r| (r.end.clone(), r.message.clone()));
    let running = rule.and_then(|r| r.running_ms).map_or(db.settings.running, Duration::from_millis);
    st.runs.insert(
        run_id,
        Run {
            run_id,
            spec,
            created: Instant::now(),
            created_ms: now_ms(),
            pending: db.settings.pending,
            running,
            end,
            cancelled_at: None,
            forced: None,
            auth,
            pat,
        },
    );
    if let Some(t) = token {
        st.idempotency.insert(t, run_id);
    }
    json_response(StatusCode::OK, &json!({"run_id": run_id, "number_in_job": 1}))
}

#[derive(Debug, Deserialize)]
struct RunIdQuery {
    run_id: String,
}

fn parse_run_id(v: &str) -> Result<u64, Response<Body>> {
    v.parse().map_err(|_| error(StatusCode::BAD_REQUEST, &format!("Invalid run_id: {v}")))
}

async fn get_run(
    State(db): State<Databricks>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<RunIdQuery>,
) -> Response<Body> {
    if let Err(r) = db.authenticate(&headers) {
        return r;
    }
    let run_id = match parse_run_id(&q.run_id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let st = db.lock();
    match st.runs.get(&run_id) {
        Some(run) => json_response(StatusCode::OK, &run_json(run, &host_of(&headers, &uri), Instant::now())),
        None => error(StatusCode::BAD_REQUEST, &format!("Run {run_id} does not exist.")),
    }
}

async fn cancel(State(db): State<Databricks>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    if let Err(r) = db.authenticate(&headers) {
        return r;
    }
    let Ok(b) = serde_json::from_slice::<Json>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Malformed request body: not JSON");
    };
    let raw = match b.get("run_id") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Number(n)) => n.to_string(),
        _ => return error(StatusCode::BAD_REQUEST, "Missing required field: run_id"),
    };
    let run_id = match parse_run_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut st = db.lock();
    let now = Instant::now();
    match st.runs.get_mut(&run_id) {
        Some(run) => {
            // Cancelling a finished run changes nothing and succeeds.
            if !matches!(run_state(run, now).0.as_str(), "TERMINATED" | "INTERNAL_ERROR" | "SKIPPED") {
                run.cancelled_at = Some(now);
            }
            json_response(StatusCode::OK, &json!({}))
        }
        None => error(StatusCode::BAD_REQUEST, &format!("Run {run_id} does not exist.")),
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_response(status, &json!({"error": error, "error_description": description}))
}

async fn token(State(db): State<Databricks>, body: Bytes) -> Response<Body> {
    db.lock().token_requests += 1;
    let Ok(form) = serde_urlencoded::from_bytes::<HashMap<String, String>>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body must be form-encoded");
    };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("scope") != "all-apis" {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "scope must be all-apis");
    }
    let client = field("client_id");
    let ok = match field("grant_type") {
        "client_credentials" => db.settings.oauth_clients.get(client).is_some_and(|s| s == field("client_secret")),
        "urn:ietf:params:oauth:grant-type:token-exchange" => {
            field("subject_token_type") == "urn:ietf:params:oauth:token-type:jwt"
                && db.settings.federated.get(client).is_some_and(|t| t == field("subject_token"))
        }
        other => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", &format!("grant_type {other}")),
    };
    if !ok {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    }
    let access = format!("dbx-oauth-{}", uuid::Uuid::new_v4().simple());
    let ttl = db.settings.token_ttl;
    db.lock().tokens.insert(access.clone(), Instant::now() + ttl);
    json_response(
        StatusCode::OK,
        &json!({"access_token": access, "token_type": "Bearer", "expires_in": ttl.as_secs(), "scope": "all-apis"}),
    )
}

async fn list_runs(State(db): State<Databricks>) -> Response<Body> {
    let (submits, tokens) = db.request_counts();
    json_response(StatusCode::OK, &json!({"runs": db.runs(), "submit_requests": submits, "token_requests": tokens}))
}

async fn add_rule(State(db): State<Databricks>, axum::Json(rule): axum::Json<RunRule>) -> Response<Body> {
    db.add_rule(rule);
    json_response(StatusCode::OK, &json!({}))
}

async fn force_run(
    State(db): State<Databricks>,
    Path(run_id): Path<u64>,
    axum::Json(state): axum::Json<Json>,
) -> Response<Body> {
    if db.force(run_id, state) {
        json_response(StatusCode::OK, &json!({}))
    } else {
        error(StatusCode::BAD_REQUEST, &format!("Run {run_id} does not exist."))
    }
}

async fn revoke(State(db): State<Databricks>) -> Response<Body> {
    db.revoke_tokens();
    json_response(StatusCode::OK, &json!({}))
}

async fn add_fault(
    State(db): State<Databricks>,
    axum::Json(rule): axum::Json<crate::faults::FaultRule>,
) -> Response<Body> {
    db.faults.push(rule);
    json_response(StatusCode::OK, &json!({}))
}

async fn clear_faults(State(db): State<Databricks>) -> Response<Body> {
    db.faults.clear();
    json_response(StatusCode::OK, &json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_fields_reject_floats_anywhere_in_the_body() {
        assert!(check_integers(&json!({"new_cluster": {"num_workers": 2}, "timeout_seconds": 60}), "").is_ok());
        let err = check_integers(&json!({"new_cluster": {"num_workers": 1.0}}), "").unwrap_err();
        assert!(err.contains("new_cluster.num_workers"), "{err}");
        assert!(check_integers(&json!({"tasks": [{"timeout_seconds": 3600.0}]}), "").is_err());
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    /// With several PATs configured, each run records which one submitted it (and the
    /// listing shows the position, never the token).
    #[tokio::test]
    async fn each_run_records_which_pat_submitted_it() {
        let db =
            Databricks::new(Settings { pats: vec!["dapi-pod".into(), "dapi-tenant".into()], ..Settings::default() });
        let spec = Bytes::from_static(br#"{"run_name": "r", "new_cluster": {"num_workers": 1}}"#);
        for token in ["dapi-tenant", "dapi-pod", "dapi-tenant"] {
            assert_eq!(submit(State(db.clone()), bearer(token), spec.clone()).await.status(), StatusCode::OK);
        }
        assert_eq!(submit(State(db.clone()), bearer("dapi-other"), spec).await.status(), StatusCode::UNAUTHORIZED);
        let pats: Vec<_> = db.runs().iter().map(|r| (r.auth.clone(), r.pat)).collect();
        let pat = |i| ("pat".to_owned(), Some(i));
        assert_eq!(pats, [pat(1), pat(0), pat(1)]);
        let listed = serde_json::to_string(&db.runs()).unwrap();
        assert!(listed.contains(r#""pat":1"#) && !listed.contains("dapi-"), "{listed}");
    }
}
