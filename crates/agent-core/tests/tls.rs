//! TLS and mutual TLS on the gRPC port, with certificates from a throwaway CA: the server
//! presents its certificate, with a client CA it refuses clients without a certificate it
//! signed, unreadable or malformed files stop the server with a message naming the
//! setting and never the file's content, and a renewed certificate is picked up without a
//! restart (a broken renewal is not).

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::AgentService;
use agent_core::config::TlsConfig;
use agent_core::pb::admin;
use agent_core::pb::service::agent_metadata_service_client::AgentMetadataServiceClient;
use agent_core::server::AgentServer;
use agent_core::testing::pki::Ca;
use agent_core::testing::{secrets, test_config};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Checks for renewals are not what most tests are about: rarely.
const RELOAD: Duration = Duration::from_secs(60);

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agent-core-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts a server with `tls`; returns its port, or the start-up error.
async fn start(tls: TlsConfig) -> Result<u16, String> {
    start_with(tls, agent_core::config::Http2Config::default()).await
}

/// [`start`] with the HTTP/2 limits `http2`.
async fn start_with(tls: TlsConfig, http2: agent_core::config::Http2Config) -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = agent_core::config::ServerConfig { tls: Some(tls), http2, ..test_config() };
    let server = AgentServer::new(AgentService::new(testbed::test_agent::registry(), secrets(&[])), config);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(server.serve_on(listener, std::future::pending()).await);
    });
    // A server that fails to start says so at once; one that starts keeps running.
    match tokio::time::timeout(Duration::from_millis(300), rx).await {
        Ok(Ok(Err(e))) => Err(e),
        Ok(_) => Err("the server stopped".into()),
        Err(_) => Ok(port),
    }
}

async fn list_agents(channel: Channel) -> Result<usize, tonic::Status> {
    let r = AgentMetadataServiceClient::new(channel).list_agents(admin::ListAgentsRequest {}).await?;
    Ok(r.into_inner().agents.len())
}

async fn connect(port: u16, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://localhost:{port}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    endpoint.connect_timeout(Duration::from_secs(2)).connect().await.map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca() {
    let dir = temp_dir("server");
    let authority = Ca::new("test CA");
    let (cert, key) = authority.issue(&["localhost", "127.0.0.1"]);
    let tls = TlsConfig {
        cert_file: write(&dir, "cert.pem", &cert),
        key_file: write(&dir, "key.pem", &key),
        client_ca_file: None,
        reload_interval: RELOAD,
    };
    let port = start(tls).await.unwrap();

    let trusting =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&authority.pem)).domain_name("localhost");
    let channel = connect(port, Some(trusting)).await.unwrap();
    assert_eq!(list_agents(channel).await.unwrap(), 2);

    // A plaintext client gets nowhere.
    let plain = connect(port, None).await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => list_agents(ch).await.is_err(),
    };
    assert!(refused, "a plaintext call succeeded against a TLS server");

    // Nor does a client that trusts another CA.
    let other = Ca::new("someone else");
    let wrong = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&other.pem)).domain_name("localhost");
    let refused = match connect(port, Some(wrong)).await {
        Err(_) => true,
        Ok(ch) => list_agents(ch).await.is_err(),
    };
    assert!(refused, "a client that does not trust the server's CA got an answer");
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let dir = temp_dir("mutual");
    let authority = Ca::new("test CA");
    let (cert, key) = authority.issue(&["localhost"]);
    let clients = Ca::new("client CA");
    let tls = TlsConfig {
        cert_file: write(&dir, "cert.pem", &cert),
        key_file: write(&dir, "key.pem", &key),
        client_ca_file: Some(write(&dir, "clients.pem", &clients.pem)),
        reload_interval: RELOAD,
    };
    let port = start(tls).await.unwrap();
    let base = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&authority.pem)).domain_name("localhost");

    let (propeller_cert, propeller_key) = clients.issue(&["flytepropeller"]);
    let channel =
        connect(port, Some(base().identity(Identity::from_pem(&propeller_cert, &propeller_key)))).await.unwrap();
    assert_eq!(list_agents(channel).await.unwrap(), 2);

    let refused = |r: Result<Channel, String>| async move {
        match r {
            Err(_) => true,
            Ok(ch) => list_agents(ch).await.is_err(),
        }
    };
    assert!(refused(connect(port, Some(base())).await).await, "a client without a certificate got an answer");
    let rogue = Ca::new("rogue CA");
    let (rogue_cert, rogue_key) = rogue.issue(&["intruder"]);
    let with_rogue = base().identity(Identity::from_pem(&rogue_cert, &rogue_key));
    assert!(refused(connect(port, Some(with_rogue)).await).await, "a certificate from another CA was accepted");
}

