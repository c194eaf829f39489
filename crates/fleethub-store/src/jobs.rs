//! Jobs and the per-target records of their executions in SQLite: the job rows, the target rows written in
//! chunks, keyset paging, deletion in chunks, retention.
//!
//! The functions here run on a connection the caller chose (the writer's open transaction, or a reader);
//! `sqlite.rs` wires them into [`crate::Store`]. Big operations (a 100k-device job's records, deleting them)
//! are split by the caller into one write job per [`JOB_TARGET_CHUNK`] rows, so the single writer never
//! holds a transaction long enough to delay live traffic (twin writes) noticeably.
//!
//! Times are stored as Azure's text form (UTC, seven fractional digits, `Z`): it sorts as text, it is what
//! a `devices.jobs` record shows, and it keeps the 100 ns precision Azure has (finer digits are dropped).
//!
//! Progress in the change feed: saving target records returns a [`JobChange`] per target whose status
//! changed (a target not stored before counts as `pending`, so freezing a job's targets appends nothing),
//! and creating a job or changing its status or end time returns one for the job; `sqlite.rs` appends them
//! in the same transaction. Each carries the job's counts, kept per job in `jobs.target_counts` and updated
//! with the records (one row read and written per save), so the latest record of a job always says where
//! the whole job stands without counting its targets.

use std::time::Duration;

use fleethub_core::executor::{Statistics, TargetError, TargetRecord, TargetStatus};
use fleethub_core::identity::IdentityKey;
use fleethub_core::jobs::{device_job, device_job_statistics};
use fleethub_protocol::changes::ChangeOperation;
use fleethub_protocol::ids::{DeviceId, JobId, ModuleId};
use fleethub_protocol::jobs::{DeviceJobChange, JobRequest, JobResponse, JobStatus, JobType};
use fleethub_protocol::rest::{format_time, parse_time};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{StoreError, StoreResult};

/// How long Azure keeps a finished job; the default for [`crate::Store::purge_jobs`] callers.
pub const AZURE_JOB_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Target rows per write job when saving or deleting many.
pub const JOB_TARGET_CHUNK: usize = 2000;

/// The schema of jobs (migration 2). Released: never edit it, append a new migration.
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        job_type TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        created_time TEXT NOT NULL,
        start_time TEXT,
        end_time TEXT,
        failure_reason TEXT,
        status_message TEXT,
        statistics TEXT NOT NULL
    );
    CREATE INDEX jobs_by_status ON jobs (status, job_id);
    CREATE INDEX jobs_by_type ON jobs (job_type, status, job_id);
    CREATE TABLE job_targets (
        job_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_time TEXT NOT NULL,
        start_time TEXT,
        end_time TEXT,
        last_updated_time TEXT NOT NULL,
        outcome TEXT,
        error TEXT,
        PRIMARY KEY (job_id, device_id, module_id)
    ) WITHOUT ROWID;
    CREATE INDEX job_targets_by_device ON job_targets (device_id, module_id, job_id);
"#;

/// Migration 5: the counts of each job's stored target records, kept with the records (`NULL` for jobs
/// stored before it: counted from their records at their next write). Released: never edit it.
pub(crate) const COUNTS_MIGRATION: &str = r#"
    ALTER TABLE jobs ADD COLUMN target_counts TEXT;
"#;

/// A change-feed record that a job write appends, in the same transaction.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JobChange {
    pub job_id: JobId,
    /// The device (or module) a `deviceJobUpdated` record is about; `None` for `jobUpdated`.
    pub target: Option<IdentityKey>,
    pub operation: ChangeOperation,
    pub body: Value,
    pub time: OffsetDateTime,
}

