//! The embedded store: one SQLite database in WAL mode with `synchronous=FULL`, one writer thread that
//! group-commits many callers' writes per transaction, and a small pool of reader connections.
//!
//! Why a single writer: SQLite allows one writer at a time anyway, and batching turns N fsyncs into one.
//! A caller's future resolves only after the COMMIT of the batch holding its write has returned, so every
//! acknowledged write is on disk. A write refused by a domain rule (a stale etag, a twin over its limit) is
//! refused before it writes anything, so it never disturbs its batch-mates; see `run_batch`.
//!
//! Cancellation: dropping a write's future never cancels the write; once queued it runs to completion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleethub_core::access::AccessPolicy;
use fleethub_core::identity::{Identity, IdentityKey};
use fleethub_core::twin::{TwinDocument, TwinLimits};
use fleethub_protocol::ids::{DeviceId, IfMatch, ModuleId};
use fleethub_protocol::rest::ConnectionState;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use crate::AssignConfigurations;
use crate::artifacts::{self, ArtifactRecord, FirmwareGrant};
use crate::audit::{self, AUDIT_TRIM_CHUNK, AuditFilter, AuditRecord, NewAuditRecord};
use crate::c2d::{
    self, C2D_EXPIRY_CHUNK, C2dAbandoned, C2dExpired, C2dReceipt, LockedFeedback, NewC2dMessage,
    QueuedC2dMessage, ReceiveFeedback,
};
use crate::certificates::{self, CaCertificateRecord};
use crate::configurations;
use crate::index::{self, IndexedPaths, Section};
use crate::jobs::{self, JOB_TARGET_CHUNK, JobChange, JobFilter, JobRecord};
use crate::rollouts::{self, ROLLOUT_TARGET_CHUNK, RolloutChange, RolloutFilter, RolloutRecord};
use crate::{
    BoxFuture, BulkApplied, BulkOperation, ChangeFilter, ChangeOperation, ChangeRecord,
    CreateIdentity, DesiredCheckpoint, DeviceRecord, IdentityUpdated, RegistryCounts, Store,
    StoreError, StoreResult, StoredSession, TwinChange, TwinQuery, TwinUpdated, UpdateIdentity,
    UpdateTwin,
};
use fleethub_core::configuration::{self, Configuration, ConfigurationId, ConfigurationSpec};
use fleethub_core::executor::{Statistics, TargetRecord};
use fleethub_core::rollout::RolloutTarget;
use fleethub_protocol::c2d::{FeedbackStatusCode, LockToken};
use fleethub_protocol::ids::{JobId, RolloutId};
use fleethub_protocol::rollouts::RolloutPhase;
use fleethub_query::Pushdown;
use rusqlite::types::Value as SqlValue;

/// Schema migrations, applied in order; `PRAGMA user_version` holds how many have run.
/// Never edit a released migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: identities with their twins, persistent sessions, policies, metadata, change feed.
    r#"
    CREATE TABLE identities (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL DEFAULT '',
        identity TEXT NOT NULL,
        twin TEXT NOT NULL,
        last_activity_time TEXT,
        UNIQUE (device_id, module_id)
    );
    CREATE TABLE sessions (
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL DEFAULT '',
        session TEXT NOT NULL,
        PRIMARY KEY (device_id, module_id)
    );
    CREATE TABLE policies (
        key_name TEXT PRIMARY KEY,
        policy TEXT NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE changes (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL DEFAULT '',
        operation TEXT NOT NULL,
        twin_version INTEGER,
        body TEXT NOT NULL
    );
    CREATE INDEX changes_by_device ON changes (device_id, sequence);
    "#,
    // 2: the twin index: one row per JSON node under the configured indexed paths (see index.rs).
    r#"
    -- module: 0 for a device's twin, 1 for a module's, so fleet-wide counts never touch `identities`.
    CREATE TABLE twin_index (
        path TEXT NOT NULL,
        module INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        value,
        row INTEGER NOT NULL,
        PRIMARY KEY (path, module, kind, value, row)
    ) WITHOUT ROWID;
    CREATE INDEX twin_index_by_row ON twin_index (row, path);
    CREATE INDEX identities_by_module ON identities (module_id);
    "#,
    // 3: jobs and the per-target records of their executions (see jobs.rs).
    crate::jobs::MIGRATION,
    // 4: configurations of automatic device management (see configurations.rs).
    crate::configurations::MIGRATION,
    // 5: job records in the change feed: the job a record is about (`NULL` for device and twin records;
    // the partial index serves `GET /changes?jobId=` and costs them nothing), and each job's target counts.
    r#"
    ALTER TABLE changes ADD COLUMN job_id TEXT;
    CREATE INDEX changes_by_job ON changes (job_id, sequence) WHERE job_id IS NOT NULL;
    "#,
    crate::jobs::COUNTS_MIGRATION,
    // 7: firmware artifacts' metadata and download grants (see artifacts.rs).
    crate::artifacts::MIGRATION,
    // 8: firmware rollouts, their devices' records, and rollout records in the change feed (see rollouts.rs).
    crate::rollouts::MIGRATION,
    // 9: cloud-to-device queues and their feedback records (see c2d.rs).
    crate::c2d::MIGRATION,
    // 10: the audit log of service operations (see audit.rs).
    crate::audit::MIGRATION,
    // 11: X.509 CA certificates for device authentication (see certificates.rs).
    crate::certificates::MIGRATION,
    // 12: the desired properties a persistent session's device has (`Store::save_desired_checkpoint`).
    r#"
    ALTER TABLE sessions ADD COLUMN desired_version INTEGER;
    ALTER TABLE sessions ADD COLUMN desired TEXT;
    "#,
    // 13: no per-device index on the change feed. Every twin change inserted into it at a random place (one
    // more page written per change in a commit of many: a fifth of the durable-patch rate), for the sake of
    // per-device watches, which read forward from the head and scan as cheaply by sequence.
    "DROP INDEX IF EXISTS changes_by_device;",
];

#[derive(Clone, Debug)]
pub struct SqliteStoreOptions {
    pub twin_limits: TwinLimits,
    /// How many change-feed records to keep; older ones are trimmed as new ones arrive.
    pub change_feed_retention: u64,
    /// Upper bound of writes committed in one transaction.
    pub max_batch: usize,
    /// Reader connections kept open.
    pub readers: usize,
    /// Twin paths the query engine can filter through the index (see `index.rs`).
    pub indexed_paths: IndexedPaths,
    /// Told about every batch the writer commits (the hub's metrics); runs on the writer thread, so it
    /// must be quick.
    pub commit_observer: Option<CommitObserver>,
}

/// What the writer reports after each batch ([`SqliteStoreOptions::commit_observer`]).
#[derive(Clone, Copy, Debug)]
pub struct CommitStats {
    /// From BEGIN to the end of COMMIT (its fsync included).
    pub duration: std::time::Duration,
    /// Writes in the batch.
    pub writes: usize,
    /// Writes waiting in the queue once the batch was committed.
    pub queued: usize,
    pub committed: bool,
}

/// A callback for [`CommitStats`].
#[derive(Clone)]
pub struct CommitObserver(pub Arc<dyn Fn(CommitStats) + Send + Sync>);

impl std::fmt::Debug for CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        Self {
            twin_limits: TwinLimits::default(),
            change_feed_retention: 1_000_000,
            max_batch: 2048,
            readers: 4,
            indexed_paths: IndexedPaths::default(),
            commit_observer: None,
        }
    }
}

/// A write as the writer thread sees it: `run` executes inside the open transaction and hands back whether
/// to keep its changes plus a continuation that answers the caller once the commit outcome is known;
/// `fail` answers the caller when the write could not run at all.
trait WriteJob: Send {
    fn run(
        self: Box<Self>,
        connection: &Connection,
        context: &mut WriteContext,
    ) -> (JobOutcome, Finisher);
    fn fail(self: Box<Self>, error: StoreError);
}

type Finisher = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// How a job ended inside the transaction.
enum JobOutcome {
    /// Wrote what it had to, or refused before writing anything (a domain error for its caller alone).
    Done,
    /// SQLite failed or stored data did not parse, possibly after partial writes: the batch must roll back.
    Aborted(StoreError),
}

/// Runs on the writer thread once a write is durable (see `UpdateTwin::on_commit`).
type AfterCommit<T> = Box<dyn FnOnce(&T) + Send>;

struct Job<F, T> {
    work: F,
    reply: oneshot::Sender<StoreResult<T>>,
    after_commit: Option<AfterCommit<T>>,
}

