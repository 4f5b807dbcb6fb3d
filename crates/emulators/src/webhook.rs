//! A webhook receiver: answers any request with 200 and remembers it, so tests, the demo
//! and the benchmark can see what a webhook task sent, and the Python connector's request
//! can be compared with the agent's. `/status/CODE` answers that status instead.
//!
//! Control routes: `GET /_emulator/webhook/requests` lists what was received (method,
//! path, query, headers, body), oldest first; `DELETE` forgets it.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::faults::Faults;
use crate::shaping::Shaping;

/// Requests remembered at most; older ones are dropped (a benchmark sends millions).
const KEPT: usize = 1000;

/// Largest body remembered.
const MAX_BODY: usize = 1024 * 1024;

/// One request the receiver got.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// `GET`, `POST`…
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string, as sent.
    pub query: String,
    /// Headers, lower-case names; repeated ones joined by `, `.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body, as text.
    pub body: String,
}

/// The receiver.
#[derive(Clone, Default, Debug)]
pub struct Receiver {
    received: Arc<Mutex<std::collections::VecDeque<Received>>>,
    faults: Faults,
    shaping: Shaping,
}

impl Receiver {
    /// A receiver that has received nothing.
    pub fn new() -> Self {
        Self::default()
    }

    fn service(&self) -> crate::http::Service {
        crate::http::Service {
            router: self.router(),
            faults: self.faults.clone(),
            shaping: self.shaping.clone(),
            formats: crate::http::Formats { error: error_body, echo: |_, text| Some(json!({"echo": text})) },
        }
    }

    /// What was received, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    /// The fault rules.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Latency, rate limit and counters.
    pub fn shaping(&self) -> &Shaping {
        &self.shaping
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/_emulator/webhook/requests", get(list).delete(forget))
            .route("/status/{code}", axum::routing::any(status))
            .fallback(receive)
            .with_state(self.clone())
    }

    fn remember(&self, r: Received) {
        let mut kept = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(r);
    }
}

fn error_body(status: StatusCode, message: &str) -> Json {
    json!({"error": message, "status": status.as_u16()})
}

fn record(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Received {
    let mut joined = std::collections::BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        joined.entry(name.as_str().to_owned()).and_modify(|v| *v = format!("{v}, {value}")).or_insert(value);
    }
    Received {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        headers: joined,
        body: String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)]).into_owned(),
    }
}

async fn receive(
    State(r): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    r.remember(record(&method, &uri, &headers, &body));
    "received"
}

async fn status(
    State(r): State<Receiver>,
    Path(code): Path<u16>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    r.remember(record(&method, &uri, &headers, &body));
    (StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST), format!("status {code}"))
}

async fn list(State(r): State<Receiver>) -> impl IntoResponse {
    axum::Json(r.received())
}

async fn forget(State(r): State<Receiver>) -> impl IntoResponse {
    r.received.lock().unwrap_or_else(PoisonError::into_inner).clear();
    StatusCode::NO_CONTENT
}

crate::http::serving!(Receiver);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_answered_and_remembered_and_status_paths_answer_their_code() {
        let rx = Receiver::new();
        let running = rx.start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{}/hook/1?a=b", running.url()))
            .header("X-Test", "1")
            .body("{\"k\": 1}")
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.text().await.unwrap().as_str()), (200, "received"));
        let r = http.get(format!("{}/status/503", running.url())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        let got = rx.received();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].method.as_str(), got[0].path.as_str(), got[0].query.as_str()), ("POST", "/hook/1", "a=b"));
        assert_eq!((got[0].headers["x-test"].as_str(), got[0].body.as_str()), ("1", "{\"k\": 1}"));
        let listed: Json = http
            .get(format!("{}/_emulator/webhook/requests", running.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 2);
        http.delete(format!("{}/_emulator/webhook/requests", running.url())).send().await.unwrap();
        assert!(rx.received().is_empty());
    }
}
