//! Firmware rollouts and the per-device records of their executions in SQLite: the rollout rows, the
//! device rows (the executor's [`TargetRecord`] with the device's phase, wave and position), and the
//! change-feed records of their progress.
//!
//! The functions here run on a connection the caller chose (the writer's open transaction, or a reader);
//! `sqlite.rs` wires them into [`crate::Store`], writing device rows in chunks of [`ROLLOUT_TARGET_CHUNK`]
//! as jobs do.
//!
//! Progress in the change feed, in the transaction of the write: saving device records returns a
//! `deviceRolloutUpdated` [`RolloutChange`] per device whose status changed (a device not stored before
//! counts as `pending`, so freezing a rollout's targets appends nothing), carrying the counts of its phase
//! and of its wave after it; creating a rollout, or writing it with anything but its counts changed, returns
//! a `rolloutUpdated` one with the whole rollout. The counts are kept per rollout in
//! `rollouts.target_counts` (per wave, and the rollback phase's), updated with the device rows, so a
//! rollout read back always shows the counts of its stored device records, and the latest change record of
//! a rollout says where it stands without counting anything.

use fleethub_core::executor::{Statistics, TargetError, TargetRecord, TargetStatus};
use fleethub_core::identity::IdentityKey;
use fleethub_core::rollout::{RolloutTarget, wire_statistics};
use fleethub_protocol::changes::ChangeOperation;
use fleethub_protocol::ids::{DeviceId, ModuleId, RolloutId};
use fleethub_protocol::rest::{format_time, parse_time};
use fleethub_protocol::rollouts::{
    DeviceRollout, DeviceRolloutChange, DeviceRolloutError, DeviceRolloutStatus, Rollout,
    RolloutPhase, RolloutStatus,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{StoreError, StoreResult};

/// Device rows per write when saving or deleting many.
pub const ROLLOUT_TARGET_CHUNK: usize = 2000;

/// The schema of rollouts (migration 8, after the artifacts' 7). Released: never edit it, append a new
/// migration.
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE rollouts (
        rollout_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        rollback_model TEXT,
        rollback_version TEXT,
        created_time TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL,
        target_counts TEXT NOT NULL
    );
    CREATE INDEX rollouts_by_status ON rollouts (status, rollout_id);
    CREATE INDEX rollouts_by_artifact ON rollouts (model, version);
    CREATE INDEX rollouts_by_rollback ON rollouts (rollback_model, rollback_version)
        WHERE rollback_model IS NOT NULL;
    CREATE TABLE rollout_targets (
        rollout_id TEXT NOT NULL,
        phase TEXT NOT NULL,
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL DEFAULT '',
        wave INTEGER NOT NULL,
        position INTEGER NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_time TEXT NOT NULL,
        start_time TEXT,
        end_time TEXT,
        last_updated_time TEXT NOT NULL,
        outcome TEXT,
        error TEXT,
        PRIMARY KEY (rollout_id, phase, device_id, module_id)
    ) WITHOUT ROWID;
    CREATE INDEX rollout_targets_by_position ON rollout_targets (rollout_id, phase, position);
    -- Rollout records in the change feed: the rollout a record is about (`NULL` for every other record;
    -- the partial index serves `GET /changes?rolloutId=` and costs them nothing).
    ALTER TABLE changes ADD COLUMN rollout_id TEXT;
    CREATE INDEX changes_by_rollout ON changes (rollout_id, sequence) WHERE rollout_id IS NOT NULL;
"#;

/// A rollout as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRecord {
    /// The rollout as its owner last wrote it. When read back, its counts (`statistics`, each wave's,
    /// `rollbackStatistics`) are the store's, from the stored device records.
    pub rollout: Rollout,
    /// The owner's own bookkeeping (the rollout machine's decisions), opaque to the store.
    pub state: Value,
}

/// Which rollouts [`crate::Store::list_rollouts`] returns: those in a status (any when `None`), by id,
/// strictly after `after`, at most `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutFilter {
    pub status: Option<RolloutStatus>,
    pub after: Option<RolloutId>,
    pub limit: usize,
}

/// A change-feed record that a rollout write appends, in the same transaction.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RolloutChange {
    pub rollout_id: RolloutId,
    /// The device a `deviceRolloutUpdated` record is about; `None` for `rolloutUpdated`.
    pub target: Option<IdentityKey>,
    pub operation: ChangeOperation,
    pub body: Value,
    pub time: OffsetDateTime,
}

/// The counts of a rollout's stored device records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TargetCounts {
    waves: Vec<Statistics>,
    rollback: Option<Statistics>,
}

