//! RS256 JSON Web Tokens signed with an RSA private key held in a secret: Snowflake's
//! key-pair tokens and Google's service-account assertions. A key never appears in an
//! error or in `Debug`; the public key's fingerprint does, as services show it.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pkcs8::der::pem::PemLabel;
use serde_json::Value as Json;

use crate::error::AgentError;

/// A parsed RSA private key and its public key's fingerprint (`SHA256:<base64>` of the
/// public key's DER, as Snowflake's `DESC USER` shows it).
#[derive(Debug)]
pub struct RsaSigner {
    key: RsaKeyPair,
    fingerprint: String,
}

impl RsaSigner {
    /// Parses a PKCS#8 PEM key, decrypting it with `passphrase` when it is encrypted.
    /// `secret` and `passphrase_secret` name the secrets the key and passphrase come from in
    /// errors (`FAILED_PRECONDITION`: the operator or the task fixes the secret); without a
    /// passphrase secret, encrypted keys are not offered.
    pub fn from_pem(
        pem: &str,
        passphrase: Option<&str>,
        secret: &str,
        passphrase_secret: Option<&str>,
    ) -> Result<Self, AgentError> {
        let bad_key = |what: &str| {
            let form = match passphrase_secret {
                Some(p) => format!(
                    "PKCS#8 PEM (-----BEGIN PRIVATE KEY----- or, with the secret {p}, -----BEGIN ENCRYPTED PRIVATE KEY-----)"
                ),
                None => "PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)".to_owned(),
            };
            AgentError::failed_precondition(format!("secret {secret} {what}; it must be an RSA private key in {form}"))
        };
        let passphrase_secret = passphrase_secret.unwrap_or("passphrase");
        let (label, doc) = pkcs8::SecretDocument::from_pem(pem.trim()).map_err(|_| bad_key("is not valid PEM"))?;
        let der = if label == pkcs8::EncryptedPrivateKeyInfo::PEM_LABEL {
            let missing = format!("is encrypted but the secret {passphrase_secret} is not set");
            let pass = passphrase.ok_or_else(|| bad_key(&missing))?;
            let info: pkcs8::EncryptedPrivateKeyInfo<'_> =
                doc.decode_msg().map_err(|_| bad_key("is not an encrypted PKCS#8 key"))?;
            info.decrypt(pass).map_err(|_| bad_key(&format!("cannot be decrypted with {passphrase_secret}")))?
        } else if label == pkcs8::PrivateKeyInfo::PEM_LABEL {
            doc
        } else {
            return Err(bad_key(&format!("is a '{label}' PEM block")));
        };
        let key = RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|_| bad_key("is not an RSA key"))?;
        let spki = key.public_key().as_der().map_err(|_| bad_key("has a public key that cannot be encoded"))?;
        Ok(Self { fingerprint: format!("SHA256:{}", STANDARD.encode(digest(&SHA256, spki.as_ref()))), key })
    }

    /// The public key's fingerprint, `SHA256:<base64>`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The public key (PKCS#1 DER), to verify tokens with.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// The token `header.claims.signature`: `header` gets `alg` RS256 and `typ` JWT added.
    pub fn sign(&self, header: &Json, claims: &Json) -> Result<String, AgentError> {
        let mut header = header.as_object().cloned().unwrap_or_default();
        header.insert("alg".into(), "RS256".into());
        header.insert("typ".into(), "JWT".into());
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(Json::Object(header).to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .map_err(|_| AgentError::internal("signing a JWT failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use serde_json::json;

    use super::*;

    const KEY: &str = include_str!("../../../agent-snowflake/tests/fixtures/rsa_key.p8");

    #[test]
    fn tokens_carry_the_header_and_claims_and_verify_with_the_public_key() {
        let s = RsaSigner::from_pem(KEY, None, "k", Some("p")).unwrap();
        let t = s.sign(&json!({"kid": "key-1"}), &json!({"iss": "a@b", "aud": "https://x/token"})).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), br#"{"alg":"RS256","kid":"key-1","typ":"JWT"}"#);
        let claims: Json = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims, json!({"iss": "a@b", "aud": "https://x/token"}));
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, s.public_key())
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        let e = RsaSigner::from_pem("garbage", None, "google_application_credentials", None).unwrap_err();
        assert_eq!(
            e.message(),
            "secret google_application_credentials is not valid PEM; it must be an RSA private key in PKCS#8 PEM \
             (-----BEGIN PRIVATE KEY-----)"
        );
        assert!(!format!("{s:?}").contains("PRIVATE"));
    }
}
