//! Logs (`tracing`, human or JSON), Prometheus metrics with flytekit's names, and
//! OpenTelemetry traces exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Every formatted log line is scrubbed of secret values before it is written
//! ([`Scrubbed`]); traces carry spans only, not log events, so service text reaches no
//! exporter unscrubbed; a panic is logged through the same path instead of being printed.

use std::net::SocketAddr;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, ServerConfig};

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes pending spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the trace exporter.
    pub fn shutdown(self) {
        if let Some(Err(e)) = self.tracer.map(|p| p.shutdown()) {
            tracing::warn!(message = "Could not flush traces.", error = %e);
        }
    }
}

/// Installs the global subscriber: log format and level from `config` (`RUST_LOG`, when
/// set, wins), plus an OpenTelemetry layer when an OTLP endpoint is configured.
pub fn init(config: &ServerConfig, service_name: &str) -> Result<Telemetry, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(&f).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::try_new(&config.log_level).map_err(|e| format!("log_level: {e}"))?,
    };
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(Scrubbed(std::io::stderr))
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer().with_writer(Scrubbed(std::io::stderr)).boxed(),
    };

    let endpoint_set = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    let mut telemetry = Telemetry::default();
    let otel = if endpoint_set {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("flyte-agent");
        opentelemetry::global::set_tracer_provider(provider.clone());
        telemetry.tracer = Some(provider);
        // Spans only: log events carry service text, which is scrubbed on its way to the
        // log writer but would reach the exporter as it was.
        let spans_only = tracing_subscriber::filter::filter_fn(|meta| meta.is_span());
        Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans_only))
    } else {
        None
    };
    // W3C trace context is what Propeller's and most clients' instrumentation sends.
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("could not install the log subscriber: {e}"))?;
    // The default hook prints the panic message (which may quote a credential) as it is.
    std::panic::set_hook(Box::new(|info| tracing::error!(message = "Panicked.", panic = %info)));
    Ok(telemetry)
}

/// A log writer that scrubs every formatted line of secret values (see
/// [`crate::secrets::redact`]: the pod's secrets, live derived credentials and, while an
/// agent works on a call, that call's own secrets) before handing it to `M`'s writer.
#[derive(Debug, Clone, Copy)]
pub struct Scrubbed<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Scrubbed<M> {
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter { line: Vec::new(), inner: self.0.make_writer() }
    }
}

/// Collects one formatted event and writes it, scrubbed, when dropped (the formatter drops
/// it right after writing the event, on the thread that logged it).
#[derive(Debug)]
pub struct ScrubbingWriter<W: std::io::Write> {
    line: Vec<u8>,
    inner: W,
}

impl<W: std::io::Write> std::io::Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: std::io::Write> Drop for ScrubbingWriter<W> {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let clean = crate::secrets::redact_cow(&text);
        let _ = self.inner.write_all(clean.as_bytes());
        let _ = self.inner.flush();
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one gRPC call, continuing the caller's trace when the request carries
/// W3C trace context (`traceparent`).
pub(crate) fn grpc_span<B>(req: &http::Request<B>) -> tracing::Span {
    let path = req.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        rpc.system = "grpc",
        flyte.protocol = protocol_of(path)
    );
    // Most calls (Propeller's) carry no trace context; skip the propagator for them.
    if req.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let _ = span.set_parent(parent);
    }
    span
}

/// The protocol generation a gRPC method path belongs to, for trace attributes:
/// `flyteidl` (Flyte 1 agents), `flyteidl2` (Flyte 2 connectors) or `other` (health,
/// reflection).
fn protocol_of(path: &str) -> &'static str {
    if path.starts_with("/flyteidl2.") {
        "flyteidl2"
    } else if path.starts_with("/flyteidl.") {
        "flyteidl"
    } else {
        "other"
    }
}

