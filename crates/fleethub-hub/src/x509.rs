//! X.509 client certificates: the TLS layer's verifier that asks every client for a certificate without
//! insisting, reading certificates (PEM or base64 DER, subject, validity, thumbprints), and the decision
//! whether a presented chain authenticates an identity whose registry record says `selfSigned` (thumbprint)
//! or `certificateAuthority` (chains to a verified CA, subject CN = device id).
//!
//! Why optional and permissive at the TLS layer: which identity a connection claims is known only at MQTT
//! CONNECT, after the handshake, and Azure devices present self-signed certificates no CA vouches for. The
//! handshake still proves the client holds the certificate's key (its CertificateVerify signature is checked
//! with rustls's webpki helpers); everything else is decided at CONNECT by [`authenticate_certificate`].

use std::sync::{Arc, LazyLock};

use fleethub_core::identity::{Authentication, IdentityKey};
use fleethub_protocol::certificates::{thumbprint_sha1, thumbprint_sha256};
use fleethub_protocol::rest::AuthenticationType;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use time::OffsetDateTime;

/// The certificate chain a TLS client presented, leaf first; shared by the connection's tasks.
pub type PeerCertificates = Arc<[CertificateDer<'static>]>;

/// The client certificates of the HTTPS connection a request came in on (a request extension; the MQTT over
/// WebSocket endpoint hands them to the MQTT connection).
#[derive(Clone, Debug, Default)]
pub struct ClientCertificates(pub Option<PeerCertificates>);

/// Offers client authentication, lets clients send no certificate, and accepts any chain whose leaf is a
/// well-formed X.509 certificate; the handshake signature is verified against the leaf's key.
#[derive(Debug)]
pub struct OptionalClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl OptionalClientCertificate {
    pub fn new(provider: &rustls::crypto::CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for OptionalClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client may present any certificate (self-signed ones included).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Validity and trust are decided at CONNECT, per identity; a leaf that is not a certificate at all
        // ends the handshake here.
        match x509_parser::parse_x509_certificate(end_entity) {
            Ok(([], _)) => Ok(ClientCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What the hub reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The subject's distinguished name, `CN=..., O=...`.
    pub subject: String,
    /// The subject's first common name, if it has one that is text.
    pub common_name: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Whether basic constraints say it is a CA.
    pub is_ca: bool,
    /// SHA-1 of the DER, upper-case hex (40 characters).
    pub sha1_thumbprint: String,
    /// SHA-256 of the DER, upper-case hex (64 characters).
    pub sha256_thumbprint: String,
}

/// Why a certificate cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateReadError {
    #[error("the certificate is empty")]
    Empty,
    #[error("the certificate is neither PEM nor base64-encoded DER: {0}")]
    Encoding(String),
    #[error("the PEM holds {0} certificates; send exactly one")]
    NotOne(usize),
    #[error("the certificate is not a valid X.509 certificate: {0}")]
    Malformed(String),
}

/// Reads a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertificateFacts, CertificateReadError> {
    let (rest, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| CertificateReadError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(CertificateReadError::Malformed(format!(
            "{} bytes follow the certificate",
            rest.len()
        )));
    }
    let validity = certificate.validity();
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .map(str::to_owned);
    Ok(CertificateFacts {
        subject: certificate.subject().to_string(),
        common_name,
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        is_ca: certificate.is_ca(),
        sha1_thumbprint: thumbprint_sha1(der),
        sha256_thumbprint: thumbprint_sha256(der),
    })
}

/// Reads one certificate sent as text: PEM (`-----BEGIN CERTIFICATE-----`), or the DER in base64 (what
/// Azure's API also takes). Returns its DER and what it says.
pub fn read_certificate_text(
    text: &str,
) -> Result<(CertificateDer<'static>, CertificateFacts), CertificateReadError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CertificateReadError::Empty);
    }
    let der = if text.contains("-----BEGIN") {
        let certificates = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| CertificateReadError::Encoding(error.to_string()))?;
        match <[_; 1]>::try_from(certificates) {
            Ok([certificate]) => certificate,
            Err(certificates) => return Err(CertificateReadError::NotOne(certificates.len())),
        }
    } else {
        use base64::Engine as _;
        let compact: String = text.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|error| CertificateReadError::Encoding(error.to_string()))?;
        CertificateDer::from(bytes)
    };
    let facts = inspect(&der)?;
    Ok((der, facts))
}

