//! X.509 CA certificates (Azure's `/certificates/{name}`): upload, read, list, delete, and the proof of
//! possession (a verification code, then a certificate with that code as its subject CN signed by the CA's
//! key) that makes a CA trusted. Devices with `certificateAuthority` authentication connect with a
//! certificate that chains to a verified CA within its validity (`x509::authenticate_certificate`).
//!
//! The verified CAs are kept in memory ([`CaCertificates::trusted`]) so a CONNECT reads no database; the set
//! is rebuilt from the store after every write. Writes run one at a time (the etag checks and the refresh
//! would race otherwise).

use std::sync::{Arc, RwLock};

use fleethub_protocol::certificates::{
    CERTIFICATE_RESOURCE_TYPE, CertificateDescription, CertificateProperties, CertificateUpload,
    CertificateVerification, format_rfc1123,
};
use fleethub_protocol::ids::{ETag, IfMatch};
use fleethub_store::{CaCertificateRecord, Store, StoreError};
use time::OffsetDateTime;

use crate::services::Services;
use crate::x509::{self, TrustedCa};

/// The in-memory half: verified CAs devices may chain to, and the lock that serialises writes.
#[derive(Debug, Default)]
pub struct CaCertificates {
    trusted: RwLock<Arc<Vec<TrustedCa>>>,
    writes: tokio::sync::Mutex<()>,
}

impl CaCertificates {
    /// Rebuilds the verified set from the store (at start, and after each write).
    pub async fn load(&self, store: &dyn Store) -> Result<(), StoreError> {
        let records = store.list_ca_certificates().await?;
        let trusted: Vec<TrustedCa> = records
            .into_iter()
            .filter(|record| record.is_verified)
            .filter_map(|record| match x509::inspect(&record.certificate_der) {
                Ok(facts) => Some(TrustedCa {
                    name: record.name,
                    der: record.certificate_der.into(),
                    not_before: facts.not_before,
                    not_after: facts.not_after,
                }),
                Err(error) => {
                    tracing::warn!(name = %record.name, %error, "a stored CA certificate does not parse; it is not trusted");
                    None
                }
            })
            .collect();
        *self.trusted.write().expect("the CA lock is never poisoned") = Arc::new(trusted);
        Ok(())
    }

    /// The verified CA certificates.
    pub fn trusted(&self) -> Arc<Vec<TrustedCa>> {
        Arc::clone(&self.trusted.read().expect("the CA lock is never poisoned"))
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
    buffer.iter().map(|byte| format!("{byte:02X}")).collect()
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

    /// Stores the record and refreshes the verified set.
    async fn save_ca_certificate(
        &self,
        record: CaCertificateRecord,
    ) -> Result<(), CertificateRequestError> {
        self.store.put_ca_certificate(record).await?;
        self.certificates.load(&*self.store).await?;
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
        self.certificates.load(&*self.store).await?;
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
    /// verification code as its subject CN, be signed by the CA's key, and be within its validity.
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
        let (der, facts) =
            x509::read_certificate_text(&verification.certificate).map_err(|error| {
                CertificateRequestError::Invalid(format!("the verification certificate: {error}"))
            })?;
        if facts.common_name.as_deref() != Some(code.as_str()) {
            return Err(CertificateRequestError::Invalid(format!(
                "the verification certificate's subject CN is {:?}, not the verification code {code:?}",
                facts.common_name.as_deref().unwrap_or("")
            )));
        }
        let now: OffsetDateTime = self.now();
        x509::verify_chain(
            &der,
            &[],
            &[record.certificate_der.clone().into()],
            now,
        )
        .map_err(|error| {
            CertificateRequestError::Invalid(format!(
                "the verification certificate is not signed by certificate {name:?}'s key ({error})"
            ))
        })?;
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

    #[test]
    fn certificate_names_follow_azure() {
        assert!(validate_certificate_name("root-CA_1.v2").is_ok());
        assert!(validate_certificate_name("").is_err());
        assert!(validate_certificate_name(&"a".repeat(65)).is_err());
        assert!(validate_certificate_name("a/b").is_err());
        assert!(validate_certificate_name("a b").is_err());
    }
}