/// A job: what was asked, where it stands, and its per-status counts.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub job_id: JobId,
    pub job_type: JobType,
    pub status: JobStatus,
    /// The request as accepted (a Jobs v2 `JobRequest`), kept as JSON so other kinds of fleet executions can
    /// share the table.
    pub request: Value,
    pub created_time: OffsetDateTime,
    pub start_time: Option<OffsetDateTime>,
    pub end_time: Option<OffsetDateTime>,
    pub failure_reason: Option<String>,
    pub status_message: Option<String>,
    /// The executor's counts as last saved by the job's owner ([`crate::Store::job_target_statistics`]
    /// counts the stored target records instead).
    pub statistics: Statistics,
}

/// Which jobs [`crate::Store::list_jobs`] returns: those of a type and/or status, ordered by id, strictly
/// after `after`, at most `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub job_type: Option<JobType>,
    pub status: Option<JobStatus>,
    pub after: Option<JobId>,
    pub limit: usize,
}

impl JobRecord {
    /// The job as Azure shows it (`GET /jobs/v2/{id}`), with `statistics` as its `deviceJobStatistics` (the
    /// hub passes a running job's live counts).
    pub fn response(&self, statistics: Statistics) -> JobResponse {
        let request: Option<JobRequest> = serde_json::from_value(self.request.clone()).ok();
        let request = request.as_ref();
        JobResponse {
            job_id: self.job_id.clone(),
            query_condition: request.and_then(|request| request.query_condition.clone()),
            created_time: Some(self.created_time),
            start_time: self.start_time,
            end_time: self.end_time,
            max_execution_time_in_seconds: request
                .and_then(|request| request.max_execution_time_in_seconds),
            job_type: self.job_type,
            cloud_to_device_method: request
                .and_then(|request| request.cloud_to_device_method.clone()),
            update_twin: request.and_then(|request| request.update_twin.clone()),
            status: self.status,
            failure_reason: self.failure_reason.clone(),
            status_message: self.status_message.clone(),
            device_job_statistics: Some(device_job_statistics(statistics)),
        }
    }
}

const JOB_COLUMNS: &str = "job_id, job_type, status, request, created_time, start_time, end_time, \
                           failure_reason, status_message, statistics";

const TARGET_COLUMNS: &str = "device_id, module_id, status, attempts, created_time, start_time, \
                              end_time, last_updated_time, outcome, error";

const FINAL_STATUSES: &str = "('completed', 'failed', 'cancelled')";

