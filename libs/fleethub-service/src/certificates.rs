//! X.509 CA certificates (`/certificates/{name}`, Azure's certificates API): upload, read, list, delete,
//! and the proof of possession (a verification code, then a certificate with that code as its subject CN
//! signed by the CA's key) after which devices whose certificates chain to the CA can connect.

use fleethub_protocol::certificates::{
    CertificateDescription, CertificateListDescription, CertificateUpload, CertificateVerification,
};
use fleethub_protocol::ids::ETag;
use fleethub_protocol::percent::quote;
use reqwest::Method;

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

fn certificate_path(name: &str) -> String {
    wire::with_query(&format!("/certificates/{}", quote(name)), &[])
}

impl ServiceClient {
    /// Uploads a CA certificate (PEM, or the DER in base64) under `name` (`PUT /certificates/{name}`, needs
    /// RegistryWrite). `replace`: `None` creates it (412 if the name is taken), `Some(etag)` replaces the
    /// one with that etag (`*` for any). `is_verified` marks it verified without proof of possession, as
    /// Azure allows. A malformed or non-CA certificate fails with 400 and the reason.
    pub async fn upload_ca_certificate(
        &self,
        name: &str,
        certificate: &str,
        is_verified: bool,
        replace: Option<&ETag>,
    ) -> Result<CertificateDescription, ServiceError> {
        let mut call = Call::new(Method::PUT, certificate_path(name), "a CA certificate")
            .json_body(&CertificateUpload::new(certificate, is_verified))?;
        if let Some(etag) = replace {
            call = call.if_match(Some(etag))?;
        }
        self.call_json(call).await
    }

    /// A CA certificate (`GET /certificates/{name}`); 404 `CertificateNotFound`.
    pub async fn get_ca_certificate(
        &self,
        name: &str,
    ) -> Result<CertificateDescription, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            certificate_path(name),
            "a CA certificate",
        ))
        .await
    }

    /// Every CA certificate, by name (`GET /certificates`).
    pub async fn list_ca_certificates(&self) -> Result<Vec<CertificateDescription>, ServiceError> {
        let list: CertificateListDescription = self
            .call_json(Call::new(
                Method::GET,
                wire::with_query("/certificates", &[]),
                "a list of CA certificates",
            ))
            .await?;
        Ok(list.value)
    }

    /// Deletes a CA certificate if its etag is still `etag` (any when `None`); devices chaining only to it
    /// are refused from their next connection on.
    pub async fn delete_ca_certificate(
        &self,
        name: &str,
        etag: Option<&ETag>,
    ) -> Result<(), ServiceError> {
        let call = Call::new(Method::DELETE, certificate_path(name), "nothing").if_match(etag)?;
        self.call_no_content(call).await
    }

    /// A fresh verification code (`properties.verificationCode`) for the proof of possession; the previous
    /// code stops working.
    pub async fn generate_verification_code(
        &self,
        name: &str,
        etag: Option<&ETag>,
    ) -> Result<CertificateDescription, ServiceError> {
        let path = wire::with_query(
            &format!("/certificates/{}/generateVerificationCode", quote(name)),
            &[],
        );
        let call = Call::new(Method::POST, path, "a CA certificate").if_match(etag)?;
        self.call_json(call).await
    }

    /// Proof of possession: `certificate` (PEM or base64 DER) must have the pending verification code as
    /// its subject CN and be signed by the CA's key. Answers the certificate, now verified.
    pub async fn verify_ca_certificate(
        &self,
        name: &str,
        etag: Option<&ETag>,
        certificate: &str,
    ) -> Result<CertificateDescription, ServiceError> {
        let path = wire::with_query(&format!("/certificates/{}/verify", quote(name)), &[]);
        let call = Call::new(Method::POST, path, "a CA certificate")
            .json_body(&CertificateVerification {
                certificate: certificate.to_owned(),
            })?
            .if_match(etag)?;
        self.call_json(call).await
    }
}
