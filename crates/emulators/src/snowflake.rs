//! A Snowflake SQL API v2 emulator: `POST /api/v2/statements` (async, with `requestId`
//! deduplication and positional bindings), `GET /api/v2/statements/{handle}` and
//! `POST /api/v2/statements/{handle}/cancel`, with key-pair JWT authentication verified
//! against configured public keys as Snowflake verifies it (issuer fingerprint, subject,
//! expiry, RS256 signature). A user may have two keys (Snowflake's `RSA_PUBLIC_KEY` and
//! `RSA_PUBLIC_KEY_2`); each statement records which user and key fingerprint signed it.
//!
//! Control endpoints: `GET /_emulator/snowflake/statements`, `POST /_emulator/snowflake/rules`
//! ([`StatementRule`]), `POST|DELETE /_emulator/faults`, and the shared `GET /_emulator/stats`
//! and `GET|PUT /_emulator/shaping` (see [`crate::shaping`]).

// Helpers return ready-made HTTP error responses; their size is irrelevant in an emulator.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
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
use crate::http::json_response;
use crate::shaping::Shaping;

/// A user's registered public key.
#[derive(Debug, Clone)]
struct UserKey {
    fingerprint: String,
    pkcs1: Vec<u8>,
}

/// Users and how statements behave.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `ACCOUNT.USER` (upper case) → public key (SPKI PEM), as `ALTER USER … SET RSA_PUBLIC_KEY`;
    /// two PEM blocks one after the other register a second key (`RSA_PUBLIC_KEY_2`).
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
    /// Who submitted it: the JWT's user and the fingerprint of the key that verified it.
    pub auth: Authenticated,
}

/// The identity a key-pair JWT proved: which user, with which of its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticated {
    /// `ACCOUNT.USER`, as the JWT's subject names it.
    pub user: String,
    /// `SHA256:<base64>` of the public key that verified the signature.
    pub fingerprint: String,
}

#[derive(Debug)]
struct Statement {
    handle: String,
    auth: Authenticated,
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
    shaping: Shaping,
    users: Arc<HashMap<String, Vec<UserKey>>>,
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
        for (name, pems) in settings.users {
            let blocks = pem_blocks(&pems);
            if blocks.is_empty() || blocks.len() > 2 {
                return Err(format!("{name} needs one or two public keys (PEM), found {}", blocks.len()));
            }
            let mut keys = Vec::new();
            for pem in blocks {
                let (_, doc) = pkcs8::Document::from_pem(pem).map_err(|e| format!("public key of {name}: {e}"))?;
                let spki = pkcs8::spki::SubjectPublicKeyInfoRef::try_from(doc.as_bytes())
                    .map_err(|e| format!("public key of {name}: {e}"))?;
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, doc.as_bytes());
                let fingerprint = format!("SHA256:{}", STANDARD.encode(digest.as_ref()));
                let pkcs1 = spki.subject_public_key.raw_bytes().to_vec();
                keys.push(UserKey { fingerprint, pkcs1 });
            }
            users.insert(name.to_uppercase(), keys);
        }
        Ok(Self {
            state: Arc::default(),
            faults: Faults::default(),
            shaping: Shaping::default(),
            users: Arc::new(users),
            running: settings.running,
        })
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
                auth: s.auth.clone(),
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

    /// Checks the key-pair JWT as Snowflake does; who it proved.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, Response<Body>> {
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
        let keys = self.users.get(sub).ok_or_else(|| deny(&format!("unknown user {sub}")))?;
        let key = keys
            .iter()
            .find(|k| iss == format!("{sub}.{}", k.fingerprint))
            .ok_or_else(|| deny("issuer does not match the user's public key fingerprint"))?;
        let now = now_ms() / 1000;
        let exp = claims.get("exp").and_then(Json::as_u64).unwrap_or(0);
        let iat = claims.get("iat").and_then(Json::as_u64).unwrap_or(0);
        if exp <= now || exp.saturating_sub(iat) > 3600 || iat > now + 60 {
            return Err(deny("expired, or valid for more than an hour"));
        }
        let signature = URL_SAFE_NO_PAD.decode(sig).map_err(|_| deny("bad signature encoding"))?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key.pkcs1)
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| deny("signature does not verify"))?;
        Ok(Authenticated { user: sub.to_owned(), fingerprint: key.fingerprint.clone() })
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

