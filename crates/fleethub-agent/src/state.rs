//! The agent's state directory and the A/B boot-control state machine: two slots, the boot-control record
//! `boot.json`, and the download in progress. Everything here is synchronous file work; the agent runs it
//! on the blocking pool.
//!
//! # Layout
//!
//! ```text
//! DIR/boot.json              the boot-control record (below)
//! DIR/slots/a/image          slot a: the image and its manifest (JSON of FirmwareManifest)
//! DIR/slots/a/manifest
//! DIR/slots/b/image, manifest
//! DIR/download/partial       the image being downloaded
//! DIR/download/partial.json  its sidecar record: url, etag/sha256, bytes durably written, manifests
//! ```
//!
//! Slot `a` holds the factory firmware, which the agent never wrote: while `slots/a/manifest` does not exist,
//! the version running from `a` is `--initial-version`. The first update goes to `b`.
//!
//! # The boot-control record
//!
//! `{"active": "a", "tentative": null, "bootCount": 0, "committed": true, "lastUpdate": {...}}`
//!
//! - `active`: the committed slot, the one booted when there is nothing to try and the one rolled back to;
//! - `tentative`: the slot to boot on trial, or `null`;
//! - `bootCount`: how many times the tentative slot has been booted (counted *before* its health check);
//! - `committed`: `false` exactly while a slot is on trial (U-Boot's `upgrade_available` inverted);
//! - `lastUpdate`: the outcome of the last trial (`completed` or `rolledBack`, with the version, the time,
//!   the error), and whether the hub has acknowledged the report of it (`reported`). It is written in the
//!   same atomic replacement as the commit or rollback it describes, so the outcome is never lost.
//!
//! Invariants: `tentative != active`; `committed == tentative.is_none()`; a slot named by `active` or
//! `tentative` is complete (its manifest exists and its image matches it). A slot is complete iff its
//! manifest exists: apply deletes the manifest first and writes it last.
//!
//! # State machine, and why a crash at any point is safe
//!
//! Every durable step below is one atomic replacement (write `X.tmp`, fsync it, rename over `X`, fsync the
//! directory) or one fsynced delete, so after a crash each file is either its old or its new content. The
//! commit points are the two `boot.json` replacements that set and clear `tentative`.
//!
//! ```text
//!   idle ──method──▶ downloading ──verified──▶ writing slot ──▶ tentative ──reboot──▶ trial ──pass──▶ committed
//!    ▲                   │                                                          │  │
//!    │                   └─ failed (download, verification) ──▶ idle                │  └─fail / boot limit─▶ rolled back
//!    └──────────────────────────────────────────────────────────────────────────────┴─────────────────────┘
//! ```
//!
//! 1. **Download** (`download/partial` + `partial.json`): the record is written before the first byte, and
//!    its `bytes` only ever names bytes already fsynced in `partial`. A crash leaves a record that the next
//!    start resumes from (`Range: bytes=N-`); the boot record is untouched, so the old firmware is committed.
//! 2. **Write the inactive slot** (`active`'s other slot, never the one running): delete its manifest, copy the
//!    image to `image.tmp`, fsync, rename to `image`, read it back against the manifest's SHA-256, then write
//!    the manifest. A crash here leaves an incomplete slot that nothing names: the old firmware is committed,
//!    the download record is still there and complete, and the next start verifies and applies it again.
//! 3. **Mark it tentative** (`boot.json`: `tentative` = the slot, `bootCount` 0, `committed` false): the first
//!    commit point. Before it, the next boot runs the old firmware; after it, the new one on trial. Then the
//!    download is deleted (a leftover download next to a trial is deleted at boot).
//! 4. **Reboot, count the boot**: the first thing a boot does with a tentative slot is `bootCount += 1`,
//!    durably, before the health check runs. A crash (or a hang that a watchdog resets) during the health
//!    check therefore still counts, and once `bootCount > --boot-limit` the boot rolls back instead of trying
//!    again: a firmware that kills the device cannot loop forever.
//! 5. **Commit or roll back**: one replacement of `boot.json` sets `active` = tentative (commit) or keeps
//!    `active` (rollback), clears `tentative`, and records `lastUpdate` with `reported: false`. A crash just
//!    before it repeats the trial (step 4); just after it, the outcome is reported at the next start.
//! 6. **Report**: once the hub has acknowledged the outcome's reported properties, `lastUpdate.reported`
//!    becomes `true` (a crash before that reports it again: reports are idempotent merge patches).
//!
//! At every point, then, the committed firmware is either the old one (`active` unchanged, with or without
//! a trial pending) or the new one (`active` = the new slot), and the slot named `active` is complete.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use fleethub_protocol::firmware::FirmwareManifest;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::error::{StorageError, UpdateError, UpdateErrorCode};

