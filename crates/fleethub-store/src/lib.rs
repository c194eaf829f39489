//! Storage for the hub: the `Store` trait every backend implements, the records it keeps, and the embedded
//! SQLite implementation used by default.
//!
//! Invariants every backend keeps (checked by [`conformance`]):
//! - a write's future resolves only after the write is durable (fsynced); a crash after that loses nothing;
//! - a read issued after a write's future resolved sees that write (read-your-writes);
//! - every twin change, identity creation/deletion and connection-state change appends one record to the
//!   change feed in the same transaction, with a strictly increasing sequence number; so do a job's
//!   creation and status or end-time changes (`jobUpdated`) and each change of a target's status in a job
//!   (`deviceJobUpdated`, carrying the job's counts after it);
//! - a firmware grant never outlives its artifact: deleting an artifact deletes its grants, and a grant for
//!   an artifact that does not exist is refused;
//! - a rollout's creation and changes (`rolloutUpdated`) and each change of a device's status in a rollout
//!   (`deviceRolloutUpdated`, with the counts after it) append to the change feed in the same transaction;
//!   a rollout needs its artifacts to exist, and an artifact an unfinished rollout uses cannot be deleted;
//! - a device's cloud-to-device queue never holds more messages than the limit its enqueue was given, keeps
//!   them in sequence order across restarts, and dies with the device (with its pending feedback); every end
//!   of a message (completed, rejected, dead-lettered, expired, purged) writes the feedback record its
//!   `iothub-ack` asks for in the same transaction, and a feedback batch is handed out under one lock at a
//!   time;
//! - every appended audit record is durable when its future resolves and keeps its sequence order;
//! - domain rules (twin merge, versions, limits, identity rules) come from `fleethub-core`, so every backend
//!   behaves alike; a backend only decides how to keep bytes.

mod artifacts;
mod audit;
mod c2d;
mod certificates;
mod configurations;
pub mod conformance;
mod index;
mod jobs;
mod records;
mod rollouts;
mod sqlite;

pub use artifacts::{ArtifactRecord, FirmwareGrant};
pub use audit::{AUDIT_TRIM_CHUNK, AuditFilter, AuditRecord, NewAuditRecord};
pub use c2d::{
    C2D_EXPIRY_CHUNK, C2dAbandoned, C2dExpired, C2dLock, C2dReceipt, LockedFeedback, NewC2dMessage,
    QueuedC2dMessage, ReceiveFeedback,
};
pub use certificates::CaCertificateRecord;
pub use index::IndexedPaths;
pub use jobs::{AZURE_JOB_RETENTION, JOB_TARGET_CHUNK, JobFilter, JobRecord};
pub use records::*;
pub use rollouts::{ROLLOUT_TARGET_CHUNK, RolloutFilter, RolloutRecord, device_rollout};
pub use sqlite::{CommitObserver, CommitStats, SqliteStore, SqliteStoreOptions};

use std::future::Future;
use std::pin::Pin;

use fleethub_core::access::AccessPolicy;
use fleethub_core::configuration::{Assignment, Configuration, ConfigurationId, ConfigurationSpec};
use fleethub_core::executor::{Statistics, TargetRecord};
use fleethub_core::identity::{FreshKeys, IdentityKey, IdentitySpec};
use fleethub_core::rollout::RolloutTarget;
use fleethub_protocol::c2d::LockToken;
use fleethub_protocol::ids::{DeviceId, IfMatch, JobId, RolloutId};
use fleethub_protocol::rest::ConnectionState;
use fleethub_protocol::rollouts::RolloutPhase;
use fleethub_query::{Predicate, Pushdown};
use time::OffsetDateTime;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type StoreResult<T> = Result<T, StoreError>;
/// The answer of [`Store::group_count`].
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCounts {
    /// Per distinct scalar value at the path, how many matching twins have it.
    pub groups: Vec<(serde_json::Value, u64)>,
    /// Matching twins where the path exists (scalars, objects and arrays alike).
    pub defined: u64,
    /// Matching twins.
    pub total: u64,
}

