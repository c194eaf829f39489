//! Property tests of the fleet executor: random policies and random event sequences (outcomes, time,
//! connections, cancel, pause, restarts) against the invariants in the module docs, with a model of the
//! store that only ever sees the records the executor hands out.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

fn at_millis(millis: u64) -> OffsetDateTime {
    T0 + time::Duration::milliseconds(millis as i64)
}

#[derive(Clone, Debug)]
enum Answer {
    Succeed,
    Fail,
    Offline,
}

#[derive(Clone, Debug)]
enum Event {
    Advance(u64),
    /// Answers the outstanding attempt at this position (modulo their number).
    Answer(usize, Answer),
    /// Answers an attempt the executor abandoned (modulo their number).
    AnswerAbandoned(usize),
    Online(usize),
    Cancel,
    Pause,
    Resume,
    /// The hub dies and restarts from the persisted records.
    Restart,
    AddTargets(u8),
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        Just(Answer::Succeed),
        Just(Answer::Fail),
        Just(Answer::Offline)
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (0u64..4000).prop_map(Event::Advance),
        6 => (any::<usize>(), answer()).prop_map(|(pick, answer)| Event::Answer(pick, answer)),
        1 => any::<usize>().prop_map(Event::AnswerAbandoned),
        2 => any::<usize>().prop_map(Event::Online),
        1 => Just(Event::Cancel),
        1 => Just(Event::Pause),
        1 => Just(Event::Resume),
        1 => Just(Event::Restart),
        1 => (1u8..4).prop_map(Event::AddTargets),
    ]
}

fn millis(range: std::ops::Range<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(Duration::from_millis)
}

fn policy() -> impl Strategy<Value = ExecutionPolicy> {
    (
        1usize..5,
        proptest::option::of(millis(0..3000)),
        millis(1..6000),
        1u32..4,
        millis(0..3000),
        proptest::option::of(millis(1..8000)),
        proptest::option::of(1000u64..80_000),
    )
        .prop_map(
            |(
                max_concurrency,
                min_start_interval,
                per_device_timeout,
                max_attempts,
                retry_backoff,
                offline_retry_interval,
                deadline,
            )| ExecutionPolicy {
                max_concurrency,
                min_start_interval,
                per_device_timeout,
                max_attempts,
                retry_backoff,
                offline_retry_interval,
                deadline: deadline.map(at_millis),
            },
        )
}

fn target(number: usize) -> IdentityKey {
    IdentityKey::device(format!("device-{number:03}").parse().expect("valid id"))
}

/// The executor, the runner's bookkeeping and a model of the store.
struct Harness {
    execution: Execution,
    policy: ExecutionPolicy,
    now: OffsetDateTime,
    /// What the store holds: the latest record handed out per target.
    store: BTreeMap<IdentityKey, TargetRecord>,
    outstanding: Vec<Attempt>,
    abandoned: Vec<Attempt>,
    /// Start times since the last restart (the rate limit holds within one `Execution`).
    starts: Vec<OffsetDateTime>,
    target_count: usize,
    cancelled: bool,
}

impl Harness {
    fn new(policy: ExecutionPolicy, target_count: usize) -> Self {
        let targets: Vec<IdentityKey> = (0..target_count).map(target).collect();
        let execution = Execution::new(targets, policy.clone(), T0);
        let store = execution
            .records()
            .map(|record| (record.target.clone(), record))
            .collect();
        Harness {
            execution,
            policy,
            now: T0,
            store,
            outstanding: Vec::new(),
            abandoned: Vec::new(),
            starts: Vec::new(),
            target_count,
            cancelled: false,
        }
    }

    fn persist(&mut self, records: impl IntoIterator<Item = TargetRecord>) {
        for record in records {
            self.store.insert(record.target.clone(), record);
        }
    }

    fn poll(&mut self) {
        let before = self.execution.statistics();
        let step = self.execution.poll(self.now);
        // The runner stops the abandoned attempts before it begins the new ones (module docs, step 3): a
        // timed-out attempt and its retry (no backoff) come in the same step.
        for attempt in &step.abandon {
            let position = self
                .outstanding
                .iter()
                .position(|out| out == attempt)
                .expect("only outstanding attempts are abandoned");
            self.abandoned.push(self.outstanding.swap_remove(position));
        }
        let mut seen = std::collections::HashSet::new();
        for record in &step.records {
            assert!(
                seen.insert(record.target.clone()),
                "one record per target per step"
            );
        }
        for attempt in &step.start {
            let record = step
                .records
                .iter()
                .find(|record| record.target == attempt.target)
                .expect("a start is written ahead");
            assert_eq!(record.status, TargetStatus::Running);
            assert!(
                record.attempts <= self.policy.max_attempts,
                "{record:?} exceeds the attempts"
            );
            assert!(
                !self
                    .outstanding
                    .iter()
                    .any(|out| out.target == attempt.target),
                "a target runs one attempt at a time"
            );
            assert!(!self.cancelled, "nothing starts after a cancel");
            assert!(!self.execution.is_paused(), "nothing starts while paused");
            assert!(
                self.policy
                    .deadline
                    .is_none_or(|deadline| self.now < deadline),
                "nothing starts at or after the deadline"
            );
            self.starts.push(self.now);
        }
        if step.start.is_empty() && before == self.execution.statistics() {
            assert!(step.abandon.is_empty());
        }
        self.persist(step.records);
        self.outstanding.extend(step.start);
        self.check();
    }

