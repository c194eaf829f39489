//! Firmware artifacts' metadata and download grants in SQLite. The images themselves are files the hub
//! keeps beside the database (content-addressed by SHA-256), so the store only says which artifacts exist,
//! which image each one names, and which devices may download which artifact until when.
//!
//! The functions here run on a connection the caller chose (the writer's open transaction, or a reader);
//! `sqlite.rs` wires them into [`crate::Store`]. Times are Azure's text form (as in `jobs.rs`), except a
//! grant's expiry, kept as Unix seconds so that "live" is one integer comparison.

use fleethub_protocol::firmware::FirmwareManifest;
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::{format_time, parse_time};
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;

use crate::{StoreError, StoreResult};

/// The schema of artifacts and grants (migration 7). Released: never edit it, append a new migration.
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE artifacts (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        manifest_jws TEXT,
        manifest TEXT NOT NULL,
        signed INTEGER NOT NULL,
        key_id TEXT,
        created TEXT NOT NULL,
        uploaded TEXT NOT NULL,
        PRIMARY KEY (model, version)
    ) WITHOUT ROWID;
    CREATE INDEX artifacts_by_sha256 ON artifacts (sha256);
    CREATE TABLE firmware_grants (
        device_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        source TEXT NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (device_id, model, version, source)
    ) WITHOUT ROWID;
    CREATE INDEX firmware_grants_by_artifact ON firmware_grants (model, version, source);
    CREATE INDEX firmware_grants_by_source ON firmware_grants (source);
    CREATE INDEX firmware_grants_by_expiry ON firmware_grants (expires);
"#;

/// A stored artifact: its manifest (what the publisher signed, or what the hub made for an unsigned
/// upload), the signed JWS if any, and when it was uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// Model, version, SHA-256 and size of the image, its creation time, health check and description.
    pub manifest: FirmwareManifest,
    /// The compact JWS the manifest came in; `None` for an unsigned artifact.
    pub manifest_jws: Option<String>,
    /// The JWS header's `kid`, when signed.
    pub key_id: Option<String>,
    /// Kept to 100 ns (finer digits are dropped).
    pub uploaded: OffsetDateTime,
}

impl ArtifactRecord {
    pub fn model(&self) -> &str {
        &self.manifest.model
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    pub fn sha256(&self) -> &str {
        &self.manifest.sha256
    }

    pub fn signed(&self) -> bool {
        self.manifest_jws.is_some()
    }
}

/// A device's entitlement to download one artifact until `expires` (kept to the second).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareGrant {
    pub device_id: DeviceId,
    pub model: String,
    pub version: String,
    pub expires: OffsetDateTime,
    /// Who granted it: `update` for an explicit grant, `rollout:<id>` for a rollout. A device may hold one
    /// grant per artifact and source; putting one again replaces its expiry.
    pub source: String,
}

const ARTIFACT_COLUMNS: &str = "manifest, manifest_jws, key_id, uploaded";

fn decode_artifact(row: &Row<'_>) -> StoreResult<ArtifactRecord> {
    let manifest: String = row.get(0)?;
    let uploaded: String = row.get(3)?;
    Ok(ArtifactRecord {
        manifest: serde_json::from_str(&manifest)?,
        manifest_jws: row.get(1)?,
        key_id: row.get(2)?,
        uploaded: parse_time(&uploaded)
            .map_err(|error| StoreError::Incompatible(format!("artifact upload time: {error}")))?,
    })
}

fn unix_seconds(time: OffsetDateTime) -> i64 {
    time.unix_timestamp()
}

pub(crate) fn load(
    connection: &Connection,
    model: &str,
    version: &str,
) -> StoreResult<Option<ArtifactRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE model = ?1 AND version = ?2"
    ))?;
    let mut rows = statement.query(params![model, version])?;
    match rows.next()? {
        Some(row) => Ok(Some(decode_artifact(row)?)),
        None => Ok(None),
    }
}

/// Artifacts by model then version (byte order), all or one model's.
pub(crate) fn list(
    connection: &Connection,
    model: Option<&str>,
) -> StoreResult<Vec<ArtifactRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE ?1 IS NULL OR model = ?1 ORDER BY model, version"
    ))?;
    let mut rows = statement.query(params![model])?;
    let mut artifacts = Vec::new();
    while let Some(row) = rows.next()? {
        artifacts.push(decode_artifact(row)?);
    }
    Ok(artifacts)
}

