//! Adaptive concurrency towards each service endpoint: how many calls an agent keeps in
//! flight to one host follows what that host answers, instead of a fixed number.
//!
//! A slow service that answers well should see thousands of calls at once (a chat
//! completion takes seconds; the agent only waits), while a fast one that rate-limits
//! should see no more than its quota allows. So the limit behaves like TCP's congestion
//! window (the anchors: TCP Reno, Netflix's concurrency-limits, Envoy's adaptive
//! concurrency filter):
//!
//! - **Slow start**: while nothing has pushed back, every answered call adds one, so the
//!   limit doubles per round trip, but only while it is put to use (calls wait, or at
//!   least half the slots are taken): an idle agent does not grow a limit it never tested.
//! - **Additive increase** after the first push-back: one more per round trip.
//! - **Multiplicative decrease** (×0.9) on a push-back: a 429 or 503, a rate-limit header
//!   saying the quota is spent (OpenAI's `x-ratelimit-remaining-requests: 0`), or latency
//!   rising to twice its long-run average (the service queueing). At most once per round
//!   trip: answers to calls sent before the last decrease say nothing about the new limit.
//! - **Retry-After** (`retry-after`, or `retry-after-ms` as OpenAI sends it) holds every
//!   new call to that endpoint until then.
//!
//! Calls wait for a slot in arrival order (a fair semaphore), and never past the point
//! where the service's usual latency would carry them over their deadline: such a call
//! gets [`Failure::Busy`] naming the limit (a sync task's retryable failure, a poll's
//! "still running", a create's `UNAVAILABLE`). Endpoints are keyed by `host:port`, at
//! most [`MAX_ENDPOINTS`] of them (hosts can come from tasks, after the trust check), so a
//! stream of distinct hosts cannot grow the process. The server's `max_concurrent_calls`
//! stays the operator's hard ceiling over all of an agent's calls.
//!
//! The limit, the calls in flight and waiting, push-backs and refused calls are exported
//! per agent and endpoint ([`metric`]). Written here rather than taken from a crate: the
//! adaptive-limit crates on crates.io are tower layers without deadline-bounded waits,
//! Retry-After pauses or rate-limit headers, which are the point.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderMap;
use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::failure::{Failure, retry_after};

/// Endpoints one agent keeps a limit for; beyond it, idle endpoints are forgotten first.
pub const MAX_ENDPOINTS: usize = 256;

/// The limit never goes below this: one call always proceeds, so recovery is possible.
const MIN_LIMIT: f64 = 1.0;
/// Nor above this (the server's ceiling binds long before).
const MAX_LIMIT: f64 = 1_048_576.0;
/// The multiplicative decrease.
const BACKOFF: f64 = 0.9;
/// Latency this many times its long-run average means the service is queueing.
const LATENCY_TOLERANCE: f64 = 2.0;
/// Answers before latency is trusted as a signal.
const LATENCY_WARMUP: u64 = 50;
/// Longest pause a Retry-After can impose (a hostile or broken header must not stall an
/// endpoint for a day).
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Metric names, labelled by `agent` (its settings section) and `endpoint` (`host:port`).
pub mod metric {
    /// The current adaptive limit.
    pub const LIMIT: &str = "flyte_agent_service_concurrency_limit";
    /// Calls in flight to the endpoint.
    pub const IN_FLIGHT: &str = "flyte_agent_service_calls_in_flight";
    /// Calls waiting for a slot (the queue depth).
    pub const WAITING: &str = "flyte_agent_service_calls_waiting";
    /// Answers that pushed back: 429, 503, or a spent rate-limit quota.
    pub const THROTTLED: &str = "flyte_agent_service_throttled_total";
    /// Calls that gave up waiting because their deadline could no longer be met.
    pub const REFUSED: &str = "flyte_agent_service_calls_refused_total";