/// The PEM text of a DER certificate.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Checks `leaf` against `now`: not before its notBefore, not after its notAfter.
pub fn check_validity(facts: &CertificateFacts, now: OffsetDateTime) -> Result<(), String> {
    if now < facts.not_before {
        return Err(format!(
            "the certificate is not valid before {}",
            facts.not_before
        ));
    }
    if now > facts.not_after {
        return Err(format!("the certificate expired at {}", facts.not_after));
    }
    Ok(())
}

/// The proof of possession Azure asks for (`POST /certificates/{name}/verify`): `proof_der` has the pending
/// verification `code` as its subject CN, its signature verifies with `ca_der`'s public key, and it is
/// within its validity at `now`. Nothing else is asked of it: Azure's documented steps make it with
/// `openssl x509 -req` and no extensions, an X.509 v1 certificate with no key usage, so this is not a
/// chain verification (webpki takes only v3 certificates, and checks client-auth usage).
pub fn verify_proof_of_possession(
    proof_der: &[u8],
    ca_der: &[u8],
    code: &str,
    now: OffsetDateTime,
) -> Result<(), ProofOfPossessionError> {
    let facts = inspect(proof_der).map_err(ProofOfPossessionError::Unreadable)?;
    if facts.common_name.as_deref() != Some(code) {
        return Err(ProofOfPossessionError::WrongCode {
            common_name: facts.common_name.unwrap_or_default(),
            code: code.to_owned(),
        });
    }
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der)
        .map_err(|error| ProofOfPossessionError::CaUnreadable(error.to_string()))?;
    let (_, proof) = x509_parser::parse_x509_certificate(proof_der).map_err(|error| {
        ProofOfPossessionError::Unreadable(CertificateReadError::Malformed(error.to_string()))
    })?;
    proof
        .verify_signature(Some(ca.public_key()))
        .map_err(|error| ProofOfPossessionError::NotSignedByCa(error.to_string()))?;
    check_validity(&facts, now).map_err(ProofOfPossessionError::NotValidNow)
}

/// Why a proof-of-possession certificate was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofOfPossessionError {
    #[error("the verification certificate: {0}")]
    Unreadable(CertificateReadError),
    #[error(
        "the verification certificate's subject CN is {common_name:?}, not the verification code {code:?}"
    )]
    WrongCode { common_name: String, code: String },
    #[error("the stored CA certificate does not parse: {0}")]
    CaUnreadable(String),
    #[error("the verification certificate is not signed by the CA certificate's key ({0})")]
    NotSignedByCa(String),
    #[error("the verification certificate: {0}")]
    NotValidNow(String),
}