pub(crate) fn job_exists(connection: &Connection, job_id: &JobId) -> StoreResult<bool> {
    Ok(connection
        .prepare_cached("SELECT 1 FROM jobs WHERE job_id = ?1")?
        .query_row(params![job_id.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Stores a new job; returns its `jobUpdated` record.
pub(crate) fn insert_job(
    connection: &Connection,
    job: &JobRecord,
    now: OffsetDateTime,
) -> StoreResult<JobChange> {
    if job_exists(connection, &job.job_id)? {
        return Err(StoreError::JobAlreadyExists(job.job_id.clone()));
    }
    connection
        .prepare_cached(&format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))?
        .execute(params![
            job.job_id.as_str(),
            job.job_type.as_str(),
            job.status.as_str(),
            serde_json::to_string(&job.request)?,
            format_time(job.created_time),
            job.start_time.map(format_time),
            job.end_time.map(format_time),
            job.failure_reason,
            job.status_message,
            serde_json::to_string(&job.statistics)?,
        ])?;
    let counts = target_counts(connection, &job.job_id)?;
    Ok(job_change(job, counts, now))
}

/// Replaces the stored job with `job` (same id). Returns its `jobUpdated` record when the status or the end
/// time changed (a statistics-only write appends nothing: its devices' records carry the counts).
pub(crate) fn update_job(
    connection: &Connection,
    job: &JobRecord,
    now: OffsetDateTime,
) -> StoreResult<Option<JobChange>> {
    let previous = connection
        .prepare_cached("SELECT status, end_time FROM jobs WHERE job_id = ?1")?
        .query_row(params![job.job_id.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::JobNotFound(job.job_id.clone()))?;
    let changed = connection
        .prepare_cached(
            "UPDATE jobs SET job_type = ?2, status = ?3, request = ?4, created_time = ?5, start_time = ?6,
                 end_time = ?7, failure_reason = ?8, status_message = ?9, statistics = ?10
             WHERE job_id = ?1",
        )?
        .execute(params![
            job.job_id.as_str(),
            job.job_type.as_str(),
            job.status.as_str(),
            serde_json::to_string(&job.request)?,
            format_time(job.created_time),
            job.start_time.map(format_time),
            job.end_time.map(format_time),
            job.failure_reason,
            job.status_message,
            serde_json::to_string(&job.statistics)?,
        ])?;
    if changed == 0 {
        return Err(StoreError::JobNotFound(job.job_id.clone()));
    }
    let (status, end_time) = previous;
    if status == job.status.as_str() && end_time == job.end_time.map(format_time) {
        return Ok(None);
    }
    let counts = target_counts(connection, &job.job_id)?;
    Ok(Some(job_change(job, counts, now)))
}

fn job_change(job: &JobRecord, counts: Statistics, now: OffsetDateTime) -> JobChange {
    JobChange {
        job_id: job.job_id.clone(),
        target: None,
        operation: ChangeOperation::JobUpdated,
        body: serde_json::to_value(job.response(counts)).expect("a job always serialises"),
        time: now,
    }
}

/// The counts of a job's stored target records: kept in its row, or counted once for a job stored before
/// they were kept. `JobNotFound` without a job row.
fn target_counts(connection: &Connection, job_id: &JobId) -> StoreResult<Statistics> {
    let counts: Option<String> = connection
        .prepare_cached("SELECT target_counts FROM jobs WHERE job_id = ?1")?
        .query_row(params![job_id.as_str()], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::JobNotFound(job_id.clone()))?;
    match counts {
        Some(text) => Ok(serde_json::from_str(&text)?),
        None => target_statistics(connection, job_id),
    }
}

fn count(statistics: &mut Statistics, status: TargetStatus, delta: i64) {
    let counter = match status {
        TargetStatus::Pending => &mut statistics.pending,
        TargetStatus::Running => &mut statistics.running,
        TargetStatus::Succeeded => &mut statistics.succeeded,
        TargetStatus::Failed => &mut statistics.failed,
        TargetStatus::Cancelled => &mut statistics.cancelled,
    };
    *counter = counter.saturating_add_signed(delta);
}

pub(crate) fn load_job(connection: &Connection, job_id: &JobId) -> StoreResult<Option<JobRecord>> {
    let mut statement =
        connection.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"))?;
    let mut rows = statement.query(params![job_id.as_str()])?;
    rows.next()?.map(decode_job).transpose()
}

pub(crate) fn list_jobs(
    connection: &Connection,
    filter: &JobFilter,
) -> StoreResult<Vec<JobRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs
         WHERE (?1 IS NULL OR job_type = ?1) AND (?2 IS NULL OR status = ?2) AND job_id > ?3
         ORDER BY job_id LIMIT ?4"
    ))?;
    let mut rows = statement.query(params![
        filter.job_type.map(JobType::as_str),
        filter.status.map(JobStatus::as_str),
        filter.after.as_ref().map_or("", JobId::as_str),
        limit(filter.limit),
    ])?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next()? {
        jobs.push(decode_job(row)?);
    }
    Ok(jobs)
}

/// Jobs that are not `completed`, `failed` or `cancelled`, by id: what a starting hub resumes.
pub(crate) fn list_unfinished_jobs(connection: &Connection) -> StoreResult<Vec<JobRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE status NOT IN {FINAL_STATUSES} ORDER BY job_id"
    ))?;
    let mut rows = statement.query([])?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next()? {
        jobs.push(decode_job(row)?);
    }
    Ok(jobs)
}

