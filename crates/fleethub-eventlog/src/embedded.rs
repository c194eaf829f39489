//! [`EmbeddedEventLog`]: the event log in a directory of the hub's data directory, written by one thread.
//!
//! # Layout
//! ```text
//! events/log.json                     {"format": 1, "partitions": N}: fixed when the log is created
//! events/state.json                   the upstream position and batch counter, saved before retention deletes
//! events/partitions/{p}/{base:020}.log     segments: records back to back (`record.rs`)
//! events/partitions/{p}/{base:020}.index   sparse offset index of a sealed segment (a cache)
//! events/consumer-groups/{group}.json      a group's checkpoints
//! ```
//!
//! # Writing: group commit
//! Appenders queue requests on a bounded channel (backpressure when the disk falls behind). The writer thread
//! takes everything queued (up to `max_batch_events` / `max_batch_bytes`) as one *batch*: it stamps every
//! record with the batch number, the number of records in the batch, the enqueued time (never going back) and
//! the upstream position before the batch; writes each partition's records with one write to that
//! partition's active segment; fdatasyncs every segment it wrote; and only then publishes the new end of each
//! partition to readers and completes every appender of the batch. Throughput comes from the batch (one sync
//! per partition touched, for however many devices' messages), not from skipping syncs.
//!
//! # Why an acknowledged event survives a crash
//! An appender is completed only after the fdatasync of every segment holding the batch returned, and a
//! segment is created (at a batch boundary) with an fsync of its directory before anything is written to it.
//! Batch *n + 1* is written only after batch *n* is synced everywhere, so at most the last batch can be
//! partly on disk after a crash, and none of its appenders was told it was durable.
//!
//! # Recovery (at open)
//! 1. Each partition's last segment is read record by record, checking every CRC and that offsets follow one
//!    another; a partial or damaged tail is cut off (`set_len` + fsync). An empty last segment with an older
//!    one before it is removed.
//! 2. The highest batch number at the end of any partition is the last batch written. It is complete when the
//!    partitions hold as many of its records as each says the batch had; otherwise it was interrupted, and
//!    its records are removed from every partition (nobody was told they were durable, so removing them is
//!    allowed, and it is needed: half a pumped batch would make the upstream position ambiguous).
//! 3. The upstream position is then exact: the last batch's "upstream before" plus, when it is complete, the
//!    upstream records its events came from. `state.json` covers the case where retention left a partition
//!    without records.
//!
//! Sealed segments are not re-read: their index files are checked against their length and rebuilt by a scan
//! when they do not match.
//!
//! # Reading
//! Readers never block the writer: they find a start position from the sparse index under a read lock, then
//! read the segment file with positional reads, never past the committed length they saw. Retention deletes
//! whole sealed segments; a reader that loses a race with it looks the offset up again.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoints::{CheckpointStore, ConsumerGroup};
use crate::record::{self, Decoded, RecordHeader};
use crate::segment::{self, SegmentInfo, TailRun};
use crate::{
    Append, AppendError, AppendReceipt, BoxFuture, CheckpointError, EventLog, EventPosition,
    PartitionInfo, ReadBatch, ReadError, ReadLimits, RetentionReport, StoredEvent,
    partition_for_key,
};

const FORMAT: u32 = 1;
const META_FILE: &str = "log.json";
const STATE_FILE: &str = "state.json";
const PARTITIONS_DIRECTORY: &str = "partitions";
const GROUPS_DIRECTORY: &str = "consumer-groups";
/// Commands the writer takes off the channel before deciding what goes into a batch.
const WRITER_LOOKAHEAD: usize = 4096;

/// Where time comes from, so tests can move it (retention, enqueued times).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Arc<Self> {
        Arc::new(Self {
            micros: AtomicI64::new(micros_of(start)),
        })
    }

    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }

    pub fn set(&self, to: OffsetDateTime) {
        self.micros.store(micros_of(to), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        time_of(self.micros.load(Ordering::SeqCst))
    }
}

