//! A bounded cache for credentials an agent derives and reuses (Snowflake JWTs,
//! Databricks OAuth access tokens). Its keys come from request data (an account, a user,
//! an instance), so a caller sending many distinct keys must not grow the process: the
//! cache holds at most a fixed number of entries, dropping expired ones first, then the
//! one that expires soonest. Keys are kept as SHA-256 digests, so a key's size (a huge
//! namespace or client id) costs nothing either. Agents fill it only after the key has
//! been validated.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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

/// Tokens by key, each usable until its instant.
#[derive(Debug)]
pub struct TokenCache {
    entries: Mutex<HashMap<Digest, (Secret, Instant)>>,
    capacity: usize,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, (Secret, Instant)>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token for `key`, unless it is missing or past its instant.
    pub fn get(&self, key: &str) -> Option<Secret> {
        let entries = self.lock();
        entries.get(&digest(key)).filter(|(_, until)| *until > Instant::now()).map(|(t, _)| t.clone())
    }

    /// Keeps `token` for `key` until `until`, making room if the cache is full.
    pub fn insert(&self, key: String, token: Secret, until: Instant) {
        let key = digest(&key);
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, (_, u)| *u > now);
            if entries.len() >= self.capacity
                && let Some(soonest) = entries.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k)
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(key, (token, until));
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
}
