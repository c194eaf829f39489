//! Cloud-to-device messages in SQLite: each device's durable queue and the feedback records the service
//! reads in locked batches.
//!
//! The functions here run on a connection the caller chose (the writer's open transaction, or a reader);
//! `sqlite.rs` wires them into [`crate::Store`]. Every write checks what can refuse it before its first
//! write (see `run_batch` in `sqlite.rs`).
//!
//! The queue follows Azure's life cycle (`iot-hub-devguide-messages-c2d.md`). A row is a message that is
//! *Enqueued*, or *Invisible* while a lock from an HTTPS receive is live; the end states leave the queue:
//! *Completed* (the device completed it: a PUBACK over MQTT), *Dead lettered* (rejected, abandoned
//! `maxDeliveryCount` times, expired) and purged. Each end writes a feedback record in the same transaction
//! when the message's `iothub-ack` asks for one. MQTT deliveries take no lock and do not count as
//! deliveries: the device connection tracks what it has in flight and redelivers on reconnect, and Azure
//! counts only explicit abandons. The queue's order is the `sequence` column (Azure's `sequence-number`),
//! strictly increasing across the hub and never reused, so a sequence number names one message forever.
//!
//! Feedback records are rows too. A receive locks up to a batch of the oldest unlocked ones under the
//! caller's lock token, so a batch is handed out once; completing deletes it, abandoning (or letting the lock
//! run out) makes it receivable again. A record delivered `maxDeliveryCount` times, or older than the
//! feedback TTL, is dropped. Deleting a device deletes its queue and its pending feedback, as Azure does.
//!
//! Times: `enqueued_time` is Azure's text form (100 ns); expiries, lock ends and feedback creation times are
//! Unix milliseconds, so "due" and "locked" are one integer comparison.

use fleethub_protocol::c2d::{C2dMessage, FeedbackRecord, FeedbackStatusCode, LockToken};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::{format_time, parse_time};
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::{Duration, OffsetDateTime};

use crate::{StoreError, StoreResult};

/// Messages or feedback records removed per write when many are due at once.
pub const C2D_EXPIRY_CHUNK: usize = 2000;

/// The schema of C2D queues and feedback (migration 9). Released: never edit it, append a new migration.
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE c2d_messages (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        generation_id TEXT NOT NULL,
        message TEXT NOT NULL,
        body BLOB NOT NULL,
        enqueued_time TEXT NOT NULL,
        expires INTEGER NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        lock_token TEXT,
        locked_until INTEGER
    );
    CREATE INDEX c2d_messages_by_device ON c2d_messages (device_id, sequence);
    CREATE INDEX c2d_messages_by_expiry ON c2d_messages (expires);
    CREATE TABLE c2d_feedback (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        record TEXT NOT NULL,
        created INTEGER NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        lock_token TEXT,
        locked_until INTEGER
    );
    CREATE INDEX c2d_feedback_by_device ON c2d_feedback (device_id);
    CREATE INDEX c2d_feedback_by_created ON c2d_feedback (created);
    CREATE INDEX c2d_feedback_by_lock ON c2d_feedback (lock_token) WHERE lock_token IS NOT NULL;
"#;

/// A message for a device's queue ([`crate::Store::enqueue_c2d`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewC2dMessage {
    pub device_id: DeviceId,
    pub message: C2dMessage,
    pub enqueued_time: OffsetDateTime,
    /// The sender's expiry or the hub's default TTL (`SendC2dRequest::validate` computes it).
    pub expires: OffsetDateTime,
}

/// A message in a device's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedC2dMessage {
    /// Azure's `sequence-number`: the message's place in the queue; unique across the hub, never reused.
    pub sequence_number: u64,
    pub device_id: DeviceId,
    pub message: C2dMessage,
    /// Kept to 100 ns.
    pub enqueued_time: OffsetDateTime,
    /// Kept to the millisecond.
    pub expires: OffsetDateTime,
    /// How many times the device abandoned it (HTTPS); MQTT redeliveries do not count, as in Azure.
    pub delivery_count: u32,
    /// Set while the message is *Invisible*: received over HTTPS, locked until it is settled or the lock
    /// ends. Messages from [`crate::Store::pending_c2d_for_device`] never carry a live lock.
    pub lock: Option<C2dLock>,
}

/// The lock of a message received over HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct C2dLock {
    pub token: LockToken,
    /// Kept to the millisecond.
    pub locked_until: OffsetDateTime,
}

