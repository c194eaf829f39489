//! The audit log in SQLite: one row per state-changing service operation (who, what, on which target, with
//! what result), newest first when read, trimmed by age and by count.
//!
//! The functions here run on a connection the caller chose (the writer's open transaction, or a reader);
//! `sqlite.rs` wires them into [`crate::Store`]. Records are appended through the group-committing writer, so
//! many concurrent requests' records share one COMMIT. The order is the `sequence` column, strictly increasing
//! and never reused; readers page backwards by it. Times are Unix milliseconds so a time range is one integer
//! comparison.

use rusqlite::{Connection, Row, ToSql, params};
use time::OffsetDateTime;

use crate::{StoreError, StoreResult};

/// Rows deleted per write when trimming, so a large trim never holds the writer long.
pub const AUDIT_TRIM_CHUNK: usize = 5000;

/// The schema of the audit log (migration 10). Released: never edit it, append a new migration.
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE audit_log (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        policy TEXT,
        operation TEXT NOT NULL,
        target TEXT,
        status INTEGER NOT NULL,
        error_code TEXT,
        peer TEXT
    );
    CREATE INDEX audit_log_by_time ON audit_log (time);
    CREATE INDEX audit_log_by_operation ON audit_log (operation, sequence);
    CREATE INDEX audit_log_by_target ON audit_log (target, sequence) WHERE target IS NOT NULL;
"#;

/// A record to append ([`crate::Store::append_audit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditRecord {
    /// When the operation finished; kept to the millisecond.
    pub time: OffsetDateTime,
    /// The shared access policy (key name) that authorised it; `None` when the caller was not authenticated.
    pub policy: Option<String>,
    /// A stable name such as `registry.put`, `twin.patch`, `method.invoke` (the hub's table).
    pub operation: String,
    /// What it acted on: a device id, `device/module`, a job, configuration or rollout id, `model/version`.
    pub target: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// Azure's error code name when it failed (`DeviceNotFound`, `IotHubUnauthorizedAccess`, ...).
    pub error_code: Option<String>,
    /// The caller's address (`ip:port`) when known.
    pub peer: Option<String>,
}

/// A stored record: what was appended and its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Strictly increasing, never reused.
    pub sequence: u64,
    pub record: NewAuditRecord,
}

/// A page request of [`crate::Store::list_audit`]; every field set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// At or after this time.
    pub from: Option<OffsetDateTime>,
    /// Before this time.
    pub to: Option<OffsetDateTime>,
    pub operation: Option<String>,
    pub target: Option<String>,
    pub policy: Option<String>,
    /// Only records older than this sequence (the previous page's last record).
    pub before: Option<u64>,
    pub limit: usize,
}

fn millis(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .expect("an OffsetDateTime in milliseconds fits in i64")
}

fn from_millis(value: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(value) * 1_000_000)
        .map_err(|error| StoreError::Incompatible(format!("stored audit time {value}: {error}")))
}

pub(crate) fn append(connection: &Connection, record: &NewAuditRecord) -> StoreResult<u64> {
    connection
        .prepare_cached(
            "INSERT INTO audit_log (time, policy, operation, target, status, error_code, peer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            millis(record.time),
            record.policy,
            record.operation,
            record.target,
            i64::from(record.status),
            record.error_code,
            record.peer,
        ])?;
    Ok(connection.last_insert_rowid() as u64)
}

fn decode(row: &Row<'_>) -> StoreResult<AuditRecord> {
    let sequence: i64 = row.get(0)?;
    let status: i64 = row.get(5)?;
    Ok(AuditRecord {
        sequence: sequence as u64,
        record: NewAuditRecord {
            time: from_millis(row.get(1)?)?,
            policy: row.get(2)?,
            operation: row.get(3)?,
            target: row.get(4)?,
            status: u16::try_from(status).unwrap_or(0),
            error_code: row.get(6)?,
            peer: row.get(7)?,
        },
    })
}

pub(crate) fn list(connection: &Connection, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
    let mut conditions: Vec<&str> = Vec::new();
    let mut values: Vec<Box<dyn ToSql>> = Vec::new();
    if let Some(from) = filter.from {
        conditions.push("time >= ?");
        values.push(Box::new(millis(from)));
    }
    if let Some(to) = filter.to {
        conditions.push("time < ?");
        values.push(Box::new(millis(to)));
    }
    if let Some(operation) = &filter.operation {
        conditions.push("operation = ?");
        values.push(Box::new(operation.clone()));
    }
    if let Some(target) = &filter.target {
        conditions.push("target = ?");
        values.push(Box::new(target.clone()));
    }
    if let Some(policy) = &filter.policy {
        conditions.push("policy = ?");
        values.push(Box::new(policy.clone()));
    }
    if let Some(before) = filter.before {
        conditions.push("sequence < ?");
        values.push(Box::new(i64::try_from(before).unwrap_or(i64::MAX)));
    }
    let mut sql = String::from(
        "SELECT sequence, time, policy, operation, target, status, error_code, peer FROM audit_log",
    );
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY sequence DESC LIMIT ?");
    values.push(Box::new(i64::try_from(filter.limit).unwrap_or(i64::MAX)));
    let mut statement = connection.prepare_cached(&sql)?;
    let mut rows = statement.query(rusqlite::params_from_iter(values.iter()))?;
    let mut records = Vec::new();
    while let Some(row) = rows.next()? {
        records.push(decode(row)?);
    }
    Ok(records)
}

/// Deletes up to `chunk` of the oldest rows that are older than `older_than` or beyond the newest
/// `keep_newest`; returns how many.
pub(crate) fn trim_chunk(
    connection: &Connection,
    older_than: OffsetDateTime,
    keep_newest: u64,
    chunk: usize,
) -> StoreResult<usize> {
    let keep = i64::try_from(keep_newest).unwrap_or(i64::MAX);
    // The newest kept sequence bound: everything at or below `max - keep` goes.
    let deleted = connection
        .prepare_cached(
            "DELETE FROM audit_log WHERE sequence IN (
                SELECT sequence FROM audit_log
                WHERE time < ?1 OR sequence <= (SELECT COALESCE(MAX(sequence), 0) FROM audit_log) - ?2
                ORDER BY sequence LIMIT ?3)",
        )?
        .execute(params![
            millis(older_than),
            keep,
            i64::try_from(chunk).unwrap_or(i64::MAX)
        ])?;
    Ok(deleted)
}

/// Whether [`trim_chunk`] would delete nothing (a read, so an idle hub's trims cost no write).
pub(crate) fn nothing_to_trim(
    connection: &Connection,
    older_than: OffsetDateTime,
    keep_newest: u64,
) -> StoreResult<bool> {
    let keep = i64::try_from(keep_newest).unwrap_or(i64::MAX);
    let (oldest_sequence, oldest_time, newest_sequence): (Option<i64>, Option<i64>, Option<i64>) =
        connection
            .prepare_cached(
                "SELECT (SELECT sequence FROM audit_log ORDER BY sequence LIMIT 1),
                        (SELECT MIN(time) FROM audit_log),
                        (SELECT MAX(sequence) FROM audit_log)",
            )?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    Ok(match (oldest_sequence, oldest_time, newest_sequence) {
        (Some(oldest), Some(time), Some(newest)) => {
            time >= millis(older_than) && oldest > newest.saturating_sub(keep)
        }
        _ => true,
    })
}