const BOOT_RECORD_FILE: &str = "boot.json";
const SLOTS_DIR: &str = "slots";
const IMAGE_FILE: &str = "image";
const MANIFEST_FILE: &str = "manifest";
const DOWNLOAD_DIR: &str = "download";
const PARTIAL_FILE: &str = "partial";
const PARTIAL_RECORD_FILE: &str = "partial.json";
const TMP_SUFFIX: &str = ".tmp";

/// One of the two firmware slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutcomeKind {
    Completed,
    RolledBack,
}

/// The outcome of the last trial, kept in the boot record until the hub has acknowledged its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateOutcome {
    pub result: OutcomeKind,
    /// The version that was tried.
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(default)]
    pub error: Option<UpdateError>,
    /// Whether the hub has acknowledged the reported properties that tell this outcome.
    #[serde(default)]
    pub reported: bool,
}

/// The boot-control record, `DIR/boot.json` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootRecord {
    pub active: Slot,
    pub tentative: Option<Slot>,
    pub boot_count: u32,
    pub committed: bool,
    #[serde(default)]
    pub last_update: Option<UpdateOutcome>,
}

impl BootRecord {
    /// A device that has never been updated: the factory firmware in slot `a`.
    pub fn factory() -> Self {
        Self {
            active: Slot::A,
            tentative: None,
            boot_count: 0,
            committed: true,
            last_update: None,
        }
    }

    /// The slot a boot with this record runs.
    pub fn booted_slot(&self) -> Slot {
        self.tentative.unwrap_or(self.active)
    }

    /// The slot an update writes: never the committed one, never the one running.
    pub fn inactive_slot(&self) -> Slot {
        self.active.other()
    }

    fn check(&self) -> Result<(), String> {
        if self.tentative == Some(self.active) {
            return Err(format!("slot {} is both active and tentative", self.active));
        }
        if self.committed != self.tentative.is_none() {
            return Err(format!(
                "committed is {} but tentative is {:?}",
                self.committed, self.tentative
            ));
        }
        Ok(())
    }

    /// Step 3: `slot` (complete, inactive) is to be tried at the next boot.
    pub fn with_tentative(&self, slot: Slot) -> Self {
        debug_assert!(self.tentative.is_none() && slot != self.active);
        Self {
            active: self.active,
            tentative: Some(slot),
            boot_count: 0,
            committed: false,
            last_update: self.last_update.clone(),
        }
    }

    /// Step 4: one more boot of the tentative slot.
    pub fn with_boot_counted(&self) -> Self {
        Self {
            boot_count: self.boot_count.saturating_add(1),
            ..self.clone()
        }
    }

    /// Step 5, success: the tentative slot becomes the active one.
    pub fn committed(&self, outcome: UpdateOutcome) -> Self {
        Self {
            active: self.tentative.unwrap_or(self.active),
            tentative: None,
            boot_count: 0,
            committed: true,
            last_update: Some(outcome),
        }
    }

    /// Step 5, failure: the active slot stays; the tentative one is forgotten.
    pub fn rolled_back(&self, outcome: UpdateOutcome) -> Self {
        Self {
            active: self.active,
            tentative: None,
            boot_count: 0,
            committed: true,
            last_update: Some(outcome),
        }
    }

    /// Step 6: the outcome's report has been acknowledged.
    pub fn with_outcome_reported(&self) -> Self {
        let mut record = self.clone();
        if let Some(outcome) = &mut record.last_update {
            outcome.reported = true;
        }
        record
    }
}

