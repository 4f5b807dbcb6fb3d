//! A Snowflake SQL API v2 emulator: `POST /api/v2/statements` (async, with `requestId`
//! deduplication and positional bindings), `GET /api/v2/statements/{handle}` and
//! `POST /api/v2/statements/{handle}/cancel`, with key-pair JWT authentication verified
//! against configured public keys as Snowflake verifies it (issuer fingerprint, subject,
//! expiry, RS256 signature).
//!
//! Control endpoints: `GET /_emulator/snowflake/statements`, `POST /_emulator/snowflake/rules`
//! ([`StatementRule`]), `POST|DELETE /_emulator/faults`.

// Helpers return ready-made HTTP error responses; their size is irrelevant in an emulator.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::faults::Faults;
use crate::http::{Running, json_response};

/// A user's registered public key.
#[derive(Debug, Clone)]
struct UserKey {
    fingerprint: String,
    pkcs1: Vec<u8>,
}

/// Users and how statements behave.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `ACCOUNT.USER` (upper case) → public key (SPKI PEM), as `ALTER USER … SET RSA_PUBLIC_KEY`.
    pub users: HashMap<String, String>,
    /// Time a statement runs.
    pub running: Duration,
}

/// Steers statements containing `statement_contains`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementRule {
    /// Substring of the SQL.
    pub statement_contains: String,
    /// The statement fails with this Snowflake error code and message (HTTP 422).
    #[serde(default)]
    pub error: Option<(String, String, String)>,
    /// Overrides the running time.
    #[serde(default)]
    pub running_ms: Option<u64>,
}

/// What the emulator knows of a statement, for tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementSummary {
    /// Statement handle.
    pub handle: String,
    /// The request body (statement, bindings, database…).
    pub request: Json,
    /// The `requestId` it was submitted with.
    pub request_id: Option<String>,
    /// Whether a cancel was requested.
    pub cancelled: bool,
}

#[derive(Debug)]
struct Statement {
    handle: String,
    request: Json,
    request_id: Option<String>,
    created: Instant,
    created_ms: u64,
    running: Duration,
    error: Option<(String, String, String)>,
    cancelled: bool,
}

#[derive(Debug, Default)]
struct St {
    statements: BTreeMap<String, Statement>,
    by_request_id: HashMap<String, String>,
    rules: Vec<StatementRule>,
    submit_requests: u64,
}

/// The emulator; clone handles share state.
#[derive(Debug, Clone)]
pub struct Snowflake {
    state: Arc<Mutex<St>>,
    faults: Faults,
    users: Arc<HashMap<String, UserKey>>,
    running: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Snowflake's SQL API error body.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Json {
    let code = match status.as_u16() {
        401 => "390144",
        404 => "000709",
        429 => "000610",
        _ => "000600",
    };
    json!({"code": code, "message": message, "sqlState": "", "statementHandle": ""})
}

/// For echo faults: the SQL API has no success answer carrying free text an agent passes
/// on (a 422, in the error format, is how a statement's failure message comes back).
pub(crate) fn echo_body(_path: &str, _text: &str) -> Option<Json> {
    None
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &error_body(status, message))
}

