//! Serving an emulator's routes with faults applied in front of them. hyper is driven
//! per connection (not through `axum::serve`) so that a fault can drop the connection
//! without an answer, as a crashing load balancer would.

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

/// Formats an error body in the emulated service's own shape.
pub(crate) type ErrorBody = fn(StatusCode, &str) -> serde_json::Value;

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
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

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

pub(crate) fn serve(
    listener: TcpListener,
    router: Router,
    faults: Faults,
    error_body: ErrorBody,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Running {
    let addr = listener.local_addr().expect("a bound listener has an address");
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
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            let faults = faults.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    handle(req, router.clone(), faults.clone(), error_body)
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
    Running { addr, shutdown: Some(tx), task }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    router: Router,
    faults: Faults,
    error_body: ErrorBody,
) -> Result<Response<Body>, std::io::Error> {
    match faults.take(req.method().as_str(), req.uri().path()) {
        Some(FaultAction::Drop) => {
            // Returning an error makes hyper close the connection with no response.
            return Err(std::io::Error::other("fault injected: connection dropped"));
        }
        Some(FaultAction::Status { code, retry_after_secs }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = error_body(status, &format!("fault injected: HTTP {code}"));
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
        Some(FaultAction::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(FaultAction::DropResponse) => {
            let _processed = router.oneshot(req.map(Body::new)).await;
            return Err(std::io::Error::other("fault injected: response dropped after processing"));
        }
        None => {}
    }
    let resp = router.oneshot(req.map(Body::new)).await;
    Ok(resp.unwrap_or_else(|e: Infallible| match e {}))
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    resp
}
