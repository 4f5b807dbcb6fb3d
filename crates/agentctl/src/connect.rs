//! The connection to the agent: plaintext, TLS or mutual TLS, from `--endpoint` and the
//! TLS flags, with failures told in terms of those flags.
//!
//! TLS is on with an `https://` endpoint, with `--tls`, or with any of `--ca-cert`,
//! `--cert`/`--key` and `--server-name`, which mean nothing without it. An endpoint with no
//! scheme takes `https://` when TLS is on and `http://` otherwise; an explicit `http://`
//! with TLS flags is refused rather than silently upgraded or ignored.
//!
//! Trust: the system's roots (and `SSL_CERT_FILE`) through the same platform verifier
//! the agents' HTTP clients use, or, with `--ca-cert`, only the CAs in that bundle. Only,
//! not in addition: naming the CA that issued the agent's certificate (a cluster's
//! cert-manager issuer, say) should also mean a certificate some public CA issued for
//! the same name is not accepted, as with curl's `--cacert` and grpcurl's `-cacert`.
//!
//! The agent's certificate is checked for the endpoint's host unless `--server-name`
//! names another: Propeller dialling `k8s://SERVICE.NAMESPACE:PORT` checks
//! `SERVICE.NAMESPACE`, which a port-forward to 127.0.0.1 does not carry.
//!
//! Every input is read and checked before anything is dialled (files, PEM, the key
//! fitting the certificate), so a bad flag is a usage error that names the flag and the
//! file; messages never quote a key file's content.
//!
//! agentctl does the TLS handshake itself ([`TlsDialer`]) and hands tonic the connection
//! ready for HTTP/2, rather than using tonic's TLS: with TLS 1.3 a server refuses a
//! client certificate (or its absence) only after the client has finished its
//! handshake, as an alert on the next read, and hyper then fails the call with a bare
//! "connection closed" that drops the alert. Reading through [`Recorded`] keeps the
//! connection's TLS error for the message; when the call's own writes raced the server's
//! close and the alert was lost to a reset, one more connection that only reads gets it
//! ([`TlsDialer::diagnose`]). One health check goes over the connection before the
//! command runs, so that whatever it hits is told here, in one line, with what to
//! change, before any task is sent.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use rustls_platform_verifier::BuilderVerifierExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long connecting may take: TCP, and the TLS handshake when there is one (tonic
/// bounds a custom connector's whole future by it), so a peer that accepts but never
/// finishes a handshake cannot hang agentctl.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS flags, global like `--endpoint`.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Use TLS, trusting the system's root certificates (and SSL_CERT_FILE). Implied by an
    /// https:// endpoint and by --ca-cert, --cert, --key and --server-name.
    #[arg(long, env = "AGENTCTL_TLS", global = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) tls: bool,
    /// Trust only the CA certificates in this PEM bundle (instead of the system's roots):
    /// the CA that issued the agent's tls.cert_file.
    #[arg(long, value_name = "FILE", env = "AGENTCTL_CA_CERT", global = true)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS, issued by a CA in the agent's
    /// tls.client_ca_file; needs --key.
    #[arg(long, value_name = "FILE", env = "AGENTCTL_CERT", global = true, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted) of --cert.
    #[arg(long, value_name = "FILE", env = "AGENTCTL_KEY", global = true, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Check the agent's certificate for NAME instead of the endpoint's host (e.g.
    /// SERVICE.NAMESPACE, what Propeller checks with a k8s:// endpoint, when the agent is
    /// reached through a port-forward).
    #[arg(long, value_name = "NAME", env = "AGENTCTL_SERVER_NAME", global = true)]
    pub(crate) server_name: Option<String>,
}

impl TlsArgs {
    /// The flag that turns TLS on, if any, for messages.
    fn asked_by(&self) -> Option<&'static str> {
        if self.tls {
            Some("--tls")
        } else if self.ca_cert.is_some() {
            Some("--ca-cert")
        } else if self.cert.is_some() {
            Some("--cert")
        } else if self.key.is_some() {
            Some("--key")
        } else if self.server_name.is_some() {
            Some("--server-name")
        } else {
            None
        }
    }
}

