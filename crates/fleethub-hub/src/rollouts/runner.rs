//! One rollout's task: freezes its targets (or restores them), then drives its `RolloutExecution` (the loop
//! of the executor's module docs, with write-ahead batches) until it finishes or the hub stops. Every store
//! write here is retried until it succeeds or the hub stops: a rollout never skips a record.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleethub_core::executor::{Outcome, TargetError, TargetStatus};
use fleethub_core::identity::IdentityKey;
use fleethub_core::rollout::{
    PhaseAttempt, REATTACH, RolloutCommandError, RolloutExecution, RolloutSpec, RolloutState,
    RolloutTarget, wire_statistics,
};
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::ids::RolloutId;
use fleethub_protocol::rollouts::{
    Rollout, RolloutPhase, RolloutStatistics, RolloutStatus, WaveStatus, grant_source,
};
use fleethub_protocol::topics::Subscription;
use fleethub_query::Source;
use fleethub_store::{ChangeFilter, RolloutRecord, Store, StoreError, StoreResult};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attempt::{self, AttemptContext, Begin, Install, Started};
use super::feed::{FirmwareReport, FleetEvent, FleetEvents, events_of};
use super::{RolloutAction, RolloutService};
use crate::jobs::ONLINE_SUBSCRIBE_GRACE;
use crate::query::RunQueryError;

/// A command to a running rollout, from [`RolloutService`]; the reply comes once its effect is durable.
pub(super) struct RolloutCommand {
    pub action: RolloutAction,
    pub reply: oneshot::Sender<Result<Rollout, RolloutCommandError>>,
}

/// What wakes a rollout's loop.
enum RolloutEvent {
    /// The instant the machine asked for.
    Wakeup,
    /// The write-ahead batch in flight ended: durable, or abandoned because the hub stops.
    Saved(Result<StoreResult<()>, JoinError>),
    /// The first part of an attempt ended (or was aborted, or panicked).
    Started(Result<(tokio::task::Id, Started), JoinError>),
    /// Devices connected, or reported firmware, somewhere in the fleet.
    Fleet(Result<FleetEvents, broadcast::error::RecvError>),
    Command(RolloutCommand),
    /// The hub is stopping.
    Shutdown,
}

/// The rollout's wire shape before its targets are frozen: every wave pending, no counts.
pub(super) fn initial_rollout(
    rollout_id: RolloutId,
    spec: &RolloutSpec,
    seed: u64,
    now: OffsetDateTime,
) -> Rollout {
    let execution = RolloutExecution::start(spec.clone(), seed, Vec::new(), now).0;
    let mut rollout = render(&rollout_id, spec, seed, now, None, None, &execution);
    rollout.status = RolloutStatus::Running;
    rollout.current_wave = 0;
    rollout.status_message = Some("freezing the target set".into());
    for wave in &mut rollout.waves {
        wave.status = WaveStatus::Pending;
    }
    rollout
}

/// The rollout's wire shape for the machine's current state.
fn render(
    rollout_id: &RolloutId,
    spec: &RolloutSpec,
    seed: u64,
    created: OffsetDateTime,
    started: Option<OffsetDateTime>,
    ended: Option<OffsetDateTime>,
    execution: &RolloutExecution,
) -> Rollout {
    Rollout {
        rollout_id: rollout_id.clone(),
        artifact: spec.artifact.clone(),
        rollback: spec.rollback.clone(),
        target_condition: spec.target_condition.clone(),
        status: execution.status(),
        status_message: Some(execution.status_message()),
        created_time: created,
        start_time: started,
        end_time: ended,
        current_wave: execution.state().waves_started,
        waves: execution.wave_progress(),
        max_concurrency: spec.max_concurrency as u64,
        start_rate_per_second: spec.start_rate_per_second,
        device_timeout_in_seconds: spec.device_timeout.as_secs(),
        max_attempts: spec.max_attempts,
        retry_backoff_in_seconds: spec.retry_backoff.as_secs(),
        offline_timeout_in_seconds: spec.offline_timeout.map(|timeout| timeout.as_secs()),
        seed,
        statistics: wire_statistics(execution.statistics()),
        rollback_statistics: execution.rollback_statistics().map(wire_statistics),
    }
}

