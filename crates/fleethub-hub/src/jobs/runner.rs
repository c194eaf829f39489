//! One job's task: waits for its start time and a running slot, freezes its targets, then drives its
//! `Execution` (the loop of the executor's module docs) until it finishes, is cancelled, or the hub stops.
//! Every store write here is retried until it succeeds or the hub stops: a job never skips a record.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleethub_core::executor::{
    Attempt, Execution, Outcome, Statistics, Step, TargetError, TargetRecord,
};
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::ids::{IfMatch, JobId};
use fleethub_protocol::jobs::JobStatus;
use fleethub_protocol::topics::Subscription;
use fleethub_query::{Query, Source};
use fleethub_store::{JobRecord, Store, StoreError, StoreResult, TwinChange};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::feed::{FleetEvent, FleetEvents};
use super::{JobAction, JobPlan, JobService, ONLINE_SUBSCRIBE_GRACE, STATISTICS_INTERVAL};
use crate::query::RunQueryError;
use crate::services::{InvokeMethodError, Services};

/// Requests to a running job, from [`JobService`].
pub(super) enum JobCommand {
    /// Cancel the job; the reply is its record once the cancellation is durable.
    Cancel { reply: oneshot::Sender<JobRecord> },
}

/// What wakes a job's loop.
enum JobEvent {
    /// The instant the execution, the statistics write or the shutdown drain asked for.
    Wakeup,
    /// The write-ahead batch in flight ended: durable, or abandoned because the hub stops.
    Saved(Result<StoreResult<()>, JoinError>),
    /// An attempt's action ended (or was aborted, or panicked).
    Outcome(Result<(tokio::task::Id, Outcome), JoinError>),
    /// Devices connected, or twins changed, somewhere in the fleet.
    Fleet(Result<FleetEvents, broadcast::error::RecvError>),
    /// A dynamic job's check of changed twins: the devices that match its condition now.
    Matched(Result<Vec<IdentityKey>, JoinError>),
    Command(JobCommand),
    /// The hub is stopping.
    Shutdown,
}

pub(super) struct JobTask {
    service: Arc<JobService>,
    record: JobRecord,
    plan: JobPlan,
    commands: mpsc::Receiver<JobCommand>,
    statistics: watch::Sender<Statistics>,
    /// Its targets are frozen (it was running, maybe before a restart).
    started: bool,
}

/// How a waiting phase ended.
enum Waited<T> {
    Ready(T),
    /// The job ended (cancelled, or its deadline passed) or the hub stops: nothing more to do.
    Over,
}

/// What ended one wait of [`JobTask::wait`].
enum Woke<T> {
    Stop,
    Command(Option<JobCommand>),
    Deadline,
    Ready(T),
}

/// How the drive loop ended.
enum Ending {
    Finished,
    Stopped,
}

impl JobTask {
    pub(super) fn new(
        service: Arc<JobService>,
        record: JobRecord,
        plan: JobPlan,
        commands: mpsc::Receiver<JobCommand>,
        statistics: watch::Sender<Statistics>,
    ) -> Self {
        Self {
            service,
            record,
            plan,
            commands,
            statistics,
            started: false,
        }
    }

    pub(super) async fn run(self) {
        let service = Arc::clone(&self.service);
        let job_id = self.record.job_id.clone();
        let dynamic = self.plan.options.dynamic_targets;
        if dynamic {
            service.dynamic_jobs.fetch_add(1, Ordering::Relaxed);
        }
        self.run_phases().await;
        if dynamic {
            service.dynamic_jobs.fetch_sub(1, Ordering::Relaxed);
        }
        service.forget(&job_id);
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.service.services.store
    }

    fn stop(&self) -> &CancellationToken {
        &self.service.stop
    }

