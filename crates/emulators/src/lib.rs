//! Local emulators of the external HTTP APIs the agents call, for tests, local runs and
//! benchmarks: they speak the real endpoints, JSON shapes and error bodies, keep state,
//! and inject faults on request. Use them in-process ([`bigquery::BigQuery::start`]) or
//! through the `emulators` binary.
//!
//! Every emulator shares one serving path (HTTP/1.1 and HTTP/2, up to 16,384 concurrent
//! streams a connection; HTTPS with a [`tls::TestCa`] through `start_https`, or
//! Databricks' `start`), and with it:
//! - [`faults`]: injected errors, delays, dropped connections and echoes
//!   (`POST|DELETE /_emulator/faults`, each emulator's `faults()`);
//! - [`shaping`]: a per-request latency distribution and a token-bucket rate limit
//!   answered with 429 and OpenAI's `x-ratelimit-*` headers (`PUT /_emulator/shaping`,
//!   each emulator's `shaping()`, the binary's `--latency-ms`, `--latency-p99-ms`,
//!   `--rate-limit`, `--burst`), and counters of requests, 429s and connections
//!   (`GET /_emulator/stats`).

pub mod bigquery;
pub mod databricks;
pub mod faults;
mod http;
pub mod openai;
pub mod otlp;
pub mod shaping;
pub mod snowflake;
pub mod tls;
pub mod webhook;

/// RS256 tokens for the emulators' own tests, signed as the services' clients sign them.
#[cfg(test)]
pub(crate) fn signed_jwt(
    key: &aws_lc_rs::rsa::KeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut sig = vec![0; key.public_modulus_len()];
    let (alg, rng) = (&aws_lc_rs::signature::RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new());
    key.sign(alg, rng, signing.as_bytes(), &mut sig).expect("a test key signs");
    format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig))
}

pub use faults::{FaultAction, FaultRule, Faults};
pub use http::Running;
pub use shaping::{Latency, RateLimit, Shaping, ShapingSettings, Stats};