    pub(crate) fn describe() {
        use metrics::{describe_counter, describe_gauge};
        describe_gauge!(LIMIT, "Calls the agent currently allows in flight to the service endpoint (adaptive).");
        describe_gauge!(IN_FLIGHT, "Calls in flight to the service endpoint.");
        describe_gauge!(WAITING, "Calls waiting for a slot to the service endpoint.");
        describe_counter!(THROTTLED, "Answers of the service endpoint that pushed back (429, 503, quota spent).");
        describe_counter!(REFUSED, "Calls that could not get a slot before their deadline.");
    }
}

/// An agent's limits, one per endpoint it calls.
#[derive(Debug)]
pub struct Limiter {
    agent: String,
    initial: usize,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl Limiter {
    /// The limits of the agent whose settings section is `agent`, each endpoint starting
    /// at `initial` calls in flight.
    pub fn new(agent: &str, initial: usize) -> Self {
        Self { agent: agent.to_owned(), initial: initial.max(1), endpoints: Mutex::new(HashMap::new()) }
    }

    /// The limit of `endpoint` (`host:port`), made on first use.
    pub fn endpoint(&self, endpoint: &str) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = map.get(endpoint) {
            return e.clone();
        }
        if map.len() >= MAX_ENDPOINTS {
            // Forget endpoints nobody is calling; their next call starts afresh.
            map.retain(|_, e| Arc::strong_count(e) > 1);
        }
        let e = Arc::new(Endpoint::new(&self.agent, endpoint, self.initial));
        if map.len() < MAX_ENDPOINTS {
            map.insert(endpoint.to_owned(), e.clone());
        }
        e
    }

    /// The limit of `url`'s endpoint.
    pub fn for_url(&self, url: &reqwest::Url) -> Arc<Endpoint> {
        let host = url.host_str().unwrap_or_default();
        match url.port_or_known_default() {
            Some(port) => self.endpoint(&format!("{host}:{port}")),
            None => self.endpoint(host),
        }
    }
}

/// One endpoint's adaptive limit (see the module docs).
#[derive(Debug)]
pub struct Endpoint {
    name: String,
    agent: String,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    gauges: Gauges,
}

#[derive(Debug)]
struct Gauges {
    limit: Gauge,
    in_flight: Gauge,
    waiting: Gauge,
    throttled: Counter,
    refused: Counter,
}

#[derive(Debug)]
struct State {
    /// The limit; slots exist for its whole part.
    limit: f64,
    /// Slots handed to the semaphore in total (`limit` rounded down).
    granted: usize,
    /// Slots to retire as calls return them (the limit fell while they were out).
    debt: usize,
    in_flight: usize,
    waiting: usize,
    /// Counts decreases; a call's answer may decrease only if no decrease happened
    /// since it was sent.
    epoch: u64,
    slow_start: bool,
    paused_until: Option<Instant>,
    /// Latency averages in seconds: recent (α 1/10) and long-run (α 1/100).
    recent: f64,
    long_run: f64,
    answers: u64,
}

/// What one call's answer says about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// No usable answer (a broken connection, a timeout): says nothing either way.
    Unanswered,
    /// Answered, not pushing back.
    Answered,
    /// Answered, and the quota is spent (the call itself went through).
    QuotaSpent,
    /// Refused for load (429, 503), to be tried again after the pause, if given.
    Throttled(Option<Duration>),
}

impl Signal {
    /// What an HTTP answer says: its status and the rate-limit headers.
    pub fn of(status: u16, headers: &HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        if status == 429 || status == 503 {
            let ms =
                header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0);
            let pause = ms
                .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                .or_else(|| header("retry-after").and_then(retry_after));
            return Self::Throttled(pause);
        }
        if header("x-ratelimit-remaining-requests").and_then(|v| v.parse::<u64>().ok()) == Some(0) {
            return Self::QuotaSpent;
        }
        Self::Answered
    }
}

