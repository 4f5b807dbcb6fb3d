//! Traffic shaping shared by every emulator, for benchmarking agents against slow and
//! rate-limited services: a per-request latency distribution, a token-bucket rate limit
//! answered the way OpenAI answers it, and counters of what was served.
//!
//! Order of a service request (any path outside `/_emulator/`) in the serving path:
//! 1. it is counted ([`Stats::requests`]);
//! 2. an injected fault ([`crate::faults`]) is answered as without shaping: no token is
//!    taken, no latency added, no rate-limit headers (a `delay` fault waits, then the
//!    request goes on through the steps below);
//! 3. the rate limit takes a token; a request that finds none is answered at once (no
//!    latency) with HTTP 429 in the service's own error format, `Retry-After` (whole
//!    seconds, rounded up, at least 1) and `retry-after-ms`, and counted
//!    ([`Stats::rate_limited`]);
//! 4. the latency is drawn and slept;
//! 5. the route answers.
//!
//! With a rate limit set, every answer of steps 3–5 carries OpenAI's headers:
//! `x-ratelimit-limit-requests` (the bucket's capacity), `x-ratelimit-remaining-requests`
//! (whole tokens left after this request) and `x-ratelimit-reset-requests` (time until the
//! bucket is full again, in OpenAI's format: `250ms`, `1s`, `1.5s`, `1m30s`, `6m0s`).
//!
//! Control routes (never shaped, on every emulator): `GET /_emulator/stats` answers
//! [`Stats`] as JSON, `GET /_emulator/shaping` the current [`ShapingSettings`], and
//! `PUT /_emulator/shaping` replaces them with a JSON [`ShapingSettings`] (an absent field
//! turns its knob off; `{}` turns shaping off). In-process: [`Shaping`], from each
//! emulator's `shaping()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest latency (median or p99) accepted: anything longer is a typo, not a benchmark.
const MAX_LATENCY_MS: u64 = 3_600_000;

/// Highest rate and burst accepted; faster than any emulator answers anyway.
const MAX_RATE: f64 = 1_000_000.0;

/// The standard normal quantile of 0.99: a log-normal's p99 is `median · e^(2.326 σ)`.
const Z_99: f64 = 2.326;

/// Draws beyond this many standard deviations are clamped, so one unlucky draw (about one
/// in 10⁹) cannot stall a benchmark for hours.
const MAX_Z: f64 = 6.0;

/// A per-request latency: log-normal with this median and p99, or fixed when they are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    median: Duration,
    p99: Duration,
}

impl Latency {
    /// The same latency for every request.
    pub fn fixed(latency: Duration) -> Self {
        Self { median: latency, p99: latency }
    }

    /// Log-normal between `median` and `p99` (fixed when `p99` is absent or equal).
    /// Fails when `p99` is below the median, when either exceeds an hour, or when a
    /// median of 0 comes with a larger p99 (a log-normal has no zero median).
    pub fn new(median: Duration, p99: Option<Duration>) -> Result<Self, String> {
        let p99 = p99.unwrap_or(median);
        let max = Duration::from_millis(MAX_LATENCY_MS);
        if median > max || p99 > max {
            return Err(format!("latency: the median and p99 must be at most {MAX_LATENCY_MS} ms (an hour)"));
        }
        if p99 < median {
            return Err(format!(
                "latency: the p99 ({} ms) must not be below the median ({} ms)",
                p99.as_millis(),
                median.as_millis()
            ));
        }
        if median.is_zero() && !p99.is_zero() {
            return Err("latency: a p99 needs a median above 0 ms (a log-normal has no zero median)".to_owned());
        }
        Ok(Self { median, p99 })
    }

    /// The median.
    pub fn median(&self) -> Duration {
        self.median
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.p99
    }

    /// The latency at `z` standard deviations of the underlying normal (clamped to ±6).
    fn at(&self, z: f64) -> Duration {
        if self.p99 == self.median {
            return self.median;
        }
        let sigma = (self.p99.as_secs_f64() / self.median.as_secs_f64()).ln() / Z_99;
        let secs = self.median.as_secs_f64() * (sigma * z.clamp(-MAX_Z, MAX_Z)).exp();
        Duration::try_from_secs_f64(secs).unwrap_or(self.p99)
    }