impl Snowflake {
    /// An emulator for these users. Fails on a public key that does not parse.
    pub fn new(settings: Settings) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (name, pem) in settings.users {
            let (_, doc) = pkcs8::Document::from_pem(pem.trim()).map_err(|e| format!("public key of {name}: {e}"))?;
            let spki = pkcs8::spki::SubjectPublicKeyInfoRef::try_from(doc.as_bytes())
                .map_err(|e| format!("public key of {name}: {e}"))?;
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, doc.as_bytes());
            let fingerprint = format!("SHA256:{}", STANDARD.encode(digest.as_ref()));
            let pkcs1 = spki.subject_public_key.raw_bytes().to_vec();
            users.insert(name.to_uppercase(), UserKey { fingerprint, pkcs1 });
        }
        Ok(Self { state: Arc::default(), faults: Faults::default(), users: Arc::new(users), running: settings.running })
    }

    /// Serves plain HTTP on `addr` (agents reach it through `SNOWFLAKE_BASE_URL`).
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(crate::http::serve(
            listener,
            self.router(),
            self.faults.clone(),
            crate::http::Formats { error: error_body, echo: echo_body },
            None,
        ))
    }

    /// The fault rules.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Adds a statement rule.
    pub fn add_rule(&self, rule: StatementRule) {
        self.lock().rules.push(rule);
    }

    /// Every statement.
    pub fn statements(&self) -> Vec<StatementSummary> {
        self.lock()
            .statements
            .values()
            .map(|s| StatementSummary {
                handle: s.handle.clone(),
                request: s.request.clone(),
                request_id: s.request_id.clone(),
                cancelled: s.cancelled,
            })
            .collect()
    }

    /// `POST /api/v2/statements` requests seen.
    pub fn submit_requests(&self) -> u64 {
        self.lock().submit_requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks the key-pair JWT as Snowflake does.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Response<Body>> {
        let deny = |m: &str| error(StatusCode::UNAUTHORIZED, &format!("JWT token is invalid: {m}"));
        if headers.get("x-snowflake-authorization-token-type").and_then(|v| v.to_str().ok()) != Some("KEYPAIR_JWT") {
            return Err(deny("X-Snowflake-Authorization-Token-Type must be KEYPAIR_JWT"));
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| deny("missing bearer token"))?;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(deny("not a JWT"));
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| serde_json::from_slice::<Json>(&b).ok());
        let header = decode(h).ok_or_else(|| deny("bad header"))?;
        let claims = decode(c).ok_or_else(|| deny("bad claims"))?;
        if header.get("alg").and_then(Json::as_str) != Some("RS256") {
            return Err(deny("alg must be RS256"));
        }
        let sub = claims.get("sub").and_then(Json::as_str).unwrap_or_default();
        let iss = claims.get("iss").and_then(Json::as_str).unwrap_or_default();
        let key = self.users.get(sub).ok_or_else(|| deny(&format!("unknown user {sub}")))?;
        if iss != format!("{sub}.{}", key.fingerprint) {
            return Err(deny("issuer does not match the user's public key fingerprint"));
        }
        let now = now_ms() / 1000;
        let exp = claims.get("exp").and_then(Json::as_u64).unwrap_or(0);
        let iat = claims.get("iat").and_then(Json::as_u64).unwrap_or(0);
        if exp <= now || exp.saturating_sub(iat) > 3600 || iat > now + 60 {
            return Err(deny("expired, or valid for more than an hour"));
        }
        let signature = URL_SAFE_NO_PAD.decode(sig).map_err(|_| deny("bad signature encoding"))?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key.pkcs1)
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| deny("signature does not verify"))
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/api/v2/statements", post(submit))
            .route("/api/v2/statements/{handle}", get(status))
            .route("/api/v2/statements/{handle}/cancel", post(cancel))
            .route("/_emulator/snowflake/statements", get(list))
            .route("/_emulator/snowflake/rules", post(add_rule))
            .route("/_emulator/faults", post(add_fault).delete(clear_faults))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found") })
            .with_state(self.clone())
    }
}

/// Number of `?` placeholders outside quoted strings.
fn placeholders(sql: &str) -> usize {
    let mut quote = None;
    sql.chars()
        .filter(|c| {
            match (quote, *c) {
                (Some(q), c) if c == q => quote = None,
                (None, '\'' | '"') => quote = Some(*c),
                (None, '?') => return true,
                _ => {}
            }
            false
        })
        .count()
}

fn statement_json(s: &Statement, now: Instant) -> (StatusCode, Json) {
    let url = format!("/api/v2/statements/{}", s.handle);
    if s.cancelled {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"code": "000604", "message": "SQL execution canceled", "sqlState": "57014", "statementHandle": s.handle, "statementStatusUrl": url}),
        );
    }
    if now.saturating_duration_since(s.created) < s.running {
        return (
            StatusCode::ACCEPTED,
            json!({"code": "333334", "message": "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.",
                   "statementHandle": s.handle, "statementStatusUrl": url}),
        );
    }
    if let Some((code, sql_state, message)) = &s.error {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"code": code, "message": message, "sqlState": sql_state, "statementHandle": s.handle, "statementStatusUrl": url}),
        );
    }
    (
        StatusCode::OK,
        json!({
            "resultSetMetaData": {"numRows": 1, "format": "jsonv2", "rowType": [{"name": "1", "type": "fixed", "nullable": false}], "partitionInfo": [{"rowCount": 1}]},
            "data": [["1"]],
            "code": "090001",
            "statementStatusUrl": url,
            "requestId": s.request_id,
            "sqlState": "00000",
            "statementHandle": s.handle,
            "message": "Statement executed successfully.",
            "createdOn": s.created_ms,
        }),
    )
}

#[derive(Debug, Deserialize)]
struct SubmitQuery {
    #[serde(rename = "requestId")]
    request_id: Option<String>,
    #[serde(default)]
    r#async: Option<bool>,
}