impl Endpoint {
    fn new(agent: &str, name: &str, initial: usize) -> Self {
        let labels = [("agent", agent.to_owned()), ("endpoint", name.to_owned())];
        let gauges = Gauges {
            limit: gauge!(metric::LIMIT, &labels),
            in_flight: gauge!(metric::IN_FLIGHT, &labels),
            waiting: gauge!(metric::WAITING, &labels),
            throttled: counter!(metric::THROTTLED, &labels),
            refused: counter!(metric::REFUSED, &labels),
        };
        gauges.limit.set(initial as f64);
        Self {
            name: name.to_owned(),
            agent: agent.to_owned(),
            slots: Arc::new(Semaphore::new(initial)),
            state: Mutex::new(State {
                limit: initial as f64,
                granted: initial,
                debt: 0,
                in_flight: 0,
                waiting: 0,
                epoch: 0,
                slow_start: true,
                paused_until: None,
                recent: 0.0,
                long_run: 0.0,
                answers: 0,
            }),
            gauges,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current limit (whole calls).
    pub fn limit(&self) -> usize {
        self.lock().granted
    }

    /// Calls in flight and calls waiting.
    pub fn load(&self) -> (usize, usize) {
        let s = self.lock();
        (s.in_flight, s.waiting)
    }

    /// A slot for one call, waited for in arrival order until `deadline` less the
    /// endpoint's recent latency (no deadline: as long as it takes). `what` names the call
    /// in the message of the [`Failure::Busy`] a call that cannot be served gets.
    pub async fn acquire(self: &Arc<Self>, what: &str, deadline: Option<Instant>) -> Result<Permit, Failure> {
        let (expected, give_up) = {
            let mut s = self.lock();
            let expected = Duration::from_secs_f64(s.recent);
            let give_up = deadline.map(|d| d.checked_sub(expected).unwrap_or(d));
            s.waiting += 1;
            self.gauges.waiting.set(s.waiting as f64);
            (expected, give_up)
        };
        let acquire = self.slots.clone().acquire_owned();
        let slot = match give_up {
            Some(at) => tokio::time::timeout_at(at.into(), acquire).await.ok(),
            None => Some(acquire.await),
        };
        let mut permit = {
            let mut s = self.lock();
            s.waiting -= 1;
            self.gauges.waiting.set(s.waiting as f64);
            match slot {
                Some(Ok(slot)) => {
                    s.in_flight += 1;
                    self.gauges.in_flight.set(s.in_flight as f64);
                    Permit {
                        endpoint: self.clone(),
                        slot: Some(slot),
                        sent: Instant::now(),
                        epoch: s.epoch,
                        signal: Signal::Unanswered,
                    }
                }
                _ => {
                    self.gauges.refused.increment(1);
                    return Err(self.busy(what, &s));
                }
            }
        };
        // A Retry-After holds every call to the endpoint; the slot is kept meanwhile.
        let paused = self.lock().paused_until.filter(|p| *p > Instant::now());
        if let Some(until) = paused {
            if deadline.is_some_and(|d| until + expected > d) {
                self.gauges.refused.increment(1);
                let left = until.saturating_duration_since(Instant::now());
                return Err(Failure::Busy(format!(
                    "{what} was not sent: {} asked the agent to wait {:.1} s before calling again (Retry-After), \
                     which leaves this call too little of its deadline; the task can be retried",
                    self.name,
                    left.as_secs_f64()
                )));
            }
            tokio::time::sleep_until(until.into()).await;
            permit.sent = Instant::now();
        }
        Ok(permit)
    }

    fn busy(&self, what: &str, s: &State) -> Failure {
        let why = if s.slow_start {
            "it has not been raised further yet"
        } else {
            "lowered after the service pushed back or slowed down"
        };
        Failure::Busy(format!(
            "{what} was not sent: agent {} keeps at most {} calls in flight to {} (its adaptive concurrency limit; \
             {why}), {} calls were waiting, and this call's deadline would pass before its turn; the task can be \
             retried",
            self.agent, s.granted, self.name, s.waiting
        ))
    }

    /// Takes a call's answer into account and returns its slot.
    fn release(&self, slot: OwnedSemaphorePermit, sent: Instant, epoch: u64, signal: Signal) {
        let mut s = self.lock();
        s.in_flight -= 1;
        let latency = sent.elapsed().as_secs_f64();
        match signal {
            Signal::Unanswered => {}
            Signal::Answered => {
                let queueing = s.sample(latency);
                if queueing {
                    self.decrease(&mut s, epoch);
                } else if (s.in_flight + 1) * 2 >= s.granted || s.waiting > 0 {
                    let raised = s.limit + if s.slow_start { 1.0 } else { 1.0 / s.limit };
                    self.set_limit(&mut s, raised);
                }
            }
            Signal::QuotaSpent => {
                s.sample(latency);
                self.gauges.throttled.increment(1);
                self.decrease(&mut s, epoch);
            }
            Signal::Throttled(pause) => {
                self.gauges.throttled.increment(1);
                self.decrease(&mut s, epoch);
                if let Some(pause) = pause {
                    let until = Instant::now() + pause.min(MAX_PAUSE);
                    s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
                }
            }
        }
        self.gauges.in_flight.set(s.in_flight as f64);
        if s.debt > 0 {
            s.debt -= 1;
            slot.forget();
        } else {
            drop(s);
            drop(slot);
        }
    }

    /// ×[`BACKOFF`], unless a decrease already happened since this call was sent.
    fn decrease(&self, s: &mut State, epoch: u64) {
        if epoch != s.epoch {
            return;
        }
        s.epoch += 1;
        s.slow_start = false;
        let lowered = s.limit * BACKOFF;
        self.set_limit(s, lowered);
    }

    fn set_limit(&self, s: &mut State, limit: f64) {
        s.limit = limit.clamp(MIN_LIMIT, MAX_LIMIT);
        let target = s.limit as usize;
        if target > s.granted {
            let more = target - s.granted;
            let cancelled = more.min(s.debt);
            s.debt -= cancelled;
            self.slots.add_permits(more - cancelled);
        } else if target < s.granted {
            let fewer = s.granted - target;
            let idle = self.slots.forget_permits(fewer);
            s.debt += fewer - idle;
        }
        s.granted = target;
        self.gauges.limit.set(target as f64);
    }
}

impl State {
    /// Adds a latency sample; whether latency has risen enough to mean queueing.
    fn sample(&mut self, latency: f64) -> bool {
        self.answers += 1;
        if self.answers == 1 {
            (self.recent, self.long_run) = (latency, latency);
            return false;
        }
        self.recent += (latency - self.recent) / 10.0;
        self.long_run += (latency - self.long_run) / 100.0;
        self.answers > LATENCY_WARMUP && self.recent > LATENCY_TOLERANCE * self.long_run
    }
}

/// One call's slot; dropping it returns the slot, with what [`Permit::answered`] recorded.
#[derive(Debug)]
pub struct Permit {
    endpoint: Arc<Endpoint>,
    slot: Option<OwnedSemaphorePermit>,
    sent: Instant,
    epoch: u64,
    signal: Signal,
}

impl Permit {
    /// Records the service's answer.
    pub fn answered(&mut self, signal: Signal) {
        self.signal = signal;
    }

    /// Runs one attempt of an SDK's call with this slot: what the SDK's HTTP layer reports
    /// through [`observe`] while it runs is the answer; with no report, a success counts as
    /// answered and a failure as unanswered.
    pub async fn run<T, E>(mut self, attempt: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let seen = Arc::new(Mutex::new(None));
        let result = OBSERVED.scope(seen.clone(), attempt).await;
        let reported = *seen.lock().unwrap_or_else(PoisonError::into_inner);
        self.signal = reported.unwrap_or(if result.is_ok() { Signal::Answered } else { Signal::Unanswered });
        result
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.endpoint.release(slot, self.sent, self.epoch, self.signal);
        }
    }
}

tokio::task_local! {
    /// The answer an SDK's HTTP layer saw during the current attempt (see [`Permit::run`]).
    static OBSERVED: Arc<Mutex<Option<Signal>>>;
}

/// Whether the current task runs inside an SDK attempt's slot (see [`Permit::run`]).
pub fn in_attempt() -> bool {
    OBSERVED.try_with(|_| ()).is_ok()
}

/// For an SDK's HTTP layer (async-openai's tower service, Google's errors): reports the
/// status and headers of the answer the current attempt got. Outside an attempt, a no-op.
pub fn observe(status: u16, headers: &HeaderMap) {
    let _ = OBSERVED.try_with(|seen| {
        *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Signal::of(status, headers));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(initial: usize) -> Arc<Endpoint> {
        Limiter::new("test", initial).endpoint("svc:443")
    }

    async fn answer(e: &Arc<Endpoint>, signal: Signal) {
        let mut p = e.acquire("call", None).await.unwrap();
        p.answered(signal);
    }

    #[test]
    fn headers_say_throttled_spent_or_fine() {
        let mut h = HeaderMap::new();
        assert_eq!(Signal::of(200, &h), Signal::Answered);
        assert_eq!(Signal::of(503, &h), Signal::Throttled(None));
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(Signal::of(429, &h), Signal::Throttled(Some(Duration::from_secs(2))));
        // OpenAI's milliseconds are finer than the whole seconds of Retry-After.
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(Signal::of(429, &h), Signal::Throttled(Some(Duration::from_millis(250))));
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        assert_eq!(Signal::of(200, &h), Signal::QuotaSpent);
        h.insert("x-ratelimit-remaining-requests", "12".parse().unwrap());
        assert_eq!(Signal::of(200, &h), Signal::Answered);
    }

    #[tokio::test]
    async fn slow_start_doubles_a_limit_in_use_and_an_idle_one_stays() {
        let e = endpoint(4);
        // One call at a time never uses four slots: the limit is not tested, so not raised.
        for _ in 0..10 {
            answer(&e, Signal::Answered).await;
        }
        assert_eq!(e.limit(), 4);
        // Four in flight and four more waiting: each answer adds one.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(e.acquire("call", None).await.unwrap());
        }
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let e = e.clone();
                tokio::spawn(async move { drop(e.acquire("call", None).await) })
            })
            .collect();
        while e.load().1 < 4 {
            tokio::task::yield_now().await;
        }
        for p in &mut held {
            p.answered(Signal::Answered);
        }
        drop(held);
        assert_eq!(e.limit(), 8);
        for w in waiters {
            w.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_push_back_cuts_once_per_round_trip_then_growth_is_additive() {
        let e = endpoint(100);
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(e.acquire("call", None).await.unwrap());
        }
        // All hundred were sent before the cut: only the first 429 of them counts.
        for p in &mut held {
            p.answered(Signal::Throttled(None));
        }
        drop(held);
        assert_eq!(e.limit(), 90);
        // A call sent after the cut cuts again.
        answer(&e, Signal::QuotaSpent).await;
        assert_eq!(e.limit(), 81);
        // Now growth is about one per round trip, not one per answer.
        let mut held = Vec::new();
        for _ in 0..81 {
            held.push(e.acquire("call", None).await.unwrap());
        }
        for p in &mut held {
            p.answered(Signal::Answered);
        }
        drop(held);
        assert!((81..=82).contains(&e.limit()), "{}", e.limit());
        assert_eq!(e.load(), (0, 0));
    }