/// The PEM blocks of `text`, in order.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start..];
        let Some(end) = after.find("-----END ") else { break };
        let close = after[end + 9..].find("-----").map_or(after.len(), |k| end + 9 + k + 5);
        blocks.push(after[..close].trim());
        rest = &after[close..];
    }
    blocks
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
    let auth = match sf.authenticate(&headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
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
        auth,
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

crate::http::serving!(Snowflake);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_quotes_are_counted() {
        assert_eq!(placeholders("select ? , '?' , \"?\" , ?"), 2);
    }

    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;

    fn spki_pem(key: &KeyPair) -> String {
        let der: PublicKeyX509Der<'static> = key.public_key().as_der().unwrap();
        let b64 = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    fn fingerprint(key: &KeyPair) -> String {
        let der: PublicKeyX509Der<'static> = key.public_key().as_der().unwrap();
        format!("SHA256:{}", STANDARD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref())))
    }

    /// A key-pair JWT as Snowflake's clients make it, with the given issuer fingerprint.
    fn jwt_headers(user: &str, key: &KeyPair, claimed: &str) -> HeaderMap {
        let now = now_ms() / 1000;
        let claims = json!({"iss": format!("{user}.{claimed}"), "sub": user, "iat": now, "exp": now + 600});
        let token = crate::signed_jwt(key, &json!({"alg": "RS256", "typ": "JWT"}), &claims);
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h.insert("x-snowflake-authorization-token-type", "KEYPAIR_JWT".parse().unwrap());
        h
    }

    /// A user with two keys and another user: each statement records who signed it and
    /// with which key; a key registered for nobody, or claimed for the wrong user, is refused.
    #[tokio::test]
    async fn statements_record_the_user_and_key_that_signed_them() {
        let (tenant, tenant2, pod, stranger) = (
            KeyPair::generate(KeySize::Rsa2048).unwrap(),
            KeyPair::generate(KeySize::Rsa2048).unwrap(),
            KeyPair::generate(KeySize::Rsa2048).unwrap(),
            KeyPair::generate(KeySize::Rsa2048).unwrap(),
        );
        let users = HashMap::from([
            ("ACC.TENANT".to_owned(), format!("{}{}", spki_pem(&tenant), spki_pem(&tenant2))),
            ("ACC.POD".to_owned(), spki_pem(&pod)),
        ]);
        let sf = Snowflake::new(Settings { users, running: Duration::ZERO }).unwrap();
        let body = Bytes::from_static(
            br#"{"statement": "select ?", "bindings": {"1": {"type": "FIXED", "value": "1"}}, "role": "R"}"#,
        );
        let submit_as = |user: &str, key: &KeyPair, claimed: &KeyPair| {
            submit(
                State(sf.clone()),
                jwt_headers(user, key, &fingerprint(claimed)),
                Query(SubmitQuery { request_id: None, r#async: None }),
                body.clone(),
            )
        };
        assert_eq!(submit_as("ACC.TENANT", &tenant2, &tenant2).await.status(), StatusCode::OK);
        assert_eq!(submit_as("ACC.POD", &pod, &pod).await.status(), StatusCode::OK);
        assert_eq!(submit_as("ACC.TENANT", &tenant, &tenant).await.status(), StatusCode::OK);
        // The pod's key is not the tenant's, and a stranger's key, even claimed as the
        // tenant's fingerprint, does not verify.
        assert_eq!(submit_as("ACC.TENANT", &pod, &pod).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(submit_as("ACC.TENANT", &stranger, &tenant).await.status(), StatusCode::UNAUTHORIZED);
        let mut seen: Vec<_> = sf.statements().into_iter().map(|s| (s.auth.user, s.auth.fingerprint)).collect();
        seen.sort();
        let mut want = vec![
            ("ACC.POD".to_owned(), fingerprint(&pod)),
            ("ACC.TENANT".to_owned(), fingerprint(&tenant)),
            ("ACC.TENANT".to_owned(), fingerprint(&tenant2)),
        ];
        want.sort();
        assert_eq!(seen, want);
        assert!(sf.statements().iter().all(|s| s.request["role"] == "R" && s.request["bindings"]["1"]["value"] == "1"));
    }

    #[test]
    fn a_user_takes_one_or_two_keys() {
        let key = spki_pem(&KeyPair::generate(KeySize::Rsa2048).unwrap());
        let settings =
            |pems: String| Settings { users: HashMap::from([("A.U".to_owned(), pems)]), running: Duration::ZERO };
        assert!(Snowflake::new(settings(key.clone())).is_ok());
        let err = Snowflake::new(settings(key.repeat(3))).unwrap_err();
        assert!(err.contains("one or two public keys") && err.contains("found 3"), "{err}");
        assert!(Snowflake::new(settings(String::new())).is_err());
    }
}