/// Which delivered message a device settles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum C2dReceipt {
    /// Published over MQTT: the message's sequence number (the hub maps the PUBACK's packet id to it).
    Sequence(u64),
    /// Received over HTTPS: the lock token of that receive; it must still be live.
    Lock(LockToken),
}

/// What [`crate::Store::abandon_c2d`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum C2dAbandoned {
    /// Back in the queue, to be delivered again.
    Requeued { delivery_count: u32 },
    /// Abandoned `max_delivery_count` times: removed, with a `DeliveryCountExceeded` record if asked.
    DeadLettered,
}

/// What [`crate::Store::expire_due_c2d`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct C2dExpired {
    pub messages: u64,
    pub feedback_records: u64,
}

/// A request of [`crate::Store::receive_c2d_feedback`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveFeedback {
    /// Names the batch; the hub makes a fresh one (a UUID) per receive.
    pub lock_token: LockToken,
    /// Azure: `AZURE_FEEDBACK_LOCK_DURATION`.
    pub lock_duration: Duration,
    /// Records per batch (Azure: `FEEDBACK_BATCH_MAX`).
    pub max_records: usize,
    /// A record handed out this many times is dropped instead of handed out again (Azure:
    /// `AZURE_FEEDBACK_MAX_DELIVERY_COUNT`).
    pub max_delivery_count: u32,
    /// Records older than this are dropped (Azure: `AZURE_FEEDBACK_TTL`).
    pub ttl: Duration,
    pub now: OffsetDateTime,
}

/// A batch of feedback records locked for the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedFeedback {
    pub lock_token: LockToken,
    /// Kept to the millisecond.
    pub locked_until: OffsetDateTime,
    /// Oldest first.
    pub records: Vec<FeedbackRecord>,
}

fn millis(time: OffsetDateTime) -> i64 {
    // i64 milliseconds reach far beyond `OffsetDateTime`'s range, so the division always fits.
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .expect("an OffsetDateTime in milliseconds fits in i64")
}

fn from_millis(value: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(value) * 1_000_000)
        .map_err(|error| StoreError::Incompatible(format!("stored time {value}: {error}")))
}

fn limit(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

const MESSAGE_COLUMNS: &str = "sequence, device_id, message, body, enqueued_time, expires, \
                               delivery_count, lock_token, locked_until, generation_id";

/// A decoded row and the generation id of its device (for feedback records).
struct MessageRow {
    queued: QueuedC2dMessage,
    generation_id: String,
}

fn decode_message(row: &Row<'_>) -> StoreResult<MessageRow> {
    let sequence: i64 = row.get(0)?;
    let device_id: String = row.get(1)?;
    let message: String = row.get(2)?;
    let enqueued_time: String = row.get(4)?;
    let delivery_count: i64 = row.get(6)?;
    let lock_token: Option<String> = row.get(7)?;
    let locked_until: Option<i64> = row.get(8)?;
    let mut message: C2dMessage = serde_json::from_str(&message)?;
    message.body = row.get(3)?;
    let lock = match (lock_token, locked_until) {
        (Some(token), Some(until)) => Some(C2dLock {
            token: LockToken::new(token)
                .map_err(|error| StoreError::Incompatible(format!("stored lock token: {error}")))?,
            locked_until: from_millis(until)?,
        }),
        _ => None,
    };
    Ok(MessageRow {
        queued: QueuedC2dMessage {
            sequence_number: sequence as u64,
            device_id: device_id.parse().map_err(|error| {
                StoreError::Incompatible(format!("stored device id {device_id:?}: {error}"))
            })?,
            message,
            enqueued_time: parse_time(&enqueued_time)
                .map_err(|error| StoreError::Incompatible(format!("C2D enqueued time: {error}")))?,
            expires: from_millis(row.get(5)?)?,
            delivery_count: u32::try_from(delivery_count).unwrap_or(u32::MAX),
            lock,
        },
        generation_id: row.get(9)?,
    })
}

fn collect_messages(
    connection: &Connection,
    sql: &str,
    parameters: impl rusqlite::Params,
) -> StoreResult<Vec<MessageRow>> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query(parameters)?;
    let mut messages = Vec::new();
    while let Some(row) = rows.next()? {
        messages.push(decode_message(row)?);
    }
    Ok(messages)
}

