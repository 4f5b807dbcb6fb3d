//! Retrying transient failures of an external service inside the caller's deadline.
//!
//! Propeller gives each call a deadline (10 s by default). A status poll that hits a 503
//! should be retried with backoff while time remains, honouring `Retry-After`, and the
//! agent must still answer before the deadline. [`retry`] does that for any operation;
//! the agent says which errors are worth retrying.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};

use crate::agent::Context;

/// Whether an error is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transient: try again, after the given delay if the service named one.
    Retry(Option<Duration>),
    /// Permanent: give up at once.
    Fail,
}

/// Backoff settings.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// First delay.
    pub min_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Most attempts after the first.
    pub max_retries: usize,
    /// Time budget when the caller set no deadline.
    pub default_budget: Duration,
    /// Time kept back from the deadline to build and send the answer.
    pub margin: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_retries: 8,
            default_budget: Duration::from_secs(8),
            margin: Duration::from_millis(500),
        }
    }
}

impl RetryConfig {
    /// When retrying must stop for this call.
    pub fn deadline(&self, ctx: &Context) -> Instant {
        let budget = ctx.time_left().map_or(self.default_budget, |t| t.saturating_sub(self.margin));
        Instant::now() + budget
    }
}

/// Runs `op` until it succeeds, fails permanently, or the next wait would end after
/// `deadline`; returns the last error then. `op` gets the time left, for its own timeout.
pub async fn retry<T, E, Fut>(
    config: &RetryConfig,
    deadline: Instant,
    mut op: impl FnMut(Duration) -> Fut,
    classify: impl Fn(&E) -> Verdict,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(config.min_delay)
        .with_max_delay(config.max_delay)
        .with_max_times(config.max_retries)
        .with_jitter();
    let attempt = || op(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(classify(e), Verdict::Retry(_)))
        .adjust(|e, planned| {
            let wait = match classify(e) {
                Verdict::Retry(Some(after)) => Some(after),
                _ => planned,
            }?;
            // Waiting past the deadline would only make the caller time out.
            (Instant::now() + wait < deadline).then_some(wait)
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> RetryConfig {
        RetryConfig { min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5), ..Default::default() }
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, &str> = retry(
            &fast(),
            Instant::now() + Duration::from_secs(5),
            |_| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 { Err("busy") } else { Ok(n) }
            },
            |_| Verdict::Retry(None),
        )
        .await;
        assert_eq!(r, Ok(3));
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once() {
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry(
            &fast(),
            Instant::now() + Duration::from_secs(5),
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("bad request")
            },
            |_| Verdict::Fail,
        )
        .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err("bad request"), 1));
    }

    #[tokio::test]
    async fn retry_after_is_honoured_but_never_past_the_deadline() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let r: Result<(), &str> = retry(
            &fast(),
            start + Duration::from_millis(300),
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("429")
            },
            |_| Verdict::Retry(Some(Duration::from_millis(120))),
        )
        .await;
        assert!(r.is_err());
        // Attempts at 0, ~120 and ~240 ms fit; the next wait would end past 300 ms.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(start.elapsed() < Duration::from_millis(300));
    }
}
