//! Deciding whether an artifact may be applied, before anything touches a slot: which manifest to trust
//! (the method payload's, else the server's `x-fleethub-manifest`), its signature with the configured public
//! key, its model and version, and then the downloaded image's size and SHA-256 against it. Pure.
//!
//! With a public key configured, only a manifest that verifies with it is accepted: an artifact without a
//! manifest (the hub serves unsigned artifacts without one) is refused. Without a key, a manifest is read
//! unverified, and an artifact without one is checked against the server's `x-fleethub-sha256` alone; its
//! version then comes from the payload or from the hub's download path
//! (`/firmware/artifacts/{model}/{version}/image`).

use fleethub_protocol::firmware::{self, FirmwareManifest, ManifestError, PublicKey};
use time::OffsetDateTime;

use crate::error::{UpdateError, UpdateErrorCode};
use crate::state::DownloadRecord;

/// What the device trusts: its public key, if any, and its own model.
#[derive(Debug, Clone)]
pub struct Trust {
    pub public_key: Option<PublicKey>,
    pub model: String,
}

/// What the image must be, known before its bytes are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedImage {
    /// The manifest the artifact came with (verified when a key is configured); `None` for an unsigned
    /// artifact without one.
    pub manifest: Option<FirmwareManifest>,
    pub version: String,
    pub sha256: String,
    /// The size, when a manifest says it.
    pub size: Option<u64>,
}

/// Decides from what is known about the download (the payload's manifest and version, the server's
/// headers) what the image must be, or why it must be refused.
pub fn expected_image(
    trust: &Trust,
    record: &DownloadRecord,
) -> Result<ExpectedImage, UpdateError> {
    let jws = record
        .payload_manifest
        .as_deref()
        .or(record.server_manifest.as_deref());
    let manifest = match (jws, &trust.public_key) {
        (None, Some(key)) => {
            return Err(UpdateError::new(
                UpdateErrorCode::UnsignedArtifact,
                format!(
                    "the artifact has no manifest (none in the method payload, no x-fleethub-manifest header) \
                     and this device only accepts artifacts signed with key {}",
                    key.key_id()
                ),
            ));
        }
        (Some(jws), Some(key)) => key.verify(jws).map_err(manifest_error)?,
        (Some(jws), None) => firmware::read_unverified(jws).map_err(manifest_error)?,
        (None, None) => return unsigned_expectation(record),
    };
    if manifest.model != trust.model {
        return Err(UpdateError::new(
            UpdateErrorCode::WrongModel,
            format!(
                "the artifact is for model {:?}; this device is model {:?}",
                manifest.model, trust.model
            ),
        ));
    }
    if let Some(requested) = &record.requested_version
        && *requested != manifest.version
    {
        return Err(UpdateError::new(
            UpdateErrorCode::VersionMismatch,
            format!(
                "the update asked for version {requested:?} but the manifest is for version {:?}",
                manifest.version
            ),
        ));
    }
    Ok(ExpectedImage {
        version: manifest.version.clone(),
        sha256: manifest.sha256.clone(),
        size: Some(manifest.size),
        manifest: Some(manifest),
    })
}

fn unsigned_expectation(record: &DownloadRecord) -> Result<ExpectedImage, UpdateError> {
    let Some(sha256) = record.server_sha256.clone() else {
        return Err(UpdateError::new(
            UpdateErrorCode::Unverifiable,
            "the artifact has no manifest and the server sent no x-fleethub-sha256: nothing to check the image against",
        ));
    };
    let version = record
        .requested_version
        .clone()
        .or_else(|| version_from_url(&record.url))
        .ok_or_else(|| {
            UpdateError::new(
                UpdateErrorCode::Unverifiable,
                "the artifact has no manifest, the payload no version, and the URL is not a fleethub artifact URL: its version is unknown",
            )
        })?;
    Ok(ExpectedImage {
        manifest: None,
        version,
        sha256,
        size: None,
    })
}

fn manifest_error(error: ManifestError) -> UpdateError {
    let code = match error {
        ManifestError::BadSignature => UpdateErrorCode::BadSignature,
        _ => UpdateErrorCode::InvalidManifest,
    };
    UpdateError::new(code, error.to_string())
}

