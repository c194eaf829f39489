//! The fleet executor: runs one action on each of a set of devices (or modules) within a concurrency limit,
//! a start rate, a per-device timeout, a number of attempts and a deadline, as a pure state machine.
//!
//! Jobs v2 (`scheduleDeviceMethod`, `scheduleUpdateTwin`) run on it, and so do firmware rollouts
//! ([`crate::rollout`]: a wave is a batch of [`Execution::add_targets`]; [`Execution::pause`],
//! [`Execution::resume`] and [`Execution::cancel`] are the controller's levers; [`shuffle`] gives the
//! randomised order of a wave; [`Execution::fail_waiting`] ends an offline device's wait).
//!
//! # Driving it
//!
//! The executor never performs anything: no clock, no I/O, no randomness. A runner (a task in the hub)
//! owns an [`Execution`] and loops:
//!
//! 1. `let step = execution.poll(now)`;
//! 2. persists `step.records` (**before** step 3: a start is written ahead, see "Restarts");
//! 3. stops the attempts in `step.abandon` and begins the action for every attempt in `step.start`;
//! 4. waits for the first of: an action's result (→ [`Execution::on_outcome`], persist the record it
//!    returns), a device connecting (→ [`Execution::on_device_online`]), a cancel request
//!    (→ [`Execution::cancel`]), or the instant [`Execution::next_wakeup`] names; then goes back to 1,
//!    until [`Execution::is_finished`].
//!
//! # Rules
//!
//! - **Order.** Targets start in the order given; a target due for a retry (after a backoff, or because its
//!   device came online) goes before targets never tried.
//! - **Limits.** At most `max_concurrency` attempts run at once. With `min_start_interval`, two starts
//!   (first attempts and retries alike) are at least that far apart within one `Execution`; after a restart
//!   the first start may come at once.
//! - **Attempts.** Every start counts as an attempt, except one whose outcome is [`Outcome::Offline`]: the
//!   action reports that the device was not connected, so nothing reached it. A failed attempt (an
//!   [`Outcome::Failed`], or no outcome within `per_device_timeout`) is retried after `retry_backoff` while
//!   fewer than `max_attempts` attempts were made; then the target is `Failed` with the last error.
//! - **Offline devices** stay `Pending`, consuming no attempt, until [`Execution::on_device_online`] (or,
//!   with `offline_retry_interval`, until that interval has passed) makes them startable again; a device
//!   that connects while its attempt is still out is retried as soon as that attempt reports `Offline`.
//!   At the deadline an offline target fails with [`error_codes::DEVICE_NOT_ONLINE`].
//! - **Deadline.** When `deadline` passes, every `Pending` target fails and every running attempt is
//!   abandoned (its target fails); the execution is then finished.
//! - **Cancel.** Pending targets become `Cancelled` at once; running attempts finish normally (bounded by
//!   the timeout). After a cancel, an attempt that succeeds makes its target `Succeeded`; one that fails
//!   makes it `Failed` if it had no attempt left, otherwise `Cancelled` (it would have been retried).
//!
//! # Restarts
//!
//! Every change of a target yields a [`TargetRecord`] to persist; [`Execution::restore`] rebuilds the
//! execution from them. A target recorded `Running` had an attempt out when the hub stopped: whether it
//! reached the device is unknown, exactly as for an attempt that timed out, so it is treated the same way:
//! the attempt counts and failed ([`error_codes::INTERRUPTED`]); the target is retried (at once) if it has
//! attempts left, else it is `Failed`. Because starts are persisted before the action begins, an action runs
//! at most `max_attempts` times per target even across restarts: with `max_attempts == 1` a direct method is
//! never invoked twice on a device. (Treating interrupted attempts as not made would re-run them after
//! every crash, which is wrong for non-idempotent methods; an idempotent action such as a twin patch simply
//! asks for more attempts.) Pending targets whose last error was [`error_codes::DEVICE_NOT_ONLINE`] go back
//! to waiting for their device; other pending targets are startable at once (backoffs are not persisted).
//! The execution-level state (cancelled, paused) is the owner's to persist and re-apply after `restore`.

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::identity::IdentityKey;

