//! X.509 test certificates made with rcgen: self-signed device certificates and a CA that issues device
//! (or proof-of-possession) certificates, each with the key a device would hold. rcgen makes X.509 v3 only;
//! the v1 proof-of-possession case is a fixture (`crates/fleethub-hub/tests/fixtures/x509-v1`).

use fleethub_protocol::certificates::{thumbprint_sha1, thumbprint_sha256};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

/// A certificate and its key, as a device holds them.
pub struct TestCertificate {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub pem: String,
    pub key: KeyPair,
}

impl TestCertificate {
    pub fn der(&self) -> &[u8] {
        &self.chain[0]
    }

    /// Lower-case, as a caller might type it (the registry matches thumbprints regardless of case).
    pub fn sha1(&self) -> String {
        thumbprint_sha1(self.der()).to_lowercase()
    }

    pub fn sha256(&self) -> String {
        thumbprint_sha256(self.der()).to_lowercase()
    }
}

/// A subject of just `CN=common_name`, valid from `not_before` to `not_after`, no extensions.
pub fn certificate_params(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Self-signed, valid from an hour ago for 30 days.
pub fn self_signed(common_name: &str) -> TestCertificate {
    self_signed_valid(
        common_name,
        now() - Duration::hours(1),
        now() + Duration::days(30),
    )
}

pub fn self_signed_valid(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> TestCertificate {
    let key = KeyPair::generate().expect("key");
    let certificate = certificate_params(common_name, not_before, not_after)
        .self_signed(&key)
        .expect("self-signed certificate");
    TestCertificate {
        chain: vec![certificate.der().clone()],
        pem: certificate.pem(),
        key,
    }
}

/// A CA: its certificate (PEM) and what signs with it.
pub struct TestCa {
    pub pem: String,
    pub issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A self-signed CA (`cA=true`, keyCertSign), valid from an hour ago for a year.
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = certificate_params(
            common_name,
            now() - Duration::hours(1),
            now() + Duration::days(365),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).expect("CA certificate");
        Self {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `common_name` signed by this CA, valid from an hour ago for 30 days.
    pub fn issue(&self, common_name: &str) -> TestCertificate {
        let key = KeyPair::generate().expect("key");
        let certificate = certificate_params(
            common_name,
            now() - Duration::hours(1),
            now() + Duration::days(30),
        )
        .signed_by(&key, &self.issuer)
        .expect("signed certificate");
        TestCertificate {
            chain: vec![certificate.der().clone()],
            pem: certificate.pem(),
            key,
        }
    }

    /// [`TestCa::issue`]'s certificate, PEM only.
    pub fn issue_pem(&self, common_name: &str) -> String {
        self.issue(common_name).pem
    }
}