    async fn run_phases(mut self) {
        // Subscribe before the targets are read, so no connection after that point goes unnoticed.
        let fleet = self.service.fleet.subscribe();
        let Some(existing) = self.load_targets().await else {
            return;
        };
        let policy = self
            .plan
            .policy(&self.service.settings, self.record.created_time);
        let mut execution = Execution::restore(existing, policy, now());
        let slot = match self.record.status {
            JobStatus::Completed | JobStatus::Failed => return,
            JobStatus::Cancelled => {
                // Stopped while cancelled attempts were out: settle them, start nothing.
                let records = execution.cancel(now());
                let mut pending = records;
                pending.extend(execution.poll(now()).records);
                if !self.save_targets(pending).await {
                    return;
                }
                None
            }
            JobStatus::Running => {
                self.started = true;
                let Waited::Ready(slot) = self.wait_for_slot(&mut execution).await else {
                    return;
                };
                if self.record.status != JobStatus::Running
                    && !self.set_status(JobStatus::Running).await
                {
                    return;
                }
                Some(slot)
            }
            JobStatus::Queued | JobStatus::Scheduled | JobStatus::Enqueued | JobStatus::Unknown => {
                if self.plan.start_time > now() && !self.set_status(JobStatus::Scheduled).await {
                    return;
                }
                while self.plan.start_time > now() {
                    let start = sleep_until_time(self.plan.start_time);
                    if let Waited::Over = self.wait(&mut execution, start).await {
                        return;
                    }
                }
                let Waited::Ready(slot) = self.wait_for_slot(&mut execution).await else {
                    return;
                };
                if !self.freeze_targets(&mut execution).await {
                    return;
                }
                Some(slot)
            }
        };
        let ending = self.drive(execution, fleet).await;
        drop(slot);
        if let Ending::Stopped = ending {
            tracing::info!(job = %self.record.job_id, "job paused by shutdown; it resumes at the next start");
        }
    }

    /// Every stored target record (none for a job that never ran; a partial set if the hub stopped while
    /// it was saving them).
    async fn load_targets(&self) -> Option<Vec<TargetRecord>> {
        let mut records = Vec::new();
        let mut after = None;
        loop {
            let job_id = &self.record.job_id;
            let page = self
                .durably("read the job's targets", || {
                    self.store().list_job_targets(job_id, after.clone(), 2000)
                })
                .await?;
            let exhausted = page.len() < 2000;
            after = page.last().map(|record| record.target.clone());
            records.extend(page);
            if exhausted {
                return Some(records);
            }
        }
    }

