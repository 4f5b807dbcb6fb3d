//! gRPC server assembly: the protocol front ends, `grpc.health.v1` and server
//! reflection on one port. This module and its children are the only code that
//! speaks tonic.

pub(crate) mod codec;
mod http2;
mod status;
mod tls;
mod trace;
mod v1;
pub(crate) mod v2;

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::pb;
use crate::pb::service::{agent_metadata_service_server, async_agent_service_server, sync_agent_service_server};
use crate::pb::v2::connector::{async_connector_service_server, connector_metadata_service_server};
use crate::service::AgentService;

pub(crate) use tls::ServerTls;

/// Fully qualified names of the services whose health is reported.
pub(crate) const SERVICE_NAMES: &[&str] = &[
    "flyteidl.service.AsyncAgentService",
    "flyteidl.service.SyncAgentService",
    "flyteidl.service.AgentMetadataService",
    "flyteidl2.connector.AsyncConnectorService",
    "flyteidl2.connector.ConnectorMetadataService",
];

/// Re-encodes a message of one protocol generation as the other. Only for types whose
/// shared fields agree (Flyte 2's core types extend Flyte 1's; see `v2.rs`).
pub(crate) fn recode<A: prost::Message, B: prost::Message + Default>(from: &A) -> Result<B, prost::DecodeError> {
    B::decode(from.encode_to_vec().as_slice())
}

/// [`recode`] for a message that is not needed afterwards: it is freed before its copy is
/// decoded, so a large message (a task's inputs) is held twice at the most, not three
/// times (see `max_message_size` in the README).
pub(crate) fn recode_owned<A: prost::Message, B: prost::Message + Default>(from: A) -> Result<B, prost::DecodeError> {
    let bytes = from.encode_to_vec();
    drop(from);
    B::decode(bytes.as_slice())
}

/// The caller's deadline from the `grpc-timeout` header.
pub(crate) fn deadline<T>(req: &tonic::Request<T>) -> Option<Instant> {
    let raw = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

/// Lines per log body message: large enough to be efficient, small enough to keep
/// messages far below the size limit.
const LOG_LINES_PER_MESSAGE: usize = 100;

/// Where a `GetTaskLogs` answer puts its header (the next page's token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogHeader {
    /// Flyte 1 (flytekit): first, on every page, the token empty on the last.
    First,
    /// Flyte 2 (flyte-sdk): after the page's lines, and only when another page follows.
    LastWhenMore,
}