impl TargetCounts {
    fn slot(&mut self, phase: RolloutPhase, wave: u32) -> &mut Statistics {
        match phase {
            RolloutPhase::Rollback => self.rollback.get_or_insert_with(Statistics::default),
            RolloutPhase::Update => {
                let index = wave.max(1) as usize - 1;
                if self.waves.len() <= index {
                    self.waves.resize(index + 1, Statistics::default());
                }
                &mut self.waves[index]
            }
        }
    }

    fn total(&self) -> Statistics {
        let mut total = Statistics::default();
        for wave in &self.waves {
            total.device_count += wave.device_count;
            total.pending += wave.pending;
            total.running += wave.running;
            total.succeeded += wave.succeeded;
            total.failed += wave.failed;
            total.cancelled += wave.cancelled;
        }
        total
    }

    /// Writes the counts into the rollout's wire shape.
    fn apply(&self, rollout: &mut Rollout) {
        rollout.statistics = wire_statistics(self.total());
        for wave in &mut rollout.waves {
            wave.statistics = self
                .waves
                .get(wave.wave.max(1) as usize - 1)
                .copied()
                .map(wire_statistics)
                .unwrap_or_default();
        }
        rollout.rollback_statistics = self.rollback.map(wire_statistics);
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

const FINAL_STATUSES: &str = "('completed', 'aborted')";

const ROLLOUT_COLUMNS: &str = "body, state, target_counts";

const TARGET_COLUMNS: &str = "phase, wave, position, device_id, module_id, status, attempts, \
                              created_time, start_time, end_time, last_updated_time, outcome, error";

fn rollout_exists(connection: &Connection, rollout_id: &RolloutId) -> StoreResult<bool> {
    Ok(connection
        .prepare_cached("SELECT 1 FROM rollouts WHERE rollout_id = ?1")?
        .query_row(params![rollout_id.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

fn artifact_exists(connection: &Connection, model: &str, version: &str) -> StoreResult<bool> {
    Ok(crate::artifacts::load(connection, model, version)?.is_some())
}

/// Stores a new rollout (its artifacts must exist, so one deleted meanwhile is never rolled out); returns its
/// `rolloutUpdated` record.
pub(crate) fn insert_rollout(
    connection: &Connection,
    record: &RolloutRecord,
    now: OffsetDateTime,
) -> StoreResult<RolloutChange> {
    let rollout = &record.rollout;
    if rollout_exists(connection, &rollout.rollout_id)? {
        return Err(StoreError::RolloutAlreadyExists(rollout.rollout_id.clone()));
    }
    for artifact in std::iter::once(&rollout.artifact).chain(rollout.rollback.as_ref()) {
        if !artifact_exists(connection, &artifact.model, &artifact.version)? {
            return Err(StoreError::ArtifactNotFound {
                model: artifact.model.clone(),
                version: artifact.version.clone(),
            });
        }
    }
    let counts = TargetCounts::default();
    connection
        .prepare_cached(
            "INSERT INTO rollouts (rollout_id, status, model, version, rollback_model, rollback_version,
                                   created_time, body, state, target_counts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            rollout.rollout_id.as_str(),
            rollout.status.as_str(),
            rollout.artifact.model,
            rollout.artifact.version,
            rollout.rollback.as_ref().map(|rollback| &rollback.model),
            rollout.rollback.as_ref().map(|rollback| &rollback.version),
            format_time(rollout.created_time),
            serde_json::to_string(rollout)?,
            serde_json::to_string(&record.state)?,
            serde_json::to_string(&counts)?,
        ])?;
    let mut body = rollout.clone();
    counts.apply(&mut body);
    Ok(rollout_change(&body, now))
}

/// Replaces a stored rollout (same id; its artifacts do not change). Returns its `rolloutUpdated` record
/// when anything but its counts and state changed.
pub(crate) fn update_rollout(
    connection: &Connection,
    record: &RolloutRecord,
    now: OffsetDateTime,
) -> StoreResult<Option<RolloutChange>> {
    let rollout = &record.rollout;
    let (previous, counts) = load_row(connection, &rollout.rollout_id)?
        .ok_or_else(|| StoreError::RolloutNotFound(rollout.rollout_id.clone()))?;
    connection
        .prepare_cached(
            "UPDATE rollouts SET status = ?2, body = ?3, state = ?4 WHERE rollout_id = ?1",
        )?
        .execute(params![
            rollout.rollout_id.as_str(),
            rollout.status.as_str(),
            serde_json::to_string(rollout)?,
            serde_json::to_string(&record.state)?,
        ])?;
    let mut body = rollout.clone();
    counts.apply(&mut body);
    let mut before = previous.rollout;
    counts.apply(&mut before);
    Ok((before != body).then(|| rollout_change(&body, now)))
}

fn rollout_change(rollout: &Rollout, now: OffsetDateTime) -> RolloutChange {
    RolloutChange {
        rollout_id: rollout.rollout_id.clone(),
        target: None,
        operation: ChangeOperation::RolloutUpdated,
        body: serde_json::to_value(rollout).expect("a rollout always serialises"),
        time: now,
    }
}

/// The stored rollout without its counts applied, and its counts.
fn load_row(
    connection: &Connection,
    rollout_id: &RolloutId,
) -> StoreResult<Option<(RolloutRecord, TargetCounts)>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?1"
    ))?;
    let mut rows = statement.query(params![rollout_id.as_str()])?;
    rows.next()?.map(decode_row).transpose()
}

fn decode_row(row: &Row<'_>) -> StoreResult<(RolloutRecord, TargetCounts)> {
    let rollout: Rollout = serde_json::from_str(&row.get::<_, String>(0)?)?;
    let state: Value = serde_json::from_str(&row.get::<_, String>(1)?)?;
    let counts: TargetCounts = serde_json::from_str(&row.get::<_, String>(2)?)?;
    Ok((RolloutRecord { rollout, state }, counts))
}

fn decode_rollout(row: &Row<'_>) -> StoreResult<RolloutRecord> {
    let (mut record, counts) = decode_row(row)?;
    counts.apply(&mut record.rollout);
    Ok(record)
}

pub(crate) fn load_rollout(
    connection: &Connection,
    rollout_id: &RolloutId,
) -> StoreResult<Option<RolloutRecord>> {
    Ok(
        load_row(connection, rollout_id)?.map(|(mut record, counts)| {
            counts.apply(&mut record.rollout);
            record
        }),
    )
}

pub(crate) fn list_rollouts(
    connection: &Connection,
    filter: &RolloutFilter,
) -> StoreResult<Vec<RolloutRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts
         WHERE (?1 IS NULL OR status = ?1) AND rollout_id > ?2
         ORDER BY rollout_id LIMIT ?3"
    ))?;
    let mut rows = statement.query(params![
        filter.status.map(RolloutStatus::as_str),
        filter.after.as_ref().map_or("", RolloutId::as_str),
        limit(filter.limit),
    ])?;
    let mut rollouts = Vec::new();
    while let Some(row) = rows.next()? {
        rollouts.push(decode_rollout(row)?);
    }
    Ok(rollouts)
}