impl<F, T> WriteJob for Job<F, T>
where
    F: FnOnce(&Connection, &mut WriteContext) -> StoreResult<T> + Send + 'static,
    T: Send + 'static,
{
    fn run(
        self: Box<Self>,
        connection: &Connection,
        context: &mut WriteContext,
    ) -> (JobOutcome, Finisher) {
        let Job {
            work,
            reply,
            after_commit,
        } = *self;
        let result = work(connection, context);
        let outcome = match &result {
            Err(error @ (StoreError::Backend(_) | StoreError::Incompatible(_))) => {
                JobOutcome::Aborted(error.clone())
            }
            _ => JobOutcome::Done,
        };
        let finisher: Finisher = Box::new(move |commit: Result<(), StoreError>| {
            let result = commit.and(result);
            if let (Ok(value), Some(hook)) = (&result, after_commit) {
                hook(value);
            }
            let _ = reply.send(result);
        });
        (outcome, finisher)
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

struct WriteContext {
    options: SqliteStoreOptions,
    /// Newest change-feed sequence appended in this batch.
    last_sequence: Option<u64>,
    /// Records of recently written twins, as the writer last wrote them, so a busy device's next patch skips
    /// the SELECT and the JSON decoding. Only the writer changes rows, so an entry is exact as long as every
    /// write job that changes a record another way removes it first, and a failed batch clears all of them.
    hot_records: HashMap<IdentityKey, DeviceRecord>,
}

/// Rows sampled in key order to tell a broad filter from a selective one (see `query_twins`).
const SAMPLE_ROWS: i64 = 1000;
/// A filter matching at least 1 row in this many of the sample is broad: walking in key order finds a page of
/// matches within a few thousand rows.
const BROAD_FRACTION: i64 = 100;

/// Bound of `WriteContext::hot_records`; when reached the cache starts over.
const HOT_RECORDS: usize = 50_000;

impl WriteContext {
    fn forget(&mut self, key: &IdentityKey) {
        self.hot_records.remove(key);
    }

    fn forget_device(&mut self, device_id: &DeviceId) {
        self.hot_records
            .retain(|key, _| &key.device_id != device_id);
    }

    fn remember(&mut self, record: DeviceRecord) {
        if self.hot_records.len() >= HOT_RECORDS {
            self.hot_records.clear();
        }
        self.hot_records.insert(record.key.clone(), record);
    }
}

pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    indexed_paths: IndexedPaths,
    /// Dropping it stops the checkpointer thread.
    _stop_checkpointer: std::sync::mpsc::Sender<()>,
    readers: Arc<ReaderPool>,
    changes: watch::Receiver<u64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    /// Must be called inside a tokio runtime.
    pub fn open(path: &Path, options: SqliteStoreOptions) -> StoreResult<Self> {
        let mut connection = open_connection(path)?;
        migrate(&mut connection)?;
        rebuild_index_if_needed(&mut connection, &options.indexed_paths)?;
        let last_sequence: u64 = connection
            .query_row(
                "SELECT COALESCE(MAX(sequence), 0) FROM changes",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|value| value as u64)?;
        let (changes_sender, changes) = watch::channel(last_sequence);
        let (writer, jobs) = mpsc::channel::<Box<dyn WriteJob>>(options.max_batch * 4);
        let readers = Arc::new(ReaderPool {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            keep: options.readers,
        });
        let indexed_paths = options.indexed_paths.clone();
        let context = WriteContext {
            options,
            last_sequence: None,
            hot_records: HashMap::new(),
        };
        let (stop_checkpointer, checkpointer_stop) = std::sync::mpsc::channel();
        let checkpoint_path = path.to_owned();
        std::thread::Builder::new()
            .name("fleethub-store-checkpointer".into())
            .spawn(move || {
                run_checkpointer(
                    checkpoint_path,
                    std::time::Duration::from_millis(500),
                    checkpointer_stop,
                )
            })
            .map_err(|error| {
                StoreError::Backend(format!("cannot start the checkpointer thread: {error}"))
            })?;
        std::thread::Builder::new()
            .name("fleethub-store-writer".into())
            .spawn(move || run_writer(connection, jobs, changes_sender, context))
            .map_err(|error| {
                StoreError::Backend(format!("cannot start the writer thread: {error}"))
            })?;
        Ok(Self {
            _stop_checkpointer: stop_checkpointer,
            indexed_paths,
            writer,
            readers,
            changes,
        })
    }

    /// Queues a write and waits for its durable result.
    fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection, &mut WriteContext) -> StoreResult<T> + Send + 'static,
    ) -> BoxFuture<'_, StoreResult<T>> {
        self.write_then(job, None)
    }

    /// Like `write`, and runs `after_commit` on the writer thread once the write is durable, in commit order.
    fn write_then<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection, &mut WriteContext) -> StoreResult<T> + Send + 'static,
        after_commit: Option<AfterCommit<T>>,
    ) -> BoxFuture<'_, StoreResult<T>> {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job {
            work: job,
            reply,
            after_commit,
        });
        Box::pin(async move {
            self.writer
                .send(job)
                .await
                .map_err(|_| StoreError::Backend("the store writer has stopped".into()))?;
            answer
                .await
                .map_err(|_| StoreError::Backend("the store writer has stopped".into()))?
        })
    }

    fn read<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> BoxFuture<'_, StoreResult<T>> {
        let readers = Arc::clone(&self.readers);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || readers.with_connection(job))
                .await
                .map_err(|error| StoreError::Backend(format!("reader task failed: {error}")))?
        })
    }
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open(path)?;
    // FULL: a commit returns only after the WAL is fsynced, which is what "acknowledged means durable" needs.
    // wal_autocheckpoint = 0: the writer never checkpoints inside a commit; the checkpointer thread does it
    // beside it (see `run_checkpointer`), so a commit's latency is its fsync, not a checkpoint's.
    // cache_size: 64 MiB of pages keeps a large fleet's hot twins in memory (the default is 2 MiB).
    connection.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 10000;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA cache_size = -65536;",
    )?;
    Ok(connection)
}

/// Copies committed WAL frames into the database file every `interval`, without blocking the writer
/// (PASSIVE), until the store is dropped. If it falls behind, the WAL grows; it never loses data.
fn run_checkpointer(
    path: PathBuf,
    interval: std::time::Duration,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let connection = match Connection::open(&path).and_then(|connection| {
        connection
            .execute_batch("PRAGMA busy_timeout = 10000;")
            .map(|()| connection)
    }) {
        Ok(connection) => connection,
        Err(error) => {
            tracing::error!(%error, "the WAL checkpointer cannot open the database; the WAL will grow");
            return;
        }
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        let result: rusqlite::Result<(i64, i64, i64)> =
            connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            });
        if let Err(error) = result {
            tracing::warn!(%error, "WAL checkpoint failed");
        }
    }
    // Last one on the way out, so a cleanly stopped hub leaves a small WAL.
    let _ = connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

fn migrate(connection: &mut Connection) -> StoreResult<()> {
    // The version check and the migrations share one IMMEDIATE transaction: another process opening the same
    // database at the same moment (a CLI beside a starting hub) waits instead of migrating twice.
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::Incompatible(format!(
            "the database has schema version {current}, this fleethub knows up to {known}: use a newer fleethub"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    transaction.commit()?;
    Ok(())
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
}

impl ReaderPool {
    fn with_connection<T>(
        &self,
        job: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let pooled = self.idle.lock().expect("reader pool lock poisoned").pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => {
                let connection = Connection::open(&self.path)?;
                connection.execute_batch("PRAGMA busy_timeout = 10000; PRAGMA query_only = ON; PRAGMA cache_size = -16384;")?;
                connection
            }
        };
        let result = job(&connection);
        let mut idle = self.idle.lock().expect("reader pool lock poisoned");
        if idle.len() < self.keep {
            idle.push(connection);
        }
        result
    }
}

fn run_writer(
    connection: Connection,
    mut jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    changes: watch::Sender<u64>,
    mut context: WriteContext,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(context.options.max_batch);
    let mut finishers: Vec<Finisher> = Vec::with_capacity(context.options.max_batch);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < context.options.max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        context.last_sequence = None;
        let started = std::time::Instant::now();
        let writes = batch.len();
        let commit = run_batch(&connection, &mut batch, &mut finishers, &mut context);
        if let Some(CommitObserver(observe)) = &context.options.commit_observer {
            observe(CommitStats {
                duration: started.elapsed(),
                writes,
                queued: jobs.len(),
                committed: commit.is_ok(),
            });
        }
        if commit.is_ok()
            && let Some(sequence) = context.last_sequence
        {
            trim_changes(&connection, sequence, context.options.change_feed_retention);
            changes.send_replace(sequence);
        }
        for finisher in finishers.drain(..) {
            finisher(commit.clone());
        }
    }
}

fn run_batch(
    connection: &Connection,
    batch: &mut Vec<Box<dyn WriteJob>>,
    finishers: &mut Vec<Finisher>,
    context: &mut WriteContext,
) -> Result<(), StoreError> {
    if let Err(error) = connection
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut begin| begin.execute([]))
    {
        let error = StoreError::from(error);
        for job in batch.drain(..) {
            job.fail(error.clone());
        }
        return Err(error);
    }
    // Every write job checks everything that can refuse it (etags, existence, twin rules) before its first
    // write, so a refused job has changed nothing and needs no rollback of its own; that spares a SAVEPOINT
    // per job, whose page copies cost more than the rest of a small write. A failure of SQLite itself (or a
    // stored row that no longer parses) may come after a partial write, so it aborts the whole batch.
    let mut batch_failure = None;
    for job in batch.drain(..) {
        let (outcome, finisher) = job.run(connection, context);
        if let JobOutcome::Aborted(error) = outcome {
            batch_failure.get_or_insert(error);
        }
        finishers.push(finisher);
    }
    let outcome = match batch_failure {
        Some(error) => Err(error),
        None => connection
            .prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]))
            .map(|_| ())
            .map_err(StoreError::from),
    };
    if outcome.is_err() {
        let _ = connection.execute_batch("ROLLBACK");
        context.last_sequence = None;
        // Records changed by the rolled-back batch may sit in the cache.
        context.hot_records.clear();
    }
    outcome
}

fn trim_changes(connection: &Connection, last_sequence: u64, retention: u64) {
    // Trimming in steps of 1024 keeps the per-batch cost near zero.
    if last_sequence > retention && last_sequence % 1024 < 16 {
        let trimmed = connection
            .prepare_cached("DELETE FROM changes WHERE sequence <= ?1")
            .and_then(|mut statement| {
                statement.execute(params![(last_sequence - retention) as i64])
            });
        if let Err(error) = trimmed {
            tracing::warn!(%error, "could not trim the change feed");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Row helpers

fn module_column(key: &IdentityKey) -> &str {
    key.module_id.as_ref().map_or("", |module| module.as_ref())
}

fn load_record(connection: &Connection, key: &IdentityKey) -> StoreResult<Option<DeviceRecord>> {
    connection
        .prepare_cached(
            "SELECT identity, twin, last_activity_time FROM identities WHERE device_id = ?1 AND module_id = ?2",
        )?
        .query_row(params![key.device_id.as_ref(), module_column(key)], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, Option<String>>(2)?))
        })
        .optional()?
        .map(|(identity, twin, activity)| decode_record(key.clone(), &identity, &twin, activity.as_deref()))
        .transpose()
}