async fn submit(
    State(sf): State<Snowflake>,
    headers: HeaderMap,
    Query(q): Query<SubmitQuery>,
    body: Bytes,
) -> Response<Body> {
    if let Err(r) = sf.authenticate(&headers) {
        return r;
    }
    sf.lock().submit_requests += 1;
    let Ok(request) = serde_json::from_slice::<Json>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Unable to parse the request body as JSON");
    };
    let Some(sql) = request.get("statement").and_then(Json::as_str).map(str::to_owned) else {
        return error(StatusCode::BAD_REQUEST, "statement is required");
    };
    let mut st = sf.lock();
    if let Some(id) = &q.request_id
        && let Some(handle) = st.by_request_id.get(id).cloned()
    {
        // The same request again: Snowflake answers for the statement it already runs.
        let (status, body) = statement_json(&st.statements[&handle], Instant::now());
        return json_response(if status == StatusCode::OK { status } else { StatusCode::ACCEPTED.max(status) }, &body);
    }
    let bindings = request.get("bindings").and_then(Json::as_object).map_or(0, serde_json::Map::len);
    let mut err = None;
    if bindings != placeholders(&sql) {
        err = Some((
            "002049".into(),
            "07002".into(),
            format!(
                "SQL compilation error: bind variable count mismatch: {} placeholders, {bindings} bindings",
                placeholders(&sql)
            ),
        ));
    }
    let rule = st.rules.iter().find(|r| sql.contains(&r.statement_contains)).cloned();
    let running = rule.as_ref().and_then(|r| r.running_ms).map_or(sf.running, Duration::from_millis);
    if err.is_none() {
        err = rule.and_then(|r| r.error);
    }
    let handle = uuid::Uuid::new_v4().to_string();
    let stmt = Statement {
        handle: handle.clone(),
        request,
        request_id: q.request_id.clone(),
        created: Instant::now(),
        created_ms: now_ms(),
        running: if q.r#async == Some(true) { running } else { Duration::ZERO },
        error: err,
        cancelled: false,
    };
    let (status, body) = statement_json(&stmt, Instant::now());
    if let Some(id) = q.request_id {
        st.by_request_id.insert(id, handle.clone());
    }
    st.statements.insert(handle, stmt);
    json_response(status, &body)
}

async fn status(State(sf): State<Snowflake>, headers: HeaderMap, Path(handle): Path<String>) -> Response<Body> {
    if let Err(r) = sf.authenticate(&headers) {
        return r;
    }
    let st = sf.lock();
    match st.statements.get(&handle) {
        Some(s) => {
            let (status, body) = statement_json(s, Instant::now());
            json_response(status, &body)
        }
        None => error(StatusCode::NOT_FOUND, &format!("Statement {handle} not found")),
    }
}

async fn cancel(State(sf): State<Snowflake>, headers: HeaderMap, Path(handle): Path<String>) -> Response<Body> {
    if let Err(r) = sf.authenticate(&headers) {
        return r;
    }
    let mut st = sf.lock();
    let now = Instant::now();
    match st.statements.get_mut(&handle) {
        Some(s) => {
            // Cancelling a finished statement is accepted and changes nothing.
            if statement_json(s, now).0 == StatusCode::ACCEPTED {
                s.cancelled = true;
            }
            json_response(
                StatusCode::OK,
                &json!({"code": "000000", "message": "successfully canceled", "statementHandle": handle}),
            )
        }
        None => error(StatusCode::NOT_FOUND, &format!("Statement {handle} not found")),
    }
}

async fn list(State(sf): State<Snowflake>) -> Response<Body> {
    json_response(StatusCode::OK, &json!({"statements": sf.statements(), "submit_requests": sf.submit_requests()}))
}

async fn add_rule(State(sf): State<Snowflake>, axum::Json(rule): axum::Json<StatementRule>) -> Response<Body> {
    sf.add_rule(rule);
    json_response(StatusCode::OK, &json!({}))
}

async fn add_fault(
    State(sf): State<Snowflake>,
    axum::Json(rule): axum::Json<crate::faults::FaultRule>,
) -> Response<Body> {
    sf.faults.push(rule);
    json_response(StatusCode::OK, &json!({}))
}

async fn clear_faults(State(sf): State<Snowflake>) -> Response<Body> {
    sf.faults.clear();
    json_response(StatusCode::OK, &json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_quotes_are_counted() {
        assert_eq!(placeholders("select ? , '?' , \"?\" , ?"), 2);
    }
}
