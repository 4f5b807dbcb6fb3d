//! A server span and the in-flight gauge for every gRPC call except health checks (a
//! tower layer, [`layer`]).
//!
//! The span follows OpenTelemetry's RPC conventions: kind SERVER, `rpc.system`,
//! `rpc.service`, `rpc.method`, and `rpc.grpc.status_code` once the answer's status is
//! known. That status is in the trailers of a normal answer and in the headers of a
//! trailers-only one (an error before any message), so the response body is watched for
//! its trailers and the span ends when the body does.
//!
//! Health checks are left out: the kubelet asks every few seconds per pod, and their spans
//! would bury the calls that matter.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::http;

use crate::telemetry::{self, InFlight};

/// The layer; see the module docs.
pub(crate) fn layer<S>() -> impl tower::Layer<S, Service = Traced<S>> + Clone {
    tower::layer::layer_fn(|inner| Traced { inner })
}

/// See [`layer`].
#[derive(Debug, Clone)]
pub(crate) struct Traced<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Box::pin(self.inner.call(req));
        }
        let span = telemetry::server_span(&req);
        let in_flight = InFlight::enter();
        let call = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(async move {
            let answer = tracing::Instrument::instrument(call, span.clone()).await?;
            if let Some(code) = status_in(answer.headers()) {
                telemetry::record_grpc_status(&span, code);
                return Ok(answer);
            }
            Ok(answer.map(|body| Body::new(Watched { body, span: Some(span), _in_flight: in_flight })))
        })
    }
}

/// The `grpc-status` a header block carries.
fn status_in(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A response body that records the call's status from its trailers; the span (and the
/// call's place in the in-flight gauge) lasts until the body is done or dropped.
struct Watched {
    body: Body,
    span: Option<tracing::Span>,
    _in_flight: InFlight,
}

impl http_body::Body for Watched {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(code), Some(span)) = (f.trailers_ref().and_then(status_in), this.span.as_ref()) {
                    telemetry::record_grpc_status(span, code);
                    this.span = None;
                }
            }
            // The connection failed mid-answer: the client saw no status.
            Some(Err(_)) => {
                if let Some(span) = this.span.take() {
                    telemetry::record_grpc_status(&span, tonic::Code::Unknown as i32);
                }
            }
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
