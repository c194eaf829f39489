//! Firmware rollouts: one artifact sent to a frozen set of devices in waves, on the fleet executor, as a pure
//! state machine ([`RolloutExecution`]) that the hub's rollout task drives exactly like a job's
//! [`Execution`] (poll, persist the records, begin the attempts, feed back outcomes and connections).
//!
//! # Rules
//!
//! - **Target set and plan.** The targets are frozen when the rollout starts, shuffled with the rollout's seed
//!   and cut at the waves' cumulative sizes ([`WavePlan`]); a wave is a batch of
//!   [`Execution::add_targets`], so its devices start in their random order, after the retries and the
//!   stragglers of earlier waves, within the rollout's concurrency and start rate.
//! - **Advance.** The next wave starts as soon as the latest started wave has its success threshold of
//!   succeeded devices (its remaining devices go on), unless that wave asks for approval: then the rollout
//!   waits (`waitingForApproval`) for [`RolloutExecution::approve`]. A wave that can no longer reach its
//!   success threshold (too many of its devices failed or were cancelled) also stops the rollout for a
//!   decision: approve goes on anyway, abort aborts. An empty wave passes at once.
//! - **Abort.** Every started wave keeps its error threshold until its devices are all done: when its failed
//!   devices reach the threshold (a count, or a share of its finished devices) after at least its minimum of
//!   finished devices (or all of them, for a smaller wave), the rollout aborts. Aborting (or
//!   [`RolloutExecution::abort`]) cancels the devices not started (those of later waves too); running ones
//!   finish; then, if the rollout
//!   names a rollback artifact, the devices that failed get it (the rollback phase, a second execution with
//!   the same limits); then the rollout is `aborted`.
//! - **Completion.** When every wave has started, the last one passed (or was approved), and every device
//!   is done, the rollout is `completed`.
//! - **Pause.** [`RolloutExecution::pause`] holds new starts (timeouts still apply); resume releases them.
//! - **Offline devices** stay pending (consuming no attempt) until they connect, or until they have waited
//!   for the offline timeout: then they fail with `DeviceNotOnline`.
//!
//! # Persistence
//!
//! Every record of a device is a [`RolloutTarget`] (the executor's [`TargetRecord`], its phase, wave and
//! position) and the rollout's own decisions are [`RolloutState`]: the owner persists both and rebuilds the
//! machine with [`RolloutExecution::restore`]. All targets are persisted (pending) when the rollout starts,
//! before any device does; a target's wave and position never change.

mod plan;
#[cfg(test)]
mod proptests;
mod spec;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use fleethub_protocol::rollouts::{
    RolloutPhase, RolloutStatistics, RolloutStatus, WaveProgress, WaveStatus,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::executor::{
    Attempt, Execution, Outcome, Statistics, Step, TargetError, TargetRecord, TargetStatus,
    error_codes,
};
use crate::identity::IdentityKey;

pub use plan::{Placement, WavePlan, wave_ends};
pub use spec::{
    DEFAULT_DEVICE_TIMEOUT, DEFAULT_ERROR_MINIMUM_DEVICES, DEFAULT_ERROR_THRESHOLD,
    DEFAULT_MAX_CONCURRENCY, DEFAULT_OFFLINE_TIMEOUT, DEFAULT_RETRY_BACKOFF,
    DEFAULT_SUCCESS_THRESHOLD, MAX_ATTEMPTS, MAX_CONCURRENCY, MAX_WAVES, Percent, RolloutSpec,
    Threshold, WaveSize, WaveSpec, parse_waves, request_of,
};

/// The error code of a device whose update was under way when the hub stopped: its next attempt follows
/// that update rather than starting one (see [`RolloutExecution::restore`]).
pub const REATTACH: &str = "RolloutInterrupted";

/// One device's durable state in a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutTarget {
    pub phase: RolloutPhase,
    /// Its wave, from 1; 0 in the rollback phase.
    pub wave: u32,
    /// Its rank in the rollout's random order (the same in both phases).
    pub position: u64,
    pub record: TargetRecord,
}

