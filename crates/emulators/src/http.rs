//! Serving an emulator's routes with faults and shaping applied in front of them (in that
//! order; see [`crate::shaping`]), and the control routes every emulator shares
//! (`/_emulator/stats`, `/_emulator/shaping`). hyper is driven per connection (not through
//! `axum::serve`) so that a fault can drop the connection without an answer, as a crashing
//! load balancer would, and so connections can be counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::faults::{FaultAction, Faults};
use crate::shaping::{Admission, Shaping, ShapingSettings};

/// Formats an error body in the emulated service's own shape.
pub(crate) type ErrorBody = fn(StatusCode, &str) -> serde_json::Value;

/// The emulated service's successful answer to the request at this path, carrying `text`
/// where agents read the service's text (see [`FaultAction::Echo`]); `None` when the
/// emulator has no such shape for the path.
pub(crate) type EchoBody = fn(&str, &str) -> Option<serde_json::Value>;

/// The emulated service's formats, for faults.
#[derive(Clone, Copy)]
pub(crate) struct Formats {
    pub(crate) error: ErrorBody,
    pub(crate) echo: EchoBody,
}

/// Largest request body an echo repeats.
const MAX_ECHOED_BODY: usize = 64 * 1024;

/// Largest `PUT /_emulator/shaping` body.
const MAX_CONTROL_BODY: usize = 64 * 1024;

/// HTTP/2 streams a client may have open on one connection. hyper's default (200) would
/// make a benchmark client queue its calls or open more connections; this lets thousands
/// of in-flight calls multiplex over one.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 16_384;

/// What serving one emulator needs besides its listener.
#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) router: Router,
    pub(crate) faults: Faults,
    pub(crate) shaping: Shaping,
    pub(crate) formats: Formats,
}

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, the form `*_EMULATOR_HOST` variables take.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://host:port`, or `https://host:port` when served over TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Resolves when the server stops (e.g. on Ctrl-C in the binary).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `start` (plain HTTP) and `start_https` for an emulator whose `service()` gives its
/// router with its faults, shaping and formats: every emulator is served the same way.
macro_rules! serving {
    ($emulator:ty) => {
        impl $emulator {
            /// Serves plain HTTP on `addr` (port 0 for any free port).
            pub async fn start(&self, addr: std::net::SocketAddr) -> std::io::Result<crate::http::Running> {
                Ok(crate::http::serve(tokio::net::TcpListener::bind(addr).await?, self.service(), None))
            }

            /// Serves HTTPS on `addr` with a server certificate from `ca` (ALPN `h2` and
            /// `http/1.1`): clients trusting [`crate::tls::TestCa::ca_pem`] reach it at
            /// [`crate::http::Running::url`].
            pub async fn start_https(
                &self,
                addr: std::net::SocketAddr,
                ca: &crate::tls::TestCa,
            ) -> std::io::Result<crate::http::Running> {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                Ok(crate::http::serve(listener, self.service(), Some(ca.acceptor())))
            }
        }
    };
}
pub(crate) use serving;

pub(crate) fn serve(listener: TcpListener, service: Service, tls: Option<tokio_rustls::TlsAcceptor>) -> Running {
    let addr = listener.local_addr().expect("a bound listener has an address");
    let running_tls = tls.is_some();
    let (tx, mut rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                _ = &mut rx => return,
            };
            service.shaping.connection_accepted();
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| handle(req, service.clone()));
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http2().max_concurrent_streams(MAX_CONCURRENT_STREAMS);
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    Running { addr, tls: running_tls, shutdown: Some(tx), task }
}

async fn handle(req: Request<hyper::body::Incoming>, service: Service) -> Result<Response<Body>, std::io::Error> {
    let Service { router, faults, shaping, formats } = service;
    let path = req.uri().path();
    if path == "/_emulator/stats" || path == "/_emulator/shaping" {
        return Ok(control(req, &shaping, formats).await);
    }
    if !path.starts_with("/_emulator/") {
        shaping.request_seen();
    }
    match faults.take(req.method().as_str(), req.uri().path()) {
        Some(FaultAction::Drop) => {
            // Returning an error makes hyper close the connection with no response.
            return Err(std::io::Error::other("fault injected: connection dropped"));
        }
        Some(FaultAction::Status { code, retry_after_secs }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = (formats.error)(status, &format!("fault injected: HTTP {code}"));
            let mut resp = json_response(status, &body);
            if let Some(secs) = retry_after_secs {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return Ok(resp);
        }
        Some(FaultAction::Malformed) => {
            let mut resp = Response::new(Body::from("{\"kind\": \"truncated"));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok(resp);
        }
        Some(FaultAction::Echo { code }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let path = req.uri().path().to_owned();
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(Body::new(body), MAX_ECHOED_BODY).await.unwrap_or_default();
            let text = echo_text(&parts.headers, &body);
            let json = if status.is_success() { (formats.echo)(&path, &text) } else { None };
            return Ok(json_response(status, &json.unwrap_or_else(|| (formats.error)(status, &text))));
        }
        Some(FaultAction::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(FaultAction::DropResponse) => {
            let _processed = router.oneshot(req.map(Body::new)).await;
            return Err(std::io::Error::other("fault injected: response dropped after processing"));
        }
        None => {}
    }
    // Emulator-specific control routes (faults, state) are neither limited nor delayed.
    let ticket = if req.uri().path().starts_with("/_emulator/") { None } else { Some(shaping.admit()) };
    let admission = ticket.and_then(|t| t.admission);
    if let Some(a) = admission.filter(|a| !a.admitted) {
        let message = format!(
            "Rate limit reached for requests (emulated limit: bursts of {}); please try again in {}.",
            a.limit,
            crate::shaping::openai_duration(a.retry_after)
        );
        let mut resp =
            json_response(StatusCode::TOO_MANY_REQUESTS, &(formats.error)(StatusCode::TOO_MANY_REQUESTS, &message));
        let headers = resp.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(crate::shaping::retry_after_secs(a.retry_after)));
        headers.insert("retry-after-ms", HeaderValue::from(crate::shaping::retry_after_millis(a.retry_after)));
        rate_limit_headers(headers, &a);
        return Ok(resp);
    }
    if let Some(delay) = ticket.map(|t| t.delay).filter(|d| !d.is_zero()) {
        tokio::time::sleep(delay).await;
    }
    let mut resp = router.oneshot(req.map(Body::new)).await.unwrap_or_else(|e: Infallible| match e {});
    if let Some(a) = admission {
        rate_limit_headers(resp.headers_mut(), &a);
    }
    Ok(resp)
}

/// OpenAI's request rate-limit headers.
fn rate_limit_headers(headers: &mut axum::http::HeaderMap, a: &Admission) {
    headers.insert("x-ratelimit-limit-requests", HeaderValue::from(a.limit));
    headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(a.remaining));
    if let Ok(reset) = HeaderValue::from_str(&crate::shaping::openai_duration(a.reset)) {
        headers.insert("x-ratelimit-reset-requests", reset);
    }
}