    /// One draw, advancing the generator `rng`.
    fn sample(&self, rng: &mut u64) -> Duration {
        if self.p99 == self.median {
            return self.median;
        }
        self.at(standard_normal(rng))
    }
}

/// A standard normal draw (Box–Muller) from the faults module's seeded generator.
fn standard_normal(rng: &mut u64) -> f64 {
    // 1 − u lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - crate::faults::next_fraction(rng);
    let u2 = crate::faults::next_fraction(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A token-bucket rate limit: `rate` tokens a second into a bucket holding `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    rate: f64,
    burst: u32,
}

impl RateLimit {
    /// `rate` requests per second (fractions allowed, e.g. 0.5), bursts of `burst`
    /// (default: one second's worth, `rate` rounded up, at least 1). Fails on a rate that
    /// is not a number above 0 and at most 1,000,000, and on a burst of 0 or above
    /// 1,000,000.
    pub fn new(rate: f64, burst: Option<u32>) -> Result<Self, String> {
        if !rate.is_finite() || rate <= 0.0 || rate > MAX_RATE {
            return Err(format!(
                "rate limit: {rate} is not a rate; give requests per second above 0 and at most {MAX_RATE} \
                 (leave the rate limit out for none)"
            ));
        }
        // One second's worth; the cast is exact, the rate being at most MAX_RATE.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let burst = burst.unwrap_or_else(|| rate.ceil().max(1.0) as u32);
        if burst == 0 || f64::from(burst) > MAX_RATE {
            return Err(format!("rate limit: the burst must be between 1 and {MAX_RATE} requests, not {burst}"));
        }
        Ok(Self { rate, burst })
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The bucket's capacity.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// What the bucket said to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// A token was taken.
    pub(crate) admitted: bool,
    /// The bucket's capacity.
    pub(crate) limit: u32,
    /// Whole tokens left after this request.
    pub(crate) remaining: u64,
    /// Time until the bucket is full again.
    pub(crate) reset: Duration,
    /// Time until a token is available (zero when admitted).
    pub(crate) retry_after: Duration,
}

/// A token bucket on a clock the caller passes in, so tests control time.
///
/// It keeps the instant the bucket will be full again rather than a fractional token
/// count (the generic cell rate algorithm, equivalent to a token bucket): with whole
/// nanoseconds, a refill never falls a rounding error short of a token.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    /// Time one token takes to refill.
    interval: Duration,
    /// When the bucket is (or was) full; in the past means full now.
    full_at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        let interval = Duration::from_secs_f64(1.0 / limit.rate).max(Duration::from_nanos(1));
        Self { limit, interval, full_at: now }
    }

    /// Takes a token at `now` if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> Admission {
        let interval = self.interval.as_nanos();
        let capacity = interval * u128::from(self.limit.burst);
        // Time until full = tokens missing × interval.
        let missing = self.full_at.saturating_duration_since(now).as_nanos();
        let after = missing + interval;
        let mut admission = Admission {
            admitted: after <= capacity,
            limit: self.limit.burst,
            remaining: 0,
            reset: nanos(missing),
            retry_after: Duration::ZERO,
        };
        if admission.admitted {
            self.full_at = now + nanos(after);
            admission.remaining = u64::try_from((capacity - after) / interval).unwrap_or(u64::MAX);
            admission.reset = nanos(after);
        } else {
            admission.retry_after = nanos(after - capacity);
        }
        admission
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1).try_into().unwrap_or(u64::MAX)
}

/// `retry-after-ms` for a wait: milliseconds, rounded up, at least 1.
pub(crate) fn retry_after_millis(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000).max(1).try_into().unwrap_or(u64::MAX)
}

/// A duration as OpenAI writes `x-ratelimit-reset-requests` (Go's duration format at
/// millisecond precision, rounded up so a client waiting that long finds the bucket full):
/// `0s`, `250ms`, `1s`, `1.5s`, `1m30s`, `6m0s`, `1h0m0s`.
pub(crate) fn openai_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, minutes, sec_ms) = (ms / 3_600_000, ms / 60_000 % 60, ms % 60_000);
    let mut secs = format!("{}", sec_ms / 1000);
    if sec_ms % 1000 != 0 {
        let frac = format!("{:03}", sec_ms % 1000);
        secs = format!("{secs}.{}", frac.trim_end_matches('0'));
    }
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// The shaping knobs, as the CLI flags and `PUT /_emulator/shaping` give them. An absent
/// field turns its knob off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingSettings {
    /// Median latency of a service request, in milliseconds (`--latency-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Its 99th percentile, in milliseconds (`--latency-p99-ms`); needs `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<u64>,
    /// Requests per second (`--rate-limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Bucket capacity (`--burst`); needs `rate_limit`, defaults to one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl ShapingSettings {
    /// The latency and rate limit these settings describe, or what is wrong with them.
    pub fn parse(&self) -> Result<(Option<Latency>, Option<RateLimit>), String> {
        let latency = match (self.latency_ms, self.latency_p99_ms) {
            (None, None) => None,
            (None, Some(_)) => return Err("latency_p99_ms needs latency_ms (the median)".to_owned()),
            (Some(median), p99) => Some(Latency::new(Duration::from_millis(median), p99.map(Duration::from_millis))?),
        };
        let limit = match (self.rate_limit, self.burst) {
            (None, None) => None,
            (None, Some(_)) => return Err("burst needs rate_limit (requests per second)".to_owned()),
            (Some(rate), burst) => Some(RateLimit::new(rate, burst)?),
        };
        Ok((latency, limit))
    }

    fn of(latency: Option<Latency>, limit: Option<RateLimit>) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            latency_ms: latency.map(|l| ms(l.median)),
            latency_p99_ms: latency.filter(|l| l.p99 != l.median).map(|l| ms(l.p99)),
            rate_limit: limit.map(|l| l.rate),
            burst: limit.map(|l| l.burst),
        }
    }
}