fn decode_record(
    key: IdentityKey,
    identity: &str,
    twin: &str,
    last_activity_time: Option<&str>,
) -> StoreResult<DeviceRecord> {
    let mut identity: Identity = serde_json::from_str(identity)?;
    let twin: TwinDocument = serde_json::from_str(twin)?;
    if let Some(text) = last_activity_time {
        identity.last_activity_time =
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok();
    }
    Ok(DeviceRecord {
        key,
        identity,
        twin,
    })
}

fn decode_row_key(device_id: String, module_id: String) -> StoreResult<IdentityKey> {
    let device_id: DeviceId = device_id.parse().map_err(|error| {
        StoreError::Incompatible(format!("stored device id {device_id:?}: {error}"))
    })?;
    let module_id = if module_id.is_empty() {
        None
    } else {
        Some(module_id.parse::<ModuleId>().map_err(|error| {
            StoreError::Incompatible(format!("stored module id {module_id:?}: {error}"))
        })?)
    };
    Ok(IdentityKey {
        device_id,
        module_id,
    })
}

fn insert_record(
    connection: &Connection,
    indexed: &IndexedPaths,
    record: &DeviceRecord,
) -> StoreResult<()> {
    connection
        .prepare_cached(
            "INSERT INTO identities (device_id, module_id, identity, twin) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            record.key.device_id.as_ref(),
            module_column(&record.key),
            serde_json::to_string(&record.identity)?,
            serde_json::to_string(&record.twin)?,
        ])?;
    reindex(connection, indexed, record, &indexed.select(&ALL_SECTIONS))
}

fn store_identity(
    connection: &Connection,
    indexed: &IndexedPaths,
    record: &DeviceRecord,
) -> StoreResult<()> {
    connection
        .prepare_cached(
            "UPDATE identities SET identity = ?3 WHERE device_id = ?1 AND module_id = ?2",
        )?
        .execute(params![
            record.key.device_id.as_ref(),
            module_column(&record.key),
            serde_json::to_string(&record.identity)?
        ])?;
    reindex(
        connection,
        indexed,
        record,
        &indexed.select(&[Section::Identity]),
    )
}

/// Writes the twin and re-indexes the `selected` indexed paths (`IndexedPaths::select`).
fn store_twin(
    connection: &Connection,
    indexed: &IndexedPaths,
    record: &DeviceRecord,
    selected: &[usize],
) -> StoreResult<()> {
    connection
        .prepare_cached("UPDATE identities SET twin = ?3 WHERE device_id = ?1 AND module_id = ?2")?
        .execute(params![
            record.key.device_id.as_ref(),
            module_column(&record.key),
            serde_json::to_string(&record.twin)?
        ])?;
    reindex(connection, indexed, record, selected)
}

/// Every section of a twin document the index can cover.
const ALL_SECTIONS: [Section; 4] = [
    Section::Tags,
    Section::Desired,
    Section::Reported,
    Section::Identity,
];

/// Replaces the index rows of `record` under the `selected` indexed paths.
fn reindex(
    connection: &Connection,
    indexed: &IndexedPaths,
    record: &DeviceRecord,
    selected: &[usize],
) -> StoreResult<()> {
    let roots = indexed.roots(selected);
    if roots.is_empty() {
        return Ok(());
    }
    let row: i64 = connection
        .prepare_cached("SELECT id FROM identities WHERE device_id = ?1 AND module_id = ?2")?
        .query_row(
            params![record.key.device_id.as_ref(), module_column(&record.key)],
            |row| row.get(0),
        )?;
    let mut delete = connection
        .prepare_cached("DELETE FROM twin_index WHERE row = ?1 AND path >= ?2 AND path < ?3")?;
    for root in roots {
        // A root and everything under it: keys are joined with U+001F, so "root" .. "root\u{20}" is the subtree.
        let upper = format!("{root}\u{20}");
        delete.execute(params![row, root, upper])?;
    }
    let mut insert = connection.prepare_cached(
        "INSERT OR REPLACE INTO twin_index (path, module, kind, value, row) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let module = i64::from(record.key.module_id.is_some());
    for (path, kind, value) in indexed.entries(&record.identity, &record.twin, selected) {
        insert.execute(params![path, module, kind, value, row])?;
    }
    Ok(())
}

/// Rebuilds the whole twin index when the indexed paths changed since the last start (or on first use).
fn rebuild_index_if_needed(connection: &mut Connection, indexed: &IndexedPaths) -> StoreResult<()> {
    let fingerprint = indexed.fingerprint();
    let stored: Option<String> = connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'twin_index'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if stored.as_deref() == Some(fingerprint.as_str()) {
        return Ok(());
    }
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    transaction.execute("DELETE FROM twin_index", [])?;
    let all = indexed.select(&ALL_SECTIONS);
    {
        let mut rows =
            transaction.prepare("SELECT device_id, module_id, identity, twin FROM identities")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            let key = decode_row_key(row.get(0)?, row.get(1)?)?;
            let record = decode_record(
                key,
                &row.get::<_, String>(2)?,
                &row.get::<_, String>(3)?,
                None,
            )?;
            reindex(&transaction, indexed, &record, &all)?;
        }
    }
    transaction.execute(
        "INSERT INTO meta (key, value) VALUES ('twin_index', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![fingerprint],
    )?;
    transaction.commit()?;
    Ok(())
}

fn append_change(
    connection: &Connection,
    context: &mut WriteContext,
    key: &IdentityKey,
    operation: ChangeOperation,
    twin_version: Option<u64>,
    body: &Value,
    now: OffsetDateTime,
) -> StoreResult<()> {
    insert_change(
        connection,
        context,
        Some(key),
        None,
        operation,
        twin_version,
        body,
        now,
    )
}

/// Appends the records a job write returned (see `jobs.rs`).
fn append_job_changes(
    connection: &Connection,
    context: &mut WriteContext,
    changes: &[JobChange],
) -> StoreResult<()> {
    for change in changes {
        insert_change(
            connection,
            context,
            change.target.as_ref(),
            Some(&change.job_id),
            change.operation,
            None,
            &change.body,
            change.time,
        )?;
    }
    Ok(())
}

/// Appends the records a rollout write returned (see `rollouts.rs`); a rollout's own record has no device
/// (`''`, as a job's).
fn append_rollout_changes(
    connection: &Connection,
    context: &mut WriteContext,
    changes: &[RolloutChange],
) -> StoreResult<()> {
    for change in changes {
        connection
            .prepare_cached(
                "INSERT INTO changes (time, device_id, module_id, operation, twin_version, body, rollout_id)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
            )?
            .execute(params![
                format_time(change.time),
                change
                    .target
                    .as_ref()
                    .map_or("", |key| key.device_id.as_ref()),
                change.target.as_ref().map_or("", module_column),
                change.operation.as_str(),
                serde_json::to_string(&change.body)?,
                change.rollout_id.as_str(),
            ])?;
        context.last_sequence = Some(connection.last_insert_rowid() as u64);
    }
    Ok(())
}

/// A record without a device (a job's own) stores `''` as its device id, which no device can have.
#[allow(clippy::too_many_arguments)] // one column each; the two callers above name what they pass
fn insert_change(
    connection: &Connection,
    context: &mut WriteContext,
    key: Option<&IdentityKey>,
    job_id: Option<&JobId>,
    operation: ChangeOperation,
    twin_version: Option<u64>,
    body: &Value,
    now: OffsetDateTime,
) -> StoreResult<()> {
    connection
        .prepare_cached(
            "INSERT INTO changes (time, device_id, module_id, operation, twin_version, body, job_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            format_time(now),
            key.map_or("", |key| key.device_id.as_ref()),
            key.map_or("", module_column),
            operation.as_str(),
            twin_version.map(|version| version as i64),
            serde_json::to_string(body)?,
            job_id.map(JobId::as_str),
        ])?;
    context.last_sequence = Some(connection.last_insert_rowid() as u64);
    Ok(())
}

fn format_time(time: OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC timestamp always formats as RFC 3339")
}