    async fn wait_for_slot(&mut self, execution: &mut Execution) -> Waited<OwnedSemaphorePermit> {
        let slots = Arc::clone(&self.service.running_slots);
        if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            return Waited::Ready(slot);
        }
        if self.record.status != JobStatus::Queued && !self.set_status(JobStatus::Queued).await {
            return Waited::Over;
        }
        let acquire = async move {
            slots
                .acquire_owned()
                .await
                .expect("the running-job semaphore is never closed")
        };
        self.wait(execution, acquire).await
    }

    /// Waits for `ready` while answering a cancel, watching the deadline, and stopping with the hub.
    async fn wait<T>(
        &mut self,
        execution: &mut Execution,
        ready: impl Future<Output = T>,
    ) -> Waited<T> {
        tokio::pin!(ready);
        let deadline_at = self.plan.deadline(self.record.created_time);
        let deadline = sleep_until_time(deadline_at);
        tokio::pin!(deadline);
        let stop = self.stop().clone();
        loop {
            let woke = tokio::select! {
                biased;
                () = stop.cancelled() => Woke::Stop,
                command = self.commands.recv() => Woke::Command(command),
                () = &mut deadline => Woke::Deadline,
                value = &mut ready => Woke::Ready(value),
            };
            match woke {
                Woke::Ready(value) => return Waited::Ready(value),
                Woke::Stop | Woke::Command(None) => return Waited::Over,
                Woke::Command(Some(JobCommand::Cancel { reply })) => {
                    let records = execution.cancel(now());
                    self.end_before_start(
                        execution,
                        records,
                        JobStatus::Cancelled,
                        None,
                        Some(reply),
                    )
                    .await;
                    return Waited::Over;
                }
                // Long waits are cut into several sleeps; only the real deadline ends the job.
                Woke::Deadline if now() < deadline_at => {
                    deadline.as_mut().reset(instant_at(deadline_at));
                }
                Woke::Deadline => {
                    let records = execution.poll(now()).records;
                    let reason = format!(
                        "the maximum execution time of {} s ran out before one of the hub's {} running-job slots was free",
                        self.plan.max_execution_time.as_secs(),
                        self.service.settings.max_running_jobs
                    );
                    self.end_before_start(
                        execution,
                        records,
                        JobStatus::Failed,
                        Some(reason),
                        None,
                    )
                    .await;
                    return Waited::Over;
                }
            }
        }
    }

    async fn end_before_start(
        &mut self,
        execution: &Execution,
        records: Vec<TargetRecord>,
        status: JobStatus,
        failure_reason: Option<String>,
        reply: Option<oneshot::Sender<JobRecord>>,
    ) {
        if !self.save_targets(records).await {
            return;
        }
        if self.started {
            // A resumed job waiting for a slot again ends as a running job does.
            if status == JobStatus::Cancelled {
                self.record.status = status;
            }
            self.finish(execution, status != JobStatus::Cancelled).await;
            if let Some(reply) = reply {
                let _ = reply.send(self.record.clone());
            }
            return;
        }
        self.record.status = status;
        self.record.end_time = Some(now());
        self.record.status_message = Some(match status {
            JobStatus::Cancelled => "cancelled before it started".to_owned(),
            _ => "ended before it started".to_owned(),
        });
        self.record.failure_reason = failure_reason;
        self.record.statistics = execution.statistics();
        if self.write_record().await
            && let Some(reply) = reply
        {
            let _ = reply.send(self.record.clone());
        }
    }

    /// Resolves the query condition (the target set is frozen now), saves the new targets (before anything
    /// can start on them), and marks the job running.
    async fn freeze_targets(&mut self, execution: &mut Execution) -> bool {
        let services = &self.service.services;
        let keys = loop {
            match services
                .matching_keys(&self.plan.condition, Source::Devices)
                .await
            {
                Ok(keys) => break keys,
                Err(RunQueryError::Store(error)) => {
                    if !self.back_off("resolve the query condition", &error).await {
                        return false;
                    }
                }
                Err(other) => {
                    let records = execution.cancel(now());
                    self.end_before_start(
                        execution,
                        records,
                        JobStatus::Failed,
                        Some(format!("queryCondition: {other}")),
                        None,
                    )
                    .await;
                    return false;
                }
            }
        };
        let added = execution.add_targets(keys, now());
        if !self.save_targets(added).await {
            return false;
        }
        self.started = true;
        self.record.statistics = execution.statistics();
        self.set_status(JobStatus::Running).await
    }

    /// The executor's loop (see `fleethub_core::executor`), with write-ahead batches: the records of each
    /// poll become durable before the attempts the poll started begin.
    async fn drive(
        &mut self,
        mut execution: Execution,
        fleet: broadcast::Receiver<FleetEvents>,
    ) -> Ending {
        let mut sources = Sources {
            commands_open: true,
            fleet,
            fleet_open: true,
            attempts: JoinSet::new(),
            saving: None,
            matching: JoinSet::new(),
            stop: self.stop().clone(),
            stopping: self.stop().is_cancelled(),
        };
        let mut state = DriveState::default();
        if sources.stopping {
            execution.pause();
            state.draining = Some(self.service.drain_deadline());
        }
        let condition = Arc::new(
            fleethub_query::parse_condition(&self.plan.condition, Source::Devices)
                .expect("the condition was checked when the job was created"),
        );
        let deadline = self.plan.deadline(self.record.created_time);
        let dynamic = self.plan.options.dynamic_targets;
        let action = Arc::new(self.plan.action.clone());
        let mut written_statistics = self.record.statistics;
        let mut next_statistics_write = Instant::now();
        loop {
            let now = now();
            let step = poll_catching_up(&mut execution, &mut state.polled_at, now);
            state.unsaved.extend(step.records);
            for attempt in step.abandon {
                if !state.awaiting.remove(&attempt)
                    && let Some((number, handle)) = state.running.get(&attempt.target)
                    && *number == attempt.number
                {
                    handle.abort();
                    state.running.remove(&attempt.target);
                }
            }
            for attempt in step.start {
                state.awaiting.insert(attempt.clone());
                state.unsaved_starts.push(attempt);
            }
            if sources.saving.is_none() && !state.unsaved.is_empty() {
                sources.saving = Some(Saving::spawn(
                    Arc::clone(self.store()),
                    self.record.job_id.clone(),
                    std::mem::take(&mut state.unsaved),
                    std::mem::take(&mut state.unsaved_starts),
                    self.stop().clone(),
                ));
            }
            let durable = sources.saving.is_none() && state.unsaved.is_empty();
            let statistics = execution.statistics();
            self.statistics.send_replace(statistics);

            let over = execution.is_finished()
                && (!dynamic || execution.is_cancelled() || now >= deadline);
            if over && durable {
                self.finish(&execution, now >= deadline).await;
                for reply in state.cancel_replies.drain(..) {
                    let _ = reply.send(self.record.clone());
                }
                return Ending::Finished;
            }
            if durable && (!state.cancel_replies.is_empty() || state.status_unwritten) {
                self.record.statistics = statistics;
                if !self.write_record().await {
                    return Ending::Stopped;
                }
                written_statistics = statistics;
                state.status_unwritten = false;
                for reply in state.cancel_replies.drain(..) {
                    let _ = reply.send(self.record.clone());
                }
            }
            if let Some(drain) = state.draining
                && (state.running.is_empty() || Instant::now() >= drain)
                && durable
            {
                self.record.statistics = statistics;
                self.write_record().await;
                return Ending::Stopped;
            }
            if statistics != written_statistics && Instant::now() >= next_statistics_write {
                self.record.statistics = statistics;
                if !self.write_record().await {
                    return Ending::Stopped;
                }
                written_statistics = statistics;
                next_statistics_write = Instant::now() + STATISTICS_INTERVAL;
            }

            let mut wakeup = execution.next_wakeup().map(instant_at);
            if dynamic && !execution.is_cancelled() {
                wakeup = earliest(wakeup, Some(instant_at(deadline)));
            }
            if statistics != written_statistics {
                wakeup = earliest(wakeup, Some(next_statistics_write));
            }
            wakeup = earliest(wakeup, state.draining);
            let event = sources.next(wakeup, &mut self.commands).await;
            self.handle(
                event,
                &mut execution,
                &mut sources,
                &mut state,
                &action,
                &condition,
            )
            .await;
            // Take every outcome already in: one write-ahead batch then carries them all.
            while let Some(result) = sources.attempts.try_join_next_with_id() {
                self.handle(
                    JobEvent::Outcome(result),
                    &mut execution,
                    &mut sources,
                    &mut state,
                    &action,
                    &condition,
                )
                .await;
            }
        }
    }

    async fn handle(
        &mut self,
        event: JobEvent,
        execution: &mut Execution,
        sources: &mut Sources,
        state: &mut DriveState,
        action: &Arc<JobAction>,
        condition: &Arc<Query>,
    ) {
        let now = now();
        match event {
            JobEvent::Wakeup => {}
            JobEvent::Saved(result) => {
                let saving = sources
                    .saving
                    .take()
                    .expect("a saved event comes from the batch in flight");
                let durable = matches!(result, Ok(Ok(())));
                if !durable {
                    // The batch is given up only when the hub stops: start nothing after that.
                    state.draining.get_or_insert_with(Instant::now);
                    execution.pause();
                }
                for attempt in saving.starts {
                    // A durable start begins even while stopping (the drain waits for it): left out, it would
                    // count as interrupted after the restart. A lost batch never begins.
                    if state.awaiting.remove(&attempt) && durable {
                        self.begin(attempt, sources, state, action);
                    }
                }
            }
            JobEvent::Outcome(result) => {
                let (id, outcome) = match result {
                    Ok((id, outcome)) => (id, outcome),
                    Err(error) if error.is_cancelled() => {
                        state.task_attempts.remove(&error.id());
                        return;
                    }
                    Err(error) => {
                        tracing::error!(job = %self.record.job_id, %error, "a job action panicked");
                        (
                            error.id(),
                            Outcome::Failed(TargetError::new(
                                ErrorCode::ServerError.name(),
                                "the hub failed while running this device's action",
                            )),
                        )
                    }
                };
                let Some(attempt) = state.task_attempts.remove(&id) else {
                    return;
                };
                if state
                    .running
                    .get(&attempt.target)
                    .is_some_and(|(number, _)| *number == attempt.number)
                {
                    state.running.remove(&attempt.target);
                }
                let offline = matches!(outcome, Outcome::Offline);
                if let Some(record) =
                    execution.on_outcome(&attempt.target, attempt.number, outcome, now)
                {
                    state.unsaved.push(record);
                }
                // The device connected around the time it was found offline: its connection event may have
                // come before this outcome, so look again (with the subscribe grace).
                if offline && state.came_online_recently(&attempt.target) {
                    execution.on_device_online(&attempt.target, now);
                }
            }
            JobEvent::Fleet(Ok(events)) => {
                let mut candidates = Vec::new();
                for event in events.iter() {
                    let (FleetEvent::Connected(key) | FleetEvent::Changed(key)) = event;
                    let is_target = execution.record(key).is_some();
                    if is_target {
                        if let FleetEvent::Connected(_) = event {
                            state.online.insert(key.clone(), Instant::now());
                            execution.on_device_online(key, now);
                        }
                    } else if self.plan.options.dynamic_targets && !execution.is_cancelled() {
                        candidates.push(key.clone());
                    }
                }
                state.forget_old_connections();
                if !candidates.is_empty() {
                    let services = Arc::clone(&self.service.services);
                    let condition = Arc::clone(condition);
                    sources.matching.spawn(async move {
                        let mut matched = Vec::new();
                        for key in candidates {
                            if let Ok(Some(record)) = services.store.get(&key).await
                                && condition.matches(&record.twin_json())
                            {
                                matched.push(key);
                            }
                        }
                        matched
                    });
                }
            }
            JobEvent::Fleet(Err(broadcast::error::RecvError::Lagged(missed))) => {
                tracing::warn!(job = %self.record.job_id, missed, "job fell behind the change feed; resynchronising");
                self.resynchronise(execution, sources, now).await;
            }
            JobEvent::Fleet(Err(broadcast::error::RecvError::Closed)) => sources.fleet_open = false,
            JobEvent::Matched(Ok(keys)) => {
                if !keys.is_empty() {
                    state.unsaved.extend(execution.add_targets(keys, now));
                }
            }
            JobEvent::Matched(Err(error)) => {
                tracing::error!(job = %self.record.job_id, %error, "checking changed twins failed");
            }
            JobEvent::Command(JobCommand::Cancel { reply }) => {
                state.unsaved.extend(execution.cancel(now));
                if self.record.status != JobStatus::Cancelled {
                    self.record.status = JobStatus::Cancelled;
                    state.status_unwritten = true;
                }
                state.cancel_replies.push(reply);
            }
            JobEvent::Shutdown => {
                execution.pause();
                state.draining = Some(self.service.drain_deadline());
            }
        }
    }

    /// Begins an attempt whose start record is durable.
    fn begin(
        &self,
        attempt: Attempt,
        sources: &mut Sources,
        state: &mut DriveState,
        action: &Arc<JobAction>,
    ) {
        let services = Arc::clone(&self.service.services);
        let action = Arc::clone(action);
        let key = attempt.target.clone();
        let subscribe_grace = state.came_online_recently(&key);
        let handle = sources
            .attempts
            .spawn(async move { run_action(&services, &key, &action, subscribe_grace).await });
        state.task_attempts.insert(handle.id(), attempt.clone());
        state
            .running
            .insert(attempt.target.clone(), (attempt.number, handle));
    }

    /// After missing fleet events: pending targets whose device is connected now are retried, and a dynamic
    /// job resolves its condition again.
    async fn resynchronise(
        &self,
        execution: &mut Execution,
        sources: &mut Sources,
        now: OffsetDateTime,
    ) {
        let router = self.service.services.router();
        let pending: Vec<IdentityKey> = execution
            .records()
            .filter(|record| record.status == fleethub_core::executor::TargetStatus::Pending)
            .map(|record| record.target)
            .collect();
        for key in pending {
            if router
                .wait_for_subscription(&key, Subscription::Methods, Duration::ZERO)
                .await
            {
                execution.on_device_online(&key, now);
            }
        }
        if self.plan.options.dynamic_targets && !execution.is_cancelled() {
            let services = Arc::clone(&self.service.services);
            let condition = self.plan.condition.clone();
            sources.matching.spawn(async move {
                services
                    .matching_keys(&condition, Source::Devices)
                    .await
                    .unwrap_or_default()
            });
        }
    }

    /// The job is over: its final counts, end time and status.
    async fn finish(&mut self, execution: &Execution, deadline_passed: bool) {
        let statistics = execution.statistics();
        if self.record.status != JobStatus::Cancelled {
            self.record.status = JobStatus::Completed;
        }
        self.record.end_time = Some(now());
        self.record.statistics = statistics;
        let mut message = format!(
            "{} of {} devices succeeded, {} failed",
            statistics.succeeded, statistics.device_count, statistics.failed
        );
        if statistics.cancelled > 0 {
            message.push_str(&format!(", {} cancelled", statistics.cancelled));
        }
        if deadline_passed && execution.is_expired() {
            message.push_str(&format!(
                "; the maximum execution time of {} s ran out",
                self.plan.max_execution_time.as_secs()
            ));
        }
        self.record.status_message = Some(message);
        self.statistics.send_replace(statistics);
        self.write_record().await;
        tracing::info!(
            job = %self.record.job_id,
            status = self.record.status.as_str(),
            succeeded = statistics.succeeded,
            failed = statistics.failed,
            cancelled = statistics.cancelled,
            "job ended"
        );
    }

    async fn set_status(&mut self, status: JobStatus) -> bool {
        self.record.status = status;
        self.write_record().await
    }

    async fn write_record(&self) -> bool {
        let record = &self.record;
        self.durably("write the job", || self.store().update_job(record.clone()))
            .await
            .is_some()
    }

    async fn save_targets(&self, records: Vec<TargetRecord>) -> bool {
        if records.is_empty() {
            return true;
        }
        let job_id = &self.record.job_id;
        self.durably("save the job's targets", || {
            self.store().save_job_targets(job_id, records.clone())
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
            &format!("job {}", self.record.job_id),
            what,
            self.stop(),
            operation,
        )
        .await
    }

    /// Logs a store failure and waits before the next try; false if the hub stops meanwhile.
    async fn back_off(&self, what: &str, error: &StoreError) -> bool {
        crate::retry::back_off(
            &format!("job {}", self.record.job_id),
            what,
            error,
            self.stop(),
        )
        .await
    }
}

