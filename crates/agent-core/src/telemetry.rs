//! Logs (`tracing`, human or JSON), Prometheus metrics with flytekit's names, and
//! OpenTelemetry traces exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Every formatted log line is scrubbed of secret values before it is written
//! ([`Scrubbed`]); traces carry spans only, not log events, so service text reaches no
//! exporter unscrubbed; a panic is logged through the same path instead of being printed.
//!
//! Traces follow OpenTelemetry's semantic conventions: a SERVER span per gRPC call
//! (`grpc::trace`), a CLIENT span per HTTP request to a service ([`client_span`]) whose
//! W3C `traceparent` goes out with the request ([`inject`]), and JSON log lines written
//! inside a traced call carry its `trace_id` and `span_id`. The resource honours
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`; the binary's name is the service
//! name when neither gives one.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
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

/// Whether traces are exported (an OTLP endpoint is configured); read once, as the
/// exporter is set up once.
pub fn exporting() -> bool {
    static EXPORTING: OnceLock<bool> = OnceLock::new();
    *EXPORTING.get_or_init(|| {
        ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
    })
}

/// Installs the global subscriber: log format and level from `config` (`RUST_LOG`, when
/// set, wins), plus an OpenTelemetry layer when an OTLP endpoint is configured.
pub fn init(config: &ServerConfig, service_name: &str) -> Result<Telemetry, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(&f).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::try_new(&config.log_level).map_err(|e| format!("log_level: {e}"))?,
    };
    let (json, dispatch) =
        WithTraceIds::new(tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false));
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(json)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_writer(Scrubbed(std::io::stderr))
            .and_then(dispatch)
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer().with_writer(Scrubbed(std::io::stderr)).boxed(),
    };

    let mut telemetry = Telemetry::default();
    let otel = if exporting() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
        // The SDK's detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the
        // binary's name stands in only where neither names the service.
        let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
                .is_ok_and(|v| v.split(',').any(|kv| kv.trim_start().starts_with("service.name=")));
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !named {
            resource = resource.with_service_name(service_name.to_owned());
        }
        let resource = resource.build();
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

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    /// Adds the header unless the request already has it (a caller's own trace context).
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.entry(name).or_insert(value);
        }
    }
}

/// The SERVER span of one gRPC call, continuing the caller's trace when the request
/// carries W3C trace context (`traceparent`).
pub(crate) fn server_span<B>(req: &http::Request<B>) -> tracing::Span {
    let path = req.uri().path();
    // Only the services this server has name spans: a scanner's random paths would
    // otherwise make as many span names as it likes.
    let known = ["/flyteidl.", "/flyteidl2.", "/grpc."].iter().any(|p| path.starts_with(p));
    let path = if known { path } else { "/_OTHER/_OTHER" };
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        flyte.protocol = protocol_of(path)
    );
    // Most calls (Propeller's) carry no trace context; skip the propagator for them.
    if req.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let _ = span.set_parent(parent);
    }
    span
}

/// Records a call's gRPC status on its server span. The codes that mean the server
/// failed (not the caller) mark the span as an error, as the RPC conventions say.
pub(crate) fn record_grpc_status(span: &tracing::Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "error");
    }
}

/// The CLIENT span of one HTTP request to a service's API. The URL is recorded without
/// its query, which can carry identifiers a service treats as secret (an Azure SAS token,
/// say). A disabled span when traces are not exported: nothing is formatted per request.
pub fn client_span(method: &str, url: &reqwest::Url) -> tracing::Span {
    let port = url.port_or_known_default().unwrap_or_default();
    client_span_of(method, url.scheme(), url.host_str().unwrap_or_default(), port, Some(url.path()))
}

/// [`client_span`] for a URL a task chose (a webhook's), recorded without its path too:
/// such paths often are the credential (`hooks.slack.com/services/…`).
pub fn client_span_to_host(method: &str, url: &reqwest::Url) -> tracing::Span {
    let port = url.port_or_known_default().unwrap_or_default();
    client_span_of(method, url.scheme(), url.host_str().unwrap_or_default(), port, None)
}

/// [`client_span`] for a request addressed by an [`http::Uri`] (HTTP stacks other than
/// reqwest's, such as object_store's).
pub fn client_span_uri(method: &str, uri: &http::Uri) -> tracing::Span {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    client_span_of(method, scheme, uri.host().unwrap_or_default(), port, Some(uri.path()))
}

fn client_span_of(method: &str, scheme: &str, host: &str, port: u16, path: Option<&str>) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    span_for(method, scheme, host, port, path)
}

fn span_for(method: &str, scheme: &str, host: &str, port: u16, path: Option<&str>) -> tracing::Span {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let shown = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    tracing::info_span!(
        "http",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        error.r#type = tracing::field::Empty,
        http.request.method = %method,
        server.address = %host,
        server.port = i64::from(port),
        url.full = %format_args!("{scheme}://{shown}:{port}{}", path.unwrap_or_default()),
        http.response.status_code = tracing::field::Empty,
    )
}

/// Marks a [`client_span`] whose request got no answer (connection refused, a timeout, a
/// broken answer): `kind` is a short class such as `timeout` or `connect`.
pub fn record_http_failure(span: &tracing::Span, kind: &'static str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "error");
}

/// The class of a reqwest error, for [`record_http_failure`].
pub fn reqwest_failure(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// Records the answer's status on a [`client_span`]; 4xx and 5xx mark it as an error.
pub fn record_http_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 400 {
        span.record("otel.status_code", "error");
    }
}

/// Adds `span`'s W3C trace context (`traceparent`) to an outgoing request's headers, so
/// the service's own traces join the caller's. Nothing is added when tracing is off.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
    }
}

/// JSON log lines with the current trace's `trace_id` and `span_id`, so a log search
/// lands on the trace and back. The ids are read through the subscriber ([`DispatchOf`]
/// hands it over), since inside an event the global one is not reachable.
struct WithTraceIds<F>(F, Arc<OnceLock<tracing::dispatcher::WeakDispatch>>);

impl<F> WithTraceIds<F> {
    /// The format, and the layer that must join the same subscriber for the ids to show.
    fn new(format: F) -> (Self, DispatchOf) {
        let dispatch = Arc::new(OnceLock::new());
        (Self(format, dispatch.clone()), DispatchOf(dispatch))
    }

    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let span = ctx.lookup_current()?;
        let dispatch = self.1.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
        let otel = cx.span();
        let sc = otel.span_context();
        sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

/// Remembers the subscriber it joins, for [`WithTraceIds`].
struct DispatchOf(Arc<OnceLock<tracing::dispatcher::WeakDispatch>>);

impl<S: tracing::Subscriber> Layer<S> for DispatchOf {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    F: FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = self.ids(ctx) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(head) => {
                let tail = &line[head.len() + 1..];
                write!(writer, "{head},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}{tail}")
            }
            None => writer.write_str(&line),
        }
    }
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
    /// gRPC calls being served right now (health checks left out): what loads an agent
    /// that waits on slow services, and what the charts' autoscaler can follow.
    pub const IN_FLIGHT: &str = "flyte_agent_requests_in_flight";

    /// Latency buckets (seconds): from a cached GetTask (well under a millisecond) to
    /// Propeller's longest default deadline and a slow sync call.
    pub const LATENCY_BUCKETS: &[f64] =
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
    /// Input size buckets (bytes), up to the default 16 MiB message limit.
    pub const INPUT_BYTES_BUCKETS: &[f64] =
        &[256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 1_048_576.0, 4_194_304.0, 16_777_216.0];

    /// The gauge behind [`super::InFlight`], taken once the exporter is installed.
    pub(crate) static IN_FLIGHT_GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();

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
        metrics::describe_gauge!(IN_FLIGHT, "gRPC calls being served (health checks not counted).");
        let _ = IN_FLIGHT_GAUGE.set(metrics::gauge!(IN_FLIGHT));
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

/// One gRPC call in [`metrics::IN_FLIGHT`], for as long as the guard lives.
#[derive(Debug)]
pub(crate) struct InFlight(Option<&'static ::metrics::Gauge>);

impl InFlight {
    pub(crate) fn enter() -> Self {
        let gauge = metrics::IN_FLIGHT_GAUGE.get();
        if let Some(g) = gauge {
            g.increment(1.0);
        }
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.decrement(1.0);
        }
    }
}

/// How often the `process_*` metrics are sampled (CPU, RSS, open files, threads).
const PROCESS_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/metrics` on `addr`: latencies and sizes as Prometheus histograms (buckets add
/// up across replicas, where flytekit's summaries' quantiles cannot), and the `process_*`
/// metrics Prometheus' client libraries (flytekit's server among them) export. Must run
/// inside the tokio runtime, which samples the process metrics.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::Matcher;
    let err = |e: metrics_exporter_prometheus::BuildError| format!("metrics_port: {e}");
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(metrics::LATENCY.into()), metrics::LATENCY_BUCKETS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Full(metrics::INPUT_BYTES.into()), metrics::INPUT_BYTES_BUCKETS)
        .map_err(err)?
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("metrics_port: cannot serve metrics on {addr}: {e}"))?;
    metrics::reset();
    metrics::describe();
    crate::http::limit::metric::describe();
    let process = metrics_process::Collector::default();
    process.describe();
    process.collect();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PROCESS_SAMPLE_INTERVAL);
        loop {
            every.tick().await;
            process.collect();
        }
    });
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
    fn json_lines_inside_a_span_of_a_trace_carry_its_ids() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let out = crate::testing::CapturedLogs::default();
        let (json, dispatch) = super::WithTraceIds::new(
            tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false),
        );
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(json)
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_writer(Scrubbed(out.clone())),
            )
            .with(dispatch);
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!(message = "Outside.");
        let span = tracing::info_span!("grpc", otel.kind = "server");
        span.in_scope(|| tracing::info!(message = "Inside."));
        let lines: Vec<serde_json::Value> =
            out.text().lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].get("trace_id").is_none(), "{:?}", lines[0]);
        let trace_id = lines[1]["trace_id"].as_str().expect("trace_id");
        let span_id = lines[1]["span_id"].as_str().expect("span_id");
        assert_eq!((trace_id.len(), span_id.len()), (32, 16));
        assert_eq!(lines[1]["message"], "Inside.");
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        assert_eq!(span.context().span().span_context().trace_id().to_string(), trace_id);
    }

    #[test]
    fn client_spans_send_the_trace_along_and_record_no_query() {
        use opentelemetry::trace::TracerProvider as _;
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _guard = tracing::subscriber::set_default(subscriber);
        let url = reqwest::Url::parse("https://svc.example.com/api/2.1/jobs/runs/get?run_id=7&token=x").unwrap();
        // Not exported in this test process: no span is even made.
        assert!(super::client_span("GET", &url).is_disabled());
        let span = super::span_for("GET", "https", "svc.example.com", 443, Some(url.path()));
        let mut headers = http::HeaderMap::new();
        super::inject(&span, &mut headers);
        let traceparent = headers.get("traceparent").expect("traceparent").to_str().unwrap().to_owned();
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        assert_eq!(traceparent, format!("00-{}-{}-01", sc.trace_id(), sc.span_id()));
        // A request's own trace context is kept.
        let mut own = http::HeaderMap::new();
        own.insert(
            "traceparent",
            http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        super::inject(&span, &mut own);
        assert_eq!(own["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        // Without a tracer nothing is added.
        drop(_guard);
        let mut none = http::HeaderMap::new();
        super::inject(&super::span_for("GET", "https", "svc.example.com", 443, None), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn spans_name_the_protocol_generation() {
        assert_eq!(super::protocol_of("/flyteidl2.connector.AsyncConnectorService/GetTask"), "flyteidl2");
        assert_eq!(super::protocol_of("/flyteidl.service.AsyncAgentService/GetTask"), "flyteidl");
        assert_eq!(super::protocol_of("/grpc.health.v1.Health/Check"), "other");
    }
}
