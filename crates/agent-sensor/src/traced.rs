//! object_store's HTTP client with a CLIENT span per request (storage calls and the
//! credential fetches behind them), whose W3C `traceparent` goes out with the request when
//! traces are exported. The header is added after object_store signed the request: neither
//! SigV4 (S3) nor Shared Key (Azure) signs headers it was not given, so it changes no
//! signature.

use agent_core::telemetry;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};

/// Builds object_store's own reqwest client, then wraps it in [`Traced`].
#[derive(Debug, Default)]
pub(crate) struct TracedConnector;

impl HttpConnector for TracedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Traced(ReqwestConnector::default().connect(options)?)))
    }
}

/// See the module docs.
#[derive(Debug)]
struct Traced(HttpClient);

#[async_trait::async_trait]
impl HttpService for Traced {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let span = telemetry::client_span_uri(req.method().as_str(), req.uri());
        telemetry::inject(&span, req.headers_mut());
        let answer = tracing::Instrument::instrument(self.0.execute(req), span.clone()).await?;
        telemetry::record_http_status(&span, answer.status().as_u16());
        Ok(answer)
    }
}