/// Book-keeping of the drive loop.
#[derive(Default)]
struct DriveState {
    /// Records not handed to the store yet.
    unsaved: Vec<TargetRecord>,
    /// Attempts whose start record is in `unsaved`.
    unsaved_starts: Vec<Attempt>,
    /// Attempts started by the executor whose action waits for their record to be durable.
    awaiting: HashSet<Attempt>,
    /// Actions running, by target: the attempt number and the task.
    running: HashMap<IdentityKey, (u32, AbortHandle)>,
    task_attempts: HashMap<tokio::task::Id, Attempt>,
    /// Targets whose device connected within the last [`ONLINE_SUBSCRIBE_GRACE`].
    online: HashMap<IdentityKey, Instant>,
    cancel_replies: Vec<oneshot::Sender<JobRecord>>,
    /// The job's status changed (cancel) and its row does not show it yet.
    status_unwritten: bool,
    /// Stopping: no more starts; end when running actions are done or at this instant.
    draining: Option<Instant>,
    /// The latest instant the execution was polled at.
    polled_at: Option<OffsetDateTime>,
}

impl DriveState {
    fn came_online_recently(&self, key: &IdentityKey) -> bool {
        self.online
            .get(key)
            .is_some_and(|at| at.elapsed() < ONLINE_SUBSCRIBE_GRACE)
    }

