//! The REST shapes of X.509 CA certificates (`/certificates/{name}`), as Azure's resource provider API
//! spells them (`CertificateDescription`, `CertificatePropertiesWithNonce`, `CertificateListDescription`,
//! `CertificateVerificationDescription`): the upload and proof-of-possession flow that lets devices whose
//! client certificates chain to an uploaded CA authenticate.
//!
//! Times (`expiry`, `created`, `updated`) are RFC 1123 (`Tue, 19 Jun 2018 18:33:15 GMT`), as Azure answers
//! them. The thumbprint is the SHA-1 of the DER in upper-case hex, as the portal shows it.

use serde::{Deserialize, Serialize};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// The resource type Azure reports for a hub's certificate.
pub const CERTIFICATE_RESOURCE_TYPE: &str = "Microsoft.Devices/IotHubs/Certificates";

/// A CA certificate as the API answers it; `properties.verificationCode` is set only by
/// `generateVerificationCode`, and `properties.certificate` holds the PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateDescription {
    pub properties: CertificateProperties,
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub etag: String,
    #[serde(rename = "type", default)]
    pub resource_type: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateProperties {
    /// The subject's distinguished name, `CN=...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The certificate's notAfter (RFC 1123).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    /// SHA-1 of the DER, upper-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    /// The code to put in the subject CN of the proof-of-possession certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_code: Option<String>,
    /// The certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// `GET /certificates`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateListDescription {
    pub value: Vec<CertificateDescription>,
}

/// The body of `PUT /certificates/{name}`: `{"properties": {"certificate": "...", "isVerified": false}}`
/// (current API versions) or the older `{"certificate": "..."}`. The certificate is PEM or the DER in
/// base64. `isVerified: true` marks it verified without proof of possession, as Azure allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateUpload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<CertificateUploadProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateUploadProperties {
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_verified: Option<bool>,
}

impl CertificateUpload {
    /// The upload as current API versions send it.
    pub fn new(certificate: impl Into<String>, is_verified: bool) -> Self {
        Self {
            properties: Some(CertificateUploadProperties {
                certificate: Some(certificate.into()),
                is_verified: Some(is_verified),
            }),
            certificate: None,
        }
    }

    /// The certificate text, from either shape.
    pub fn certificate(&self) -> Option<&str> {
        self.properties
            .as_ref()
            .and_then(|properties| properties.certificate.as_deref())
            .or(self.certificate.as_deref())
    }

    pub fn is_verified(&self) -> bool {
        self.properties
            .as_ref()
            .and_then(|properties| properties.is_verified)
            .unwrap_or(false)
    }
}

/// The body of `POST /certificates/{name}/verify`: the proof-of-possession certificate (PEM or base64 DER),
/// whose subject CN is the verification code and which the CA's key signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateVerification {
    pub certificate: String,
}

const RFC1123: &[FormatItem<'static>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// `Tue, 19 Jun 2018 18:33:15 GMT`.
pub fn format_rfc1123(time: OffsetDateTime) -> String {
    time.to_offset(UtcOffset::UTC)
        .format(RFC1123)
        .expect("every UTC time between years 0 and 9999 formats as RFC 1123")
}

/// Bytes as upper-case hex, the way thumbprints and verification codes are written.
pub fn upper_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            write!(text, "{byte:02X}").expect("writing to a String cannot fail");
            text
        })
}

/// The SHA-1 thumbprint of a certificate's DER, upper-case hex (40 characters): the portal's thumbprint,
/// and one of the two forms a `selfSigned` identity may register.
pub fn thumbprint_sha1(der: &[u8]) -> String {
    upper_hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

/// The SHA-256 thumbprint of a certificate's DER, upper-case hex (64 characters).
pub fn thumbprint_sha256(der: &[u8]) -> String {
    upper_hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Parses [`format_rfc1123`]'s form.
pub fn parse_rfc1123(text: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(text, RFC1123)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn rfc1123_times_round_trip() {
        let time = datetime!(2018-06-19 18:33:15 UTC);
        assert_eq!(format_rfc1123(time), "Tue, 19 Jun 2018 18:33:15 GMT");
        assert_eq!(parse_rfc1123("Tue, 19 Jun 2018 18:33:15 GMT"), Some(time));
        assert_eq!(parse_rfc1123("2018-06-19T18:33:15Z"), None);
    }

    #[test]
    fn thumbprints_are_upper_case_hex_digests_of_the_der() {
        // FIPS 180 test vector "abc".
        assert_eq!(
            thumbprint_sha1(b"abc"),
            "A9993E364706816ABA3E25717850C26C9CD0D89D"
        );
        assert_eq!(
            thumbprint_sha256(b"abc"),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
        assert_eq!(upper_hex(&[0x00, 0x0f, 0xa0]), "000FA0");
        assert_eq!(upper_hex(&[]), "");
    }

    #[test]
    fn uploads_take_both_shapes() {
        let current: CertificateUpload =
            serde_json::from_str(r#"{"properties": {"certificate": "PEM", "isVerified": true}}"#)
                .unwrap();
        assert_eq!(current.certificate(), Some("PEM"));
        assert!(current.is_verified());
        let older: CertificateUpload = serde_json::from_str(r#"{"certificate": "PEM"}"#).unwrap();
        assert_eq!(older.certificate(), Some("PEM"));
        assert!(!older.is_verified());
    }

    #[test]
    fn a_description_uses_azure_names() {
        let description = CertificateDescription {
            properties: CertificateProperties {
                subject: Some("CN=root".into()),
                is_verified: Some(false),
                verification_code: Some("ABC".into()),
                ..CertificateProperties::default()
            },
            id: "/certificates/root".into(),
            name: "root".into(),
            etag: "AAAA".into(),
            resource_type: CERTIFICATE_RESOURCE_TYPE.into(),
        };
        let json = serde_json::to_value(&description).unwrap();
        assert_eq!(json["properties"]["isVerified"], false);
        assert_eq!(json["properties"]["verificationCode"], "ABC");
        assert_eq!(json["type"], CERTIFICATE_RESOURCE_TYPE);
    }
}