fn check_if_match(if_match: &IfMatch, current: String) -> StoreResult<()> {
    match if_match {
        IfMatch::Any => Ok(()),
        IfMatch::Tag(given) if given.as_ref() == current => Ok(()),
        IfMatch::Tag(given) => Err(StoreError::PreconditionFailed {
            given: given.as_ref().to_owned(),
            current,
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------

impl Store for SqliteStore {
    fn get(&self, key: &IdentityKey) -> BoxFuture<'_, StoreResult<Option<DeviceRecord>>> {
        let key = key.clone();
        self.read(move |connection| load_record(connection, &key))
    }

    fn list_devices(
        &self,
        after: Option<DeviceId>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<DeviceRecord>>> {
        self.read(move |connection| {
            let after = after.as_ref().map_or("", |id| id.as_ref()).to_owned();
            let mut statement = connection.prepare_cached(
                "SELECT device_id, identity, twin, last_activity_time FROM identities
                 WHERE module_id = '' AND device_id > ?1 ORDER BY device_id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })?;
            let mut records = Vec::new();
            for row in rows {
                let (device_id, identity, twin, activity) = row?;
                let key = decode_row_key(device_id, String::new())?;
                records.push(decode_record(key, &identity, &twin, activity.as_deref())?);
            }
            Ok(records)
        })
    }

    fn list_modules(&self, device_id: &DeviceId) -> BoxFuture<'_, StoreResult<Vec<DeviceRecord>>> {
        let device_id = device_id.clone();
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT module_id, identity, twin, last_activity_time FROM identities
                 WHERE device_id = ?1 AND module_id != '' ORDER BY module_id",
            )?;
            let rows = statement.query_map(params![device_id.as_ref()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })?;
            let mut records = Vec::new();
            for row in rows {
                let (module_id, identity, twin, activity) = row?;
                let key = decode_row_key(device_id.as_ref().to_owned(), module_id)?;
                records.push(decode_record(key, &identity, &twin, activity.as_deref())?);
            }
            Ok(records)
        })
    }

    fn create_identity(&self, request: CreateIdentity) -> BoxFuture<'_, StoreResult<DeviceRecord>> {
        self.write(move |connection, context| {
            create_identity_in(connection, context, request, None, None)
        })
    }

    fn update_identity(
        &self,
        request: UpdateIdentity,
    ) -> BoxFuture<'_, StoreResult<IdentityUpdated>> {
        self.write(move |connection, context| update_identity_in(connection, context, request))
    }

    fn delete_identity(
        &self,
        key: &IdentityKey,
        if_match: IfMatch,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let key = key.clone();
        self.write(move |connection, context| {
            delete_identity_in(connection, context, &key, &if_match)
        })
    }

    fn update_twin(&self, request: UpdateTwin) -> BoxFuture<'_, StoreResult<TwinUpdated>> {
        let UpdateTwin {
            key,
            change,
            if_match,
            now,
            on_commit,
        } = request;
        self.write_then(
            move |connection, context| {
                update_twin_in(connection, context, &key, change, &if_match, now)
            },
            on_commit,
        )
    }

    fn bulk(
        &self,
        operations: Vec<BulkOperation>,
    ) -> BoxFuture<'_, StoreResult<Vec<StoreResult<BulkApplied>>>> {
        self.write(move |connection, context| {
            let mut results = Vec::with_capacity(operations.len());
            for operation in operations {
                let result = bulk_operation_in(connection, context, operation);
                // Refusals are per item and wrote nothing; a storage failure aborts the whole batch.
                if let Err(error @ (StoreError::Backend(_) | StoreError::Incompatible(_))) = &result
                {
                    return Err(error.clone());
                }
                results.push(result);
            }
            Ok(results)
        })
    }

    fn set_connection_state(
        &self,
        key: &IdentityKey,
        state: ConnectionState,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let key = key.clone();
        self.write(move |connection, context| {
            context.forget(&key);
            let Some(mut record) = load_record(connection, &key)? else {
                // Deleted while connected: nothing left to record.
                return Ok(());
            };
            if record.identity.connection_state == state {
                return Ok(());
            }
            record.identity.connection_state = state;
            record.identity.connection_state_updated_time = Some(now);
            store_identity(connection, &context.options.indexed_paths, &record)?;
            let operation = match state {
                ConnectionState::Connected => ChangeOperation::DeviceConnected,
                ConnectionState::Disconnected => ChangeOperation::DeviceDisconnected,
            };
            append_change(connection, context, &key, operation, None, &json!({}), now)
        })
    }

    fn mark_all_disconnected(&self, now: OffsetDateTime) -> BoxFuture<'_, StoreResult<u64>> {
        self.write(move |connection, context| {
            context.hot_records.clear();
            let mut statement = connection.prepare_cached(
                "SELECT device_id, module_id FROM identities
                 WHERE json_extract(identity, '$.connection_state') != 'Disconnected'",
            )?;
            let keys = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (device_id, module_id) in &keys {
                let key = decode_row_key(device_id.clone(), module_id.clone())?;
                let Some(mut record) = load_record(connection, &key)? else {
                    continue;
                };
                record.identity.connection_state = ConnectionState::Disconnected;
                record.identity.connection_state_updated_time = Some(now);
                store_identity(connection, &context.options.indexed_paths, &record)?;
                append_change(
                    connection,
                    context,
                    &key,
                    ChangeOperation::DeviceDisconnected,
                    None,
                    &json!({}),
                    now,
                )?;
            }
            Ok(keys.len() as u64)
        })
    }

    fn record_activity(
        &self,
        batch: Vec<(IdentityKey, OffsetDateTime)>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, context| {
            for (key, _) in &batch {
                context.forget(key);
            }
            let mut statement = connection.prepare_cached(
                "UPDATE identities SET last_activity_time = ?3 WHERE device_id = ?1 AND module_id = ?2")?;
            for (key, time) in &batch {
                statement.execute(params![key.device_id.as_ref(), module_column(key), format_time(*time)])?;
            }
            Ok(())
        })
    }

    fn statistics(&self) -> BoxFuture<'_, StoreResult<RegistryCounts>> {
        self.read(|connection| {
            let (total, enabled): (i64, i64) = connection.query_row(
                "SELECT COUNT(*), COALESCE(SUM(json_extract(identity, '$.status') = 'enabled'), 0)
                 FROM identities WHERE module_id = ''",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            Ok(RegistryCounts {
                total_device_count: total as u64,
                enabled_device_count: enabled as u64,
                disabled_device_count: (total - enabled) as u64,
            })
        })
    }

    fn query_twins(&self, request: TwinQuery) -> BoxFuture<'_, StoreResult<Vec<DeviceRecord>>> {
        let indexed = self.indexed_paths.clone();
        self.read(move |connection| {
            let mut translation = index::translate(&request.filter, &indexed, request.modules);
            let module_condition = if request.modules { "i.module_id != ''" } else { "i.module_id = ''" };
            let after = match &request.after {
                Some(key) => {
                    translation.parameters.push(SqlValue::Text(key.device_id.as_ref().to_owned()));
                    let device = translation.parameters.len();
                    translation.parameters.push(SqlValue::Text(module_column(key).to_owned()));
                    let module = translation.parameters.len();
                    format!(" AND (i.device_id, i.module_id) > (?{device}, ?{module})")
                }
                None => String::new(),
            };
            let mut key_order = "";
            // Two plans: a selective filter reads its few matching rows through the twin index (an IN set) and
            // sorts them; a broad one walks the identities in key order, probing the index row by row, and stops
            // after `limit`. A sample of the next rows in key order tells which fits.
            if translation.sql != "1" {
                let correlated = index::translate_correlated(&request.filter, &indexed, request.modules);
                let sample = format!(
                    "SELECT COUNT(*) FROM (SELECT i.id FROM identities i INDEXED BY sqlite_autoindex_identities_1
                     WHERE {module_condition}{after} ORDER BY i.device_id, i.module_id LIMIT {SAMPLE_ROWS}) s
                     JOIN identities i ON i.id = s.id WHERE {}",
                    correlated.sql
                );
                let matches: i64 = connection
                    .prepare_cached(&sample)?
                    .query_row(rusqlite::params_from_iter(translation.parameters.iter()), |row| row.get(0))?;
                if matches * BROAD_FRACTION >= SAMPLE_ROWS {
                    translation.sql = correlated.sql;
                    key_order = " INDEXED BY sqlite_autoindex_identities_1";
                }
            }
            translation.parameters.push(SqlValue::Integer(request.limit as i64));
            let limit = translation.parameters.len();
            let sql = format!(
                "SELECT i.device_id, i.module_id, i.identity, i.twin, i.last_activity_time FROM identities i{key_order}
                 WHERE {module_condition}{after} AND {} ORDER BY i.device_id, i.module_id LIMIT ?{limit}",
                translation.sql
            );
            let mut statement = connection.prepare_cached(&sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(translation.parameters.iter()))?;
            let mut records = Vec::new();
            while let Some(row) = rows.next()? {
                let key = decode_row_key(row.get(0)?, row.get(1)?)?;
                let activity: Option<String> = row.get(4)?;
                records.push(decode_record(key, &row.get::<_, String>(2)?, &row.get::<_, String>(3)?, activity.as_deref())?);
            }
            Ok(records)
        })
    }

    fn count_twins(
        &self,
        modules: bool,
        filter: Pushdown,
    ) -> BoxFuture<'_, StoreResult<Option<u64>>> {
        let indexed = self.indexed_paths.clone();
        self.read(move |connection| {
            let translation = index::translate(&filter.predicate, &indexed, modules);
            if !(filter.exact && translation.exact) {
                return Ok(None);
            }
            let module_condition = if modules {
                "i.module_id != ''"
            } else {
                "i.module_id = ''"
            };
            let sql = format!(
                "SELECT COUNT(*) FROM identities i WHERE {module_condition} AND {}",
                translation.sql
            );
            let count: i64 = connection.prepare_cached(&sql)?.query_row(
                rusqlite::params_from_iter(translation.parameters.iter()),
                |row| row.get(0),
            )?;
            Ok(Some(count as u64))
        })
    }

    fn group_count(
        &self,
        modules: bool,
        filter: Pushdown,
        path: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<Option<crate::GroupCounts>>> {
        let indexed = self.indexed_paths.clone();
        self.read(move |connection| {
            let mut translation = index::translate(&filter.predicate, &indexed, modules);
            let Some(index_path) = index::indexed_path(&path, &indexed) else {
                return Ok(None);
            };
            if !(filter.exact && translation.exact) {
                return Ok(None);
            }
            let module = i64::from(modules);
            let module_condition = if modules { "i.module_id != ''" } else { "i.module_id = ''" };
            let unfiltered = translation.sql == "1";
            // Every twin has one index row per node, so with no WHERE the counts come from the index alone
            // (and the identities' module index), never reading a twin.
            let (total, defined, sql) = if unfiltered {
                let total: i64 = connection
                    .prepare_cached(&format!("SELECT COUNT(*) FROM identities i WHERE {module_condition}"))?
                    .query_row([], |row| row.get(0))?;
                let defined: i64 = connection
                    .prepare_cached("SELECT COUNT(*) FROM twin_index WHERE path = ?1 AND module = ?2")?
                    .query_row(params![index_path, module], |row| row.get(0))?;
                translation.parameters = vec![SqlValue::Text(index_path), SqlValue::Integer(module)];
                let sql = "SELECT kind, value, COUNT(*) FROM twin_index WHERE path = ?1 AND module = ?2 AND kind <= 3
                           GROUP BY kind, value"
                    .to_owned();
                (total, defined, sql)
            } else {
                let parameters = rusqlite::params_from_iter(translation.parameters.iter());
                let total: i64 = connection
                    .prepare_cached(&format!(
                        "SELECT COUNT(*) FROM identities i WHERE {module_condition} AND {}",
                        translation.sql
                    ))?
                    .query_row(parameters, |row| row.get(0))?;
                translation.parameters.push(SqlValue::Text(index_path));
                let path_parameter = translation.parameters.len();
                let defined: i64 = connection
                    .prepare_cached(&format!(
                        "SELECT COUNT(*) FROM twin_index t JOIN identities i ON i.id = t.row
                         WHERE t.path = ?{path_parameter} AND {module_condition} AND {}",
                        translation.sql
                    ))?
                    .query_row(rusqlite::params_from_iter(translation.parameters.iter()), |row| row.get(0))?;
                let sql = format!(
                    "SELECT t.kind, t.value, COUNT(*) FROM twin_index t JOIN identities i ON i.id = t.row
                     WHERE t.path = ?{path_parameter} AND t.kind <= 3 AND {module_condition} AND {}
                     GROUP BY t.kind, t.value",
                    translation.sql
                );
                (total, defined, sql)
            };
            let mut statement = connection.prepare_cached(&sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(translation.parameters.iter()))?;
            let mut groups = Vec::new();
            while let Some(row) = rows.next()? {
                let kind: i64 = row.get(0)?;
                let value: SqlValue = row.get(1)?;
                let count: i64 = row.get(2)?;
                if let Some(value) = index::row_json(kind, value) {
                    groups.push((value, count as u64));
                }
            }
            Ok(Some(crate::GroupCounts { groups, defined: defined as u64, total: total as u64 }))
        })
    }

    fn load_session(&self, key: &IdentityKey) -> BoxFuture<'_, StoreResult<Option<StoredSession>>> {
        let key = key.clone();
        self.read(move |connection| {
            let text: Option<String> = connection
                .query_row(
                    "SELECT session FROM sessions WHERE device_id = ?1 AND module_id = ?2",
                    params![key.device_id.as_ref(), module_column(&key)],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(text.map(|text| serde_json::from_str(&text)).transpose()?)
        })
    }

    fn save_session(
        &self,
        key: &IdentityKey,
        session: StoredSession,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let key = key.clone();
        self.write(move |connection, _| {
            // Only identities that exist keep sessions, so a deleted device cannot resurrect one.
            if load_record(connection, &key)?.is_none() {
                return Err(StoreError::NotFound(key));
            }
            connection
                .prepare_cached(
                    "INSERT INTO sessions (device_id, module_id, session) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id, module_id) DO UPDATE SET session = excluded.session",
                )?
                .execute(params![
                    key.device_id.as_ref(),
                    module_column(&key),
                    serde_json::to_string(&session)?
                ])?;
            Ok(())
        })
    }

    fn delete_session(&self, key: &IdentityKey) -> BoxFuture<'_, StoreResult<()>> {
        let key = key.clone();
        self.write(move |connection, _| {
            connection
                .prepare_cached("DELETE FROM sessions WHERE device_id = ?1 AND module_id = ?2")?
                .execute(params![key.device_id.as_ref(), module_column(&key)])?;
            Ok(())
        })
    }

    fn load_desired_checkpoint(
        &self,
        key: &IdentityKey,
    ) -> BoxFuture<'_, StoreResult<Option<DesiredCheckpoint>>> {
        let key = key.clone();
        self.read(move |connection| {
            let row: Option<(Option<i64>, Option<String>)> = connection
                .query_row(
                    "SELECT desired_version, desired FROM sessions WHERE device_id = ?1 AND module_id = ?2",
                    params![key.device_id.as_ref(), module_column(&key)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((Some(version), Some(desired))) = row else {
                return Ok(None);
            };
            Ok(Some(DesiredCheckpoint {
                version: version as u64,
                desired: serde_json::from_str(&desired)?,
            }))
        })
    }

    fn save_desired_checkpoint(
        &self,
        key: &IdentityKey,
        checkpoint: Option<DesiredCheckpoint>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let key = key.clone();
        self.write(move |connection, _| {
            match checkpoint {
                Some(checkpoint) => connection
                    .prepare_cached(
                        "UPDATE sessions SET desired_version = ?3, desired = ?4
                         WHERE device_id = ?1 AND module_id = ?2
                           AND (desired_version IS NULL OR desired_version < ?3)",
                    )?
                    .execute(params![
                        key.device_id.as_ref(),
                        module_column(&key),
                        i64::try_from(checkpoint.version).unwrap_or(i64::MAX),
                        serde_json::to_string(&checkpoint.desired)?
                    ])?,
                None => connection
                    .prepare_cached(
                        "UPDATE sessions SET desired_version = NULL, desired = NULL
                         WHERE device_id = ?1 AND module_id = ?2",
                    )?
                    .execute(params![key.device_id.as_ref(), module_column(&key)])?,
            };
            Ok(())
        })
    }

    fn policies(&self) -> BoxFuture<'_, StoreResult<Vec<AccessPolicy>>> {
        self.read(|connection| {
            let mut statement =
                connection.prepare_cached("SELECT policy FROM policies ORDER BY key_name")?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            let mut policies = Vec::new();
            for row in rows {
                policies.push(serde_json::from_str(&row?)?);
            }
            Ok(policies)
        })
    }

    fn put_policy(&self, policy: AccessPolicy) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, _| {
            connection
                .prepare_cached(
                    "INSERT INTO policies (key_name, policy) VALUES (?1, ?2)
                 ON CONFLICT (key_name) DO UPDATE SET policy = excluded.policy",
                )?
                .execute(params![policy.key_name, serde_json::to_string(&policy)?])?;
            Ok(())
        })
    }

    fn get_meta(&self, key: &str) -> BoxFuture<'_, StoreResult<Option<String>>> {
        let key = key.to_owned();
        self.read(move |connection| {
            Ok(connection
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    params![key],
                    |row| row.get(0),
                )
                .optional()?)
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> BoxFuture<'_, StoreResult<()>> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |connection, _| {
            connection
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![key, value])?;
            Ok(())
        })
    }

    fn read_changes(
        &self,
        after: u64,
        limit: usize,
        filter: ChangeFilter,
    ) -> BoxFuture<'_, StoreResult<Vec<ChangeRecord>>> {
        self.read(move |connection| {
            const COLUMNS: &str = "sequence, time, device_id, module_id, operation, twin_version, body, \
                                   job_id, rollout_id";
            // One statement per filter, so each walks the index that fits (`changes_by_job` for a job,
            // `changes_by_rollout` for a rollout, the sequence otherwise: a device's records are found by
            // scanning forward from `after`, which is cheap for watches that follow the head).
            let mut condition = String::new();
            let mut arguments: Vec<SqlValue> = Vec::new();
            if let Some(job) = &filter.job {
                condition.push_str("job_id = ? AND ");
                arguments.push(SqlValue::Text(job.as_str().to_owned()));
            }
            if let Some(rollout) = &filter.rollout {
                condition.push_str("rollout_id = ? AND ");
                arguments.push(SqlValue::Text(rollout.as_str().to_owned()));
            }
            if let Some(device) = &filter.device {
                condition.push_str("device_id = ? AND ");
                arguments.push(SqlValue::Text(device.as_ref().to_owned()));
            }
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM changes WHERE {condition}sequence > ? ORDER BY sequence LIMIT ?"
            ))?;
            arguments.push(SqlValue::Integer(after as i64));
            arguments.push(SqlValue::Integer(limit.min(i64::MAX as usize) as i64));
            let mut rows = statement.query(rusqlite::params_from_iter(arguments))?;
            let mut records = Vec::new();
            while let Some(row) = rows.next()? {
                records.push(decode_change(row)?);
            }
            Ok(records)
        })
    }

    fn change_notifier(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn create_job(&self, job: JobRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, context| {
            let change = jobs::insert_job(connection, &job, OffsetDateTime::now_utc())?;
            append_job_changes(connection, context, &[change])
        })
    }

    fn update_job(&self, job: JobRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, context| {
            let change = jobs::update_job(connection, &job, OffsetDateTime::now_utc())?;
            append_job_changes(connection, context, change.as_slice())
        })
    }

    fn get_job(&self, job_id: &JobId) -> BoxFuture<'_, StoreResult<Option<JobRecord>>> {
        let job_id = job_id.clone();
        self.read(move |connection| jobs::load_job(connection, &job_id))
    }

    fn list_jobs(&self, filter: JobFilter) -> BoxFuture<'_, StoreResult<Vec<JobRecord>>> {
        self.read(move |connection| jobs::list_jobs(connection, &filter))
    }

    fn list_unfinished_jobs(&self) -> BoxFuture<'_, StoreResult<Vec<JobRecord>>> {
        self.read(jobs::list_unfinished_jobs)
    }

    fn delete_job(&self, job_id: &JobId) -> BoxFuture<'_, StoreResult<()>> {
        let job_id = job_id.clone();
        Box::pin(async move {
            let row_job_id = job_id.clone();
            if !self
                .write(move |connection, _| jobs::delete_job_row(connection, &row_job_id))
                .await?
            {
                return Err(StoreError::JobNotFound(job_id));
            }
            self.delete_job_targets(job_id).await
        })
    }

    fn purge_jobs(&self, ended_before: OffsetDateTime) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let mut purged = 0;
            loop {
                let expired = self
                    .read(move |connection| jobs::expired_job_ids(connection, ended_before, 100))
                    .await?;
                if expired.is_empty() {
                    break;
                }
                for job_id in expired {
                    match self.delete_job(&job_id).await {
                        Ok(()) => purged += 1,
                        // Deleted meanwhile by someone else: nothing left to do.
                        Err(StoreError::JobNotFound(_)) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            for job_id in self.read(jobs::orphaned_job_ids).await? {
                self.delete_job_targets(job_id).await?;
            }
            Ok(purged)
        })
    }

    fn save_job_targets(
        &self,
        job_id: &JobId,
        records: Vec<TargetRecord>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let job_id = job_id.clone();
        Box::pin(async move {
            // One durable write per chunk, awaited in turn: a transaction never holds more than one chunk
            // of a big job, so twin writes queued meanwhile wait for one chunk at most.
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<TargetRecord> = records.by_ref().take(JOB_TARGET_CHUNK).collect();
                let job_id = job_id.clone();
                self.write(move |connection, context| {
                    let changes = jobs::save_targets(connection, &job_id, &chunk)?;
                    append_job_changes(connection, context, &changes)
                })
                .await?;
            }
            Ok(())
        })
    }

    fn list_job_targets(
        &self,
        job_id: &JobId,
        after: Option<IdentityKey>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<TargetRecord>>> {
        let job_id = job_id.clone();
        self.read(move |connection| jobs::list_targets(connection, &job_id, after.as_ref(), limit))
    }

    fn list_device_job_targets(
        &self,
        device_id: &DeviceId,
    ) -> BoxFuture<'_, StoreResult<Vec<(JobId, TargetRecord)>>> {
        let device_id = device_id.clone();
        self.read(move |connection| jobs::list_device_targets(connection, &device_id))
    }

    fn job_target_statistics(&self, job_id: &JobId) -> BoxFuture<'_, StoreResult<Statistics>> {
        let job_id = job_id.clone();
        self.read(move |connection| jobs::target_statistics(connection, &job_id))
    }

    fn create_configuration(
        &self,
        configuration: Configuration,
        max: usize,
    ) -> BoxFuture<'_, StoreResult<Configuration>> {
        self.write(move |connection, _| configurations::insert(connection, configuration, max))
    }

    fn update_configuration(
        &self,
        id: &ConfigurationId,
        spec: ConfigurationSpec,
        if_match: IfMatch,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Configuration>> {
        let id = id.clone();
        self.write(move |connection, _| {
            configurations::update(connection, &id, spec, &if_match, now)
        })
    }

    fn get_configuration(
        &self,
        id: &ConfigurationId,
    ) -> BoxFuture<'_, StoreResult<Option<Configuration>>> {
        let id = id.clone();
        self.read(move |connection| configurations::load(connection, &id))
    }

    fn list_configurations(&self, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Configuration>>> {
        self.read(move |connection| configurations::list(connection, limit))
    }

    fn delete_configuration(
        &self,
        id: &ConfigurationId,
        if_match: IfMatch,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let id = id.clone();
        self.write(move |connection, _| configurations::delete(connection, &id, &if_match))
    }

    fn assign_configurations(
        &self,
        request: AssignConfigurations,
    ) -> BoxFuture<'_, StoreResult<TwinUpdated>> {
        let AssignConfigurations {
            key,
            assignment,
            now,
            on_commit,
        } = request;
        self.write_then(
            move |connection, context| {
                let mut record = match context.hot_records.remove(&key) {
                    Some(record) => record,
                    None => load_record(connection, &key)?
                        .ok_or_else(|| StoreError::NotFound(key.clone()))?,
                };
                let limits = context.options.twin_limits;
                // Refused before anything is written (core validates a patch in full first).
                let assigned =
                    match configuration::assign(&mut record.twin, &assignment, now, &limits) {
                        Ok(assigned) => assigned,
                        Err(error) => {
                            context.remember(record);
                            return Err(error.into());
                        }
                    };
                if assigned.changed {
                    let selected = match &assigned.desired_patch_for_device {
                        Some(_) => context.options.indexed_paths.select(&[Section::Desired]),
                        None => Vec::new(),
                    };
                    store_twin(
                        connection,
                        &context.options.indexed_paths,
                        &record,
                        &selected,
                    )?;
                    if let Some(patch) = &assigned.desired_patch_for_device {
                        let body = json!({
                            "version": record.twin.version(),
                            "properties": { "desired": patch },
                        });
                        append_change(
                            connection,
                            context,
                            &key,
                            ChangeOperation::UpdateTwin,
                            Some(record.twin.version()),
                            &body,
                            now,
                        )?;
                    }
                }
                context.remember(record.clone());
                Ok(TwinUpdated {
                    record,
                    desired_patch_for_device: assigned.desired_patch_for_device,
                })
            },
            on_commit,
        )
    }

    fn create_artifact(&self, artifact: ArtifactRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, _| artifacts::insert(connection, &artifact))
    }

    fn get_artifact(
        &self,
        model: &str,
        version: &str,
    ) -> BoxFuture<'_, StoreResult<Option<ArtifactRecord>>> {
        let (model, version) = (model.to_owned(), version.to_owned());
        self.read(move |connection| artifacts::load(connection, &model, &version))
    }

    fn list_artifacts(
        &self,
        model: Option<&str>,
    ) -> BoxFuture<'_, StoreResult<Vec<ArtifactRecord>>> {
        let model = model.map(str::to_owned);
        self.read(move |connection| artifacts::list(connection, model.as_deref()))
    }

    fn delete_artifact(
        &self,
        model: &str,
        version: &str,
    ) -> BoxFuture<'_, StoreResult<ArtifactRecord>> {
        let (model, version) = (model.to_owned(), version.to_owned());
        self.write(move |connection, _| {
            // In the delete's transaction, so no rollout can start on it in between (creating one checks
            // that its artifacts exist, in its own transaction).
            let rollouts = rollouts::unfinished_using(connection, &model, &version)?;
            if !rollouts.is_empty() {
                return Err(StoreError::ArtifactInUse {
                    model,
                    version,
                    rollouts,
                });
            }
            artifacts::delete(connection, &model, &version)
        })
    }

    fn count_artifacts_with_sha256(&self, sha256: &str) -> BoxFuture<'_, StoreResult<u64>> {
        let sha256 = sha256.to_owned();
        self.read(move |connection| artifacts::count_with_sha256(connection, &sha256))
    }

    fn put_firmware_grant(&self, grant: FirmwareGrant) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, _| artifacts::put_grant(connection, &grant))
    }

    fn find_firmware_grant(
        &self,
        device_id: &DeviceId,
        model: &str,
        version: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Option<FirmwareGrant>>> {
        let (device_id, model, version) = (device_id.clone(), model.to_owned(), version.to_owned());
        self.read(move |connection| {
            artifacts::find_grant(connection, &device_id, &model, &version, now)
        })
    }

    fn revoke_firmware_grants(&self, source: &str) -> BoxFuture<'_, StoreResult<u64>> {
        let source = source.to_owned();
        self.write(move |connection, _| artifacts::revoke_grants(connection, &source))
    }

    fn purge_expired_grants(&self, now: OffsetDateTime) -> BoxFuture<'_, StoreResult<u64>> {
        self.write(move |connection, _| artifacts::purge_expired_grants(connection, now))
    }

    fn create_rollout(&self, rollout: RolloutRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, context| {
            let change = rollouts::insert_rollout(connection, &rollout, OffsetDateTime::now_utc())?;
            append_rollout_changes(connection, context, &[change])
        })
    }

    fn update_rollout(&self, rollout: RolloutRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, context| {
            let change = rollouts::update_rollout(connection, &rollout, OffsetDateTime::now_utc())?;
            append_rollout_changes(connection, context, change.as_slice())
        })
    }

    fn get_rollout(
        &self,
        rollout_id: &RolloutId,
    ) -> BoxFuture<'_, StoreResult<Option<RolloutRecord>>> {
        let rollout_id = rollout_id.clone();
        self.read(move |connection| rollouts::load_rollout(connection, &rollout_id))
    }

    fn list_rollouts(
        &self,
        filter: RolloutFilter,
    ) -> BoxFuture<'_, StoreResult<Vec<RolloutRecord>>> {
        self.read(move |connection| rollouts::list_rollouts(connection, &filter))
    }

    fn list_unfinished_rollouts(&self) -> BoxFuture<'_, StoreResult<Vec<RolloutRecord>>> {
        self.read(rollouts::list_unfinished)
    }

    fn save_rollout_targets(
        &self,
        rollout_id: &RolloutId,
        targets: Vec<RolloutTarget>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let rollout_id = rollout_id.clone();
        Box::pin(async move {
            // One durable write per chunk, as for jobs: live writes wait for one chunk at most.
            let mut targets = targets.into_iter().peekable();
            while targets.peek().is_some() {
                let chunk: Vec<RolloutTarget> =
                    targets.by_ref().take(ROLLOUT_TARGET_CHUNK).collect();
                let rollout_id = rollout_id.clone();
                self.write(move |connection, context| {
                    let changes = rollouts::save_targets(connection, &rollout_id, &chunk)?;
                    append_rollout_changes(connection, context, &changes)
                })
                .await?;
            }
            Ok(())
        })
    }

    fn list_rollout_targets(
        &self,
        rollout_id: &RolloutId,
        phase: RolloutPhase,
        after_position: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<RolloutTarget>>> {
        let rollout_id = rollout_id.clone();
        self.read(move |connection| {
            rollouts::list_targets(connection, &rollout_id, phase, after_position, limit)
        })
    }

    fn clear_rollout_targets(&self, rollout_id: &RolloutId) -> BoxFuture<'_, StoreResult<()>> {
        let rollout_id = rollout_id.clone();
        Box::pin(async move {
            loop {
                let chunk_rollout_id = rollout_id.clone();
                let deleted = self
                    .write(move |connection, _| {
                        rollouts::delete_target_chunk(
                            connection,
                            &chunk_rollout_id,
                            ROLLOUT_TARGET_CHUNK,
                        )
                    })
                    .await?;
                if deleted < ROLLOUT_TARGET_CHUNK {
                    return Ok(());
                }
            }
        })
    }

    fn unfinished_rollouts_using_artifact(
        &self,
        model: &str,
        version: &str,
    ) -> BoxFuture<'_, StoreResult<Vec<RolloutId>>> {
        let (model, version) = (model.to_owned(), version.to_owned());
        self.read(move |connection| rollouts::unfinished_using(connection, &model, &version))
    }

    fn enqueue_c2d(
        &self,
        message: NewC2dMessage,
        max_queue_depth: usize,
    ) -> BoxFuture<'_, StoreResult<QueuedC2dMessage>> {
        // In the writer, so the depth check and the insert are one step: concurrent sends never exceed it.
        self.write(move |connection, _| c2d::enqueue(connection, &message, max_queue_depth))
    }

    fn pending_c2d_for_device(
        &self,
        device_id: &DeviceId,
        after: Option<u64>,
        limit: usize,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Vec<QueuedC2dMessage>>> {
        let device_id = device_id.clone();
        self.read(move |connection| c2d::pending(connection, &device_id, after, limit, now))
    }

    fn receive_c2d(
        &self,
        device_id: &DeviceId,
        lock_token: LockToken,
        lock_duration: time::Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Option<QueuedC2dMessage>>> {
        let device_id = device_id.clone();
        self.write(move |connection, _| {
            c2d::receive(connection, &device_id, &lock_token, lock_duration, now)
        })
    }

    fn complete_c2d(
        &self,
        device_id: &DeviceId,
        receipt: C2dReceipt,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.settle_c2d(device_id, receipt, FeedbackStatusCode::Success, now)
    }

    fn reject_c2d(
        &self,
        device_id: &DeviceId,
        receipt: C2dReceipt,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.settle_c2d(device_id, receipt, FeedbackStatusCode::Rejected, now)
    }

    fn abandon_c2d(
        &self,
        device_id: &DeviceId,
        receipt: C2dReceipt,
        max_delivery_count: u32,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<C2dAbandoned>> {
        let device_id = device_id.clone();
        self.write(move |connection, _| {
            c2d::abandon(connection, &device_id, &receipt, max_delivery_count, now)
        })
    }

    fn expire_due_c2d(
        &self,
        now: OffsetDateTime,
        feedback_ttl: time::Duration,
    ) -> BoxFuture<'_, StoreResult<C2dExpired>> {
        Box::pin(async move {
            let mut expired = C2dExpired::default();
            if !self
                .read(move |connection| c2d::anything_due(connection, now, feedback_ttl))
                .await?
            {
                return Ok(expired);
            }
            expired.messages = self
                .delete_in_chunks(C2D_EXPIRY_CHUNK, move |connection, chunk| {
                    c2d::expire_messages_chunk(connection, now, chunk)
                })
                .await?;
            expired.feedback_records = self
                .delete_in_chunks(C2D_EXPIRY_CHUNK, move |connection, chunk| {
                    c2d::expire_feedback_chunk(connection, now, feedback_ttl, chunk)
                })
                .await?;
            Ok(expired)
        })
    }

    fn purge_c2d_queue(
        &self,
        device_id: &DeviceId,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<u64>> {
        let device_id = device_id.clone();
        self.write(move |connection, _| c2d::purge(connection, &device_id, now))
    }

    fn receive_c2d_feedback(
        &self,
        request: ReceiveFeedback,
    ) -> BoxFuture<'_, StoreResult<Option<LockedFeedback>>> {
        self.write(move |connection, _| c2d::receive_feedback(connection, &request))
    }

    fn complete_c2d_feedback(
        &self,
        lock_token: &LockToken,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let lock_token = lock_token.clone();
        self.write(move |connection, _| c2d::complete_feedback(connection, &lock_token, now))
    }

    fn abandon_c2d_feedback(
        &self,
        lock_token: &LockToken,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let lock_token = lock_token.clone();
        self.write(move |connection, _| c2d::abandon_feedback(connection, &lock_token, now))
    }

    fn put_ca_certificate(&self, record: CaCertificateRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |connection, _| certificates::put(connection, &record))
    }

    fn get_ca_certificate(
        &self,
        name: &str,
    ) -> BoxFuture<'_, StoreResult<Option<CaCertificateRecord>>> {
        let name = name.to_owned();
        self.read(move |connection| certificates::load(connection, &name))
    }

    fn list_ca_certificates(&self) -> BoxFuture<'_, StoreResult<Vec<CaCertificateRecord>>> {
        self.read(certificates::list)
    }

    fn delete_ca_certificate(&self, name: &str) -> BoxFuture<'_, StoreResult<bool>> {
        let name = name.to_owned();
        self.write(move |connection, _| certificates::delete(connection, &name))
    }

    fn append_audit(&self, record: NewAuditRecord) -> BoxFuture<'_, StoreResult<u64>> {
        self.write(move |connection, _| audit::append(connection, &record))
    }

    fn list_audit(&self, filter: AuditFilter) -> BoxFuture<'_, StoreResult<Vec<AuditRecord>>> {
        self.read(move |connection| audit::list(connection, &filter))
    }

    fn trim_audit(
        &self,
        older_than: OffsetDateTime,
        keep_newest: u64,
    ) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let nothing_to_trim = self
                .read(move |connection| audit::nothing_to_trim(connection, older_than, keep_newest))
                .await?;
            if nothing_to_trim {
                return Ok(0);
            }
            let mut deleted = 0;
            loop {
                let deleted_now = self
                    .write(move |connection, _| {
                        audit::trim_chunk(connection, older_than, keep_newest, AUDIT_TRIM_CHUNK)
                    })
                    .await?;
                deleted += deleted_now as u64;
                if deleted_now < AUDIT_TRIM_CHUNK {
                    return Ok(deleted);
                }
            }
        })
    }
}