/// An attempt of one phase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PhaseAttempt {
    pub phase: RolloutPhase,
    pub attempt: Attempt,
}

/// What the owner must do after [`RolloutExecution::poll`]: persist `records`, stop `abandon`, begin
/// `start` (in this order, as with [`Step`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutStep {
    pub records: Vec<RolloutTarget>,
    pub abandon: Vec<PhaseAttempt>,
    pub start: Vec<PhaseAttempt>,
}

/// Why the next wave waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GateReason {
    /// The wave passed and asks for approval before the next one.
    Approval,
    /// The wave can no longer reach its success threshold.
    BelowSuccessThreshold,
}

/// The rollout waits for an approval after wave `wave` (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    pub wave: u32,
    pub reason: GateReason,
}

/// Why a rollout aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum AbortReason {
    /// `POST .../abort`.
    Requested,
    /// Wave `wave` (from 0) reached its error threshold with `failed` of `finished` devices.
    ErrorThreshold {
        wave: u32,
        failed: u64,
        finished: u64,
    },
}

/// The rollout's own decisions, persisted by its owner beside the targets' records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// Waves whose devices were added to the execution.
    pub waves_started: u32,
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Waves (from 0) an approval let go on: no further gate holds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortReason>,
    #[serde(default)]
    pub rollback_started: bool,
    #[serde(default)]
    pub finished: bool,
}

/// A command that does not fit the rollout's status (a 409).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RolloutCommandError {
    #[error("the rollout is {} and will not change again", .0.as_str())]
    Over(RolloutStatus),
    #[error("the rollout is not waiting for approval (it is {})", .0.as_str())]
    NotWaitingForApproval(RolloutStatus),
}

fn phase_index(phase: RolloutPhase) -> u8 {
    match phase {
        RolloutPhase::Update => 0,
        RolloutPhase::Rollback => 1,
    }
}

fn phase_of(index: u8) -> RolloutPhase {
    if index == 0 {
        RolloutPhase::Update
    } else {
        RolloutPhase::Rollback
    }
}