/// Rollouts not `completed` or `aborted`, by id: what a starting hub resumes.
pub(crate) fn list_unfinished(connection: &Connection) -> StoreResult<Vec<RolloutRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE status NOT IN {FINAL_STATUSES} ORDER BY rollout_id"
    ))?;
    let mut rows = statement.query([])?;
    let mut rollouts = Vec::new();
    while let Some(row) = rows.next()? {
        rollouts.push(decode_rollout(row)?);
    }
    Ok(rollouts)
}

/// The unfinished rollouts that install or roll back to an artifact, by id.
pub(crate) fn unfinished_using(
    connection: &Connection,
    model: &str,
    version: &str,
) -> StoreResult<Vec<RolloutId>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT rollout_id FROM rollouts
         WHERE status NOT IN {FINAL_STATUSES}
           AND ((model = ?1 AND version = ?2) OR (rollback_model = ?1 AND rollback_version = ?2))
         ORDER BY rollout_id"
    ))?;
    let rows = statement.query_map(params![model, version], |row| row.get::<_, String>(0))?;
    rows.map(|row| decode_rollout_id(row?)).collect()
}

/// Inserts or replaces device records of an existing rollout. Returns a `deviceRolloutUpdated` record for
/// each record whose status differs from the stored one (a device not stored yet counts as `pending`),
/// carrying the counts after it; saving the same records again returns none.
pub(crate) fn save_targets(
    connection: &Connection,
    rollout_id: &RolloutId,
    targets: &[RolloutTarget],
) -> StoreResult<Vec<RolloutChange>> {
    let mut counts = load_row(connection, rollout_id)?
        .ok_or_else(|| StoreError::RolloutNotFound(rollout_id.clone()))?
        .1;
    let counts_before = counts.clone();
    let mut stored_status = connection.prepare_cached(
        "SELECT status, wave FROM rollout_targets
         WHERE rollout_id = ?1 AND phase = ?2 AND device_id = ?3 AND module_id = ?4",
    )?;
    let mut statement = connection.prepare_cached(&format!(
        "INSERT INTO rollout_targets (rollout_id, {TARGET_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (rollout_id, phase, device_id, module_id) DO UPDATE SET
             wave = excluded.wave, position = excluded.position, status = excluded.status,
             attempts = excluded.attempts, created_time = excluded.created_time,
             start_time = excluded.start_time, end_time = excluded.end_time,
             last_updated_time = excluded.last_updated_time, outcome = excluded.outcome,
             error = excluded.error"
    ))?;
    let mut changes = Vec::new();
    for target in targets {
        let record = &target.record;
        let module_id = record
            .target
            .module_id
            .as_ref()
            .map_or("", ModuleId::as_str);
        let stored: Option<(String, i64)> = stored_status
            .query_row(
                params![
                    rollout_id.as_str(),
                    target.phase.as_str(),
                    record.target.device_id.as_str(),
                    module_id
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let before = match stored {
            Some((text, wave)) => {
                let status = decode_status(&text)?;
                if wave != i64::from(target.wave) {
                    // A device never changes wave; if a caller moves it anyway the counts follow it.
                    let previous = counts.slot(target.phase, u32::try_from(wave).unwrap_or(0));
                    previous.device_count = previous.device_count.saturating_sub(1);
                    count(previous, status, -1);
                    let next = counts.slot(target.phase, target.wave);
                    next.device_count += 1;
                    count(next, status, 1);
                }
                status
            }
            None => {
                let slot = counts.slot(target.phase, target.wave);
                slot.device_count += 1;
                count(slot, TargetStatus::Pending, 1);
                TargetStatus::Pending
            }
        };
        statement.execute(params![
            rollout_id.as_str(),
            target.phase.as_str(),
            i64::from(target.wave),
            i64::try_from(target.position).unwrap_or(i64::MAX),
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
            let slot = counts.slot(target.phase, target.wave);
            count(slot, before, -1);
            count(slot, record.status, 1);
            let statistics = match target.phase {
                RolloutPhase::Update => counts.total(),
                RolloutPhase::Rollback => counts.rollback.unwrap_or_default(),
            };
            let wave_statistics = match target.phase {
                RolloutPhase::Update => {
                    Some(wire_statistics(*counts.slot(target.phase, target.wave)))
                }
                RolloutPhase::Rollback => None,
            };
            let body = DeviceRolloutChange {
                device: device_rollout(rollout_id, target),
                statistics: wire_statistics(statistics),
                wave_statistics,
            };
            changes.push(RolloutChange {
                rollout_id: rollout_id.clone(),
                target: Some(record.target.clone()),
                operation: ChangeOperation::DeviceRolloutUpdated,
                body: serde_json::to_value(body)?,
                time: record.last_updated,
            });
        }
    }
    if counts != counts_before {
        connection
            .prepare_cached("UPDATE rollouts SET target_counts = ?2 WHERE rollout_id = ?1")?
            .execute(params![
                rollout_id.as_str(),
                serde_json::to_string(&counts)?
            ])?;
    }
    Ok(changes)
}

/// A device's record as the wire shows it.
pub fn device_rollout(rollout_id: &RolloutId, target: &RolloutTarget) -> DeviceRollout {
    let record = &target.record;
    DeviceRollout {
        device_id: record.target.device_id.clone(),
        module_id: record.target.module_id.clone(),
        rollout_id: rollout_id.clone(),
        phase: target.phase,
        wave: target.wave,
        status: match record.status {
            TargetStatus::Pending => DeviceRolloutStatus::Pending,
            TargetStatus::Running => DeviceRolloutStatus::Running,
            TargetStatus::Succeeded => DeviceRolloutStatus::Succeeded,
            TargetStatus::Failed => DeviceRolloutStatus::Failed,
            TargetStatus::Cancelled => DeviceRolloutStatus::Cancelled,
        },
        attempts: record.attempts,
        start_time: record.started,
        end_time: record.finished,
        last_updated_time: record.last_updated,
        outcome: record.outcome.clone(),
        error: record.error.as_ref().map(|error| DeviceRolloutError {
            code: error.code.clone(),
            description: error.description.clone(),
        }),
    }
}

/// A phase's device records by position, strictly after `after_position`, at most `limit`.
pub(crate) fn list_targets(
    connection: &Connection,
    rollout_id: &RolloutId,
    phase: RolloutPhase,
    after_position: Option<u64>,
    limit_count: usize,
) -> StoreResult<Vec<RolloutTarget>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {TARGET_COLUMNS} FROM rollout_targets
         WHERE rollout_id = ?1 AND phase = ?2 AND position > ?3
         ORDER BY position, device_id, module_id LIMIT ?4"
    ))?;
    let after = after_position.map_or(-1, |position| i64::try_from(position).unwrap_or(i64::MAX));
    let mut rows = statement.query(params![
        rollout_id.as_str(),
        phase.as_str(),
        after,
        limit(limit_count),
    ])?;
    let mut targets = Vec::new();
    while let Some(row) = rows.next()? {
        targets.push(decode_target(row)?);
    }
    Ok(targets)
}

