//! Key-pair authentication: an RS256 JWT signed with the user's private key, whose issuer
//! names the public key's SHA-256 fingerprint, as Snowflake requires; [`KeyPair`] makes it
//! the bearer token of SQL API calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::http::{Auth, Failure, RsaSigner, TokenCache};
use agent_core::prelude::*;
use aws_lc_rs::digest::{SHA256, digest};
use serde_json::json;

use crate::account::AccountId;

/// The agent secrets, named as flytekit names the key.
pub(crate) const KEY_SECRET: &str = "snowflake_private_key";
pub(crate) const PASSPHRASE_SECRET: &str = "snowflake_private_key_passphrase";

/// Snowflake accepts tokens valid for at most an hour.
pub(crate) const LIFETIME_SECS: u64 = 3540;

/// The key in `pem` (decrypted with `passphrase`), errors naming Snowflake's secrets.
pub(crate) fn signer(pem: &str, passphrase: Option<&str>) -> Result<RsaSigner, AgentError> {
    RsaSigner::from_pem(pem, passphrase, KEY_SECRET, Some(PASSPHRASE_SECRET))
}

/// A JWT for `account` (its locator or org-account, region suffix dropped) and `user`:
/// the issuer names the public key's fingerprint, as Snowflake requires.
pub(crate) fn token(signer: &RsaSigner, account: &AccountId, user: &str, now_secs: u64) -> Result<String, AgentError> {
    let qualified = format!("{}.{}", account.jwt_account(), user.to_uppercase());
    let (iss, exp) = (format!("{qualified}.{}", signer.fingerprint()), now_secs + LIFETIME_SECS);
    signer.sign(&json!({}), &json!({"iss": iss, "sub": qualified, "iat": now_secs, "exp": exp}))
}

/// Key-pair authentication of an account (second) and user (third) as [`Auth`]: a JWT
/// signed with the key in the agent's secret, reused from the cache (first) until the
/// cache's margin before it expires.
pub(crate) struct KeyPair<'a>(pub(crate) &'a TokenCache, pub(crate) &'a AccountId, pub(crate) &'a str);

impl Auth for KeyPair<'_> {
    async fn bearer(&self, ctx: &Context, refused: Option<&Secret>) -> Result<Option<Secret>, Failure> {
        // The key is read for every call, so a rotated secret applies at once: the cache
        // key names it (by digest), with the account and user the token is for.
        let KeyPair(cache, account, user) = *self;
        // A key the request brought (Flyte 2) is opened only with a passphrase it brought, and
        // the agent's key only with the agent's passphrase: neither opens the other's.
        let (pem, passphrase) = match ctx.task_credential(KEY_SECRET, false)? {
            Some(sent) => (sent, ctx.task_credential(PASSPHRASE_SECRET, false)?),
            None => (ctx.secret(KEY_SECRET)?, ctx.agent_secret(PASSPHRASE_SECRET)?),
        };
        // The cache key names the key and its passphrase (by digest): a token signed with an
        // encrypted key is handed only to a caller who could open that key itself.
        let mut material = pem.expose().as_bytes().to_vec();
        material.push(0);
        material.extend(passphrase.as_ref().map(|p| p.expose().as_bytes()).unwrap_or_default());
        let key = format!("{}|{user}|{:x?}", account.as_str(), digest(&SHA256, &material).as_ref());
        let sign = || async {
            let signer = signer(pem.expose(), passphrase.as_ref().map(Secret::expose))?;
            // The fingerprint is public; operators compare it with `DESC USER`.
            let fingerprint = signer.fingerprint();
            tracing::debug!(account = account.as_str(), user, fingerprint, "Made a Snowflake JWT");
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let token = Secret::new(token(&signer, account, user, now)?);
            Ok::<_, AgentError>((token, Duration::from_secs(LIFETIME_SECS)))
        };
        Ok(Some(cache.get_or_fetch(&key, refused, sign).await?))
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const KEY: &str = include_str!("../tests/fixtures/rsa_key.p8");
    const ENCRYPTED: &str = include_str!("../tests/fixtures/rsa_key_encrypted.p8");
    const FINGERPRINT: &str = include_str!("../tests/fixtures/fingerprint.txt");

    #[test]
    fn fingerprint_matches_openssl_and_encrypted_keys_decrypt() {
        let s = signer(KEY, None).unwrap();
        assert_eq!(s.fingerprint(), format!("SHA256:{}", FINGERPRINT.trim()));
        let e = signer(ENCRYPTED, Some("flyte-test-passphrase")).unwrap();
        assert_eq!(e.fingerprint(), s.fingerprint());
        let err = signer(ENCRYPTED, Some("wrong")).unwrap_err();
        assert!(matches!(&err, AgentError::FailedPrecondition(m) if m.contains("cannot be decrypted")));
        assert!(signer(ENCRYPTED, None).unwrap_err().message().contains("passphrase"));
        let garbage = signer("-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----", None).unwrap_err();
        assert!(!garbage.message().contains("not base64"), "errors never quote the key: {garbage}");
        assert_eq!(
            signer("not a key", None).unwrap_err().message(),
            "secret snowflake_private_key is not valid PEM; it must be an RSA private key in PKCS#8 PEM \
             (-----BEGIN PRIVATE KEY----- or, with the secret snowflake_private_key_passphrase, -----BEGIN ENCRYPTED PRIVATE KEY-----)"
        );
    }

    #[test]
    fn claims_and_signature_are_what_snowflake_checks() {
        let s = signer(KEY, None).unwrap();
        let account = AccountId::parse("xy12345.us-east-1", "account").unwrap();
        let t = token(&s, &account, "flyte_user", 1_700_000_000).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "XY12345.FLYTE_USER");
        assert_eq!(claims["iss"], format!("XY12345.FLYTE_USER.SHA256:{}", FINGERPRINT.trim()));
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), LIFETIME_SECS);
        // Verify with the public key alone, as Snowflake does.
        let public = s.public_key().to_vec();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[tokio::test]
    async fn forged_accounts_cannot_grow_the_token_cache() {
        let cache = TokenCache::default();
        let ctx = Context::new(
            TaskCategory::new("snowflake", 0),
            agent_core::testing::secrets(&[("_FSEC_SNOWFLAKE_PRIVATE_KEY", KEY)]),
        );
        let jwt = async |account: &str| {
            let account = AccountId::parse(account, "account").unwrap();
            let auth = KeyPair(&cache, &account, "u");
            auth.bearer(&ctx, None).await.unwrap().unwrap()
        };
        // Each distinct account signs a token: more than the capacity is enough to show the bound.
        for i in 0..(agent_core::http::DEFAULT_CAPACITY + 300) {
            jwt(&format!("forged-{i}")).await;
        }
        assert!(cache.len() <= agent_core::http::DEFAULT_CAPACITY, "{} tokens kept", cache.len());
        let again = jwt("forged-500").await;
        // A token signed a second later would differ (its `iat`): equal means reused.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let cached = jwt("forged-500").await;
        assert_eq!(again.expose(), cached.expose(), "a recent token is still reused");
    }
}