impl SqliteStore {
    /// Deletes a job's target rows, one write per [`JOB_TARGET_CHUNK`] rows.
    fn delete_job_targets(&self, job_id: JobId) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.delete_in_chunks(JOB_TARGET_CHUNK, move |connection, chunk| {
                jobs::delete_target_chunk(connection, &job_id, chunk)
            })
            .await?;
            Ok(())
        })
    }

    /// Runs `delete_chunk` (which deletes at most `chunk` rows and says how many) in one write each until
    /// a chunk comes back short, so that live writes wait for one chunk at most; returns how many it deleted.
    async fn delete_in_chunks(
        &self,
        chunk: usize,
        delete_chunk: impl Fn(&Connection, usize) -> StoreResult<usize> + Clone + Send + 'static,
    ) -> StoreResult<u64> {
        let mut deleted = 0;
        loop {
            let delete_chunk = delete_chunk.clone();
            let deleted_now = self
                .write(move |connection, _| delete_chunk(connection, chunk))
                .await?;
            deleted += deleted_now as u64;
            if deleted_now < chunk {
                return Ok(deleted);
            }
        }
    }

    /// Completes or rejects a locked cloud-to-device message: gone from the queue, `status` as its feedback.
    fn settle_c2d(
        &self,
        device_id: &DeviceId,
        receipt: C2dReceipt,
        status: FeedbackStatusCode,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let device_id = device_id.clone();
        self.write(move |connection, _| c2d::settle(connection, &device_id, &receipt, status, now))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Write operations, shared by the single-item methods and the bulk registry API. Each checks everything that
// can refuse it before its first write (see `run_batch`).

fn create_identity_in(
    connection: &Connection,
    context: &mut WriteContext,
    request: CreateIdentity,
    twin_patch: Option<&Value>,
    reported: Option<&Value>,
) -> StoreResult<DeviceRecord> {
    let CreateIdentity {
        key,
        spec,
        generation_id,
        fresh_keys,
        now,
    } = request;
    context.forget(&key);
    if key.module_id.is_some()
        && load_record(connection, &IdentityKey::device(key.device_id.clone()))?.is_none()
    {
        return Err(StoreError::ParentNotFound(key.device_id.clone()));
    }
    if load_record(connection, &key)?.is_some() {
        return Err(StoreError::AlreadyExists(key));
    }
    let identity = Identity::create(spec, generation_id, fresh_keys, now)?;
    let mut twin = TwinDocument::new(now);
    if let Some(patch) = twin_patch {
        twin.apply_service_patch(patch, now, &context.options.twin_limits)?;
    }
    if let Some(patch) = reported {
        twin.apply_reported_patch(patch, now, &context.options.twin_limits)?;
    }
    let record = DeviceRecord {
        key,
        identity,
        twin,
    };
    insert_record(connection, &context.options.indexed_paths, &record)?;
    // A leftover session of an earlier identity with the same id must not leak subscriptions.
    connection
        .prepare_cached("DELETE FROM sessions WHERE device_id = ?1 AND module_id = ?2")?
        .execute(params![
            record.key.device_id.as_ref(),
            module_column(&record.key)
        ])?;
    append_change(
        connection,
        context,
        &record.key,
        ChangeOperation::CreateDeviceIdentity,
        Some(record.twin.version()),
        &json!({}),
        now,
    )?;
    Ok(record)
}

fn update_identity_in(
    connection: &Connection,
    context: &mut WriteContext,
    request: UpdateIdentity,
) -> StoreResult<IdentityUpdated> {
    let UpdateIdentity {
        key,
        spec,
        if_match,
        fresh_keys,
        now,
    } = request;
    context.forget(&key);
    let mut record =
        load_record(connection, &key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
    check_if_match(&if_match, record.identity.etag())?;
    let status_changed = record.identity.update(spec, fresh_keys, now)?;
    store_identity(connection, &context.options.indexed_paths, &record)?;
    append_change(
        connection,
        context,
        &key,
        ChangeOperation::UpdateDeviceIdentity,
        None,
        &json!({}),
        now,
    )?;
    Ok(IdentityUpdated {
        record,
        status_changed,
    })
}

fn delete_identity_in(
    connection: &Connection,
    context: &mut WriteContext,
    key: &IdentityKey,
    if_match: &IfMatch,
) -> StoreResult<()> {
    if key.module_id.is_none() {
        context.forget_device(&key.device_id);
    } else {
        context.forget(key);
    }
    let record = load_record(connection, key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
    check_if_match(if_match, record.identity.etag())?;
    let now = OffsetDateTime::now_utc();
    let mut deleted = vec![key.clone()];
    if key.module_id.is_none() {
        let mut statement = connection.prepare_cached(
            "SELECT module_id FROM identities WHERE device_id = ?1 AND module_id != ''",
        )?;
        let modules = statement.query_map(params![key.device_id.as_ref()], |row| {
            row.get::<_, String>(0)
        })?;
        for module in modules {
            deleted.push(decode_row_key(key.device_id.as_ref().to_owned(), module?)?);
        }
        // Index rows first: row ids can be reused by identities created later.
        connection
            .prepare_cached("DELETE FROM twin_index WHERE row IN (SELECT id FROM identities WHERE device_id = ?1)")?
            .execute(params![key.device_id.as_ref()])?;
        connection
            .prepare_cached("DELETE FROM identities WHERE device_id = ?1")?
            .execute(params![key.device_id.as_ref()])?;
        connection
            .prepare_cached("DELETE FROM sessions WHERE device_id = ?1")?
            .execute(params![key.device_id.as_ref()])?;
        // Its cloud-to-device queue and pending feedback go with it, as in Azure.
        c2d::delete_device(connection, &key.device_id)?;
    } else {
        let module = module_column(key);
        connection
            .prepare_cached(
                "DELETE FROM twin_index WHERE row IN (SELECT id FROM identities WHERE device_id = ?1 AND module_id = ?2)",
            )?
            .execute(params![key.device_id.as_ref(), module])?;
        connection
            .prepare_cached("DELETE FROM identities WHERE device_id = ?1 AND module_id = ?2")?
            .execute(params![key.device_id.as_ref(), module])?;
        connection
            .prepare_cached("DELETE FROM sessions WHERE device_id = ?1 AND module_id = ?2")?
            .execute(params![key.device_id.as_ref(), module])?;
    }
    for gone in &deleted {
        append_change(
            connection,
            context,
            gone,
            ChangeOperation::DeleteDeviceIdentity,
            None,
            &json!({}),
            now,
        )?;
    }
    Ok(())
}

fn update_twin_in(
    connection: &Connection,
    context: &mut WriteContext,
    key: &IdentityKey,
    change: TwinChange,
    if_match: &IfMatch,
    now: OffsetDateTime,
) -> StoreResult<TwinUpdated> {
    let mut record = match context.hot_records.remove(key) {
        Some(record) => record,
        None => load_record(connection, key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?,
    };
    let limits = context.options.twin_limits;
    let selected = indexed_prefixes(&change, &context.options.indexed_paths);
    // Refusals leave the record untouched (core checks a whole patch before applying it), so a refused write
    // puts it back into the cache as it was.
    let (operation, body, desired_patch_for_device) =
        match apply_twin_change(&mut record, if_match, change, now, &limits) {
            Ok(applied) => applied,
            Err(error) => {
                context.remember(record);
                return Err(error);
            }
        };
    store_twin(
        connection,
        &context.options.indexed_paths,
        &record,
        &selected,
    )?;
    append_change(
        connection,
        context,
        key,
        operation,
        Some(record.twin.version()),
        &body,
        now,
    )?;
    context.remember(record.clone());
    Ok(TwinUpdated {
        record,
        desired_patch_for_device,
    })
}

/// One bulk item, with Azure's import-mode semantics (mapped to these operations by the hub).
fn bulk_operation_in(
    connection: &Connection,
    context: &mut WriteContext,
    operation: BulkOperation,
) -> StoreResult<BulkApplied> {
    match operation {
        BulkOperation::Create {
            request,
            twin_patch,
            reported,
        } => {
            let record = create_identity_in(
                connection,
                context,
                request,
                twin_patch.as_ref(),
                reported.as_ref(),
            )?;
            Ok(BulkApplied {
                key: record.key.clone(),
                record: Some(record),
                desired_patch_for_device: None,
                status_changed: false,
            })
        }
        BulkOperation::Update {
            request,
            twin_patch,
        } => {
            let key = request.key.clone();
            // Check the twin patch before the identity write, so a refused item writes nothing.
            if let Some(patch) = &twin_patch {
                let current = load_record(connection, &key)?
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                check_if_match(&request.if_match, current.identity.etag())?;
                let mut probe = current.twin.clone();
                probe.apply_service_patch(patch, request.now, &context.options.twin_limits)?;
            }
            let now = request.now;
            let updated = update_identity_in(connection, context, request)?;
            let mut applied = BulkApplied {
                key: key.clone(),
                record: Some(updated.record),
                desired_patch_for_device: None,
                status_changed: updated.status_changed,
            };
            if let Some(patch) = twin_patch {
                let twin = update_twin_in(
                    connection,
                    context,
                    &key,
                    TwinChange::ServicePatch(patch),
                    &IfMatch::Any,
                    now,
                )?;
                applied.desired_patch_for_device = twin.desired_patch_for_device;
                applied.record = Some(twin.record);
            }
            Ok(applied)
        }
        BulkOperation::Delete { key, if_match } => {
            delete_identity_in(connection, context, &key, &if_match)?;
            Ok(BulkApplied {
                key,
                record: None,
                desired_patch_for_device: None,
                status_changed: false,
            })
        }
        BulkOperation::UpdateTwin {
            key,
            patch,
            if_match,
            now,
        } => {
            let twin = update_twin_in(
                connection,
                context,
                &key,
                TwinChange::ServicePatch(patch),
                &if_match,
                now,
            )?;
            Ok(BulkApplied {
                key,
                record: Some(twin.record),
                desired_patch_for_device: twin.desired_patch_for_device,
                status_changed: false,
            })
        }
    }
}

/// The twin sections whose index rows a change may alter (a reported patch that touches no indexed path
/// costs no index work).
/// The indexed paths (`IndexedPaths::select`) a twin change can change.
fn indexed_prefixes(change: &TwinChange, indexed: &IndexedPaths) -> Vec<usize> {
    let sections = match change {
        TwinChange::ReportedPatch(patch) => return indexed.select_reported_patch(patch),
        TwinChange::ServicePatch(body) => {
            let mut sections = Vec::new();
            if body.get("tags").is_some() {
                sections.push(Section::Tags);
            }
            if body.pointer("/properties/desired").is_some() {
                sections.push(Section::Desired);
            }
            sections
        }
        TwinChange::ServiceReplace(_) => vec![Section::Tags, Section::Desired],
    };
    indexed.select(&sections)
}

/// Applies a twin change to a record with core's rules: the change-feed operation and body, and the desired
/// patch to push to the device if desired properties changed.
fn apply_twin_change(
    record: &mut DeviceRecord,
    if_match: &IfMatch,
    change: TwinChange,
    now: OffsetDateTime,
    limits: &TwinLimits,
) -> StoreResult<(ChangeOperation, Value, Option<Value>)> {
    check_if_match(if_match, record.twin.etag())?;
    Ok(match change {
        TwinChange::ReportedPatch(patch) => {
            let applied = record.twin.apply_reported_patch(&patch, now, limits)?;
            let body = json!({
                "version": applied.twin_version,
                "properties": { "reported": with_version(patch, applied.reported_version) },
            });
            (ChangeOperation::UpdateTwin, body, None)
        }
        TwinChange::ServicePatch(body) => {
            let applied = record.twin.apply_service_patch(&body, now, limits)?;
            let change = twin_change_body(
                &record.twin,
                applied.twin_version,
                &body,
                &applied.desired_patch_for_device,
            );
            (
                ChangeOperation::UpdateTwin,
                change,
                applied.desired_patch_for_device,
            )
        }
        TwinChange::ServiceReplace(body) => {
            let applied = record.twin.apply_service_replace(&body, now, limits)?;
            let change = twin_change_body(
                &record.twin,
                applied.twin_version,
                &body,
                &applied.desired_patch_for_device,
            );
            (
                ChangeOperation::ReplaceTwin,
                change,
                applied.desired_patch_for_device,
            )
        }
    })
}

fn decode_change(row: &rusqlite::Row<'_>) -> StoreResult<ChangeRecord> {
    let time: String = row.get(1)?;
    let operation: String = row.get(4)?;
    let device_id: String = row.get(2)?;
    // A job's own record has no device (stored as '').
    let key = if device_id.is_empty() {
        None
    } else {
        Some(decode_row_key(device_id, row.get(3)?)?)
    };
    let job_id = row
        .get::<_, Option<String>>(7)?
        .map(|text| {
            text.parse::<JobId>().map_err(|error| {
                StoreError::Incompatible(format!("change record job id {text:?}: {error}"))
            })
        })
        .transpose()?;
    let rollout_id = row
        .get::<_, Option<String>>(8)?
        .map(|text| {
            text.parse::<RolloutId>().map_err(|error| {
                StoreError::Incompatible(format!("change record rollout id {text:?}: {error}"))
            })
        })
        .transpose()?;
    let (device_id, module_id) = match key {
        Some(key) => (Some(key.device_id), key.module_id),
        None => (None, None),
    };
    Ok(ChangeRecord {
        sequence: row.get::<_, i64>(0)? as u64,
        time: OffsetDateTime::parse(&time, &time::format_description::well_known::Rfc3339)
            .map_err(|error| StoreError::Incompatible(format!("change time {time:?}: {error}")))?,
        device_id,
        module_id,
        job_id,
        rollout_id,
        operation: ChangeOperation::parse(&operation).ok_or_else(|| {
            StoreError::Incompatible(format!("unknown change operation {operation:?}"))
        })?,
        twin_version: row.get::<_, Option<i64>>(5)?.map(|version| version as u64),
        body: serde_json::from_str(&row.get::<_, String>(6)?)?,
    })
}

fn with_version(mut patch: Value, version: u64) -> Value {
    if let Value::Object(map) = &mut patch {
        map.insert("$version".into(), json!(version));
    }
    patch
}

/// Azure's twin change event body for a service write: the tags written and the effective desired patch.
fn twin_change_body(
    twin: &TwinDocument,
    twin_version: u64,
    request: &Value,
    desired_patch: &Option<Value>,
) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("version".into(), json!(twin_version));
    if request.get("tags").is_some() {
        body.insert("tags".into(), Value::Object(twin.tags().clone()));
    }
    if let Some(patch) = desired_patch {
        body.insert("properties".into(), json!({ "desired": patch }));
    }
    Value::Object(body)
}