/// The generation id of a device (not a module), or `NotFound`.
fn device_generation(connection: &Connection, device_id: &DeviceId) -> StoreResult<String> {
    connection
        .prepare_cached(
            "SELECT json_extract(identity, '$.generation_id') FROM identities
             WHERE device_id = ?1 AND module_id = ''",
        )?
        .query_row(params![device_id.as_str()], |row| row.get::<_, String>(0))
        .optional()?
        .ok_or_else(|| {
            StoreError::NotFound(fleethub_core::identity::IdentityKey::device(
                device_id.clone(),
            ))
        })
}

pub(crate) fn enqueue(
    connection: &Connection,
    new: &NewC2dMessage,
    max_queue_depth: usize,
) -> StoreResult<QueuedC2dMessage> {
    let generation_id = device_generation(connection, &new.device_id)?;
    // Messages past their expiry have left the queue in Azure's model even if the sweep has not removed
    // them yet, so they do not count.
    let depth: i64 = connection
        .prepare_cached("SELECT COUNT(*) FROM c2d_messages WHERE device_id = ?1 AND expires > ?2")?
        .query_row(
            params![new.device_id.as_str(), millis(new.enqueued_time)],
            |row| row.get(0),
        )?;
    if depth >= limit(max_queue_depth) {
        return Err(StoreError::C2dQueueFull {
            device_id: new.device_id.clone(),
            max: max_queue_depth,
        });
    }
    connection
        .prepare_cached(
            "INSERT INTO c2d_messages (device_id, generation_id, message, body, enqueued_time, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            new.device_id.as_str(),
            generation_id,
            serde_json::to_string(&new.message)?,
            new.message.body,
            format_time(new.enqueued_time),
            millis(new.expires),
        ])?;
    let sequence = connection.last_insert_rowid();
    Ok(QueuedC2dMessage {
        sequence_number: sequence as u64,
        device_id: new.device_id.clone(),
        message: new.message.clone(),
        enqueued_time: new.enqueued_time,
        expires: from_millis(millis(new.expires))?,
        delivery_count: 0,
        lock: None,
    })
}

/// The device's messages not expired and not under a live lock at `now`, by sequence, after `after`.
pub(crate) fn pending(
    connection: &Connection,
    device_id: &DeviceId,
    after: Option<u64>,
    max: usize,
    now: OffsetDateTime,
) -> StoreResult<Vec<QueuedC2dMessage>> {
    let rows = collect_messages(
        connection,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM c2d_messages
             WHERE device_id = ?1 AND sequence > ?2 AND expires > ?3
               AND (locked_until IS NULL OR locked_until <= ?3)
             ORDER BY sequence LIMIT ?4"
        ),
        params![
            device_id.as_str(),
            after.map_or(0, |sequence| sequence as i64),
            millis(now),
            limit(max)
        ],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| QueuedC2dMessage {
            // A lock that ran out is no lock.
            lock: None,
            ..row.queued
        })
        .collect())
}

/// Locks the device's first message that is neither expired nor locked (an HTTPS receive).
pub(crate) fn receive(
    connection: &Connection,
    device_id: &DeviceId,
    lock_token: &LockToken,
    lock_duration: Duration,
    now: OffsetDateTime,
) -> StoreResult<Option<QueuedC2dMessage>> {
    let Some(mut first) = pending(connection, device_id, None, 1, now)?.pop() else {
        return Ok(None);
    };
    let lock = C2dLock {
        token: lock_token.clone(),
        locked_until: from_millis(millis(now + lock_duration))?,
    };
    connection
        .prepare_cached(
            "UPDATE c2d_messages SET lock_token = ?2, locked_until = ?3 WHERE sequence = ?1",
        )?
        .execute(params![
            first.sequence_number as i64,
            lock.token.as_str(),
            millis(lock.locked_until)
        ])?;
    first.lock = Some(lock);
    Ok(Some(first))
}

/// The message a receipt names, if it is still in the queue, not expired, and (for a lock) still locked.
fn find_by_receipt(
    connection: &Connection,
    device_id: &DeviceId,
    receipt: &C2dReceipt,
    now: OffsetDateTime,
) -> StoreResult<MessageRow> {
    let found = match receipt {
        C2dReceipt::Sequence(sequence) => collect_messages(
            connection,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM c2d_messages
                 WHERE sequence = ?1 AND device_id = ?2 AND expires > ?3"
            ),
            params![*sequence as i64, device_id.as_str(), millis(now)],
        )?,
        C2dReceipt::Lock(token) => collect_messages(
            connection,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM c2d_messages
                 WHERE device_id = ?1 AND lock_token = ?2 AND locked_until > ?3 AND expires > ?3"
            ),
            params![device_id.as_str(), token.as_str(), millis(now)],
        )?,
    };
    found
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::C2dMessageLockLost {
            device_id: device_id.clone(),
        })
}

