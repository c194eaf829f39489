//! Firmware artifacts (docs/firmware.md): the [`ArtifactService`] that stores images with their manifests,
//! lists and deletes them, entitles devices to download them (grants and signed URLs), and decides whether
//! a download is allowed.
//!
//! # Where things are
//!
//! Images are files, content-addressed: `DATA_DIR/artifacts/blobs/<sha256>`, shared by every artifact
//! with the same bytes (see `blobs.rs` for how an upload reaches them). Metadata and grants are in the
//! store. The key of signed download URLs is `DATA_DIR/artifacts/url-signing.key` (32 random bytes,
//! base64, mode 0600), made at the first start and kept.
//!
//! # Invariants
//!
//! - A blob is whole and named by its true hash; a failed upload leaves nothing in `tmp/` or `blobs/`.
//! - A blob exists while an artifact names it. Placing a blob and recording its artifact, and deleting an
//!   artifact and then its blob when no other artifact names it, run under one lock (`placement`), so a
//!   delete never removes a blob an upload just recorded. What a crash leaves between the two steps (a
//!   blob without an artifact) is removed at the next start.
//! - The final step of an upload (place the blob, record the artifact) runs in its own task: a client
//!   that disconnects after sending the last byte cannot cut it in half.
//! - A download needs a live grant, whichever credential it brings (a signed URL or the device's SAS
//!   token), so deleting an artifact or revoking its grants also stops URLs already handed out.
//! - An artifact an unfinished rollout installs or rolls back to is not deleted: the store refuses inside
//!   the delete's transaction (`StoreError::ArtifactInUse`, 409). Rollouts grant their devices through
//!   [`ArtifactService::grant_for`] with the source `rollout:<id>` and revoke those grants when they end.

mod blobs;

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::artifacts::{
    Artifact, Grant, MAX_GRANT_SECONDS, signed_download_path, unverified_key_id, verify_download,
};
use fleethub_protocol::firmware::{FirmwareManifest, check_name, read_unverified};
use fleethub_protocol::ids::DeviceId;
use fleethub_store::{ArtifactRecord, DeviceRecord, FirmwareGrant, StoreError};
use futures_util::{Stream, StreamExt as _};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use blobs::BlobDirectory;

use crate::auth::{DeviceTokenError, authenticate_device_token};
use crate::services::Services;

/// Below the data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";
const URL_KEY_FILE: &str = "url-signing.key";
/// The grant source of `POST .../grants` (an explicit update). Rollouts use `rollout:<id>`
/// (`fleethub_protocol::rollouts::grant_source`).
pub const UPDATE_GRANT_SOURCE: &str = "update";
/// Longest `healthCheck` or `description` an unsigned upload may set.
pub const MAX_TEXT_FIELD: usize = 4096;
/// How often expired grants are deleted.
const GRANT_PURGE_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ArtifactSetupError {
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a usable URL signing key: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the uploader says about the image: a signed manifest, or the optional fields of one the hub makes.
#[derive(Clone, Debug, Default)]
pub struct UploadMetadata {
    /// The `x-fleethub-manifest` JWS of a signed upload.
    pub manifest_jws: Option<String>,
    pub health_check: Option<String>,
    pub description: Option<String>,
    /// The request's `Content-Length`, if it had one: checked before a byte is stored.
    pub content_length: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A bad model, version, manifest or header: 400.
    #[error("{0}")]
    Invalid(String),
    /// The image is not what the manifest says: 400.
    #[error("{0}")]
    Mismatch(String),
    #[error(
        "the image is larger than {max} bytes, the most this hub accepts (fleethub serve --max-artifact-size)"
    )]
    TooLarge { max: u64 },
    /// The body ended early or could not be read (the client went away): 400.
    #[error("the upload did not complete: {0}")]
    Incomplete(String),
    #[error("cannot store the image: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteArtifactError {
    #[error("{0}")]
    Invalid(String),
    /// `ArtifactInUse` (409) while unfinished rollouts use it, `ArtifactNotFound`, or a storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a download request brings to prove who it is for.
