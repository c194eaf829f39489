//! Scenario tests of the fleet executor: one rule each, driven step by step.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

fn at(seconds: f64) -> OffsetDateTime {
    T0 + time::Duration::seconds_f64(seconds)
}

fn key(name: &str) -> IdentityKey {
    IdentityKey::device(name.parse().expect("test ids are valid"))
}

fn keys(names: &[&str]) -> Vec<IdentityKey> {
    names.iter().map(|name| key(name)).collect()
}

fn policy() -> ExecutionPolicy {
    ExecutionPolicy {
        max_concurrency: 10,
        min_start_interval: None,
        per_device_timeout: Duration::from_secs(30),
        max_attempts: 1,
        retry_backoff: Duration::from_secs(5),
        offline_retry_interval: None,
        deadline: None,
    }
}

fn started(step: &Step) -> Vec<(String, u32)> {
    step.start
        .iter()
        .map(|attempt| (attempt.target.to_string(), attempt.number))
        .collect()
}

fn statuses(step: &Step) -> Vec<(String, TargetStatus)> {
    step.records
        .iter()
        .map(|record| (record.target.to_string(), record.status))
        .collect()
}

fn ok() -> Outcome {
    Outcome::Succeeded(json!({"status": 200}))
}

fn failure() -> Outcome {
    Outcome::Failed(TargetError::new(
        "GatewayTimeout",
        "the device did not answer",
    ))
}

#[test]
fn targets_start_in_order_within_the_concurrency_limit_and_starts_are_written_ahead() {
    let mut execution = Execution::new(
        keys(&["a", "b", "c"]),
        ExecutionPolicy {
            max_concurrency: 2,
            ..policy()
        },
        T0,
    );
    assert_eq!(execution.records().count(), 3);
    let step = execution.poll(T0);
    assert_eq!(started(&step), [("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(
        statuses(&step),
        [
            ("a".into(), TargetStatus::Running),
            ("b".into(), TargetStatus::Running)
        ],
        "every start comes with its Running record, to persist before the action begins"
    );
    assert!(
        execution.poll(at(1.0)).start.is_empty(),
        "both slots are taken"
    );
    let record = execution
        .on_outcome(&key("a"), 1, ok(), at(2.0))
        .expect("a's attempt was running");
    assert_eq!(record.status, TargetStatus::Succeeded);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.started, Some(T0));
    assert_eq!(record.finished, Some(at(2.0)));
    assert_eq!(record.outcome, Some(json!({"status": 200})));
    assert_eq!(
        execution.next_wakeup(),
        Some(at(2.0)),
        "a slot is free: poll now"
    );
    let step = execution.poll(at(2.0));
    assert_eq!(started(&step), [("c".into(), 1)]);
    assert_eq!(statuses(&step), [("c".into(), TargetStatus::Running)]);
    execution.on_outcome(&key("b"), 1, ok(), at(3.0));
    execution.on_outcome(&key("c"), 1, ok(), at(3.0));
    assert!(execution.is_finished());
    assert_eq!(execution.next_wakeup(), None);
    assert_eq!(
        execution.statistics(),
        Statistics {
            device_count: 3,
            succeeded: 3,
            ..Statistics::default()
        }
    );
}

#[test]
fn the_start_interval_spaces_every_start() {
    let mut execution = Execution::new(
        keys(&["a", "b", "c"]),
        ExecutionPolicy {
            min_start_interval: Some(Duration::from_secs(2)),
            ..policy()
        },
        T0,
    );
    assert_eq!(started(&execution.poll(T0)), [("a".into(), 1)]);
    assert_eq!(execution.next_wakeup(), Some(at(2.0)));
    assert!(execution.poll(at(1.9)).start.is_empty());
    assert_eq!(started(&execution.poll(at(2.0))), [("b".into(), 1)]);
    // A late poll still starts one: the interval is the least gap between two starts, not an average.
    assert_eq!(started(&execution.poll(at(10.0))), [("c".into(), 1)]);
}

#[test]
fn a_failed_attempt_is_retried_after_the_backoff_until_attempts_run_out() {
    let mut execution = Execution::new(
        keys(&["a"]),
        ExecutionPolicy {
            max_attempts: 2,
            ..policy()
        },
        T0,
    );
    execution.poll(T0);
    let record = execution
        .on_outcome(&key("a"), 1, failure(), at(1.0))
        .expect("running");
    assert_eq!(record.status, TargetStatus::Pending);
    assert_eq!(record.attempts, 1);
    assert_eq!(
        record.error.map(|error| error.code),
        Some("GatewayTimeout".to_owned())
    );
    assert_eq!(execution.next_wakeup(), Some(at(6.0)), "the retry backoff");
    assert!(execution.poll(at(5.0)).start.is_empty());
    assert_eq!(started(&execution.poll(at(6.0))), [("a".into(), 2)]);
    let record = execution
        .on_outcome(&key("a"), 2, failure(), at(7.0))
        .expect("running");
    assert_eq!(record.status, TargetStatus::Failed);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.finished, Some(at(7.0)));
    assert!(execution.is_finished());
}