/// How an execution runs. Durations are `std::time::Duration`; adding any of them to a time saturates at
/// the end of year 9999 instead of overflowing.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionPolicy {
    /// Attempts running at once; 0 is read as 1.
    pub max_concurrency: usize,
    /// Least time between two starts (a start rate of `r` per second is `1 / r` seconds); `None` for no limit.
    pub min_start_interval: Option<Duration>,
    /// How long an attempt may run before it counts as failed ([`error_codes::TIMED_OUT`]).
    pub per_device_timeout: Duration,
    /// Attempts per target, offline ones not counted; 0 is read as 1.
    pub max_attempts: u32,
    /// Wait between a failed attempt and the next one.
    pub retry_backoff: Duration,
    /// Retry an offline target this long after it was found offline even if no connection was reported;
    /// `None` to wait for [`Execution::on_device_online`] only.
    pub offline_retry_interval: Option<Duration>,
    /// When the whole execution ends (a job's start time plus its maximum execution time).
    pub deadline: Option<OffsetDateTime>,
}

impl Default for ExecutionPolicy {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            min_start_interval: None,
            per_device_timeout: Duration::from_secs(60),
            max_attempts: 1,
            retry_backoff: Duration::from_secs(10),
            offline_retry_interval: None,
            deadline: None,
        }
    }
}

impl ExecutionPolicy {
    fn normalised(mut self) -> Self {
        self.max_concurrency = self.max_concurrency.max(1);
        self.max_attempts = self.max_attempts.max(1);
        self
    }
}

/// Where a target stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TargetStatus {
    /// Not started yet, waiting for a retry, or waiting for its device to connect.
    Pending,
    /// An attempt is out.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TargetStatus {
    pub const ALL: [TargetStatus; 5] = [
        TargetStatus::Pending,
        TargetStatus::Running,
        TargetStatus::Succeeded,
        TargetStatus::Failed,
        TargetStatus::Cancelled,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetStatus::Pending => "pending",
            TargetStatus::Running => "running",
            TargetStatus::Succeeded => "succeeded",
            TargetStatus::Failed => "failed",
            TargetStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<TargetStatus> {
        TargetStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// `Succeeded`, `Failed` and `Cancelled` never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TargetStatus::Succeeded | TargetStatus::Failed | TargetStatus::Cancelled
        )
    }
}

/// Why an attempt or a target failed; the same shape as Azure's device job `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetError {
    pub code: String,
    pub description: String,
}

impl TargetError {
    pub fn new(code: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            description: description.into(),
        }
    }
}

/// The error codes the executor itself writes; actions report their own (`GatewayTimeout`, ...).
pub mod error_codes {
    /// The device never connected while the target was waiting for it, up to the deadline. While a target is
    /// `Pending` this code also marks it as waiting for its device (kept across restarts).
    pub const DEVICE_NOT_ONLINE: &str = "DeviceNotOnline";
    /// No outcome within the per-device timeout.
    pub const TIMED_OUT: &str = "DeviceJobTimedOut";
    /// The deadline passed before the target finished.
    pub const DEADLINE_EXCEEDED: &str = "JobExecutionTimeExceeded";
    /// The hub stopped while an attempt was out; its outcome is unknown.
    pub const INTERRUPTED: &str = "JobInterrupted";
}

/// What an action reports for one attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done; the value is kept as the target's outcome (a method job keeps the device's response).
    Succeeded(Value),
    /// Done, unsuccessfully; counts as an attempt.
    Failed(TargetError),
    /// The device was not connected, so the action did not reach it: the attempt does not count. Report this
    /// only when that is certain (a direct method to a device without a session), never after a timeout.
    Offline,
}

/// The durable state of one target: everything [`Execution::restore`] needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRecord {
    pub target: IdentityKey,
    pub status: TargetStatus,
    /// Attempts made (offline ones not counted), including a running one.
    pub attempts: u32,
    /// When the target joined the execution.
    pub created: OffsetDateTime,
    /// When its first attempt started.
    pub started: Option<OffsetDateTime>,
    /// When it reached a terminal status.
    pub finished: Option<OffsetDateTime>,
    pub last_updated: OffsetDateTime,
    /// The value of the successful outcome.
    pub outcome: Option<Value>,
    /// The last error (kept while a retry is pending).
    pub error: Option<TargetError>,
}

/// An attempt of one target. `number` identifies it among the target's attempts (it counts every start,
/// offline ones too, so it is not [`TargetRecord::attempts`]); outcomes must quote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    pub target: IdentityKey,
    pub number: u32,
}