    #[tokio::test]
    async fn slots_taken_when_the_limit_falls_are_retired_as_they_return() {
        let e = endpoint(10);
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(e.acquire("call", None).await.unwrap());
        }
        held[0].answered(Signal::Throttled(None));
        held.remove(0);
        assert_eq!(e.limit(), 9);
        // 9 are still out and the limit is 9: a new call must wait.
        let waiting = tokio::time::timeout(Duration::from_millis(50), e.acquire("call", None)).await;
        assert!(waiting.is_err(), "no slot while 9 of 9 are out");
        drop(held.pop());
        let got = tokio::time::timeout(Duration::from_millis(50), e.acquire("call", None)).await;
        assert!(got.is_ok(), "a returned slot is free again");
    }

    #[tokio::test]
    async fn waiting_calls_are_served_in_arrival_order() {
        let e = endpoint(1);
        let first = e.acquire("call", None).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (e, order) = (e.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = e.acquire("call", None).await.unwrap();
                order.lock().unwrap().push(i);
            }));
            // Each queues before the next arrives.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(e.load(), (1, 5));
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_call_that_cannot_make_its_deadline_is_refused_naming_the_limit() {
        let e = endpoint(1);
        // The endpoint usually answers in 300 ms.
        {
            let mut p = e.acquire("call", None).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            p.answered(Signal::Answered);
        }
        // That answer raised the limit to 2 (slow start); both slots are taken.
        let held = [e.acquire("call", None).await.unwrap(), e.acquire("call", None).await.unwrap()];
        let start = Instant::now();
        let err = e.acquire("chat completion", Some(start + Duration::from_millis(500))).await.unwrap_err();
        // It gave up when only the usual latency was left, not at the deadline.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_millis(450), "{waited:?}");
        assert!(matches!(err, Failure::Busy(_)), "{err:?}");
        let m = err.message();
        assert!(m.contains("chat completion") && m.contains("at most 2 calls in flight to svc:443"), "{m}");
        drop(held);
    }

    #[tokio::test]
    async fn retry_after_holds_new_calls_and_refuses_those_it_would_make_late() {
        let e = endpoint(10);
        answer(&e, Signal::Throttled(Some(Duration::from_millis(200)))).await;
        let start = Instant::now();
        let late = e.acquire("call", Some(start + Duration::from_millis(100))).await.unwrap_err();
        assert!(late.message().contains("Retry-After"), "{}", late.message());
        drop(e.acquire("call", Some(start + Duration::from_secs(5))).await.unwrap());
        assert!(start.elapsed() >= Duration::from_millis(190), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn rising_latency_cuts_the_limit() {
        let e = endpoint(64);
        let one = |ms| {
            let e = e.clone();
            async move {
                let mut p = e.acquire("call", None).await.unwrap();
                // Backdated instead of slept: the sample is what matters.
                p.sent = Instant::now() - Duration::from_millis(ms);
                p.answered(Signal::Answered);
            }
        };
        for _ in 0..60 {
            one(10).await;
        }
        assert_eq!(e.limit(), 64, "steady latency, idle limit: no change");
        for _ in 0..10 {
            one(100).await;
        }
        assert!(e.limit() < 64, "ten-fold latency means queueing: {}", e.limit());
    }

    #[tokio::test]
    async fn endpoints_are_bounded_and_idle_ones_forgotten() {
        let l = Limiter::new("test", 2);
        let kept = l.endpoint("kept:1");
        for i in 0..(MAX_ENDPOINTS * 2) {
            drop(l.endpoint(&format!("host-{i}:443")));
        }
        let n = l.endpoints.lock().unwrap().len();
        assert!(n <= MAX_ENDPOINTS, "{n}");
        assert!(Arc::ptr_eq(&kept, &l.endpoint("kept:1")), "an endpoint in use is kept");
    }

    #[tokio::test]
    async fn an_sdk_attempt_takes_the_answer_its_http_layer_reported() {
        let e = endpoint(10);
        let p = e.acquire("call", None).await.unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1".parse().unwrap());
        let r: Result<(), ()> = p
            .run(async {
                observe(429, &h);
                Err(())
            })
            .await;
        assert!(r.is_err());
        assert_eq!(e.limit(), 9);
        // Outside an attempt, reporting does nothing.
        observe(429, &h);
        assert_eq!(e.limit(), 9);
    }
}