#[test]
fn a_timeout_fails_the_attempt_abandons_it_and_ignores_its_late_outcome() {
    let mut execution = Execution::new(
        keys(&["a"]),
        ExecutionPolicy {
            max_attempts: 2,
            retry_backoff: Duration::ZERO,
            ..policy()
        },
        T0,
    );
    execution.poll(T0);
    assert_eq!(execution.next_wakeup(), Some(at(30.0)));
    let step = execution.poll(at(30.0));
    assert_eq!(
        step.abandon,
        [Attempt {
            target: key("a"),
            number: 1
        }]
    );
    assert_eq!(
        started(&step),
        [("a".into(), 2)],
        "no backoff: retried in the same poll"
    );
    assert_eq!(
        execution.on_outcome(&key("a"), 1, ok(), at(31.0)),
        None,
        "the timed-out attempt's outcome comes too late"
    );
    let step = execution.poll(at(60.0));
    assert_eq!(step.records.len(), 1);
    let record = &step.records[0];
    assert_eq!(record.status, TargetStatus::Failed);
    assert_eq!(
        record.error.as_ref().map(|error| error.code.as_str()),
        Some(error_codes::TIMED_OUT)
    );
}

#[test]
fn offline_devices_consume_no_attempts_and_start_again_when_they_connect() {
    let mut execution = Execution::new(keys(&["a"]), policy(), T0);
    execution.poll(T0);
    let record = execution
        .on_outcome(&key("a"), 1, Outcome::Offline, at(0.1))
        .expect("running");
    assert_eq!(record.status, TargetStatus::Pending);
    assert_eq!(record.attempts, 0, "an offline attempt does not count");
    assert_eq!(
        record.error.map(|error| error.code),
        Some(error_codes::DEVICE_NOT_ONLINE.to_owned())
    );
    assert_eq!(
        execution.next_wakeup(),
        None,
        "without a retry interval only a connection moves it"
    );
    assert!(execution.poll(at(100.0)).start.is_empty());
    execution.on_device_online(&key("a"), at(200.0));
    assert_eq!(execution.next_wakeup(), Some(at(200.0)));
    assert_eq!(started(&execution.poll(at(200.0))), [("a".into(), 2)]);
    let record = execution
        .on_outcome(&key("a"), 2, ok(), at(201.0))
        .expect("running");
    assert_eq!(record.status, TargetStatus::Succeeded);
    assert_eq!(
        record.attempts, 1,
        "max_attempts = 1 still allowed it to run once"
    );
    assert_eq!(record.error, None);
    assert_eq!(record.started, Some(T0), "the first start is kept");
}