/// The protocol's counts of the executor's.
pub fn wire_statistics(statistics: Statistics) -> RolloutStatistics {
    RolloutStatistics {
        device_count: statistics.device_count,
        pending: statistics.pending,
        running: statistics.running,
        succeeded: statistics.succeeded,
        failed: statistics.failed,
        cancelled: statistics.cancelled,
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
    *counter = counter
        .checked_add_signed(delta)
        .expect("wave counters never go below zero");
}

/// One rollout run; see the module docs.
#[derive(Clone, Debug)]
pub struct RolloutExecution {
    spec: RolloutSpec,
    plan: WavePlan,
    update: Execution,
    rollback: Option<Execution>,
    state: RolloutState,
    /// Per wave, every device of the wave (started or not).
    wave_statistics: Vec<Statistics>,
    /// The update phase's status of every device.
    statuses: HashMap<IdentityKey, TargetStatus>,
    /// Targets waiting for their device, since when.
    offline: HashMap<(u8, IdentityKey), OffsetDateTime>,
    offline_deadlines: BTreeSet<(OffsetDateTime, u8, IdentityKey)>,
    /// Records made outside a poll (commands), handed out by the next poll.
    unpolled: Vec<RolloutTarget>,
}

impl RolloutExecution {
    /// Starts a rollout over `targets`: plans the waves with `seed` and starts the first. Returns the
    /// machine and every target's record (all pending) to persist before the first poll.
    pub fn start(
        spec: RolloutSpec,
        seed: u64,
        targets: Vec<IdentityKey>,
        now: OffsetDateTime,
    ) -> (RolloutExecution, Vec<RolloutTarget>) {
        let sizes: Vec<WaveSize> = spec.waves.iter().map(|wave| wave.size).collect();
        let plan = WavePlan::new(targets, &sizes, seed);
        let records: Vec<RolloutTarget> = plan
            .placements()
            .map(|(key, placement)| RolloutTarget {
                phase: RolloutPhase::Update,
                wave: placement.wave as u32 + 1,
                position: placement.position,
                record: pending_record(key.clone(), now),
            })
            .collect();
        let mut execution = RolloutExecution::new(spec, plan, RolloutState::default(), now);
        execution.start_wave(0, now);
        (execution, records)
    }

    /// Rebuilds a rollout from its persisted state and every target's record (in any order).
    ///
    /// Unlike a job's, an attempt the hub was running when it stopped does not count: the device goes on
    /// updating without the hub, and the attempt made again is marked [`REATTACH`] so the runner first
    /// looks at what the device reports and follows an update already under way (or takes its outcome)
    /// instead of starting another. The records this changes come out of the next poll.
    pub fn restore(
        spec: RolloutSpec,
        mut state: RolloutState,
        targets: Vec<RolloutTarget>,
        now: OffsetDateTime,
    ) -> RolloutExecution {
        let mut reattached = Vec::new();
        let targets: Vec<RolloutTarget> = targets
            .into_iter()
            .map(|mut target| {
                if target.record.status == TargetStatus::Running {
                    let record = &mut target.record;
                    record.status = TargetStatus::Pending;
                    record.attempts = record.attempts.saturating_sub(1);
                    record.last_updated = now;
                    record.error = Some(TargetError::new(
                        REATTACH,
                        "the hub stopped while this device was updating; its update is followed again",
                    ));
                    reattached.push((target.phase, record.clone()));
                }
                target
            })
            .collect();
        let (mut updates, mut rollbacks): (Vec<RolloutTarget>, Vec<RolloutTarget>) = targets
            .into_iter()
            .partition(|target| target.phase == RolloutPhase::Update);
        updates.sort_by_key(|target| (target.wave, target.position));
        rollbacks.sort_by_key(|target| target.position);
        let wave_count = spec.waves.len();
        let plan = WavePlan::from_placements(
            wave_count,
            updates.iter().map(|target| {
                (
                    target.record.target.clone(),
                    Placement {
                        wave: (target.wave.max(1) - 1) as usize,
                        position: target.position,
                    },
                )
            }),
        );
        // A wave with a device that ever started has started, whatever the state says (it is written after
        // the records).
        for target in &updates {
            if target.record.started.is_some() {
                let wave = plan
                    .placement(&target.record.target)
                    .map_or(0, |placement| placement.wave as u32 + 1);
                state.waves_started = state.waves_started.max(wave);
            }
        }
        state.waves_started = state.waves_started.clamp(1, wave_count as u32);
        let started: Vec<TargetRecord> = updates
            .iter()
            .filter(|target| {
                plan.placement(&target.record.target)
                    .is_some_and(|placement| (placement.wave as u32) < state.waves_started)
            })
            .map(|target| target.record.clone())
            .collect();
        let mut execution = RolloutExecution::new(spec, plan, state, now);
        execution.update = Execution::restore(started, execution.spec.policy(), now);
        for target in &updates {
            execution.set_update_status(&target.record.target, target.record.status);
            execution.track_offline(RolloutPhase::Update, &target.record);
        }
        if execution.state.rollback_started || !rollbacks.is_empty() {
            execution.state.rollback_started = true;
            for target in &rollbacks {
                execution.track_offline(RolloutPhase::Rollback, &target.record);
            }
            execution.rollback = Some(Execution::restore(
                rollbacks.into_iter().map(|target| target.record).collect(),
                execution.spec.policy(),
                now,
            ));
        }
        for (phase, record) in reattached {
            let target = execution.track(phase, record);
            execution.unpolled.push(target);
        }
        execution.apply_pause();
        if execution.state.abort.is_some() {
            // Aborted before the hub stopped: pending devices stay cancelled (those whose cancellation was not
            // persisted yet are cancelled now).
            let cancelled = execution.update.cancel(now);
            execution.absorb(RolloutPhase::Update, cancelled);
            execution.cancel_unstarted(now);
        }
        execution
    }

    fn new(
        spec: RolloutSpec,
        plan: WavePlan,
        state: RolloutState,
        now: OffsetDateTime,
    ) -> RolloutExecution {
        let wave_statistics = (0..plan.wave_count())
            .map(|wave| {
                let size = plan.wave(wave).len() as u64;
                Statistics {
                    device_count: size,
                    pending: size,
                    ..Statistics::default()
                }
            })
            .collect();
        let statuses = plan
            .placements()
            .map(|(key, _)| (key.clone(), TargetStatus::Pending))
            .collect();
        let update = Execution::new(Vec::new(), spec.policy(), now);
        RolloutExecution {
            spec,
            plan,
            update,
            rollback: None,
            state,
            wave_statistics,
            statuses,
            offline: HashMap::new(),
            offline_deadlines: BTreeSet::new(),
            unpolled: Vec::new(),
        }
    }

    // ---- driving ----

    /// Advances the rollout to `now`: offline timeouts, the executions' timeouts and starts, and the
    /// rollout's decisions (abort, next wave, approval gates, rollback, completion).
    pub fn poll(&mut self, now: OffsetDateTime) -> RolloutStep {
        let mut step = RolloutStep {
            records: std::mem::take(&mut self.unpolled),
            ..RolloutStep::default()
        };
        self.expire_offline(now, &mut step);
        // Decide before starting anything (an abort due since the last outcomes starts no device), then
        // start, then decide again on what the executions' timeouts changed. A round may start a wave or the
        // rollback phase, whose devices the next round starts; a round that changes nothing ends the loop (at
        // most one round per wave, plus the abort and the rollback).
        for _ in 0..self.spec.waves.len() + 4 {
            let before = self.state.clone();
            self.decide(now, &mut step);
            let update = self.update.poll(now);
            self.absorb_step(RolloutPhase::Update, update, &mut step);
            if let Some(rollback) = &mut self.rollback {
                let polled = rollback.poll(now);
                self.absorb_step(RolloutPhase::Rollback, polled, &mut step);
            }
            self.decide(now, &mut step);
            if self.state == before {
                break;
            }
        }
        step
    }

    /// Records an attempt's outcome; the record to persist, or `None` when the attempt is not running (it
    /// timed out, was abandoned, or is unknown).
    pub fn on_outcome(
        &mut self,
        phase: RolloutPhase,
        target: &IdentityKey,
        attempt: u32,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> Option<RolloutTarget> {
        let execution = match phase {
            RolloutPhase::Update => &mut self.update,
            RolloutPhase::Rollback => self.rollback.as_mut()?,
        };
        let record = execution.on_outcome(target, attempt, outcome, now)?;
        Some(self.track(phase, record))
    }

    /// A device connected: if it waits for that, it is startable at once (in whichever phase).
    pub fn on_device_online(&mut self, target: &IdentityKey, now: OffsetDateTime) {
        self.update.on_device_online(target, now);
        if let Some(rollback) = &mut self.rollback {
            rollback.on_device_online(target, now);
        }
    }

    /// Holds new starts; running devices finish. Pausing a paused rollout does nothing.
    pub fn pause(&mut self) -> Result<(), RolloutCommandError> {
        self.check_not_over()?;
        self.state.paused = true;
        self.apply_pause();
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), RolloutCommandError> {
        self.check_not_over()?;
        self.state.paused = false;
        self.apply_pause();
        Ok(())
    }

    /// Lets a rollout waiting for approval go on (the next poll starts the next wave, or completes it).
    pub fn approve(&mut self) -> Result<(), RolloutCommandError> {
        self.check_not_over()?;
        let Some(gate) = self.state.gate.take() else {
            return Err(RolloutCommandError::NotWaitingForApproval(self.status()));
        };
        if !self.state.approved.contains(&gate.wave) {
            self.state.approved.push(gate.wave);
        }
        Ok(())
    }

    /// Aborts: devices not started are cancelled, running ones finish, then the rollback phase (if any).
    /// Aborting an aborting rollout does nothing.
    pub fn abort(&mut self, now: OffsetDateTime) -> Result<(), RolloutCommandError> {
        self.check_not_over()?;
        if self.state.abort.is_none() {
            self.abort_with(AbortReason::Requested, now);
        }
        Ok(())
    }

    /// The earliest instant at which [`RolloutExecution::poll`] has something to do that no event announces.
    pub fn next_wakeup(&self) -> Option<OffsetDateTime> {
        if self.state.finished {
            return None;
        }
        [
            self.update.next_wakeup(),
            self.rollback.as_ref().and_then(Execution::next_wakeup),
            self.offline_deadlines.first().map(|(at, _, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- reading ----

    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    pub fn plan(&self) -> &WavePlan {
        &self.plan
    }

    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    pub fn is_finished(&self) -> bool {
        self.state.finished
    }

    pub fn status(&self) -> RolloutStatus {
        if self.state.finished {
            if self.state.abort.is_some() {
                RolloutStatus::Aborted
            } else {
                RolloutStatus::Completed
            }
        } else if self.state.abort.is_some() {
            RolloutStatus::Aborting
        } else if self.state.paused {
            RolloutStatus::Paused
        } else if self.state.gate.is_some() {
            RolloutStatus::WaitingForApproval
        } else {
            RolloutStatus::Running
        }
    }

    /// Every targeted device's counts (all waves, started or not), in the update phase.
    pub fn statistics(&self) -> Statistics {
        let mut total = Statistics::default();
        for wave in &self.wave_statistics {
            total.device_count += wave.device_count;
            total.pending += wave.pending;
            total.running += wave.running;
            total.succeeded += wave.succeeded;
            total.failed += wave.failed;
            total.cancelled += wave.cancelled;
        }
        total
    }

    /// The counts of wave `wave` (from 0).
    pub fn wave_statistics(&self, wave: usize) -> Statistics {
        self.wave_statistics.get(wave).copied().unwrap_or_default()
    }

    /// The rollback phase's counts, once it started.
    pub fn rollback_statistics(&self) -> Option<Statistics> {
        self.rollback.as_ref().map(Execution::statistics)
    }

    /// The update phase's record of a device.
    pub fn record(&self, phase: RolloutPhase, target: &IdentityKey) -> Option<TargetRecord> {
        match phase {
            RolloutPhase::Update => self.update.record(target),
            RolloutPhase::Rollback => self.rollback.as_ref()?.record(target),
        }
    }

    /// Where each wave stands.
    pub fn wave_status(&self, wave: usize) -> WaveStatus {
        if wave as u32 >= self.state.waves_started {
            return if self.state.abort.is_some() {
                WaveStatus::Skipped
            } else {
                WaveStatus::Pending
            };
        }
        if matches!(self.state.abort, Some(AbortReason::ErrorThreshold { wave: aborted, .. }) if aborted as usize == wave)
        {
            return WaveStatus::Failed;
        }
        if self.passed(wave) {
            WaveStatus::Passed
        } else if self.unreachable(wave) {
            WaveStatus::Failed
        } else {
            WaveStatus::Running
        }
    }

    /// Every wave as the wire shows it.
    pub fn wave_progress(&self) -> Vec<WaveProgress> {
        self.spec
            .waves
            .iter()
            .enumerate()
            .map(|(index, wave)| WaveProgress {
                wave: index as u32 + 1,
                size: wave.size.to_string(),
                success_threshold: wave.success_threshold.to_string(),
                error_threshold: wave.error_threshold.map(|threshold| threshold.to_string()),
                error_minimum_devices: wave.error_minimum_devices,
                approval: wave.approval,
                status: self.wave_status(index),
                statistics: wire_statistics(self.wave_statistics(index)),
            })
            .collect()
    }

    /// What a person reads about where the rollout stands.
    pub fn status_message(&self) -> String {
        let total = self.statistics();
        let waves = self.spec.waves.len();
        let tally = format!(
            "{} of {} devices succeeded, {} failed",
            total.succeeded, total.device_count, total.failed
        );
        let abort = |reason: &AbortReason| match reason {
            AbortReason::Requested => "aborted on request".to_owned(),
            AbortReason::ErrorThreshold {
                wave,
                failed,
                finished,
            } => {
                let spec = &self.spec.waves[(*wave as usize).min(waves - 1)];
                format!(
                    "aborted: wave {} reached its error threshold of {} ({failed} of {finished} finished devices failed)",
                    wave + 1,
                    spec.error_threshold
                        .map_or_else(|| "none".to_owned(), |threshold| threshold.to_string()),
                )
            }
        };
        let rollback = || match self.rollback_statistics() {
            Some(rollback) => format!(
                "; rollback: {} of {} devices succeeded, {} failed",
                rollback.succeeded, rollback.device_count, rollback.failed
            ),
            None => String::new(),
        };
        match (&self.state.abort, self.state.finished) {
            (Some(reason), _) => return format!("{}; {tally}{}", abort(reason), rollback()),
            (None, true) => return format!("every wave done: {tally}"),
            (None, false) => {}
        }
        let current = (self.state.waves_started.max(1) - 1) as usize;
        let wave = self.wave_statistics(current);
        let spec = &self.spec.waves[current.min(waves - 1)];
        let required = spec.required_successes(wave.device_count);
        let prefix = if self.state.paused { "paused; " } else { "" };
        match self.state.gate {
            Some(Gate {
                wave: gate,
                reason: GateReason::Approval,
            }) => format!(
                "{prefix}wave {} of {waves} reached its success threshold ({} of {} devices succeeded): approve to start wave {}",
                gate + 1,
                self.wave_statistics(gate as usize).succeeded,
                self.wave_statistics(gate as usize).device_count,
                gate + 2
            ),
            Some(Gate {
                wave: gate,
                reason: GateReason::BelowSuccessThreshold,
            }) => {
                let statistics = self.wave_statistics(gate as usize);
                format!(
                    "{prefix}wave {} of {waves} can no longer reach its success threshold of {} ({} of {} devices succeeded, {} needed): approve to go on, or abort",
                    gate + 1,
                    self.spec.waves[(gate as usize).min(waves - 1)].success_threshold,
                    statistics.succeeded,
                    statistics.device_count,
                    spec_required(&self.spec, gate as usize, statistics.device_count),
                )
            }
            None => format!(
                "{prefix}wave {} of {waves}: {} of {} devices succeeded ({required} needed to go on); {tally}",
                current + 1,
                wave.succeeded,
                wave.device_count,
            ),
        }
    }

    // ---- decisions ----

    fn decide(&mut self, now: OffsetDateTime, step: &mut RolloutStep) {
        if self.state.finished {
            return;
        }
        if self.state.abort.is_none() {
            for wave in 0..self.state.waves_started as usize {
                let statistics = self.wave_statistics(wave);
                let finished = statistics.succeeded + statistics.failed;
                if self.spec.waves[wave].error_threshold_reached(
                    statistics.failed,
                    finished,
                    statistics.device_count,
                ) {
                    self.abort_with(
                        AbortReason::ErrorThreshold {
                            wave: wave as u32,
                            failed: statistics.failed,
                            finished,
                        },
                        now,
                    );
                    step.records.append(&mut self.unpolled);
                    break;
                }
            }
        }
        if self.state.abort.is_some() {
            self.wind_down(now, step);
            return;
        }
        let wave_count = self.spec.waves.len();
        while self.state.gate.is_none() && self.state.waves_started > 0 {
            let current = self.state.waves_started as usize - 1;
            let approved = self.state.approved.contains(&(current as u32));
            if self.passed(current) || approved {
                if current + 1 >= wave_count {
                    break;
                }
                if self.spec.waves[current].approval && !approved {
                    self.state.gate = Some(Gate {
                        wave: current as u32,
                        reason: GateReason::Approval,
                    });
                    break;
                }
                self.start_wave(current + 1, now);
            } else {
                if self.unreachable(current) {
                    self.state.gate = Some(Gate {
                        wave: current as u32,
                        reason: GateReason::BelowSuccessThreshold,
                    });
                }
                break;
            }
        }
        let last = wave_count - 1;
        if self.state.waves_started as usize == wave_count
            && self.state.gate.is_none()
            && (self.passed(last) || self.state.approved.contains(&(last as u32)))
            && self.update.is_finished()
        {
            self.state.finished = true;
        }
    }

    /// After an abort: once the update's running devices are done, the rollback phase (if any), then the
    /// end.
    fn wind_down(&mut self, now: OffsetDateTime, step: &mut RolloutStep) {
        if !self.update.is_finished() {
            return;
        }
        if !self.state.rollback_started {
            let failed: Vec<IdentityKey> = self
                .plan
                .placements()
                .filter(|(key, _)| self.statuses.get(*key) == Some(&TargetStatus::Failed))
                .map(|(key, _)| key.clone())
                .collect();
            if self.spec.rollback.is_none() || failed.is_empty() {
                self.state.finished = true;
                return;
            }
            let rollback = Execution::new(failed, self.spec.policy(), now);
            let records: Vec<TargetRecord> = rollback.records().collect();
            self.rollback = Some(rollback);
            self.state.rollback_started = true;
            self.apply_pause();
            for record in records {
                let target = self.track(RolloutPhase::Rollback, record);
                step.records.push(target);
            }
            return;
        }
        if self.rollback.as_ref().is_none_or(Execution::is_finished) {
            self.state.finished = true;
        }
    }

    fn abort_with(&mut self, reason: AbortReason, now: OffsetDateTime) {
        self.state.abort = Some(reason);
        self.state.gate = None;
        let cancelled = self.update.cancel(now);
        self.absorb(RolloutPhase::Update, cancelled);
        self.cancel_unstarted(now);
    }

    /// The devices of the waves that never started are cancelled too (they are in no execution).
    fn cancel_unstarted(&mut self, now: OffsetDateTime) {
        let mut records = Vec::new();
        for wave in self.state.waves_started as usize..self.plan.wave_count() {
            for key in self.plan.wave(wave) {
                if self.statuses.get(key) == Some(&TargetStatus::Pending) {
                    let mut record = pending_record(key.clone(), now);
                    record.status = TargetStatus::Cancelled;
                    record.finished = Some(now);
                    records.push(record);
                }
            }
        }
        self.absorb(RolloutPhase::Update, records);
    }

    /// The wave's succeeded devices reach its success threshold.
    fn passed(&self, wave: usize) -> bool {
        let statistics = self.wave_statistics(wave);
        statistics.succeeded >= self.spec.waves[wave].required_successes(statistics.device_count)
    }

    /// Even if every device of the wave still pending or running succeeded, it would stay below its success
    /// threshold.
    fn unreachable(&self, wave: usize) -> bool {
        let statistics = self.wave_statistics(wave);
        statistics.succeeded + statistics.pending + statistics.running
            < self.spec.waves[wave].required_successes(statistics.device_count)
    }

    fn start_wave(&mut self, wave: usize, now: OffsetDateTime) {
        let keys = self.plan.wave(wave).to_vec();
        // Their records equal the stored ones (pending since the start): nothing to persist.
        self.update.add_targets(keys, now);
        self.state.waves_started = wave as u32 + 1;
    }

    fn apply_pause(&mut self) {
        let executions = std::iter::once(&mut self.update).chain(self.rollback.as_mut());
        for execution in executions {
            if self.state.paused {
                execution.pause();
            } else {
                execution.resume();
            }
        }
    }

    fn check_not_over(&self) -> Result<(), RolloutCommandError> {
        if self.state.finished {
            Err(RolloutCommandError::Over(self.status()))
        } else {
            Ok(())
        }
    }

    // ---- bookkeeping ----

    fn expire_offline(&mut self, now: OffsetDateTime, step: &mut RolloutStep) {
        let Some(timeout) = self.spec.offline_timeout else {
            return;
        };
        while let Some((at, phase, key)) = self.offline_deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.offline_deadlines.pop_first();
            let still_waiting = self
                .offline
                .get(&(phase, key.clone()))
                .is_some_and(|since| after(*since, timeout) == at);
            if !still_waiting {
                continue;
            }
            self.offline.remove(&(phase, key.clone()));
            let error = TargetError::new(
                error_codes::DEVICE_NOT_ONLINE,
                format!(
                    "the device did not connect within the offline timeout of {} s",
                    timeout.as_secs()
                ),
            );
            let execution = match phase_of(phase) {
                RolloutPhase::Update => Some(&mut self.update),
                RolloutPhase::Rollback => self.rollback.as_mut(),
            };
            if let Some(record) =
                execution.and_then(|execution| execution.fail_waiting(&key, error, now))
            {
                let target = self.track(phase_of(phase), record);
                step.records.push(target);
            }
        }
    }

    fn absorb_step(&mut self, phase: RolloutPhase, polled: Step, step: &mut RolloutStep) {
        for record in polled.records {
            let target = self.track(phase, record);
            step.records.push(target);
        }
        step.abandon.extend(
            polled
                .abandon
                .into_iter()
                .map(|attempt| PhaseAttempt { phase, attempt }),
        );
        step.start.extend(
            polled
                .start
                .into_iter()
                .map(|attempt| PhaseAttempt { phase, attempt }),
        );
    }

    /// Records made outside a poll: kept for the next poll's step.
    fn absorb(&mut self, phase: RolloutPhase, records: Vec<TargetRecord>) {
        for record in records {
            let target = self.track(phase, record);
            self.unpolled.push(target);
        }
    }

    /// Updates the counts and the offline bookkeeping for a changed record; returns it placed.
    fn track(&mut self, phase: RolloutPhase, record: TargetRecord) -> RolloutTarget {
        let placement = self.plan.placement(&record.target).unwrap_or(Placement {
            wave: 0,
            position: 0,
        });
        if phase == RolloutPhase::Update {
            self.set_update_status(&record.target, record.status);
        }
        self.track_offline(phase, &record);
        RolloutTarget {
            phase,
            wave: match phase {
                RolloutPhase::Update => placement.wave as u32 + 1,
                RolloutPhase::Rollback => 0,
            },
            position: placement.position,
            record,
        }
    }

    fn set_update_status(&mut self, key: &IdentityKey, status: TargetStatus) {
        let Some(placement) = self.plan.placement(key) else {
            return;
        };
        let previous = self
            .statuses
            .insert(key.clone(), status)
            .unwrap_or(TargetStatus::Pending);
        if previous != status {
            let statistics = &mut self.wave_statistics[placement.wave];
            count(statistics, previous, -1);
            count(statistics, status, 1);
        }
    }

    fn track_offline(&mut self, phase: RolloutPhase, record: &TargetRecord) {
        let entry = (phase_index(phase), record.target.clone());
        let waiting = record.status == TargetStatus::Pending
            && record
                .error
                .as_ref()
                .is_some_and(|error| error.code == error_codes::DEVICE_NOT_ONLINE);
        if !waiting {
            self.offline.remove(&entry);
            return;
        }
        let Some(timeout) = self.spec.offline_timeout else {
            return;
        };
        if self.offline.contains_key(&entry) {
            return;
        }
        let since = record.last_updated;
        self.offline.insert(entry.clone(), since);
        self.offline_deadlines
            .insert((after(since, timeout), entry.0, entry.1));
    }
}

/// `now + delay`, saturating at the end of year 9999 (as the executor's delays do).
fn after(now: OffsetDateTime, delay: std::time::Duration) -> OffsetDateTime {
    time::Duration::try_from(delay)
        .ok()
        .and_then(|delay| now.checked_add(delay))
        .unwrap_or(time::macros::datetime!(9999-12-31 23:59:59.999_999_999 UTC))
}

fn spec_required(spec: &RolloutSpec, wave: usize, size: u64) -> u64 {
    spec.waves[wave.min(spec.waves.len() - 1)].required_successes(size)
}

fn pending_record(key: IdentityKey, now: OffsetDateTime) -> TargetRecord {
    TargetRecord {
        target: key,
        status: TargetStatus::Pending,
        attempts: 0,
        created: now,
        started: None,
        finished: None,
        last_updated: now,
        outcome: None,
        error: None,
    }
}
