//! Adaptive concurrency towards each service endpoint: how many calls an agent keeps in
//! flight to one host follows what that host answers, instead of a fixed number.
//!
//! A slow service that answers well should see thousands of calls at once (a chat
//! completion takes seconds; the agent only waits), while a fast one that rate-limits
//! should see no more than its quota allows. So the limit behaves like TCP's congestion
//! window (the anchors: TCP Reno, Netflix's concurrency-limits, Envoy's adaptive
//! concurrency filter):
//!
//! - **First contact**: one call goes alone until the endpoint has answered once. It
//!   opens the connection and learns whether the service speaks HTTP/2; calls sent together
//!   before that would each open a connection of their own.
//! - **Slow start**: while nothing has pushed back, every answered call adds one, so the
//!   limit doubles per round trip, but only while it is put to use (calls wait, or at
//!   least half the slots are taken): an idle agent does not grow a limit it never tested.
//! - **Additive increase** after the first push-back: one more per round trip.
//! - **Multiplicative decrease** (×0.9) on a push-back: a 429 or 503, a rate-limit header
//!   saying the quota is spent (OpenAI's `x-ratelimit-remaining-requests: 0`), or latency
//!   rising to twice its long-run average (the service queueing). At most once per round
//!   trip: answers to calls sent before the last decrease say nothing about the new limit,
//!   except that each further refusal among them takes one more slot away, down to half
//!   the limit before the decrease. So the cut grows with the share of a round trip's
//!   calls that were refused (as DCTCP's does with the share of marked packets): a limit
//!   slightly too high loses 10%, one far too high up to half per round trip.
//! - **Pauses**: `Retry-After` (or `retry-after-ms`, as OpenAI sends it) holds every new
//!   call to that endpoint until then; a spent quota holds them for the time one request's
//!   worth of quota takes to come back (`x-ratelimit-reset-requests` ÷
//!   `x-ratelimit-limit-requests`).
//!
//! Calls wait for a slot in arrival order (a fair semaphore), and never past the point
//! where the service's usual latency (with a quarter more for its spread, as learned while
//! they wait) would carry them over their deadline: such a call is not sent, and gets
//! [`Failure::Busy`] naming the limit (a sync task's retryable failure, a poll's "still
//! running", a create's `UNAVAILABLE`). Endpoints are keyed by `host:port`, at
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
/// Shortest pause after a refusal that names one: a service answering `Retry-After: 0`
/// to every call must not be called back in a tight loop.
const MIN_PAUSE: Duration = Duration::from_millis(50);
/// A call is sent only with at least this many times the endpoint's recent latency left
/// of its deadline: answers vary around the average, and a call sent with just the average
/// left times out about half the time, having spent the service's quota.
const HEADROOM: f64 = 1.25;
/// A call waiting for a slot looks at least this often at whether its deadline can still
/// be met: the endpoint's latency is learned, and changes, while calls wait.
const RECHECK: Duration = Duration::from_secs(1);
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
    /// The limit to open with once the endpoint has answered ([`Self::warm`]).
    initial: f64,
    /// Whether the endpoint has answered yet; until then one call at a time.
    warm: bool,
    /// Whether it answers over HTTP/2, once known: then calls spread over lanes.
    http2: bool,
    /// The limit before the last decrease.
    cut_from: f64,
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
    /// Answered, and the quota is spent (the call itself went through); the next request's
    /// worth of quota is back after the pause, when the headers say.
    QuotaSpent(Option<Duration>),
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
            return Self::Throttled(pause.map(|p| p.max(MIN_PAUSE)));
        }
        if header("x-ratelimit-remaining-requests").and_then(|v| v.parse::<u64>().ok()) == Some(0) {
            let reset = header("x-ratelimit-reset-requests").and_then(go_duration);
            let quota = header("x-ratelimit-limit-requests").and_then(|v| v.parse::<u32>().ok()).filter(|q| *q > 0);
            return Self::QuotaSpent(reset.zip(quota).map(|(reset, quota)| reset / quota));
        }
        Self::Answered
    }
}

