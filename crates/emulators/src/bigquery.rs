//! A BigQuery jobs emulator: `jobs.insert`, `jobs.get` and `jobs.cancel` at the real REST
//! paths (`/bigquery/v2/projects/{project}/jobs…`), with BigQuery's JSON shapes and error
//! bodies. Jobs move PENDING → RUNNING → DONE over time, or on command.
//!
//! Authentication, as Google's token endpoint and BigQuery do it: `POST /token` takes the
//! OAuth 2.0 JWT-bearer grant a service-account key makes (an RS256 assertion with `iss` =
//! the account's email, `aud` = this endpoint, a `scope`, `iat` and `exp`), verifies it
//! against the public keys of the accounts the emulator is given
//! ([`BigQuery::with_service_account`]) and issues a short-lived access token. The job
//! endpoints accept those tokens and record the account each job ran as; a request without
//! an `Authorization` header is anonymous (emulator mode, as Google's client libraries
//! call an emulator), and any other bearer is refused.
//!
//! Control endpoints (not part of BigQuery):
//! - `GET /_emulator/bigquery/jobs`: every job and the number of insert requests seen;
//! - `POST /_emulator/bigquery/rules`: an [`OutcomeRule`] for queries containing a string;
//! - `POST /_emulator/bigquery/jobs/{project}/{job_id}`: force a job's state (any string,
//!   so clients can be tested against states BigQuery may add) and error;
//! - `POST|DELETE /_emulator/faults`: fault injection (see [`crate::faults`]);
//! - `GET /_emulator/stats`, `GET|PUT /_emulator/shaping`: counters, latency and rate limit
//!   (see [`crate::shaping`]).

// Helpers return ready-made HTTP error responses; their size is irrelevant in an emulator.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Response, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::faults::Faults;
use crate::http::json_response;
use crate::shaping::Shaping;

/// How long jobs stay in each state unless a rule says otherwise.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Time in PENDING.
    pub pending: Duration,
    /// Time in RUNNING.
    pub running: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { pending: Duration::from_millis(100), running: Duration::from_millis(400) }
    }
}

/// BigQuery's `ErrorProto`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Short reason, e.g. `invalidQuery`, `backendError`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// Where, if known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
}

/// Steers jobs whose query contains `query_contains`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeRule {
    /// Substring of the SQL that selects the jobs.
    pub query_contains: String,
    /// The job ends DONE with this `errorResult`.
    #[serde(default)]
    pub error: Option<JobError>,
    /// Overrides the time in PENDING.
    #[serde(default)]
    pub pending_ms: Option<u64>,
    /// Overrides the time in RUNNING.
    #[serde(default)]
    pub running_ms: Option<u64>,
}

/// A forced state (`POST /_emulator/bigquery/jobs/...`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForcedState {
    /// The `status.state` to report, verbatim.
    pub state: String,
    /// The `status.errorResult` to report.
    #[serde(default)]
    pub error: Option<JobError>,
}

/// What the emulator knows of a job, for tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSummary {
    /// Project.
    pub project: String,
    /// Job id.
    pub job_id: String,
    /// Location.
    pub location: String,
    /// Current `status.state`.
    pub state: String,
    /// The job's `configuration` as the client sent it (plus what BigQuery fills in).
    pub configuration: Json,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
    /// The service account (its `client_email`) whose access token created the job; none
    /// for an anonymous request.
    pub service_account: Option<String>,
    /// The `User-Agent` of the request that created the job.
    pub user_agent: String,
}

#[derive(Debug)]
struct Job {
    project: String,
    job_id: String,
    location: String,
    created: Instant,
    created_ms: u64,
    configuration: Json,
    timing: Timing,
    error: Option<JobError>,
    cancelled_at: Option<Instant>,
    forced: Option<ForcedState>,
    user_agent: String,
    service_account: Option<String>,
}

#[derive(Debug, Default)]
struct St {
    jobs: BTreeMap<(String, String), Job>,
    insert_requests: u64,
    rules: Vec<OutcomeRule>,
    /// Issued access token → (service account, expiry).
    tokens: HashMap<String, (String, Instant)>,
    token_requests: u64,
}

