//! The running agent: boots (see [`state::boot`]), connects to the hub, reports, answers `firmwareUpdate`,
//! and runs one update or one trial at a time in the background.
//!
//! Tasks of one agent, all stopped by one [`CancellationToken`] and tracked by one [`TaskTracker`]:
//! - the **main task** ([`Agent::start`] spawns it) waits for a stop, a reboot request, or the connection
//!   ending for good, then stops the others;
//! - the **connection task** owns the [`DeviceClient`]: connects (retrying with backoff), registers the method
//!   handler, and sends reported patches in order from a bounded queue, retrying each until the hub
//!   acknowledges it. Nothing else waits on the hub: an update never stalls because reports are slow;
//! - at most one **update task** (download, verify, apply, then ask for a reboot) or **trial task** (health
//!   check, commit or roll back, report), guarded by the `activity` claim the method handler takes.
//!
//! Every change of the `boot.json` record goes through `boot_lock`, so the trial, the update and the marking
//! of a reported outcome never read-modify-write it at the same time. A download is cancellable at its
//! network waits; verification and apply always run to completion once started, so a stop never leaves
//! them half-done (and a crash is covered by the state machine in [`state`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleethub_device::{ConnectionState, DeviceClient, MethodRequest, MethodResponse, TwinError};
use fleethub_protocol::DeviceConnectionString;
use fleethub_protocol::firmware;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::download::{
    DeviceAuth, DownloadError, Downloader, backoff_delay, http_client, percent, redact,
};
use crate::error::{AgentError, StartError, StorageError, UpdateError, UpdateErrorCode};
use crate::health::run_health_check;
use crate::payload::{METHOD_NAME, STARTED_RESPONSE, parse_update_request};
use crate::report::{FirmwareState, FirmwareStatus, Timestamp, progress_patch, state_patch};
use crate::state::{
    self, BootReport, DownloadRecord, OutcomeKind, StateDir, Trial, apply, hash_file,
    mark_outcome_reported, resolve_trial,
};
use crate::verify::{Trust, check_announced_size, check_image, expected_image};

/// Reported patches waiting for the connection task. Progress patches are dropped when it is full.
const REPORT_QUEUE: usize = 64;
/// How long stopping waits for the tasks: a download stops at once, but an apply that started runs to the
/// end (copying an image), and an outcome report waits up to the shutdown grace for its acknowledgement.
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an update request waits for the previous update to finish reporting an outcome that is already
/// decided and durable (its report is on the way), instead of being refused as busy.
const FINISHING_WAIT: Duration = Duration::from_secs(10);
/// Reconnection backoff bounds while the hub is unreachable.
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// Why an agent's main task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentExit {
    /// An update was applied and the device must boot the tentative slot: the binary re-executes itself;
    /// in-process callers start a new agent with the same configuration.
    Reboot,
    /// [`RunningAgent::stop`] was called.
    Stopped,
}

/// The firmware update agent. See the crate docs.
pub struct Agent;