/// What the runner must do after a [`Execution::poll`], in this order: persist `records`, stop the
/// attempts in `abandon` (the executor no longer waits for them and ignores their outcomes), begin the
/// action of each attempt in `start`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// The new state of every target changed since the previous poll (one record per target).
    pub records: Vec<TargetRecord>,
    pub abandon: Vec<Attempt>,
    pub start: Vec<Attempt>,
}

/// Targets per status. `device_count` is the sum of the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statistics {
    pub device_count: u64,
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Statistics {
    fn count(&mut self, status: TargetStatus, delta: i64) {
        let counter = match status {
            TargetStatus::Pending => &mut self.pending,
            TargetStatus::Running => &mut self.running,
            TargetStatus::Succeeded => &mut self.succeeded,
            TargetStatus::Failed => &mut self.failed,
            TargetStatus::Cancelled => &mut self.cancelled,
        };
        *counter = counter
            .checked_add_signed(delta)
            .expect("status counters never go below zero");
    }

    /// Counts `records` (as a store would from persisted records).
    pub fn of<'a>(records: impl IntoIterator<Item = &'a TargetRecord>) -> Statistics {
        let mut statistics = Statistics::default();
        for record in records {
            statistics.device_count += 1;
            statistics.count(record.status, 1);
        }
        statistics
    }
}

/// Shuffles `items` deterministically from `seed` (Fisher-Yates driven by SplitMix64): the randomised
/// order of a rollout wave, reproducible after a restart from the seed the controller persisted.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    };
    for upper in (1..items.len()).rev() {
        // Multiply-shift maps 64 random bits onto 0..=upper with negligible bias for any realistic length.
        let pick = ((u128::from(next()) * (upper as u128 + 1)) >> 64) as usize;
        items.swap(upper, pick);
    }
}

/// Where a target sits in the scheduler. Invariant: `Fresh`/`Retry` targets are in the matching queue,
/// `Delayed(at)` ones in `delayed` under `(at, index)`, `Running(at)` ones in `running` under `(at, index)`;
/// only `Pending` targets are `Fresh`, `Retry`, `Delayed` or `WaitingForDevice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Done,
    Fresh,
    Retry,
    Delayed(OffsetDateTime),
    WaitingForDevice,
    Running(OffsetDateTime),
}

#[derive(Clone, Debug)]
struct Target {
    key: IdentityKey,
    status: TargetStatus,
    attempts: u32,
    starts: u32,
    created: OffsetDateTime,
    started: Option<OffsetDateTime>,
    finished: Option<OffsetDateTime>,
    last_updated: OffsetDateTime,
    outcome: Option<Value>,
    error: Option<TargetError>,
    slot: Slot,
    /// Offline at its last attempt (or restored so); `on_device_online` makes it startable.
    waiting_for_device: bool,
    /// Its device connected while an attempt was out; an `Offline` outcome then retries at once.
    online_during_attempt: bool,
    /// Changed since its record was last handed out.
    dirty: bool,
}

impl Target {
    fn pending(key: IdentityKey, now: OffsetDateTime) -> Self {
        Target {
            key,
            status: TargetStatus::Pending,
            attempts: 0,
            starts: 0,
            created: now,
            started: None,
            finished: None,
            last_updated: now,
            outcome: None,
            error: None,
            slot: Slot::Fresh,
            waiting_for_device: false,
            online_during_attempt: false,
            dirty: false,
        }
    }

    fn record(&self) -> TargetRecord {
        TargetRecord {
            target: self.key.clone(),
            status: self.status,
            attempts: self.attempts,
            created: self.created,
            started: self.started,
            finished: self.finished,
            last_updated: self.last_updated,
            outcome: self.outcome.clone(),
            error: self.error.clone(),
        }
    }
}

/// The latest instant `time` can represent; delays saturate here.
const END_OF_TIME: OffsetDateTime = datetime!(9999-12-31 23:59:59.999_999_999 UTC);

fn after(now: OffsetDateTime, delay: Duration) -> OffsetDateTime {
    time::Duration::try_from(delay)
        .ok()
        .and_then(|delay| now.checked_add(delay))
        .unwrap_or(END_OF_TIME)
}

