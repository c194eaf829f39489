//! Firmware artifacts (a fleethub extension, docs/firmware.md): upload an image streamed from disk (with a
//! signed manifest, or without one for the hub to describe it), list, read and delete artifacts, and grant
//! a device the right to download one (a signed URL).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleethub_protocol::artifacts::{
    Artifact, DESCRIPTION_HEADER, Grant, GrantRequest, HEALTH_CHECK_HEADER, MANIFEST_HEADER,
    artifact_path,
};
use fleethub_protocol::firmware::check_name;
use fleethub_protocol::ids::DeviceId;
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncReadExt as _;

use crate::client::{Call, ServiceClient};
use crate::error::{ServiceError, body_excerpt};
use crate::wire;

/// Bytes read from the file per chunk of an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// An upload gets the client's timeout plus a second per this many bytes (1 MiB/s, a slow link).
const UPLOAD_BYTES_PER_SECOND: u64 = 1024 * 1024;

/// Called with the number of bytes of the image handed to the connection so far.
pub type UploadProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// What [`ServiceClient::upload_artifact`] sends.
#[derive(Clone, Default)]
pub struct ArtifactUpload {
    pub model: String,
    pub version: String,
    /// The image, streamed from disk (never held in memory whole).
    pub file: PathBuf,
    /// The signed manifest (compact JWS, see `fleethub_protocol::firmware::SigningKey::sign`); `None` for
    /// an unsigned upload, whose manifest the hub makes from what it receives.
    pub manifest: Option<String>,
    /// For unsigned uploads: the manifest's `healthCheck` and `description`.
    pub health_check: Option<String>,
    pub description: Option<String>,
    pub progress: Option<UploadProgress>,
}

impl fmt::Debug for ArtifactUpload {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ArtifactUpload")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("file", &self.file)
            .field("signed", &self.manifest.is_some())
            .field("health_check", &self.health_check)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl ServiceClient {
    /// Uploads an image as artifact `model`/`version` (`PUT /firmware/artifacts/{model}/{version}`),
    /// streaming the file and calling `progress` as it goes. The hub answers 201 with the artifact; 400 when
    /// the image does not match the signed manifest (or the manifest names another model or version), 409
    /// when the artifact exists, 413 beyond the hub's size limit. The request may take the client's timeout
    /// plus a second per MiB of the image.
    pub async fn upload_artifact(&self, upload: &ArtifactUpload) -> Result<Artifact, ServiceError> {
        let path = checked_path(&upload.model, &upload.version)?;
        let file_error = |source| ServiceError::File {
            path: upload.file.clone(),
            source,
        };
        let file = tokio::fs::File::open(&upload.file)
            .await
            .map_err(file_error)?;
        let size = file.metadata().await.map_err(file_error)?.len();

        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        for (name, value) in [
            (MANIFEST_HEADER, &upload.manifest),
            (HEALTH_CHECK_HEADER, &upload.health_check),
            (DESCRIPTION_HEADER, &upload.description),
        ] {
            if let Some(value) = value {
                // UTF-8 passes as header bytes; line breaks and other control characters cannot.
                let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
                    ServiceError::InvalidRequest {
                        reason: format!("{name} cannot contain line breaks or control characters"),
                    }
                })?;
                headers.insert(HeaderName::from_static(name), value);
            }
        }

        let progress = upload.progress.clone();
        let chunks = futures_util::stream::unfold((Some(file), 0u64), move |(file, sent)| {
            let progress = progress.clone();
            async move {
                let mut file = file?;
                let mut buffer = vec![0u8; UPLOAD_CHUNK];
                match file.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(read) => {
                        buffer.truncate(read);
                        let sent = sent + read as u64;
                        if let Some(progress) = &progress {
                            progress(sent);
                        }
                        Some((Ok(Bytes::from(buffer)), (Some(file), sent)))
                    }
                    Err(error) => Some((Err(error), (None, sent))),
                }
            }
        });
        let timeout = self.timeout() + Duration::from_secs(size / UPLOAD_BYTES_PER_SECOND);
        let response = self
            .execute_streaming_body(
                Method::PUT,
                &wire::with_query(&path, &[]),
                headers,
                reqwest::Body::wrap_stream(chunks),
                timeout,
            )
            .await?;
        serde_json::from_slice(&response.body).map_err(|source| ServiceError::Decode {
            what: "an artifact",
            body: body_excerpt(&response.body),
            source,
        })
    }

    /// Artifacts by model then version (`GET /firmware/artifacts[?model=M]`).
    pub async fn list_artifacts(&self, model: Option<&str>) -> Result<Vec<Artifact>, ServiceError> {
        if let Some(model) = model {
            check_name("model", model).map_err(invalid)?;
        }
        let parameters: Vec<(&str, &str)> = model.iter().map(|model| ("model", *model)).collect();
        self.call_json(Call::new(
            Method::GET,
            wire::with_query("/firmware/artifacts", &parameters),
            "a list of artifacts",
        ))
        .await
    }

    /// One artifact (`GET /firmware/artifacts/{model}/{version}`); 404 when there is none.
    pub async fn get_artifact(&self, model: &str, version: &str) -> Result<Artifact, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query(&checked_path(model, version)?, &[]),
            "an artifact",
        ))
        .await
    }

    /// Deletes an artifact, its grants, and its image unless another artifact has the same bytes; 409 while
    /// an unfinished rollout uses it.
    pub async fn delete_artifact(&self, model: &str, version: &str) -> Result<(), ServiceError> {
        self.call_no_content(Call::new(
            Method::DELETE,
            wire::with_query(&checked_path(model, version)?, &[]),
            "nothing",
        ))
        .await
    }

    /// Entitles `device_id` to download the artifact for `expires_in` (whole seconds, 1 s to 30 days) and
    /// returns a signed URL for it (`POST /firmware/artifacts/{model}/{version}/grants`). The device must
    /// also report `properties.reported.firmware.model` equal to the artifact's model to download it.
    pub async fn create_grant(
        &self,
        model: &str,
        version: &str,
        device_id: &DeviceId,
        expires_in: Duration,
    ) -> Result<Grant, ServiceError> {
        let path = format!("{}/grants", checked_path(model, version)?);
        let request = GrantRequest {
            device_id: device_id.clone(),
            expires_in_seconds: expires_in.as_secs(),
        };
        let call = Call::new(Method::POST, wire::with_query(&path, &[]), "a grant");
        self.call_json(call.json_body(&request)?).await
    }
}

/// The artifact's path, after checking the names (so that nothing but a name reaches the path).
fn checked_path(model: &str, version: &str) -> Result<String, ServiceError> {
    check_name("model", model).map_err(invalid)?;
    check_name("version", version).map_err(invalid)?;
    Ok(artifact_path(model, version))
}

fn invalid(error: impl fmt::Display) -> ServiceError {
    ServiceError::InvalidRequest {
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_they_reach_a_path() {
        assert_eq!(
            checked_path("thermostat-x", "2.0.0+b1").expect("valid"),
            "/firmware/artifacts/thermostat-x/2.0.0+b1"
        );
        for (model, version) in [("..", "1"), ("m", "a/b"), ("", "1"), ("m", "1?x")] {
            assert!(
                matches!(
                    checked_path(model, version),
                    Err(ServiceError::InvalidRequest { .. })
                ),
                "{model:?} {version:?}"
            );
        }
    }
}
