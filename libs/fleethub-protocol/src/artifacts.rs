//! Firmware artifacts over REST (a fleethub extension, see `docs/firmware.md`): the JSON shapes of
//! `/firmware/artifacts`, the headers that carry a manifest next to an image, and the signed download URL
//! (`?device=D&expires=UNIX&sig=S`) the hub hands out and checks.
//!
//! The signed URL's `sig` is `base64url(HMAC-SHA256(key, "GET\n{model}\n{version}\n{device}\n{expires}"))`
//! without padding, over the decoded values; the key is the hub's own (kept in its data directory), so only
//! the hub makes and checks these URLs. Pure: no I/O, no clock (callers pass `now`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::firmware::FirmwareManifest;
use crate::ids::DeviceId;
use crate::percent::quote;

/// Request header of a signed upload, and response header of a download: the compact JWS of the manifest.
pub const MANIFEST_HEADER: &str = "x-fleethub-manifest";
/// Request header of an unsigned upload: the manifest's `healthCheck` (UTF-8).
pub const HEALTH_CHECK_HEADER: &str = "x-fleethub-health-check";
/// Request header of an unsigned upload: the manifest's `description` (UTF-8).
pub const DESCRIPTION_HEADER: &str = "x-fleethub-description";
/// Response header of a download: the image's lowercase hex SHA-256.
pub const SHA256_HEADER: &str = "x-fleethub-sha256";

/// Query parameters of a signed download URL.
pub const DEVICE_PARAMETER: &str = "device";
pub const EXPIRES_PARAMETER: &str = "expires";
pub const SIGNATURE_PARAMETER: &str = "sig";

/// Longest grant a service may ask for (`expiresInSeconds`): 30 days.
pub const MAX_GRANT_SECONDS: u64 = 30 * 24 * 3600;

/// An artifact as the hub answers it (`GET /firmware/artifacts/{model}/{version}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub model: String,
    pub version: String,
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
    pub size: u64,
    /// The manifest's creation time (set by whoever made the manifest).
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// When the hub stored the image.
    #[serde(with = "time::serde::rfc3339")]
    pub uploaded: OffsetDateTime,
    /// Whether the manifest is a JWS signed by the publisher (else the hub made it, unsigned).
    pub signed: bool,
    /// The `kid` of the JWS header, when signed and present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The signed manifest (compact JWS), `null` for an unsigned artifact.
    pub manifest: Option<String>,
}

impl Artifact {
    /// The manifest's fields, as signed (or as the hub made them for an unsigned upload).
    pub fn manifest_fields(&self) -> FirmwareManifest {
        FirmwareManifest {
            model: self.model.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            created: self.created,
            health_check: self.health_check.clone(),
            description: self.description.clone(),
        }
    }
}

/// Body of `POST /firmware/artifacts/{model}/{version}/grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRequest {
    pub device_id: DeviceId,
    /// How long the grant and its URL stay valid: 1 to [`MAX_GRANT_SECONDS`].
    pub expires_in_seconds: u64,
}

/// Answer of `POST /firmware/artifacts/{model}/{version}/grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The signed download URL for the device.
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

/// `/firmware/artifacts/{model}/{version}` (models and versions need no escaping: see
/// [`crate::firmware::check_name`]).
pub fn artifact_path(model: &str, version: &str) -> String {
    format!("/firmware/artifacts/{model}/{version}")
}

/// `/firmware/artifacts/{model}/{version}/image`.
pub fn image_path(model: &str, version: &str) -> String {
    format!("{}/image", artifact_path(model, version))
}

/// What a signed download URL's signature covers.
pub fn download_string_to_sign(model: &str, version: &str, device: &str, expires: u64) -> String {
    format!("GET\n{model}\n{version}\n{device}\n{expires}")
}

/// The `sig` of a signed download URL.
pub fn sign_download(key: &[u8], model: &str, version: &str, device: &str, expires: u64) -> String {
    let mac = download_mac(key, model, version, device, expires);
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is the `sig` of these values under `key`, compared in constant time.
pub fn verify_download(
    key: &[u8],
    model: &str,
    version: &str,
    device: &str,
    expires: u64,
    signature: &str,
) -> bool {
    let Ok(expected) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    download_mac(key, model, version, device, expires)
        .verify_slice(&expected)
        .is_ok()
}

fn download_mac(
    key: &[u8],
    model: &str,
    version: &str,
    device: &str,
    expires: u64,
) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(download_string_to_sign(model, version, device, expires).as_bytes());
    mac
}

/// The path and query of a signed download URL: `/firmware/artifacts/{model}/{version}/image?device=...`
/// (the device id percent-encoded; the hub decodes it before checking the signature).
pub fn signed_download_path(
    key: &[u8],
    model: &str,
    version: &str,
    device: &str,
    expires: u64,
) -> String {
    let signature = sign_download(key, model, version, device, expires);
    format!(
        "{}?{DEVICE_PARAMETER}={}&{EXPIRES_PARAMETER}={expires}&{SIGNATURE_PARAMETER}={signature}",
        image_path(model, version),
        quote(device)
    )
}