/// The crypto provider the CA chain verifiers share (made once; a provider is a table of algorithms).
static CHAIN_PROVIDER: LazyLock<Arc<rustls::crypto::CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// A CA certificate devices may chain to: verified (proof of possession given). It vouches only while
/// within its own validity, which [`authenticate_certificate`] checks (webpki ignores an anchor's validity).
///
/// Each CA carries its own chain verifier, built once when it enters the trusted set
/// ([`crate::certificates::CaCertificates`]), not at every CONNECT: one verifier per CA, rather than one for
/// the whole set, so that a CA outside its validity can be left out at CONNECT time without rebuilding
/// anything. Trying a CA the chain does not name as issuer costs a name comparison.
#[derive(Clone, Debug)]
pub struct TrustedCa {
    pub name: String,
    pub der: CertificateDer<'static>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustedCa {
    /// Reads `der` and builds its chain verifier; an error if it does not parse or webpki cannot take it as a
    /// trust anchor (it then vouches for no one).
    pub fn new(name: impl Into<String>, der: CertificateDer<'static>) -> Result<Self, String> {
        let facts = inspect(&der).map_err(|error| error.to_string())?;
        let mut roots = RootCertStore::empty();
        roots
            .add(der.clone())
            .map_err(|error| format!("webpki cannot take it as a trust anchor: {error}"))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&CHAIN_PROVIDER),
        )
        .build()
        .map_err(|error| format!("cannot build its chain verifier: {error}"))?;
        Ok(Self {
            name: name.into(),
            der,
            not_before: facts.not_before,
            not_after: facts.not_after,
            verifier,
        })
    }

    fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Verifies that `leaf` (with the `intermediates` the client sent) chains to this CA at `now`:
    /// signatures, validity of every certificate but the anchor, CA constraints, and, if the leaf names
    /// extended key usages, that client authentication is one of them (webpki's rules, through rustls).
    fn verify_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let seconds = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        self.verifier
            .verify_client_cert(
                leaf,
                intermediates,
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
            )
            .map(|_| ())
            .map_err(|error| match error {
                rustls::Error::InvalidCertificate(error) => error.to_string(),
                other => other.to_string(),
            })
    }
}