/// The download in progress: `DIR/download/partial.json`, next to the bytes in `partial`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadRecord {
    pub url: String,
    /// The `version` of the method payload, if it gave one.
    #[serde(default)]
    pub requested_version: Option<String>,
    /// The `manifest` (JWS) of the method payload, if it gave one.
    #[serde(default)]
    pub payload_manifest: Option<String>,
    /// The server's `x-fleethub-manifest`, once a response carried one.
    #[serde(default)]
    pub server_manifest: Option<String>,
    /// The server's `ETag`, sent back as `If-Range` when resuming.
    #[serde(default)]
    pub etag: Option<String>,
    /// The server's `x-fleethub-sha256` (or a SHA-256 ETag).
    #[serde(default)]
    pub server_sha256: Option<String>,
    /// The whole image's size, once a response said it.
    #[serde(default)]
    pub total: Option<u64>,
    /// Bytes of `partial` known to be on disk (fsynced before this record was written).
    pub bytes: u64,
    /// All `total` bytes are on disk.
    #[serde(default)]
    pub complete: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
}

impl DownloadRecord {
    pub fn new(
        url: String,
        requested_version: Option<String>,
        payload_manifest: Option<String>,
        started: OffsetDateTime,
    ) -> Self {
        Self {
            url,
            requested_version,
            payload_manifest,
            server_manifest: None,
            etag: None,
            server_sha256: None,
            total: None,
            bytes: 0,
            complete: false,
            started,
        }
    }

    /// Forgets everything learnt from the server: the next request starts from byte 0.
    pub fn restart(&mut self) {
        self.etag = None;
        self.server_sha256 = None;
        self.server_manifest = None;
        self.total = None;
        self.bytes = 0;
        self.complete = false;
    }
}

/// The agent's state directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    #[cfg(test)]
    crash: Option<std::sync::Arc<CrashAfter>>,
}