#[derive(Clone, Debug)]
pub enum DownloadCredentials {
    /// `?device=D&expires=UNIX&sig=S`, each as received (decoded from the query).
    SignedUrl {
        device: String,
        expires: String,
        signature: String,
    },
    /// The `Authorization` header (a device SAS token), or `None` when there is nothing at all.
    Token(Option<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No, bad or expired credentials: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// The device may not download this artifact: 403.
    #[error("{0}")]
    NotEntitled(String),
    /// 403 `DeviceDisabled`.
    #[error("device {0} is disabled")]
    DeviceDisabled(DeviceId),
    #[error("{0}")]
    Invalid(String),
    /// The blob of a recorded artifact is missing or damaged: 500.
    #[error("the image of firmware artifact {model} {version} is unreadable: {detail}")]
    Damaged {
        model: String,
        version: String,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DeviceTokenError> for DownloadError {
    fn from(error: DeviceTokenError) -> Self {
        DownloadError::Unauthenticated(error.0)
    }
}

/// A download that may go ahead: the artifact, its open image, and who asked.
pub struct AllowedDownload {
    pub artifact: ArtifactRecord,
    pub device_id: DeviceId,
    /// Open at offset 0; its length is the artifact's size.
    pub image: tokio::fs::File,
}

pub struct ArtifactService {
    services: Arc<Services>,
    blobs: BlobDirectory,
    url_key: Vec<u8>,
    /// `https://host[:port]` of signed URLs.
    base_url: String,
    /// Serialises "place a blob, record its artifact" with "delete an artifact, remove its blob".
    placement: tokio::sync::Mutex<()>,
}

impl ArtifactService {
    /// Prepares `DATA_DIR/artifacts` (empties `tmp/`, makes the URL key the first time, removes blobs no
    /// artifact names). `https_port` is the port signed URLs name (443 is left out).
    pub async fn open(
        services: Arc<Services>,
        https_port: u16,
    ) -> Result<Arc<Self>, ArtifactSetupError> {
        let root = services.config.data_dir.join(ARTIFACTS_DIR);
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ArtifactSetupError::Io { path, source }
        };
        let blobs = BlobDirectory::open(&root).map_err(io_error(&root))?;
        let url_key = load_or_create_key(&root.join(URL_KEY_FILE))?;
        let host = services
            .config
            .hostnames
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into());
        let base_url = if https_port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{https_port}")
        };
        let service = Arc::new(Self {
            services,
            blobs,
            url_key,
            base_url,
            placement: tokio::sync::Mutex::new(()),
        });
        service.remove_unreferenced_blobs().await?;
        Ok(service)
    }

    /// Blobs left by a crash between placing a blob and recording its artifact (or between deleting an
    /// artifact and its blob).
    async fn remove_unreferenced_blobs(&self) -> Result<(), ArtifactSetupError> {
        let dir = self.blobs.blobs_dir().to_owned();
        let names = self
            .blobs
            .list_blobs()
            .map_err(|source| ArtifactSetupError::Io {
                path: dir.clone(),
                source,
            })?;
        for name in names {
            if self
                .services
                .store
                .count_artifacts_with_sha256(&name)
                .await?
                == 0
            {
                tracing::info!(blob = %name, "removing a firmware image no artifact names");
                let path = dir.join(&name);
                if let Err(source) = tokio::fs::remove_file(&path).await {
                    return Err(ArtifactSetupError::Io { path, source });
                }
            }
        }
        Ok(())
    }