/// Deletes up to `chunk` device rows of a rollout (any phase) and, once none is left, zeroes its counts;
/// returns how many rows it deleted. `RolloutNotFound` without a rollout row.
pub(crate) fn delete_target_chunk(
    connection: &Connection,
    rollout_id: &RolloutId,
    chunk: usize,
) -> StoreResult<usize> {
    if !rollout_exists(connection, rollout_id)? {
        return Err(StoreError::RolloutNotFound(rollout_id.clone()));
    }
    let deleted = connection
        .prepare_cached(
            "DELETE FROM rollout_targets WHERE rollout_id = ?1 AND (phase, device_id, module_id) IN
                 (SELECT phase, device_id, module_id FROM rollout_targets WHERE rollout_id = ?1 LIMIT ?2)",
        )?
        .execute(params![rollout_id.as_str(), limit(chunk)])?;
    if deleted < chunk {
        connection
            .prepare_cached("UPDATE rollouts SET target_counts = ?2 WHERE rollout_id = ?1")?
            .execute(params![
                rollout_id.as_str(),
                serde_json::to_string(&TargetCounts::default())?
            ])?;
    }
    Ok(deleted)
}

// ---------------------------------------------------------------------------------------------------------
// Row decoding

fn limit(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn decode_target(row: &Row<'_>) -> StoreResult<RolloutTarget> {
    let phase: String = row.get(0)?;
    let wave: i64 = row.get(1)?;
    let position: i64 = row.get(2)?;
    let device_id: String = row.get(3)?;
    let module_id: String = row.get(4)?;
    let status: String = row.get(5)?;
    let attempts: i64 = row.get(6)?;
    let outcome: Option<String> = row.get(11)?;
    let error: Option<String> = row.get(12)?;
    let out_of_range = |what: &str, value: i64| {
        StoreError::Incompatible(format!("stored {what} {value} is out of range"))
    };
    Ok(RolloutTarget {
        phase: RolloutPhase::parse(&phase)
            .ok_or_else(|| StoreError::Incompatible(format!("unknown rollout phase {phase:?}")))?,
        wave: u32::try_from(wave).map_err(|_| out_of_range("wave", wave))?,
        position: u64::try_from(position).map_err(|_| out_of_range("position", position))?,
        record: TargetRecord {
            target: decode_key(device_id, module_id)?,
            status: decode_status(&status)?,
            attempts: u32::try_from(attempts)
                .map_err(|_| out_of_range("attempt count", attempts))?,
            created: decode_time(&row.get::<_, String>(7)?)?,
            started: decode_optional_time(row.get(8)?)?,
            finished: decode_optional_time(row.get(9)?)?,
            last_updated: decode_time(&row.get::<_, String>(10)?)?,
            outcome: outcome
                .map(|text| serde_json::from_str::<Value>(&text))
                .transpose()?,
            error: error
                .map(|text| serde_json::from_str::<TargetError>(&text))
                .transpose()?,
        },
    })
}

fn decode_status(text: &str) -> StoreResult<TargetStatus> {
    TargetStatus::parse(text)
        .ok_or_else(|| StoreError::Incompatible(format!("unknown rollout device status {text:?}")))
}

fn decode_key(device_id: String, module_id: String) -> StoreResult<IdentityKey> {
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

fn decode_rollout_id(text: String) -> StoreResult<RolloutId> {
    text.parse()
        .map_err(|error| StoreError::Incompatible(format!("stored rollout id {text:?}: {error}")))
}

fn decode_time(text: &str) -> StoreResult<OffsetDateTime> {
    parse_time(text).map_err(|error| StoreError::Incompatible(format!("stored time: {error}")))
}

fn decode_optional_time(text: Option<String>) -> StoreResult<Option<OffsetDateTime>> {
    text.as_deref().map(decode_time).transpose()
}