/// Deletes the job row (its target rows go separately, in chunks). Returns whether it existed.
pub(crate) fn delete_job_row(connection: &Connection, job_id: &JobId) -> StoreResult<bool> {
    let deleted = connection
        .prepare_cached("DELETE FROM jobs WHERE job_id = ?1")?
        .execute(params![job_id.as_str()])?;
    Ok(deleted > 0)
}

/// Deletes up to `chunk` target rows of a job; returns how many.
pub(crate) fn delete_target_chunk(
    connection: &Connection,
    job_id: &JobId,
    chunk: usize,
) -> StoreResult<usize> {
    Ok(connection
        .prepare_cached(
            "DELETE FROM job_targets WHERE job_id = ?1 AND (device_id, module_id) IN
                 (SELECT device_id, module_id FROM job_targets WHERE job_id = ?1 LIMIT ?2)",
        )?
        .execute(params![job_id.as_str(), limit(chunk)])?)
}

/// Finished jobs that ended (or, lacking an end time, were created) before `ended_before`, at most `limit`.
pub(crate) fn expired_job_ids(
    connection: &Connection,
    ended_before: OffsetDateTime,
    chunk: usize,
) -> StoreResult<Vec<JobId>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT job_id FROM jobs
         WHERE status IN {FINAL_STATUSES} AND COALESCE(end_time, created_time) < ?1
         ORDER BY job_id LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![format_time(ended_before), limit(chunk)], |row| {
        row.get::<_, String>(0)
    })?;
    rows.map(|row| decode_job_id(row?)).collect()
}

/// Jobs whose row is gone but some of whose target rows remain (a deletion cut short by a crash).
pub(crate) fn orphaned_job_ids(connection: &Connection) -> StoreResult<Vec<JobId>> {
    let mut statement = connection.prepare_cached(
        "SELECT DISTINCT job_id FROM job_targets WHERE job_id NOT IN (SELECT job_id FROM jobs)",
    )?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
    rows.map(|row| decode_job_id(row?)).collect()
}

/// Inserts or replaces target records of an existing job. Returns a `deviceJobUpdated` record for each
/// record whose status differs from the stored one (a target not stored yet counts as `pending`), carrying
/// the job's counts after it; saving the same records again returns none.
pub(crate) fn save_targets(
    connection: &Connection,
    job_id: &JobId,
    records: &[TargetRecord],
) -> StoreResult<Vec<JobChange>> {
    let job_type: String = connection
        .prepare_cached("SELECT job_type FROM jobs WHERE job_id = ?1")?
        .query_row(params![job_id.as_str()], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::JobNotFound(job_id.clone()))?;
    let job_type = JobType::parse(&job_type)
        .ok_or_else(|| StoreError::Incompatible(format!("unknown job type {job_type:?}")))?;
    let mut counts = target_counts(connection, job_id)?;
    let counts_before = counts;
    let mut stored_status = connection.prepare_cached(
        "SELECT status FROM job_targets WHERE job_id = ?1 AND device_id = ?2 AND module_id = ?3",
    )?;
    let mut statement = connection.prepare_cached(&format!(
        "INSERT INTO job_targets (job_id, {TARGET_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (job_id, device_id, module_id) DO UPDATE SET
             status = excluded.status, attempts = excluded.attempts, created_time = excluded.created_time,
             start_time = excluded.start_time, end_time = excluded.end_time,
             last_updated_time = excluded.last_updated_time, outcome = excluded.outcome, error = excluded.error"
    ))?;
    let mut changes = Vec::new();
    for record in records {
        let module_id = record
            .target
            .module_id
            .as_ref()
            .map_or("", ModuleId::as_str);
        let stored: Option<String> = stored_status
            .query_row(
                params![job_id.as_str(), record.target.device_id.as_str(), module_id],
                |row| row.get(0),
            )
            .optional()?;
        let before = match stored {
            Some(text) => decode_target_status(&text)?,
            None => {
                counts.device_count += 1;
                count(&mut counts, TargetStatus::Pending, 1);
                TargetStatus::Pending
            }
        };
        statement.execute(params![
            job_id.as_str(),
            record.target.device_id.as_str(),
            module_id,
            record.status.as_str(),
            i64::from(record.attempts),
            format_time(record.created),
            record.started.map(format_time),
            record.finished.map(format_time),
            format_time(record.last_updated),
            record
                .outcome
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
            record
                .error
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        ])?;
        if before != record.status {
            count(&mut counts, before, -1);
            count(&mut counts, record.status, 1);
            let body = DeviceJobChange {
                device_job: device_job(job_id, job_type, record),
                device_job_statistics: device_job_statistics(counts),
            };
            changes.push(JobChange {
                job_id: job_id.clone(),
                target: Some(record.target.clone()),
                operation: ChangeOperation::DeviceJobUpdated,
                body: serde_json::to_value(body)?,
                time: record.last_updated,
            });
        }
    }
    if counts != counts_before {
        connection
            .prepare_cached("UPDATE jobs SET target_counts = ?2 WHERE job_id = ?1")?
            .execute(params![job_id.as_str(), serde_json::to_string(&counts)?])?;
    }
    Ok(changes)
}