#[tokio::test]
async fn bad_tls_files_stop_the_server_naming_the_setting_not_the_content() {
    let dir = temp_dir("bad");
    let authority = Ca::new("test CA");
    let (cert, key) = authority.issue(&["localhost"]);
    let cert_file = write(&dir, "cert.pem", &cert);

    let missing = dir.join("missing-key.pem");
    let err = start(TlsConfig {
        cert_file: cert_file.clone(),
        key_file: missing.clone(),
        client_ca_file: None,
        reload_interval: RELOAD,
    })
    .await
    .unwrap_err();
    assert!(err.contains("tls.key_file") && err.contains("missing-key.pem"), "{err}");

    let secret_looking = "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LXRvcC1zZWNyZXQ=\n-----END PRIVATE KEY-----\n";
    let garbage = write(&dir, "garbage.pem", secret_looking);
    let err = start(TlsConfig {
        cert_file: cert_file.clone(),
        key_file: garbage,
        client_ca_file: None,
        reload_interval: RELOAD,
    })
    .await
    .unwrap_err();
    assert!(err.contains("key_file is not a usable private key") && err.contains("garbage.pem"), "{err}");
    assert!(!err.contains("bm90LWEta2V5LXRvcC1zZWNyZXQ"), "the key file's content leaked: {err}");

    // A real key, but not the certificate's.
    let (_, other_key) = authority.issue(&["localhost"]);
    let other = write(&dir, "other-key.pem", &other_key);
    let err = start(TlsConfig {
        cert_file: cert_file.clone(),
        key_file: other,
        client_ca_file: None,
        reload_interval: RELOAD,
    })
    .await
    .unwrap_err();
    assert!(err.contains("the key does not fit the certificate"), "{err}");

    let not_a_ca = write(&dir, "clients.pem", "no certificates here\n");
    let key_file = write(&dir, "key.pem", &key);
    let err = start(TlsConfig { cert_file, key_file, client_ca_file: Some(not_a_ca), reload_interval: RELOAD })
        .await
        .unwrap_err();
    assert!(err.contains("tls.client_ca_file") && err.contains("holds no certificate"), "{err}");
}

/// A server on `cert`/`key` written to `dir`, checking them for renewals every 100 ms:
/// the two files and the port.
async fn renewing(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf, u16) {
    let (cert_file, key_file) = (write(dir, "cert.pem", cert), write(dir, "key.pem", key));
    let tls = TlsConfig {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        client_ca_file: None,
        reload_interval: Duration::from_millis(100),
    };
    (cert_file, key_file, start(tls).await.unwrap())
}

/// A client trusting `ca` for `localhost`.
fn trusting(ca: &Ca) -> Option<ClientTlsConfig> {
    Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)).domain_name("localhost"))
}