fn to_json(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// `GET /_emulator/stats`, `GET|PUT /_emulator/shaping`.
async fn control(req: Request<hyper::body::Incoming>, shaping: &Shaping, formats: Formats) -> Response<Body> {
    let bad = |status: StatusCode, message: &str| json_response(status, &(formats.error)(status, message));
    let method = req.method().clone();
    match (req.uri().path(), method.as_str()) {
        ("/_emulator/stats", "GET") => json_response(StatusCode::OK, &to_json(shaping.stats())),
        ("/_emulator/shaping", "GET") => json_response(StatusCode::OK, &to_json(shaping.settings())),
        ("/_emulator/shaping", "PUT") => {
            let Ok(body) = axum::body::to_bytes(Body::new(req.into_body()), MAX_CONTROL_BODY).await else {
                return bad(StatusCode::BAD_REQUEST, "the shaping settings must be a JSON object of at most 64 KiB");
            };
            let applied = serde_json::from_slice::<ShapingSettings>(&body)
                .map_err(|e| format!("shaping settings: {e}"))
                .and_then(|settings| shaping.apply(&settings));
            match applied {
                Ok(()) => json_response(StatusCode::OK, &to_json(shaping.settings())),
                Err(e) => bad(StatusCode::BAD_REQUEST, &e),
            }
        }
        (path, _) => bad(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} takes {}", if path.ends_with("stats") { "GET" } else { "GET or PUT" }),
        ),
    }
}

/// What a careless service says back: the request's credentials and body.
fn echo_text(headers: &axum::http::HeaderMap, body: &[u8]) -> String {
    let mut text = String::from("echo of your request:");
    for (name, value) in headers {
        let n = name.as_str();
        if ["auth", "key", "token", "secret"].iter().any(|w| n.contains(w)) {
            text.push_str(&format!(" {n}: {};", String::from_utf8_lossy(value.as_bytes())));
        }
    }
    text.push_str(&format!(" body: {}", String::from_utf8_lossy(body)));
    text
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    resp
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, StatusCode};

    use super::echo_text;

    #[test]
    fn an_echo_repeats_credentials_and_body_in_each_services_format() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer sk-echoed-123"));
        headers.insert("x-api-key", HeaderValue::from_static("key-456"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let text = echo_text(&headers, b"client_secret=s3cr3t");
        assert!(
            text.contains("authorization: Bearer sk-echoed-123;") && text.contains("x-api-key: key-456;"),
            "{text}"
        );
        assert!(text.ends_with("body: client_secret=s3cr3t") && !text.contains("application/json"), "{text}");
        // Where each agent reads the service's message.
        let status = StatusCode::UNAUTHORIZED;
        assert_eq!(crate::bigquery::error_body(status, &text)["error"]["message"], text.as_str());
        assert_eq!(crate::databricks::error_body(status, &text)["message"], text.as_str());
        assert_eq!(crate::snowflake::error_body(status, &text)["message"], text.as_str());
        assert_eq!(crate::openai::error_body(status, &text)["error"]["message"], text.as_str());
        // And the 200 answers that carry service text into a result.
        let chat = crate::openai::echo_body("/v1/chat/completions", &text).unwrap();
        assert_eq!(chat["choices"][0]["message"]["content"], text.as_str());
        let batch = crate::openai::echo_body("/v1/batches/batch_1", &text).unwrap();
        assert_eq!(batch["errors"]["data"][0]["message"], text.as_str());
        let job = crate::bigquery::echo_body("/bigquery/v2/projects/p/jobs/j1", &text).unwrap();
        assert_eq!(
            (job["status"]["errorResult"]["message"].as_str(), job["jobReference"]["jobId"].as_str()),
            (Some(text.as_str()), Some("j1"))
        );
        let run = crate::databricks::echo_body("/api/2.1/jobs/runs/get", &text).unwrap();
        assert_eq!(run["state"]["state_message"], text.as_str());
        assert!(crate::databricks::echo_body("/api/2.1/jobs/runs/submit", &text).is_none());
    }
}