/// A job's target records ordered by device id then module id (a device before its modules), strictly
/// after `after`, at most `limit`.
pub(crate) fn list_targets(
    connection: &Connection,
    job_id: &JobId,
    after: Option<&IdentityKey>,
    limit_count: usize,
) -> StoreResult<Vec<TargetRecord>> {
    let mut records = Vec::new();
    let mut push_rows = |mut rows: rusqlite::Rows<'_>| -> StoreResult<()> {
        while let Some(row) = rows.next()? {
            records.push(decode_target(row, 0)?);
        }
        Ok(())
    };
    match after {
        Some(after) => {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {TARGET_COLUMNS} FROM job_targets
                 WHERE job_id = ?1 AND (device_id, module_id) > (?2, ?3)
                 ORDER BY device_id, module_id LIMIT ?4"
            ))?;
            push_rows(statement.query(params![
                job_id.as_str(),
                after.device_id.as_str(),
                after.module_id.as_ref().map_or("", ModuleId::as_str),
                limit(limit_count),
            ])?)?;
        }
        None => {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {TARGET_COLUMNS} FROM job_targets WHERE job_id = ?1
                 ORDER BY device_id, module_id LIMIT ?2"
            ))?;
            push_rows(statement.query(params![job_id.as_str(), limit(limit_count)])?)?;
        }
    }
    Ok(records)
}

/// The records of one device (and its modules) in every job, by job id.
pub(crate) fn list_device_targets(
    connection: &Connection,
    device_id: &DeviceId,
) -> StoreResult<Vec<(JobId, TargetRecord)>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {TARGET_COLUMNS}, job_id FROM job_targets WHERE device_id = ?1
         ORDER BY job_id, module_id"
    ))?;
    let mut rows = statement.query(params![device_id.as_str()])?;
    let mut records = Vec::new();
    while let Some(row) = rows.next()? {
        let record = decode_target(row, 0)?;
        records.push((decode_job_id(row.get(10)?)?, record));
    }
    Ok(records)
}