/// The emulator; clone handles share state.
#[derive(Debug, Clone, Default)]
pub struct BigQuery {
    state: Arc<Mutex<St>>,
    faults: Faults,
    shaping: Shaping,
    timing: Timing,
    /// Service account email → its public key (PKCS#1 DER).
    accounts: Arc<HashMap<String, Vec<u8>>>,
}

/// The JWT-bearer grant type of Google's token endpoint (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Google's token endpoint, the audience google-auth puts in every assertion.
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// Lifetime of issued access tokens, as Google's (an hour).
const TOKEN_TTL: Duration = Duration::from_secs(3600);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// BigQuery's error body: `{"error": {"code", "message", "errors": [{reason…}], "status"}}`.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Json {
    let (reason, grpc_status) = match status.as_u16() {
        400 => ("invalid", "INVALID_ARGUMENT"),
        401 => ("unauthorized", "UNAUTHENTICATED"),
        403 => ("accessDenied", "PERMISSION_DENIED"),
        404 => ("notFound", "NOT_FOUND"),
        409 => ("duplicate", "ALREADY_EXISTS"),
        429 => ("rateLimitExceeded", "RESOURCE_EXHAUSTED"),
        503 => ("backendError", "UNAVAILABLE"),
        _ => ("backendError", "INTERNAL"),
    };
    json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": grpc_status,
    }})
}

/// For echo faults: the job of `jobs.get` (or `jobs.insert`) at `path`, failed with `text`
/// as its `errorResult` message, which the agent reports as the task's failure.
pub(crate) fn echo_body(path: &str, text: &str) -> Option<Json> {
    let mut segments = path.split('/').skip_while(|s| *s != "projects").skip(1);
    let project = segments.next()?;
    segments.next().filter(|s| *s == "jobs")?;
    let job_id = segments.next().unwrap_or("echo");
    let error = json!({"reason": "invalid", "message": text});
    Some(json!({
        "kind": "bigquery#job",
        "id": format!("{project}:US.{job_id}"),
        "jobReference": {"projectId": project, "jobId": job_id, "location": "US"},
        "status": {"state": "DONE", "errorResult": error, "errors": [error]},
        "statistics": {"creationTime": "0", "startTime": "0", "endTime": "0"},
    }))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &error_body(status, message))
}

impl BigQuery {
    /// An emulator whose jobs follow `timing`.
    pub fn new(timing: Timing) -> Self {
        Self { timing, ..Self::default() }
    }