pub(crate) fn insert(connection: &Connection, artifact: &ArtifactRecord) -> StoreResult<()> {
    let manifest = &artifact.manifest;
    if load(connection, &manifest.model, &manifest.version)?.is_some() {
        return Err(StoreError::ArtifactAlreadyExists {
            model: manifest.model.clone(),
            version: manifest.version.clone(),
        });
    }
    let size = i64::try_from(manifest.size).map_err(|_| {
        StoreError::Backend(format!(
            "an image of {} bytes is too large to record",
            manifest.size
        ))
    })?;
    connection
        .prepare_cached(
            "INSERT INTO artifacts (model, version, sha256, size, manifest_jws, manifest, signed, key_id,
                                    created, uploaded)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            manifest.model,
            manifest.version,
            manifest.sha256,
            size,
            artifact.manifest_jws,
            serde_json::to_string(manifest)?,
            artifact.signed(),
            artifact.key_id,
            format_time(manifest.created),
            format_time(artifact.uploaded),
        ])?;
    Ok(())
}

/// Deletes an artifact and the grants for it; returns what was deleted.
pub(crate) fn delete(
    connection: &Connection,
    model: &str,
    version: &str,
) -> StoreResult<ArtifactRecord> {
    let artifact =
        load(connection, model, version)?.ok_or_else(|| StoreError::ArtifactNotFound {
            model: model.to_owned(),
            version: version.to_owned(),
        })?;
    connection
        .prepare_cached("DELETE FROM firmware_grants WHERE model = ?1 AND version = ?2")?
        .execute(params![model, version])?;
    connection
        .prepare_cached("DELETE FROM artifacts WHERE model = ?1 AND version = ?2")?
        .execute(params![model, version])?;
    Ok(artifact)
}

pub(crate) fn count_with_sha256(connection: &Connection, sha256: &str) -> StoreResult<u64> {
    let count: i64 = connection
        .prepare_cached("SELECT COUNT(*) FROM artifacts WHERE sha256 = ?1")?
        .query_row(params![sha256], |row| row.get(0))?;
    Ok(count.max(0) as u64)
}

/// Records (or replaces) a grant; `ArtifactNotFound` if the artifact does not exist, so a grant never
/// outlives the artifact it names.
pub(crate) fn put_grant(connection: &Connection, grant: &FirmwareGrant) -> StoreResult<()> {
    let exists = connection
        .prepare_cached("SELECT 1 FROM artifacts WHERE model = ?1 AND version = ?2")?
        .query_row(params![grant.model, grant.version], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        return Err(StoreError::ArtifactNotFound {
            model: grant.model.clone(),
            version: grant.version.clone(),
        });
    }
    connection
        .prepare_cached(
            "INSERT INTO firmware_grants (device_id, model, version, source, expires)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device_id, model, version, source) DO UPDATE SET expires = excluded.expires",
        )?
        .execute(params![
            grant.device_id.as_str(),
            grant.model,
            grant.version,
            grant.source,
            unix_seconds(grant.expires),
        ])?;
    Ok(())
}

/// The device's live grant for the artifact (expiring at or after `now`) that lasts longest.
pub(crate) fn find_grant(
    connection: &Connection,
    device_id: &DeviceId,
    model: &str,
    version: &str,
    now: OffsetDateTime,
) -> StoreResult<Option<FirmwareGrant>> {
    let row: Option<(String, i64)> = connection
        .prepare_cached(
            "SELECT source, expires FROM firmware_grants
             WHERE device_id = ?1 AND model = ?2 AND version = ?3 AND expires >= ?4
             ORDER BY expires DESC, source LIMIT 1",
        )?
        .query_row(
            params![device_id.as_str(), model, version, unix_seconds(now)],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    row.map(|(source, expires)| {
        Ok(FirmwareGrant {
            device_id: device_id.clone(),
            model: model.to_owned(),
            version: version.to_owned(),
            expires: OffsetDateTime::from_unix_timestamp(expires).map_err(|error| {
                StoreError::Incompatible(format!("grant expiry {expires}: {error}"))
            })?,
            source,
        })
    })
    .transpose()
}

pub(crate) fn revoke_grants(connection: &Connection, source: &str) -> StoreResult<u64> {
    let deleted = connection
        .prepare_cached("DELETE FROM firmware_grants WHERE source = ?1")?
        .execute(params![source])?;
    Ok(deleted as u64)
}

pub(crate) fn purge_expired_grants(
    connection: &Connection,
    now: OffsetDateTime,
) -> StoreResult<u64> {
    let deleted = connection
        .prepare_cached("DELETE FROM firmware_grants WHERE expires < ?1")?
        .execute(params![unix_seconds(now)])?;
    Ok(deleted as u64)
}