impl Agent {
    /// Boots (counting a trial boot, rolling back past the boot limit), then starts connecting and serving in
    /// the background. Fails only on configuration or state-directory errors; the hub being unreachable is
    /// retried in the background.
    pub async fn start(config: AgentConfig) -> Result<RunningAgent, StartError> {
        let parsed: DeviceConnectionString = config.connection_string.parse()?;
        let auth = DeviceAuth::from_connection_string(&parsed)?;
        firmware::check_name("model", &config.model).map_err(StartError::Model)?;
        firmware::check_name("version", &config.initial_version)
            .map_err(StartError::InitialVersion)?;
        let http = http_client(config.ca_pem.as_deref(), &config.download)?;
        let downloader = Downloader::new(http, auth, config.download.clone());
        let state_dir = StateDir::new(&config.state_dir);

        let boot_limit = config.boot_limit;
        let initial_version = config.initial_version.clone();
        let booting = state_dir.clone();
        let report = blocking(move || {
            state::boot(
                &booting,
                boot_limit,
                &initial_version,
                OffsetDateTime::now_utc(),
            )
        })
        .await?;
        if let Some(trial) = &report.trial {
            tracing::info!(slot = %trial.slot, version = %trial.manifest.version, boot_count = trial.boot_count, "booted a tentative slot");
        }

        let (initial, timestamps) = initial_state(&config, &report);
        let (firmware, firmware_receiver) = watch::channel(initial);
        let (reports, report_queue) = mpsc::channel(REPORT_QUEUE);
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            trust: Trust {
                public_key: config.public_key,
                model: config.model.clone(),
            },
            config,
            state: state_dir,
            downloader,
            firmware,
            reports,
            activity: Mutex::new(None),
            finishing: AtomicBool::new(false),
            released: Notify::new(),
            boot_lock: tokio::sync::Mutex::new(()),
            reboot: CancellationToken::new(),
            stop: stop.clone(),
            tasks: TaskTracker::new(),
        });
        let main = tokio::spawn(run(shared, report, timestamps, report_queue));
        Ok(RunningAgent {
            firmware: firmware_receiver,
            stop,
            main,
        })
    }
}

/// A started agent.
pub struct RunningAgent {
    firmware: watch::Receiver<FirmwareState>,
    stop: CancellationToken,
    main: JoinHandle<Result<AgentExit, AgentError>>,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RunningAgent")
            .field("firmware", &*self.firmware.borrow())
            .finish_non_exhaustive()
    }
}

impl RunningAgent {
    /// A handle that stops the agent from elsewhere (a signal handler) while [`wait`](Self::wait) runs.
    pub fn stopper(&self) -> AgentStopper {
        AgentStopper {
            stop: self.stop.clone(),
        }
    }

    /// The `firmware` state as last set (reported, or queued to be).
    pub fn firmware(&self) -> watch::Receiver<FirmwareState> {
        self.firmware.clone()
    }

    /// Waits until the agent stops: [`AgentExit::Reboot`] after an update was applied,
    /// [`AgentExit::Stopped`] after [`stop`](Self::stop), or an error when the connection ended for good.
    pub async fn wait(self) -> Result<AgentExit, AgentError> {
        self.main
            .await
            .unwrap_or_else(|error| Err(AgentError::Task(error.to_string())))
    }

    /// Stops the agent: a download in progress stops where it is (and resumes at the next start), a health
    /// check is killed (the next start counts another boot), queued reports are sent within the shutdown
    /// grace, and the device disconnects.
    pub async fn stop(self) -> Result<AgentExit, AgentError> {
        self.stop.cancel();
        self.wait().await
    }
}

/// Stops a [`RunningAgent`]; see [`RunningAgent::stop`].
#[derive(Debug, Clone)]
pub struct AgentStopper {
    stop: CancellationToken,
}

impl AgentStopper {
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Runs agents until `stop` resolves, rebooting in-process: when an update asks for a reboot, a new agent is
/// started with the same configuration (what the binary does with `exec`). For `fleethub demo` and tests.
pub async fn run_in_process(
    config: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut stop = std::pin::pin!(stop);
    loop {
        let agent = Agent::start(config.clone()).await?;
        let stopper = agent.stop.clone();
        let mut waiting = std::pin::pin!(agent.wait());
        let exit = tokio::select! {
            exit = &mut waiting => exit?,
            () = &mut stop => {
                stopper.cancel();
                waiting.await?
            }
        };
        match exit {
            AgentExit::Reboot => tracing::info!("rebooting into the new firmware (in-process)"),
            AgentExit::Stopped => return Ok(()),
        }
    }
}

struct Shared {
    config: AgentConfig,
    state: StateDir,
    trust: Trust,
    downloader: Downloader,
    firmware: watch::Sender<FirmwareState>,
    reports: mpsc::Sender<Outgoing>,
    /// What the agent is busy with (an update, a trial), refusing another update meanwhile.
    activity: Mutex<Option<String>>,
    /// Set once the running trial's outcome is decided and durable, while only its report is still going
    /// out: a new update then waits for [`Shared::release`] instead of being refused.
    finishing: AtomicBool,
    /// Woken by [`Shared::release`].
    released: Notify,
    /// Serialises read-modify-writes of `boot.json`.
    boot_lock: tokio::sync::Mutex<()>,
    reboot: CancellationToken,
    stop: CancellationToken,
    tasks: TaskTracker,
}

enum Outgoing {
    Patch {
        patch: Value,
        acknowledged: Option<oneshot::Sender<()>>,
    },
    /// Send what is queued before this, then disconnect.
    Close,
}

impl Shared {
    /// Takes the update slot; `Err` says what the agent is already doing.
    fn claim(&self, activity: String) -> Result<(), String> {
        let mut current = self
            .activity
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match &*current {
            Some(busy) => Err(busy.clone()),
            None => {
                *current = Some(activity);
                Ok(())
            }
        }
    }