/// Why no connection: a flag or file to fix (exit 2), or the agent (exit 3).
#[derive(Debug)]
pub(crate) enum ConnectError {
    Usage(String),
    Agent(String),
}

/// What a failure is explained against.
struct Context {
    endpoint: String,
    tls: Option<TlsContext>,
    /// The TLS error the dialer's connections saw.
    seen: Option<Seen>,
    /// The probe's deadline.
    timeout: Duration,
}

#[derive(Debug)]
struct TlsContext {
    server_name: String,
    /// Whether `--server-name` set it (else it is the endpoint's host).
    named: bool,
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
}

/// Connects to the agent at `endpoint` as the flags say and checks, with one health call
/// bounded by `timeout`, that the agent answers over that connection.
pub(crate) async fn connect(endpoint: &str, tls: &TlsArgs, timeout: Duration) -> Result<Channel, ConnectError> {
    let (uri, host, use_tls) = endpoint_uri(endpoint, tls).map_err(ConnectError::Usage)?;
    let parse = |uri: &str| {
        Endpoint::from_shared(uri.to_owned())
            .map_err(|e| ConnectError::Usage(format!("--endpoint '{endpoint}' is not a URL: {}", chain(&e))))
    };
    let mut context = Context { endpoint: uri.clone(), tls: None, seen: None, timeout };
    let mut diagnosis = None;
    let channel = if use_tls {
        let (config, server_name, tls_context) = client_tls(tls, &host).map_err(ConnectError::Usage)?;
        let dialer = TlsDialer { config: Arc::new(config), server_name, seen: Arc::default() };
        context.tls = Some(tls_context);
        context.seen = Some(dialer.seen.clone());
        // tonic does TLS itself for an https:// URI and refuses one without its own TLS
        // settings, so it dials the http:// form through the dialer, which does the TLS;
        // the calls still say https (`origin` sets their :scheme and :authority).
        let origin: Uri = uri.parse().map_err(|e| ConnectError::Usage(format!("--endpoint '{endpoint}': {e}")))?;
        let dialled = format!("http://{}", origin.authority().map(|a| a.as_str()).unwrap_or_default());
        let builder = parse(&dialled)?.origin(origin).connect_timeout(CONNECT_TIMEOUT);
        let dialled: Uri = dialled.parse().map_err(|e| ConnectError::Usage(format!("--endpoint '{endpoint}': {e}")))?;
        diagnosis = Some((dialer.clone(), dialled));
        let dial = tower::service_fn(move |uri: Uri| {
            let dialer = dialer.clone();
            async move { dialer.dial(&uri).await }
        });
        builder.connect_with_connector(dial).await
    } else {
        parse(&uri)?.connect_timeout(CONNECT_TIMEOUT).connect().await
    };
    let channel = channel.map_err(|e| ConnectError::Agent(explain(&e, &context)))?;
    if let Err(status) = probe(channel.clone(), timeout).await {
        if let Some((dialer, uri)) = &diagnosis {
            dialer.diagnose(uri).await;
        }
        return Err(ConnectError::Agent(explain(&status, &context)));
    }
    Ok(channel)
}

/// The endpoint as a URI with a scheme, its host, and whether to speak TLS.
fn endpoint_uri(endpoint: &str, tls: &TlsArgs) -> Result<(String, String, bool), String> {
    let asked = tls.asked_by();
    let (uri, use_tls) = match endpoint.split_once("://") {
        None => (format!("{}://{endpoint}", if asked.is_some() { "https" } else { "http" }), asked.is_some()),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => (endpoint.to_owned(), true),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            if let Some(flag) = asked {
                return Err(format!(
                    "--endpoint {endpoint} is plaintext (http://) but {flag} asks for TLS: use https://{rest}"
                ));
            }
            (endpoint.to_owned(), false)
        }
        Some((scheme, _)) => {
            return Err(format!(
                "--endpoint {endpoint}: agentctl speaks http:// (plaintext) and https:// (TLS), not {scheme}://"
            ));
        }
    };
    let parsed: tonic::transport::Uri =
        uri.parse().map_err(|e| format!("--endpoint '{endpoint}' is not a URL: {e}"))?;
    let host = parsed.host().ok_or_else(|| format!("--endpoint '{endpoint}' names no host"))?;
    // The URI keeps an IPv6 address in brackets; a certificate names it without them.
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_owned();
    Ok((uri, host, use_tls))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS client settings and the name to check the agent's certificate for, from the