    /// Deletes expired grants every hour until shutdown.
    pub async fn run_grant_purger(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(GRANT_PURGE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    match self.services.store.purge_expired_grants(self.services.now()).await {
                        Ok(0) => {}
                        Ok(purged) => tracing::debug!(purged, "deleted expired firmware grants"),
                        Err(error) => tracing::warn!(%error, "could not delete expired firmware grants"),
                    }
                }
            }
        }
    }

    // ---- upload ----

    /// Stores an image streamed from `body` as artifact `model`/`version`: checked against the signed
    /// manifest if there is one, else described by a manifest the hub makes. Cancellation-safe: if the
    /// future is dropped while the body streams, nothing is left behind; once the body is complete, the
    /// rest runs to completion in its own task.
    pub async fn upload<S, E>(
        self: &Arc<Self>,
        model: &str,
        version: &str,
        metadata: UploadMetadata,
        body: S,
    ) -> Result<ArtifactRecord, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Display,
    {
        names(model, version).map_err(UploadError::Invalid)?;
        let max = self.services.config.limits.max_artifact_bytes;
        let signed = match &metadata.manifest_jws {
            Some(jws) => Some(signed_manifest(jws, model, version, &metadata)?),
            None => {
                for (what, text) in [
                    ("health check", &metadata.health_check),
                    ("description", &metadata.description),
                ] {
                    if let Some(text) = text
                        && (text.is_empty() || text.len() > MAX_TEXT_FIELD)
                    {
                        return Err(UploadError::Invalid(format!(
                            "the {what} must be 1 to {MAX_TEXT_FIELD} bytes, got {}",
                            text.len()
                        )));
                    }
                }
                None
            }
        };
        let expected_size = signed
            .as_ref()
            .map(|(manifest, _)| manifest.size)
            .or(metadata.content_length);
        if let Some(size) = expected_size
            && size > max
        {
            return Err(UploadError::TooLarge { max });
        }
        if let (Some((manifest, _)), Some(length)) = (&signed, metadata.content_length)
            && length != manifest.size
        {
            return Err(UploadError::Mismatch(format!(
                "the body is {length} bytes (Content-Length) but the manifest says {}",
                manifest.size
            )));
        }
        if self
            .services
            .store
            .get_artifact(model, version)
            .await?
            .is_some()
        {
            return Err(already_exists(model, version));
        }

        let mut temp = self.blobs.create_temp().await?;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| UploadError::Incomplete(error.to_string()))?;
            let received = temp.size() + chunk.len() as u64;
            if received > max {
                return Err(UploadError::TooLarge { max });
            }
            if let Some((manifest, _)) = &signed
                && received > manifest.size
            {
                return Err(UploadError::Mismatch(format!(
                    "the image is longer than the manifest's size, {} bytes",
                    manifest.size
                )));
            }
            temp.write(&chunk).await?;
        }
        let finished = temp.finish().await?;

        // Kept to the millisecond: the store keeps 100 ns, and an answer should read back the same.
        let now = self.services.now();
        let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
        let record = match signed {
            Some((manifest, key_id)) => {
                if finished.size != manifest.size {
                    return Err(UploadError::Mismatch(format!(
                        "the image is {} bytes but the manifest says {}",
                        finished.size, manifest.size
                    )));
                }
                if finished.sha256 != manifest.sha256 {
                    return Err(UploadError::Mismatch(format!(
                        "the image's SHA-256 is {} but the manifest says {}",
                        finished.sha256, manifest.sha256
                    )));
                }
                ArtifactRecord {
                    manifest,
                    manifest_jws: metadata.manifest_jws,
                    key_id,
                    uploaded: now,
                }
            }
            None => ArtifactRecord {
                manifest: FirmwareManifest {
                    model: model.to_owned(),
                    version: version.to_owned(),
                    sha256: finished.sha256.clone(),
                    size: finished.size,
                    created: now,
                    health_check: metadata.health_check,
                    description: metadata.description,
                },
                manifest_jws: None,
                key_id: None,
                uploaded: now,
            },
        };

        tokio::spawn(Arc::clone(self).place_and_record(finished, record))
            .await
            .map_err(|error| io::Error::other(format!("upload task failed: {error}")))?
    }

    /// The end of an upload, in its own task: moves the image into `blobs/` and records the artifact, or,
    /// if recording fails (the same model and version recorded meanwhile by a concurrent upload, or a
    /// storage failure), keeps the blob only if some artifact names it.
    async fn place_and_record(
        self: Arc<Self>,
        finished: blobs::FinishedBlob,
        record: ArtifactRecord,
    ) -> Result<ArtifactRecord, UploadError> {
        let _placement = self.placement.lock().await;
        let directory = self.blobs.clone();
        tokio::task::spawn_blocking(move || finished.place_blocking(&directory))
            .await
            .map_err(|error| io::Error::other(format!("blocking file task failed: {error}")))??;
        match self.services.store.create_artifact(record.clone()).await {
            Ok(()) => Ok(record),
            Err(error) => {
                self.remove_blob_if_unreferenced(record.sha256()).await;
                Err(error.into())
            }
        }
    }

    async fn remove_blob_if_unreferenced(&self, sha256: &str) {
        match self
            .services
            .store
            .count_artifacts_with_sha256(sha256)
            .await
        {
            Ok(0) => {
                let path = self.blobs.blob_path(sha256);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "could not remove a firmware image; the next start will")
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, sha256, "could not count the artifacts of an image; the next start will remove it if unused")
            }
        }
    }

    // ---- read, list, delete ----

    pub async fn get(&self, model: &str, version: &str) -> Result<ArtifactRecord, StoreError> {
        self.services
            .store
            .get_artifact(model, version)
            .await?
            .ok_or_else(|| StoreError::ArtifactNotFound {
                model: model.to_owned(),
                version: version.to_owned(),
            })
    }

    pub async fn list(&self, model: Option<&str>) -> Result<Vec<ArtifactRecord>, StoreError> {
        self.services.store.list_artifacts(model).await
    }

    /// The unfinished rollouts that install or roll back to an artifact, by id: while there are any, a
    /// delete is refused (409). The store checks this again inside the delete's transaction
    /// (`StoreError::ArtifactInUse`), so a rollout created meanwhile cannot lose its artifact.
    pub async fn unfinished_rollouts_using(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rollouts = self
            .services
            .store
            .unfinished_rollouts_using_artifact(model, version)
            .await?;
        Ok(rollouts.iter().map(ToString::to_string).collect())
    }

    /// Deletes an artifact and its grants (refused with `ArtifactInUse` while an unfinished rollout uses
    /// it), and its image unless another artifact names the same bytes.
    pub async fn delete(&self, model: &str, version: &str) -> Result<(), DeleteArtifactError> {
        names(model, version).map_err(DeleteArtifactError::Invalid)?;
        let _placement = self.placement.lock().await;
        let deleted = self.services.store.delete_artifact(model, version).await?;
        self.remove_blob_if_unreferenced(deleted.sha256()).await;
        Ok(())
    }

    // ---- grants and downloads ----

    /// `POST .../grants`: entitles `device_id` to download the artifact for `expires_in_seconds` and returns
    /// its signed URL.
    pub async fn grant(
        &self,
        model: &str,
        version: &str,
        device_id: &DeviceId,
        expires_in_seconds: u64,
    ) -> Result<Grant, GrantError> {
        self.grant_for(
            model,
            version,
            device_id,
            expires_in_seconds,
            UPDATE_GRANT_SOURCE,
        )
        .await
    }

    /// A grant recorded under `source` (`update`, or `rollout:<id>` for a rollout), with its signed URL.
    /// The device must exist; the artifact too (`ArtifactNotFound`).
    pub async fn grant_for(
        &self,
        model: &str,
        version: &str,
        device_id: &DeviceId,
        expires_in_seconds: u64,
        source: &str,
    ) -> Result<Grant, GrantError> {
        names(model, version).map_err(GrantError::Invalid)?;
        if !(1..=MAX_GRANT_SECONDS).contains(&expires_in_seconds) {
            return Err(GrantError::Invalid(format!(
                "expiresInSeconds must be from 1 to {MAX_GRANT_SECONDS}, got {expires_in_seconds}"
            )));
        }
        let key = IdentityKey::device(device_id.clone());
        if self.services.store.get(&key).await?.is_none() {
            return Err(StoreError::NotFound(key).into());
        }
        let now = self.services.now();
        let expires_unix = now.unix_timestamp().max(0) as u64 + expires_in_seconds;
        let expires = OffsetDateTime::from_unix_timestamp(expires_unix as i64)
            .map_err(|error| GrantError::Invalid(format!("expiry out of range: {error}")))?;
        self.services
            .store
            .put_firmware_grant(FirmwareGrant {
                device_id: device_id.clone(),
                model: model.to_owned(),
                version: version.to_owned(),
                expires,
                source: source.to_owned(),
            })
            .await?;
        let path = signed_download_path(
            &self.url_key,
            model,
            version,
            device_id.as_str(),
            expires_unix,
        );
        Ok(Grant {
            url: format!("{}{path}", self.base_url),
            expires,
        })
    }

    /// Decides a download of `model`/`version`: 401 for missing, bad or expired credentials, 404 for an
    /// unknown artifact, 403 unless the device exists, is enabled, has reported
    /// `properties.reported.firmware.model` equal to the artifact's model and holds a live grant. Opens
    /// the image when allowed.
    pub async fn authorize_download(
        &self,
        model: &str,
        version: &str,
        credentials: DownloadCredentials,
    ) -> Result<AllowedDownload, DownloadError> {
        let now = self.services.now();
        let now_unix = now.unix_timestamp().max(0) as u64;
        let (device_id, record) = match credentials {
            DownloadCredentials::SignedUrl {
                device,
                expires,
                signature,
            } => {
                let expires_unix = canonical_unix(&expires).ok_or_else(|| {
                    DownloadError::Unauthenticated(format!(
                        "the signed URL's expires {expires:?} is not a Unix time in seconds"
                    ))
                })?;
                if !verify_download(
                    &self.url_key,
                    model,
                    version,
                    &device,
                    expires_unix,
                    &signature,
                ) {
                    return Err(DownloadError::Unauthenticated(
                        "the signed URL's signature does not match: ask for a new URL".into(),
                    ));
                }
                if expires_unix < now_unix {
                    return Err(DownloadError::Unauthenticated(format!(
                        "the signed URL expired {} s ago: ask for a new URL",
                        now_unix - expires_unix
                    )));
                }
                let device_id: DeviceId = device.parse().map_err(|error| {
                    DownloadError::Unauthenticated(format!("the signed URL's device: {error}"))
                })?;
                (device_id, None)
            }
            DownloadCredentials::Token(authorization) => {
                let record =
                    authenticate_device_token(&self.services, authorization.as_deref(), now_unix)
                        .await?;
                (record.key.device_id.clone(), Some(record))
            }
        };
        names(model, version).map_err(DownloadError::Invalid)?;
        let artifact = self
            .services
            .store
            .get_artifact(model, version)
            .await?
            .ok_or_else(|| StoreError::ArtifactNotFound {
                model: model.to_owned(),
                version: version.to_owned(),
            })?;
        let record = match record {
            Some(record) => record,
            None => self
                .services
                .store
                .get(&IdentityKey::device(device_id.clone()))
                .await?
                .ok_or_else(|| {
                    DownloadError::NotEntitled(format!("device {device_id} is not registered"))
                })?,
        };
        check_entitlement(&record, &artifact)?;
        let grant = self
            .services
            .store
            .find_firmware_grant(&device_id, model, version, now)
            .await?;
        if grant.is_none() {
            return Err(DownloadError::NotEntitled(format!(
                "device {device_id} holds no live grant for firmware {model} {version}: a rollout or `POST {}/grants` grants one",
                fleethub_protocol::artifacts::artifact_path(model, version)
            )));
        }
        let image = self.open_image(&artifact).await?;
        Ok(AllowedDownload {
            artifact,
            device_id,
            image,
        })
    }

    /// Opens an artifact's image, checking that its length is the recorded size.
    pub async fn open_image(
        &self,
        artifact: &ArtifactRecord,
    ) -> Result<tokio::fs::File, DownloadError> {
        let damaged = |detail: String| DownloadError::Damaged {
            model: artifact.model().to_owned(),
            version: artifact.version().to_owned(),
            detail,
        };
        let path = self.blobs.blob_path(artifact.sha256());
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|error| damaged(format!("{}: {error}", path.display())))?;
        let length = file
            .metadata()
            .await
            .map_err(|error| damaged(error.to_string()))?
            .len();
        if length != artifact.manifest.size {
            return Err(damaged(format!(
                "{} is {length} bytes, the artifact {}",
                path.display(),
                artifact.manifest.size
            )));
        }
        Ok(file)
    }
}

