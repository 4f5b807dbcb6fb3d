//! Test support (feature `test-util`): a Propeller-like executor over gRPC for agent-core's
//! in-process [`TestServer`], as `server.executor(poll_interval)` once [`TestServerExt`]
//! is in scope.

use std::future::Future;
use std::time::Duration;

use agent_core::testing::TestServer;

use crate::{ExecutorOptions, GrpcBackend, LocalExecutor};

/// The executor of a [`TestServer`]; agent-core cannot offer it, not depending on this crate.
pub trait TestServerExt {
    /// A Propeller-like executor over gRPC, polling every `poll_interval`.
    fn executor(&self, poll_interval: Duration) -> impl Future<Output = LocalExecutor<GrpcBackend>> + Send;
}

impl TestServerExt for TestServer {
    async fn executor(&self, poll_interval: Duration) -> LocalExecutor<GrpcBackend> {
        let backend = GrpcBackend::connect(&self.endpoint(), Duration::from_secs(10)).await.expect("connect");
        LocalExecutor::new(backend, ExecutorOptions { poll_interval, ..Default::default() })
    }
}