/// flags.
fn client_tls(args: &TlsArgs, host: &str) -> Result<(ClientConfig, ServerName<'static>, TlsContext), String> {
    let (name, named) = match &args.server_name {
        Some(name) => (name.clone(), true),
        None => (host.to_owned(), false),
    };
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        if named {
            format!("--server-name '{name}' is not a DNS name or an IP address")
        } else {
            format!("the endpoint's host '{name}' cannot be checked against a certificate; pass --server-name")
        }
    })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let builder = match &args.ca_cert {
        Some(path) => builder.with_root_certificates(ca_roots(path)?),
        None => builder
            .with_platform_verifier()
            .map_err(|e| format!("cannot load the system's root certificates ({e}); pass --ca-cert FILE"))?,
    };
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity(cert, key)?)))
        }
        _ => builder.with_no_client_auth(),
    };
    // gRPC is HTTP/2, which a TLS server agrees to through ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    let context =
        TlsContext { server_name: name, named, ca_cert: args.ca_cert.clone(), client_cert: args.cert.clone() };
    Ok((config, server_name, context))
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
}

/// The CA certificates in `path`, the only roots trusted with `--ca-cert`.
fn ca_roots(path: &Path) -> Result<RootCertStore, String> {
    let pem = read("--ca-cert", path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--ca-cert {}: not a PEM bundle of certificates: {e}", path.display()))?;
    // A file without a single certificate parses as an empty bundle, which would trust
    // nothing: not what anyone passing it meant.
    if certs.is_empty() {
        return Err(format!("--ca-cert {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("--ca-cert {}: certificate {} cannot be used as a CA: {e}", path.display(), i + 1))?;
    }
    Ok(roots)
}

/// The client certificate and key, checked to parse and to belong together: rustls would
/// otherwise only find out in the handshake, and the agent would say no more than that it
/// refused the client.
fn identity(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    let cert = read("--cert", cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--cert {}: not PEM certificates: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("--cert {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", cert_path.display()));
    }
    let key = read("--key", key_path)?;
    // The PEM parser's own error is left out: it may quote what it failed to decode,
    // which here is part of a private key.
    let der = PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
        let encrypted = key.windows(b"ENCRYPTED PRIVATE KEY".len()).any(|w| w == b"ENCRYPTED PRIVATE KEY");
        if encrypted {
            format!(
                "--key {}: the key is encrypted; agentctl needs it unencrypted (openssl pkcs8 -topk8 -nocrypt)",
                key_path.display()
            )
        } else {
            format!("--key {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", key_path.display())
        }
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("--key {}: not a usable private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        format!(
            "--key {} does not belong to the certificate in --cert {} (pass the key it was issued for)",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(certified)
}

/// The TLS error the connection is failing with, shared between the dialer, the
/// connections it made and the explanation of a failed call.
type Seen = Arc<Mutex<Option<rustls::Error>>>;

/// Keeps the first TLS error of `err`, if it is one.
fn record(seen: &Seen, err: &io::Error) {
    if let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        seen.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(|| tls.clone());
    }
}

/// Dials the agent over TCP and does the TLS handshake.
#[derive(Clone)]
struct TlsDialer {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    seen: Seen,
}

impl TlsDialer {
    async fn dial(&self, uri: &Uri) -> io::Result<TokioIo<Recorded<TlsStream<TcpStream>>>> {
        let host = uri.host().unwrap_or_default();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host, port)).await?;
        // As tonic's own connector does: gRPC's small frames should not wait on Nagle.
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .inspect_err(|e| record(&self.seen, e))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::other(
                "the server did not agree to HTTP/2 in the TLS handshake (ALPN h2): is it a gRPC server?",
            ));
        }
        Ok(TokioIo::new(Recorded { inner: tls, seen: self.seen.clone() }))
    }

    /// After a failed call with no TLS error seen: dials once more and only reads, briefly.
    /// A server refusing the client after the handshake sends its alert and closes; a
    /// client that is writing meanwhile (the call's HTTP/2 preface and request) can get a
    /// reset that discards the alert unread, one that only reads gets the alert, which
    /// [`Recorded`] keeps. A server content with the client sends nothing more, and the
    /// read just runs out of time.
    async fn diagnose(&self, uri: &Uri) {
        if self.seen.lock().unwrap_or_else(PoisonError::into_inner).is_some() {
            return;
        }
        let Ok(Ok(io)) = tokio::time::timeout(CONNECT_TIMEOUT, self.dial(uri)).await else { return };
        let mut io = io.into_inner();
        let _ = tokio::time::timeout(Duration::from_secs(2), io.read(&mut [0u8; 1])).await;
    }
}