    fn release(&self) {
        *self
            .activity
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = None;
        self.finishing.store(false, Ordering::Release);
        self.released.notify_waiters();
    }

    /// [`Shared::claim`], but when the agent is only finishing the report of a decided outcome, waits (up
    /// to [`FINISHING_WAIT`]) for that to end first: the service saw the outcome on the twin and may well
    /// send the next update before the agent has noted that the report went out.
    async fn claim_after_finishing(&self, activity: String) -> Result<(), String> {
        let waited = tokio::time::timeout(FINISHING_WAIT, async {
            loop {
                // Registered before the check, so a release in between is not missed.
                let released = self.released.notified();
                if !self.finishing.load(Ordering::Acquire) {
                    return;
                }
                released.await;
            }
        });
        let _ = waited.await;
        self.claim(activity)
    }

    fn set_state(&self, change: impl FnOnce(&mut FirmwareState)) {
        self.firmware.send_modify(change);
    }

    /// Queues the full state patch, waiting for room (status changes are never dropped) unless the agent
    /// is stopping: the next start reports the state again anyway.
    async fn report_state(&self, timestamps: &[(Timestamp, OffsetDateTime)]) {
        let patch = state_patch(&self.firmware.borrow(), timestamps);
        let queued = self.reports.send(Outgoing::Patch {
            patch,
            acknowledged: None,
        });
        tokio::select! {
            _ = queued => {}
            () = self.stop.cancelled() => {}
        }
    }

