//! X.509 CA certificates (Azure's `/certificates/{name}`): upload, read, list, delete, and the proof of
//! possession (a verification code, then a certificate with that code as its subject CN signed by the CA's
//! key) that makes a CA trusted. Devices with `certificateAuthority` authentication connect with a
//! certificate that chains to a verified CA within its validity (`x509::authenticate_certificate`).
//!
//! The verified CAs are kept in memory ([`CaCertificates::trusted`]), each with its chain verifier built
//! once, so a CONNECT reads no database and builds nothing. The set is read from the store at start; after
//! that each write applies its own record to it once the store has taken the write (no re-read that could
//! fail after the write succeeded). Writes run one at a time (the etag checks and the in-memory update
//! would race otherwise), so the set stays what a re-read would give.

use std::sync::{Arc, RwLock};

use fleethub_protocol::certificates::{
    CERTIFICATE_RESOURCE_TYPE, CertificateDescription, CertificateProperties, CertificateUpload,
    CertificateVerification, format_rfc1123, upper_hex,
};
use fleethub_protocol::ids::{ETag, IfMatch};
use fleethub_store::{CaCertificateRecord, Store, StoreError};

use crate::services::Services;
use crate::x509::{self, TrustedCa};

/// The in-memory half: verified CAs devices may chain to, and the lock that serialises writes.
#[derive(Debug, Default)]
pub struct CaCertificates {
    trusted: RwLock<Arc<Vec<TrustedCa>>>,
    writes: tokio::sync::Mutex<()>,
}

impl CaCertificates {
    /// Reads the verified set from the store (at start), building each CA's chain verifier.
    pub async fn load(&self, store: &dyn Store) -> Result<(), StoreError> {
        let records = store.list_ca_certificates().await?;
        let trusted: Vec<TrustedCa> = records.into_iter().filter_map(trusted_ca).collect();
        *self.trusted.write().expect("the CA lock is never poisoned") = Arc::new(trusted);
        Ok(())
    }

    /// Applies a record the store has just taken: replaces the CA of that name in the verified set, or
    /// takes it out if the record is not verified. Called with `writes` held.
    fn apply_saved(&self, record: CaCertificateRecord) {
        let name = record.name.clone();
        let entry = trusted_ca(record);
        self.replace(&name, entry);
    }

    /// Takes a deleted CA out of the verified set. Called with `writes` held.
    fn apply_deleted(&self, name: &str) {
        self.replace(name, None);
    }

    fn replace(&self, name: &str, entry: Option<TrustedCa>) {
        let mut trusted = self.trusted.write().expect("the CA lock is never poisoned");
        let mut next: Vec<TrustedCa> = trusted
            .iter()
            .filter(|ca| ca.name != name)
            .cloned()
            .collect();
        next.extend(entry);
        *trusted = Arc::new(next);
    }

    /// The verified CA certificates.
    pub fn trusted(&self) -> Arc<Vec<TrustedCa>> {
        Arc::clone(&self.trusted.read().expect("the CA lock is never poisoned"))
    }
}

/// The trusted-set entry of a stored record: none unless it is verified and usable as a trust anchor.
fn trusted_ca(record: CaCertificateRecord) -> Option<TrustedCa> {
    if !record.is_verified {
        return None;
    }
    match TrustedCa::new(record.name.as_str(), record.certificate_der.into()) {
        Ok(ca) => Some(ca),
        Err(error) => {
            tracing::warn!(name = %record.name, %error, "a verified CA certificate is not usable; it is not trusted");
            None
        }
    }
}

/// Why a certificate request failed; `rest/error.rs` maps each to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum CertificateRequestError {
    /// A malformed name or body, a certificate that does not read or is not acceptable: HTTP 400.
    #[error("{0}")]
    Invalid(String),
    /// HTTP 404 (`CertificateNotFound`).
    #[error("certificate {0:?} not found")]
    NotFound(String),
    /// HTTP 412.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Azure: 1 to 64 letters, digits, `-`, `.` and `_`.
pub fn validate_certificate_name(name: &str) -> Result<(), CertificateRequestError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(CertificateRequestError::Invalid(format!(
            "certificate name {name:?} must be 1 to 64 letters, digits, '-', '.' or '_'"
        )))
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the operating system's random source is available");
    upper_hex(&buffer)
}

fn new_etag() -> String {
    use base64::Engine as _;
    let mut buffer = [0u8; 8];
    getrandom::fill(&mut buffer).expect("the operating system's random source is available");
    base64::engine::general_purpose::STANDARD.encode(buffer)
}

fn check_if_match(
    record: &CaCertificateRecord,
    if_match: Option<&IfMatch>,
) -> Result<(), CertificateRequestError> {
    match if_match {
        Some(if_match) if !if_match.matches(&ETag::new(record.etag.as_str())) => {
            Err(CertificateRequestError::PreconditionFailed(format!(
                "the If-Match etag does not match certificate {:?}'s current etag {:?}",
                record.name, record.etag
            )))
        }
        _ => Ok(()),
    }
}