/// Prometheus metrics, named and labelled as flytekit's connector server names them, so
/// existing dashboards keep working.
pub mod metrics {
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};
    use std::time::Instant;

    use metrics::{Counter, Histogram, counter, describe_counter, describe_histogram, histogram};

    use crate::error::AgentError;

    /// Successful calls, by `task_type`, `operation` (`create`, `get`, `delete`, `do`) and
    /// `protocol` (`flyteidl` for Flyte 1, `flyteidl2` for Flyte 2; our addition to
    /// flytekit's labels, which queries by the other labels do not notice).
    pub const SUCCESS: &str = "flyte_connector_requests_success_total";
    /// Failed calls, by `task_type`, `operation`, `protocol` and HTTP-style `error_code`.
    pub const FAILURE: &str = "flyte_connector_requests_failure_total";
    /// Handler latency in seconds, by `task_type`, `operation` and `protocol`.
    pub const LATENCY: &str = "flyte_connector_request_latency_seconds";
    /// Size of the inputs literal map of create/execute calls, by `task_type`.
    pub const INPUT_BYTES: &str = "flyte_connector_input_literal_bytes";

    /// The `task_type` label for categories this binary does not serve: a label per
    /// requested name would let any caller create unbounded metric series.
    pub const UNKNOWN_TASK_TYPE: &str = "unknown";

    /// Registered handles, so the hot path does not hash labels into the recorder's
    /// registry on every call (that cost ~15% of GetTask throughput). Keyed by task type,
    /// then operation and protocol; bounded by the categories the binary serves.
    struct Handles {
        success: Counter,
        latency: Histogram,
    }
    type Cache = HashMap<String, HashMap<(&'static str, &'static str), Arc<Handles>>>;
    static CACHE: RwLock<Option<Cache>> = RwLock::new(None);

    fn handles(task_type: &str, operation: &'static str, protocol: &'static str) -> Arc<Handles> {
        let key = (operation, protocol);
        let cached = CACHE.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = cached.as_ref().and_then(|c| c.get(task_type)).and_then(|ops| ops.get(&key)) {
            return h.clone();
        }
        drop(cached);
        let labels = [
            ("task_type", task_type.to_owned()),
            ("operation", operation.to_owned()),
            ("protocol", protocol.to_owned()),
        ];
        let h = Arc::new(Handles { success: counter!(SUCCESS, &labels), latency: histogram!(LATENCY, &labels) });
        let mut cache = CACHE.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get_or_insert_with(HashMap::new).entry(task_type.to_owned()).or_default().insert(key, h.clone());
        h
    }

    /// Forgets cached handles: those taken before a recorder was installed are no-ops.
    pub(crate) fn reset() {
        *CACHE.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    pub(crate) fn describe() {
        describe_counter!(SUCCESS, "Requests the agent served successfully.");
        describe_counter!(FAILURE, "Requests the agent failed, by error code.");
        describe_histogram!(LATENCY, metrics::Unit::Seconds, "Time spent serving a request.");
        describe_histogram!(INPUT_BYTES, metrics::Unit::Bytes, "Size of the inputs of create and execute requests.");
    }

    pub(crate) fn record(
        task_type: &str,
        operation: &'static str,
        protocol: &'static str,
        start: Instant,
        error: Option<&AgentError>,
    ) {
        let h = handles(task_type, operation, protocol);
        h.latency.record(start.elapsed().as_secs_f64());
        match error {
            None => h.success.increment(1),
            // Failures are rare; registering the key each time keeps the cache small.
            Some(e) => counter!(
                FAILURE,
                "task_type" => task_type.to_owned(),
                "operation" => operation,
                "protocol" => protocol,
                "error_code" => e.http_code()
            )
            .increment(1),
        }
    }

    pub(crate) fn observe_input_bytes(task_type: &str, bytes: usize) {
        #[allow(clippy::cast_precision_loss)]
        histogram!(INPUT_BYTES, "task_type" => task_type.to_owned()).record(bytes as f64);
    }
}

/// Serves `/metrics` on `addr`. Histograms render as Prometheus summaries (quantiles,
/// `_sum`, `_count`), the type flytekit uses.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("metrics_port: cannot serve metrics on {addr}: {e}"))?;
    metrics::reset();
    metrics::describe();
    crate::http::limit::metric::describe();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt;

    use super::Scrubbed;
    use crate::secrets::{ConnectionSecrets, SecretStore, scoped};

    #[test]
    fn every_log_line_is_scrubbed_human_and_json() {
        let pod = SecretStore::new(crate::secrets::EnvSource::Map(Arc::new(
            [("_FSEC_FLYTE_LOG_KEY".to_owned(), "pod-key-in-a-log-line-31".to_owned())].into(),
        )));
        pod.get("flyte_log_key").unwrap();
        let conn = ConnectionSecrets::new([("k".to_owned(), "conn-key-in-a-log\nline-47".to_owned())]).unwrap();
        for json in [false, true] {
            let out = crate::testing::CapturedLogs::default();
            let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(Scrubbed(out.clone()));
            let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
                Box::new(tracing_subscriber::registry().with(layer.json()))
            } else {
                Box::new(tracing_subscriber::registry().with(layer))
            };
            let _guard = tracing::subscriber::set_default(subscriber);
            tracing::warn!(message = "Retrying.", error = "503: key pod-key-in-a-log-line-31 refused");
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(scoped(conn.clone(), async {
                tracing::warn!(message = "Retrying.", error = %"echo conn-key-in-a-log\nline-47 and pod-key-in-a-log-line-31");
            }));
            let logged = out.text();
            assert_eq!(logged.matches("[REDACTED]").count(), 3, "{logged}");
            assert!(!logged.contains("pod-key-in") && !logged.contains("conn-key-in"), "{logged}");
        }
    }

    #[test]
    fn spans_name_the_protocol_generation() {
        assert_eq!(super::protocol_of("/flyteidl2.connector.AsyncConnectorService/GetTask"), "flyteidl2");
        assert_eq!(super::protocol_of("/flyteidl.service.AsyncAgentService/GetTask"), "flyteidl");
        assert_eq!(super::protocol_of("/grpc.health.v1.Health/Check"), "other");
    }
}