/// A running rollout's counts as its machine has them (ahead of the stored ones by at most a write-ahead
/// batch), for `GET` to show on the stored row.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct LiveCounts {
    statistics: RolloutStatistics,
    waves: Vec<RolloutStatistics>,
    rollback_statistics: Option<RolloutStatistics>,
}

impl LiveCounts {
    pub(super) fn of_rollout(rollout: &Rollout) -> Self {
        Self {
            statistics: rollout.statistics,
            waves: rollout.waves.iter().map(|wave| wave.statistics).collect(),
            rollback_statistics: rollout.rollback_statistics,
        }
    }

    fn of_execution(execution: &RolloutExecution) -> Self {
        Self {
            statistics: wire_statistics(execution.statistics()),
            waves: execution
                .wave_progress()
                .into_iter()
                .map(|wave| wave.statistics)
                .collect(),
            rollback_statistics: execution.rollback_statistics().map(wire_statistics),
        }
    }

    /// The rollout's device counts over every wave.
    pub(super) fn statistics(&self) -> RolloutStatistics {
        self.statistics
    }

    /// Puts these counts on `rollout`; its status, waves' statuses and times stay as they are.
    pub(super) fn apply_to(&self, rollout: &mut Rollout) {
        rollout.statistics = self.statistics;
        for (wave, statistics) in rollout.waves.iter_mut().zip(&self.waves) {
            wave.statistics = *statistics;
        }
        rollout.rollback_statistics = self.rollback_statistics;
    }
}

/// What a row write must show: when it changes, the row is written.
#[derive(Clone, Debug, PartialEq)]
struct Summary {
    status: RolloutStatus,
    current_wave: u32,
    waves: Vec<WaveStatus>,
    state: RolloutState,
}

fn summary(execution: &RolloutExecution) -> Summary {
    Summary {
        status: execution.status(),
        current_wave: execution.state().waves_started,
        waves: execution
            .wave_progress()
            .into_iter()
            .map(|wave| wave.status)
            .collect(),
        state: execution.state().clone(),
    }
}

pub(super) struct RolloutTask {
    service: Arc<RolloutService>,
    record: RolloutRecord,
    spec: RolloutSpec,
    commands: mpsc::Receiver<RolloutCommand>,
    counts: watch::Sender<LiveCounts>,
}

/// An attempt whose device accepted the update: its reports after `after` end it.
#[derive(Clone, Copy, Debug)]
struct Following {
    number: u32,
    after: u64,
}

/// Book-keeping of the drive loop.
#[derive(Default)]
struct DriveState {
    /// Records not handed to the store yet.
    unsaved: Vec<RolloutTarget>,
    /// Attempts whose start record is in `unsaved`.
    unsaved_starts: Vec<PhaseAttempt>,
    /// Attempts started by the machine whose first part waits for their record to be durable.
    awaiting: HashSet<PhaseAttempt>,
    /// First parts running, by phase and device: the attempt number and the task.
    starting: HashMap<(RolloutPhase, IdentityKey), (u32, AbortHandle)>,
    task_attempts: HashMap<tokio::task::Id, PhaseAttempt>,
    /// Attempts the device accepted, waiting for its final report.
    following: HashMap<(RolloutPhase, IdentityKey), Following>,
    /// The latest final report (change sequence, report) of devices whose attempt is still in its first part.
    early_reports: HashMap<IdentityKey, (u64, FirmwareReport)>,
    /// Devices that connected within the last [`ONLINE_SUBSCRIBE_GRACE`].
    online: HashMap<IdentityKey, Instant>,
    replies: Vec<oneshot::Sender<Result<Rollout, RolloutCommandError>>>,
    /// What the rollout row shows.
    written: Option<Summary>,
    /// Stopping: nothing new starts; the loop ends once the attempts asking their devices are done (their
    /// devices then know, so the restart follows them), or at this instant.
    draining: Option<Instant>,
}