    /// Also accepts the service account of this key file (Google's JSON: `client_email`
    /// and a PKCS#8 `private_key`, of which only the public half is kept) at `POST /token`.
    pub fn with_service_account(mut self, key_json: &str) -> Result<Self, String> {
        let key: Json = serde_json::from_str(key_json).map_err(|e| format!("service account key: not JSON: {e}"))?;
        let field = |name: &str| {
            key.get(name)
                .and_then(Json::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("service account key: `{name}` is missing"))
        };
        let email = field("client_email")?.to_owned();
        let (_, der) = pkcs8::Document::from_pem(field("private_key")?.trim())
            .map_err(|e| format!("service account key of {email}: private_key: {e}"))?;
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der.as_bytes())
            .map_err(|e| format!("service account key of {email}: private_key is no RSA key: {e}"))?;
        let public = aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref().to_vec();
        Arc::make_mut(&mut self.accounts).insert(email, public);
        Ok(self)
    }

    /// `POST /token` requests seen.
    pub fn token_requests(&self) -> u64 {
        self.lock().token_requests
    }

    /// Who a job request is from: `None` without an `Authorization` header (anonymous, as
    /// client libraries call an emulator), the account of a live issued token, or a 401.
    fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Option<String>, Response<Body>> {
        let Some(value) = headers.get("authorization") else {
            return Ok(None);
        };
        let denied = || {
            error(
                StatusCode::UNAUTHORIZED,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or \
                 other valid authentication credential.",
            )
        };
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(denied)?;
        match self.lock().tokens.get(token) {
            Some((account, expiry)) if *expiry > Instant::now() => Ok(Some(account.clone())),
            _ => Err(denied()),
        }
    }

    /// Checks a JWT-bearer assertion as Google's token endpoint does; the account it proves.
    fn verify_assertion(&self, assertion: &str, token_url: &[String]) -> Result<String, String> {
        let mut parts = assertion.split('.');
        let (Some(h), Some(c), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("assertion is not a JWT".into());
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| serde_json::from_slice::<Json>(&b).ok());
        let header = decode(h).ok_or("bad JWT header")?;
        let claims = decode(c).ok_or("bad JWT claims")?;
        if header.get("alg").and_then(Json::as_str) != Some("RS256") {
            return Err("alg must be RS256".into());
        }
        let iss = claims.get("iss").and_then(Json::as_str).unwrap_or_default();
        let key = self.accounts.get(iss).ok_or_else(|| format!("no such service account: {iss}"))?;
        let aud = claims.get("aud").and_then(Json::as_str).unwrap_or_default();
        if !token_url.iter().any(|u| u == aud) {
            return Err(format!("aud must be this token endpoint ({}), not {aud}", token_url.join(" or ")));
        }
        if claims.get("scope").and_then(Json::as_str).is_none_or(|s| s.trim().is_empty()) {
            return Err("scope is missing".into());
        }
        let now = now_ms() / 1000;
        let exp = claims.get("exp").and_then(Json::as_u64).unwrap_or(0);
        let iat = claims.get("iat").and_then(Json::as_u64).unwrap_or(0);
        if exp <= now || exp.saturating_sub(iat) > 3600 || iat > now + 60 {
            return Err(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe".into()
            );
        }
        let signature = URL_SAFE_NO_PAD.decode(sig).map_err(|_| "bad signature encoding")?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| "Invalid JWT Signature.".to_owned())?;
        Ok(iss.to_owned())
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

    /// Adds an outcome rule.
    pub fn add_rule(&self, rule: OutcomeRule) {
        self.lock().rules.push(rule);
    }

    /// Forces a job's reported state; false when there is no such job.
    pub fn force(&self, project: &str, job_id: &str, forced: ForcedState) -> bool {
        match self.lock().jobs.get_mut(&(project.to_owned(), job_id.to_owned())) {
            Some(job) => {
                job.forced = Some(forced);
                true
            }
            None => false,
        }
    }

    /// Every job.
    pub fn jobs(&self) -> Vec<JobSummary> {
        let st = self.lock();
        let now = Instant::now();
        st.jobs
            .values()
            .map(|j| JobSummary {
                project: j.project.clone(),
                job_id: j.job_id.clone(),
                location: j.location.clone(),
                state: status(j, now).0,
                configuration: j.configuration.clone(),
                cancel_requested: j.cancelled_at.is_some(),
                service_account: j.service_account.clone(),
                user_agent: j.user_agent.clone(),
            })
            .collect()
    }

    /// How many `jobs.insert` requests reached the emulator (duplicates included).
    pub fn insert_requests(&self) -> u64 {
        self.lock().insert_requests
    }

    /// The `User-Agent` of the request that created a job.
    pub fn user_agent(&self, project: &str, job_id: &str) -> Option<String> {
        self.lock().jobs.get(&(project.to_owned(), job_id.to_owned())).map(|j| j.user_agent.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/token", post(token))
            .route("/bigquery/v2/projects/{project}/jobs", post(insert_job))
            .route("/bigquery/v2/projects/{project}/jobs/{job_id}", get(get_job))
            .route("/bigquery/v2/projects/{project}/jobs/{job_id}/cancel", post(cancel_job))
            .route("/_emulator/bigquery/jobs", get(list_jobs))
            .route("/_emulator/bigquery/rules", post(add_rule))
            .route("/_emulator/bigquery/jobs/{project}/{job_id}", post(force_state))
            .route("/_emulator/faults", post(add_fault).delete(clear_faults))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found: URL") })
            .with_state(self.clone())
    }
}