/// Counters since the emulator started (`GET /_emulator/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Service requests seen (control routes excluded; faulted and rate-limited included).
    pub requests: u64,
    /// Requests the rate limit answered with 429.
    pub rate_limited: u64,
    /// TCP connections accepted: with HTTP/2, a client multiplexing well opens few.
    pub connections: u64,
}

/// The shaping of one emulator; clone handles share it.
#[derive(Debug, Clone, Default)]
pub struct Shaping {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    knobs: Mutex<Knobs>,
    requests: AtomicU64,
    rate_limited: AtomicU64,
    connections: AtomicU64,
}

#[derive(Debug, Default)]
struct Knobs {
    latency: Option<Latency>,
    bucket: Option<TokenBucket>,
    /// The latency sampler's generator: a fixed seed, so runs are reproducible.
    rng: u64,
}

/// What shaping decided for one service request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// The rate limit's answer, when one is set.
    pub(crate) admission: Option<Admission>,
    /// Latency to add before the route answers.
    pub(crate) delay: Duration,
}

impl Shaping {
    /// Sets (or with `None` removes) the latency of service requests.
    pub fn set_latency(&self, latency: Option<Latency>) {
        self.lock().latency = latency;
    }

    /// Sets (or with `None` removes) the rate limit; a new limit starts with a full bucket.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.lock().bucket = limit.map(|l| TokenBucket::new(l, Instant::now()));
    }

    /// Replaces both knobs with `settings`, or changes nothing and says what is wrong.
    pub fn apply(&self, settings: &ShapingSettings) -> Result<(), String> {
        let (latency, limit) = settings.parse()?;
        let mut knobs = self.lock();
        knobs.latency = latency;
        knobs.bucket = limit.map(|l| TokenBucket::new(l, Instant::now()));
        Ok(())
    }

    /// The current knobs.
    pub fn settings(&self) -> ShapingSettings {
        let knobs = self.lock();
        ShapingSettings::of(knobs.latency, knobs.bucket.as_ref().map(|b| b.limit))
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.inner.requests.load(Ordering::Relaxed),
            rate_limited: self.inner.rate_limited.load(Ordering::Relaxed),
            connections: self.inner.connections.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn connection_accepted(&self) {
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_seen(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The rate limit's answer and the latency for a service request arriving now.
    pub(crate) fn admit(&self) -> Ticket {
        let mut knobs = self.lock();
        let Knobs { latency, bucket, rng } = &mut *knobs;
        let admission = bucket.as_mut().map(|b| b.take(Instant::now()));
        if admission.is_some_and(|a| !a.admitted) {
            self.inner.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Ticket { admission, delay: Duration::ZERO };
        }
        Ticket { admission, delay: latency.map_or(Duration::ZERO, |l| l.sample(rng)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.inner.knobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_bucket_bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(RateLimit::new(5.0, Some(5)).unwrap(), t0);
        // A burst of five at once: remaining counts down, reset grows by one interval each.
        for i in 0..5u64 {
            let a = b.take(t0);
            assert!(a.admitted, "{i}");
            assert_eq!(
                (a.limit, a.remaining, a.reset, a.retry_after),
                (5, 4 - i, 200 * MS * (i as u32 + 1), Duration::ZERO)
            );
        }
        let a = b.take(t0);
        assert_eq!((a.admitted, a.remaining, a.reset, a.retry_after), (false, 0, 1000 * MS, 200 * MS));
        // A refusal takes nothing: 150 ms later one token is 50 ms away.
        let a = b.take(t0 + 150 * MS);
        assert_eq!((a.admitted, a.reset, a.retry_after), (false, 850 * MS, 50 * MS));
        // At 200 ms exactly one token is back, and taken.
        let a = b.take(t0 + 200 * MS);
        assert_eq!((a.admitted, a.remaining, a.reset), (true, 0, 1000 * MS));
        // Idle for long: full again, never above capacity.
        let a = b.take(t0 + Duration::from_secs(60));
        assert_eq!((a.admitted, a.remaining, a.reset), (true, 4, 200 * MS));
    }

    #[test]
    fn burst_defaults_to_a_seconds_worth_and_fractional_rates_work() {
        assert_eq!(RateLimit::new(5.0, None).unwrap().burst(), 5);
        assert_eq!(RateLimit::new(2.5, None).unwrap().burst(), 3);
        let half = RateLimit::new(0.5, None).unwrap();
        assert_eq!(half.burst(), 1);
        let t0 = Instant::now();
        let mut b = TokenBucket::new(half, t0);
        assert_eq!((b.take(t0).admitted, b.take(t0).retry_after), (true, Duration::from_secs(2)));
        // A rate of 3/s: interval 333,333,333 ns; three refills are a whole token each.
        let mut b = TokenBucket::new(RateLimit::new(3.0, Some(1)).unwrap(), t0);
        for k in 0..=3u32 {
            assert!(b.take(t0 + Duration::from_nanos(333_333_333) * k).admitted, "{k}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_milliseconds() {
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(200 * MS), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(1001 * MS), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_millis(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_millis(Duration::from_micros(199_001)), 200);
        assert_eq!(retry_after_millis(200 * MS), 200);
    }

    #[test]
    fn reset_durations_read_as_openai_writes_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ms"),
            (250 * MS, "250ms"),
            (Duration::from_micros(999_001), "1s"),
            (Duration::from_secs(1), "1s"),
            (1500 * MS, "1.5s"),
            (1250 * MS, "1.25s"),
            (8640 * MS, "8.64s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(360), "6m0s"),
            (90_500 * MS, "1m30.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3661), "1h1m1s"),
        ];
        for (d, want) in cases {
            assert_eq!(openai_duration(d), want, "{d:?}");
        }
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
    }

    #[test]
    fn latency_draws_have_the_median_and_p99_asked_for() {
        let l = Latency::new(100 * MS, Some(400 * MS)).unwrap();
        let mut rng = 0;
        let mut draws: Vec<Duration> = (0..40_000).map(|_| l.sample(&mut rng)).collect();
        draws.sort();
        let (median, p99) = (percentile(&draws, 0.5), percentile(&draws, 0.99));
        assert!((95 * MS..=105 * MS).contains(&median), "median {median:?}");
        assert!((360 * MS..=440 * MS).contains(&p99), "p99 {p99:?}");
        // A tail beyond the p99, within the ±6 σ clamp.
        assert!(percentile(&draws, 0.999) > 500 * MS, "{:?}", percentile(&draws, 0.999));
        assert!(draws[0] >= l.at(-MAX_Z) && draws[draws.len() - 1] <= l.at(MAX_Z));
        // Fixed: every draw is the latency.
        let fixed = Latency::new(200 * MS, None).unwrap();
        assert!((0..100).all(|_| fixed.sample(&mut rng) == 200 * MS));
        assert_eq!(Latency::new(200 * MS, Some(200 * MS)).unwrap(), Latency::fixed(200 * MS));
        // The quantile function itself: z = 2.326 is the p99, z = 0 the median.
        assert_eq!(l.at(0.0), 100 * MS);
        assert!((l.at(Z_99).as_secs_f64() - 0.4).abs() < 1e-9);
        // Clamped at 6 σ.
        assert_eq!(l.at(50.0), l.at(MAX_Z));
    }

    #[test]
    fn invalid_settings_say_what_is_wrong() {
        let bad = |json: &str| {
            serde_json::from_str::<ShapingSettings>(json)
                .map_err(|e| e.to_string())
                .and_then(|s| s.parse().map(|_| ()))
                .unwrap_err()
        };
        assert!(bad(r#"{"latency_ms": 200, "latency_p99_ms": 100}"#).contains("must not be below the median"));
        assert!(bad(r#"{"latency_p99_ms": 100}"#).contains("needs latency_ms"));
        assert!(bad(r#"{"latency_ms": 0, "latency_p99_ms": 100}"#).contains("median above 0"));
        assert!(bad(r#"{"latency_ms": 3600001}"#).contains("at most"));
        assert!(bad(r#"{"rate_limit": 0}"#).contains("above 0"));
        assert!(bad(r#"{"rate_limit": -1}"#).contains("above 0"));
        assert!(bad(r#"{"rate_limit": 5, "burst": 0}"#).contains("burst must be between 1"));
        assert!(bad(r#"{"burst": 5}"#).contains("needs rate_limit"));
        assert!(bad(r#"{"rate_limt": 5}"#).contains("unknown field"));
        assert!(RateLimit::new(f64::NAN, None).is_err());
        // Valid settings round-trip through the handle.
        let s = Shaping::default();
        let want =
            ShapingSettings { latency_ms: Some(10), latency_p99_ms: Some(50), rate_limit: Some(2.5), burst: None };
        s.apply(&want).unwrap();
        assert_eq!(s.settings(), ShapingSettings { burst: Some(3), ..want });
        // A bad update changes nothing.
        assert!(s.apply(&ShapingSettings { rate_limit: Some(0.0), ..ShapingSettings::default() }).is_err());
        assert_eq!(s.settings().rate_limit, Some(2.5));
        s.apply(&ShapingSettings::default()).unwrap();
        assert_eq!(s.settings(), ShapingSettings::default());
    }

    #[test]
    fn admit_counts_refusals_and_skips_latency_for_them() {
        let s = Shaping::default();
        s.set_latency(Some(Latency::fixed(30 * MS)));
        s.set_rate_limit(Some(RateLimit::new(0.001, Some(1)).unwrap()));
        let first = s.admit();
        assert_eq!((first.admission.map(|a| a.admitted), first.delay), (Some(true), 30 * MS));
        let second = s.admit();
        assert_eq!((second.admission.map(|a| a.admitted), second.delay), (Some(false), Duration::ZERO));
        assert_eq!(s.stats().rate_limited, 1);
        s.set_rate_limit(None);
        assert_eq!(s.admit(), Ticket { admission: None, delay: 30 * MS });
    }
}