#[test]
fn a_target_waiting_for_its_device_or_a_retry_can_be_failed_but_not_one_about_to_start() {
    let mut execution = Execution::new(
        keys(&["offline", "retrying", "busy", "queued"]),
        ExecutionPolicy {
            max_concurrency: 3,
            max_attempts: 2,
            per_device_timeout: Duration::from_secs(1000),
            ..policy()
        },
        T0,
    );
    execution.poll(T0);
    execution.on_outcome(&key("offline"), 1, Outcome::Offline, at(1.0));
    execution.on_outcome(&key("retrying"), 1, failure(), at(1.0));
    let gone = TargetError::new(error_codes::DEVICE_NOT_ONLINE, "gone for good");
    for name in ["busy", "queued", "unknown"] {
        assert_eq!(
            execution.fail_waiting(&key(name), gone.clone(), at(2.0)),
            None,
            "{name}"
        );
    }
    let failed = execution
        .fail_waiting(&key("offline"), gone.clone(), at(2.0))
        .expect("waiting for its device");
    assert_eq!(
        (failed.status, failed.error, failed.finished),
        (TargetStatus::Failed, Some(gone.clone()), Some(at(2.0)))
    );
    let failed = execution
        .fail_waiting(&key("retrying"), gone.clone(), at(2.0))
        .expect("waiting for its backoff");
    assert_eq!(failed.status, TargetStatus::Failed);
    assert_eq!(failed.attempts, 1);
    // Neither comes back: not on a connection, not after the backoff.
    execution.on_device_online(&key("offline"), at(3.0));
    let step = execution.poll(at(100.0));
    assert_eq!(started(&step), [("queued".into(), 1)]);
    assert!(
        step.records
            .iter()
            .all(|record| record.target == key("queued"))
    );
    let statistics = execution.statistics();
    assert_eq!((statistics.failed, statistics.running), (2, 2));
}

#[test]
fn offline_devices_are_retried_after_the_offline_interval_without_a_connect_notice() {
    let mut execution = Execution::new(
        keys(&["a"]),
        ExecutionPolicy {
            offline_retry_interval: Some(Duration::from_secs(60)),
            ..policy()
        },
        T0,
    );
    execution.poll(T0);
    execution.on_outcome(&key("a"), 1, Outcome::Offline, at(1.0));
    assert_eq!(execution.next_wakeup(), Some(at(61.0)));
    assert!(execution.poll(at(60.0)).start.is_empty());
    assert_eq!(started(&execution.poll(at(61.0))), [("a".into(), 2)]);
}

#[test]
fn a_device_connecting_during_its_attempt_is_retried_as_soon_as_the_attempt_reports_offline() {
    let mut execution = Execution::new(keys(&["a"]), policy(), T0);
    execution.poll(T0);
    // The connection notice overtakes the attempt's offline verdict.
    execution.on_device_online(&key("a"), at(0.5));
    execution.on_outcome(&key("a"), 1, Outcome::Offline, at(0.6));
    assert_eq!(started(&execution.poll(at(0.6))), [("a".into(), 2)]);
}