/// The version in a hub download URL, `.../firmware/artifacts/{model}/{version}/image`.
pub fn version_from_url(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let segments: Vec<&str> = url.path_segments()?.collect();
    match segments.as_slice() {
        [.., "firmware", "artifacts", _model, version, "image"] => {
            firmware::check_name("version", version).ok()?;
            Some((*version).to_owned())
        }
        _ => None,
    }
}

/// The total size the server announced must be the manifest's, checked as soon as headers arrive so a
/// wrong artifact is not downloaded in full.
pub fn check_announced_size(expected: &ExpectedImage, total: u64) -> Result<(), UpdateError> {
    match expected.size {
        Some(size) if size != total => Err(size_mismatch(total, size)),
        _ => Ok(()),
    }
}

fn size_mismatch(actual: u64, expected: u64) -> UpdateError {
    UpdateError::new(
        UpdateErrorCode::SizeMismatch,
        format!("the image is {actual} bytes but the manifest says {expected} bytes"),
    )
}

/// Checks the downloaded image (its SHA-256 and size, read back from disk) and returns the manifest the slot
/// will hold: the artifact's own, or for an unsigned artifact one made from what was checked.
pub fn check_image(
    expected: &ExpectedImage,
    model: &str,
    sha256: &str,
    size: u64,
    now: OffsetDateTime,
) -> Result<FirmwareManifest, UpdateError> {
    if let Some(expected_size) = expected.size
        && expected_size != size
    {
        return Err(size_mismatch(size, expected_size));
    }
    if !expected.sha256.eq_ignore_ascii_case(sha256) {
        return Err(UpdateError::new(
            UpdateErrorCode::HashMismatch,
            format!(
                "the image's SHA-256 is {sha256} but the manifest says {}",
                expected.sha256
            ),
        ));
    }
    Ok(match &expected.manifest {
        Some(manifest) => manifest.clone(),
        None => FirmwareManifest {
            model: model.to_owned(),
            version: expected.version.clone(),
            sha256: sha256.to_ascii_lowercase(),
            size,
            created: now,
            health_check: None,
            description: Some("unsigned artifact, checked against the server's SHA-256".into()),
        },
    })
}

