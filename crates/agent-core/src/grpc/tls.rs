//! Server TLS with certificates that renew without a restart.
//!
//! cert-manager (or any rotation) rewrites the Secret mounted in the pod; the kubelet
//! swaps the files in place. The server checks the files every `tls.reload_interval` and,
//! when they changed, loads the new certificate and key, checks that they fit, and uses
//! them for new connections; connections already open keep theirs. A broken new pair is
//! logged and the previous one kept, so a half-written rotation cannot take the agent
//! down. The client CA bundle (mutual TLS) is read at start-up only.
//!
//! A certificate outside its validity period is refused too: rustls serves whatever it
//! is given, and clients would then fail every handshake with an error about the server.
//! At start-up that stops the agent naming `tls.cert_file` and the dates; on renewal the
//! last good pair stays and a warning says why.
//!
//! Handshakes run on their own tasks with a timeout, so a client that stalls in the
//! handshake delays nobody else.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::http2::FirstHeadersBy;
use crate::config::TlsConfig;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("tls.{key} {}: cannot read it: {e}", path.display()))
}

/// The certificate chain and key in `cert` and `key` (PEM), checked to parse and to fit
/// each other. Messages name the problem, never the key's content.
fn certified_key(cert: &[u8], key: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("cert_file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key_file is not a PEM private key: {e}"))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key_file is not a usable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    Ok(certified)
}

/// Why a certificate cannot be served now, judged by its validity period.
#[derive(Debug, PartialEq, Eq)]
enum Validity {
    /// Valid now.
    Current,
    /// Not valid yet: may become usable later without the files changing.
    NotYet(String),
    /// Expired (or unreadable dates): never usable.
    Never(String),
}

/// Checks the leaf certificate (the chain's first) against the clock.
fn validity(certified: &CertifiedKey) -> Validity {
    let Some(leaf) = certified.cert.first() else {
        return Validity::Never("cert_file holds no certificate".into());
    };
    let cert = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => cert,
        Err(e) => return Validity::Never(format!("cert_file's first certificate cannot be read: {e}")),
    };
    let period = cert.validity();
    let show = |t: x509_parser::time::ASN1Time| t.to_rfc2822().unwrap_or_else(|_| t.to_string());
    let now = x509_parser::time::ASN1Time::now();
    if now > period.not_after {
        Validity::Never(format!(
            "the certificate in tls.cert_file expired on {} (valid from {}); install a renewed certificate",
            show(period.not_after),
            show(period.not_before)
        ))
    } else if now < period.not_before {
        Validity::NotYet(format!(
            "the certificate in tls.cert_file is not valid until {} (expires {}); check the issuer's and this \
             machine's clocks",
            show(period.not_before),
            show(period.not_after)
        ))
    } else {
        Validity::Current
    }
}

/// What the files held when last read, to notice a change without keeping the key's bytes.
fn fingerprint(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (cert, key).hash(&mut h);
    h.finish()
}

/// The server certificate in use, swapped when the files change.
#[derive(Debug)]
pub(crate) struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, u64)>,
}

impl Reloading {
    fn load(config: &TlsConfig) -> Result<Self, String> {
        let (cert, key) = (read("cert_file", &config.cert_file)?, read("key_file", &config.key_file)?);
        let located = |e: String| {
            format!("tls: {e} (cert_file {}, key_file {})", config.cert_file.display(), config.key_file.display())
        };
        let certified = certified_key(&cert, &key).map_err(located)?;
        match validity(&certified) {
            Validity::Current => {}
            Validity::NotYet(e) | Validity::Never(e) => return Err(located(e)),
        }
        Ok(Self {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            current: RwLock::new((Arc::new(certified), fingerprint(&cert, &key))),
        })
    }