/// Renders a stored record in Azure's shape; `with_code` adds the pending verification code.
pub fn describe(record: &CaCertificateRecord, with_code: bool) -> CertificateDescription {
    let facts = x509::inspect(&record.certificate_der).ok();
    CertificateDescription {
        properties: CertificateProperties {
            subject: facts.as_ref().map(|facts| facts.subject.clone()),
            expiry: facts.as_ref().map(|facts| format_rfc1123(facts.not_after)),
            thumbprint: facts.as_ref().map(|facts| facts.sha1_thumbprint.clone()),
            is_verified: Some(record.is_verified),
            created: Some(format_rfc1123(record.created)),
            updated: Some(format_rfc1123(record.updated)),
            verification_code: if with_code {
                record.verification_code.clone()
            } else {
                None
            },
            certificate: Some(x509::to_pem(&record.certificate_der)),
        },
        id: format!("/certificates/{}", record.name),
        name: record.name.clone(),
        etag: record.etag.clone(),
        resource_type: CERTIFICATE_RESOURCE_TYPE.into(),
    }
}

impl Services {
    async fn load_ca_certificate(
        &self,
        name: &str,
    ) -> Result<CaCertificateRecord, CertificateRequestError> {
        validate_certificate_name(name)?;
        self.store
            .get_ca_certificate(name)
            .await?
            .ok_or_else(|| CertificateRequestError::NotFound(name.to_owned()))
    }

    /// Stores the record, then applies it to the in-memory verified set (which cannot fail, so a write the
    /// store took is never answered with an error). Call with `certificates.writes` held.
    async fn save_ca_certificate(
        &self,
        record: CaCertificateRecord,
    ) -> Result<(), CertificateRequestError> {
        self.store.put_ca_certificate(record.clone()).await?;
        self.certificates.apply_saved(record);
        Ok(())
    }

    /// `PUT /certificates/{name}`: creates (no If-Match) or replaces (If-Match with its etag, or `*`) a CA
    /// certificate. Replacing it with a different certificate makes it unverified again, unless the upload
    /// says `isVerified: true`.
    pub async fn put_ca_certificate(
        &self,
        name: &str,
        upload: CertificateUpload,
        if_match: Option<IfMatch>,
    ) -> Result<CertificateDescription, CertificateRequestError> {
        validate_certificate_name(name)?;
        let text = upload.certificate().ok_or_else(|| {
            CertificateRequestError::Invalid(
                "the body has no certificate: send {\"properties\": {\"certificate\": \"<PEM>\"}}"
                    .into(),
            )
        })?;
        let (der, facts) = x509::read_certificate_text(text)
            .map_err(|error| CertificateRequestError::Invalid(error.to_string()))?;
        if !facts.is_ca {
            return Err(CertificateRequestError::Invalid(format!(
                "the certificate ({}) is not a CA certificate: its basic constraints do not say cA=true",
                facts.subject
            )));
        }
        let now = self.now();
        if now > facts.not_after {
            return Err(CertificateRequestError::Invalid(format!(
                "the certificate ({}) expired at {}",
                facts.subject,
                format_rfc1123(facts.not_after)
            )));
        }
        let _writing = self.certificates.writes.lock().await;
        let existing = self.store.get_ca_certificate(name).await?;
        let record = match existing {
            None => {
                if let Some(IfMatch::Tag(etag)) = &if_match {
                    return Err(CertificateRequestError::PreconditionFailed(format!(
                        "certificate {name:?} does not exist, so no etag ({etag}) matches"
                    )));
                }
                CaCertificateRecord {
                    name: name.to_owned(),
                    certificate_der: der.to_vec(),
                    is_verified: upload.is_verified(),
                    verification_code: None,
                    created: now,
                    updated: now,
                    etag: new_etag(),
                }
            }
            Some(existing) => {
                if if_match.is_none() {
                    return Err(CertificateRequestError::PreconditionFailed(format!(
                        "certificate {name:?} already exists: send its etag in If-Match to replace it"
                    )));
                }
                check_if_match(&existing, if_match.as_ref())?;
                let same = existing.certificate_der == der.as_ref();
                CaCertificateRecord {
                    name: name.to_owned(),
                    certificate_der: der.to_vec(),
                    is_verified: upload.is_verified() || (same && existing.is_verified),
                    verification_code: if same {
                        existing.verification_code
                    } else {
                        None
                    },
                    created: existing.created,
                    updated: now,
                    etag: new_etag(),
                }
            }
        };
        let description = describe(&record, false);
        self.save_ca_certificate(record).await?;
        Ok(description)
    }

    /// `GET /certificates/{name}`.
    pub async fn get_ca_certificate(
        &self,
        name: &str,
    ) -> Result<CertificateDescription, CertificateRequestError> {
        Ok(describe(&self.load_ca_certificate(name).await?, false))
    }

    /// `GET /certificates`.
    pub async fn list_ca_certificates(
        &self,
    ) -> Result<Vec<CertificateDescription>, CertificateRequestError> {
        Ok(self
            .store
            .list_ca_certificates()
            .await?
            .iter()
            .map(|record| describe(record, false))
            .collect())
    }