#[cfg(test)]
mod tests {
    use fleethub_protocol::firmware::SigningKey;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-27 12:00 UTC);

    fn manifest(model: &str, sha256: &str, size: u64) -> FirmwareManifest {
        FirmwareManifest {
            model: model.into(),
            version: "2.0.0".into(),
            sha256: sha256.into(),
            size,
            created: NOW,
            health_check: None,
            description: None,
        }
    }

    fn record(payload_manifest: Option<String>, server_manifest: Option<String>) -> DownloadRecord {
        let mut record = DownloadRecord::new(
            "https://hub/firmware/artifacts/thermostat-x/2.0.0/image".into(),
            None,
            payload_manifest,
            NOW,
        );
        record.server_manifest = server_manifest;
        record
    }

    fn trust(key: Option<&SigningKey>) -> Trust {
        Trust {
            public_key: key.map(SigningKey::public_key),
            model: "thermostat-x".into(),
        }
    }

    fn code(result: Result<ExpectedImage, UpdateError>) -> UpdateErrorCode {
        result.expect_err("refused").code
    }

    #[test]
    fn a_signed_manifest_from_the_payload_or_the_server_is_accepted() {
        let key = SigningKey::from_seed([1; 32]);
        let sha = "ab".repeat(32);
        let jws = key.sign(&manifest("thermostat-x", &sha, 10)).unwrap();
        for record in [
            record(Some(jws.clone()), None),
            record(None, Some(jws.clone())),
        ] {
            let expected = expected_image(&trust(Some(&key)), &record).expect("accepted");
            assert_eq!(expected.version, "2.0.0");
            assert_eq!(expected.size, Some(10));
            let stored = check_image(&expected, "thermostat-x", &sha, 10, NOW).expect("image ok");
            assert_eq!(stored, manifest("thermostat-x", &sha, 10));
        }
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let key = SigningKey::from_seed([1; 32]);
        let other = SigningKey::from_seed([2; 32]);
        let jws = other
            .sign(&manifest("thermostat-x", &"ab".repeat(32), 10))
            .unwrap();
        assert_eq!(
            code(expected_image(
                &trust(Some(&key)),
                &record(Some(jws.clone()), None)
            )),
            UpdateErrorCode::BadSignature
        );
        // The payload's manifest is the one checked: a good server manifest does not rescue a bad one.
        let good = key
            .sign(&manifest("thermostat-x", &"ab".repeat(32), 10))
            .unwrap();
        assert_eq!(
            code(expected_image(
                &trust(Some(&key)),
                &record(Some(jws), Some(good))
            )),
            UpdateErrorCode::BadSignature
        );
        assert_eq!(
            code(expected_image(
                &trust(Some(&key)),
                &record(Some("a.b.c".into()), None)
            )),
            UpdateErrorCode::InvalidManifest
        );
    }

    #[test]
    fn an_unsigned_artifact_is_refused_when_a_key_is_configured() {
        let key = SigningKey::from_seed([1; 32]);
        let mut unsigned = record(None, None);
        unsigned.server_sha256 = Some("ab".repeat(32));
        assert_eq!(
            code(expected_image(&trust(Some(&key)), &unsigned)),
            UpdateErrorCode::UnsignedArtifact
        );
        // Without a key it is checked against the server's hash, its version taken from the URL.
        let expected = expected_image(&trust(None), &unsigned).expect("accepted without a key");
        assert_eq!(expected.version, "2.0.0");
        assert_eq!(expected.manifest, None);
        let stored = check_image(&expected, "thermostat-x", &"ab".repeat(32), 7, NOW).unwrap();
        assert_eq!((stored.size, stored.version.as_str()), (7, "2.0.0"));
        // And without a hash there is nothing to check against.
        assert_eq!(
            code(expected_image(&trust(None), &record(None, None))),
            UpdateErrorCode::Unverifiable
        );
    }

    #[test]
    fn the_wrong_model_or_version_is_refused() {
        let key = SigningKey::from_seed([1; 32]);
        let jws = key
            .sign(&manifest("other-model", &"ab".repeat(32), 10))
            .unwrap();
        let error = expected_image(&trust(Some(&key)), &record(Some(jws), None)).unwrap_err();
        assert_eq!(error.code, UpdateErrorCode::WrongModel);
        assert!(error.reason.contains("\"other-model\""), "{}", error.reason);

        let jws = key
            .sign(&manifest("thermostat-x", &"ab".repeat(32), 10))
            .unwrap();
        let mut asked_other = record(Some(jws), None);
        asked_other.requested_version = Some("3.0.0".into());
        assert_eq!(
            code(expected_image(&trust(Some(&key)), &asked_other)),
            UpdateErrorCode::VersionMismatch
        );
    }

    #[test]
    fn a_hash_or_size_mismatch_is_refused() {
        let expected = ExpectedImage {
            manifest: Some(manifest("thermostat-x", &"ab".repeat(32), 10)),
            version: "2.0.0".into(),
            sha256: "ab".repeat(32),
            size: Some(10),
        };
        let error = check_image(&expected, "thermostat-x", &"cd".repeat(32), 10, NOW).unwrap_err();
        assert_eq!(error.code, UpdateErrorCode::HashMismatch);
        assert!(error.reason.contains(&"cd".repeat(32)), "{}", error.reason);
        let error = check_image(&expected, "thermostat-x", &"ab".repeat(32), 11, NOW).unwrap_err();
        assert_eq!(error.code, UpdateErrorCode::SizeMismatch);
        assert_eq!(
            check_announced_size(&expected, 12).unwrap_err().code,
            UpdateErrorCode::SizeMismatch
        );
        assert!(check_announced_size(&expected, 10).is_ok());
    }

    #[test]
    fn versions_are_read_from_hub_download_urls_only() {
        let cases = [
            (
                "https://h:1/firmware/artifacts/m/2.0.0/image?sig=x",
                Some("2.0.0"),
            ),
            (
                "https://h/prefix/firmware/artifacts/m/1.0/image",
                Some("1.0"),
            ),
            ("https://h/firmware/artifacts/m/2.0.0", None),
            ("https://example.com/firmware/v2.0.bin", None),
            ("not a url", None),
        ];
        for (url, expected) in cases {
            assert_eq!(version_from_url(url).as_deref(), expected, "{url}");
        }
    }
}