/// `(state, errorResult)` of a job now.
fn status(job: &Job, now: Instant) -> (String, Option<JobError>) {
    if let Some(f) = &job.forced {
        return (f.state.clone(), f.error.clone());
    }
    if let Some(at) = job.cancelled_at {
        // Cancellation takes effect at once here; BigQuery may take a moment.
        let _ = at;
        return (
            "DONE".into(),
            Some(JobError {
                reason: "stopped".into(),
                message: "Job execution was cancelled: User requested cancellation".into(),
                location: String::new(),
            }),
        );
    }
    let elapsed = now.saturating_duration_since(job.created);
    if elapsed < job.timing.pending {
        ("PENDING".into(), None)
    } else if elapsed < job.timing.pending + job.timing.running {
        ("RUNNING".into(), None)
    } else {
        ("DONE".into(), job.error.clone())
    }
}

fn job_json(job: &Job, now: Instant) -> Json {
    let (state, err) = status(job, now);
    let mut status = json!({"state": state});
    if let Some(e) = err {
        status["errorResult"] = serde_json::to_value(&e).unwrap_or(Json::Null);
        status["errors"] = json!([e]);
    }
    let mut stats = json!({"creationTime": job.created_ms.to_string(), "query": {"statementType": "SELECT"}});
    let elapsed = u64::try_from(now.saturating_duration_since(job.created).as_millis()).unwrap_or(u64::MAX);
    if state != "PENDING" {
        stats["startTime"] =
            json!((job.created_ms + u64::try_from(job.timing.pending.as_millis()).unwrap_or(0)).to_string());
    }
    if state == "DONE" {
        stats["endTime"] = json!((job.created_ms + elapsed).to_string());
    }
    json!({
        "kind": "bigquery#job",
        "etag": format!("\"{}\"", job.created_ms),
        "id": format!("{}:{}.{}", job.project, job.location, job.job_id),
        "selfLink": format!("/bigquery/v2/projects/{}/jobs/{}?location={}", job.project, job.job_id, job.location),
        "user_email": "emulator@example.com",
        "jobReference": {"projectId": job.project, "jobId": job.job_id, "location": job.location},
        "configuration": job.configuration,
        "statistics": stats,
        "status": status,
    })
}

fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 1024 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Named parameters the query uses (`@name`), for BigQuery's "parameter not found" error.
fn named_parameters(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((_, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '@') => {
                // `@@system_variable` is not a parameter.
                if chars.peek().is_some_and(|(_, n)| *n == '@') {
                    chars.next();
                    while chars.peek().is_some_and(|(_, n)| n.is_ascii_alphanumeric() || *n == '_') {
                        chars.next();
                    }
                    continue;
                }
                let mut name = String::new();
                while let Some((_, n)) = chars.peek().filter(|(_, n)| n.is_ascii_alphanumeric() || *n == '_') {
                    name.push(*n);
                    chars.next();
                }
                if !name.is_empty() && !out.contains(&name) {
                    out.push(name);
                }
            }
            _ => {}
        }
    }
    out
}