    /// Queues the full state patch and waits until the hub acknowledged it; once the agent is stopping, for
    /// at most the shutdown grace (`false` if it did not come).
    async fn report_state_acknowledged(&self, timestamps: &[(Timestamp, OffsetDateTime)]) -> bool {
        let patch = state_patch(&self.firmware.borrow(), timestamps);
        let (acknowledged, done) = oneshot::channel();
        let queued = self.reports.send(Outgoing::Patch {
            patch,
            acknowledged: Some(acknowledged),
        });
        if queued.await.is_err() {
            return false;
        }
        let mut done = std::pin::pin!(done);
        tokio::select! {
            done = &mut done => return done.is_ok(),
            () = self.stop.cancelled() => {}
        }
        matches!(
            tokio::time::timeout(self.config.shutdown_grace, done).await,
            Ok(Ok(()))
        )
    }
}

/// The state reported right after booting, and the timestamps that go with it.
fn initial_state(
    config: &AgentConfig,
    report: &BootReport,
) -> (FirmwareState, Vec<(Timestamp, OffsetDateTime)>) {
    let mut state = FirmwareState {
        model: config.model.clone(),
        current_version: report.committed_version.clone(),
        target_version: None,
        status: FirmwareStatus::StandBy,
        progress: None,
        slot: report.record.booted_slot(),
        error: None,
    };
    let mut timestamps = Vec::new();
    let pending_outcome = report
        .record
        .last_update
        .as_ref()
        .filter(|outcome| !outcome.reported);
    // A trial or its outcome comes after a complete download.
    if let Some(trial) = &report.trial {
        state.status = FirmwareStatus::Applying;
        state.target_version = Some(trial.manifest.version.clone());
        state.progress = Some(100);
    } else if let Some(outcome) = pending_outcome {
        state.target_version = Some(outcome.version.clone());
        state.progress = Some(100);
        state.error = outcome.error.clone();
        state.status = match outcome.result {
            OutcomeKind::Completed => {
                timestamps.push((Timestamp::LastFirmwareUpdate, outcome.time));
                FirmwareStatus::Completed
            }
            OutcomeKind::RolledBack => FirmwareStatus::RolledBack,
        };
    } else if let Some(download) = &report.resume {
        state.status = FirmwareStatus::Downloading;
        state.target_version = download_target(download);
    }
    (state, timestamps)
}

fn download_target(record: &DownloadRecord) -> Option<String> {
    record.requested_version.clone().or_else(|| {
        record
            .payload_manifest
            .as_deref()
            .and_then(|jws| firmware::read_unverified(jws).ok())
            .map(|manifest| manifest.version)
    })
}

async fn run(
    shared: Arc<Shared>,
    report: BootReport,
    timestamps: Vec<(Timestamp, OffsetDateTime)>,
    report_queue: mpsc::Receiver<Outgoing>,
) -> Result<AgentExit, AgentError> {
    let mut connection = tokio::spawn(connection_task(Arc::clone(&shared), report_queue));

    let pending_outcome = report
        .record
        .last_update
        .as_ref()
        .is_some_and(|outcome| !outcome.reported);
    if let Some(trial) = report.trial {
        shared.report_state(&timestamps).await;
        let activity = format!(
            "the device is checking the health of firmware {} in slot {}",
            trial.manifest.version, trial.slot
        );
        // Nothing else runs yet, so the claim cannot fail.
        let _ = shared.claim(activity);
        shared.tasks.spawn(trial_task(Arc::clone(&shared), trial));
    } else if pending_outcome {
        let outcome_shared = Arc::clone(&shared);
        shared.tasks.spawn(async move {
            if outcome_shared.report_state_acknowledged(&timestamps).await {
                mark_reported(&outcome_shared).await;
            }
        });
    } else if let Some(download) = report.resume {
        let target = download_target(&download).unwrap_or_else(|| redact(&download.url));
        let _ = shared.claim(format!("a firmware update to {target} is already running"));
        tracing::info!(url = %redact(&download.url), bytes = download.bytes, "resuming an interrupted download");
        shared
            .tasks
            .spawn(update_task(Arc::clone(&shared), download));
    } else {
        shared.report_state(&timestamps).await;
    }

    let exit = tokio::select! {
        () = shared.stop.cancelled() => Ok(AgentExit::Stopped),
        () = shared.reboot.cancelled() => Ok(AgentExit::Reboot),
        ended = &mut connection => match ended {
            Ok(Ok(())) => Ok(AgentExit::Stopped),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(AgentError::Task(error.to_string())),
        },
    };

    // Stop what runs; downloads stop at their next network wait, applies finish.
    shared.stop.cancel();
    shared.tasks.close();
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(TASKS_STOP_TIMEOUT, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("agent tasks did not stop in time");
    }
    if !connection.is_finished() {
        let closed = async {
            let _ = shared.reports.send(Outgoing::Close).await;
            let _ = (&mut connection).await;
        };
        if tokio::time::timeout(grace, closed).await.is_err() {
            tracing::warn!("reports not delivered within the shutdown grace; disconnecting");
            connection.abort();
        }
    }
    exit
}

/// Owns the device client: connects, registers the method handler, then delivers reported patches in order.
async fn connection_task(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Outgoing>,
) -> Result<(), AgentError> {
    let Some(client) = connect(&shared).await? else {
        return Ok(());
    };
    let mut connection_state = client.connection_state();
    loop {
        let item = tokio::select! {
            item = queue.recv() => item,
            changed = connection_state.changed() => {
                ended(changed.is_err(), &connection_state)?;
                continue;
            }
        };
        let (patch, acknowledged) = match item {
            None | Some(Outgoing::Close) => {
                if let Err(error) = client.disconnect().await {
                    tracing::debug!(%error, "disconnecting");
                }
                return Ok(());
            }
            Some(Outgoing::Patch {
                patch,
                acknowledged,
            }) => (patch, acknowledged),
        };
        let mut failures = 0;
        loop {
            match client.patch_reported(&patch).await {
                Ok(_version) => {
                    if let Some(acknowledged) = acknowledged {
                        let _ = acknowledged.send(());
                    }
                    break;
                }
                Err(error @ (TwinError::Status { .. } | TwinError::InvalidResponse(_))) => {
                    // The hub refuses this patch; sending it again cannot help.
                    tracing::error!(%error, %patch, "the hub refused a reported patch");
                    break;
                }
                Err(error) => {
                    ended(false, &connection_state)?;
                    failures += 1;
                    let delay =
                        backoff_delay(failures, CONNECT_BACKOFF.0, CONNECT_BACKOFF.1, random());
                    tracing::warn!(%error, ?delay, "reporting failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// `Err` when the client has stopped for good.
fn ended(
    sender_gone: bool,
    connection_state: &watch::Receiver<ConnectionState>,
) -> Result<(), AgentError> {
    match &*connection_state.borrow() {
        ConnectionState::Disconnected(reason) => Err(AgentError::Disconnected(reason.clone())),
        _ if sender_gone => Err(AgentError::Task("the device client stopped".into())),
        _ => Ok(()),
    }
}

fn random() -> u64 {
    getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// Connects and registers the method handler, retrying with backoff until it works, the agent stops
/// (`None`), or the error is one retrying cannot fix.
async fn connect(shared: &Arc<Shared>) -> Result<Option<DeviceClient>, AgentError> {
    let mut failures = 0;
    loop {
        let connecting = DeviceClient::connect(
            &shared.config.connection_string,
            shared.config.device_options.clone(),
        );
        let result = tokio::select! {
            () = shared.stop.cancelled() => return Ok(None),
            result = connecting => result,
        };
        let reason = match result {
            Ok(client) => {
                let handler_shared = Arc::clone(shared);
                let registered = client
                    .on_method(move |request| {
                        let shared = Arc::clone(&handler_shared);
                        async move { handle_method(shared, request).await }
                    })
                    .await;
                match registered {
                    Ok(()) => {
                        tracing::info!(client_id = %client.client_id(), "connected to the hub");
                        return Ok(Some(client));
                    }
                    Err(error) => {
                        let _ = client.disconnect().await;
                        format!("subscribing to direct methods failed: {error}")
                    }
                }
            }
            Err(error) if error.is_permanent() => return Err(AgentError::Connect(error)),
            Err(error) => error.to_string(),
        };
        failures += 1;
        let delay = backoff_delay(failures, CONNECT_BACKOFF.0, CONNECT_BACKOFF.1, random());
        tracing::warn!(%reason, ?delay, "cannot connect to the hub; retrying");
        tokio::select! {
            () = shared.stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn response(status: i32, text: impl Into<String>) -> MethodResponse {
    MethodResponse::new(status, json!({ "Response": text.into() }))
}

/// `firmwareUpdate`: validates, claims the update slot, records the download durably, starts the update
/// in the background, and answers at once.
async fn handle_method(shared: Arc<Shared>, request: MethodRequest) -> MethodResponse {
    if request.method_name != METHOD_NAME {
        return response(
            404,
            format!(
                "unknown method {:?}; this device implements {METHOD_NAME}",
                request.method_name
            ),
        );
    }
    let update = match parse_update_request(&request.payload) {
        Ok(update) => update,
        Err(message) => return response(400, message),
    };
    if let Some((_, manifest)) = &update.manifest
        && manifest.model != shared.config.model
    {
        return response(
            409,
            format!(
                "the manifest is for model {:?}; this device is model {:?}",
                manifest.model, shared.config.model
            ),
        );
    }
    if shared.stop.is_cancelled() {
        return response(503, "the agent is restarting; try again");
    }
    let target = update
        .target_version()
        .map(str::to_owned)
        .unwrap_or_else(|| redact(update.url.as_str()));
    if let Err(busy) = shared
        .claim_after_finishing(format!("a firmware update to {target} is already running"))
        .await
    {
        return response(409, busy);
    }
    let record = DownloadRecord::new(
        update.url.to_string(),
        update.version.clone(),
        update.manifest.map(|(jws, _)| jws),
        OffsetDateTime::now_utc(),
    );
    let state = shared.state.clone();
    let begun = record.clone();
    if let Err(error) = blocking(move || state.begin_download(&begun)).await {
        shared.release();
        tracing::error!(%error, "cannot record the update");
        return response(500, format!("cannot start the update: {error}"));
    }
    tracing::info!(url = %redact(&record.url), %target, "firmware update started");
    shared.tasks.spawn(update_task(Arc::clone(&shared), record));
    response(200, STARTED_RESPONSE)
}

enum UpdateFailure {
    Failed(UpdateError),
    Cancelled,
}

impl From<UpdateError> for UpdateFailure {
    fn from(error: UpdateError) -> Self {
        Self::Failed(error)
    }
}

impl From<StorageError> for UpdateFailure {
    fn from(error: StorageError) -> Self {
        Self::Failed(error.into())
    }
}

async fn update_task(shared: Arc<Shared>, record: DownloadRecord) {
    match update(&shared, record).await {
        Ok(()) => {
            // Keeps the claim: nothing else starts before the reboot.
            shared.reboot.cancel();
        }
        Err(UpdateFailure::Cancelled) => {
            tracing::info!("the download stops here and resumes at the next start");
        }
        Err(UpdateFailure::Failed(error)) => {
            tracing::warn!(code = %error.code, reason = %error.reason, "firmware update failed");
            let state = shared.state.clone();
            if let Err(removing) = blocking(move || state.remove_download()).await {
                tracing::error!(error = %removing, "cannot delete the failed download");
            }
            shared.set_state(|state| {
                state.status = FirmwareStatus::Failed;
                state.error = Some(error);
            });
            shared.report_state(&[]).await;
            shared.release();
        }
    }
}

/// Download, verify, apply. `Ok` means the slot is tentative and the device must reboot.
async fn update(shared: &Shared, mut record: DownloadRecord) -> Result<(), UpdateFailure> {
    shared.set_state(|state| {
        state.status = FirmwareStatus::Downloading;
        state.target_version = download_target(&record);
        state.progress = Some(0);
        state.error = None;
    });
    shared.report_state(&[]).await;

    let trust = &shared.trust;
    let check_headers = |record: &DownloadRecord| -> Result<(), UpdateError> {
        let expected = expected_image(trust, record)?;
        if let Some(total) = record.total {
            check_announced_size(&expected, total)?;
        }
        Ok(())
    };
    // The `downloading` patch above said 0 %.
    let mut last_reported = Some(0);
    let mut on_progress = |bytes: u64, total: Option<u64>| {
        let reached = percent(bytes, total);
        if reached.is_none() || reached == last_reported {
            return;
        }
        last_reported = reached;
        shared.set_state(|state| state.progress = reached);
        if let Some(reached) = reached {
            // Progress is best effort: when reports queue up, a later one says more anyway.
            let _ = shared.reports.try_send(Outgoing::Patch {
                patch: progress_patch(reached),
                acknowledged: None,
            });
        }
    };
    shared
        .downloader
        .download(
            &shared.state,
            &mut record,
            &shared.stop,
            &check_headers,
            &mut on_progress,
        )
        .await
        .map_err(|error| match error {
            DownloadError::Failed(error) => UpdateFailure::Failed(error),
            DownloadError::Cancelled => UpdateFailure::Cancelled,
        })?;

    let expected = expected_image(trust, &record)?;
    shared.set_state(|state| {
        state.progress = Some(100);
        state.target_version = Some(expected.version.clone());
    });
    shared
        .report_state(&[(Timestamp::DownloadComplete, OffsetDateTime::now_utc())])
        .await;

    let partial = shared.state.partial_path();
    let (sha256, size) = blocking(move || hash_file(&partial)).await?;
    let manifest = check_image(
        &expected,
        &shared.config.model,
        &sha256,
        size,
        OffsetDateTime::now_utc(),
    )?;

    let guard = shared.boot_lock.lock().await;
    let state = shared.state.clone();
    let image = shared.state.partial_path();
    let applied = manifest.clone();
    let slot = blocking(move || apply(&state, &image, &applied)).await?;
    drop(guard);
    tracing::info!(%slot, version = %manifest.version, "firmware written and marked tentative; rebooting");

    shared.set_state(|state| state.status = FirmwareStatus::Applying);
    shared
        .report_state(&[(Timestamp::StartedApplyingImage, OffsetDateTime::now_utc())])
        .await;
    Ok(())
}

/// Health-checks the booted tentative slot, then commits or rolls back and reports the outcome.
async fn trial_task(shared: Arc<Shared>, trial: Trial) {
    let command = trial
        .manifest
        .health_check
        .clone()
        .or_else(|| shared.config.health_check.clone());
    let failure = match command {
        None => None,
        Some(command) => {
            let check = run_health_check(
                &command,
                trial.slot,
                &trial.manifest.version,
                shared.state.root(),
                shared.config.health_check_timeout,
            );
            tokio::select! {
                // The next start counts another boot and checks again.
                () = shared.stop.cancelled() => return,
                verdict = check => verdict
                    .err()
                    .map(|reason| UpdateError::new(UpdateErrorCode::HealthCheckFailed, reason)),
            }
        }
    };

    let guard = shared.boot_lock.lock().await;
    let state = shared.state.clone();
    let decided = trial.clone();
    let verdict = failure.clone();
    let resolved =
        blocking(move || resolve_trial(&state, &decided, verdict, OffsetDateTime::now_utc())).await;
    drop(guard);
    let record = match resolved {
        Ok(record) => record,
        Err(error) => {
            // Undecided: reboot, so the boot step counts another try and the trial is decided again (or,
            // past the boot limit, rolled back; a boot record that cannot be written stops the agent there).
            tracing::error!(%error, "cannot record the trial's outcome; rebooting to try again");
            shared.reboot.cancel();
            return;
        }
    };
    // Decided and durable: what is left is reporting it.
    shared.finishing.store(true, Ordering::Release);
    let now = OffsetDateTime::now_utc();
    let mut timestamps = Vec::new();
    match &failure {
        None => {
            tracing::info!(slot = %trial.slot, version = %trial.manifest.version, "firmware committed");
            shared.set_state(|state| {
                state.status = FirmwareStatus::Completed;
                state.current_version = trial.manifest.version.clone();
                state.slot = record.active;
                state.error = None;
            });
            timestamps.push((Timestamp::LastFirmwareUpdate, now));
        }
        Some(error) => {
            tracing::warn!(slot = %trial.slot, version = %trial.manifest.version, reason = %error.reason, "firmware rolled back");
            shared.set_state(|state| {
                state.status = FirmwareStatus::RolledBack;
                state.slot = record.active;
                state.error = Some(error.clone());
            });
        }
    }
    if shared.report_state_acknowledged(&timestamps).await {
        mark_reported(&shared).await;
    }
    shared.release();
}

async fn mark_reported(shared: &Shared) {
    let _guard = shared.boot_lock.lock().await;
    let state = shared.state.clone();
    if let Err(error) = blocking(move || mark_outcome_reported(&state)).await {
        tracing::warn!(%error, "cannot record that the outcome was reported; it will be reported again");
    }
}

/// Runs storage work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(StorageError::Task(error.to_string())))
}
