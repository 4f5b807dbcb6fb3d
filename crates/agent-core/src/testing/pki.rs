//! A throwaway PKI for TLS tests: certificate authorities and the certificates they issue
//! (PEM), made with rcgen, for servers (`tls.cert_file`) and clients (mutual TLS).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority: its certificate (PEM) and what signs with its key.
pub struct Ca {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a new key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Self { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A certificate (PEM) and its key (PKCS#8 PEM) for `names` (DNS names or IP
    /// addresses; the first is also the common name), good for a server or a client.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_with(names, |_| {})
    }

    /// [`Self::issue`], valid only between `from` and `until` (calendar dates).
    pub fn issue_valid(&self, names: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)) -> (String, String) {
        self.issue_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        })
    }

    fn issue_with(&self, names: &[&str], shape: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let key = KeyPair::generate().expect("a new key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("valid names");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        shape(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("a signed certificate");
        (cert.pem(), key.serialize_pem())
    }
}
