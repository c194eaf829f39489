//! X.509 CA certificates in SQLite: the certificates a service uploaded (`PUT /certificates/{name}`) so that
//! devices whose client certificates chain to them can authenticate, with their proof-of-possession state.
//!
//! The store keeps bytes and flags only; parsing, the verification code's meaning and the etag rules are the
//! hub's (`certificates.rs` there). The functions here run on a connection the caller chose (the writer's
//! open transaction, or a reader); `sqlite.rs` wires them into [`crate::Store`]. Times are Unix milliseconds.

use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;

use crate::{StoreError, StoreResult};

/// The schema of CA certificates (migration 11). Released: never edit it, append a new migration.
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE ca_certificates (
        name TEXT PRIMARY KEY,
        certificate BLOB NOT NULL,
        is_verified INTEGER NOT NULL,
        verification_code TEXT,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        etag TEXT NOT NULL
    ) WITHOUT ROWID;
"#;

/// A stored CA certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCertificateRecord {
    /// The name it was uploaded under (Azure: 1 to 64 of letters, digits, `-`, `.`, `_`).
    pub name: String,
    /// The certificate's DER.
    pub certificate_der: Vec<u8>,
    /// Whether proof of possession of its key was given (or the upload declared it verified).
    pub is_verified: bool,
    /// The last verification code handed out and not yet used.
    pub verification_code: Option<String>,
    /// Kept to the millisecond.
    pub created: OffsetDateTime,
    /// Kept to the millisecond.
    pub updated: OffsetDateTime,
    /// Changes with every write of the record.
    pub etag: String,
}

fn millis(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .expect("an OffsetDateTime in milliseconds fits in i64")
}

fn from_millis(value: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(value) * 1_000_000).map_err(|error| {
        StoreError::Incompatible(format!("stored certificate time {value}: {error}"))
    })
}

const COLUMNS: &str = "name, certificate, is_verified, verification_code, created, updated, etag";

fn decode(row: &Row<'_>) -> StoreResult<CaCertificateRecord> {
    Ok(CaCertificateRecord {
        name: row.get(0)?,
        certificate_der: row.get(1)?,
        is_verified: row.get::<_, i64>(2)? != 0,
        verification_code: row.get(3)?,
        created: from_millis(row.get(4)?)?,
        updated: from_millis(row.get(5)?)?,
        etag: row.get(6)?,
    })
}

/// Inserts or replaces the record with this name.
pub(crate) fn put(connection: &Connection, record: &CaCertificateRecord) -> StoreResult<()> {
    connection
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO ca_certificates ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ))?
        .execute(params![
            record.name,
            record.certificate_der,
            i64::from(record.is_verified),
            record.verification_code,
            millis(record.created),
            millis(record.updated),
            record.etag,
        ])?;
    Ok(())
}

pub(crate) fn load(
    connection: &Connection,
    name: &str,
) -> StoreResult<Option<CaCertificateRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM ca_certificates WHERE name = ?1"
    ))?;
    let row = statement
        .query_row(params![name], |row| Ok(decode(row)))
        .optional()?;
    row.transpose()
}

/// Every record, by name (byte order).
pub(crate) fn list(connection: &Connection) -> StoreResult<Vec<CaCertificateRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM ca_certificates ORDER BY name"
    ))?;
    let mut rows = statement.query([])?;
    let mut records = Vec::new();
    while let Some(row) = rows.next()? {
        records.push(decode(row)?);
    }
    Ok(records)
}

/// Deletes the record; returns whether there was one.
pub(crate) fn delete(connection: &Connection, name: &str) -> StoreResult<bool> {
    let deleted = connection
        .prepare_cached("DELETE FROM ca_certificates WHERE name = ?1")?
        .execute(params![name])?;
    Ok(deleted > 0)
}