    /// `DELETE /certificates/{name}`: devices chaining only to it are refused from their next CONNECT on.
    pub async fn delete_ca_certificate(
        &self,
        name: &str,
        if_match: Option<IfMatch>,
    ) -> Result<(), CertificateRequestError> {
        let _writing = self.certificates.writes.lock().await;
        let record = self.load_ca_certificate(name).await?;
        check_if_match(&record, if_match.as_ref())?;
        if !self.store.delete_ca_certificate(name).await? {
            return Err(CertificateRequestError::NotFound(name.to_owned()));
        }
        self.certificates.apply_deleted(name);
        Ok(())
    }

    /// `POST /certificates/{name}/generateVerificationCode`: a fresh code (the previous one stops working)
    /// to put as the subject CN of a certificate signed by the CA's key.
    pub async fn generate_verification_code(
        &self,
        name: &str,
        if_match: Option<IfMatch>,
    ) -> Result<CertificateDescription, CertificateRequestError> {
        let _writing = self.certificates.writes.lock().await;
        let mut record = self.load_ca_certificate(name).await?;
        check_if_match(&record, if_match.as_ref())?;
        record.verification_code = Some(random_hex(24));
        record.updated = self.now();
        record.etag = new_etag();
        let description = describe(&record, true);
        self.save_ca_certificate(record).await?;
        Ok(description)
    }

    /// `POST /certificates/{name}/verify`: proof of possession. The certificate sent must have the pending
    /// verification code as its subject CN, be signed by the CA's key, and be within its validity; any X.509
    /// version (`x509::verify_proof_of_possession`).
    pub async fn verify_ca_certificate(
        &self,
        name: &str,
        if_match: Option<IfMatch>,
        verification: CertificateVerification,
    ) -> Result<CertificateDescription, CertificateRequestError> {
        let _writing = self.certificates.writes.lock().await;
        let mut record = self.load_ca_certificate(name).await?;
        check_if_match(&record, if_match.as_ref())?;
        let Some(code) = record.verification_code.clone() else {
            return Err(CertificateRequestError::Invalid(format!(
                "certificate {name:?} has no pending verification code: call generateVerificationCode first"
            )));
        };
        let (der, _) = x509::read_certificate_text(&verification.certificate).map_err(|error| {
            CertificateRequestError::Invalid(format!("the verification certificate: {error}"))
        })?;
        let now = self.now();
        x509::verify_proof_of_possession(&der, &record.certificate_der, &code, now).map_err(
            |error| match error {
                x509::ProofOfPossessionError::NotSignedByCa(reason) => {
                    CertificateRequestError::Invalid(format!(
                        "the verification certificate is not signed by certificate {name:?}'s key ({reason})"
                    ))
                }
                other => CertificateRequestError::Invalid(other.to_string()),
            },
        )?;
        record.is_verified = true;
        record.verification_code = None;
        record.updated = now;
        record.etag = new_etag();
        let description = describe(&record, false);
        self.save_ca_certificate(record).await?;
        Ok(description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, is_verified: bool) -> CaCertificateRecord {
        let (der, _) =
            x509::read_certificate_text(include_str!("../tests/fixtures/x509-v1/root-ca.pem"))
                .unwrap();
        CaCertificateRecord {
            name: name.into(),
            certificate_der: der.to_vec(),
            is_verified,
            verification_code: None,
            created: time::OffsetDateTime::UNIX_EPOCH,
            updated: time::OffsetDateTime::UNIX_EPOCH,
            etag: "e".into(),
        }
    }

    fn trusted_names(certificates: &CaCertificates) -> Vec<String> {
        let mut names: Vec<String> = certificates
            .trusted()
            .iter()
            .map(|ca| ca.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_apply_to_the_trusted_set_without_a_re_read() {
        let certificates = CaCertificates::default();
        certificates.apply_saved(record("a", true));
        certificates.apply_saved(record("b", false));
        certificates.apply_saved(record("c", true));
        assert_eq!(trusted_names(&certificates), ["a", "c"]);
        // Replaced by an unverified certificate: no longer trusted; verified again: trusted once.
        certificates.apply_saved(record("a", false));
        assert_eq!(trusted_names(&certificates), ["c"]);
        certificates.apply_saved(record("b", true));
        certificates.apply_saved(record("b", true));
        assert_eq!(trusted_names(&certificates), ["b", "c"]);
        certificates.apply_deleted("c");
        certificates.apply_deleted("unknown");
        assert_eq!(trusted_names(&certificates), ["b"]);
        // A verified record that is not a certificate is left out (and logged), not an error.
        let mut garbage = record("d", true);
        garbage.certificate_der = b"not DER".to_vec();
        certificates.apply_saved(garbage);
        assert_eq!(trusted_names(&certificates), ["b"]);
    }

    #[test]
    fn certificate_names_follow_azure() {
        assert!(validate_certificate_name("root-CA_1.v2").is_ok());
        assert!(validate_certificate_name("").is_err());
        assert!(validate_certificate_name(&"a".repeat(65)).is_err());
        assert!(validate_certificate_name("a/b").is_err());
        assert!(validate_certificate_name("a b").is_err());
    }
}