async fn insert_job(
    State(bq): State<BigQuery>,
    Path(project): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let service_account = match bq.caller(&headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<Json>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.");
    };
    let mut configuration = body.get("configuration").cloned().unwrap_or(Json::Null);
    let Some(query) = configuration.pointer("/query/query").and_then(Json::as_str).map(str::to_owned) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Job configuration must contain exactly one job-specific configuration object (e.g., query, load, \
             extract, spreadsheetExtract), but there were 0",
        );
    };
    if query.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "Required parameter is missing: query");
    }
    let reference = body.get("jobReference").cloned().unwrap_or(Json::Null);
    let job_id = match reference.get("jobId").and_then(Json::as_str) {
        Some(id) if valid_job_id(id) => id.to_owned(),
        Some(id) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Invalid job ID \"{id}\". Job IDs must be alphanumeric (plus underscores and dashes) and must be at most 1024 characters long."
                ),
            );
        }
        None => format!("job_{}", uuid::Uuid::new_v4().simple()),
    };
    let location =
        reference.get("location").and_then(Json::as_str).filter(|l| !l.is_empty()).unwrap_or("US").to_owned();
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();

    let mut st = bq.lock();
    st.insert_requests += 1;
    let key = (project.clone(), job_id.clone());
    if let Some(existing) = st.jobs.get(&key) {
        let msg = format!("Already Exists: Job {}:{}.{}", project, existing.location, job_id);
        return error(StatusCode::CONFLICT, &msg);
    }
    let rule = st.rules.iter().find(|r| query.contains(&r.query_contains)).cloned();
    let mut timing = bq.timing.clone();
    let mut job_error = None;
    if let Some(r) = &rule {
        timing.pending = r.pending_ms.map_or(timing.pending, Duration::from_millis);
        timing.running = r.running_ms.map_or(timing.running, Duration::from_millis);
        job_error = r.error.clone();
    }
    // Like BigQuery, fail the job (not the request) when a named parameter is missing.
    let declared: Vec<String> = configuration
        .pointer("/query/queryParameters")
        .and_then(Json::as_array)
        .map(|ps| ps.iter().filter_map(|p| p.get("name").and_then(Json::as_str).map(str::to_owned)).collect())
        .unwrap_or_default();
    if job_error.is_none()
        && let Some(missing) = named_parameters(&query).into_iter().find(|n| !declared.contains(n))
    {
        job_error = Some(JobError {
            reason: "invalidQuery".into(),
            message: format!("Query parameter '{missing}' not found at [1:1]"),
            location: "query".into(),
        });
    }
    configuration["jobType"] = json!("QUERY");
    if configuration.pointer("/query/destinationTable").is_none() {
        let anon = uuid::Uuid::new_v4().simple().to_string();
        configuration["query"]["destinationTable"] = json!({"projectId": project, "datasetId": format!("_{}", &anon[..16]), "tableId": format!("anon{}", &anon[16..])});
    }
    let job = Job {
        project,
        job_id,
        location,
        created: Instant::now(),
        created_ms: now_ms(),
        configuration,
        timing,
        error: job_error,
        cancelled_at: None,
        forced: None,
        user_agent,
        service_account,
    };
    let body = job_json(&job, Instant::now());
    st.jobs.insert(key, job);
    json_response(StatusCode::OK, &body)
}

#[derive(Debug, Deserialize)]
struct LocationQuery {
    #[serde(default)]
    location: Option<String>,
}

fn not_found(project: &str, location: Option<&str>, job_id: &str) -> Response<Body> {
    let loc = location.filter(|l| !l.is_empty()).unwrap_or("US");
    error(StatusCode::NOT_FOUND, &format!("Not found: Job {project}:{loc}.{job_id}"))
}

async fn get_job(
    State(bq): State<BigQuery>,
    headers: axum::http::HeaderMap,
    Path((project, job_id)): Path<(String, String)>,
    Query(q): Query<LocationQuery>,
) -> Response<Body> {
    if let Err(r) = bq.caller(&headers) {
        return r;
    }
    let st = bq.lock();
    match st.jobs.get(&(project.clone(), job_id.clone())) {
        Some(job) if q.location.as_deref().is_none_or(|l| l.is_empty() || l.eq_ignore_ascii_case(&job.location)) => {
            json_response(StatusCode::OK, &job_json(job, Instant::now()))
        }
        _ => not_found(&project, q.location.as_deref(), &job_id),
    }
}