/// One run of an action over a set of targets; see the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Execution {
    policy: ExecutionPolicy,
    targets: Vec<Target>,
    index: HashMap<IdentityKey, usize>,
    /// Never-tried targets in order.
    fresh: VecDeque<usize>,
    /// Targets due for another attempt, served before `fresh`.
    retries: VecDeque<usize>,
    delayed: BTreeSet<(OffsetDateTime, usize)>,
    /// Running attempts by the instant they time out.
    running: BTreeSet<(OffsetDateTime, usize)>,
    /// Targets whose `dirty` flag is set (possibly more: entries are checked against the flag).
    dirty: Vec<usize>,
    statistics: Statistics,
    /// No start before this instant (the rate limit).
    next_start_at: Option<OffsetDateTime>,
    /// The latest `now` seen.
    clock: OffsetDateTime,
    cancelled: bool,
    paused: bool,
    deadline_passed: bool,
}

impl Execution {
    /// A new execution of `targets` (duplicates are dropped), all `Pending`. Their records, for the runner
    /// to insert, are [`Execution::records`].
    pub fn new(targets: Vec<IdentityKey>, policy: ExecutionPolicy, now: OffsetDateTime) -> Self {
        let mut execution = Self::empty(policy, now);
        execution.add_targets(targets, now);
        execution
    }

    /// Rebuilds an execution from its persisted records, in the order given (see "Restarts" in the module
    /// docs). Targets the restore changed (interrupted attempts) come out of the next [`Execution::poll`].
    pub fn restore(
        records: Vec<TargetRecord>,
        policy: ExecutionPolicy,
        now: OffsetDateTime,
    ) -> Self {
        let mut execution = Self::empty(policy, now);
        for record in records {
            if execution.index.contains_key(&record.target) {
                continue;
            }
            let position = execution.targets.len();
            let waiting_for_device = record.status == TargetStatus::Pending
                && record
                    .error
                    .as_ref()
                    .is_some_and(|error| error.code == error_codes::DEVICE_NOT_ONLINE);
            execution.index.insert(record.target.clone(), position);
            execution.targets.push(Target {
                key: record.target,
                status: record.status,
                attempts: record.attempts,
                starts: record.attempts,
                created: record.created,
                started: record.started,
                finished: record.finished,
                last_updated: record.last_updated,
                outcome: record.outcome,
                error: record.error,
                slot: Slot::Done,
                waiting_for_device,
                online_during_attempt: false,
                dirty: false,
            });
            execution.statistics.device_count += 1;
            execution.statistics.count(record.status, 1);
            match record.status {
                TargetStatus::Pending if waiting_for_device => execution.wait_for_device(position),
                TargetStatus::Pending => {
                    execution.targets[position].slot = Slot::Fresh;
                    execution.fresh.push_back(position);
                }
                TargetStatus::Running => {
                    // Counted as running until `attempt_failed` moves it on, so the statistics stay exact.
                    let error = TargetError::new(
                        error_codes::INTERRUPTED,
                        "the hub stopped while this attempt was running; its outcome is unknown",
                    );
                    execution.attempt_failed(position, error, Duration::ZERO, now);
                }
                TargetStatus::Succeeded | TargetStatus::Failed | TargetStatus::Cancelled => {}
            }
        }
        execution
    }

    fn empty(policy: ExecutionPolicy, now: OffsetDateTime) -> Self {
        Execution {
            policy: policy.normalised(),
            targets: Vec::new(),
            index: HashMap::new(),
            fresh: VecDeque::new(),
            retries: VecDeque::new(),
            delayed: BTreeSet::new(),
            running: BTreeSet::new(),
            dirty: Vec::new(),
            statistics: Statistics::default(),
            next_start_at: None,
            clock: now,
            cancelled: false,
            paused: false,
            deadline_passed: false,
        }
    }

    /// Adds targets (a dynamic target set, a rollout's next wave) after the existing ones; targets already
    /// present are skipped. Returns the new `Pending` records to insert. Nothing is added once the execution
    /// was cancelled or its deadline passed.
    pub fn add_targets(
        &mut self,
        targets: Vec<IdentityKey>,
        now: OffsetDateTime,
    ) -> Vec<TargetRecord> {
        self.observe(now);
        if self.cancelled || self.deadline_passed {
            return Vec::new();
        }
        let mut added = Vec::new();
        for key in targets {
            if self.index.contains_key(&key) {
                continue;
            }
            let position = self.targets.len();
            self.index.insert(key.clone(), position);
            let target = Target::pending(key, now);
            added.push(target.record());
            self.targets.push(target);
            self.fresh.push_back(position);
            self.statistics.device_count += 1;
            self.statistics.count(TargetStatus::Pending, 1);
        }
        added
    }