#[test]
fn the_deadline_fails_every_unfinished_target_with_its_reason() {
    let mut execution = Execution::new(
        keys(&["offline", "running", "done", "queued"]),
        ExecutionPolicy {
            max_concurrency: 3,
            deadline: Some(at(100.0)),
            ..policy()
        },
        T0,
    );
    execution.poll(T0);
    execution.on_outcome(&key("offline"), 1, Outcome::Offline, at(1.0));
    execution.on_outcome(&key("done"), 1, ok(), at(1.0));
    // "offline" waits for its device; "queued" takes the slot "done" freed.
    assert_eq!(started(&execution.poll(at(1.0))), [("queued".into(), 1)]);
    assert_eq!(execution.next_wakeup(), Some(at(30.0)), "running's timeout");
    execution.on_outcome(&key("running"), 1, ok(), at(2.0));
    let _ = execution.poll(at(2.0));
    execution.on_device_online(&key("nobody"), at(3.0));
    assert_eq!(execution.next_wakeup(), Some(at(31.0)), "queued's timeout");
    // Time passes beyond its timeout without polls, then the deadline comes first in the next poll.
    let step = execution.poll(at(150.0));
    assert!(execution.is_finished());
    assert!(execution.is_expired());
    assert_eq!(
        step.abandon,
        [Attempt {
            target: key("queued"),
            number: 1
        }]
    );
    let codes: Vec<(String, TargetStatus, Option<String>)> = step
        .records
        .iter()
        .map(|record| {
            (
                record.target.to_string(),
                record.status,
                record.error.as_ref().map(|error| error.code.clone()),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            (
                "offline".to_owned(),
                TargetStatus::Failed,
                Some(error_codes::DEVICE_NOT_ONLINE.to_owned())
            ),
            (
                "queued".to_owned(),
                TargetStatus::Failed,
                Some(error_codes::DEADLINE_EXCEEDED.to_owned())
            ),
        ]
    );
    assert_eq!(
        execution.add_targets(keys(&["late"]), at(151.0)),
        [],
        "an expired execution takes no targets"
    );
    assert_eq!(execution.cancel(at(152.0)), [], "nor a cancel");
}

#[test]
fn cancel_stops_pending_targets_and_lets_running_attempts_finish() {
    let mut execution = Execution::new(
        keys(&["ok", "retry", "last", "waiting"]),
        ExecutionPolicy {
            max_concurrency: 3,
            max_attempts: 2,
            ..policy()
        },
        T0,
    );
    execution.poll(T0);
    // "last" has used one attempt and is on its second when the cancel comes.
    execution.on_outcome(&key("last"), 1, failure(), at(1.0));
    execution.poll(at(6.0));
    let cancelled = execution.cancel(at(7.0));
    assert_eq!(
        cancelled
            .iter()
            .map(|record| (record.target.to_string(), record.status))
            .collect::<Vec<_>>(),
        [("waiting".to_owned(), TargetStatus::Cancelled)]
    );
    assert!(execution.is_cancelled());
    assert!(!execution.is_finished());
    assert!(execution.poll(at(8.0)).start.is_empty());
    let finish = |execution: &mut Execution, name: &str, attempt: u32, outcome: Outcome| {
        execution
            .on_outcome(&key(name), attempt, outcome, at(9.0))
            .map(|record| record.status)
    };
    assert_eq!(
        finish(&mut execution, "ok", 1, ok()),
        Some(TargetStatus::Succeeded)
    );
    assert_eq!(
        finish(&mut execution, "retry", 1, failure()),
        Some(TargetStatus::Cancelled),
        "it would have been retried"
    );
    assert_eq!(
        finish(&mut execution, "last", 2, failure()),
        Some(TargetStatus::Failed),
        "no attempt was left"
    );
    assert!(execution.is_finished());
    assert_eq!(
        execution.statistics(),
        Statistics {
            device_count: 4,
            succeeded: 1,
            failed: 1,
            cancelled: 2,
            ..Statistics::default()
        }
    );
    assert_eq!(
        execution.cancel(at(10.0)),
        [],
        "cancelling twice does nothing"
    );
}

#[test]
fn restore_retries_interrupted_attempts_that_have_attempts_left_and_fails_the_others() {
    let record =
        |name: &str, status: TargetStatus, attempts: u32, error: Option<&str>| TargetRecord {
            target: key(name),
            status,
            attempts,
            created: T0,
            started: (attempts > 0).then_some(T0),
            finished: status.is_terminal().then_some(at(1.0)),
            last_updated: at(1.0),
            outcome: None,
            error: error.map(|code| TargetError::new(code, "")),
        };
    let records = vec![
        record("interrupted-once", TargetStatus::Running, 1, None),
        record("interrupted-last", TargetStatus::Running, 2, None),
        record(
            "offline",
            TargetStatus::Pending,
            0,
            Some(error_codes::DEVICE_NOT_ONLINE),
        ),
        record("fresh", TargetStatus::Pending, 0, None),
        record("done", TargetStatus::Succeeded, 1, None),
        record("done", TargetStatus::Pending, 0, None),
    ];
    let mut execution = Execution::restore(
        records,
        ExecutionPolicy {
            max_attempts: 2,
            ..policy()
        },
        at(100.0),
    );
    assert_eq!(
        execution.statistics(),
        Statistics {
            device_count: 5,
            pending: 3,
            running: 0,
            succeeded: 1,
            failed: 1,
            cancelled: 0,
        },
        "a duplicate record is dropped; interrupted attempts are settled at once"
    );
    let step = execution.poll(at(100.0));
    assert_eq!(
        started(&step),
        [("interrupted-once".into(), 2), ("fresh".into(), 1)],
        "the retry goes first; the offline device waits for its connection"
    );
    let last = step
        .records
        .iter()
        .find(|record| record.target == key("interrupted-last"))
        .expect("the failed interrupted target is persisted");
    assert_eq!(last.status, TargetStatus::Failed);
    assert_eq!(
        last.error.as_ref().map(|error| error.code.as_str()),
        Some(error_codes::INTERRUPTED)
    );
    execution.on_device_online(&key("offline"), at(101.0));
    assert_eq!(started(&execution.poll(at(101.0))), [("offline".into(), 1)]);
}

#[test]
fn pause_holds_new_starts_but_not_timeouts() {
    let mut execution = Execution::new(
        keys(&["a", "b"]),
        ExecutionPolicy {
            max_concurrency: 1,
            per_device_timeout: Duration::from_secs(10),
            ..policy()
        },
        T0,
    );
    execution.poll(T0);
    execution.pause();
    assert!(execution.is_paused());
    let step = execution.poll(at(10.0));
    assert_eq!(step.abandon.len(), 1, "a's attempt still times out");
    assert!(step.start.is_empty());
    assert_eq!(execution.next_wakeup(), None);
    execution.resume();
    assert_eq!(execution.next_wakeup(), Some(at(10.0)));
    assert_eq!(started(&execution.poll(at(11.0))), [("b".into(), 1)]);
}

#[test]
fn targets_added_later_run_after_the_first_ones_and_duplicates_are_ignored() {
    let mut execution = Execution::new(keys(&["a", "a"]), policy(), T0);
    assert_eq!(execution.statistics().device_count, 1);
    execution.poll(T0);
    execution.on_outcome(&key("a"), 1, ok(), at(1.0));
    assert!(execution.is_finished());
    let added = execution.add_targets(keys(&["a", "b"]), at(2.0));
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].target, key("b"));
    assert_eq!(added[0].status, TargetStatus::Pending);
    assert_eq!(added[0].created, at(2.0));
    assert!(!execution.is_finished());
    assert_eq!(started(&execution.poll(at(2.0))), [("b".into(), 1)]);
}