async fn cancel_job(
    State(bq): State<BigQuery>,
    headers: axum::http::HeaderMap,
    Path((project, job_id)): Path<(String, String)>,
    Query(q): Query<LocationQuery>,
) -> Response<Body> {
    if let Err(r) = bq.caller(&headers) {
        return r;
    }
    let mut st = bq.lock();
    match st.jobs.get_mut(&(project.clone(), job_id.clone())) {
        Some(job) if q.location.as_deref().is_none_or(|l| l.is_empty() || l.eq_ignore_ascii_case(&job.location)) => {
            let now = Instant::now();
            // Cancelling a finished job is accepted and changes nothing, as in BigQuery.
            if status(job, now).0 != "DONE" && job.forced.is_none() {
                job.cancelled_at = Some(now);
            }
            json_response(StatusCode::OK, &json!({"kind": "bigquery#jobCancelResponse", "job": job_json(job, now)}))
        }
        _ => not_found(&project, q.location.as_deref(), &job_id),
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_response(status, &json!({"error": error, "error_description": description}))
}

/// Google's OAuth 2.0 token endpoint for service-account keys (the JWT-bearer grant).
async fn token(State(bq): State<BigQuery>, headers: axum::http::HeaderMap, body: axum::body::Bytes) -> Response<Body> {
    bq.lock().token_requests += 1;
    let Ok(form) = serde_urlencoded::from_bytes::<HashMap<String, String>>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body must be form-encoded");
    };
    let grant = form.get("grant_type").map_or("", String::as_str);
    if grant != JWT_BEARER {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", &format!("Invalid grant_type: {grant}"));
    }
    // The audience is this endpoint as the client addressed it, or Google's own token
    // endpoint, which google-auth names whatever the key's `token_uri` (Google accepts it).
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let token_url = [format!("http://{host}/token"), format!("https://{host}/token"), GOOGLE_TOKEN_URL.to_owned()];
    let account = match bq.verify_assertion(form.get("assertion").map_or("", String::as_str), &token_url) {
        Ok(a) => a,
        Err(m) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &m),
    };
    let access = format!("ya29.emulator-{}", uuid::Uuid::new_v4().simple());
    bq.lock().tokens.insert(access.clone(), (account, Instant::now() + TOKEN_TTL));
    json_response(
        StatusCode::OK,
        &json!({"access_token": access, "expires_in": TOKEN_TTL.as_secs(), "token_type": "Bearer"}),
    )
}

async fn list_jobs(State(bq): State<BigQuery>) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"jobs": bq.jobs(), "insert_requests": bq.insert_requests(), "token_requests": bq.token_requests()}),
    )
}

async fn add_rule(State(bq): State<BigQuery>, axum::Json(rule): axum::Json<OutcomeRule>) -> Response<Body> {
    bq.add_rule(rule);
    json_response(StatusCode::OK, &json!({}))
}

async fn force_state(
    State(bq): State<BigQuery>,
    Path((project, job_id)): Path<(String, String)>,
    axum::Json(forced): axum::Json<ForcedState>,
) -> Response<Body> {
    if bq.force(&project, &job_id, forced) {
        json_response(StatusCode::OK, &json!({}))
    } else {
        not_found(&project, None, &job_id)
    }
}

async fn add_fault(
    State(bq): State<BigQuery>,
    axum::Json(rule): axum::Json<crate::faults::FaultRule>,
) -> Response<Body> {
    bq.faults.push(rule);
    json_response(StatusCode::OK, &json!({}))
}

async fn clear_faults(State(bq): State<BigQuery>) -> Response<Body> {
    bq.faults.clear();
    json_response(StatusCode::OK, &json!({}))
}