/// A connection that keeps the TLS error it fails with (see the module docs).
struct Recorded<S> {
    inner: S,
    seen: Seen,
}

impl<S> Recorded<S> {
    fn note<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &poll {
            record(&self.seen, e);
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(poll)
    }
}

/// One `grpc.health.v1.Health/Check` over `channel`. An answer from the agent, whatever it
/// says (an agent without the health service answers UNIMPLEMENTED), shows the connection
/// works; only a failure of the connection itself, which tonic reports as a status with
/// a source error, is returned.
async fn probe(channel: Channel, timeout: Duration) -> Result<(), tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    request.set_timeout(timeout);
    match client.check(request).await {
        Ok(_) => Ok(()),
        Err(status) if status.source().is_none() => Ok(()),
        Err(status) => Err(status),
    }
}

/// The messages of `err` and its sources, once each, joined by ": ".
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        // A status' Display is a debug dump of code, message and source; its message is
        // the part worth showing (the source follows anyway).
        let text = match e.downcast_ref::<tonic::Status>() {
            Some(status) => status.message().to_owned(),
            None => e.to_string(),
        };
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The TLS error somewhere in `err`'s sources: rustls' own, usually inside an I/O error.
fn rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // An I/O error's `source` skips the error it wraps, so look inside it.
        if let Some(r) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