/// Decides whether the presented `chain` (leaf first) authenticates `key`, whose registry authentication is
/// `authentication` (`selfSigned` or `certificateAuthority`). Refusals say why, for the log.
pub fn authenticate_certificate(
    key: &IdentityKey,
    authentication: &Authentication,
    chain: Option<&[CertificateDer<'static>]>,
    trusted_cas: &[TrustedCa],
    now: OffsetDateTime,
) -> Result<(), String> {
    let kind = match authentication.kind {
        AuthenticationType::SelfSigned => "selfSigned",
        AuthenticationType::CertificateAuthority => "certificateAuthority",
        AuthenticationType::Sas | AuthenticationType::None => {
            return Err(format!("{key} does not authenticate with X.509"));
        }
    };
    let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
        return Err(format!(
            "{key} authenticates with an X.509 certificate ({kind}) and the connection presented none"
        ));
    };
    let facts = inspect(leaf).map_err(|error| format!("the client certificate: {error}"))?;
    check_validity(&facts, now).map_err(|error| format!("the client certificate: {error}"))?;
    match authentication.kind {
        AuthenticationType::SelfSigned => {
            let matches = [
                &authentication.primary_thumbprint,
                &authentication.secondary_thumbprint,
            ]
            .into_iter()
            .flatten()
            .any(|stored| {
                stored.eq_ignore_ascii_case(&facts.sha1_thumbprint)
                    || stored.eq_ignore_ascii_case(&facts.sha256_thumbprint)
            });
            if matches {
                Ok(())
            } else {
                Err(format!(
                    "the client certificate (SHA-1 {}, SHA-256 {}) matches neither of {key}'s thumbprints",
                    facts.sha1_thumbprint, facts.sha256_thumbprint
                ))
            }
        }
        _ => {
            if key.module_id.is_some() {
                return Err(format!(
                    "{key}: certificateAuthority authentication of modules is not supported"
                ));
            }
            let device_id = key.device_id.as_str();
            if facts.common_name.as_deref() != Some(device_id) {
                return Err(format!(
                    "the client certificate's subject CN is {:?}, not the device id {device_id:?}",
                    facts.common_name.as_deref().unwrap_or("")
                ));
            }
            let mut refusals = Vec::new();
            for ca in trusted_cas.iter().filter(|ca| ca.is_valid_at(now)) {
                match ca.verify_chain(leaf, intermediates, now) {
                    Ok(()) => return Ok(()),
                    Err(error) => refusals.push(format!("{}: {error}", ca.name)),
                }
            }
            if refusals.is_empty() {
                return Err(
                    "no verified CA certificate within its validity is uploaded: upload one and prove possession of its key"
                        .into(),
                );
            }
            Err(format!(
                "the certificate chain does not verify against any verified CA ({})",
                refusals.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use time::Duration;

    use super::*;

    fn params(common_name: &str, from: OffsetDateTime, to: OffsetDateTime) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.not_before = from;
        params.not_after = to;
        params
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// A self-signed CA "root", valid from an hour ago for a day: its DER and the issuer to sign with.
    fn root_ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = params(
            "root",
            now() - Duration::hours(1),
            now() + Duration::days(1),
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_der = ca_params.self_signed(&ca_key).unwrap().der().clone();
        (ca_der, Issuer::new(ca_params, ca_key))
    }

    fn self_signed(
        common_name: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        params(common_name, from, to)
            .self_signed(&key)
            .expect("certificate")
            .der()
            .clone()
    }

    fn device(id: &str) -> IdentityKey {
        IdentityKey::device(id.parse().expect("valid id"))
    }

    fn self_signed_auth(primary: &str) -> Authentication {
        Authentication {
            kind: AuthenticationType::SelfSigned,
            primary_key: None,
            secondary_key: None,
            primary_thumbprint: Some(primary.to_owned()),
            secondary_thumbprint: None,
        }
    }

    #[test]
    fn self_signed_refusals_say_why() {
        let valid = self_signed("d", now() - Duration::hours(1), now() + Duration::hours(1));
        let expired = self_signed("d", now() - Duration::days(2), now() - Duration::days(1));
        let facts = inspect(&valid).unwrap();
        let auth = self_signed_auth(&facts.sha256_thumbprint.to_lowercase());
        let check = |chain: Option<&[CertificateDer<'static>]>, auth: &Authentication| {
            authenticate_certificate(&device("d"), auth, chain, &[], now())
        };
        assert_eq!(check(Some(std::slice::from_ref(&valid)), &auth), Ok(()));
        assert!(check(None, &auth).unwrap_err().contains("presented none"));
        let expired_auth = self_signed_auth(&inspect(&expired).unwrap().sha1_thumbprint);
        assert!(
            check(Some(std::slice::from_ref(&expired)), &expired_auth)
                .unwrap_err()
                .contains("expired")
        );
        let other = self_signed("d", now() - Duration::hours(1), now() + Duration::hours(1));
        assert!(
            check(Some(std::slice::from_ref(&other)), &auth)
                .unwrap_err()
                .contains("matches neither")
        );
    }

    #[test]
    fn ca_refusals_say_why() {
        let (ca_der, issuer) = root_ca();
        let facts = inspect(&ca_der).unwrap();
        assert!(facts.is_ca);
        assert_eq!(facts.subject, "CN=root");
        let issue = |common_name: &str| {
            let key = KeyPair::generate().expect("key");
            params(
                common_name,
                now() - Duration::hours(1),
                now() + Duration::hours(1),
            )
            .signed_by(&key, &issuer)
            .unwrap()
            .der()
            .clone()
        };
        let trusted = [TrustedCa::new("root", ca_der).expect("a usable anchor")];
        let auth = Authentication {
            kind: AuthenticationType::CertificateAuthority,
            ..self_signed_auth("00")
        };
        let check = |leaf: CertificateDer<'static>, cas: &[TrustedCa]| {
            authenticate_certificate(&device("d"), &auth, Some(&[leaf]), cas, now())
        };
        assert_eq!(check(issue("d"), &trusted), Ok(()));
        assert!(
            check(issue("e"), &trusted)
                .unwrap_err()
                .contains("subject CN")
        );
        assert!(
            check(issue("d"), &[])
                .unwrap_err()
                .contains("no verified CA")
        );
        let stranger = self_signed("d", now() - Duration::hours(1), now() + Duration::hours(1));
        assert!(
            check(stranger, &trusted)
                .unwrap_err()
                .contains("does not verify")
        );
        let mut expired_ca = trusted[0].clone();
        expired_ca.not_after = now() - Duration::hours(1);
        assert!(
            check(issue("d"), &[expired_ca])
                .unwrap_err()
                .contains("no verified CA")
        );
    }

    /// Made by `openssl x509 -req` without extensions, as Azure's proof-of-possession steps do: X.509 v1
    /// (`tests/fixtures/x509-v1/README.md`).
    const FIXTURE_CA: &str = include_str!("../tests/fixtures/x509-v1/root-ca.pem");
    const FIXTURE_V1_PROOF: &str = include_str!("../tests/fixtures/x509-v1/v1-verification.pem");
    const FIXTURE_CODE: &str = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF";

    #[test]
    fn proof_of_possession_takes_a_v1_certificate_signed_by_the_ca() {
        let (ca, _) = read_certificate_text(FIXTURE_CA).unwrap();
        let (proof, _) = read_certificate_text(FIXTURE_V1_PROOF).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&proof).unwrap();
        assert_eq!(parsed.version(), x509_parser::x509::X509Version::V1);
        assert_eq!(
            verify_proof_of_possession(&proof, &ca, FIXTURE_CODE, now()),
            Ok(())
        );

        assert!(matches!(
            verify_proof_of_possession(&proof, &ca, "ANOTHERCODE", now()),
            Err(ProofOfPossessionError::WrongCode { .. })
        ));
        let after_expiry = inspect(&proof).unwrap().not_after + Duration::seconds(1);
        assert!(matches!(
            verify_proof_of_possession(&proof, &ca, FIXTURE_CODE, after_expiry),
            Err(ProofOfPossessionError::NotValidNow(_))
        ));
        // Another CA's key: an rcgen CA with the fixture CA's subject.
        let mut impostor = params(
            "fleethub v1 fixture root",
            now() - Duration::hours(1),
            now() + Duration::days(1),
        );
        impostor.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let impostor = impostor.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert!(matches!(
            verify_proof_of_possession(&proof, impostor.der(), FIXTURE_CODE, now()),
            Err(ProofOfPossessionError::NotSignedByCa(_))
        ));
        // The fixture with one bit of its signature (the DER's last byte) flipped.
        let mut tampered = proof.to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            verify_proof_of_possession(&tampered, &ca, FIXTURE_CODE, now()),
            Err(ProofOfPossessionError::NotSignedByCa(_))
        ));
    }

    #[test]
    fn proof_of_possession_takes_an_rcgen_v3_certificate_with_an_ecdsa_ca() {
        let (ca_der, issuer) = root_ca();
        let proof = params(
            "CODE",
            now() - Duration::hours(1),
            now() + Duration::hours(1),
        )
        .signed_by(&KeyPair::generate().unwrap(), &issuer)
        .unwrap();
        assert_eq!(
            verify_proof_of_possession(proof.der(), &ca_der, "CODE", now()),
            Ok(())
        );
    }

    #[test]
    fn certificate_text_is_pem_or_base64_der_and_exactly_one() {
        let der = self_signed("d", now() - Duration::hours(1), now() + Duration::hours(1));
        let pem = to_pem(&der);
        assert_eq!(read_certificate_text(&pem).unwrap().0, der);
        use base64::Engine as _;
        let base64 = base64::engine::general_purpose::STANDARD.encode(&der);
        assert_eq!(read_certificate_text(&base64).unwrap().0, der);
        assert_eq!(
            read_certificate_text(&format!("{pem}{pem}")).unwrap_err(),
            CertificateReadError::NotOne(2)
        );
        assert_eq!(
            read_certificate_text("  ").unwrap_err(),
            CertificateReadError::Empty
        );
        assert!(matches!(
            read_certificate_text("not a certificate!").unwrap_err(),
            CertificateReadError::Encoding(_)
        ));
        assert!(matches!(
            read_certificate_text("AAAA").unwrap_err(),
            CertificateReadError::Malformed(_)
        ));
    }
}