/// Everything the hub keeps durably. Object-safe so the hub holds an `Arc<dyn Store>` and a PostgreSQL
/// backend can be added without touching the services.
pub trait Store: Send + Sync + 'static {
    // ---- identities and twins ----
    fn get(&self, key: &IdentityKey) -> BoxFuture<'_, StoreResult<Option<DeviceRecord>>>;
    /// Devices (not modules) ordered by id, strictly after `after`, at most `limit`.
    fn list_devices(
        &self,
        after: Option<DeviceId>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<DeviceRecord>>>;
    /// Modules of one device, ordered by module id.
    fn list_modules(&self, device_id: &DeviceId) -> BoxFuture<'_, StoreResult<Vec<DeviceRecord>>>;
    /// Creates an identity with a fresh twin. A module needs its device (`ParentNotFound`).
    fn create_identity(&self, request: CreateIdentity) -> BoxFuture<'_, StoreResult<DeviceRecord>>;
    fn update_identity(
        &self,
        request: UpdateIdentity,
    ) -> BoxFuture<'_, StoreResult<IdentityUpdated>>;
    /// Deletes an identity, its twin and its persisted sessions; a device's modules go with it.
    fn delete_identity(
        &self,
        key: &IdentityKey,
        if_match: IfMatch,
    ) -> BoxFuture<'_, StoreResult<()>>;
    fn update_twin(&self, request: UpdateTwin) -> BoxFuture<'_, StoreResult<TwinUpdated>>;
    /// Many registry writes in one durable transaction (the bulk registry API, imports, simulators). Each
    /// item succeeds or is refused on its own, in order; a storage failure fails the whole call.
    fn bulk(
        &self,
        operations: Vec<BulkOperation>,
    ) -> BoxFuture<'_, StoreResult<Vec<StoreResult<BulkApplied>>>>;
    /// Records a connection-state change (and its change-feed record) if it differs from the stored one.
    fn set_connection_state(
        &self,
        key: &IdentityKey,
        state: ConnectionState,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// After a restart nobody is connected yet: records every identity still marked connected (by a hub
    /// that was killed) as disconnected. Returns how many were.
    fn mark_all_disconnected(&self, now: OffsetDateTime) -> BoxFuture<'_, StoreResult<u64>>;
    /// Coalesced `lastActivityTime` updates; unknown keys are skipped. No change-feed records.
    fn record_activity(
        &self,
        batch: Vec<(IdentityKey, OffsetDateTime)>,
    ) -> BoxFuture<'_, StoreResult<()>>;
    fn statistics(&self) -> BoxFuture<'_, StoreResult<RegistryCounts>>;

    // ---- queries ----
    /// One page of twins (devices, or modules) in `(deviceId, moduleId)` order strictly after `after`, at most
    /// `limit`, keeping those the filter may match. The filter is applied through the backend's index: exactly
    /// where the backend can, as a superset elsewhere, so callers always evaluate the query on what comes back.
    /// Keyset order makes paging stable under concurrent writes: no twin is skipped or repeated.
    fn query_twins(&self, request: TwinQuery) -> BoxFuture<'_, StoreResult<Vec<DeviceRecord>>>;
    /// The number of twins the query's WHERE matches, when it is exactly its pushdown (`filter.exact`) and the
    /// backend can count that without reading twins; `None` otherwise (the caller then counts by evaluating).
    fn count_twins(
        &self,
        modules: bool,
        filter: Pushdown,
    ) -> BoxFuture<'_, StoreResult<Option<u64>>>;
    /// Per distinct scalar value at `path`, how many twins matched by `filter` have it; twins where the path is
    /// missing or holds an object or array are not counted. `None` unless exact, as for `count_twins`.
    fn group_count(
        &self,
        modules: bool,
        filter: Pushdown,
        path: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<Option<GroupCounts>>>;

    // ---- persistent MQTT sessions (clean-session 0) ----
    fn load_session(&self, key: &IdentityKey) -> BoxFuture<'_, StoreResult<Option<StoredSession>>>;
    fn save_session(
        &self,
        key: &IdentityKey,
        session: StoredSession,
    ) -> BoxFuture<'_, StoreResult<()>>;
    fn delete_session(&self, key: &IdentityKey) -> BoxFuture<'_, StoreResult<()>>;
    /// The desired checkpoint of `key`'s persistent session, if the session exists and holds one.
    fn load_desired_checkpoint(
        &self,
        key: &IdentityKey,
    ) -> BoxFuture<'_, StoreResult<Option<DesiredCheckpoint>>>;
    /// Records `checkpoint` in `key`'s persistent session, unless the session is gone (nothing happens) or
    /// already holds a checkpoint of a higher or equal version: a connection that was taken over may save
    /// after its successor, and must not move the session back. `None` forgets the checkpoint.
    fn save_desired_checkpoint(
        &self,
        key: &IdentityKey,
        checkpoint: Option<DesiredCheckpoint>,
    ) -> BoxFuture<'_, StoreResult<()>>;

    // ---- access policies and hub metadata ----
    fn policies(&self) -> BoxFuture<'_, StoreResult<Vec<AccessPolicy>>>;
    fn put_policy(&self, policy: AccessPolicy) -> BoxFuture<'_, StoreResult<()>>;
    fn get_meta(&self, key: &str) -> BoxFuture<'_, StoreResult<Option<String>>>;
    fn set_meta(&self, key: &str, value: &str) -> BoxFuture<'_, StoreResult<()>>;

    // ---- change feed ----
    /// Records with a sequence number greater than `after`, oldest first, at most `limit`, kept by `filter`.
    fn read_changes(
        &self,
        after: u64,
        limit: usize,
        filter: ChangeFilter,
    ) -> BoxFuture<'_, StoreResult<Vec<ChangeRecord>>>;
    /// Watches the sequence number of the newest durable change record.
    fn change_notifier(&self) -> tokio::sync::watch::Receiver<u64>;

    // ---- jobs and the per-target records of their executions ----
    /// Stores a new job (`JobAlreadyExists` if the id is taken) and appends its `jobUpdated` record. Its
    /// targets are saved separately.
    fn create_job(&self, job: JobRecord) -> BoxFuture<'_, StoreResult<()>>;
    /// Replaces a job's row (status, times, statistics, ...); `JobNotFound` if it is gone. Appends a
    /// `jobUpdated` record (the job, with the counts of its stored target records) when the status or the
    /// end time changed.
    fn update_job(&self, job: JobRecord) -> BoxFuture<'_, StoreResult<()>>;
    fn get_job(&self, job_id: &JobId) -> BoxFuture<'_, StoreResult<Option<JobRecord>>>;
    /// Jobs of a type and/or status, by id, with keyset paging.
    fn list_jobs(&self, filter: JobFilter) -> BoxFuture<'_, StoreResult<Vec<JobRecord>>>;
    /// Jobs not `completed`, `failed` or `cancelled`, by id: what a starting hub resumes or schedules.
    fn list_unfinished_jobs(&self) -> BoxFuture<'_, StoreResult<Vec<JobRecord>>>;
    /// Deletes a job and all its target records (`JobNotFound` if there is no such job). The job is gone
    /// for readers and writers at once; its records are deleted in chunks of [`JOB_TARGET_CHUNK`] rows.
    fn delete_job(&self, job_id: &JobId) -> BoxFuture<'_, StoreResult<()>>;
    /// Deletes the finished jobs that ended before `ended_before` (now minus the retention, Azure's being
    /// [`AZURE_JOB_RETENTION`]) with their records, and records left by an interrupted deletion. Returns how
    /// many jobs were deleted.
    fn purge_jobs(&self, ended_before: OffsetDateTime) -> BoxFuture<'_, StoreResult<u64>>;
    /// Inserts or replaces target records of a job (`JobNotFound` if there is no such job). Many records are
    /// written as one durable write per [`JOB_TARGET_CHUNK`] rows, so live writes interleave with them; if
    /// the future fails, a prefix of the chunks may have been written (saving again is idempotent). Each
    /// record whose status differs from the stored one (a new target counts as `pending`) appends a
    /// `deviceJobUpdated` record in the same transaction: the `devices.jobs` record plus the job's counts.
    fn save_job_targets(
        &self,
        job_id: &JobId,
        records: Vec<TargetRecord>,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// A job's target records by device id then module id, strictly after `after`, at most `limit`.
    fn list_job_targets(
        &self,
        job_id: &JobId,
        after: Option<IdentityKey>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<TargetRecord>>>;
    /// The records of one device and its modules across all jobs, by job id.
    fn list_device_job_targets(
        &self,
        device_id: &DeviceId,
    ) -> BoxFuture<'_, StoreResult<Vec<(JobId, TargetRecord)>>>;
    /// Counts a job's stored target records per status.
    fn job_target_statistics(&self, job_id: &JobId) -> BoxFuture<'_, StoreResult<Statistics>>;

    // ---- configurations (automatic device management) ----
    /// Stores a new configuration: `ConfigurationAlreadyExists` if the id is taken, `TooManyConfigurations`
    /// if `max` configurations exist already.
    fn create_configuration(
        &self,
        configuration: Configuration,
        max: usize,
    ) -> BoxFuture<'_, StoreResult<Configuration>>;
    /// Updates a configuration with core's rules (`Configuration::update`: the content is immutable) if its
    /// etag matches `if_match`; `ConfigurationNotFound` if there is none.
    fn update_configuration(
        &self,
        id: &ConfigurationId,
        spec: ConfigurationSpec,
        if_match: IfMatch,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Configuration>>;
    fn get_configuration(
        &self,
        id: &ConfigurationId,
    ) -> BoxFuture<'_, StoreResult<Option<Configuration>>>;
    /// Configurations by id, at most `limit`.
    fn list_configurations(&self, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Configuration>>>;
    /// Deletes a configuration if its etag matches; twins keep their bookkeeping until re-evaluated.
    fn delete_configuration(
        &self,
        id: &ConfigurationId,
        if_match: IfMatch,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Records on a twin which configurations target it and applies the winner (core's
    /// `configuration::assign`, computed against the twin as it is inside the write): a desired patch when
    /// the applied configuration changes, with its change-feed record; the statuses alone are written
    /// without one (they are not a twin write). Writes nothing when nothing changes. `NotFound` if the
    /// identity is gone.
    fn assign_configurations(
        &self,
        request: AssignConfigurations,
    ) -> BoxFuture<'_, StoreResult<TwinUpdated>>;

    // ---- firmware artifacts (metadata; the images are the hub's files) and download grants ----
    /// Stores a new artifact; `ArtifactAlreadyExists` if its model and version are taken.
    fn create_artifact(&self, artifact: ArtifactRecord) -> BoxFuture<'_, StoreResult<()>>;
    fn get_artifact(
        &self,
        model: &str,
        version: &str,
    ) -> BoxFuture<'_, StoreResult<Option<ArtifactRecord>>>;
    /// Artifacts ordered by model then version (byte order); only `model`'s when given.
    fn list_artifacts(
        &self,
        model: Option<&str>,
    ) -> BoxFuture<'_, StoreResult<Vec<ArtifactRecord>>>;
    /// Deletes an artifact and every grant for it, in one transaction; returns the deleted record
    /// (`ArtifactNotFound` if there is none).
    fn delete_artifact(
        &self,
        model: &str,
        version: &str,
    ) -> BoxFuture<'_, StoreResult<ArtifactRecord>>;
    /// How many artifacts name the image with this SHA-256 (images are shared between artifacts).
    fn count_artifacts_with_sha256(&self, sha256: &str) -> BoxFuture<'_, StoreResult<u64>>;
    /// Records a grant, replacing the device's grant for the same artifact and source;
    /// `ArtifactNotFound` if the artifact does not exist.
    fn put_firmware_grant(&self, grant: FirmwareGrant) -> BoxFuture<'_, StoreResult<()>>;
    /// The device's live grant for the artifact (expiring at or after `now`, to the second), the one
    /// that lasts longest when it holds several.
    fn find_firmware_grant(
        &self,
        device_id: &DeviceId,
        model: &str,
        version: &str,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Option<FirmwareGrant>>>;
    /// Deletes every grant of one source (a rollout that ended); returns how many.
    fn revoke_firmware_grants(&self, source: &str) -> BoxFuture<'_, StoreResult<u64>>;
    /// Deletes the grants that expired before `now`; returns how many.
    fn purge_expired_grants(&self, now: OffsetDateTime) -> BoxFuture<'_, StoreResult<u64>>;

    // ---- firmware rollouts and the per-device records of their executions ----
    /// Stores a new rollout and appends its `rolloutUpdated` record: `RolloutAlreadyExists` if the id is
    /// taken, `ArtifactNotFound` if its artifact or rollback artifact does not exist. Its devices are saved
    /// separately.
    fn create_rollout(&self, rollout: RolloutRecord) -> BoxFuture<'_, StoreResult<()>>;
    /// Replaces a rollout's row (status, waves, times, state); `RolloutNotFound` if it is gone. Appends a
    /// `rolloutUpdated` record (with the counts of its stored device records) when anything but its counts
    /// and state changed.
    fn update_rollout(&self, rollout: RolloutRecord) -> BoxFuture<'_, StoreResult<()>>;
    /// A rollout with the counts of its stored device records.
    fn get_rollout(
        &self,
        rollout_id: &RolloutId,
    ) -> BoxFuture<'_, StoreResult<Option<RolloutRecord>>>;
    /// Rollouts in a status (or all), by id, with keyset paging.
    fn list_rollouts(
        &self,
        filter: RolloutFilter,
    ) -> BoxFuture<'_, StoreResult<Vec<RolloutRecord>>>;
    /// Rollouts not `completed` or `aborted`, by id: what a starting hub resumes.
    fn list_unfinished_rollouts(&self) -> BoxFuture<'_, StoreResult<Vec<RolloutRecord>>>;
    /// Inserts or replaces device records of a rollout (`RolloutNotFound` if there is none), one durable
    /// write per [`ROLLOUT_TARGET_CHUNK`] records (if the future fails, a prefix of the chunks may be written;
    /// saving again is idempotent). Each record whose status differs from the stored one (a new device
    /// counts as `pending`) appends a `deviceRolloutUpdated` record in the same transaction.
    fn save_rollout_targets(
        &self,
        rollout_id: &RolloutId,
        targets: Vec<RolloutTarget>,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// One phase's device records by position, strictly after `after_position`, at most `limit`.
    fn list_rollout_targets(
        &self,
        rollout_id: &RolloutId,
        phase: RolloutPhase,
        after_position: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<RolloutTarget>>>;
    /// Deletes every device record of a rollout (in chunks) and zeroes its counts: a rollout whose targets
    /// were being frozen when the hub stopped freezes them again from scratch. No change-feed records.
    fn clear_rollout_targets(&self, rollout_id: &RolloutId) -> BoxFuture<'_, StoreResult<()>>;
    /// The unfinished rollouts that install or roll back to an artifact, by id (why it cannot be deleted).
    fn unfinished_rollouts_using_artifact(
        &self,
        model: &str,
        version: &str,
    ) -> BoxFuture<'_, StoreResult<Vec<RolloutId>>>;

    // ---- cloud-to-device messages (device queues) and their feedback ----
    /// Appends a message to its device's queue and returns it with its sequence number. `NotFound` for an
    /// unknown device (queues are per device: Azure has no module queues); `C2dQueueFull` if the queue
    /// already holds `max_queue_depth` unexpired messages (Azure: `AZURE_MAX_QUEUE_DEPTH`, 50).
    fn enqueue_c2d(
        &self,
        message: NewC2dMessage,
        max_queue_depth: usize,
    ) -> BoxFuture<'_, StoreResult<QueuedC2dMessage>>;
    /// The device's messages to deliver at `now`: not expired, not locked by an HTTPS receive, in sequence
    /// order, strictly after `after`, at most `limit`. A connection that delivered up to sequence `n` asks for
    /// what came after `n`.
    fn pending_c2d_for_device(
        &self,
        device_id: &DeviceId,
        after: Option<u64>,
        limit: usize,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Vec<QueuedC2dMessage>>>;
    /// An HTTPS receive: locks the device's first deliverable message under `lock_token` for
    /// `lock_duration` (Azure: one minute) and returns it; `None` when there is none.
    fn receive_c2d(
        &self,
        device_id: &DeviceId,
        lock_token: LockToken,
        lock_duration: time::Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<Option<QueuedC2dMessage>>>;
    /// The device completed a message (MQTT: its PUBACK): removes it and writes a `Success` record if its
    /// ack is `positive` or `full`. `C2dMessageLockLost` if the receipt names no message in the queue (or an
    /// expired one, or a lock that ran out).
    fn complete_c2d(
        &self,
        device_id: &DeviceId,
        receipt: C2dReceipt,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// The device rejected a message (HTTPS): removes it and writes a `Rejected` record if its ack is
    /// `negative` or `full`. Refusals as for `complete_c2d`.
    fn reject_c2d(
        &self,
        device_id: &DeviceId,
        receipt: C2dReceipt,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// The device abandoned a message (HTTPS): unlocks it and counts the delivery; at `max_delivery_count`
    /// (Azure: `AZURE_MAX_DELIVERY_COUNT`, 10) removes it instead, with a `DeliveryCountExceeded` record if
    /// its ack is `negative` or `full`. Refusals as for `complete_c2d`.
    fn abandon_c2d(
        &self,
        device_id: &DeviceId,
        receipt: C2dReceipt,
        max_delivery_count: u32,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<C2dAbandoned>>;
    /// Removes the messages expired at `now` (with `Expired` records for `negative`/`full` acks, timed at
    /// their expiry) and the feedback records older than `feedback_ttl`, in writes of [`C2D_EXPIRY_CHUNK`]
    /// rows. Checks with a read first, so calling it every second costs an idle hub no write.
    fn expire_due_c2d(
        &self,
        now: OffsetDateTime,
        feedback_ttl: time::Duration,
    ) -> BoxFuture<'_, StoreResult<C2dExpired>>;
    /// Azure's "Purge Cloud To Device Message Queue": removes all the device's messages (with `Purged`
    /// records for `negative`/`full` acks) and returns how many; `NotFound` for an unknown device.
    fn purge_c2d_queue(
        &self,
        device_id: &DeviceId,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<u64>>;
    /// `GET /messages/serviceBound/feedback`: locks the oldest unlocked feedback records (at most
    /// `max_records`) under the request's lock token and returns them; `None` when there are none. Records
    /// older than the TTL, or handed out `max_delivery_count` times already, are dropped first.
    fn receive_c2d_feedback(
        &self,
        request: ReceiveFeedback,
    ) -> BoxFuture<'_, StoreResult<Option<LockedFeedback>>>;
    /// `DELETE /messages/serviceBound/feedback/{lockToken}`: deletes the batch; `FeedbackLockLost` unless
    /// its lock is live.
    fn complete_c2d_feedback(
        &self,
        lock_token: &LockToken,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: unlocks the batch to be received again;
    /// `FeedbackLockLost` unless its lock is live.
    fn abandon_c2d_feedback(
        &self,
        lock_token: &LockToken,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, StoreResult<()>>;

    // ---- X.509 CA certificates (device authentication) ----
    /// Inserts or replaces the CA certificate with this name.
    fn put_ca_certificate(&self, record: CaCertificateRecord) -> BoxFuture<'_, StoreResult<()>>;
    fn get_ca_certificate(
        &self,
        name: &str,
    ) -> BoxFuture<'_, StoreResult<Option<CaCertificateRecord>>>;
    /// Every CA certificate, by name.
    fn list_ca_certificates(&self) -> BoxFuture<'_, StoreResult<Vec<CaCertificateRecord>>>;
    /// Deletes a CA certificate; returns whether it existed.
    fn delete_ca_certificate(&self, name: &str) -> BoxFuture<'_, StoreResult<bool>>;

    // ---- the audit log ----
    /// Appends a record durably (group-committed with other writes); returns its sequence number, which is
    /// strictly increasing and never reused.
    fn append_audit(&self, record: NewAuditRecord) -> BoxFuture<'_, StoreResult<u64>>;
    /// Records matching the filter, newest (highest sequence) first, strictly before `filter.before`, at
    /// most `filter.limit`.
    fn list_audit(&self, filter: AuditFilter) -> BoxFuture<'_, StoreResult<Vec<AuditRecord>>>;
    /// Deletes the records older than `older_than` and all but (about) the newest `keep_newest`, oldest
    /// first, in writes of [`AUDIT_TRIM_CHUNK`] rows; returns how many. Checks with a read first, so calling
    /// it often costs an idle hub no write.
    fn trim_audit(
        &self,
        older_than: OffsetDateTime,
        keep_newest: u64,
    ) -> BoxFuture<'_, StoreResult<u64>>;
}

/// Which records [`Store::read_changes`] returns; several set means all must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    /// Only this device's records (its modules' and its records in jobs and rollouts included).
    pub device: Option<DeviceId>,
    /// Only this job's records (`jobUpdated`, `deviceJobUpdated`).
    pub job: Option<JobId>,
    /// Only this rollout's records (`rolloutUpdated`, `deviceRolloutUpdated`).
    pub rollout: Option<RolloutId>,
}

impl ChangeFilter {
    /// Every record.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn device(device_id: DeviceId) -> Self {
        Self {
            device: Some(device_id),
            ..Self::default()
        }
    }

    pub fn job(job_id: JobId) -> Self {
        Self {
            job: Some(job_id),
            ..Self::default()
        }
    }

    pub fn rollout(rollout_id: RolloutId) -> Self {
        Self {
            rollout: Some(rollout_id),
            ..Self::default()
        }
    }
}

/// A request of [`Store::assign_configurations`].
pub struct AssignConfigurations {
    pub key: IdentityKey,
    pub assignment: Assignment,
    pub now: OffsetDateTime,
    /// As [`UpdateTwin::on_commit`]: pushes the desired patch in commit order.
    pub on_commit: Option<TwinCommitHook>,
}

impl std::fmt::Debug for AssignConfigurations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignConfigurations")
            .field("key", &self.key)
            .field("assignment", &self.assignment)
            .field("now", &self.now)
            .field("on_commit", &self.on_commit.is_some())
            .finish()
    }
}

/// One item of [`Store::bulk`].
#[derive(Clone, Debug)]
pub enum BulkOperation {
    /// Creates an identity, refusing an existing one, with an optional service twin patch (tags, desired).
    Create {
        request: CreateIdentity,
        twin_patch: Option<serde_json::Value>,
        /// Reported properties (imports from another hub carry them).
        reported: Option<serde_json::Value>,
    },
    /// Updates an existing identity (if its etag matches `request.if_match`), then applies the twin patch.
    Update {
        request: UpdateIdentity,
        twin_patch: Option<serde_json::Value>,
    },
    Delete {
        key: IdentityKey,
        if_match: IfMatch,
    },
    /// A service twin patch (tags, desired) if the twin's etag matches.
    UpdateTwin {
        key: IdentityKey,
        patch: serde_json::Value,
        if_match: IfMatch,
        now: OffsetDateTime,
    },
}

/// What a bulk item did.
#[derive(Clone, Debug)]
pub struct BulkApplied {
    pub key: IdentityKey,
    /// The identity after the item; `None` when it was deleted.
    pub record: Option<DeviceRecord>,
    /// For the hub to push, as with [`Store::update_twin`].
    pub desired_patch_for_device: Option<serde_json::Value>,
    pub status_changed: bool,
}

/// A page request of [`Store::query_twins`].
#[derive(Clone, Debug)]
pub struct TwinQuery {
    /// Modules (`FROM devices.modules`) instead of devices.
    pub modules: bool,
    pub filter: Predicate,
    pub after: Option<IdentityKey>,
    pub limit: usize,
}

/// `PUT /devices/{id}` (or module) without `If-Match`.
#[derive(Clone, Debug)]
pub struct CreateIdentity {
    pub key: IdentityKey,
    pub spec: IdentitySpec,
    pub generation_id: String,
    pub fresh_keys: FreshKeys,
    pub now: OffsetDateTime,
}

/// `PUT /devices/{id}` (or module) with `If-Match`.
#[derive(Clone, Debug)]
pub struct UpdateIdentity {
    pub key: IdentityKey,
    pub spec: IdentitySpec,
    pub if_match: IfMatch,
    pub fresh_keys: FreshKeys,
    pub now: OffsetDateTime,
}

#[derive(Clone, Debug)]
pub struct IdentityUpdated {
    pub record: DeviceRecord,
    pub status_changed: bool,
}

pub struct UpdateTwin {
    pub key: IdentityKey,
    pub change: TwinChange,
    /// Compared with the twin's etag (not the identity's).
    pub if_match: IfMatch,
    pub now: OffsetDateTime,
    /// Runs once the write is durable, before the caller's future resolves, in commit order: writes to one
    /// twin run their hooks in the order of their versions. The hub pushes desired patches from here so a
    /// device never sees version 3 before version 2. Must be quick and must not block.
    pub on_commit: Option<TwinCommitHook>,
}

pub type TwinCommitHook = Box<dyn FnOnce(&TwinUpdated) + Send>;

impl std::fmt::Debug for UpdateTwin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateTwin")
            .field("key", &self.key)
            .field("change", &self.change)
            .field("if_match", &self.if_match)
            .field("now", &self.now)
            .field("on_commit", &self.on_commit.is_some())
            .finish()
    }
}