    /// Advances the execution to `now`: applies the deadline, times out attempts, makes due retries
    /// startable, and starts what the limits allow.
    pub fn poll(&mut self, now: OffsetDateTime) -> Step {
        self.observe(now);
        let mut step = Step::default();
        if !self.deadline_passed && self.policy.deadline.is_some_and(|deadline| now >= deadline) {
            self.expire(now, &mut step);
        }
        while let Some(&(timeout_at, position)) = self.running.first() {
            if timeout_at > now {
                break;
            }
            step.abandon.push(Attempt {
                target: self.targets[position].key.clone(),
                number: self.targets[position].starts,
            });
            self.finish_attempt(position);
            let error = TargetError::new(
                error_codes::TIMED_OUT,
                format!(
                    "no outcome within the per-device timeout of {} s",
                    self.policy.per_device_timeout.as_secs_f64()
                ),
            );
            self.attempt_failed(position, error, self.policy.retry_backoff, now);
        }
        while let Some(&(due, position)) = self.delayed.first() {
            if due > now {
                break;
            }
            self.delayed.remove(&(due, position));
            self.make_retry(position);
        }
        while self.may_start(now) {
            let Some(position) = self.retries.pop_front().or_else(|| self.fresh.pop_front()) else {
                break;
            };
            step.start.push(self.start(position, now));
        }
        step.records = self.take_dirty_records();
        step
    }