/// A connection failure in one line, with what to change.
fn explain(err: &(dyn StdError + 'static), context: &Context) -> String {
    let endpoint = &context.endpoint;
    let over = if context.tls.is_some() { " over TLS" } else { "" };
    // What rustls saw is the most specific account of a TLS failure, whatever the call
    // then made of it.
    if let Some(tls) = &context.tls {
        let seen = context.seen.as_ref().and_then(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone());
        if let Some(e) = seen.as_ref().or_else(|| rustls_error(err)) {
            return format!("cannot connect to {endpoint} over TLS: {}", tls_failure(e, tls));
        }
    }
    if timed_out(err) {
        let what =
            if context.tls.is_some() { "is it reachable, and serving TLS on that port?" } else { "is it reachable?" };
        return format!(
            "cannot connect to {endpoint}{over}: no connection within {}s: {what}",
            CONNECT_TIMEOUT.as_secs()
        );
    }
    // Connected, but the health call got no answer: a server that accepts connections but
    // does not speak gRPC, or one too busy to answer.
    if has::<tonic::TimeoutExpired>(err) {
        return format!(
            "cannot connect to {endpoint}{over}: no answer to a health check within {} (--timeout): is it a gRPC \
             server?",
            humantime::format_duration(context.timeout)
        );
    }
    let text = chain(err);
    // A plaintext client at a TLS port sees the connection closed under it, or the
    // server's TLS alert read as a malformed HTTP/2 frame.
    let closed = ["connection closed", "connection reset", "broken pipe", "protocol error", "frame with invalid size"]
        .iter()
        .any(|s| text.to_ascii_lowercase().contains(s));
    let hint = if closed && context.tls.is_none() { " (if the agent serves TLS, use https:// or --tls)" } else { "" };
    format!("cannot connect to {endpoint}{over}: {text}{hint}")
}

/// Whether `err` is a connect timeout (hyper-timeout's, an I/O error of kind TimedOut).
fn timed_out(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether an error of type `E` is among `err` and its sources.
fn has<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// What a TLS failure means for the flags.
fn tls_failure(e: &rustls::Error, tls: &TlsContext) -> String {
    let name = &tls.server_name;
    let trusted = match &tls.ca_cert {
        Some(path) => format!("a CA in --ca-cert {}", path.display()),
        None => "a CA this system trusts (pass the agent's CA with --ca-cert FILE)".to_owned(),
    };
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = match cert {
                    CertificateError::NotValidForNameContext { presented, .. } => {
                        // webpki shows each name in its Debug form: DnsName("a.b"), IpAddress(1.2.3.4).
                        let plain: Vec<&str> = presented
                            .iter()
                            .filter_map(|n| {
                                n.strip_prefix("DnsName(\"")
                                    .and_then(|n| n.strip_suffix("\")"))
                                    .or_else(|| n.strip_prefix("IpAddress(").and_then(|n| n.strip_suffix(')')))
                            })
                            .collect();
                        if plain.is_empty() { String::new() } else { format!(" (it is for {})", plain.join(", ")) }
                    }
                    _ => String::new(),
                };
                let fix = if tls.named {
                    "pass --server-name with a name it is for"
                } else {
                    "connect by a name it is for, or pass it with --server-name"
                };
                format!("the agent's certificate is not valid for {name}{names}; {fix}")
            }
            CertificateError::UnknownIssuer => format!("the agent's certificate is not issued by {trusted}"),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the agent's certificate has expired ({cert}); the agent needs a renewed one")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the agent's certificate is not valid yet ({cert}); check this machine's clock")
            }
            other => format!("the agent's certificate was refused: {other}"),
        },
        rustls::Error::AlertReceived(alert) => match (&tls.client_cert, alert) {
            (None, AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure) => {
                "the agent requires a client certificate (mutual TLS): pass --cert FILE and --key FILE".to_owned()
            }
            (
                Some(path),
                AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied
                | AlertDescription::DecryptError,
            ) => format!(
                "the agent refused the client certificate in --cert {} ({alert:?}): it must be issued by a CA in \
                 the agent's tls.client_ca_file and be current",
                path.display()
            ),
            (_, alert) => format!("the agent ended the TLS handshake ({alert:?})"),
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("the server did not answer in TLS ({e}): if the agent serves plaintext, use http://")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tls: bool, server_name: Option<&str>) -> TlsArgs {
        TlsArgs { tls, server_name: server_name.map(str::to_owned), ..TlsArgs::default() }
    }

    #[test]
    fn the_scheme_follows_the_tls_flags() {
        let plain = args(false, None);
        assert_eq!(
            endpoint_uri("127.0.0.1:8000", &plain).unwrap(),
            ("http://127.0.0.1:8000".into(), "127.0.0.1".into(), false)
        );
        assert_eq!(endpoint_uri("https://a.b:8000", &plain).unwrap(), ("https://a.b:8000".into(), "a.b".into(), true));
        let tls = args(false, Some("agent.flyte"));
        assert_eq!(endpoint_uri("[::1]:8000", &tls).unwrap(), ("https://[::1]:8000".into(), "::1".into(), true));
        let err = endpoint_uri("http://127.0.0.1:8000", &tls).unwrap_err();
        assert!(err.contains("--server-name asks for TLS: use https://127.0.0.1:8000"), "{err}");
        let err = endpoint_uri("dns:///agent:8000", &plain).unwrap_err();
        assert!(err.contains("not dns://"), "{err}");
    }
}