/// Test support: fail with [`StorageError::SimulatedCrash`] once `limit` durable steps have completed.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct CrashAfter {
    pub limit: usize,
    pub done: std::sync::atomic::AtomicUsize,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            #[cfg(test)]
            crash: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn crashing_after(root: &Path, limit: usize) -> (Self, std::sync::Arc<CrashAfter>) {
        let crash = std::sync::Arc::new(CrashAfter {
            limit,
            done: std::sync::atomic::AtomicUsize::new(0),
        });
        let state = Self {
            root: root.to_owned(),
            crash: Some(std::sync::Arc::clone(&crash)),
        };
        (state, crash)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn boot_record_path(&self) -> PathBuf {
        self.root.join(BOOT_RECORD_FILE)
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join(SLOTS_DIR).join(slot.as_str())
    }

    pub fn slot_image_path(&self, slot: Slot) -> PathBuf {
        self.slot_dir(slot).join(IMAGE_FILE)
    }

    pub fn slot_manifest_path(&self, slot: Slot) -> PathBuf {
        self.slot_dir(slot).join(MANIFEST_FILE)
    }

    pub fn download_dir(&self) -> PathBuf {
        self.root.join(DOWNLOAD_DIR)
    }

    pub fn partial_path(&self) -> PathBuf {
        self.download_dir().join(PARTIAL_FILE)
    }

    pub fn partial_record_path(&self) -> PathBuf {
        self.download_dir().join(PARTIAL_RECORD_FILE)
    }

    /// Marks the end of a durable step. In tests it can simulate a power cut right after it.
    fn durable(&self, _step: &'static str) -> Result<(), StorageError> {
        #[cfg(test)]
        if let Some(crash) = &self.crash {
            let done = crash.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if done >= crash.limit {
                return Err(StorageError::SimulatedCrash(_step));
            }
        }
        Ok(())
    }

    /// Creates the directories and deletes the temporary files a crash may have left (`*.tmp`: a
    /// replacement that never reached its rename, which therefore never happened).
    pub fn prepare(&self) -> Result<(), StorageError> {
        for directory in [
            self.root.clone(),
            self.slot_dir(Slot::A),
            self.slot_dir(Slot::B),
            self.download_dir(),
        ] {
            fs::create_dir_all(&directory)
                .map_err(StorageError::io("create directory", &directory))?;
            let entries = fs::read_dir(&directory).map_err(StorageError::io("list", &directory))?;
            for entry in entries {
                let entry = entry.map_err(StorageError::io("list", &directory))?;
                let path = entry.path();
                if path.is_file()
                    && path
                        .file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.ends_with(TMP_SUFFIX))
                {
                    fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
                }
            }
        }
        Ok(())
    }

    /// The boot record, or `None` on a device that has never booted the agent.
    pub fn load_boot_record(&self) -> Result<Option<BootRecord>, StorageError> {
        let path = self.boot_record_path();
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let record: BootRecord =
            serde_json::from_slice(&text).map_err(|error| StorageError::Corrupt {
                path: path.clone(),
                what: "boot-control record",
                detail: error.to_string(),
            })?;
        record.check().map_err(|detail| StorageError::Corrupt {
            path,
            what: "boot-control record",
            detail,
        })?;
        Ok(Some(record))
    }

    pub fn save_boot_record(&self, record: &BootRecord) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(record).expect("a boot record always serialises");
        write_atomically(&self.boot_record_path(), &bytes)?;
        self.durable("write boot.json")
    }

    /// The manifest of a complete slot; `None` when the slot is empty or incomplete.
    pub fn slot_manifest(&self, slot: Slot) -> Result<Option<FirmwareManifest>, StorageError> {
        let path = self.slot_manifest_path(slot);
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|error| StorageError::Corrupt {
                path,
                what: "slot manifest",
                detail: error.to_string(),
            })
    }

    /// The version a slot holds: its manifest's, or `initial_version` for slot `a` never written (the
    /// factory firmware).
    pub fn slot_version(&self, slot: Slot, initial_version: &str) -> Result<String, StorageError> {
        Ok(self
            .slot_manifest(slot)?
            .map(|manifest| manifest.version)
            .unwrap_or_else(|| initial_version.to_owned()))
    }

    /// Step 2: writes `image` and `manifest` into `slot`, manifest last, and reads the image back.
    pub fn write_slot(
        &self,
        slot: Slot,
        image: &Path,
        manifest: &FirmwareManifest,
    ) -> Result<(), StorageError> {
        let directory = self.slot_dir(slot);
        fs::create_dir_all(&directory).map_err(StorageError::io("create directory", &directory))?;
        let manifest_path = self.slot_manifest_path(slot);
        match fs::remove_file(&manifest_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::io("remove", &manifest_path)(error)),
        }
        sync_directory(&directory)?;
        self.durable("mark the slot incomplete")?;

        let image_path = self.slot_image_path(slot);
        let tmp = tmp_path(&image_path);
        fs::copy(image, &tmp).map_err(StorageError::io("copy the image to", &tmp))?;
        sync_file(&tmp)?;
        fs::rename(&tmp, &image_path)
            .map_err(StorageError::io("rename into place", &image_path))?;
        sync_directory(&directory)?;
        self.durable("write the slot image")?;

        let (digest, size) = hash_file(&image_path)?;
        if digest != manifest.sha256 || size != manifest.size {
            return Err(StorageError::Corrupt {
                path: image_path,
                what: "slot image",
                detail: format!(
                    "it reads back as {size} bytes with SHA-256 {digest}, but {} bytes with {} were written",
                    manifest.size, manifest.sha256
                ),
            });
        }
        let bytes = serde_json::to_vec_pretty(manifest).expect("a manifest always serialises");
        write_atomically(&manifest_path, &bytes)?;
        self.durable("write the slot manifest")
    }

    pub fn load_download_record(&self) -> Result<Option<DownloadRecord>, StorageError> {
        let path = self.partial_record_path();
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|error| StorageError::Corrupt {
                path,
                what: "download record",
                detail: error.to_string(),
            })
    }

    pub fn save_download_record(&self, record: &DownloadRecord) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(record).expect("a download record always serialises");
        write_atomically(&self.partial_record_path(), &bytes)?;
        self.durable("write the download record")
    }

    /// Starts a download: any leftover bytes go, then the record is written.
    pub fn begin_download(&self, record: &DownloadRecord) -> Result<(), StorageError> {
        remove_if_present(&self.partial_path())?;
        self.save_download_record(record)
    }

    /// Forgets the download: the record first (so a crash in between leaves bytes without a record, which
    /// the next download deletes, never a record whose bytes are gone), then the bytes.
    pub fn remove_download(&self) -> Result<(), StorageError> {
        let record = self.partial_record_path();
        let removed_record = remove_if_present(&record)?;
        let removed_bytes = remove_if_present(&self.partial_path())?;
        if removed_record || removed_bytes {
            sync_directory(&self.download_dir())?;
            self.durable("remove the download")?;
        }
        Ok(())
    }

    /// Whether anything is left in `download/` (tests use it to check nothing was kept).
    pub fn download_is_empty(&self) -> Result<bool, StorageError> {
        let directory = self.download_dir();
        match fs::read_dir(&directory) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(StorageError::io("list", &directory)(error)),
        }
    }
}

