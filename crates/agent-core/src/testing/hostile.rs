//! Red-team helpers for the credential invariant: a trap listener standing in for a host an
//! attacker controls, the disguises a host can take inside a template or a meta, and a
//! check that an agent refuses every one of them before any I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::{TestServer, flyte2};
use crate::agent::{TaskCategory, TaskRequest};
use crate::pb::admin;

/// A listener on `127.0.0.2` that counts every connection reaching it (and reads what
/// the client sends, so a TLS ClientHello or an HTTP request both count).
#[derive(Debug)]
pub struct Trap {
    addr: SocketAddr,
    reached: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Trap {
    /// Starts listening on a free port of `127.0.0.2`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.2", 0)).await.expect("127.0.0.2 is loopback on Linux");
        let addr = listener.local_addr().expect("bound");
        let reached = Arc::new(AtomicUsize::new(0));
        let count = reached.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0_u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await;
                });
            }
        });
        Self { addr, reached, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections reached it.
    pub fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Values that name `trap` in disguise, as an attacker would put them where a template or
/// meta names an account, instance or host: userinfo, fragment, query, path, encoded
/// slash, backslash, trailing dot, IPv6 literal, full-width look-alike digits, upper case
/// and a bare `host:port`. Formatted naively into `https://{value}.service.com/…` or
/// `https://{value}/…`, each reaches the trap.
pub fn hostile_hosts(trap: SocketAddr) -> Vec<String> {
    let (ip, port) = (trap.ip(), trap.port());
    let fullwidth: String = ip
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_digit() { char::from_u32(c as u32 - '0' as u32 + 0xFF10).unwrap_or(c) } else { c })
        .collect();
    vec![
        format!("acme.x@{ip}:{port}/"),
        format!("ACME.X@{ip}:{port}/"),
        format!("{ip}:{port}#"),
        format!("{ip}:{port}?"),
        format!("{ip}:{port}/"),
        format!("{ip}:{port}%2F"),
        format!("{ip}:{port}\\"),
        format!("{ip}.:{port}/"),
        format!("[::ffff:{ip}]:{port}/"),
        format!("{fullwidth}:{port}/"),
        format!("{ip}:{port}"),
        format!("https://{ip}:{port}"),
    ]
}

/// Whether a status is the refusal the credential invariant asks for: the request's fault
/// (`INVALID_ARGUMENT`) or a host the agent does not trust (`PERMISSION_DENIED`).
fn refused(result: &Result<(), tonic::Status>) -> bool {
    result.as_ref().is_err_and(|s| matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::PermissionDenied))
}

/// Whether an answer is anything but a failure of the agent itself.
fn contained(result: &Result<(), tonic::Status>) -> bool {
    !result.as_ref().is_err_and(|s| matches!(s.code(), tonic::Code::Internal | tonic::Code::Unknown))
}

/// Sends `task` as CreateTask over both protocol generations, and each of `metas` (of
/// version 0 of `task_type`) as GetTask and DeleteTask over both; every call must be
/// refused with `INVALID_ARGUMENT` or `PERMISSION_DENIED`. `what` names the case in the
/// panic message.
pub async fn assert_refused(
    server: &TestServer,
    task_type: &str,
    task: Option<&TaskRequest>,
    metas: &[Vec<u8>],
    what: &str,
) {
    send_all(server, task_type, task, metas, what, refused).await;
}

/// For agents whose hosts come from configuration only (the value lands in a header, a
/// path or a body, never in a host): sends the same calls as [`assert_refused`]. Each call
/// may be served or refused, but never with `INTERNAL` or `UNKNOWN`; the caller then
/// checks its [`Trap`] saw nothing.
pub async fn assert_contained(
    server: &TestServer,
    task_type: &str,
    task: Option<&TaskRequest>,
    metas: &[Vec<u8>],
    what: &str,
) {
    send_all(server, task_type, task, metas, what, contained).await;
}

#[allow(deprecated)]
async fn send_all(
    server: &TestServer,
    task_type: &str,
    task: Option<&TaskRequest>,
    metas: &[Vec<u8>],
    what: &str,
    ok: fn(&Result<(), tonic::Status>) -> bool,
) {
    let mut v1 = server.async_client().await;
    let mut v2 = server.connector_client().await;
    if let Some(task) = task {
        let a = v1.create_task(super::create_request(task)).await.map(|_| ());
        assert!(ok(&a), "Flyte 1 CreateTask with {what}: {a:?}");
        let b = v2.create_task(flyte2::create_request(task, None)).await.map(|_| ());
        assert!(ok(&b), "Flyte 2 CreateTask with {what}: {b:?}");
    }
    for meta in metas {
        let category = Some(TaskCategory::new(task_type, 0).to_proto());
        let get = admin::GetTaskRequest {
            resource_meta: meta.clone(),
            task_category: category.clone(),
            task_type: task_type.to_owned(),
            ..Default::default()
        };
        let a = v1.get_task(get).await.map(|_| ());
        assert!(ok(&a), "Flyte 1 GetTask with {what}: {a:?}");
        let del = admin::DeleteTaskRequest {
            resource_meta: meta.clone(),
            task_category: category,
            task_type: task_type.to_owned(),
        };
        let b = v1.delete_task(del).await.map(|_| ());
        assert!(ok(&b), "Flyte 1 DeleteTask with {what}: {b:?}");
        let c = v2.get_task(flyte2::get_request(task_type, meta, None)).await.map(|_| ());
        assert!(ok(&c), "Flyte 2 GetTask with {what}: {c:?}");
        let d = v2.delete_task(flyte2::delete_request(task_type, meta, None)).await.map(|_| ());
        assert!(ok(&d), "Flyte 2 DeleteTask with {what}: {d:?}");
    }
}