    /// Records the outcome of an attempt. Returns the target's new record to persist, or `None` when the
    /// attempt is not the target's running one (it timed out, was abandoned, or is unknown).
    pub fn on_outcome(
        &mut self,
        target: &IdentityKey,
        attempt: u32,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> Option<TargetRecord> {
        self.observe(now);
        let position = *self.index.get(target)?;
        let current = &self.targets[position];
        if current.status != TargetStatus::Running || current.starts != attempt {
            return None;
        }
        let online_during_attempt = current.online_during_attempt;
        self.finish_attempt(position);
        match outcome {
            Outcome::Succeeded(value) => {
                let target = &mut self.targets[position];
                target.outcome = Some(value);
                target.error = None;
                target.waiting_for_device = false;
                self.settle(position, TargetStatus::Succeeded, now);
            }
            Outcome::Failed(error) => {
                self.targets[position].waiting_for_device = false;
                self.attempt_failed(position, error, self.policy.retry_backoff, now);
            }
            Outcome::Offline => {
                let target = &mut self.targets[position];
                target.attempts -= 1;
                target.waiting_for_device = true;
                target.error = Some(TargetError::new(
                    error_codes::DEVICE_NOT_ONLINE,
                    "the device is not connected; waiting for it to connect",
                ));
                if self.cancelled {
                    self.settle(position, TargetStatus::Cancelled, now);
                } else {
                    self.set_status(position, TargetStatus::Pending, now);
                    if online_during_attempt {
                        self.make_retry(position);
                    } else {
                        self.wait_for_device(position);
                    }
                }
            }
        }
        let target = &mut self.targets[position];
        target.dirty = false;
        Some(target.record())
    }

    /// The target's device connected: if the target waits for it, it is startable at once.
    pub fn on_device_online(&mut self, target: &IdentityKey, now: OffsetDateTime) {
        self.observe(now);
        let Some(&position) = self.index.get(target) else {
            return;
        };
        match self.targets[position].slot {
            Slot::Running(_) => self.targets[position].online_during_attempt = true,
            Slot::WaitingForDevice => self.make_retry(position),
            Slot::Delayed(due) if self.targets[position].waiting_for_device => {
                self.delayed.remove(&(due, position));
                self.make_retry(position);
            }
            Slot::Done | Slot::Fresh | Slot::Retry | Slot::Delayed(_) => {}
        }
    }

    /// Fails a `Pending` target that is not startable now (waiting for its device to connect, or for a
    /// retry's backoff) with `error`, and returns its record to persist. `None` when the target is unknown,
    /// not pending, or queued to start (it runs as soon as the limits allow, so there is nothing to give up
    /// on). A rollout uses it to fail devices that stay offline longer than its offline timeout.
    pub fn fail_waiting(
        &mut self,
        target: &IdentityKey,
        error: TargetError,
        now: OffsetDateTime,
    ) -> Option<TargetRecord> {
        self.observe(now);
        let position = *self.index.get(target)?;
        match self.targets[position].slot {
            Slot::WaitingForDevice => {}
            Slot::Delayed(due) => {
                self.delayed.remove(&(due, position));
            }
            Slot::Done | Slot::Fresh | Slot::Retry | Slot::Running(_) => return None,
        }
        let target = &mut self.targets[position];
        target.error = Some(error);
        target.waiting_for_device = false;
        self.settle(position, TargetStatus::Failed, now);
        let target = &mut self.targets[position];
        target.dirty = false;
        Some(target.record())
    }

    /// Cancels the execution: every `Pending` target becomes `Cancelled` (their records are returned);
    /// running attempts finish (see the module docs). Does nothing when already cancelled or expired.
    pub fn cancel(&mut self, now: OffsetDateTime) -> Vec<TargetRecord> {
        self.observe(now);
        if self.cancelled || self.deadline_passed {
            return Vec::new();
        }
        self.cancelled = true;
        self.clear_queues();
        let mut records = Vec::new();
        for position in 0..self.targets.len() {
            if self.targets[position].status == TargetStatus::Pending {
                self.settle(position, TargetStatus::Cancelled, now);
                let target = &mut self.targets[position];
                target.dirty = false;
                records.push(target.record());
            }
        }
        records
    }

    /// Stops starting attempts (running ones continue; timeouts and the deadline still apply).
    pub fn pause(&mut self) {
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// The earliest instant at which [`Execution::poll`] has something to do that no event will announce
    /// (a start the limits now allow, a retry, a timeout, the deadline). An instant at or before the latest
    /// `now` given means "poll now". `None` when only events can move the execution.
    pub fn next_wakeup(&self) -> Option<OffsetDateTime> {
        if self.is_finished() {
            return None;
        }
        let mut candidates = Vec::with_capacity(4);
        if !self.deadline_passed {
            candidates.extend(self.policy.deadline);
        }
        candidates.extend(self.running.first().map(|&(at, _)| at));
        candidates.extend(self.delayed.first().map(|&(at, _)| at));
        if self.may_start_without_rate_limit()
            && !(self.retries.is_empty() && self.fresh.is_empty())
        {
            candidates.push(
                self.next_start_at
                    .map_or(self.clock, |at| at.max(self.clock)),
            );
        }
        candidates.into_iter().min()
    }

    pub fn statistics(&self) -> Statistics {
        self.statistics
    }

    /// Every target is `Succeeded`, `Failed` or `Cancelled`.
    pub fn is_finished(&self) -> bool {
        self.statistics.pending == 0 && self.statistics.running == 0
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The deadline passed (and was applied by a poll).
    pub fn is_expired(&self) -> bool {
        self.deadline_passed
    }

    pub fn policy(&self) -> &ExecutionPolicy {
        &self.policy
    }

    /// The current record of every target, in execution order.
    pub fn records(&self) -> impl Iterator<Item = TargetRecord> + '_ {
        self.targets.iter().map(Target::record)
    }

    pub fn record(&self, target: &IdentityKey) -> Option<TargetRecord> {
        self.index
            .get(target)
            .map(|&position| self.targets[position].record())
    }

    // ---- transitions ----

    fn observe(&mut self, now: OffsetDateTime) {
        self.clock = self.clock.max(now);
    }

    fn may_start_without_rate_limit(&self) -> bool {
        !self.cancelled
            && !self.paused
            && !self.deadline_passed
            && self.running.len() < self.policy.max_concurrency
    }

    fn may_start(&self, now: OffsetDateTime) -> bool {
        self.may_start_without_rate_limit() && self.next_start_at.is_none_or(|at| at <= now)
    }

    fn start(&mut self, position: usize, now: OffsetDateTime) -> Attempt {
        let timeout_at = after(now, self.policy.per_device_timeout);
        self.running.insert((timeout_at, position));
        if let Some(interval) = self.policy.min_start_interval {
            self.next_start_at = Some(after(now, interval));
        }
        self.set_status(position, TargetStatus::Running, now);
        let target = &mut self.targets[position];
        debug_assert!(matches!(target.slot, Slot::Fresh | Slot::Retry));
        target.slot = Slot::Running(timeout_at);
        target.attempts += 1;
        target.starts += 1;
        target.online_during_attempt = false;
        target.started.get_or_insert(now);
        Attempt {
            target: target.key.clone(),
            number: target.starts,
        }
    }

    /// Takes a running target out of `running` (its status is still `Running`; the caller sets the next).
    fn finish_attempt(&mut self, position: usize) {
        let Slot::Running(timeout_at) = self.targets[position].slot else {
            unreachable!("only running targets finish an attempt");
        };
        self.running.remove(&(timeout_at, position));
        self.targets[position].slot = Slot::Done;
    }

    /// A counted attempt failed: retry after `backoff` if attempts remain and the execution goes on.
    fn attempt_failed(
        &mut self,
        position: usize,
        error: TargetError,
        backoff: Duration,
        now: OffsetDateTime,
    ) {
        let attempts_left = self.targets[position].attempts < self.policy.max_attempts;
        self.targets[position].error = Some(error);
        if !attempts_left {
            self.settle(position, TargetStatus::Failed, now);
        } else if self.cancelled {
            self.settle(position, TargetStatus::Cancelled, now);
        } else {
            self.set_status(position, TargetStatus::Pending, now);
            let due = after(now, backoff);
            self.targets[position].slot = Slot::Delayed(due);
            self.delayed.insert((due, position));
        }
    }

    fn wait_for_device(&mut self, position: usize) {
        match self.policy.offline_retry_interval {
            Some(interval) => {
                let due = after(self.clock, interval);
                self.targets[position].slot = Slot::Delayed(due);
                self.delayed.insert((due, position));
            }
            None => self.targets[position].slot = Slot::WaitingForDevice,
        }
    }

    fn make_retry(&mut self, position: usize) {
        self.targets[position].slot = Slot::Retry;
        self.retries.push_back(position);
    }

    /// Moves a target to a terminal status.
    fn settle(&mut self, position: usize, status: TargetStatus, now: OffsetDateTime) {
        debug_assert!(status.is_terminal());
        self.set_status(position, status, now);
        let target = &mut self.targets[position];
        target.slot = Slot::Done;
        target.finished = Some(now);
    }

    fn set_status(&mut self, position: usize, status: TargetStatus, now: OffsetDateTime) {
        let target = &mut self.targets[position];
        let previous = target.status;
        target.status = status;
        target.last_updated = now;
        if !target.dirty {
            target.dirty = true;
            self.dirty.push(position);
        }
        self.statistics.count(previous, -1);
        self.statistics.count(status, 1);
    }

    /// The deadline: every pending target fails, every running attempt is abandoned and its target fails.
    fn expire(&mut self, now: OffsetDateTime, step: &mut Step) {
        self.deadline_passed = true;
        self.clear_queues();
        for position in 0..self.targets.len() {
            let target = &self.targets[position];
            let error = match target.status {
                TargetStatus::Pending if target.waiting_for_device => TargetError::new(
                    error_codes::DEVICE_NOT_ONLINE,
                    "the device was not connected until the job's end",
                ),
                TargetStatus::Pending | TargetStatus::Running => TargetError::new(
                    error_codes::DEADLINE_EXCEEDED,
                    "the job's maximum execution time ran out before this device finished",
                ),
                TargetStatus::Succeeded | TargetStatus::Failed | TargetStatus::Cancelled => {
                    continue;
                }
            };
            if target.status == TargetStatus::Running {
                step.abandon.push(Attempt {
                    target: target.key.clone(),
                    number: target.starts,
                });
            }
            self.targets[position].error = Some(error);
            self.settle(position, TargetStatus::Failed, now);
        }
        self.running.clear();
    }

    fn clear_queues(&mut self) {
        self.fresh.clear();
        self.retries.clear();
        self.delayed.clear();
    }

    fn take_dirty_records(&mut self) -> Vec<TargetRecord> {
        let mut records = Vec::with_capacity(self.dirty.len());
        for position in std::mem::take(&mut self.dirty) {
            let target = &mut self.targets[position];
            if target.dirty {
                target.dirty = false;
                records.push(target.record());
            }
        }
        records
    }
}