impl DriveState {
    fn came_online_recently(&self, key: &IdentityKey) -> bool {
        self.online
            .get(key)
            .is_some_and(|at| at.elapsed() < ONLINE_SUBSCRIBE_GRACE)
    }
}

/// The write-ahead batch being committed, and the attempts waiting for it.
struct Saving {
    handle: JoinHandle<StoreResult<()>>,
    starts: Vec<PhaseAttempt>,
}

impl Saving {
    /// Writes `records` in a task of its own (retrying until the hub stops), so the loop goes on meanwhile.
    fn spawn(
        store: Arc<dyn Store>,
        rollout_id: RolloutId,
        records: Vec<RolloutTarget>,
        starts: Vec<PhaseAttempt>,
        stop: CancellationToken,
    ) -> Saving {
        let handle = tokio::spawn(async move {
            loop {
                match store
                    .save_rollout_targets(&rollout_id, records.clone())
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(rollout = %rollout_id, %error, "cannot save the rollout's devices; retrying");
                        tokio::select! {
                            () = stop.cancelled() => return Err(error),
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Saving { handle, starts }
    }
}

/// Everything the loop waits on.
struct Sources {
    commands_open: bool,
    fleet: broadcast::Receiver<FleetEvents>,
    fleet_open: bool,
    attempts: JoinSet<Started>,
    saving: Option<Saving>,
    stop: CancellationToken,
    stopping: bool,
}

impl Sources {
    async fn next(
        &mut self,
        wakeup: Option<Instant>,
        commands: &mut mpsc::Receiver<RolloutCommand>,
    ) -> RolloutEvent {
        let Sources {
            commands_open,
            fleet,
            fleet_open,
            attempts,
            saving,
            stop,
            stopping,
        } = self;
        let sleep = async {
            match wakeup {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let saved = async {
            match saving {
                Some(saving) => (&mut saving.handle).await,
                None => std::future::pending().await,
            }
        };
        let stop_enabled = !*stopping;
        let commands_enabled = *commands_open && !*stopping;
        let fleet_enabled = *fleet_open;
        let event = tokio::select! {
            biased;
            () = stop.cancelled(), if stop_enabled => Some(RolloutEvent::Shutdown),
            command = commands.recv(), if commands_enabled => command.map(RolloutEvent::Command),
            result = saved => Some(RolloutEvent::Saved(result)),
            Some(result) = attempts.join_next_with_id() => Some(RolloutEvent::Started(result)),
            received = fleet.recv(), if fleet_enabled => Some(RolloutEvent::Fleet(received)),
            () = sleep => Some(RolloutEvent::Wakeup),
        };
        match event {
            Some(RolloutEvent::Shutdown) => {
                *stopping = true;
                RolloutEvent::Shutdown
            }
            Some(event) => event,
            // Every sender of commands is gone: stop listening.
            None => {
                *commands_open = false;
                RolloutEvent::Wakeup
            }
        }
    }
}

impl RolloutTask {
    pub(super) fn new(
        service: Arc<RolloutService>,
        record: RolloutRecord,
        spec: RolloutSpec,
        commands: mpsc::Receiver<RolloutCommand>,
        counts: watch::Sender<LiveCounts>,
    ) -> Self {
        Self {
            service,
            record,
            spec,
            commands,
            counts,
        }
    }

    fn id(&self) -> &RolloutId {
        &self.record.rollout.rollout_id
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.service.services.store
    }

    fn stop(&self) -> &CancellationToken {
        &self.service.stop
    }

    pub(super) async fn run(self) {
        let service = Arc::clone(&self.service);
        let rollout_id = self.id().clone();
        self.run_phases().await;
        service.forget(&rollout_id);
    }

    async fn run_phases(mut self) {
        // Subscribe before anything is read, so no connection or report after that point goes unnoticed.
        let fleet = self.service.fleet.subscribe();
        let Some(installs) = self.installs().await else {
            return;
        };
        let execution = if self.record.rollout.start_time.is_none() {
            match self.freeze().await {
                Some(execution) => execution,
                None => return,
            }
        } else {
            match self.restore().await {
                Some(execution) => execution,
                None => return,
            }
        };
        if self.drive(execution, fleet, installs).await {
            tracing::info!(rollout = %self.id(), "rollout paused by shutdown; it resumes at the next start");
        }
    }

    /// The artifacts it installs, with their manifests.
    async fn installs(&self) -> Option<Installs> {
        let mut installs = Vec::new();
        for artifact in std::iter::once(&self.spec.artifact).chain(self.spec.rollback.as_ref()) {
            let (model, version) = (&artifact.model, &artifact.version);
            let record = self
                .durably("read the rollout's artifact", || {
                    self.store().get_artifact(model, version)
                })
                .await?;
            // An artifact an unfinished rollout uses cannot be deleted; without it the devices would fail
            // their downloads one by one, and the error threshold would stop the rollout.
            installs.push(Install {
                model: model.clone(),
                version: version.clone(),
                manifest: record.and_then(|record| record.manifest_jws),
            });
        }
        let mut installs = installs.into_iter();
        Some(Installs {
            update: installs.next().expect("the rollout's artifact is first"),
            rollback: installs.next(),
        })
    }

    /// Resolves the target set (frozen now), saves every device (pending) before any starts, and records
    /// the start.
    async fn freeze(&mut self) -> Option<RolloutExecution> {
        let rollout_id = self.id().clone();
        self.durably("clear a partly frozen target set", || {
            self.store().clear_rollout_targets(&rollout_id)
        })
        .await?;
        let condition = format!(
            "({}) AND properties.reported.firmware.model = '{}'",
            self.spec.target_condition, self.spec.artifact.model
        );
        let keys = loop {
            match self
                .service
                .services
                .matching_keys(&condition, Source::Devices)
                .await
            {
                Ok(keys) => break keys,
                Err(RunQueryError::Store(error)) => {
                    if !self.back_off("resolve the target condition", &error).await {
                        return None;
                    }
                }
                Err(other) => {
                    // Checked at creation; only a change of the query language could bring this here.
                    let now = now();
                    let (mut execution, _) = RolloutExecution::start(
                        self.spec.clone(),
                        self.record.rollout.seed,
                        Vec::new(),
                        now,
                    );
                    let _ = execution.abort(now);
                    execution.poll(now);
                    self.record.rollout = self.render(&execution, Some(now), Some(now));
                    self.record.rollout.status_message =
                        Some(format!("aborted: targetCondition: {other}"));
                    self.write_record().await;
                    return None;
                }
            }
        };
        let now = now();
        let (execution, records) =
            RolloutExecution::start(self.spec.clone(), self.record.rollout.seed, keys, now);
        let rollout_id = self.id().clone();
        self.durably("save the rollout's devices", || {
            self.store()
                .save_rollout_targets(&rollout_id, records.clone())
        })
        .await?;
        tracing::info!(rollout = %self.id(), devices = execution.plan().len(), "rollout targets frozen");
        self.record.rollout = self.render(&execution, Some(now), None);
        self.record.state =
            serde_json::to_value(execution.state()).expect("a rollout state always serialises");
        self.write_record().await.then_some(execution)
    }

    /// Every stored device of the rollout, and its machine rebuilt from them.
    async fn restore(&mut self) -> Option<RolloutExecution> {
        let mut targets = Vec::new();
        for phase in [RolloutPhase::Update, RolloutPhase::Rollback] {
            let mut after = None;
            loop {
                let rollout_id = self.id().clone();
                let page = self
                    .durably("read the rollout's devices", || {
                        self.store()
                            .list_rollout_targets(&rollout_id, phase, after, 2000)
                    })
                    .await?;
                let exhausted = page.len() < 2000;
                after = page.last().map(|target| target.position);
                targets.extend(page);
                if exhausted {
                    break;
                }
            }
        }
        let state: RolloutState = match serde_json::from_value(self.record.state.clone()) {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(rollout = %self.id(), %error, "the rollout's stored state does not read; rebuilding it from its devices");
                RolloutState::default()
            }
        };
        Some(RolloutExecution::restore(
            self.spec.clone(),
            state,
            targets,
            now(),
        ))
    }

    fn render(
        &self,
        execution: &RolloutExecution,
        started: Option<OffsetDateTime>,
        ended: Option<OffsetDateTime>,
    ) -> Rollout {
        let rollout = &self.record.rollout;
        render(
            &rollout.rollout_id,
            &self.spec,
            rollout.seed,
            rollout.created_time,
            started,
            ended,
            execution,
        )
    }

    /// The machine's loop with write-ahead batches. Returns true when it stopped because the hub stops,
    /// false when the rollout ended (or cannot go on).
    async fn drive(
        &mut self,
        mut execution: RolloutExecution,
        fleet: broadcast::Receiver<FleetEvents>,
        installs: Installs,
    ) -> bool {
        let mut sources = Sources {
            commands_open: true,
            fleet,
            fleet_open: true,
            attempts: JoinSet::new(),
            saving: None,
            stop: self.stop().clone(),
            stopping: self.stop().is_cancelled(),
        };
        let mut state = DriveState {
            written: Some(summary_of_record(&self.record)),
            draining: sources.stopping.then(|| self.service.drain_deadline()),
            ..DriveState::default()
        };
        let context = AttemptContext {
            services: Arc::clone(&self.service.services),
            artifacts: Arc::clone(&self.service.artifacts),
            grant_source: grant_source(self.id()),
            device_timeout: self.spec.device_timeout,
        };
        let started = self.record.rollout.start_time;
        loop {
            if state.draining.is_none() {
                let step = execution.poll(now());
                state.unsaved.extend(step.records);
                for attempt in step.abandon {
                    let entry = (attempt.phase, attempt.attempt.target.clone());
                    state.following.remove(&entry);
                    if !state.awaiting.remove(&attempt)
                        && let Some((number, handle)) = state.starting.get(&entry)
                        && *number == attempt.attempt.number
                    {
                        handle.abort();
                        state.starting.remove(&entry);
                    }
                }
                for attempt in step.start {
                    state.awaiting.insert(attempt.clone());
                    state.unsaved_starts.push(attempt);
                }
            }
            if sources.saving.is_none() && !state.unsaved.is_empty() {
                sources.saving = Some(Saving::spawn(
                    Arc::clone(self.store()),
                    self.id().clone(),
                    std::mem::take(&mut state.unsaved),
                    std::mem::take(&mut state.unsaved_starts),
                    self.stop().clone(),
                ));
            }
            let durable = sources.saving.is_none() && state.unsaved.is_empty();
            let finished = execution.is_finished();
            // Only the counts: `GET` takes the status, waves and times from the stored row, so a reader
            // never sees a decision that a crash could still undo, nor one older than the row it was told of.
            self.counts
                .send_replace(LiveCounts::of_execution(&execution));

            if durable {
                if finished {
                    self.finish(&execution, started, &mut state).await;
                    return false;
                }
                let current = summary(&execution);
                if state.written.as_ref() != Some(&current) || !state.replies.is_empty() {
                    self.record.rollout = self.render(&execution, started, None);
                    self.record.state = serde_json::to_value(execution.state())
                        .expect("a rollout state always serialises");
                    if !self.write_record().await {
                        return true;
                    }
                    state.written = Some(current);
                    for reply in state.replies.drain(..) {
                        let _ = reply.send(Ok(self.record.rollout.clone()));
                    }
                }
                if let Some(drain) = state.draining
                    && (state.starting.is_empty() || Instant::now() >= drain)
                {
                    return true;
                }
            }

            let mut wakeup = execution.next_wakeup().map(instant_at);
            if let Some(drain) = state.draining {
                wakeup = Some(wakeup.map_or(drain, |at| at.min(drain)));
            }
            let event = sources.next(wakeup, &mut self.commands).await;
            self.handle(
                event,
                &mut execution,
                &mut sources,
                &mut state,
                &context,
                &installs,
            )
            .await;
            // Take every first part already done: one write-ahead batch then carries them all.
            while let Some(result) = sources.attempts.try_join_next_with_id() {
                self.handle(
                    RolloutEvent::Started(result),
                    &mut execution,
                    &mut sources,
                    &mut state,
                    &context,
                    &installs,
                )
                .await;
            }
        }
    }

    async fn handle(
        &mut self,
        event: RolloutEvent,
        execution: &mut RolloutExecution,
        sources: &mut Sources,
        state: &mut DriveState,
        context: &AttemptContext,
        installs: &Installs,
    ) {
        let now = now();
        match event {
            RolloutEvent::Wakeup => {}
            RolloutEvent::Saved(result) => {
                let saving = sources
                    .saving
                    .take()
                    .expect("a saved event comes from the batch in flight");
                let durable = matches!(result, Ok(Ok(())));
                for attempt in saving.starts {
                    // A durable start begins even while stopping (the drain waits for its first part): left
                    // out, its device would be waited for after the restart without having been asked. A
                    // lost batch begins nothing.
                    if state.awaiting.remove(&attempt) && durable {
                        self.begin(attempt, execution, sources, state, context, installs);
                    }
                }
            }
            RolloutEvent::Started(result) => {
                let (id, started) = match result {
                    Ok((id, started)) => (id, started),
                    Err(error) if error.is_cancelled() => {
                        state.task_attempts.remove(&error.id());
                        return;
                    }
                    Err(error) => {
                        tracing::error!(rollout = %self.id(), %error, "a rollout attempt panicked");
                        (
                            error.id(),
                            Started::Done(Outcome::Failed(TargetError::new(
                                ErrorCode::ServerError.name(),
                                "the hub failed while starting this device's update",
                            ))),
                        )
                    }
                };
                let Some(attempt) = state.task_attempts.remove(&id) else {
                    return;
                };
                let entry = (attempt.phase, attempt.attempt.target.clone());
                if state
                    .starting
                    .get(&entry)
                    .is_some_and(|(number, _)| *number == attempt.attempt.number)
                {
                    state.starting.remove(&entry);
                }
                let early = state.early_reports.remove(&attempt.attempt.target);
                match started {
                    Started::Done(outcome) => {
                        let offline = matches!(outcome, Outcome::Offline);
                        self.outcome(execution, state, &attempt, outcome, now);
                        // The device connected around the time it was found offline: its connection event
                        // may have come first, so look again (with the subscribe grace).
                        if offline && state.came_online_recently(&attempt.attempt.target) {
                            execution.on_device_online(&attempt.attempt.target, now);
                        }
                    }
                    Started::Following { after } => {
                        let following = Following {
                            number: attempt.attempt.number,
                            after,
                        };
                        let version = installs.of(attempt.phase).version.as_str();
                        let outcome = early
                            .filter(|(sequence, _)| *sequence > after)
                            .and_then(|(_, report)| attempt::outcome_of(&report, version));
                        match outcome {
                            Some(outcome) => self.outcome(execution, state, &attempt, outcome, now),
                            None => {
                                state.following.insert(entry, following);
                            }
                        }
                    }
                }
            }
            RolloutEvent::Fleet(Ok(events)) => {
                self.fleet_events(&events, execution, state, installs, now);
            }
            RolloutEvent::Fleet(Err(broadcast::error::RecvError::Lagged(missed))) => {
                tracing::warn!(rollout = %self.id(), missed, "rollout fell behind the change feed; resynchronising");
                self.resynchronise(execution, state, installs, now).await;
            }
            RolloutEvent::Fleet(Err(broadcast::error::RecvError::Closed)) => {
                sources.fleet_open = false;
            }
            RolloutEvent::Command(RolloutCommand { action, reply }) => {
                let result = match action {
                    RolloutAction::Pause => execution.pause(),
                    RolloutAction::Resume => execution.resume(),
                    RolloutAction::Approve => execution.approve(),
                    RolloutAction::Abort => execution.abort(now),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(rollout = %self.id(), action = action.as_str(), "rollout command");
                        state.replies.push(reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            RolloutEvent::Shutdown => {
                state.draining = Some(self.service.drain_deadline());
            }
        }
    }

    fn fleet_events(
        &self,
        events: &[FleetEvent],
        execution: &mut RolloutExecution,
        state: &mut DriveState,
        installs: &Installs,
        now: OffsetDateTime,
    ) {
        for event in events {
            match event {
                FleetEvent::Connected(key) => {
                    // Any targeted device, its wave started or not: one that connects just before its wave
                    // starts still gets the grace to subscribe to methods.
                    if execution.plan().placement(key).is_some() {
                        state.online.insert(key.clone(), Instant::now());
                        execution.on_device_online(key, now);
                    }
                }
                FleetEvent::Reported {
                    key,
                    sequence,
                    report,
                } => self.report(key, *sequence, report, execution, state, installs, now),
            }
        }
        state
            .online
            .retain(|_, at| at.elapsed() < ONLINE_SUBSCRIBE_GRACE);
    }

    /// A device's firmware report: the outcome of an attempt that follows it, or kept for an attempt still
    /// in its first part.
    #[allow(clippy::too_many_arguments)] // the loop's pieces, passed apart so each can be borrowed
    fn report(
        &self,
        key: &IdentityKey,
        sequence: u64,
        report: &FirmwareReport,
        execution: &mut RolloutExecution,
        state: &mut DriveState,
        installs: &Installs,
        now: OffsetDateTime,
    ) {
        for phase in [RolloutPhase::Update, RolloutPhase::Rollback] {
            let entry = (phase, key.clone());
            let version = installs.of(phase).version.as_str();
            if let Some(following) = state.following.get(&entry).copied() {
                if sequence <= following.after {
                    continue;
                }
                if let Some(outcome) = attempt::outcome_of(report, version) {
                    state.following.remove(&entry);
                    let attempt = PhaseAttempt {
                        phase,
                        attempt: fleethub_core::executor::Attempt {
                            target: key.clone(),
                            number: following.number,
                        },
                    };
                    self.outcome(execution, state, &attempt, outcome, now);
                }
            } else if state.starting.contains_key(&entry)
                && attempt::outcome_of(report, version).is_some()
            {
                state
                    .early_reports
                    .insert(key.clone(), (sequence, report.clone()));
            }
        }
    }

    fn outcome(
        &self,
        execution: &mut RolloutExecution,
        state: &mut DriveState,
        attempt: &PhaseAttempt,
        outcome: Outcome,
        now: OffsetDateTime,
    ) {
        if let Some(record) = execution.on_outcome(
            attempt.phase,
            &attempt.attempt.target,
            attempt.attempt.number,
            outcome,
            now,
        ) {
            state.unsaved.push(record);
        }
    }

    /// After missing fleet events: each followed device's reports since its attempt began are read again,
    /// and pending devices that are connected now start.
    async fn resynchronise(
        &self,
        execution: &mut RolloutExecution,
        state: &mut DriveState,
        installs: &Installs,
        now: OffsetDateTime,
    ) {
        let followed: Vec<(IdentityKey, u64)> = state
            .following
            .iter()
            .map(|((_, key), following)| (key.clone(), following.after))
            .collect();
        for (key, after) in followed {
            if let Ok(records) = self
                .store()
                .read_changes(after, 10_000, ChangeFilter::device(key.device_id.clone()))
                .await
            {
                let events = events_of(records);
                self.fleet_events(&events, execution, state, installs, now);
            }
        }
        let router = self.service.services.router();
        for key in execution
            .plan()
            .placements()
            .map(|(key, _)| key.clone())
            .collect::<Vec<_>>()
        {
            let pending = [RolloutPhase::Update, RolloutPhase::Rollback]
                .into_iter()
                .filter_map(|phase| execution.record(phase, &key))
                .any(|record| record.status == TargetStatus::Pending);
            if pending
                && router
                    .wait_for_subscription(&key, Subscription::Methods, Duration::ZERO)
                    .await
            {
                execution.on_device_online(&key, now);
            }
        }
    }

    /// Begins the first part of an attempt whose start record is durable.
    fn begin(
        &self,
        attempt: PhaseAttempt,
        execution: &RolloutExecution,
        sources: &mut Sources,
        state: &mut DriveState,
        context: &AttemptContext,
        installs: &Installs,
    ) {
        let key = attempt.attempt.target.clone();
        let record = execution.record(attempt.phase, &key);
        let begin = Begin {
            reattach: record
                .as_ref()
                .and_then(|record| record.error.as_ref())
                .is_some_and(|error| error.code == REATTACH),
            first_started: record.and_then(|record| record.started),
            came_online_recently: state.came_online_recently(&key),
        };
        let context = context.clone();
        let install = installs.of(attempt.phase).clone();
        let task_key = key.clone();
        let handle = sources
            .attempts
            .spawn(async move { attempt::start(&context, &task_key, &install, begin).await });
        state.task_attempts.insert(handle.id(), attempt.clone());
        state
            .starting
            .insert((attempt.phase, key), (attempt.attempt.number, handle));
    }

    /// The rollout is over: its final row and end time; its grants are revoked.
    async fn finish(
        &mut self,
        execution: &RolloutExecution,
        started: Option<OffsetDateTime>,
        state: &mut DriveState,
    ) {
        let ended = now();
        self.record.rollout = self.render(execution, started, Some(ended));
        self.record.state =
            serde_json::to_value(execution.state()).expect("a rollout state always serialises");
        if !self.write_record().await {
            return;
        }
        for reply in state.replies.drain(..) {
            let _ = reply.send(Ok(self.record.rollout.clone()));
        }
        let source = grant_source(self.id());
        if let Err(error) = self.store().revoke_firmware_grants(&source).await {
            tracing::warn!(rollout = %self.id(), %error, "cannot revoke the rollout's grants; they expire by themselves");
        }
        let statistics: RolloutStatistics = self.record.rollout.statistics;
        tracing::info!(
            rollout = %self.id(),
            status = self.record.rollout.status.as_str(),
            succeeded = statistics.succeeded,
            failed = statistics.failed,
            cancelled = statistics.cancelled,
            "rollout ended"
        );
    }

    async fn write_record(&self) -> bool {
        let record = &self.record;
        self.durably("write the rollout", || {
            self.store().update_rollout(record.clone())
        })
        .await
        .is_some()
    }

    /// Runs a store operation until it succeeds; `None` if the hub stops first.
    async fn durably<T, F, Fut>(&self, what: &str, operation: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        crate::retry::durably(
            &format!("rollout {}", self.id()),
            what,
            self.stop(),
            operation,
        )
        .await
    }

    /// Logs a store failure and waits before the next try; false if the hub stops meanwhile.
    async fn back_off(&self, what: &str, error: &StoreError) -> bool {
        crate::retry::back_off(&format!("rollout {}", self.id()), what, error, self.stop()).await
    }
}

/// What the stored row shows, to compare with the machine's.
fn summary_of_record(record: &RolloutRecord) -> Summary {
    Summary {
        status: record.rollout.status,
        current_wave: record.rollout.current_wave,
        waves: record
            .rollout
            .waves
            .iter()
            .map(|wave| wave.status)
            .collect(),
        state: serde_json::from_value(record.state.clone()).unwrap_or_default(),
    }
}

/// The artifacts of the two phases.
struct Installs {
    update: Install,
    rollback: Option<Install>,
}

impl Installs {
    fn of(&self, phase: RolloutPhase) -> &Install {
        match phase {
            RolloutPhase::Update => &self.update,
            // The rollback phase exists only when the rollout names a rollback artifact.
            RolloutPhase::Rollback => self.rollback.as_ref().unwrap_or(&self.update),
        }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The tokio instant at which the wall clock reads `at` (now, if that is past; at most a year ahead: the
/// loop checks the time whenever it wakes).
fn instant_at(at: OffsetDateTime) -> Instant {
    const FURTHEST: Duration = Duration::from_secs(365 * 24 * 3600);
    let delay = Duration::try_from(at - now()).unwrap_or(Duration::ZERO);
    Instant::now() + delay.min(FURTHEST)
}
