//! A bounded cache for credentials an agent derives and reuses (Snowflake JWTs,
//! Databricks OAuth access tokens), with single-flight refresh: a burst of calls that
//! find no usable token wait for one fetch instead of each fetching their own. Its keys come from request data (an account, a user,
//! an instance), so a caller sending many distinct keys must not grow the process: the
//! cache holds at most a fixed number of entries, dropping expired ones first, then the
//! one that expires soonest. Keys are kept as SHA-256 digests, so a key's size (a huge
//! namespace or client id) costs nothing either. Agents fill it only after the key has
//! been validated.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::secrets::Secret;

/// Entries kept when a cache is made with [`TokenCache::default`]: far more than the
/// accounts or instances one deployment talks to.
pub const DEFAULT_CAPACITY: usize = 256;

/// A key's digest.
type Digest = [u8; 32];

fn digest(key: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes()).as_ref());
    out
}

/// A token and the instant it stops being handed out.
type Entry = Option<(Secret, Instant)>;

/// One key's entry behind its own async lock: the lock is held while the token is
/// fetched, which is what makes the refresh single-flight.
type Slot = Arc<tokio::sync::Mutex<Entry>>;

/// Tokens by key, each usable until its instant.
#[derive(Debug)]
pub struct TokenCache {
    slots: Mutex<HashMap<Digest, Slot>>,
    capacity: usize,
    margin: Duration,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (at least one), renewing each a minute
    /// before it expires.
    pub fn new(capacity: usize) -> Self {
        Self { slots: Mutex::new(HashMap::new()), capacity: capacity.max(1), margin: Duration::from_secs(60) }
    }

    /// The same cache, renewing tokens `margin` before they expire.
    #[must_use]
    pub fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Slot>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot for `key`, made (and room made for it) if needed.
    fn slot(&self, key: &str) -> Slot {
        let key = digest(key);
        let mut slots = self.lock();
        if !slots.contains_key(&key) && slots.len() >= self.capacity {
            let now = Instant::now();
            // Entries being fetched right now are locked and kept; expired and empty ones go
            // first, then the one that expires soonest.
            let until = |slot: &Slot| slot.try_lock().ok().map(|e| e.as_ref().map_or(now, |(_, u)| *u));
            slots.retain(|_, slot| until(slot).is_none_or(|u| u > now));
            if slots.len() >= self.capacity
                && let Some(soonest) =
                    slots.iter().filter_map(|(k, s)| until(s).map(|u| (*k, u))).min_by_key(|(_, u)| *u).map(|(k, _)| k)
            {
                slots.remove(&soonest);
            }
        }
        slots.entry(key).or_default().clone()
    }

    /// The token for `key`: the cached one while it is usable, else the one `fetch`
    /// returns with its lifetime. Concurrent callers for the same key wait for one fetch.
    /// `refused` is a token the service just refused (a 401): if it is still the cached
    /// one it is fetched again, once, however many callers saw it refused.
    pub async fn get_or_fetch<E, Fut>(
        &self,
        key: &str,
        refused: Option<&Secret>,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Secret, E>
    where
        Fut: Future<Output = Result<(Secret, Duration), E>>,
    {
        let slot = self.slot(key);
        let mut entry = slot.lock().await;
        if let Some((token, until)) = entry.as_ref()
            && *until > Instant::now()
            && refused.is_none_or(|r| r.expose() != token.expose())
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = fetch().await?;
        let usable = lifetime.checked_sub(self.margin).unwrap_or(lifetime / 2);
        *entry = Some((token.clone(), Instant::now() + usable));
        Ok(token)
    }

    /// The token for `key`, unless it is missing or past its instant.
    pub fn get(&self, key: &str) -> Option<Secret> {
        let slot = self.lock().get(&digest(key)).cloned()?;
        let entry = slot.try_lock().ok()?;
        entry.as_ref().filter(|(_, until)| *until > Instant::now()).map(|(t, _)| t.clone())
    }

    /// Keeps `token` for `key` until `until`, making room if the cache is full.
    pub fn insert(&self, key: String, token: Secret, until: Instant) {
        let slot = self.slot(&key);
        if let Ok(mut entry) = slot.try_lock() {
            *entry = Some((token, until));
        }
    }

    /// Forgets the token for `key` (e.g. after the service refused it).
    pub fn remove(&self, key: &str) {
        self.lock().remove(&digest(key));
    }

    /// How many tokens are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no token is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stays_within_capacity_and_keeps_live_tokens_over_expired_ones() {
        let cache = TokenCache::new(3);
        let later = Instant::now() + Duration::from_secs(600);
        cache.insert("expired".into(), Secret::new("token-expired-1"), Instant::now());
        cache.insert("a".into(), Secret::new("token-a-123456"), later);
        cache.insert("b".into(), Secret::new("token-b-123456"), later + Duration::from_secs(1));
        assert!(cache.get("expired").is_none(), "an expired token is never handed out");
        cache.insert("c".into(), Secret::new("token-c-123456"), later + Duration::from_secs(2));
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a").is_some(), "the expired entry made room, not a live one");
        for i in 0..10_000 {
            cache.insert(format!("forged-{i}"), Secret::new("token-x-123456"), later + Duration::from_secs(3));
        }
        assert_eq!(cache.len(), 3, "many distinct keys never grow the cache");
        cache.remove("forged-9999");
        assert!(cache.get("forged-9999").is_none());
    }

    #[tokio::test]
    async fn a_burst_of_callers_fetches_one_token_and_a_refusal_refreshes_it_once() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let cache = TokenCache::new(8);
        let fetches = AtomicU32::new(0);
        let fetch = || async {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, ()>((Secret::new(format!("token-number-{n}")), Duration::from_secs(3600)))
        };
        let burst = (0..50).map(|_| cache.get_or_fetch("k", None, fetch));
        let tokens = futures_util::future::join_all(burst).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for the whole burst");
        assert!(tokens.iter().all(|t| t.as_ref().unwrap().expose() == "token-number-0"));
        // Many callers saw token 0 refused: one refresh, then everyone gets token 1.
        let refused = tokens[0].clone().unwrap();
        let again = (0..20).map(|_| cache.get_or_fetch("k", Some(&refused), fetch));
        let again = futures_util::future::join_all(again).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert!(again.iter().all(|t| t.as_ref().unwrap().expose() == "token-number-1"));
        // A failed fetch is returned and leaves nothing behind.
        let failed = cache.get_or_fetch("other", None, || async { Err::<(Secret, Duration), _>("refused") }).await;
        assert_eq!(failed.unwrap_err(), "refused");
        assert!(cache.get("other").is_none());
        // A token living shorter than the margin is kept for half its life, not forever or never.
        let short = TokenCache::new(2).with_margin(Duration::from_secs(60));
        let t = short
            .get_or_fetch("s", None, || async { Ok::<_, ()>((Secret::new("short-lived-1"), Duration::from_secs(30))) })
            .await
            .unwrap();
        assert_eq!(short.get("s").unwrap().expose(), t.expose());
    }
}