/// The REST shape of a stored artifact.
pub fn artifact_json(record: &ArtifactRecord) -> Artifact {
    let manifest = &record.manifest;
    Artifact {
        model: manifest.model.clone(),
        version: manifest.version.clone(),
        sha256: manifest.sha256.clone(),
        size: manifest.size,
        created: manifest.created,
        uploaded: record.uploaded,
        signed: record.signed(),
        key_id: record.key_id.clone(),
        health_check: manifest.health_check.clone(),
        description: manifest.description.clone(),
        manifest: record.manifest_jws.clone(),
    }
}

fn names(model: &str, version: &str) -> Result<(), String> {
    check_name("model", model).map_err(|error| error.to_string())?;
    check_name("version", version).map_err(|error| error.to_string())
}

fn already_exists(model: &str, version: &str) -> UploadError {
    UploadError::Store(StoreError::ArtifactAlreadyExists {
        model: model.to_owned(),
        version: version.to_owned(),
    })
}

/// Reads a signed upload's manifest (without judging the signature: devices do) and checks it names the
/// path's model and version. Returns it with the JWS header's `kid`.
fn signed_manifest(
    jws: &str,
    model: &str,
    version: &str,
    metadata: &UploadMetadata,
) -> Result<(FirmwareManifest, Option<String>), UploadError> {
    if metadata.health_check.is_some() || metadata.description.is_some() {
        return Err(UploadError::Invalid(
            "a signed upload carries its health check and description in the manifest; leave out x-fleethub-health-check and x-fleethub-description".into(),
        ));
    }
    let manifest = read_unverified(jws)
        .map_err(|error| UploadError::Invalid(format!("x-fleethub-manifest: {error}")))?;
    if manifest.model != model || manifest.version != version {
        return Err(UploadError::Invalid(format!(
            "the manifest is for {} {}, not {model} {version} as the path says",
            manifest.model, manifest.version
        )));
    }
    Ok((manifest, unverified_key_id(jws)))
}