/// Writes the feedback record of a message that ended with `status`, if its `iothub-ack` asks for one.
fn record_outcome(
    connection: &Connection,
    message: &MessageRow,
    status: FeedbackStatusCode,
    outcome_time: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let queued = &message.queued;
    if !queued.message.properties.ack.wants_feedback(status) {
        return Ok(());
    }
    let record = FeedbackRecord::new(
        queued.message.properties.message_id.clone(),
        status,
        queued.device_id.clone(),
        message.generation_id.clone(),
        outcome_time,
    );
    connection
        .prepare_cached(
            "INSERT INTO c2d_feedback (device_id, record, created) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            queued.device_id.as_str(),
            serde_json::to_string(&record)?,
            millis(now)
        ])?;
    Ok(())
}

fn delete_message(connection: &Connection, sequence: u64) -> StoreResult<()> {
    connection
        .prepare_cached("DELETE FROM c2d_messages WHERE sequence = ?1")?
        .execute(params![sequence as i64])?;
    Ok(())
}

/// Removes the message a receipt names and records how it ended (complete: `Success`; reject: `Rejected`).
pub(crate) fn settle(
    connection: &Connection,
    device_id: &DeviceId,
    receipt: &C2dReceipt,
    status: FeedbackStatusCode,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let message = find_by_receipt(connection, device_id, receipt, now)?;
    delete_message(connection, message.queued.sequence_number)?;
    record_outcome(connection, &message, status, now, now)
}

pub(crate) fn abandon(
    connection: &Connection,
    device_id: &DeviceId,
    receipt: &C2dReceipt,
    max_delivery_count: u32,
    now: OffsetDateTime,
) -> StoreResult<C2dAbandoned> {
    let message = find_by_receipt(connection, device_id, receipt, now)?;
    let delivery_count = message.queued.delivery_count.saturating_add(1);
    if delivery_count >= max_delivery_count {
        delete_message(connection, message.queued.sequence_number)?;
        record_outcome(
            connection,
            &message,
            FeedbackStatusCode::DeliveryCountExceeded,
            now,
            now,
        )?;
        return Ok(C2dAbandoned::DeadLettered);
    }
    connection
        .prepare_cached(
            "UPDATE c2d_messages SET delivery_count = ?2, lock_token = NULL, locked_until = NULL
             WHERE sequence = ?1",
        )?
        .execute(params![
            message.queued.sequence_number as i64,
            i64::from(delivery_count)
        ])?;
    Ok(C2dAbandoned::Requeued { delivery_count })
}

/// Whether anything is due for [`expire_messages_chunk`] or [`expire_feedback_chunk`] (a read, so an idle
/// hub's sweeps never queue a write).
pub(crate) fn anything_due(
    connection: &Connection,
    now: OffsetDateTime,
    feedback_ttl: Duration,
) -> StoreResult<bool> {
    Ok(connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM c2d_messages WHERE expires <= ?1)
                 OR EXISTS (SELECT 1 FROM c2d_feedback WHERE created <= ?2)",
        )?
        .query_row(params![millis(now), millis(now - feedback_ttl)], |row| {
            row.get(0)
        })?)
}

/// Removes up to `chunk` expired messages, oldest expiry first, with their `Expired` records; returns how
/// many.
pub(crate) fn expire_messages_chunk(
    connection: &Connection,
    now: OffsetDateTime,
    chunk: usize,
) -> StoreResult<usize> {
    let due = collect_messages(
        connection,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM c2d_messages WHERE expires <= ?1
             ORDER BY expires, sequence LIMIT ?2"
        ),
        params![millis(now), limit(chunk)],
    )?;
    for message in &due {
        delete_message(connection, message.queued.sequence_number)?;
        // The outcome happened when the message expired, whenever the sweep noticed.
        let expired_at = message.queued.expires;
        record_outcome(
            connection,
            message,
            FeedbackStatusCode::Expired,
            expired_at,
            now,
        )?;
    }
    Ok(due.len())
}

