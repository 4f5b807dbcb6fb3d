//! HTTP/2 limits tonic's server does not have: a deadline for a new connection to send
//! the headers of its first call ([`FirstHeadersBy`], around each accepted stream), and a
//! longest run for calls that carry no deadline of their own ([`max_call_duration`], a
//! tower layer). Keepalive pings and the per-connection stream limit are tonic settings
//! (`grpc::serve`).
//!
//! Without them, a client that opens connections and sends half the HTTP/2 preface, or
//! opens streams whose request never completes and carries no `grpc-timeout`, holds a
//! connection, a task and its buffers for as long as it likes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::transport::server::Connected;

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header: 24-bit length, type, flags, stream id.
const FRAME_HEADER: usize = 9;
/// Frame type of HEADERS, which opens a stream (a call).
const HEADERS: u8 = 0x1;
/// Frame type of CONTINUATION, the rest of a header block.
const CONTINUATION: u8 = 0x9;
/// The flag that ends a header block.
const END_HEADERS: u8 = 0x4;

/// Follows the bytes a client sends until its first header block is complete: the
/// preface, then frame headers, skipping payloads (SETTINGS, WINDOW_UPDATE, PING, …),
/// until a HEADERS or CONTINUATION frame with END_HEADERS has arrived whole. Only then
/// does a call exist that `max_call_duration` bounds; a frame header alone is not enough.
#[derive(Debug, Default)]
struct Scan {
    preface: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    skip: usize,
    /// The payload being skipped ends the first header block.
    last: bool,
}

impl Scan {
    /// Feeds the next bytes read; true once the first HEADERS frame has begun, or once
    /// the bytes are not HTTP/2 at all (hyper refuses those at once, no deadline needed).
    fn done_after(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.preface < PREFACE.len() {
                if bytes[0] != PREFACE[self.preface] {
                    return true;
                }
                self.preface += 1;
                bytes = &bytes[1..];
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip == 0 && self.last {
                    return true;
                }
            } else {
                let n = (FRAME_HEADER - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER {
                    self.skip = usize::from(self.header[0]) << 16
                        | usize::from(self.header[1]) << 8
                        | usize::from(self.header[2]);
                    self.last = matches!(self.header[3], HEADERS | CONTINUATION) && self.header[4] & END_HEADERS != 0;
                    self.header_len = 0;
                    if self.last && self.skip == 0 {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// An accepted connection that must deliver the HTTP/2 preface and the headers of its
/// first call by a deadline; past it, reads and writes fail and the server drops the
/// connection. After the first headers it is the plain stream (nothing is checked).
#[derive(Debug)]
pub(crate) struct FirstHeadersBy<IO> {
    io: IO,
    watch: Option<(Scan, Pin<Box<Sleep>>)>,
}

impl<IO> FirstHeadersBy<IO> {
    /// `io`, which must send its first headers by `deadline`.
    pub(crate) fn new(io: IO, deadline: Instant) -> Self {
        Self { io, watch: Some((Scan::default(), Box::pin(tokio::time::sleep_until(deadline)))) }
    }

    /// An error once the deadline has passed without the first headers (also registers
    /// the wake-up for it).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let (_, sleep) = self.watch.as_mut()?;
        sleep.as_mut().poll(cx).is_ready().then(|| {
            tracing::debug!(message = "Closing a connection that sent no call within http2.header_read_timeout.");
            io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 request headers within http2.header_read_timeout")
        })
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstHeadersBy<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some((scan, _)) = &mut this.watch
                    && scan.done_after(&buf.filled()[before..])
                {
                    this.watch = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstHeadersBy<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            // A client that does not read cannot stall the deadline either.
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for FirstHeadersBy<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A `grpc-timeout` value for `d` (at most 8 digits, RFC: PROTOCOL-HTTP2), rounded up.
fn grpc_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let ms = d.as_millis().max(1);
    if ms <= MAX {
        return format!("{ms}m");
    }
    let secs = u128::from(d.as_secs());
    if secs <= MAX {
        return format!("{secs}S");
    }
    format!("{}H", (secs / 3600).min(MAX))
}

/// Wraps the routes so that a call without a `grpc-timeout` gets `max` as its deadline:
/// the header is added (so the agent sees the deadline too) and the call ends with
/// DEADLINE_EXCEEDED if it has not answered by then. tonic's own `Server::timeout` would
/// also cut short calls whose deadline is longer.
pub(crate) fn max_call_duration<S>(max: Duration) -> impl tower::Layer<S, Service = MaxCallDuration<S>> + Clone {
    tower::layer::layer_fn(move |inner| MaxCallDuration { inner, max })
}

/// See [`max_call_duration`].
#[derive(Debug, Clone)]
pub(crate) struct MaxCallDuration<S> {
    inner: S,
    max: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for MaxCallDuration<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if req.headers().contains_key("grpc-timeout") {
            return Box::pin(self.inner.call(req));
        }
        let max = self.max;
        if let Ok(value) = http::HeaderValue::from_str(&grpc_timeout(max)) {
            req.headers_mut().insert("grpc-timeout", value);
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(max, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the call sent no deadline (grpc-timeout) and did not finish within this server's \
                     http2.max_call_duration ({max:?}); send a deadline with each call"
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_the_first_headers_across_any_split() {
        let mut bytes = PREFACE.to_vec();
        // SETTINGS with one 6-byte entry, a WINDOW_UPDATE, then HEADERS.
        bytes.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        bytes.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        let headers_at = bytes.len();
        bytes.extend_from_slice(&[0, 0, 3, HEADERS, 4, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
        for chunk in [1, 2, 5, 9, 24, 100] {
            let mut scan = Scan::default();
            let mut fed = 0;
            let mut done = false;
            for piece in bytes.chunks(chunk) {
                fed += piece.len();
                if scan.done_after(piece) {
                    done = true;
                    break;
                }
            }
            assert!(done, "chunk {chunk}");
            assert!(fed >= bytes.len(), "chunk {chunk}: done before the whole header block");
        }
        // A HEADERS frame header whose block never arrives, or a block without END_HEADERS,
        // is not a call yet.
        assert!(!Scan::default().done_after(&bytes[..headers_at + FRAME_HEADER + 2]));
        let mut split = bytes[..headers_at].to_vec();
        split.extend_from_slice(&[0, 0, 1, HEADERS, 0, 0, 0, 0, 1, 0x82]);
        let mut scan = Scan::default();
        assert!(!scan.done_after(&split), "HEADERS without END_HEADERS");
        assert!(scan.done_after(&[0, 0, 2, CONTINUATION, END_HEADERS, 0, 0, 0, 1, 0x86, 0x84]));
        // Half a preface, or a preface with settings only, is not done.
        assert!(!Scan::default().done_after(&PREFACE[..12]));
        assert!(!Scan::default().done_after(&bytes[..headers_at]));
        // Not HTTP/2: hyper answers that itself.
        assert!(Scan::default().done_after(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn grpc_timeouts_fit_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_secs(600)), "600000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout(Duration::ZERO), "1m");
    }
}