/// Whether a new connection with `tls` gets an answer.
async fn answers(port: u16, tls: Option<ClientTlsConfig>) -> bool {
    match connect(port, tls).await {
        Ok(ch) => list_agents(ch).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = temp_dir("renew");
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert, key) = old_ca.issue(&["localhost"]);
    let (cert_file, key_file, port) = renewing(&dir, &cert, &key).await;
    let answers = |tls: Option<ClientTlsConfig>| answers(port, tls);
    let before = connect(port, trusting(&old_ca)).await.unwrap();
    assert_eq!(list_agents(before.clone()).await.unwrap(), 2);
    assert!(!answers(trusting(&new_ca)).await);

    // The rotation writes the new pair; new connections get it within the interval.
    let (cert, key) = new_ca.issue(&["localhost"]);
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !answers(trusting(&new_ca)).await {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!answers(trusting(&old_ca)).await, "new connections still get the old certificate");
    // A connection made before the renewal keeps working.
    assert_eq!(list_agents(before).await.unwrap(), 2);

    // A half-written rotation (a key that does not fit) is refused; the last good pair stays.
    let (other_cert, _) = new_ca.issue(&["localhost"]);
    std::fs::write(&cert_file, &other_cert).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(answers(trusting(&new_ca)).await, "a broken renewal replaced the working certificate");
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_certificate_stops_the_server_naming_the_setting_and_dates() {
    let dir = temp_dir("expired");
    let authority = Ca::new("test CA");
    let (cert, key) = authority.issue_valid(&["localhost"], (2020, 1, 1), (2021, 1, 1));
    let err = start(TlsConfig {
        cert_file: write(&dir, "expired.pem", &cert),
        key_file: write(&dir, "expired-key.pem", &key),
        client_ca_file: None,
        reload_interval: RELOAD,
    })
    .await
    .unwrap_err();
    assert!(err.contains("tls.cert_file") && err.contains("expired.pem"), "{err}");
    assert!(err.contains("expired on Fri, 01 Jan 2021"), "{err}");

    let (cert, key) = authority.issue_valid(&["localhost"], (2999, 1, 1), (3000, 1, 1));
    let err = start(TlsConfig {
        cert_file: write(&dir, "future.pem", &cert),
        key_file: write(&dir, "future-key.pem", &key),
        client_ca_file: None,
        reload_interval: RELOAD,
    })
    .await
    .unwrap_err();
    assert!(err.contains("tls.cert_file") && err.contains("not valid until") && err.contains("2999"), "{err}");
}

#[tokio::test]
async fn a_renewal_to_an_expired_certificate_keeps_serving_the_current_one() {
    let dir = temp_dir("renew-expired");
    let (current_ca, expired_ca) = (Ca::new("current CA"), Ca::new("expired CA"));
    let (cert, key) = current_ca.issue(&["localhost"]);
    let (cert_file, key_file, port) = renewing(&dir, &cert, &key).await;
    let answers = |tls: Option<ClientTlsConfig>| answers(port, tls);
    assert!(answers(trusting(&current_ca)).await);

    // A matching pair, but expired: rustls alone would serve it and every client would
    // fail its handshake.
    let (cert, key) = expired_ca.issue_valid(&["localhost"], (2020, 1, 1), (2021, 1, 1));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(answers(trusting(&current_ca)).await, "an expired renewal replaced the working certificate");
    assert!(!answers(trusting(&expired_ca)).await, "the expired certificate is being served");
}

#[tokio::test]
async fn a_tls_connection_that_sends_half_a_preface_is_closed_after_the_header_read_timeout() {
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("half-preface");
    let authority = Ca::new("test CA");
    let (cert, key) = authority.issue(&["localhost"]);
    let tls = TlsConfig {
        cert_file: write(&dir, "cert.pem", &cert),
        key_file: write(&dir, "key.pem", &key),
        client_ca_file: None,
        reload_interval: RELOAD,
    };
    let limit = Duration::from_millis(400);
    let http2 = agent_core::config::Http2Config { header_read_timeout: limit, ..Default::default() };
    let port = start_with(tls, http2).await.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(authority.pem.as_bytes()).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("the TLS handshake itself succeeds");
    stream.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..12]).await.unwrap();
    stream.flush().await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "a half-open TLS connection was still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= limit - Duration::from_millis(100), "closed too early: {:?}", started.elapsed());
}