/// What a boot found and did, for the agent to act on and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    /// The boot record after this boot's own writes.
    pub record: BootRecord,
    /// The tentative slot to health-check now, if any.
    pub trial: Option<Trial>,
    /// The committed firmware's version (`active`'s).
    pub committed_version: String,
    /// A download to resume (only when there is no trial).
    pub resume: Option<DownloadRecord>,
}

/// A tentative slot booted for its health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    pub slot: Slot,
    pub manifest: FirmwareManifest,
    pub boot_count: u32,
}

/// The simulated boot (steps 4 and the boot-limit rollback of step 5): reads `boot.json` (writing the
/// factory record on a new device), counts a boot of the tentative slot durably before anything else, and
/// rolls back when that count passes `boot_limit`. The health check itself is the caller's: see
/// [`resolve_trial`].
pub fn boot(
    state: &StateDir,
    boot_limit: u32,
    initial_version: &str,
    now: OffsetDateTime,
) -> Result<BootReport, StorageError> {
    state.prepare()?;
    let mut record = match state.load_boot_record()? {
        Some(record) => record,
        None => {
            let record = BootRecord::factory();
            state.save_boot_record(&record)?;
            record
        }
    };

    let mut trial = None;
    if let Some(slot) = record.tentative {
        record = record.with_boot_counted();
        state.save_boot_record(&record)?;
        let manifest = state.slot_manifest(slot)?;
        let failure = match &manifest {
            // Cannot happen while the invariants hold (a slot is marked tentative only once complete).
            None => Some(UpdateError::new(
                UpdateErrorCode::Storage,
                format!("the tentative slot {slot} has no manifest"),
            )),
            Some(manifest) if record.boot_count > boot_limit => Some(UpdateError::new(
                UpdateErrorCode::BootLimitExceeded,
                format!(
                    "firmware {} in slot {slot} was booted {} times without passing its health check (boot limit {boot_limit})",
                    manifest.version, record.boot_count
                ),
            )),
            Some(_) => None,
        };
        match (failure, manifest) {
            (None, Some(manifest)) => {
                trial = Some(Trial {
                    slot,
                    manifest,
                    boot_count: record.boot_count,
                });
            }
            (error, manifest) => {
                let outcome = UpdateOutcome {
                    result: OutcomeKind::RolledBack,
                    version: manifest
                        .map(|manifest| manifest.version)
                        .unwrap_or_default(),
                    time: now,
                    error,
                    reported: false,
                };
                record = record.rolled_back(outcome);
                state.save_boot_record(&record)?;
            }
        }
    }

    let resume = if trial.is_some() {
        // A crash between marking the slot tentative and deleting the download leaves this behind.
        state.remove_download()?;
        None
    } else {
        match state.load_download_record() {
            Ok(record) => record,
            Err(StorageError::Corrupt { path, detail, .. }) => {
                tracing::warn!(path = %path.display(), %detail, "deleting an unreadable download record");
                state.remove_download()?;
                None
            }
            Err(error) => return Err(error),
        }
    };
    if resume.is_none() && trial.is_none() {
        // Bytes without a record belong to no download.
        remove_if_present(&state.partial_path())?;
    }
    let committed_version = state.slot_version(record.active, initial_version)?;
    Ok(BootReport {
        record,
        trial,
        committed_version,
        resume,
    })
}

