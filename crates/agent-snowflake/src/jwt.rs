//! Key-pair authentication: an RS256 JWT signed with the user's private key, whose issuer
//! names the public key's SHA-256 fingerprint, as Snowflake requires; [`KeyPair`] makes it
//! the bearer token of SQL API calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::http::{Auth, Failure, TokenCache};
use agent_core::prelude::*;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pkcs8::der::pem::PemLabel;
use serde_json::json;

use crate::account::AccountId;

/// The agent secrets, named as flytekit names the key.
const KEY_SECRET: &str = "snowflake_private_key";
const PASSPHRASE_SECRET: &str = "snowflake_private_key_passphrase";

/// Snowflake accepts tokens valid for at most an hour.
pub(crate) const LIFETIME_SECS: u64 = 3540;

/// `{"alg":"RS256","typ":"JWT"}`, the header of every token, in base64url.
const HEADER: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";

/// A parsed private key and its public key's fingerprint (`SHA256:<base64>`, as `DESC USER`
/// shows it). Its `Debug` shows the public key only.
#[derive(Debug)]
pub(crate) struct Signer {
    key: RsaKeyPair,
    pub(crate) fingerprint: String,
}

/// What the key must be, said in every key error.
const KEY_FORMAT: &str = "it must be an RSA private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY----- or, with the secret \
                          snowflake_private_key_passphrase, -----BEGIN ENCRYPTED PRIVATE KEY-----)";

impl Signer {
    /// Parses a PKCS#8 PEM key, decrypting it with `passphrase` when it is encrypted. Errors
    /// never quote the key.
    pub(crate) fn from_pem(pem: &str, passphrase: Option<&str>) -> Result<Self, AgentError> {
        let bad_key = |what: &str| AgentError::failed_precondition(format!("secret {KEY_SECRET} {what}; {KEY_FORMAT}"));
        let (label, doc) = pkcs8::SecretDocument::from_pem(pem.trim()).map_err(|_| bad_key("is not valid PEM"))?;
        let der = if label == pkcs8::EncryptedPrivateKeyInfo::PEM_LABEL {
            let pass = passphrase
                .ok_or_else(|| bad_key("is encrypted but the secret snowflake_private_key_passphrase is not set"))?;
            let info: pkcs8::EncryptedPrivateKeyInfo<'_> =
                doc.decode_msg().map_err(|_| bad_key("is not an encrypted PKCS#8 key"))?;
            info.decrypt(pass).map_err(|_| bad_key("cannot be decrypted with snowflake_private_key_passphrase"))?
        } else if label == pkcs8::PrivateKeyInfo::PEM_LABEL {
            doc
        } else {
            return Err(bad_key(&format!("is a '{label}' PEM block")));
        };
        let key = RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|_| bad_key("is not an RSA key"))?;
        let spki = key.public_key().as_der().map_err(|_| bad_key("has a public key that cannot be encoded"))?;
        Ok(Self { fingerprint: format!("SHA256:{}", STANDARD.encode(digest(&SHA256, spki.as_ref()))), key })
    }

    /// A JWT for `account` (its locator or org-account, region suffix dropped) and `user`.
    pub(crate) fn token(&self, account: &AccountId, user: &str, now_secs: u64) -> Result<String, AgentError> {
        let qualified = format!("{}.{}", account.jwt_account(), user.to_uppercase());
        let (iss, exp) = (format!("{qualified}.{}", self.fingerprint), now_secs + LIFETIME_SECS);
        let claims = json!({"iss": iss, "sub": qualified, "iat": now_secs, "exp": exp}).to_string();
        let input = format!("{HEADER}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mut sig = vec![0; self.key.public_modulus_len()];
        let signed = self.key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig);
        signed.map_err(|_| AgentError::internal("signing the Snowflake JWT failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
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
        let pem = ctx.secret(KEY_SECRET)?;
        let key = format!("{}|{user}|{:x?}", account.as_str(), &digest(&SHA256, pem.expose().as_bytes()).as_ref()[..8]);
        let sign = || async {
            // A key the request brought (Flyte 2) is opened only with a passphrase it brought:
            // the pod's passphrase belongs to the pod's key.
            let passphrase = if ctx.task_credential(KEY_SECRET, false)?.is_some() {
                ctx.task_credential(PASSPHRASE_SECRET, false)?
            } else {
                ctx.optional_secret(PASSPHRASE_SECRET)?
            };
            let signer = Signer::from_pem(pem.expose(), passphrase.as_ref().map(Secret::expose))?;
            // The fingerprint is public; operators compare it with `DESC USER`.
            tracing::debug!(account = account.as_str(), user, fingerprint = signer.fingerprint, "Made a Snowflake JWT");
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let token = Secret::new(signer.token(account, user, now)?);
            Ok::<_, AgentError>((token, Duration::from_secs(LIFETIME_SECS)))
        };
        Ok(Some(cache.get_or_fetch(&key, refused, sign).await?))
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    use super::*;

    const KEY: &str = include_str!("../tests/fixtures/rsa_key.p8");
    const ENCRYPTED: &str = include_str!("../tests/fixtures/rsa_key_encrypted.p8");
    const FINGERPRINT: &str = include_str!("../tests/fixtures/fingerprint.txt");

    #[test]
    fn fingerprint_matches_openssl_and_encrypted_keys_decrypt() {
        let s = Signer::from_pem(KEY, None).unwrap();
        assert_eq!(s.fingerprint, format!("SHA256:{}", FINGERPRINT.trim()));
        let e = Signer::from_pem(ENCRYPTED, Some("flyte-test-passphrase")).unwrap();
        assert_eq!(e.fingerprint, s.fingerprint);
        let err = Signer::from_pem(ENCRYPTED, Some("wrong")).unwrap_err();
        assert!(matches!(&err, AgentError::FailedPrecondition(m) if m.contains("cannot be decrypted")));
        assert!(Signer::from_pem(ENCRYPTED, None).unwrap_err().message().contains("passphrase"));
        let garbage =
            Signer::from_pem("-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----", None).unwrap_err();
        assert!(!garbage.message().contains("not base64"), "errors never quote the key: {garbage}");
        assert_eq!(
            Signer::from_pem("not a key", None).unwrap_err().message(),
            "secret snowflake_private_key is not valid PEM; it must be an RSA private key in PKCS#8 PEM \
             (-----BEGIN PRIVATE KEY----- or, with the secret snowflake_private_key_passphrase, -----BEGIN ENCRYPTED PRIVATE KEY-----)"
        );
    }

    #[test]
    fn claims_and_signature_are_what_snowflake_checks() {
        let s = Signer::from_pem(KEY, None).unwrap();
        let account = AccountId::parse("xy12345.us-east-1", "account").unwrap();
        let t = s.token(&account, "flyte_user", 1_700_000_000).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "XY12345.FLYTE_USER");
        assert_eq!(claims["iss"], format!("XY12345.FLYTE_USER.SHA256:{}", FINGERPRINT.trim()));
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), LIFETIME_SECS);
        // Verify with the public key alone, as Snowflake does.
        let public = s.key.public_key().as_ref().to_vec();
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