fn micros_of(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn time_of(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// How the embedded log is laid out and kept.
#[derive(Clone)]
pub struct EventLogOptions {
    /// Partitions (1 to 256); fixed when the log is created. IoT Hub's built-in endpoint defaults to 4.
    pub partitions: u32,
    /// A partition's active segment is sealed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// Segments whose newest event is older than this are deleted (IoT Hub keeps 1 day by default, 7 at most).
    pub retention_time: Duration,
    /// The oldest segments are deleted while the log is larger than this (split evenly over partitions).
    pub retention_bytes: u64,
    /// A sparse index entry per this many bytes of records.
    pub index_interval_bytes: u64,
    /// At most this many events per group commit.
    pub max_batch_events: usize,
    /// At most about this many bytes per group commit.
    pub max_batch_bytes: usize,
    /// Appends waiting for the writer; more wait in `enqueue`.
    pub queue_depth: usize,
    /// The upstream position of a log created now: the hub passes the change feed's head, so a new log
    /// starts with what happens from then on instead of replaying history. Ignored when the log exists.
    pub initial_upstream: u64,
    pub clock: Arc<dyn Clock>,
}

impl Default for EventLogOptions {
    fn default() -> Self {
        Self {
            partitions: 4,
            segment_bytes: 64 * 1024 * 1024,
            retention_time: Duration::from_secs(24 * 3600),
            retention_bytes: 8 * 1024 * 1024 * 1024,
            index_interval_bytes: 32 * 1024,
            max_batch_events: 16 * 1024,
            max_batch_bytes: 8 * 1024 * 1024,
            queue_depth: 8 * 1024,
            initial_upstream: 0,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for EventLogOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EventLogOptions")
            .field("partitions", &self.partitions)
            .field("segment_bytes", &self.segment_bytes)
            .field("retention_time", &self.retention_time)
            .field("retention_bytes", &self.retention_bytes)
            .field("index_interval_bytes", &self.index_interval_bytes)
            .field("max_batch_events", &self.max_batch_events)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("queue_depth", &self.queue_depth)
            .field("initial_upstream", &self.initial_upstream)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the event log has {existing} partitions; it cannot be changed to {configured} (the partition of a device would change). Keep {existing}, or move the events directory away to start a new log"
    )]
    PartitionCountMismatch { existing: u32, configured: u32 },
    #[error("{0}")]
    InvalidOptions(String),
    #[error("{path} is not an event log file: {reason}")]
    Format { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    partitions: u32,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct SavedState {
    upstream: u64,
    next_batch: u64,
    last_micros: i64,
}

/// The embedded event log. Dropping it lets the writer finish what is queued and stop.
pub struct EmbeddedEventLog {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    max_event_bytes: usize,
}

struct Shared {
    partitions: Vec<PartitionShared>,
    upstream: AtomicU64,
    failure: Mutex<Option<String>>,
    checkpoints: CheckpointStore,
}

impl Shared {
    fn partition(&self, partition: u32) -> Result<&PartitionShared, ReadError> {
        self.partitions
            .get(partition as usize)
            .ok_or(ReadError::NoSuchPartition {
                partition,
                count: self.partitions.len() as u32,
            })
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

struct PartitionShared {
    number: u32,
    directory: PathBuf,
    /// Oldest first; never empty; the last is the active one. Holds committed lengths only.
    segments: RwLock<Vec<SegmentInfo>>,
    /// The next offset, published after each durable batch.
    committed: watch::Sender<u64>,
}

impl PartitionShared {
    fn segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<SegmentInfo>> {
        self.segments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn segments_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<SegmentInfo>> {
        self.segments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

type AppendReply = oneshot::Sender<Result<Vec<EventPosition>, AppendError>>;

enum Command {
    Append {
        append: Append,
        bytes: usize,
        reply: AppendReply,
    },
    Retention {
        reply: oneshot::Sender<Result<RetentionReport, AppendError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A partition as recovery leaves it.
struct Recovered {
    segments: Vec<SegmentInfo>,
    tail: Option<TailRun>,
}

impl EmbeddedEventLog {
    /// Opens (or creates) the log in `root`, recovering from a crash if there was one (see the module docs).
    /// Blocking: call it from `spawn_blocking` or before the runtime starts. Starts the writer thread.
    pub fn open(root: &Path, options: EventLogOptions) -> Result<Self, OpenError> {
        if !(1..=256).contains(&options.partitions) {
            return Err(OpenError::InvalidOptions(format!(
                "the event log needs 1 to 256 partitions, not {}",
                options.partitions
            )));
        }
        if options.segment_bytes < 4096 || options.index_interval_bytes == 0 {
            return Err(OpenError::InvalidOptions(
                "segments must be at least 4096 bytes and the index interval positive".into(),
            ));
        }
        let partitions_root = root.join(PARTITIONS_DIRECTORY);
        fs::create_dir_all(&partitions_root).map_err(io_error(&partitions_root))?;
        let meta_path = root.join(META_FILE);
        match fs::read(&meta_path) {
            Ok(bytes) => {
                let meta: Meta =
                    serde_json::from_slice(&bytes).map_err(|error| OpenError::Format {
                        path: meta_path.clone(),
                        reason: error.to_string(),
                    })?;
                if meta.format != FORMAT {
                    return Err(OpenError::Format {
                        path: meta_path,
                        reason: format!("format {} is not {FORMAT}", meta.format),
                    });
                }
                if meta.partitions != options.partitions {
                    return Err(OpenError::PartitionCountMismatch {
                        existing: meta.partitions,
                        configured: options.partitions,
                    });
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // The state first: the log exists once its meta file does.
                let state = SavedState {
                    upstream: options.initial_upstream,
                    next_batch: 0,
                    last_micros: i64::MIN,
                };
                let state_path = root.join(STATE_FILE);
                write_durably(
                    root,
                    &state_path,
                    &serde_json::to_vec(&state).expect("state serialises"),
                )
                .map_err(io_error(&state_path))?;
                let meta = Meta {
                    format: FORMAT,
                    partitions: options.partitions,
                };
                write_durably(
                    root,
                    &meta_path,
                    &serde_json::to_vec(&meta).expect("meta serialises"),
                )
                .map_err(io_error(&meta_path))?;
            }
            Err(error) => return Err(io_error(&meta_path)(error)),
        }
        let state_path = root.join(STATE_FILE);
        let saved: SavedState = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| OpenError::Format {
                path: state_path.clone(),
                reason: error.to_string(),
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => SavedState::default(),
            Err(error) => return Err(io_error(&state_path)(error)),
        };

        let interval = options.index_interval_bytes;
        let mut recovered = Vec::with_capacity(options.partitions as usize);
        for partition in 0..options.partitions {
            let directory = partitions_root.join(partition.to_string());
            fs::create_dir_all(&directory).map_err(io_error(&directory))?;
            recovered.push(recover_partition(&directory, interval)?);
        }

        // Is the last batch whole? (Module docs, recovery step 2.)
        let mut upstream = saved.upstream;
        let mut next_batch = saved.next_batch;
        let last_batch = recovered
            .iter()
            .filter_map(|partition| partition.tail.map(|tail| tail.batch))
            .max();
        if let Some(batch) = last_batch {
            let runs: Vec<(usize, TailRun)> = recovered
                .iter()
                .enumerate()
                .filter_map(|(index, partition)| {
                    partition
                        .tail
                        .filter(|tail| tail.batch == batch)
                        .map(|tail| (index, tail))
                })
                .collect();
            let found: u64 = runs.iter().map(|(_, run)| u64::from(run.count)).sum();
            let expected = u64::from(runs[0].1.batch_records);
            upstream = upstream.max(runs[0].1.upstream_before);
            if found == expected {
                let pumped = runs
                    .iter()
                    .filter_map(|(_, run)| run.max_upstream_sequence)
                    .max();
                upstream = upstream.max(pumped.unwrap_or(0));
            } else {
                tracing::warn!(
                    batch,
                    found,
                    expected,
                    "the last batch before the crash is incomplete; removing its records (none was acknowledged)"
                );
                for (index, run) in runs {
                    let directory = partitions_root.join(index.to_string());
                    let active = recovered[index]
                        .segments
                        .last()
                        .expect("a partition always has a segment")
                        .base;
                    let path = segment::log_path(&directory, active);
                    truncate(&path, run.start_position).map_err(io_error(&path))?;
                    recovered[index] = recover_partition(&directory, interval)?;
                }
            }
            next_batch = next_batch.max(batch + 1);
        }
        let last_micros = recovered
            .iter()
            .filter_map(|partition| {
                partition
                    .segments
                    .iter()
                    .rev()
                    .find_map(|segment| segment.last_micros)
            })
            .max()
            .unwrap_or(i64::MIN)
            .max(saved.last_micros);

        let mut shared_partitions = Vec::with_capacity(recovered.len());
        let mut files = Vec::with_capacity(recovered.len());
        for (partition, recovered) in recovered.into_iter().enumerate() {
            let directory = partitions_root.join(partition.to_string());
            let active = recovered
                .segments
                .last()
                .expect("a partition always has a segment")
                .clone();
            let path = segment::log_path(&directory, active.base);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error(&path))?;
            files.push(ActiveFile {
                file,
                bytes: active.bytes,
                next_offset: active.next,
            });
            let (committed, _) = watch::channel(active.next);
            shared_partitions.push(PartitionShared {
                number: partition as u32,
                directory,
                segments: RwLock::new(recovered.segments),
                committed,
            });
        }
        let groups = root.join(GROUPS_DIRECTORY);
        let checkpoints = CheckpointStore::open(groups.clone()).map_err(io_error(&groups))?;
        let shared = Arc::new(Shared {
            partitions: shared_partitions,
            upstream: AtomicU64::new(upstream),
            failure: Mutex::new(None),
            checkpoints,
        });
        let (commands, receiver) = mpsc::channel(options.queue_depth.max(1));
        let writer = Writer {
            shared: Arc::clone(&shared),
            commands: receiver,
            files,
            root: root.to_owned(),
            next_batch,
            last_micros,
            upstream,
            failed: None,
            options: options.clone(),
        };
        std::thread::Builder::new()
            .name("eventlog-writer".into())
            .spawn(move || writer.run())
            .map_err(io_error(root))?;
        Ok(Self {
            shared,
            commands,
            max_event_bytes: record::MAX_FRAME_BYTES,
        })
    }
}

/// Loads a partition directory: checks and repairs its active segment, and the sealed ones' indexes.
fn recover_partition(directory: &Path, interval: u64) -> Result<Recovered, OpenError> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(directory).map_err(io_error(directory))? {
        let entry = entry.map_err(io_error(directory))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_name(name, "log") {
            logs.push(base);
        } else if let Some(base) = segment::parse_name(name, "index") {
            indexes.push(base);
        } else if name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    logs.sort_unstable();
    for base in indexes {
        if logs.binary_search(&base).is_err() {
            let _ = fs::remove_file(segment::index_path(directory, base));
        }
    }
    if logs.is_empty() {
        let path = segment::log_path(directory, 0);
        File::create_new(&path).map_err(io_error(&path))?;
        segment::sync_directory(directory).map_err(io_error(directory))?;
        logs.push(0);
    }

    // The active segment: the last one holding anything (an empty one after an older one is dropped).
    let (active, tail) = loop {
        let base = *logs.last().expect("at least one segment");
        let path = segment::log_path(directory, base);
        let scan = segment::scan(&path, base, interval).map_err(io_error(&path))?;
        if scan.damaged_bytes > 0 {
            tracing::warn!(
                segment = %path.display(),
                intact_bytes = scan.info.bytes,
                removed_bytes = scan.damaged_bytes,
                "cutting off a partial or damaged tail"
            );
            truncate(&path, scan.info.bytes).map_err(io_error(&path))?;
        }
        if scan.info.next == base && logs.len() > 1 {
            fs::remove_file(&path).map_err(io_error(&path))?;
            segment::sync_directory(directory).map_err(io_error(directory))?;
            logs.pop();
            continue;
        }
        // An active segment has no index file; it is written when the segment is sealed.
        let _ = fs::remove_file(segment::index_path(directory, base));
        break (scan.info, scan.tail);
    };

    let mut segments = Vec::with_capacity(logs.len());
    for &base in &logs[..logs.len() - 1] {
        let path = segment::log_path(directory, base);
        let length = fs::metadata(&path).map_err(io_error(&path))?.len();
        let info = match segment::read_index(directory, base, length) {
            Some(info) => info,
            None => {
                let scan = segment::scan(&path, base, interval).map_err(io_error(&path))?;
                if scan.damaged_bytes > 0 {
                    tracing::warn!(
                        segment = %path.display(),
                        intact_bytes = scan.info.bytes,
                        removed_bytes = scan.damaged_bytes,
                        "a sealed segment is damaged; events after its intact part are lost"
                    );
                    truncate(&path, scan.info.bytes).map_err(io_error(&path))?;
                }
                if let Err(error) = segment::write_index(directory, &scan.info) {
                    tracing::warn!(segment = %path.display(), %error, "cannot write a segment index");
                }
                scan.info
            }
        };
        segments.push(info);
    }
    segments.push(active);
    Ok(Recovered { segments, tail })
}

fn truncate(path: &Path, length: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(length)?;
    file.sync_all()
}

/// Replaces `path` atomically and durably with `bytes`.
fn write_durably(directory: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)?;
    segment::sync_directory(directory)
}

// ---- the writer thread ----

struct ActiveFile {
    file: File,
    /// Committed length.
    bytes: u64,
    next_offset: u64,
}

struct Writer {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    files: Vec<ActiveFile>,
    root: PathBuf,
    next_batch: u64,
    last_micros: i64,
    upstream: u64,
    failed: Option<String>,
    options: EventLogOptions,
}

struct BatchRequest {
    append: Append,
    reply: AppendReply,
}

#[derive(Default)]
struct PartitionBatch {
    bytes: Vec<u8>,
    /// Each record's header, position in `bytes` and length.
    records: Vec<(RecordHeader, u64, u64)>,
}

impl Writer {
    fn run(mut self) {
        let mut pending: VecDeque<Command> = VecDeque::new();
        loop {
            if pending.is_empty() {
                match self.commands.blocking_recv() {
                    Some(command) => pending.push_back(command),
                    None => return,
                }
            }
            while pending.len() < WRITER_LOOKAHEAD {
                match self.commands.try_recv() {
                    Ok(command) => pending.push_back(command),
                    Err(_) => break,
                }
            }
            match pending.pop_front() {
                Some(Command::Append {
                    append,
                    bytes,
                    reply,
                }) => {
                    let mut events = append.events.len();
                    let mut total_bytes = bytes;
                    let mut batch = vec![BatchRequest { append, reply }];
                    while let Some(Command::Append { append, bytes, .. }) = pending.front() {
                        if events + append.events.len() > self.options.max_batch_events
                            || total_bytes + bytes > self.options.max_batch_bytes
                        {
                            break;
                        }
                        events += append.events.len();
                        total_bytes += bytes;
                        if let Some(Command::Append { append, reply, .. }) = pending.pop_front() {
                            batch.push(BatchRequest { append, reply });
                        }
                    }
                    self.write_batch(batch);
                }
                Some(Command::Retention { reply }) => {
                    let _ = reply.send(self.enforce_retention());
                }
                Some(Command::Close { reply }) => {
                    let _ = reply.send(());
                    // Appends queued after the close get `Closed` when their replies drop.
                    return;
                }
                None => {}
            }
        }
    }

    fn write_batch(&mut self, batch: Vec<BatchRequest>) {
        if let Some(failure) = &self.failed {
            for request in batch {
                let _ = request
                    .reply
                    .send(Err(AppendError::Failed(failure.clone())));
            }
            return;
        }
        let total: usize = batch
            .iter()
            .map(|request| request.append.events.len())
            .sum();
        let upstream_through = batch
            .iter()
            .filter_map(|request| request.append.upstream_through)
            .max();
        if total == 0 {
            // Upstream records that made no event: the position is saved on its own, so a restart does not
            // read them again (they are not in any record's header).
            let result = match upstream_through {
                Some(through) if through > self.upstream => {
                    self.advance_upstream(through);
                    self.save_state()
                }
                _ => Ok(()),
            };
            for request in batch {
                let _ = request.reply.send(result.clone().map(|()| Vec::new()));
            }
            return;
        }
        let micros = micros_of(self.options.clock.now()).max(self.last_micros);
        self.last_micros = micros;
        let enqueued_time = time_of(micros);
        let batch_number = self.next_batch;
        self.next_batch += 1;
        let partition_count = self.options.partitions;
        let mut partitions: Vec<PartitionBatch> = (0..partition_count)
            .map(|_| PartitionBatch::default())
            .collect();
        let mut positions: Vec<Vec<EventPosition>> = Vec::with_capacity(batch.len());
        let mut pumped = None;
        for request in &batch {
            let mut landed = Vec::with_capacity(request.append.events.len());
            for event in &request.append.events {
                let partition = partition_for_key(&event.partition_key, partition_count);
                let target = &mut partitions[partition as usize];
                let header = RecordHeader {
                    offset: self.files[partition as usize].next_offset
                        + target.records.len() as u64,
                    enqueued_micros: micros,
                    batch: batch_number,
                    batch_records: total as u32,
                    upstream_before: self.upstream,
                    upstream_sequence: event.upstream_sequence,
                };
                let position = target.bytes.len() as u64;
                let length = record::encode(
                    &header,
                    &event.system_properties,
                    &event.application_properties,
                    &event.body,
                    &mut target.bytes,
                )
                .expect("enqueue checked every event against the record limits");
                target.records.push((header, position, length as u64));
                pumped = pumped.max(event.upstream_sequence);
                landed.push(EventPosition {
                    partition,
                    offset: header.offset,
                    enqueued_time,
                });
            }
            positions.push(landed);
        }

        if let Err(error) = self.write_and_sync(&partitions) {
            let message = format!("writing batch {batch_number}: {error}");
            tracing::error!(%message, "the event log failed; it refuses appends until reopened");
            *self
                .shared
                .failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(message.clone());
            self.failed = Some(message.clone());
            for request in batch {
                let _ = request
                    .reply
                    .send(Err(AppendError::Failed(message.clone())));
            }
            return;
        }

        // Durable: publish to readers, then tell the appenders.
        let interval = self.options.index_interval_bytes;
        for (partition, written) in partitions.iter().enumerate() {
            if written.records.is_empty() {
                continue;
            }
            let file = &mut self.files[partition];
            let shared = &self.shared.partitions[partition];
            {
                let mut segments = shared.segments_mut();
                let active = segments
                    .last_mut()
                    .expect("a partition always has a segment");
                for (header, position, length) in &written.records {
                    active.note_appended(header, file.bytes + position, *length, interval);
                }
            }
            file.bytes += written.bytes.len() as u64;
            file.next_offset += written.records.len() as u64;
            shared.committed.send_replace(file.next_offset);
        }
        if let Some(through) = upstream_through.max(pumped) {
            self.advance_upstream(through);
        }
        for (request, landed) in batch.into_iter().zip(positions) {
            let _ = request.reply.send(Ok(landed));
        }
    }

    /// Saves the upstream position, batch counter and time durably in `state.json`.
    fn save_state(&self) -> Result<(), AppendError> {
        let state = SavedState {
            upstream: self.upstream,
            next_batch: self.next_batch,
            last_micros: self.last_micros,
        };
        let state_path = self.root.join(STATE_FILE);
        write_durably(
            &self.root,
            &state_path,
            &serde_json::to_vec(&state).expect("state serialises"),
        )
        .map_err(|error| AppendError::Failed(format!("saving {}: {error}", state_path.display())))
    }

    fn advance_upstream(&mut self, through: u64) {
        self.upstream = self.upstream.max(through);
        self.shared.upstream.store(self.upstream, Ordering::Release);
    }

    /// One positional write per partition, rolling segments first where needed, then one fdatasync per
    /// partition written.
    fn write_and_sync(&mut self, partitions: &[PartitionBatch]) -> io::Result<()> {
        for (partition, written) in partitions.iter().enumerate() {
            if written.records.is_empty() {
                continue;
            }
            let file = &self.files[partition];
            if file.bytes > 0
                && file.bytes + written.bytes.len() as u64 > self.options.segment_bytes
            {
                self.roll(partition)?;
            }
            let file = &self.files[partition];
            file.file.write_all_at(&written.bytes, file.bytes)?;
        }
        for (partition, written) in partitions.iter().enumerate() {
            if !written.records.is_empty() {
                self.files[partition].file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Seals the partition's active segment (writing its index) and starts a new one at its next offset.
    fn roll(&mut self, partition: usize) -> io::Result<()> {
        let shared = &self.shared.partitions[partition];
        let sealed = shared
            .segments()
            .last()
            .expect("a partition always has a segment")
            .clone();
        if let Err(error) = segment::write_index(&shared.directory, &sealed) {
            tracing::warn!(partition, %error, "cannot write a segment index; it will be rebuilt");
        }
        let base = self.files[partition].next_offset;
        let path = segment::log_path(&shared.directory, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        segment::sync_directory(&shared.directory)?;
        self.files[partition] = ActiveFile {
            file,
            bytes: 0,
            next_offset: base,
        };
        shared.segments_mut().push(SegmentInfo::empty(base));
        Ok(())
    }

    fn enforce_retention(&mut self) -> Result<RetentionReport, AppendError> {
        if let Some(failure) = &self.failed {
            return Err(AppendError::Failed(failure.clone()));
        }
        let now = micros_of(self.options.clock.now());
        let retention = i64::try_from(self.options.retention_time.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(retention);
        let per_partition = self.options.retention_bytes / u64::from(self.options.partitions);
        // Oldest sealed segments to delete, per partition.
        let doomed: Vec<usize> = self
            .shared
            .partitions
            .iter()
            .map(|partition| {
                let segments = partition.segments();
                let mut size: u64 = segments.iter().map(|segment| segment.bytes).sum();
                let mut count = 0;
                for segment in &segments[..segments.len() - 1] {
                    let expired = segment.last_micros.is_none_or(|last| last < cutoff);
                    if !expired && size <= per_partition {
                        break;
                    }
                    size -= segment.bytes;
                    count += 1;
                }
                count
            })
            .collect();
        let mut report = RetentionReport::default();
        if doomed.iter().all(|count| *count == 0) {
            return Ok(report);
        }
        // Saved first: if retention leaves a partition without records, the upstream position and the
        // batch counter must still be known after a restart.
        self.save_state()?;
        for (partition, count) in self.shared.partitions.iter().zip(doomed) {
            if count == 0 {
                continue;
            }
            let removed: Vec<SegmentInfo> = partition.segments_mut().drain(..count).collect();
            for segment in removed {
                report.segments_deleted += 1;
                report.bytes_deleted += segment.bytes;
                report.events_deleted += segment.next - segment.base;
                for path in [
                    segment::log_path(&partition.directory, segment.base),
                    segment::index_path(&partition.directory, segment.base),
                ] {
                    if let Err(error) = fs::remove_file(&path)
                        && error.kind() != io::ErrorKind::NotFound
                    {
                        tracing::warn!(path = %path.display(), %error, "cannot delete an expired segment");
                    }
                }
            }
        }
        tracing::debug!(?report, "event log retention");
        Ok(report)
    }
}

// ---- reading ----

fn read_blocking(
    shared: &Shared,
    partition: u32,
    mut from: u64,
    limits: ReadLimits,
) -> Result<ReadBatch, ReadError> {
    let part = shared.partition(partition)?;
    let mut events = Vec::new();
    let mut bytes_read = 0usize;
    let mut lost_races = 0;
    'segments: loop {
        let (base, start, end) = {
            let segments = part.segments();
            let first = segments.first().map_or(0, |segment| segment.base);
            from = from.max(first);
            let next = segments.last().map_or(0, |segment| segment.next);
            if from >= next {
                break;
            }
            let index = segments.partition_point(|segment| segment.base <= from) - 1;
            let segment = &segments[index];
            if from >= segment.next {
                // Past the end of a sealed segment (or in a gap left by a damaged one): the next one.
                match segments.get(index + 1) {
                    Some(following) => {
                        from = following.base;
                        continue;
                    }
                    None => break,
                }
            }
            (segment.base, segment.seek(from), segment.bytes)
        };
        let path = segment::log_path(&part.directory, base);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Retention deleted it after the lookup: look again (the offset is now older than the oldest).
            Err(error) if error.kind() == io::ErrorKind::NotFound && lost_races < 8 => {
                lost_races += 1;
                continue;
            }
            Err(error) => return Err(ReadError::Io(format!("{}: {error}", path.display()))),
        };
        let mut chunk = Bytes::new();
        let mut chunk_start = start;
        let mut cursor = 0usize;
        loop {
            let here = chunk_start + cursor as u64;
            if here >= end {
                continue 'segments;
            }
            match record::decode(&chunk.slice(cursor..)) {
                Decoded::Complete { value, length } => {
                    cursor += length;
                    if value.header.offset < from {
                        continue;
                    }
                    from = value.header.offset + 1;
                    bytes_read += length;
                    events.push(StoredEvent {
                        partition,
                        offset: value.header.offset,
                        enqueued_time: time_of(value.header.enqueued_micros),
                        system_properties: value.system_properties,
                        application_properties: value.application_properties,
                        body: value.body,
                        upstream_sequence: value.header.upstream_sequence,
                    });
                    if events.len() >= limits.max_events || bytes_read >= limits.max_bytes {
                        break 'segments;
                    }
                }
                Decoded::Incomplete { needed } => {
                    let available = end - here;
                    let want = (needed.max(segment::CHUNK_BYTES) as u64).min(available);
                    if want < needed as u64 {
                        return Err(ReadError::Corrupt {
                            partition,
                            segment: base,
                            position: here,
                            reason: record::Corruption::Truncated,
                        });
                    }
                    let mut buffer = vec![0u8; want as usize];
                    file.read_exact_at(&mut buffer, here)
                        .map_err(|error| ReadError::Io(format!("{}: {error}", path.display())))?;
                    chunk = Bytes::from(buffer);
                    chunk_start = here;
                    cursor = 0;
                }
                Decoded::Corrupt(reason) => {
                    return Err(ReadError::Corrupt {
                        partition,
                        segment: base,
                        position: here,
                        reason,
                    });
                }
            }
        }
    }
    Ok(ReadBatch {
        events,
        next_offset: from,
    })
}

fn offset_at_time_blocking(
    shared: &Shared,
    partition: u32,
    time: OffsetDateTime,
) -> Result<u64, ReadError> {
    let part = shared.partition(partition)?;
    let target = micros_of(time);
    let (base, start, end, next) = {
        let segments = part.segments();
        let next = segments.last().map_or(0, |segment| segment.next);
        let Some(segment) = segments
            .iter()
            .find(|segment| segment.last_micros.is_some_and(|last| last >= target))
        else {
            return Ok(next);
        };
        let start = match segment.index.partition_point(|entry| entry.micros < target) {
            0 => 0,
            after => segment.index[after - 1].position,
        };
        (segment.base, start, segment.bytes, segment.next)
    };
    let path = segment::log_path(&part.directory, base);
    let file =
        File::open(&path).map_err(|error| ReadError::Io(format!("{}: {error}", path.display())))?;
    let mut buffer = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut buffer, start)
        .map_err(|error| ReadError::Io(format!("{}: {error}", path.display())))?;
    let mut cursor = 0;
    while cursor < buffer.len() {
        match record::decode_header(&buffer[cursor..]) {
            Decoded::Complete { value, length } => {
                if value.enqueued_micros >= target {
                    return Ok(value.offset);
                }
                cursor += length;
            }
            Decoded::Incomplete { .. } => break,
            Decoded::Corrupt(reason) => {
                return Err(ReadError::Corrupt {
                    partition,
                    segment: base,
                    position: start + cursor as u64,
                    reason,
                });
            }
        }
    }
    Ok(next)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    on_panic: impl FnOnce(String) -> T,
) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => on_panic(error.to_string()),
    }
}

impl EmbeddedEventLog {
    /// Runs `operation` on the checkpoint store on a blocking thread; its I/O error, or its panic, is
    /// [`CheckpointError::Io`].
    fn on_checkpoints<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&CheckpointStore) -> std::io::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, CheckpointError>> {
        let shared = Arc::clone(&self.shared);
        Box::pin(blocking(
            move || {
                operation(&shared.checkpoints)
                    .map_err(|error| CheckpointError::Io(error.to_string()))
            },
            |panic| Err(CheckpointError::Io(panic)),
        ))
    }
}

impl EventLog for EmbeddedEventLog {
    fn partition_count(&self) -> u32 {
        self.shared.partitions.len() as u32
    }

    fn enqueue(&self, append: Append) -> BoxFuture<'_, Result<AppendReceipt, AppendError>> {
        Box::pin(async move {
            let mut bytes = 0;
            for event in &append.events {
                let length = record::encoded_len(
                    &event.system_properties,
                    &event.application_properties,
                    &event.body,
                );
                if length > self.max_event_bytes {
                    return Err(AppendError::TooLarge {
                        bytes: length,
                        max: self.max_event_bytes,
                    });
                }
                let too_many = event.system_properties.len() > usize::from(u16::MAX)
                    || event.application_properties.len() > usize::from(u16::MAX);
                let long_name = event
                    .system_properties
                    .iter()
                    .map(|(key, _)| key.len())
                    .chain(
                        event
                            .application_properties
                            .iter()
                            .map(|(key, _)| key.len()),
                    )
                    .any(|length| length > usize::from(u16::MAX));
                if too_many || long_name {
                    return Err(AppendError::Invalid(
                        "more than 65535 properties, or a property name over 65535 bytes".into(),
                    ));
                }
                bytes += length;
            }
            if let Some(failure) = self.shared.failure() {
                return Err(AppendError::Failed(failure));
            }
            let (reply, receiver) = oneshot::channel();
            self.commands
                .send(Command::Append {
                    append,
                    bytes,
                    reply,
                })
                .await
                .map_err(|_| AppendError::Closed)?;
            Ok(AppendReceipt::new(async move {
                receiver.await.unwrap_or(Err(AppendError::Closed))
            }))
        })
    }

    fn upstream_position(&self) -> u64 {
        self.shared.upstream.load(Ordering::Acquire)
    }

    fn partition_info(&self, partition: u32) -> Option<PartitionInfo> {
        let part = self.shared.partitions.get(partition as usize)?;
        let segments = part.segments();
        let first_offset = segments.first().map_or(0, |segment| segment.base);
        let next_offset = segments.last().map_or(0, |segment| segment.next);
        let last_enqueued_time = segments
            .iter()
            .rev()
            .find_map(|segment| segment.last_micros)
            .map(time_of);
        Some(PartitionInfo {
            partition: part.number,
            first_offset,
            next_offset,
            last_enqueued_time,
        })
    }

    fn watch_partition(&self, partition: u32) -> Option<watch::Receiver<u64>> {
        self.shared
            .partitions
            .get(partition as usize)
            .map(|part| part.committed.subscribe())
    }

    fn read(
        &self,
        partition: u32,
        from: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<ReadBatch, ReadError>> {
        let shared = Arc::clone(&self.shared);
        Box::pin(blocking(
            move || read_blocking(&shared, partition, from, limits),
            |panic| Err(ReadError::Io(format!("the read failed: {panic}"))),
        ))
    }

    fn offset_at_time(
        &self,
        partition: u32,
        time: OffsetDateTime,
    ) -> BoxFuture<'_, Result<u64, ReadError>> {
        let shared = Arc::clone(&self.shared);
        Box::pin(blocking(
            move || offset_at_time_blocking(&shared, partition, time),
            |panic| Err(ReadError::Io(format!("the lookup failed: {panic}"))),
        ))
    }

    fn checkpoints<'a>(
        &'a self,
        group: &'a ConsumerGroup,
    ) -> BoxFuture<'a, Result<BTreeMap<u32, u64>, CheckpointError>> {
        let group = group.clone();
        self.on_checkpoints(move |store| store.load(&group))
    }

    fn save_checkpoints<'a>(
        &'a self,
        group: &'a ConsumerGroup,
        checkpoints: Vec<(u32, u64)>,
    ) -> BoxFuture<'a, Result<BTreeMap<u32, u64>, CheckpointError>> {
        let count = self.partition_count();
        for (partition, offset) in &checkpoints {
            let Some(info) = self.partition_info(*partition) else {
                let error = CheckpointError::NoSuchPartition {
                    partition: *partition,
                    count,
                };
                return Box::pin(async move { Err(error) });
            };
            if *offset >= info.next_offset {
                let error = CheckpointError::BeyondEnd {
                    partition: *partition,
                    offset: *offset,
                    next_offset: info.next_offset,
                };
                return Box::pin(async move { Err(error) });
            }
        }
        let group = group.clone();
        self.on_checkpoints(move |store| store.save(&group, &checkpoints))
    }

    fn consumer_groups(&self) -> BoxFuture<'_, Result<Vec<ConsumerGroup>, CheckpointError>> {
        self.on_checkpoints(CheckpointStore::groups)
    }

    fn delete_consumer_group<'a>(
        &'a self,
        group: &'a ConsumerGroup,
    ) -> BoxFuture<'a, Result<bool, CheckpointError>> {
        let group = group.clone();
        self.on_checkpoints(move |store| store.delete(&group))
    }

    fn enforce_retention(&self) -> BoxFuture<'_, Result<RetentionReport, AppendError>> {
        Box::pin(async move {
            let (reply, receiver) = oneshot::channel();
            self.commands
                .send(Command::Retention { reply })
                .await
                .map_err(|_| AppendError::Closed)?;
            receiver.await.unwrap_or(Err(AppendError::Closed))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (reply, receiver) = oneshot::channel();
            if self.commands.send(Command::Close { reply }).await.is_ok() {
                let _ = receiver.await;
            }
        })
    }
}

#[cfg(test)]
mod tests;
