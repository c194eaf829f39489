//! Firmware rollouts (docs/firmware.md, "Rollouts"): the [`RolloutService`] that creates, reads, lists,
//! pauses, resumes, approves and aborts rollouts, each run on the rollout machine
//! (`fleethub_core::rollout`, on the fleet executor) by its own task, and resumes them after a restart.
//!
//! # How a rollout runs
//!
//! One tokio task per rollout (`runner.rs`), as for jobs: its machine, its attempts in flight and its
//! write-ahead batch belong to that task alone, driven by a closed enum of events (wakeup, batch durable,
//! attempt started, fleet events, command, shutdown). At its start the task freezes the target set: the
//! devices matching `(targetCondition) AND properties.reported.firmware.model = '<artifact's model>'` (the
//! hub serves an artifact only to devices of its model), shuffled with the rollout's seed and cut into
//! waves; every device's record is saved (pending, with its wave and position) before any device starts.
//!
//! **An attempt** (`attempt.rs`): look at the device's reported firmware (a device already at the version
//! succeeds at once; one of another model fails with `ModelMismatch`), record a grant for it (source
//! `rollout:<id>`, lasting the device timeout) and call `firmwareUpdate` with
//! `{"fwPackageUri": <the grant's signed URL>, "version", "manifest"}`. Once the device accepted, the
//! attempt lasts until the device *reports* how the update ended: `firmware.targetVersion` equal to the
//! version and `firmware.status` (or the reference workflow's `firmwareStatus`) `completed` (success),
//! `failed` or `rolledBack` (failure with the agent's `firmware.error`), in a change record after the
//! attempt began; or until the device timeout. Reports are pushed: one follower task reads the change feed
//! for all rollouts (`feed.rs`) and broadcasts connections and firmware reports; nothing polls twins.
//!
//! **Offline devices**: a device without a session is found offline at once (no attempt counted, no
//! grant); it waits, pending, until the feed reports it connected (then it starts, with a grace period to
//! subscribe to methods) or until the offline timeout fails it with `DeviceNotOnline`.
//!
//! **Write-ahead**: the records of every poll of the machine are durable before the attempts it started
//! begin, in batches (as jobs do). A command (pause, resume, approve, abort) is answered once its effect
//! (the rollout row, and the devices it cancelled) is durable.
//!
//! **Progress is pushed**: the store appends a `deviceRolloutUpdated` change record for each durable status
//! change of a device and a `rolloutUpdated` record when the rollout's status, current wave, a wave's status
//! or its end changes (`GET /changes?rolloutId=`, the SDK's `watch_rollout`, `fleethub rollout watch`).
//! `GET /firmware/rollouts/{id}` shows a running rollout's live counts on its stored row: the status, waves
//! and times are always the row's, so `GET` never says less than the change record a reader was woken by.
//!
//! # Restarts
//!
//! At start every unfinished rollout is resumed from its records (`RolloutExecution::restore`). A device
//! whose update was under way is followed again, not counted as failed: its next attempt first reads what
//! it reports (an update to this version in progress is followed, an outcome is taken). A rollout stopped
//! while freezing its targets freezes them again. On shutdown a rollout stops starting devices and ends its
//! task once the devices it was asking have answered and its last batch is durable; devices keep updating
//! and are followed again after the restart (an attempt made again after a restart never asks its device
//! twice, see `attempt.rs`). A finished rollout revokes its grants.

mod attempt;
mod feed;
mod runner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleethub_core::rollout::{RolloutCommandError, RolloutSpec, RolloutState};
use fleethub_protocol::ids::RolloutId;
use fleethub_protocol::rollouts::{Rollout, RolloutRequest, RolloutStatus};
use fleethub_query::Source;
use fleethub_store::{RolloutFilter, RolloutRecord, StoreError};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::artifacts::ArtifactService;
use crate::services::Services;
pub use attempt::{FIRMWARE_UPDATE_METHOD, error_codes};
use runner::{LiveCounts, RolloutCommand, RolloutTask};