    fn check(&self) {
        let statistics = self.execution.statistics();
        assert!(statistics.running <= self.execution.policy().max_concurrency as u64);
        assert_eq!(
            statistics.device_count,
            statistics.pending
                + statistics.running
                + statistics.succeeded
                + statistics.failed
                + statistics.cancelled
        );
        let records: Vec<TargetRecord> = self.execution.records().collect();
        assert_eq!(statistics, Statistics::of(&records));
        assert_eq!(statistics.device_count as usize, self.target_count);
        // Every change reached the store: it holds exactly the executor's state.
        let current: BTreeMap<IdentityKey, TargetRecord> = records
            .into_iter()
            .map(|record| (record.target.clone(), record))
            .collect();
        assert_eq!(current, self.store);
        // The runner's outstanding attempts are exactly the running targets.
        assert_eq!(statistics.running as usize, self.outstanding.len());
        for attempt in &self.outstanding {
            assert_eq!(self.store[&attempt.target].status, TargetStatus::Running);
        }
        if let Some(interval) = self.policy.min_start_interval {
            for pair in self.starts.windows(2) {
                assert!(
                    pair[1] - pair[0] >= time::Duration::try_from(interval).expect("small"),
                    "starts {pair:?} closer than {interval:?}"
                );
            }
        }
        if self
            .policy
            .deadline
            .is_some_and(|deadline| self.now >= deadline)
            && self.execution.is_expired()
        {
            assert!(self.execution.is_finished(), "the deadline ends everything");
        }
        for record in self.store.values() {
            assert_eq!(record.finished.is_some(), record.status.is_terminal());
        }
        if self.execution.next_wakeup().is_some() {
            assert!(!self.execution.is_finished());
        }
    }

    fn answer(&mut self, pick: usize, answer: &Answer) {
        if self.outstanding.is_empty() {
            return;
        }
        let attempt = self.outstanding.swap_remove(pick % self.outstanding.len());
        let outcome = match answer {
            Answer::Succeed => Outcome::Succeeded(json!({"attempt": attempt.number})),
            Answer::Fail => Outcome::Failed(TargetError::new("Boom", "it failed")),
            Answer::Offline => Outcome::Offline,
        };
        let attempts_before = self.store[&attempt.target].attempts;
        let record = self
            .execution
            .on_outcome(&attempt.target, attempt.number, outcome, self.now)
            .expect("an outstanding attempt is running");
        if matches!(answer, Answer::Offline) {
            assert_eq!(
                record.attempts + 1,
                attempts_before,
                "an offline attempt is given back"
            );
            assert!(matches!(
                record.status,
                TargetStatus::Pending | TargetStatus::Cancelled
            ));
        }
        if self.cancelled {
            assert_ne!(record.status, TargetStatus::Pending);
        }
        self.persist([record]);
    }

