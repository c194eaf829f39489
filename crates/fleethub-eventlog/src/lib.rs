//! The hub's event log: device-to-cloud messages and the hub's own events (twin changes, connection states,
//! identity lifecycle), kept append-only in partitions, read by consumers from any offset, and checkpointed
//! by consumer groups. IoT Hub's built-in Event Hubs-compatible endpoint, as a seam.
//!
//! [`EventLog`] is the trait the hub sees; [`EmbeddedEventLog`] implements it with segment files in the data
//! directory (the default; see `embedded.rs` for the format and the durability argument). A Kafka or NATS
//! JetStream backend implements the same trait for a hub on several nodes; [`conformance`] holds the checks
//! every backend must pass.
//!
//! Rules every backend keeps:
//! - an append's receipt resolves only once its events are durable; a crash afterwards loses none of them;
//! - a partition's offsets start at 0, grow by one per event, and are never reused (retention removes the
//!   oldest events, never renumbers the others);
//! - events with the same partition key go to the same partition ([`partition_for_key`]) in the order they
//!   were enqueued;
//! - readers only ever see durable events;
//! - [`EventLog::upstream_position`] after a restart says exactly up to which upstream record (the hub's
//!   change feed) events are in the log, so a pump that resumes from it neither skips nor repeats one.

pub mod checkpoints;
pub mod conformance;
pub mod crc;
mod embedded;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod record;
mod segment;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::watch;

pub use checkpoints::{ConsumerGroup, InvalidConsumerGroup};
pub use embedded::{Clock, EmbeddedEventLog, EventLogOptions, ManualClock, OpenError, SystemClock};
pub use record::Corruption;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Chooses the partition ([`partition_for_key`]); IoT Hub partitions by device id.
    pub partition_key: String,
    pub system_properties: Vec<(String, String)>,
    /// A property may have no value (MQTT property bags allow a bare key).
    pub application_properties: Vec<(String, Option<String>)>,
    pub body: Bytes,
    /// The upstream record (change-feed sequence number) this event was made from, if any.
    pub upstream_sequence: Option<u64>,
}

/// One append: events written together, in order, durable together.
#[derive(Clone, Debug, Default)]
pub struct Append {
    pub events: Vec<NewEvent>,
    /// The upstream position once this append is durable: the pump's last record read, including records that
    /// made no event. `None` for appends that are not the pump's.
    pub upstream_through: Option<u64>,
}

impl Append {
    pub fn events(events: Vec<NewEvent>) -> Self {
        Self {
            events,
            upstream_through: None,
        }
    }
}

/// Where an appended event landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPosition {
    pub partition: u32,
    pub offset: u64,
    pub enqueued_time: OffsetDateTime,
}

/// An event as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub partition: u32,
    /// Its sequence number in the partition.
    pub offset: u64,
    /// When the log accepted it (non-decreasing within a partition).
    pub enqueued_time: OffsetDateTime,
    pub system_properties: Vec<(String, String)>,
    pub application_properties: Vec<(String, Option<String>)>,
    pub body: Bytes,
    pub upstream_sequence: Option<u64>,
}

impl StoredEvent {
    pub fn system_property(&self, name: &str) -> Option<&str> {
        self.system_properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How much one read returns at most (at least one event when any is there, whatever its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_events: 256,
            max_bytes: 1024 * 1024,
        }
    }
}

/// The answer of [`EventLog::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBatch {
    /// Consecutive events from the first retained offset at or after the one asked for.
    pub events: Vec<StoredEvent>,
    /// Where the next read continues.
    pub next_offset: u64,
}

/// A partition's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    /// The oldest retained offset (equal to `next_offset` when the partition holds nothing).
    pub first_offset: u64,
    /// The offset the next event will get.
    pub next_offset: u64,
    pub last_enqueued_time: Option<OffsetDateTime>,
}

impl PartitionInfo {
    pub fn is_empty(&self) -> bool {
        self.first_offset == self.next_offset
    }
}

/// What [`EventLog::enforce_retention`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub events_deleted: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("the event log is closed")]
    Closed,
    /// A write or fsync failed; the log refuses appends until it is opened again (after a failed fsync
    /// nothing written since the last good one can be trusted).
    #[error("the event log failed: {0}")]
    Failed(String),
    #[error("an event of {bytes} bytes is larger than the log accepts ({max})")]
    TooLarge { bytes: usize, max: usize },
    #[error("an event is not valid: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("there is no partition {partition}; the log has {count}")]
    NoSuchPartition { partition: u32, count: u32 },
    #[error("partition {partition} is damaged at byte {position} of segment {segment}: {reason}")]
    Corrupt {
        partition: u32,
        segment: u64,
        position: u64,
        reason: Corruption,
    },
    #[error("cannot read the event log: {0}")]
    Io(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("there is no partition {partition}; the log has {count}")]
    NoSuchPartition { partition: u32, count: u32 },
    #[error(
        "partition {partition} has no event {offset} yet (its next offset is {next_offset}): a checkpoint names the last event processed"
    )]
    BeyondEnd {
        partition: u32,
        offset: u64,
        next_offset: u64,
    },
    #[error("cannot read or write checkpoints: {0}")]
    Io(String),
}