/// The `kid` of a compact JWS's header, read without verifying anything (the hub records which key signed
/// a manifest; whether to trust it is the device's decision). `None` when the header is unreadable or has
/// no string `kid`.
pub fn unverified_key_id(jws: &str) -> Option<String> {
    let header = jws.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::SigningKey;

    #[test]
    fn signed_urls_verify_and_any_change_fails() {
        let key = b"the hub's url key";
        let sig = sign_download(key, "m", "1.0", "dev1", 1_800_000_000);
        assert!(verify_download(
            key,
            "m",
            "1.0",
            "dev1",
            1_800_000_000,
            &sig
        ));
        assert!(!verify_download(
            key,
            "m",
            "1.0",
            "dev1",
            1_800_000_001,
            &sig
        ));
        assert!(!verify_download(
            key,
            "m",
            "1.1",
            "dev1",
            1_800_000_000,
            &sig
        ));
        assert!(!verify_download(
            key,
            "n",
            "1.0",
            "dev1",
            1_800_000_000,
            &sig
        ));
        assert!(!verify_download(
            key,
            "m",
            "1.0",
            "dev2",
            1_800_000_000,
            &sig
        ));
        assert!(!verify_download(
            b"other",
            "m",
            "1.0",
            "dev1",
            1_800_000_000,
            &sig
        ));
        assert!(!verify_download(
            key,
            "m",
            "1.0",
            "dev1",
            1_800_000_000,
            "!!"
        ));
        assert!(!verify_download(key, "m", "1.0", "dev1", 1_800_000_000, ""));
        assert!(!sig.contains('=') && !sig.contains('+') && !sig.contains('/'));
    }

    #[test]
    fn the_string_to_sign_separates_fields_by_newlines() {
        assert_eq!(
            download_string_to_sign("m", "1.0", "d", 5),
            "GET\nm\n1.0\nd\n5"
        );
        // Known answer, so another implementation can check itself against it; in Python:
        // base64.urlsafe_b64encode(hmac.new(b"key",
        //     b"GET\nthermostat-x\n2.0.0\ndev1\n1800000000", hashlib.sha256).digest()).rstrip(b"=")
        assert_eq!(
            sign_download(b"key", "thermostat-x", "2.0.0", "dev1", 1_800_000_000),
            "lY6CPMdZJDRWSgw-Su1Fu42Q-kKdfSvFiHkxRfK27D8"
        );
    }

    #[test]
    fn signed_paths_escape_the_device_id() {
        let path = signed_download_path(b"k", "m", "1+b", "a&b=c+d", 7);
        assert!(
            path.starts_with("/firmware/artifacts/m/1+b/image?device=a%26b%3Dc%2Bd&expires=7&sig="),
            "{path}"
        );
    }

    #[test]
    fn key_ids_are_read_from_the_header() {
        let key = SigningKey::from_seed([3; 32]);
        let manifest = FirmwareManifest {
            model: "m".into(),
            version: "1".into(),
            sha256: "00".repeat(32),
            size: 0,
            created: time::macros::datetime!(2026-01-01 0:00 UTC),
            health_check: None,
            description: None,
        };
        let jws = key.sign(&manifest).expect("signs");
        assert_eq!(unverified_key_id(&jws), Some(key.public_key().key_id()));
        assert_eq!(unverified_key_id("e30.e30.e30"), None);
        assert_eq!(unverified_key_id("!!"), None);
        assert_eq!(unverified_key_id(""), None);
    }

    #[test]
    fn artifacts_serialise_with_a_null_manifest_when_unsigned() {
        let artifact = Artifact {
            model: "m".into(),
            version: "1".into(),
            sha256: "ab".repeat(32),
            size: 3,
            created: time::macros::datetime!(2026-01-01 0:00 UTC),
            uploaded: time::macros::datetime!(2026-01-01 0:01 UTC),
            signed: false,
            key_id: None,
            health_check: None,
            description: Some("d".into()),
            manifest: None,
        };
        let json = serde_json::to_value(&artifact).expect("serialises");
        assert_eq!(json["manifest"], Value::Null);
        assert_eq!(json["created"], "2026-01-01T00:00:00Z");
        assert!(json.get("keyId").is_none());
        let back: Artifact = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, artifact);
        let request: GrantRequest =
            serde_json::from_str(r#"{"deviceId": "d1", "expiresInSeconds": 60}"#).expect("reads");
        assert_eq!(request.expires_in_seconds, 60);
        assert!(
            serde_json::from_str::<GrantRequest>(r#"{"deviceId": "", "expiresInSeconds": 60}"#)
                .is_err()
        );
    }
}