/// A `GetTaskLogs` answer in either generation's messages: bodies as lines arrive, with
/// the header where the generation's clients expect it. The channel's bound applies
/// backpressure to the agent's reader when the client is slow; an agent error ends the
/// stream with its status.
pub(crate) fn stream_logs<M: Send + 'static>(
    logs: crate::agent::Logs,
    at: LogHeader,
    header: impl FnOnce(String) -> M + Send + 'static,
    body: impl Fn(Vec<crate::agent::LogLine>) -> M + Send + 'static,
) -> tokio_stream::wrappers::ReceiverStream<Result<M, tonic::Status>> {
    use futures_util::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let more = !logs.next_token.is_empty();
        let (leading, trailing) = match at {
            LogHeader::First => (Some(header(logs.next_token)), None),
            LogHeader::LastWhenMore => (None, more.then(|| header(logs.next_token))),
        };
        if let Some(first) = leading
            && tx.send(Ok(first)).await.is_err()
        {
            return;
        }
        let mut chunks = logs.lines.ready_chunks(LOG_LINES_PER_MESSAGE);
        while let Some(chunk) = chunks.next().await {
            let mut lines = Vec::with_capacity(chunk.len());
            let mut failure = None;
            for item in chunk {
                match item {
                    Ok(l) => lines.push(l),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if !lines.is_empty() && tx.send(Ok(body(lines))).await.is_err() {
                return;
            }
            if let Some(e) = failure {
                let _ = tx.send(Err(status::to_status(&e))).await;
                return;
            }
        }
        if let Some(last) = trailing {
            let _ = tx.send(Ok(last)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Sets every service's health (and the server's, service `""`).
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(*name, status).await;
    }
}

/// How the server runs.
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    pub(crate) max_message_size: usize,
    pub(crate) grace_period: Duration,
    pub(crate) shutdown_delay: Duration,
    pub(crate) tls: Option<tls::ServerTls>,
    pub(crate) http2: crate::config::Http2Config,
}

/// Serves on `listener` until `shutdown` resolves, then drains: health goes NOT_SERVING,
/// new calls are still accepted for `shutdown_delay`, then refused, and in-flight calls
/// get `grace_period` to finish.
pub(crate) async fn serve(
    svc: AgentService,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::Serving).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the committed descriptor set is valid (tested in pb.rs)");
    // grpcurl and many tools still speak the v1alpha reflection protocol.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the committed descriptor set is valid (tested in pb.rs)");

    let front = v1::V1::new(svc.clone());
    // Flyte 2 on the same port: one deployment serves both backends, e.g. during a migration.
    let front2 = v2::V2::new(svc);
    let size = options.max_message_size;
    let limits = &options.http2;
    let router = Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .layer(trace::layer())
        .layer(http2::max_call_duration(limits.max_call_duration))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            async_agent_service_server::AsyncAgentServiceServer::new(front.clone())
                .max_decoding_message_size(size)
                .max_encoding_message_size(size),
        )
        .add_service(
            sync_agent_service_server::SyncAgentServiceServer::new(front.clone())
                .max_decoding_message_size(size)
                .max_encoding_message_size(size),
        )
        .add_service(
            agent_metadata_service_server::AgentMetadataServiceServer::new(front)
                .max_decoding_message_size(size)
                .max_encoding_message_size(size),
        )
        .add_service(
            async_connector_service_server::AsyncConnectorServiceServer::new(front2.clone())
                .max_decoding_message_size(size)
                .max_encoding_message_size(size),
        )
        .add_service(
            connector_metadata_service_server::ConnectorMetadataServiceServer::new(front2)
                .max_decoding_message_size(size)
                .max_encoding_message_size(size),
        );

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_reporter = reporter.clone();
    let delay = options.shutdown_delay;
    let signal = async move {
        shutdown.await;
        tracing::info!(message = "Shutting down: health is NOT_SERVING.");
        set_health(&drain_reporter, ServingStatus::NotServing).await;
        tokio::time::sleep(delay).await;
        tracing::info!(message = "No longer accepting calls; waiting for in-flight calls.");
        let _ = drained_tx.send(());
    };
    // Without TCP_NODELAY small responses wait for the peer's delayed ACK (~40 ms on
    // Linux); keepalive probes find dead peers behind idle load balancers.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    // Every connection must reach its first call within header_read_timeout (with TLS,
    // counting the handshake), or it is closed.
    let first_headers = limits.header_read_timeout;
    let mut _watcher = None;
    let mut serving: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &options.tls {
            None => {
                use futures_util::StreamExt as _;
                let incoming = incoming.map(move |conn| {
                    conn.map(|tcp| http2::FirstHeadersBy::new(tcp, tokio::time::Instant::now() + first_headers))
                });
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
            Some(tls) => {
                _watcher = tls.watch().map(AbortOnDrop);
                Box::pin(router.serve_with_incoming_shutdown(tls.incoming(incoming, first_headers), signal))
            }
        };
    let grace = options.grace_period;
    tokio::select! {
        result = &mut serving => result,
        () = async move {
            if drained_rx.await.is_err() {
                // The server ended on its own; let the other branch report it.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(message = "Grace period over; dropping the calls still in flight.", grace_period = ?grace);
            Ok(())
        }
    }
}

/// Stops a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Request;

    #[test]
    fn grpc_timeout_header_becomes_a_deadline() {
        let mut req = Request::new(());
        req.metadata_mut().insert("grpc-timeout", "1500m".parse().unwrap());
        let d = deadline(&req).unwrap().saturating_duration_since(Instant::now());
        assert!(d <= Duration::from_millis(1500) && d > Duration::from_millis(1000));
        req.metadata_mut().insert("grpc-timeout", "garbage".parse().unwrap());
        assert!(deadline(&req).is_none());
    }
}