/// Resolves when an enqueued append is durable, with the positions of its events in order. `Sync` as well as
/// `Send`, so that a connection task can hold receipts across awaits that borrow it.
pub struct AppendReceipt {
    inner: Pin<Box<dyn Future<Output = Result<Vec<EventPosition>, AppendError>> + Send + Sync>>,
}

impl AppendReceipt {
    pub fn new(
        future: impl Future<Output = Result<Vec<EventPosition>, AppendError>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(future),
        }
    }
}

impl Future for AppendReceipt {
    type Output = Result<Vec<EventPosition>, AppendError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(context)
    }
}

impl std::fmt::Debug for AppendReceipt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AppendReceipt")
    }
}

/// The partition of `key` among `partitions`: FNV-1a (64 bit) of its bytes, modulo the count. Stable
/// across versions and platforms: it decides where a device's events are, on disk and for consumers.
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// The event log as the hub sees it. Object-safe: the hub holds an `Arc<dyn EventLog>`.
pub trait EventLog: Send + Sync + 'static {
    fn partition_count(&self) -> u32;

    /// The partition of a key ([`partition_for_key`]).
    fn partition_of(&self, key: &str) -> u32 {
        partition_for_key(key, self.partition_count())
    }

    /// Queues an append. Resolves once it is queued (waiting while the log is busy: backpressure), with a
    /// receipt that resolves once it is durable. Appends are written in the order they were queued, so a
    /// caller can have several in flight and still keep its events in order. Dropping the receipt does not
    /// withdraw the append.
    fn enqueue(&self, append: Append) -> BoxFuture<'_, Result<AppendReceipt, AppendError>>;

    /// [`enqueue`](Self::enqueue), then waits until the append is durable.
    fn append(&self, append: Append) -> BoxFuture<'_, Result<Vec<EventPosition>, AppendError>> {
        Box::pin(async move { self.enqueue(append).await?.await })
    }

    /// The upstream position: every upstream record up to it has its events in the log (durably, when read
    /// right after opening).
    fn upstream_position(&self) -> u64;

    fn partition_info(&self, partition: u32) -> Option<PartitionInfo>;

    /// The partition's next offset, updated as appends become durable; `None` for an unknown partition.
    fn watch_partition(&self, partition: u32) -> Option<watch::Receiver<u64>>;

    /// Durable events of `partition` from `from` (or from the oldest retained one, if `from` is older).
    fn read(
        &self,
        partition: u32,
        from: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<ReadBatch, ReadError>>;

    /// The offset of the first event enqueued at or after `time` (the next offset if there is none).
    fn offset_at_time(
        &self,
        partition: u32,
        time: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, ReadError>>;

    /// A consumer group's checkpoints: partition to the offset of the last event it processed.
    fn checkpoints<'a>(
        &'a self,
        group: &'a ConsumerGroup,
    ) -> BoxFuture<'a, Result<BTreeMap<u32, u64>, CheckpointError>>;

    /// Records checkpoints durably (merged with the group's others); returns all of the group's.
    fn save_checkpoints<'a>(
        &'a self,
        group: &'a ConsumerGroup,
        checkpoints: Vec<(u32, u64)>,
    ) -> BoxFuture<'a, Result<BTreeMap<u32, u64>, CheckpointError>>;

    /// Groups that have checkpoints.
    fn consumer_groups(&self) -> BoxFuture<'_, Result<Vec<ConsumerGroup>, CheckpointError>>;

    /// Forgets a group's checkpoints; `false` if it had none.
    fn delete_consumer_group<'a>(
        &'a self,
        group: &'a ConsumerGroup,
    ) -> BoxFuture<'a, Result<bool, CheckpointError>>;

    /// Deletes what is older than the retention time or beyond the retention size now (backends may also do it
    /// on their own schedule).
    fn enforce_retention(&self) -> BoxFuture<'_, Result<RetentionReport, AppendError>>;

    /// Finishes the appends already queued, then refuses new ones.
    fn close(&self) -> BoxFuture<'_, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: changing the hash would move devices between partitions of existing logs.
        assert_eq!(partition_for_key("dev1", 4), partition_for_key("dev1", 4));
        let known: Vec<u32> = ["dev0", "dev1", "dev2", "dev3", "thermostat-1"]
            .iter()
            .map(|key| partition_for_key(key, 4))
            .collect();
        assert_eq!(known, vec![0, 3, 2, 1, 2]);
        assert_eq!(partition_for_key("anything", 1), 0);
        let mut counts = [0u32; 4];
        for device in 0..4000 {
            counts[partition_for_key(&format!("device-{device}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|count| (800..1200).contains(count)),
            "{counts:?}"
        );
    }
}