/// The device must be enabled and have reported the artifact's model.
fn check_entitlement(
    record: &DeviceRecord,
    artifact: &ArtifactRecord,
) -> Result<(), DownloadError> {
    let device_id = &record.key.device_id;
    if !record.identity.is_enabled() {
        return Err(DownloadError::DeviceDisabled(device_id.clone()));
    }
    let reported = record
        .twin
        .reported_properties()
        .get("firmware")
        .and_then(|firmware| firmware.get("model"));
    match reported {
        Some(Value::String(model)) if model == artifact.model() => Ok(()),
        Some(Value::String(model)) => Err(DownloadError::NotEntitled(format!(
            "device {device_id} reports model {model:?}, the artifact is for {:?}",
            artifact.model()
        ))),
        _ => Err(DownloadError::NotEntitled(format!(
            "device {device_id} has not reported properties.reported.firmware.model, so it cannot be matched to the artifact's model {:?}",
            artifact.model()
        ))),
    }
}

/// A whole number of seconds without leading zeros or sign (what the hub writes).
fn canonical_unix(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

/// Reads the URL signing key, or makes one (32 random bytes) and writes it atomically with mode 0600.
fn load_or_create_key(path: &Path) -> Result<Vec<u8>, ArtifactSetupError> {
    let invalid = |detail: String| ArtifactSetupError::Key {
        path: path.to_owned(),
        detail,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = STANDARD
                .decode(text.trim())
                .map_err(|error| invalid(format!("not base64: {error}")))?;
            if key.len() < 32 {
                return Err(invalid(format!(
                    "{} bytes, at least 32 are needed",
                    key.len()
                )));
            }
            Ok(key)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).expect("the operating system's random source is available");
            write_private(path, &STANDARD.encode(&key)).map_err(|source| {
                ArtifactSetupError::Io {
                    path: path.to_owned(),
                    source,
                }
            })?;
            Ok(key)
        }
        Err(source) => Err(ArtifactSetupError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Write to a temporary file, fsync, rename, fsync the directory: a crash never leaves half a key.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_url_times_must_be_canonical() {
        assert_eq!(canonical_unix("1800000000"), Some(1_800_000_000));
        assert_eq!(canonical_unix("0"), Some(0));
        for bad in ["", "01", "-1", "+1", "1e9", " 1", "18446744073709551616"] {
            assert_eq!(canonical_unix(bad), None, "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_url_key_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(URL_KEY_FILE);
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(load_or_create_key(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "c2hvcnQ=").unwrap();
        assert!(load_or_create_key(&path).is_err());
    }
}