crate::http::serving!(BigQuery);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_skip_strings_and_system_variables() {
        let sql = "SELECT @a, '@not', `@nor`, @@project_id, @b_2 FROM t WHERE x = @a";
        assert_eq!(named_parameters(sql), ["a", "b_2"]);
    }

    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use axum::http::HeaderMap;

    /// A service-account key file as Google issues them, for a fresh key.
    fn key_file(email: &str, key: &KeyPair) -> String {
        let der: Pkcs8V1Der<'static> = key.as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        json!({"type": "service_account", "project_id": "p", "private_key_id": "k1", "private_key": pem,
               "client_email": email, "token_uri": "http://127.0.0.1:1/token"})
        .to_string()
    }

    /// The JWT-bearer assertion google-auth makes for a key: iss, aud, scope, iat, exp.
    fn assertion(email: &str, key: &KeyPair, aud: &str, scope: &str, lifetime: u64) -> String {
        let now = now_ms() / 1000;
        let claims = json!({"iss": email, "aud": aud, "scope": scope, "iat": now, "exp": now + lifetime});
        crate::signed_jwt(key, &json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}), &claims)
    }

    fn host_header() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:9050".parse().unwrap());
        h
    }

    async fn exchange(bq: &BigQuery, form: &[(&str, &str)]) -> (StatusCode, Json) {
        let body = serde_urlencoded::to_string(form).unwrap();
        let r = token(State(bq.clone()), host_header(), body.into()).await;
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn insert(bq: &BigQuery, bearer: Option<&str>) -> StatusCode {
        let mut h = HeaderMap::new();
        if let Some(t) = bearer {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let body = json!({"configuration": {"query": {"query": "SELECT 1"}}}).to_string();
        insert_job(State(bq.clone()), Path("p".into()), h, body.into()).await.status()
    }

    /// A service account's signed assertion buys an access token; jobs record the account
    /// of the token that created them, anonymous requests still work, and assertions that
    /// are forged, for another audience, unscoped or long-lived are refused.
    #[tokio::test]
    async fn service_account_tokens_and_the_account_each_job_ran_as() {
        let (tenant, pod, stranger) = (
            KeyPair::generate(KeySize::Rsa2048).unwrap(),
            KeyPair::generate(KeySize::Rsa2048).unwrap(),
            KeyPair::generate(KeySize::Rsa2048).unwrap(),
        );
        let (t_email, p_email) = ("tenant@p.iam.gserviceaccount.com", "pod@p.iam.gserviceaccount.com");
        let bq = BigQuery::default()
            .with_service_account(&key_file(t_email, &tenant))
            .unwrap()
            .with_service_account(&key_file(p_email, &pod))
            .unwrap();
        let aud = "http://127.0.0.1:9050/token";
        let scope = "https://www.googleapis.com/auth/cloud-platform";
        let grant = |a: &str| [("grant_type", JWT_BEARER), ("assertion", a)].map(|(k, v)| (k, v.to_owned()));
        let mut issued = Vec::new();
        for (email, key) in [(t_email, &tenant), (p_email, &pod)] {
            let a = assertion(email, key, aud, scope, 3600);
            let form = grant(&a);
            let (status, body) = exchange(&bq, &form.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!((body["token_type"].as_str(), body["expires_in"].as_u64()), (Some("Bearer"), Some(3600)));
            issued.push(body["access_token"].as_str().unwrap().to_owned());
        }
        // google-auth's audience is Google's endpoint, whatever the key's token_uri.
        let a = assertion(t_email, &tenant, GOOGLE_TOKEN_URL, scope, 600);
        let form = grant(&a);
        let (status, _) = exchange(&bq, &form.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(insert(&bq, Some(&issued[0])).await, StatusCode::OK);
        assert_eq!(insert(&bq, Some(&issued[1])).await, StatusCode::OK);
        assert_eq!(insert(&bq, None).await, StatusCode::OK);
        assert_eq!(insert(&bq, Some("ya29.made-up")).await, StatusCode::UNAUTHORIZED);
        let mut ran_as: Vec<_> = bq.jobs().into_iter().map(|j| j.service_account).collect();
        ran_as.sort();
        assert_eq!(ran_as, [None, Some(p_email.to_owned()), Some(t_email.to_owned())]);
        assert!(bq.jobs().iter().all(|j| j.user_agent.is_empty()), "no User-Agent was sent");

        let refused = [
            (assertion(t_email, &stranger, aud, scope, 3600), "Invalid JWT Signature"),
            (assertion("nobody@p.iam.gserviceaccount.com", &tenant, aud, scope, 3600), "no such service account"),
            (assertion(t_email, &tenant, "https://example.com/token", scope, 3600), "aud must be"),
            (assertion(t_email, &tenant, aud, "", 3600), "scope is missing"),
            (assertion(t_email, &tenant, aud, scope, 7200), "short-lived"),
        ];
        for (a, why) in refused {
            let form = grant(&a);
            let (status, body) = exchange(&bq, &form.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
            assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{why}");
            assert!(body["error_description"].as_str().unwrap().contains(why), "{body} lacks {why}");
        }
        let (status, body) = exchange(&bq, &[("grant_type", "client_credentials")]).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_grant_type")));
    }

    #[test]
    fn a_key_file_needs_an_email_and_an_rsa_private_key() {
        let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let mut file: Json = serde_json::from_str(&key_file("a@p.iam.gserviceaccount.com", &key)).unwrap();
        assert!(BigQuery::default().with_service_account(&file.to_string()).is_ok());
        file["private_key"] = json!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(BigQuery::default().with_service_account(&file.to_string()).unwrap_err().contains("private_key"));
        let err = BigQuery::default().with_service_account(r#"{"private_key": "x"}"#).unwrap_err();
        assert!(err.contains("client_email"), "{err}");
    }
}