    fn forget_old_connections(&mut self) {
        self.online
            .retain(|_, at| at.elapsed() < ONLINE_SUBSCRIBE_GRACE);
    }
}

/// The write-ahead batch being committed, and the attempts waiting for it.
struct Saving {
    handle: JoinHandle<StoreResult<()>>,
    starts: Vec<Attempt>,
}

impl Saving {
    /// Writes `records` in a task of its own (retrying until the hub stops), so the job's loop goes on
    /// collecting the next batch meanwhile.
    fn spawn(
        store: Arc<dyn Store>,
        job_id: JobId,
        records: Vec<TargetRecord>,
        starts: Vec<Attempt>,
        stop: CancellationToken,
    ) -> Saving {
        let handle = tokio::spawn(async move {
            loop {
                match store.save_job_targets(&job_id, records.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(job = %job_id, %error, "cannot save the job's targets; retrying");
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

/// Everything a job's loop waits on.
struct Sources {
    commands_open: bool,
    fleet: broadcast::Receiver<FleetEvents>,
    fleet_open: bool,
    attempts: JoinSet<Outcome>,
    saving: Option<Saving>,
    matching: JoinSet<Vec<IdentityKey>>,
    stop: CancellationToken,
    stopping: bool,
}

impl Sources {
    async fn next(
        &mut self,
        wakeup: Option<Instant>,
        commands: &mut mpsc::Receiver<JobCommand>,
    ) -> JobEvent {
        let Sources {
            commands_open,
            fleet,
            fleet_open,
            attempts,
            saving,
            matching,
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
        let commands_enabled = *commands_open;
        let fleet_enabled = *fleet_open;
        let event = tokio::select! {
            biased;
            () = stop.cancelled(), if stop_enabled => Some(JobEvent::Shutdown),
            command = commands.recv(), if commands_enabled => command.map(JobEvent::Command),
            result = saved => Some(JobEvent::Saved(result)),
            Some(result) = attempts.join_next_with_id() => Some(JobEvent::Outcome(result)),
            received = fleet.recv(), if fleet_enabled => Some(JobEvent::Fleet(received)),
            Some(result) = matching.join_next() => Some(JobEvent::Matched(result)),
            () = sleep => Some(JobEvent::Wakeup),
        };
        match event {
            Some(JobEvent::Shutdown) => {
                *stopping = true;
                JobEvent::Shutdown
            }
            Some(event) => event,
            // Every sender of commands is gone (the service forgot the job): stop listening.
            None => {
                *commands_open = false;
                JobEvent::Wakeup
            }
        }
    }
}

/// One attempt of the job's action on one device.
async fn run_action(
    services: &Services,
    key: &IdentityKey,
    action: &JobAction,
    subscribe_grace: bool,
) -> Outcome {
    match action {
        JobAction::InvokeMethod(invocation) => {
            let mut invocation = invocation.clone();
            // A pending device is found offline at once; the attempt after its connection gives it time to
            // subscribe to methods.
            invocation.connect_timeout = if subscribe_grace {
                ONLINE_SUBSCRIBE_GRACE.max(invocation.connect_timeout)
            } else {
                Duration::ZERO
            };
            match services.invoke_method(key, invocation).await {
                Ok(result) => Outcome::Succeeded(json!({
                    "status": result.status,
                    "payload": result.payload,
                })),
                Err(InvokeMethodError::NotOnline(_)) => Outcome::Offline,
                Err(error) => {
                    let code = match &error {
                        InvokeMethodError::NotFound(_) => ErrorCode::DeviceNotFound,
                        InvokeMethodError::NotOnline(_) => ErrorCode::DeviceNotOnline,
                        InvokeMethodError::Timeout { .. } => ErrorCode::GatewayTimeout,
                        InvokeMethodError::Busy(_) => ErrorCode::ThrottlingException,
                        InvokeMethodError::PayloadTooLarge { .. } => ErrorCode::MessageTooLarge,
                        InvokeMethodError::InvalidResponse(_) => ErrorCode::GenericBadRequest,
                        InvokeMethodError::Store(store) => store_error_code(store),
                    };
                    Outcome::Failed(TargetError::new(code.name(), error.to_string()))
                }
            }
        }
        JobAction::UpdateTwin(patch) => {
            match services
                .update_twin(key, TwinChange::ServicePatch(patch.clone()), IfMatch::Any)
                .await
            {
                Ok(updated) => {
                    Outcome::Succeeded(json!({ "version": updated.record.twin.version() }))
                }
                Err(error) => Outcome::Failed(TargetError::new(
                    store_error_code(&error).name(),
                    error.to_string(),
                )),
            }
        }
    }
}

fn store_error_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::NotFound(_) | StoreError::ParentNotFound(_) => ErrorCode::DeviceNotFound,
        StoreError::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
        StoreError::Twin(_) | StoreError::IdentitySpec(_) => ErrorCode::ArgumentInvalid,
        // Storage failures, and what a twin write or method call cannot meet (other kinds of records).
        _ => ErrorCode::ServerError,
    }
}

/// Most polls at past instants in one catch-up (each may start one attempt under a start rate).
const MAX_CATCH_UP_POLLS: usize = 1000;

/// Polls at every instant the execution asked to be polled at that has already passed, then at `now`.
/// The executor spaces starts from the time it is polled at, and timers fire up to a millisecond late, so
/// polling only at `now` would lose that lateness at every start (1000 starts/s would become about 700);
/// polling at the instants asked for keeps the rate exact, with start times at most that late.
/// `polled_at` is the latest instant polled at: polls never go back in time.
fn poll_catching_up(
    execution: &mut Execution,
    polled_at: &mut Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Step {
    let mut step = Step::default();
    for _ in 0..MAX_CATCH_UP_POLLS {
        match execution.next_wakeup() {
            Some(at) if at < now && polled_at.is_none_or(|polled| at > polled) => {
                let caught_up = execution.poll(at);
                step.records.extend(caught_up.records);
                step.abandon.extend(caught_up.abandon);
                step.start.extend(caught_up.start);
                *polled_at = Some(at);
            }
            _ => break,
        }
    }
    let now = polled_at.map_or(now, |polled| polled.max(now));
    *polled_at = Some(now);
    let current = execution.poll(now);
    step.records.extend(current.records);
    step.abandon.extend(current.abandon);
    step.start.extend(current.start);
    step
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The tokio instant at which the wall clock reads `at` (now, if that is past; at most a year ahead, so
/// waiting for a later instant takes more than one sleep: callers check the time when they wake).
fn instant_at(at: OffsetDateTime) -> Instant {
    const FURTHEST: Duration = Duration::from_secs(365 * 24 * 3600);
    let delay = Duration::try_from(at - now()).unwrap_or(Duration::ZERO);
    Instant::now() + delay.min(FURTHEST)
}

fn sleep_until_time(at: OffsetDateTime) -> tokio::time::Sleep {
    tokio::time::sleep_until(instant_at(at))
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
