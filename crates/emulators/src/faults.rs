//! Fault injection shared by every emulator: answer chosen requests with an error status
//! (optionally with `Retry-After`), a delay, a malformed body, a dropped connection, or an
//! echo of what the client sent (its credentials included), as a careless service does in
//! its error messages; the secret-hygiene tests use it to check that agents never pass such
//! text on.
//!
//! Faults are rules: which requests (method, path substring), what to do, and how many
//! times (or with what probability). They are set in-process through [`Faults`] or over
//! HTTP with `POST /_emulator/faults` (a JSON [`FaultRule`]) and `DELETE /_emulator/faults`.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// What to do to a matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultAction {
    /// Answer with this HTTP status and a body in the service's error format.
    Status {
        /// HTTP status code, e.g. 429, 500, 503.
        code: u16,
        /// Seconds for a `Retry-After` header.
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Wait this long, then answer normally.
    Delay {
        /// Milliseconds.
        ms: u64,
    },
    /// Close the connection without answering (the request is not processed).
    Drop,
    /// Process the request, then close the connection without sending the answer: the
    /// client cannot tell whether its request took effect.
    DropResponse,
    /// Answer 200 with a body that is not valid JSON.
    Malformed,
    /// Answer with this status and a message repeating the request's credentials
    /// (`Authorization` and every header naming a key, token, secret or auth) and its body:
    /// for an error status in the service's error format (where agents read the service's
    /// message), for a 2xx status in the shape the service answers the request with, the
    /// echo in the text an agent turns into a result (a chat completion's content, a
    /// failed job's or run's message); emulators without such a shape for the request use
    /// their error format.
    Echo {
        /// HTTP status code, e.g. 400, 401, 503, or 200.
        code: u16,
    },
}

/// A fault and the requests it applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// The action.
    pub action: FaultAction,
    /// Only requests with this method (e.g. `GET`); any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose path contains this; any when absent.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Apply this many times, then retire the rule; forever when absent.
    #[serde(default)]
    pub times: Option<u32>,
    /// Apply to this fraction of matching requests (0–1); all when absent.
    #[serde(default)]
    pub probability: Option<f64>,
}

impl FaultRule {
    /// A rule for every request, applied `times` times.
    pub fn new(action: FaultAction, times: u32) -> Self {
        Self { action, method: None, path_contains: None, times: Some(times), probability: None }
    }

    /// Restricts the rule to one method.
    #[must_use]
    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_owned());
        self
    }

    /// Restricts the rule to paths containing `s`.
    #[must_use]
    pub fn path(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_owned());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path_contains.as_deref().is_none_or(|p| path.contains(p))
    }
}

/// The fault rules of one emulator, plus counters of what was injected.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<FaultRule>,
    injected: u64,
    rng: u64,
}

impl Faults {
    /// Adds a rule; rules are tried in the order they were added.
    pub fn push(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The action for this request, if a rule applies (control endpoints are exempt).
    pub(crate) fn take(&self, method: &str, path: &str) -> Option<FaultAction> {
        if path.starts_with("/_emulator") {
            return None;
        }
        let mut st = self.lock();
        let State { rules, injected, rng } = &mut *st;
        let idx = rules
            .iter()
            .position(|r| r.matches(method, path) && r.probability.is_none_or(|p| next_fraction(rng) < p))?;
        let action = rules[idx].action.clone();
        if let Some(t) = rules[idx].times.as_mut() {
            *t = t.saturating_sub(1);
            if *t == 0 {
                rules.remove(idx);
            }
        }
        *injected += 1;
        Some(action)
    }
}

/// A small deterministic generator (xorshift) for probabilistic faults: reproducible runs
/// matter more here than statistical quality (the latency sampler of [`crate::shaping`] uses
/// it too).
pub(crate) fn next_fraction(state: &mut u64) -> f64 {
    if *state == 0 {
        *state = 0x9E37_79B9_7F4A_7C15;
    }
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_count_down_and_retire() {
        let f = Faults::default();
        f.push(
            FaultRule::new(FaultAction::Status { code: 503, retry_after_secs: None }, 2).method("GET").path("/jobs/"),
        );
        assert_eq!(f.take("POST", "/x/jobs/1"), None);
        assert!(f.take("GET", "/x/jobs/1").is_some());
        assert!(f.take("GET", "/x/jobs/1").is_some());
        assert_eq!(f.take("GET", "/x/jobs/1"), None, "retired after two");
        assert_eq!(f.injected(), 2);
        f.push(FaultRule::new(FaultAction::Drop, 1));
        assert_eq!(f.take("GET", "/_emulator/faults"), None, "control endpoints are exempt");
    }

    #[test]
    fn echo_rules_read_as_json() {
        let rule: FaultRule =
            serde_json::from_str(r#"{"action": {"kind": "echo", "code": 401}, "path_contains": "/jobs"}"#).unwrap();
        assert_eq!(rule.action, FaultAction::Echo { code: 401 });
        assert!(rule.times.is_none());
    }

    #[test]
    fn probability_applies_to_a_fraction() {
        let f = Faults::default();
        f.push(FaultRule { probability: Some(0.25), times: None, ..FaultRule::new(FaultAction::Drop, 0) });
        let hits = (0..4000).filter(|_| f.take("GET", "/a").is_some()).count();
        assert!((800..1200).contains(&hits), "{hits}");
    }
}