#[test]
fn zero_limits_are_read_as_one_and_huge_durations_saturate() {
    let mut execution = Execution::new(
        keys(&["a", "b"]),
        ExecutionPolicy {
            max_concurrency: 0,
            max_attempts: 0,
            per_device_timeout: Duration::MAX,
            min_start_interval: Some(Duration::MAX),
            ..policy()
        },
        T0,
    );
    assert_eq!(execution.policy().max_concurrency, 1);
    assert_eq!(execution.policy().max_attempts, 1);
    assert_eq!(execution.poll(T0).start.len(), 1);
    assert_eq!(execution.next_wakeup(), Some(END_OF_TIME));
}

#[test]
fn an_execution_without_targets_is_finished_at_once() {
    let mut execution = Execution::new(Vec::new(), policy(), T0);
    assert!(execution.is_finished());
    assert_eq!(execution.poll(T0), Step::default());
    assert_eq!(execution.next_wakeup(), None);
}

#[test]
fn outcomes_for_unknown_targets_or_attempts_are_ignored() {
    let mut execution = Execution::new(keys(&["a"]), policy(), T0);
    assert_eq!(
        execution.on_outcome(&key("a"), 1, ok(), T0),
        None,
        "not started"
    );
    execution.poll(T0);
    assert_eq!(execution.on_outcome(&key("a"), 2, ok(), T0), None);
    assert_eq!(execution.on_outcome(&key("zz"), 1, ok(), T0), None);
    assert!(execution.on_outcome(&key("a"), 1, ok(), T0).is_some());
    assert_eq!(execution.on_outcome(&key("a"), 1, ok(), T0), None, "twice");
}

#[test]
fn shuffle_is_a_reproducible_permutation() {
    let original: Vec<u32> = (0..50).collect();
    let mut first = original.clone();
    shuffle(&mut first, 7);
    let mut again = original.clone();
    shuffle(&mut again, 7);
    let mut other = original.clone();
    shuffle(&mut other, 8);
    assert_eq!(first, again, "same seed, same order");
    assert_ne!(first, original);
    assert_ne!(first, other);
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, original, "a permutation");
    let mut empty: Vec<u32> = Vec::new();
    shuffle(&mut empty, 1);
    let mut one = vec![1];
    shuffle(&mut one, 1);
    assert_eq!(one, [1]);
}

#[test]
fn target_status_spellings_round_trip() {
    for status in TargetStatus::ALL {
        assert_eq!(TargetStatus::parse(status.as_str()), Some(status));
        assert_eq!(
            serde_json::to_value(status).ok(),
            Some(json!(status.as_str()))
        );
    }
    assert_eq!(TargetStatus::parse("Pending"), None);
}