/// Step 5: commits the trial's slot when its health check passed, else rolls back with `failure`.
pub fn resolve_trial(
    state: &StateDir,
    trial: &Trial,
    failure: Option<UpdateError>,
    now: OffsetDateTime,
) -> Result<BootRecord, StorageError> {
    let record = state
        .load_boot_record()?
        .ok_or_else(|| StorageError::Corrupt {
            path: state.boot_record_path(),
            what: "boot-control record",
            detail: "it disappeared during the trial".into(),
        })?;
    if record.tentative != Some(trial.slot) {
        return Err(StorageError::Corrupt {
            path: state.boot_record_path(),
            what: "boot-control record",
            detail: format!(
                "slot {} was on trial but the record says tentative {:?}",
                trial.slot, record.tentative
            ),
        });
    }
    let outcome = UpdateOutcome {
        result: if failure.is_none() {
            OutcomeKind::Completed
        } else {
            OutcomeKind::RolledBack
        },
        version: trial.manifest.version.clone(),
        time: now,
        error: failure,
        reported: false,
    };
    let next = if outcome.result == OutcomeKind::Completed {
        record.committed(outcome)
    } else {
        record.rolled_back(outcome)
    };
    state.save_boot_record(&next)?;
    Ok(next)
}

/// Step 6: the outcome's report was acknowledged by the hub.
pub fn mark_outcome_reported(state: &StateDir) -> Result<(), StorageError> {
    if let Some(record) = state.load_boot_record()?
        && record
            .last_update
            .as_ref()
            .is_some_and(|outcome| !outcome.reported)
    {
        state.save_boot_record(&record.with_outcome_reported())?;
    }
    Ok(())
}

/// Steps 2 and 3: writes the verified image into the inactive slot and marks it tentative, then deletes the
/// download. Returns the slot. Refused while a trial is pending (the agent never starts an update then).
pub fn apply(
    state: &StateDir,
    image: &Path,
    manifest: &FirmwareManifest,
) -> Result<Slot, StorageError> {
    let record = state
        .load_boot_record()?
        .unwrap_or_else(BootRecord::factory);
    if let Some(tentative) = record.tentative {
        return Err(StorageError::Corrupt {
            path: state.boot_record_path(),
            what: "boot-control record",
            detail: format!("slot {tentative} is still on trial; an update cannot start now"),
        });
    }
    let slot = record.inactive_slot();
    state.write_slot(slot, image, manifest)?;
    state.save_boot_record(&record.with_tentative(slot))?;
    // The trial is decided; a leftover download is deleted at boot if this fails or is cut short.
    if let Err(error) = state.remove_download() {
        tracing::warn!(%error, "could not delete the applied download; the next boot will");
        #[cfg(test)]
        if matches!(error, StorageError::SimulatedCrash(_)) {
            return Err(error);
        }
    }
    Ok(slot)
}

/// SHA-256 (lowercase hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64), StorageError> {
    let mut file = fs::File::open(path).map_err(StorageError::io("open", path))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(StorageError::io("read", path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` atomically and durably: write `path.tmp`, fsync, rename, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = tmp_path(path);
    let mut file = fs::File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    file.write_all(bytes)
        .map_err(StorageError::io("write", &tmp))?;
    file.sync_all().map_err(StorageError::io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(StorageError::io("rename into place", path))?;
    sync_directory(path.parent().unwrap_or(Path::new(".")))
}

fn sync_file(path: &Path) -> Result<(), StorageError> {
    fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(StorageError::io("fsync", path))
}

/// Makes a directory's entries (a rename, a delete) durable.
pub(crate) fn sync_directory(path: &Path) -> Result<(), StorageError> {
    fs::File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(StorageError::io("fsync directory", path))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StorageError::io("read", path)(error)),
    }
}

fn remove_if_present(path: &Path) -> Result<bool, StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(StorageError::io("remove", path)(error)),
    }
}

#[cfg(test)]
mod tests;