/// Counts a job's stored target records per status.
pub(crate) fn target_statistics(
    connection: &Connection,
    job_id: &JobId,
) -> StoreResult<Statistics> {
    let mut statement = connection.prepare_cached(
        "SELECT status, COUNT(*) FROM job_targets WHERE job_id = ?1 GROUP BY status",
    )?;
    let rows = statement.query_map(params![job_id.as_str()], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    let mut statistics = Statistics::default();
    for row in rows {
        let (status, count) = row?;
        let count = count as u64;
        statistics.device_count += count;
        match decode_target_status(&status)? {
            TargetStatus::Pending => statistics.pending += count,
            TargetStatus::Running => statistics.running += count,
            TargetStatus::Succeeded => statistics.succeeded += count,
            TargetStatus::Failed => statistics.failed += count,
            TargetStatus::Cancelled => statistics.cancelled += count,
        }
    }
    Ok(statistics)
}

// ---------------------------------------------------------------------------------------------------------
// Row decoding

/// SQLite's LIMIT takes an i64; `usize::MAX` means "no limit" and saturates.
fn limit(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn decode_job(row: &Row<'_>) -> StoreResult<JobRecord> {
    let job_type: String = row.get(1)?;
    let status: String = row.get(2)?;
    Ok(JobRecord {
        job_id: decode_job_id(row.get(0)?)?,
        job_type: JobType::parse(&job_type)
            .ok_or_else(|| StoreError::Incompatible(format!("unknown job type {job_type:?}")))?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Incompatible(format!("unknown job status {status:?}")))?,
        request: serde_json::from_str(&row.get::<_, String>(3)?)?,
        created_time: decode_time(&row.get::<_, String>(4)?)?,
        start_time: decode_optional_time(row.get(5)?)?,
        end_time: decode_optional_time(row.get(6)?)?,
        failure_reason: row.get(7)?,
        status_message: row.get(8)?,
        statistics: serde_json::from_str(&row.get::<_, String>(9)?)?,
    })
}

/// Decodes the [`TARGET_COLUMNS`] starting at column `first`.
fn decode_target(row: &Row<'_>, first: usize) -> StoreResult<TargetRecord> {
    let device_id: String = row.get(first)?;
    let module_id: String = row.get(first + 1)?;
    let status: String = row.get(first + 2)?;
    let attempts: i64 = row.get(first + 3)?;
    let outcome: Option<String> = row.get(first + 8)?;
    let error: Option<String> = row.get(first + 9)?;
    Ok(TargetRecord {
        target: decode_target_key(device_id, module_id)?,
        status: decode_target_status(&status)?,
        attempts: u32::try_from(attempts).map_err(|_| {
            StoreError::Incompatible(format!("stored attempt count {attempts} is out of range"))
        })?,
        created: decode_time(&row.get::<_, String>(first + 4)?)?,
        started: decode_optional_time(row.get(first + 5)?)?,
        finished: decode_optional_time(row.get(first + 6)?)?,
        last_updated: decode_time(&row.get::<_, String>(first + 7)?)?,
        outcome: outcome
            .map(|text| serde_json::from_str::<Value>(&text))
            .transpose()?,
        error: error
            .map(|text| serde_json::from_str::<TargetError>(&text))
            .transpose()?,
    })
}

fn decode_target_status(text: &str) -> StoreResult<TargetStatus> {
    TargetStatus::parse(text)
        .ok_or_else(|| StoreError::Incompatible(format!("unknown job target status {text:?}")))
}

fn decode_target_key(device_id: String, module_id: String) -> StoreResult<IdentityKey> {
    let device_id: DeviceId = device_id.parse().map_err(|error| {
        StoreError::Incompatible(format!("stored device id {device_id:?}: {error}"))
    })?;
    if module_id.is_empty() {
        return Ok(IdentityKey::device(device_id));
    }
    let module_id: ModuleId = module_id.parse().map_err(|error| {
        StoreError::Incompatible(format!("stored module id {module_id:?}: {error}"))
    })?;
    Ok(IdentityKey::module(device_id, module_id))
}

fn decode_job_id(text: String) -> StoreResult<JobId> {
    text.parse()
        .map_err(|error| StoreError::Incompatible(format!("stored job id {text:?}: {error}")))
}

fn decode_time(text: &str) -> StoreResult<OffsetDateTime> {
    parse_time(text).map_err(|error| StoreError::Incompatible(format!("stored time: {error}")))
}

fn decode_optional_time(text: Option<String>) -> StoreResult<Option<OffsetDateTime>> {
    text.as_deref().map(decode_time).transpose()
}