/// Drops up to `chunk` feedback records older than the TTL; returns how many.
pub(crate) fn expire_feedback_chunk(
    connection: &Connection,
    now: OffsetDateTime,
    ttl: Duration,
    chunk: usize,
) -> StoreResult<usize> {
    Ok(connection
        .prepare_cached(
            "DELETE FROM c2d_feedback WHERE sequence IN
                 (SELECT sequence FROM c2d_feedback WHERE created <= ?1 ORDER BY created LIMIT ?2)",
        )?
        .execute(params![millis(now - ttl), limit(chunk)])?)
}

/// Removes every message of the device (`NotFound` for an unknown device), with `Purged` records.
pub(crate) fn purge(
    connection: &Connection,
    device_id: &DeviceId,
    now: OffsetDateTime,
) -> StoreResult<u64> {
    device_generation(connection, device_id)?;
    let messages = collect_messages(
        connection,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM c2d_messages WHERE device_id = ?1 ORDER BY sequence"
        ),
        params![device_id.as_str()],
    )?;
    connection
        .prepare_cached("DELETE FROM c2d_messages WHERE device_id = ?1")?
        .execute(params![device_id.as_str()])?;
    for message in &messages {
        record_outcome(connection, message, FeedbackStatusCode::Purged, now, now)?;
    }
    Ok(messages.len() as u64)
}

/// Deletes a device's queue and its pending feedback (the device is being deleted).
pub(crate) fn delete_device(connection: &Connection, device_id: &DeviceId) -> StoreResult<()> {
    connection
        .prepare_cached("DELETE FROM c2d_messages WHERE device_id = ?1")?
        .execute(params![device_id.as_str()])?;
    connection
        .prepare_cached("DELETE FROM c2d_feedback WHERE device_id = ?1")?
        .execute(params![device_id.as_str()])?;
    Ok(())
}

/// Locks the oldest unlocked feedback records as one batch; drops the records that outlived the TTL or were
/// handed out `max_delivery_count` times first.
pub(crate) fn receive_feedback(
    connection: &Connection,
    request: &ReceiveFeedback,
) -> StoreResult<Option<LockedFeedback>> {
    let now = millis(request.now);
    connection
        .prepare_cached("DELETE FROM c2d_feedback WHERE created <= ?1")?
        .execute(params![millis(request.now - request.ttl)])?;
    connection
        .prepare_cached(
            "DELETE FROM c2d_feedback
             WHERE delivery_count >= ?1 AND (locked_until IS NULL OR locked_until <= ?2)",
        )?
        .execute(params![i64::from(request.max_delivery_count), now])?;
    let mut statement = connection.prepare_cached(
        "SELECT sequence, record FROM c2d_feedback
         WHERE locked_until IS NULL OR locked_until <= ?1 ORDER BY sequence LIMIT ?2",
    )?;
    let rows = statement
        .query_map(params![now, limit(request.max_records)], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Ok(None);
    }
    let locked_until = from_millis(millis(request.now + request.lock_duration))?;
    let mut lock = connection.prepare_cached(
        "UPDATE c2d_feedback SET lock_token = ?2, locked_until = ?3, delivery_count = delivery_count + 1
         WHERE sequence = ?1",
    )?;
    let mut records = Vec::with_capacity(rows.len());
    for (sequence, record) in rows {
        records.push(serde_json::from_str(&record)?);
        lock.execute(params![
            sequence,
            request.lock_token.as_str(),
            millis(locked_until)
        ])?;
    }
    Ok(Some(LockedFeedback {
        lock_token: request.lock_token.clone(),
        locked_until,
        records,
    }))
}

/// Deletes the batch a live lock names; `FeedbackLockLost` if none does.
pub(crate) fn complete_feedback(
    connection: &Connection,
    lock_token: &LockToken,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let deleted = connection
        .prepare_cached("DELETE FROM c2d_feedback WHERE lock_token = ?1 AND locked_until > ?2")?
        .execute(params![lock_token.as_str(), millis(now)])?;
    if deleted == 0 {
        return Err(StoreError::FeedbackLockLost(lock_token.clone()));
    }
    Ok(())
}

/// Unlocks the batch a live lock names, to be received again; `FeedbackLockLost` if none does.
pub(crate) fn abandon_feedback(
    connection: &Connection,
    lock_token: &LockToken,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let unlocked = connection
        .prepare_cached(
            "UPDATE c2d_feedback SET lock_token = NULL, locked_until = NULL
             WHERE lock_token = ?1 AND locked_until > ?2",
        )?
        .execute(params![lock_token.as_str(), millis(now)])?;
    if unlocked == 0 {
        return Err(StoreError::FeedbackLockLost(lock_token.clone()));
    }
    Ok(())
}
