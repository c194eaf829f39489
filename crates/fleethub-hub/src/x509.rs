//! X.509 client certificates: the TLS layer's verifier that asks every client for a certificate without
//! insisting, reading certificates (PEM or base64 DER, subject, validity, thumbprints), and the decision
//! whether a presented chain authenticates an identity whose registry record says `selfSigned` (thumbprint)
//! or `certificateAuthority` (chains to a verified CA, subject CN = device id).
//!
//! Why optional and permissive at the TLS layer: which identity a connection claims is known only at MQTT
//! CONNECT, after the handshake, and Azure devices present self-signed certificates no CA vouches for. The
//! handshake still proves the client holds the certificate's key (its CertificateVerify signature is checked
//! with rustls's webpki helpers); everything else is decided at CONNECT by [`authenticate_certificate`].

use std::sync::Arc;

use fleethub_core::identity::{Authentication, IdentityKey};
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

fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
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
        sha1_thumbprint: upper_hex(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
        ),
        sha256_thumbprint: upper_hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()),
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

/// Verifies that `leaf` (with the `intermediates` the client sent) chains to one of `anchors` at `now`:
/// signatures, validity of every certificate but the anchor, CA constraints, and, if the leaf names
/// extended key usages, that client authentication is one of them (webpki's rules, through rustls).
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'static>],
    now: OffsetDateTime,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        // An anchor webpki cannot take simply does not vouch for anyone.
        let _ = roots.add(anchor.clone());
    }
    if roots.is_empty() {
        return Err("no verified CA certificate is available".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| format!("cannot build the chain verifier: {error}"))?;
    let seconds = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    verifier
        .verify_client_cert(
            leaf,
            intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
        )
        .map(|_| ())
        .map_err(|error| match error {
            rustls::Error::InvalidCertificate(error) => {
                format!("the certificate chain does not verify: {error}")
            }
            other => format!("the certificate chain does not verify: {other}"),
        })
}

/// A CA certificate devices may chain to: verified (proof of possession given) and within its validity.
#[derive(Clone, Debug)]
pub struct TrustedCa {
    pub name: String,
    pub der: CertificateDer<'static>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
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
            let anchors: Vec<CertificateDer<'static>> = trusted_cas
                .iter()
                .filter(|ca| ca.not_before <= now && now <= ca.not_after)
                .map(|ca| ca.der.clone())
                .collect();
            if anchors.is_empty() {
                return Err(
                    "no verified CA certificate within its validity is uploaded: upload one and prove possession of its key"
                        .into(),
                );
            }
            verify_chain(leaf, intermediates, &anchors, now)
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
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = params(
            "root",
            now() - Duration::hours(1),
            now() + Duration::days(1),
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_der = ca_params.self_signed(&ca_key).unwrap().der().clone();
        let facts = inspect(&ca_der).unwrap();
        assert!(facts.is_ca);
        assert_eq!(facts.subject, "CN=root");
        let issuer = Issuer::new(ca_params, ca_key);
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
        let trusted = [TrustedCa {
            name: "root".into(),
            der: ca_der,
            not_before: facts.not_before,
            not_after: facts.not_after,
        }];
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