/// What a command asks of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Approve,
    Abort,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Approve => "approve",
            RolloutAction::Abort => "abort",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateRolloutError {
    /// The request breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// `ArtifactNotFound` (404), `RolloutAlreadyExists` (409), storage failures.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutActionError {
    /// The rollout's status does not allow it (409).
    #[error("cannot {} rollout {rollout_id}: {reason}", action.as_str())]
    Conflict {
        rollout_id: RolloutId,
        action: RolloutAction,
        reason: RolloutCommandError,
    },
    /// The hub is stopping (503).
    #[error("cannot {} rollout {rollout_id}: the hub is stopping", action.as_str())]
    Stopping {
        rollout_id: RolloutId,
        action: RolloutAction,
    },
    /// `RolloutNotFound` (404), storage failures.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rollout running in this process.
struct LiveRollout {
    commands: mpsc::Sender<RolloutCommand>,
    /// Its machine's counts, ahead of the stored ones by at most a write-ahead batch.
    counts: watch::Receiver<LiveCounts>,
}

/// Runs rollouts; see the module docs.
pub struct RolloutService {
    services: Arc<Services>,
    artifacts: Arc<ArtifactService>,
    live: Mutex<HashMap<RolloutId, LiveRollout>>,
    fleet: broadcast::Sender<feed::FleetEvents>,
    stop: CancellationToken,
    /// How long stopping rollouts may wait for the devices they are asking.
    drain_until: Mutex<Option<tokio::time::Instant>>,
    tasks: TaskTracker,
}

impl RolloutService {
    /// Starts the change-feed follower and resumes every unfinished rollout. Stops with `stop` (or when
    /// `shutdown` is cancelled).
    pub async fn start(
        services: Arc<Services>,
        artifacts: Arc<ArtifactService>,
        shutdown: &CancellationToken,
    ) -> Result<Arc<RolloutService>, StoreError> {
        let (fleet, _) = broadcast::channel(feed::FLEET_EVENT_BATCHES);
        let service = Arc::new(RolloutService {
            services,
            artifacts,
            live: Mutex::new(HashMap::new()),
            fleet,
            stop: shutdown.child_token(),
            drain_until: Mutex::new(None),
            tasks: TaskTracker::new(),
        });
        service.tasks.spawn(feed::follow_changes(
            Arc::clone(&service.services.store),
            service.fleet.clone(),
            service.stop.clone(),
        ));
        service.resume().await?;
        Ok(service)
    }

    /// Stops every rollout and waits for them, up to `grace`: each starts no device, lets the devices it is
    /// asking answer (up to half the grace), and ends once its last write is durable.
    pub async fn stop(&self, grace: Duration) {
        *self.drain_until.lock().expect("drain lock poisoned") =
            Some(tokio::time::Instant::now() + grace / 2);
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("rollouts still running after the shutdown grace period");
        }
    }

    /// `PUT /firmware/rollouts/{id}`: checks the request, stores the rollout (`running`) and starts its task.
    pub async fn create(
        self: &Arc<Self>,
        rollout_id: RolloutId,
        mut request: RolloutRequest,
    ) -> Result<Rollout, CreateRolloutError> {
        if let Some(body_id) = &request.rollout_id
            && body_id != &rollout_id
        {
            return Err(CreateRolloutError::Invalid(format!(
                "the body's rolloutId {:?} differs from the rollout id in the path {:?}",
                body_id.as_str(),
                rollout_id.as_str()
            )));
        }
        let seed = *request.seed.get_or_insert_with(random_seed);
        let spec = RolloutSpec::from_request(&request).map_err(CreateRolloutError::Invalid)?;
        fleethub_query::parse_condition(&spec.target_condition, Source::Devices)
            .map_err(|error| CreateRolloutError::Invalid(format!("targetCondition: {error}")))?;
        let now = self.services.now();
        let rollout = runner::initial_rollout(rollout_id, &spec, seed, now);
        let record = RolloutRecord {
            rollout: rollout.clone(),
            state: serde_json::to_value(RolloutState::default())
                .expect("a rollout state always serialises"),
        };
        // Checks, in its transaction, that the artifacts exist.
        self.services.store.create_rollout(record.clone()).await?;
        self.launch(record, spec);
        Ok(rollout)
    }

    /// `GET /firmware/rollouts/{id}`: the stored rollout, with the live counts of a running one.
    pub async fn get(&self, rollout_id: &RolloutId) -> Result<Rollout, StoreError> {
        let rollout = self
            .services
            .store
            .get_rollout(rollout_id)
            .await?
            .ok_or_else(|| StoreError::RolloutNotFound(rollout_id.clone()))?
            .rollout;
        Ok(self.with_live_counts(rollout))
    }

    /// `GET /firmware/rollouts[?status=]`: every rollout (in a status), by id.
    pub async fn list(&self, status: Option<RolloutStatus>) -> Result<Vec<Rollout>, StoreError> {
        let mut rollouts = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .services
                .store
                .list_rollouts(RolloutFilter {
                    status,
                    after: after.take(),
                    limit: 500,
                })
                .await?;
            let exhausted = page.len() < 500;
            after = page.last().map(|record| record.rollout.rollout_id.clone());
            rollouts.extend(
                page.into_iter()
                    .map(|record| self.with_live_counts(record.rollout)),
            );
            if exhausted {
                return Ok(rollouts);
            }
        }
    }

    /// `POST /firmware/rollouts/{id}/{pause|resume|approve|abort}`: answers with the rollout once the change
    /// is durable.
    pub async fn act(
        &self,
        rollout_id: &RolloutId,
        action: RolloutAction,
    ) -> Result<Rollout, RolloutActionError> {
        let commands = self
            .live
            .lock()
            .expect("live rollouts lock poisoned")
            .get(rollout_id)
            .map(|live| live.commands.clone());
        if let Some(commands) = commands {
            let (reply, answer) = oneshot::channel();
            if commands
                .send(RolloutCommand { action, reply })
                .await
                .is_ok()
                && let Ok(answer) = answer.await
            {
                return answer.map_err(|reason| RolloutActionError::Conflict {
                    rollout_id: rollout_id.clone(),
                    action,
                    reason,
                });
            }
        }
        // No task: the rollout ended (or the hub stops).
        let rollout = self
            .services
            .store
            .get_rollout(rollout_id)
            .await?
            .ok_or_else(|| StoreError::RolloutNotFound(rollout_id.clone()))?
            .rollout;
        if rollout.status.is_final() {
            return Err(RolloutActionError::Conflict {
                rollout_id: rollout_id.clone(),
                action,
                reason: RolloutCommandError::Over(rollout.status),
            });
        }
        Err(RolloutActionError::Stopping {
            rollout_id: rollout_id.clone(),
            action,
        })
    }

    /// The rollouts running in this process and their devices, for `GET /metrics`.
    pub fn active_work(&self) -> crate::metrics::FleetWork {
        let mut work = crate::metrics::FleetWork::default();
        for live in self
            .live
            .lock()
            .expect("live rollouts lock poisoned")
            .values()
        {
            let s = live.counts.borrow().statistics();
            work.add(s.pending, s.running, s.succeeded, s.failed, s.cancelled);
        }
        work
    }

    /// A stored rollout with its task's counts, if it runs here. Only the counts: the status, waves and
    /// times stay the row's, which a reader woken by the row's change record must see (the change feed
    /// announces a write before the task even learns that it is durable).
    fn with_live_counts(&self, mut rollout: Rollout) -> Rollout {
        if let Some(live) = self
            .live
            .lock()
            .expect("live rollouts lock poisoned")
            .get(&rollout.rollout_id)
        {
            live.counts.borrow().apply_to(&mut rollout);
        }
        rollout
    }

    async fn resume(self: &Arc<Self>) -> Result<(), StoreError> {
        for mut record in self.services.store.list_unfinished_rollouts().await? {
            match RolloutSpec::of_rollout(&record.rollout) {
                Ok(spec) => {
                    tracing::info!(rollout = %record.rollout.rollout_id, status = record.rollout.status.as_str(), "resuming rollout");
                    self.launch(record, spec);
                }
                Err(reason) => {
                    tracing::error!(rollout = %record.rollout.rollout_id, %reason, "cannot resume rollout");
                    record.rollout.status = RolloutStatus::Aborted;
                    record.rollout.end_time = Some(self.services.now());
                    record.rollout.status_message = Some(format!(
                        "aborted: the stored rollout cannot be read: {reason}"
                    ));
                    self.services.store.update_rollout(record).await?;
                }
            }
        }
        Ok(())
    }

    fn launch(self: &Arc<Self>, record: RolloutRecord, spec: RolloutSpec) {
        let (commands, command_receiver) = mpsc::channel(16);
        let (counts, counts_receiver) = watch::channel(LiveCounts::of_rollout(&record.rollout));
        self.live
            .lock()
            .expect("live rollouts lock poisoned")
            .insert(
                record.rollout.rollout_id.clone(),
                LiveRollout {
                    commands,
                    counts: counts_receiver,
                },
            );
        let task = RolloutTask::new(Arc::clone(self), record, spec, command_receiver, counts);
        self.tasks.spawn(task.run());
    }

    fn drain_deadline(&self) -> tokio::time::Instant {
        self.drain_until
            .lock()
            .expect("drain lock poisoned")
            .unwrap_or_else(tokio::time::Instant::now)
    }

    /// A rollout's task ended.
    fn forget(&self, rollout_id: &RolloutId) {
        self.live
            .lock()
            .expect("live rollouts lock poisoned")
            .remove(rollout_id);
    }
}

/// A seed within JSON's exact integers (53 bits), so any client reads it back unchanged.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    u64::from_le_bytes(bytes) & ((1 << 53) - 1)
}
