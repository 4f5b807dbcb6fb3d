//! An OpenTelemetry collector for tests: it receives traces over OTLP/gRPC (the
//! `TraceService/Export` call every OTLP exporter makes) and keeps the spans, so a test can
//! check what an agent exported: kinds, attributes, parents, one trace across processes.
//!
//! Control routes: `GET /_emulator/otlp/spans` lists the spans received, oldest first,
//! flattened to JSON (hex ids, attributes and resource attributes as plain values);
//! `DELETE` forgets them. Both are served on the OTLP port.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::routing::get;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::http::Running;

/// Spans kept at most; older ones are dropped.
const KEPT: usize = 10_000;

/// One span as received, flattened.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// `SERVER`, `CLIENT`, `INTERNAL`, `PRODUCER`, `CONSUMER` or `UNSPECIFIED`.
    pub kind: String,
    /// `OK`, `ERROR` or `UNSET`.
    pub status: String,
    /// The span's attributes.
    pub attributes: BTreeMap<String, Json>,
    /// The attributes of the resource (the process) that sent it.
    pub resource: BTreeMap<String, Json>,
    /// The instrumentation scope's name.
    pub scope: String,
}

/// The collector.
#[derive(Clone, Default, Debug)]
pub struct Collector {
    spans: Arc<Mutex<VecDeque<ReceivedSpan>>>,
}

impl Collector {
    /// A collector that has received nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves OTLP/gRPC (HTTP/2 without TLS, as `OTEL_EXPORTER_OTLP_ENDPOINT=http://…`
    /// asks) and the control routes on `addr`.
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<Running> {
        let router = axum::Router::new()
            .route("/_emulator/otlp/spans", get(list).delete(forget))
            .with_state(self.clone())
            .merge(tonic::service::Routes::new(TraceServiceServer::new(self.clone())).into_axum_router());
        let service = crate::http::Service {
            router,
            faults: crate::faults::Faults::default(),
            shaping: crate::shaping::Shaping::default(),
            formats: crate::http::Formats { error: error_body, echo: |_, _| None },
        };
        Ok(crate::http::serve(tokio::net::TcpListener::bind(addr).await?, service, None))
    }

    /// The spans received, oldest first.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut flat = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    flat.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: kind(span.kind).to_owned(),
                        status: status(span.status.map_or(0, |s| s.code)).to_owned(),
                        attributes: attributes(&span.attributes),
                        name: span.name,
                        resource: resource.clone(),
                        scope: scope.clone(),
                    });
                }
            }
        }
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        for s in flat {
            if spans.len() == KEPT {
                spans.pop_front();
            }
            spans.push_back(s);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn error_body(status: axum::http::StatusCode, message: &str) -> Json {
    json!({"error": message, "status": status.as_u16()})
}

async fn list(State(c): State<Collector>) -> axum::Json<Vec<ReceivedSpan>> {
    axum::Json(c.spans())
}

async fn forget(State(c): State<Collector>) -> axum::http::StatusCode {
    c.spans.lock().unwrap_or_else(PoisonError::into_inner).clear();
    axum::http::StatusCode::NO_CONTENT
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Span kinds by their OTLP number.
fn kind(n: i32) -> &'static str {
    match n {
        1 => "INTERNAL",
        2 => "SERVER",
        3 => "CLIENT",
        4 => "PRODUCER",
        5 => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

/// Status codes by their OTLP number.
fn status(n: i32) -> &'static str {
    match n {
        1 => "OK",
        2 => "ERROR",
        _ => "UNSET",
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Json> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Json::Null, value))).collect()
}

fn value(v: &AnyValue) -> Json {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => Json::Array(a.values.iter().map(value).collect()),
        Some(any_value::Value::KvlistValue(l)) => Json::Object(
            l.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Json::Null, value))).collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => json!(hex(b)),
        Some(_) | None => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spans_exported_over_otlp_grpc_are_listed_flat() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

        let c = Collector::new();
        let running = c.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let kv = |k: &str, v: any_value::Value| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        };
        let span = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            parent_span_id: vec![2; 8],
            name: "flyteidl.service.AsyncAgentService/GetTask".into(),
            kind: 2,
            attributes: vec![
                kv("rpc.system", any_value::Value::StringValue("grpc".into())),
                kv("rpc.grpc.status_code", any_value::Value::IntValue(0)),
            ],
            status: Some(Status { code: 2, message: String::new() }),
            ..Span::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", any_value::Value::StringValue("agent-x".into()))],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans { spans: vec![span], ..ScopeSpans::default() }],
                schema_url: String::new(),
            }],
        };
        let mut client = TraceServiceClient::connect(running.url()).await.unwrap();
        client.export(request).await.unwrap();
        let listed: Json =
            reqwest::get(format!("{}/_emulator/otlp/spans", running.url())).await.unwrap().json().await.unwrap();
        let s = &listed[0];
        assert_eq!(s["trace_id"], "ab".repeat(16));
        assert_eq!(
            (s["span_id"].as_str(), s["parent_span_id"].as_str()),
            (Some("0101010101010101"), Some("0202020202020202"))
        );
        assert_eq!((s["kind"].as_str(), s["status"].as_str()), (Some("SERVER"), Some("ERROR")));
        assert_eq!(s["attributes"]["rpc.grpc.status_code"], 0);
        assert_eq!(s["resource"]["service.name"], "agent-x");
        let client = reqwest::Client::new();
        client.delete(format!("{}/_emulator/otlp/spans", running.url())).send().await.unwrap();
        assert_eq!(c.spans().len(), 0);
    }
}