/// A duration as OpenAI writes it (Go's format): `20ms`, `1.5s`, `6m0s`, `1h2m3s`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit..];
    }
    (!text.is_empty() && total.is_finite()).then(|| Duration::from_secs_f64(total))
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
        gauges.limit.set(1.0);
        Self {
            name: name.to_owned(),
            agent: agent.to_owned(),
            slots: Arc::new(Semaphore::new(1)),
            state: Mutex::new(State {
                limit: 1.0,
                granted: 1,
                initial: initial as f64,
                warm: false,
                http2: false,
                debt: 0,
                in_flight: 0,
                waiting: 0,
                epoch: 0,
                cut_from: initial as f64,
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
    ///
    /// The give-up point follows the latency as it is learned while the call waits: calls
    /// that start waiting before the endpoint has ever answered would otherwise wait their
    /// whole deadline and then be sent with no time to be answered, spending the service's
    /// quota on calls that time out (and freeing their slots early, which sends more).
    pub async fn acquire(self: &Arc<Self>, what: &str, deadline: Option<Instant>) -> Result<Permit, Failure> {
        let give_up = |d: Instant| d.checked_sub(self.expected()).unwrap_or(d);
        // Counted as waiting until this returns or is dropped (a caller that gives up).
        let waiting = Waiting::new(self);
        let mut acquire = std::pin::pin!(self.slots.clone().acquire_owned());
        let slot = match deadline {
            None => acquire.await.ok(),
            // Looked at again at least every [`RECHECK`]; waiting again keeps the call's
            // place in the queue.
            Some(d) => loop {
                let wake = give_up(d).min(Instant::now() + RECHECK);
                if let Ok(slot) = tokio::time::timeout_at(wake.into(), acquire.as_mut()).await {
                    break slot.ok();
                }
                if Instant::now() >= give_up(d) {
                    break None;
                }
            },
        };
        drop(waiting);
        let permit = {
            let mut s = self.lock();
            let Some(slot) = slot else {
                self.gauges.refused.increment(1);
                return Err(self.busy(what, &s));
            };
            s.in_flight += 1;
            self.gauges.in_flight.set(s.in_flight as f64);
            Permit {
                endpoint: self.clone(),
                lane: if s.http2 { (s.in_flight - 1) / super::STREAMS_PER_LANE } else { 0 },
                http2: None,
                slot: Some(slot),
                sent: Instant::now(),
                epoch: s.epoch,
                signal: Signal::Unanswered,
            }
        };
        // A Retry-After holds every call to the endpoint; the slot is kept meanwhile. A call
        // that would then (or already does) have less time left than the service takes is
        // not sent: dropping the permit returns the slot unanswered.
        let now = Instant::now();
        let until = self.lock().paused_until.filter(|p| *p > now);
        if deadline.is_some_and(|d| until.unwrap_or(now) > give_up(d)) {
            self.gauges.refused.increment(1);
            let refusal = match until {
                Some(until) => Failure::Busy(format!(
                    "{what} was not sent: {} asked the agent to wait {:.1} s before calling again (Retry-After), \
                     which leaves this call too little of its deadline; the task can be retried",
                    self.name,
                    until.saturating_duration_since(now).as_secs_f64()
                )),
                None => self.busy(what, &self.lock()),
            };
            drop(permit);
            return Err(refusal);
        }
        let mut permit = permit;
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
            permit.sent = Instant::now();
        }
        Ok(permit)
    }

    /// How long a call must have left to be worth sending: what the endpoint has recently
    /// taken to answer, with [`HEADROOM`] (zero before its first answer).
    fn expected(&self) -> Duration {
        Duration::from_secs_f64(self.lock().recent * HEADROOM)
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
    fn release(&self, slot: OwnedSemaphorePermit, sent: Instant, epoch: u64, signal: Signal, http2: Option<bool>) {
        let mut s = self.lock();
        s.in_flight -= 1;
        let latency = sent.elapsed().as_secs_f64();
        if let Some(h2) = http2 {
            s.http2 = h2;
        }
        if !s.warm && signal != Signal::Unanswered {
            s.warm = true;
            let opening = s.limit.max(s.initial);
            self.set_limit(&mut s, opening);
        }
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
            Signal::QuotaSpent(pause) => {
                s.sample(latency);
                self.gauges.throttled.increment(1);
                self.decrease(&mut s, epoch);
                s.pause(pause);
            }
            Signal::Throttled(pause) => {
                self.gauges.throttled.increment(1);
                if epoch + 1 == s.epoch {
                    // Another refusal of the round trip just cut: the cut was not deep enough.
                    let floor = (s.cut_from / 2.0).max(MIN_LIMIT);
                    let lowered = (s.limit - 1.0).max(floor);
                    if lowered < s.limit {
                        self.set_limit(&mut s, lowered);
                    }
                } else {
                    self.decrease(&mut s, epoch);
                }
                s.pause(pause);
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
        s.cut_from = s.limit;
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
    /// Holds new calls for `pause` (at most [`MAX_PAUSE`]), unless held longer already.
    fn pause(&mut self, pause: Option<Duration>) {
        if let Some(pause) = pause {
            let until = Instant::now() + pause.min(MAX_PAUSE);
            self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    /// Adds a latency sample; whether latency has risen enough to mean queueing.
    fn sample(&mut self, latency: f64) -> bool {
        self.answers += 1;
        if self.answers == 1 {
            (self.recent, self.long_run) = (latency, latency);
            return false;
        }
        self.recent += (latency - self.recent) / 10.0;
        // The plain mean while warming up, so one odd first answer does not set the baseline.
        let weight = (self.answers as f64).min(100.0);
        self.long_run += (latency - self.long_run) / weight;
        self.answers > LATENCY_WARMUP && self.recent > LATENCY_TOLERANCE * self.long_run
    }
}

/// A call waiting for a slot, counted in the endpoint's queue depth while it lives.
struct Waiting<'a>(&'a Endpoint);

impl<'a> Waiting<'a> {
    fn new(endpoint: &'a Endpoint) -> Self {
        let mut s = endpoint.lock();
        s.waiting += 1;
        endpoint.gauges.waiting.set(s.waiting as f64);
        Self(endpoint)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.waiting -= 1;
        self.0.gauges.waiting.set(s.waiting as f64);
    }
}

/// One call's slot; dropping it returns the slot, with what [`Permit::answered`] recorded.
#[derive(Debug)]
pub struct Permit {
    endpoint: Arc<Endpoint>,
    lane: usize,
    /// Whether the answer came over HTTP/2, when the sender knows.
    http2: Option<bool>,
    slot: Option<OwnedSemaphorePermit>,
    sent: Instant,
    epoch: u64,
    signal: Signal,
}

impl Permit {
    /// Which of the agent's [`super::Lanes`] the call goes out on: the calls in flight to
    /// the endpoint when it was sent, per [`super::STREAMS_PER_LANE`], so a light load
    /// shares one connection and a heavy one spreads over as many as it needs.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Records the service's answer.
    pub fn answered(&mut self, signal: Signal) {
        self.signal = signal;
    }

    /// Records the protocol the answer came over (HTTP/2 or not).
    pub fn over_http2(&mut self, http2: bool) {
        self.http2 = Some(http2);
    }

    /// Whether the service refused the call for load (429, 503) and said when to come back
    /// (`Retry-After`). Such a call is sent again once the pause is over and the limit lets
    /// it, for as long as its deadline allows, without counting as a failed attempt: the
    /// refusal was the service's load, not the call's fault. A refusal without a pause is
    /// retried as any transient failure is, with backoff and a bounded number of attempts,
    /// so a service that is down is not called in a loop.
    pub fn throttled(&self) -> bool {
        matches!(self.signal, Signal::Throttled(Some(_)))
    }

    /// Runs one attempt of an SDK's call with this slot: what the SDK's HTTP layer reports
    /// through [`observe`] while it runs is the answer; with no report, a success counts as
    /// answered and a failure as unanswered. Returns the result, and whether the service
    /// refused the call for load. A combinator, so the attempt is not held twice.
    pub fn run<T, E>(
        mut self,
        attempt: impl Future<Output = Result<T, E>>,
    ) -> impl Future<Output = (Result<T, E>, bool)> {
        let seen = Arc::new(Attempt { lane: self.lane, seen: Mutex::new(None) });
        futures_util::FutureExt::map(OBSERVED.scope(seen.clone(), attempt), move |result| {
            let reported = *seen.seen.lock().unwrap_or_else(PoisonError::into_inner);
            self.http2 = reported.and_then(|(_, h2)| h2);
            let reported = reported.map(|(signal, _)| signal);
            self.signal = reported.unwrap_or(if result.is_ok() { Signal::Answered } else { Signal::Unanswered });
            (result, self.throttled())
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.endpoint.release(slot, self.sent, self.epoch, self.signal, self.http2);
        }
    }
}

/// What an SDK's HTTP layer learns from, and tells, the attempt it runs in.
#[derive(Debug)]
struct Attempt {
    lane: usize,
    seen: Mutex<Option<(Signal, Option<bool>)>>,
}

tokio::task_local! {
    /// The current SDK attempt (see [`Permit::run`]).
    static OBSERVED: Arc<Attempt>;
}

/// For an SDK's HTTP layer: the lane of the current attempt (0 outside one).
pub fn lane() -> usize {
    OBSERVED.try_with(|a| a.lane).unwrap_or(0)
}

/// Whether the current task runs inside an SDK attempt's slot (see [`Permit::run`]).
pub fn in_attempt() -> bool {
    OBSERVED.try_with(|_| ()).is_ok()
}

/// For an SDK's HTTP layer (async-openai's tower service, Google's errors): reports the
/// status and headers of the answer the current attempt got, and whether it came over
/// HTTP/2 when the layer knows. Outside an attempt, a no-op.
pub fn observe(status: u16, headers: &HeaderMap, http2: Option<bool>) {
    let _ = OBSERVED.try_with(|attempt| {
        *attempt.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some((Signal::of(status, headers), http2));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint that has not answered yet: one call at a time.
    fn cold(initial: usize) -> Arc<Endpoint> {
        Limiter::new("test", initial).endpoint("svc:443")
    }

    /// An endpoint after its first answer, at its initial limit (2 for an initial 1: slow
    /// start counted that answer).
    fn endpoint(initial: usize) -> Arc<Endpoint> {
        let e = cold(initial);
        let mut p = e.try_acquire_now();
        p.answered(Signal::Answered);
        drop(p);
        e
    }

    impl Endpoint {
        fn try_acquire_now(self: &Arc<Self>) -> Permit {
            let slot = self.slots.clone().try_acquire_owned().unwrap();
            let mut s = self.lock();
            s.in_flight += 1;
            Permit {
                endpoint: self.clone(),
                lane: 0,
                http2: None,
                slot: Some(slot),
                sent: Instant::now(),
                epoch: s.epoch,
                signal: Signal::Unanswered,
            }
        }
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
        // "Come back at once" still waits a moment.
        h.insert("retry-after-ms", "0".parse().unwrap());
        assert_eq!(Signal::of(429, &h), Signal::Throttled(Some(MIN_PAUSE)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        assert_eq!(Signal::of(200, &h), Signal::QuotaSpent(None));
        // 500 requests a minute: one request's worth comes back every 120 ms.
        h.insert("x-ratelimit-limit-requests", "500".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "1m0s".parse().unwrap());
        assert_eq!(Signal::of(200, &h), Signal::QuotaSpent(Some(Duration::from_millis(120))));
        h.insert("x-ratelimit-remaining-requests", "12".parse().unwrap());
        assert_eq!(Signal::of(200, &h), Signal::Answered);
    }

    #[test]
    fn durations_in_openais_format() {
        let d = |t| go_duration(t).map(|d: Duration| d.as_millis());
        assert_eq!(
            (d("20ms"), d("1.5s"), d("6m0s"), d("1h2m3s")),
            (Some(20), Some(1500), Some(360_000), Some(3_723_000))
        );
        assert_eq!((d(""), d("5"), d("3x"), d("ms")), (None, None, None, None));
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
        // All hundred were sent before the cut: the first refusal cuts by a tenth.
        // (Refused calls beyond the first would cut deeper; these answered "busy" with a
        // 503 once and then said nothing.)
        held[0].answered(Signal::Throttled(None));
        drop(held);
        assert_eq!(e.limit(), 90);
        // A call sent after the cut cuts again.
        answer(&e, Signal::QuotaSpent(None)).await;
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
    async fn the_more_of_a_round_trip_is_refused_the_deeper_the_cut() {
        // Two of a hundred refused: a tenth off, and one more.
        let e = endpoint(100);
        let mut held: Vec<_> = Vec::new();
        for _ in 0..100 {
            held.push(e.acquire("call", None).await.unwrap());
        }
        for (i, p) in held.iter_mut().enumerate() {
            p.answered(if i < 2 { Signal::Throttled(None) } else { Signal::Unanswered });
        }
        drop(held);
        assert_eq!(e.limit(), 89);
        // Eighty of a hundred refused: down to half, no further.
        let e = endpoint(100);
        let mut held: Vec<_> = Vec::new();
        for _ in 0..100 {
            held.push(e.acquire("call", None).await.unwrap());
        }
        for (i, p) in held.iter_mut().enumerate() {
            p.answered(if i < 80 { Signal::Throttled(None) } else { Signal::Unanswered });
        }
        drop(held);
        assert_eq!(e.limit(), 50);
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
        let e = cold(1);
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
        let e = cold(1);
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
        // (The usual latency with its headroom: 375 ms.)
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(450), "{waited:?}");
        assert!(matches!(err, Failure::Busy(_)), "{err:?}");
        let m = err.message();
        assert!(m.contains("chat completion") && m.contains("at most 2 calls in flight to svc:443"), "{m}");
        drop(held);
    }

    #[tokio::test]
    async fn calls_waiting_before_the_first_answer_give_up_once_the_latency_is_known() {
        let e = cold(1);
        let start = Instant::now();
        // The first call goes alone (cold endpoint); the second waits with a 500 ms
        // deadline, when no latency is known yet.
        let mut first = e.acquire("call", None).await.unwrap();
        let second = tokio::spawn({
            let e = e.clone();
            async move { e.acquire("chat completion", Some(start + Duration::from_millis(500))).await.map(drop) }
        });
        // The first answer comes after 300 ms and opens a second slot (slow start), when
        // the waiting call has 200 ms left: less than the service takes, so it is refused
        // rather than sent to time out.
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.answered(Signal::Answered);
        drop(first);
        let refused = second.await.unwrap().expect_err("a call with 200 ms left was sent to a 300 ms service");
        assert!(matches!(refused, Failure::Busy(_)), "{refused:?}");
        assert!(start.elapsed() < Duration::from_millis(450), "{:?}", start.elapsed());
        assert_eq!(e.load(), (0, 0));
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
    async fn one_call_goes_alone_until_the_first_answer_and_http2_spreads_calls_over_lanes() {
        let e = cold(300);
        let first = e.acquire("call", None).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), e.acquire("call", None)).await.is_err());
        assert_eq!(e.load(), (1, 0), "a caller that gave up waiting left the queue");
        // No answer (a refused connection) teaches nothing: still one at a time.
        drop(first);
        let mut first = e.acquire("call", None).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), e.acquire("call", None)).await.is_err());
        first.answered(Signal::Answered);
        first.over_http2(true);
        drop(first);
        assert_eq!(e.limit(), 300);
        // Over HTTP/2, every STREAMS_PER_LANE calls in flight take the next lane.
        let mut held = Vec::new();
        for _ in 0..250 {
            held.push(e.acquire("call", None).await.unwrap());
        }
        let lanes: Vec<usize> = [0, 99, 100, 199, 200, 249].iter().map(|i| held[*i].lane()).collect();
        assert_eq!(lanes, [0, 0, 1, 1, 2, 2]);
        drop(held);
        // Over HTTP/1.1, every call has its own connection anyway: one lane.
        let mut p = e.acquire("call", None).await.unwrap();
        p.answered(Signal::Answered);
        p.over_http2(false);
        drop(p);
        let held: Vec<_> = futures_util::future::join_all((0..150).map(|_| e.acquire("call", None))).await;
        assert!(held.iter().all(|p| p.as_ref().unwrap().lane() == 0));
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
        let (r, throttled): (Result<(), ()>, bool) = p
            .run(async {
                observe(429, &h, Some(true));
                Err(())
            })
            .await;
        assert!(r.is_err() && throttled);
        assert_eq!(e.limit(), 9);
        // Outside an attempt, reporting does nothing.
        observe(429, &h, None);
        assert_eq!(e.limit(), 9);
    }
}