    /// Re-reads the files; swaps in a changed pair that is valid. Returns whether it did.
    pub(crate) fn reload(&self) -> bool {
        let (cert, key) = match (read("cert_file", &self.cert_file), read("key_file", &self.key_file)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(message = "Cannot read the TLS files; keeping the current certificate.", error = %e);
                return false;
            }
        };
        let seen = fingerprint(&cert, &key);
        if self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1 == seen {
            return false;
        }
        let certified = match certified_key(&cert, &key) {
            Ok(certified) => certified,
            Err(e) => return self.refuse(seen, &e),
        };
        match validity(&certified) {
            Validity::Current => {}
            Validity::Never(e) => return self.refuse(seen, &e),
            Validity::NotYet(e) => {
                // Not remembered as seen: the same files are checked again next time, and
                // served once their period starts.
                tracing::warn!(
                    message = "The renewed TLS certificate is not valid yet; keeping the current certificate.",
                    error = %e,
                    cert_file = %self.cert_file.display()
                );
                return false;
            }
        }
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(certified), seen);
        tracing::info!(message = "Loaded the renewed TLS certificate.", cert_file = %self.cert_file.display());
        true
    }

    /// Keeps the current pair over files that cannot be served, and remembers them so the
    /// warning comes once, not every interval.
    fn refuse(&self, seen: u64, error: &str) -> bool {
        self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner).1 = seen;
        tracing::warn!(
            message = "The TLS files changed but are not a usable pair; keeping the current certificate.",
            error = %error,
            cert_file = %self.cert_file.display()
        );
        false
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone())
    }
}

/// The server side of [`TlsConfig`], built at start-up: files read and checked, so a bad
/// path or PEM stops the agent with a message naming the setting.
#[derive(Clone)]
pub(crate) struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    certificate: Arc<Reloading>,
    reload_interval: Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.certificate.cert_file)
            .field("reload_interval", &self.reload_interval)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub(crate) fn new(config: &TlsConfig) -> Result<Self, String> {
        let certificate = Arc::new(Reloading::load(config)?);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let builder = match &config.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let ca = read("client_ca_file", path)?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&ca) {
                    let cert =
                        cert.map_err(|e| format!("tls.client_ca_file {}: not PEM certificates: {e}", path.display()))?;
                    roots.add(cert).map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("tls.client_ca_file {}: holds no certificate", path.display()));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(certificate.clone());
        // gRPC is HTTP/2 only.
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            certificate,
            reload_interval: config.reload_interval,
        })
    }

    /// Checks the files every `reload_interval` (0: never) until the returned task is aborted.
    pub(crate) fn watch(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.reload_interval.is_zero() {
            return None;
        }
        let (certificate, every) = (self.certificate.clone(), self.reload_interval);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // File reads are small; a blocking thread keeps them off the reactor anyway.
                let c = certificate.clone();
                let _ = tokio::task::spawn_blocking(move || c.reload()).await;
            }
        }))
    }

    /// TLS connections from plain TCP ones, each handshake on its own task. Each must
    /// finish its handshake and send its first call's headers within `first_headers` of
    /// being accepted.
    pub(crate) fn incoming<S>(
        &self,
        tcp: S,
        first_headers: Duration,
    ) -> impl Stream<Item = Result<FirstHeadersBy<TlsStream<TcpStream>>, std::io::Error>> + use<S>
    where
        S: Stream<Item = Result<TcpStream, std::io::Error>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            let mut tcp = std::pin::pin!(tcp);
            loop {
                // Stop accepting (and release the port) once the server is gone.
                let conn = tokio::select! {
                    () = tx.closed() => return,
                    conn = tcp.next() => conn,
                };
                let Some(conn) = conn else { return };
                let Ok(stream) = conn else { continue };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let accepted = tokio::time::Instant::now();
                    let deadline = accepted + first_headers;
                    let handshake_by = deadline.min(accepted + HANDSHAKE_TIMEOUT);
                    match tokio::time::timeout_at(handshake_by, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(FirstHeadersBy::new(tls, deadline))).await;
                        }
                        Ok(Err(e)) => tracing::debug!(message = "TLS handshake failed.", error = %e),
                        Err(_) => tracing::debug!(message = "TLS handshake timed out."),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}