    fn restart(&mut self) {
        let records: Vec<TargetRecord> = self.store.values().cloned().collect();
        let before = Statistics::of(&records);
        let interrupted_with_attempts_left = records
            .iter()
            .filter(|record| {
                record.status == TargetStatus::Running && record.attempts < self.policy.max_attempts
            })
            .count() as u64;
        let mut execution = Execution::restore(records, self.policy.clone(), self.now);
        let restored = execution.statistics();
        assert_eq!(
            restored,
            Statistics {
                pending: before.pending + interrupted_with_attempts_left,
                running: 0,
                failed: before.failed + before.running - interrupted_with_attempts_left,
                ..before
            },
            "restore keeps every target and settles interrupted attempts"
        );
        if self.execution.is_paused() {
            execution.pause();
        }
        if self.cancelled {
            // The owner re-applies a persisted cancel.
            let records = execution.cancel(self.now);
            self.persist(records);
        }
        self.execution = execution;
        self.outstanding.clear();
        self.abandoned.clear();
        self.starts.clear();
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Advance(millis) => {
                self.now += time::Duration::milliseconds(*millis as i64);
            }
            Event::Answer(pick, answer) => self.answer(*pick, answer),
            Event::AnswerAbandoned(pick) => {
                if !self.abandoned.is_empty() {
                    let attempt = &self.abandoned[pick % self.abandoned.len()];
                    let late = self.execution.on_outcome(
                        &attempt.target,
                        attempt.number,
                        Outcome::Succeeded(json!("late")),
                        self.now,
                    );
                    assert_eq!(late, None, "an abandoned attempt's outcome is ignored");
                }
            }
            Event::Online(pick) => {
                if self.target_count > 0 {
                    let key = target(pick % self.target_count);
                    self.execution.on_device_online(&key, self.now);
                }
            }
            Event::Cancel => {
                let records = self.execution.cancel(self.now);
                if !self.execution.is_expired() {
                    self.cancelled = true;
                }
                for record in &records {
                    assert_eq!(record.status, TargetStatus::Cancelled);
                }
                self.persist(records);
                assert_eq!(self.execution.statistics().pending, 0);
            }
            Event::Pause => self.execution.pause(),
            Event::Resume => self.execution.resume(),
            Event::Restart => self.restart(),
            Event::AddTargets(count) => {
                let new: Vec<IdentityKey> = (self.target_count
                    ..self.target_count + usize::from(*count))
                    .map(target)
                    .collect();
                let records = self.execution.add_targets(new, self.now);
                self.target_count += records.len();
                self.persist(records);
            }
        }
        // Changes without a record of their own (a restore's settled attempts) come out of this poll.
        self.poll();
    }

    /// Lets the execution run out: devices connect, attempts succeed, time moves to each wakeup.
    fn drain(&mut self) {
        self.execution.resume();
        for _ in 0..10_000 {
            self.poll();
            if self.execution.is_finished() {
                return;
            }
            while !self.outstanding.is_empty() {
                self.answer(0, &Answer::Succeed);
            }
            for number in 0..self.target_count {
                self.execution.on_device_online(&target(number), self.now);
            }
            self.poll();
            if let Some(wakeup) = self.execution.next_wakeup() {
                self.now = self.now.max(wakeup);
            }
        }
        panic!(
            "the execution did not finish: {:?}",
            self.execution.statistics()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn executions_keep_their_invariants_and_always_finish(
        policy in policy(),
        target_count in 0usize..12,
        events in proptest::collection::vec(event(), 0..80),
    ) {
        let mut harness = Harness::new(policy, target_count);
        harness.poll();
        for event in &events {
            harness.apply(event);
        }
        harness.drain();
        let statistics = harness.execution.statistics();
        prop_assert!(harness.execution.is_finished());
        prop_assert_eq!(statistics.pending + statistics.running, 0);
        for record in harness.store.values() {
            prop_assert!(record.status.is_terminal(), "{:?}", record);
            prop_assert!(record.attempts <= harness.policy.max_attempts);
            if record.status == TargetStatus::Succeeded {
                prop_assert!(record.outcome.is_some());
                prop_assert!(record.error.is_none());
            }
        }
        if harness.cancelled {
            prop_assert_eq!(statistics.pending, 0);
        }
        // Restoring a finished run gives back the same statistics and records.
        let records: Vec<TargetRecord> = harness.store.values().cloned().collect();
        let mut restored = Execution::restore(records.clone(), harness.policy.clone(), harness.now);
        prop_assert_eq!(restored.statistics(), statistics);
        prop_assert!(restored.is_finished());
        prop_assert_eq!(restored.poll(harness.now), Step::default());
        prop_assert_eq!(restored.records().collect::<Vec<_>>(), records);
    }

    #[test]
    fn the_deadline_ends_everything(
        policy in policy(),
        target_count in 1usize..12,
        events in proptest::collection::vec(event(), 0..40),
        deadline in 0u64..20_000,
    ) {
        let policy = ExecutionPolicy { deadline: Some(at_millis(deadline)), ..policy };
        let mut harness = Harness::new(policy, target_count);
        harness.poll();
        for event in &events {
            harness.apply(event);
        }
        harness.now = harness.now.max(at_millis(deadline));
        harness.poll();
        prop_assert!(harness.execution.is_finished());
        prop_assert!(harness.outstanding.is_empty(), "every running attempt was abandoned");
        prop_assert_eq!(harness.execution.next_wakeup(), None);
    }

    #[test]
    fn a_cancelled_execution_finishes_once_its_running_attempts_report(
        policy in policy(),
        target_count in 1usize..12,
        events in proptest::collection::vec(event(), 0..40),
        answers in proptest::collection::vec(answer(), 12),
    ) {
        let mut harness = Harness::new(policy, target_count);
        harness.poll();
        for event in &events {
            harness.apply(event);
        }
        harness.apply(&Event::Cancel);
        let mut answers = answers.into_iter();
        while !harness.outstanding.is_empty() {
            let answer = answers.next().unwrap_or(Answer::Fail);
            harness.answer(0, &answer);
            harness.poll();
        }
        prop_assert!(harness.execution.is_finished());
        prop_assert_eq!(harness.execution.statistics().running, 0);
    }

    #[test]
    fn shuffle_permutes(items in proptest::collection::vec(any::<u16>(), 0..64), seed in any::<u64>()) {
        let mut shuffled = items.clone();
        shuffle(&mut shuffled, seed);
        let mut sorted_original = items.clone();
        sorted_original.sort_unstable();
        shuffled.sort_unstable();
        prop_assert_eq!(shuffled, sorted_original);
    }
}
