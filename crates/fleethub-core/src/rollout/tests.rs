//! Rollout rules, one scenario each: the request's rules, the plan, and the machine driven step by step.

use std::collections::HashMap;

use fleethub_protocol::rollouts::{ArtifactRef, NumberOrText, RolloutRequest, WavesRequest};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

fn at(seconds: f64) -> OffsetDateTime {
    T0 + time::Duration::seconds_f64(seconds)
}

fn key(index: usize) -> IdentityKey {
    IdentityKey::device(format!("dev{index:03}").parse().expect("valid id"))
}

fn keys(count: usize) -> Vec<IdentityKey> {
    (0..count).map(key).collect()
}

fn request(waves: &str) -> RolloutRequest {
    RolloutRequest {
        artifact: Some(ArtifactRef {
            model: "thermostat-x".into(),
            version: "2.0.0".into(),
        }),
        target_condition: Some("tags.site = 'lab'".into()),
        waves: Some(WavesRequest::Text(waves.into())),
        ..RolloutRequest::default()
    }
}

fn spec(adjust: impl FnOnce(&mut RolloutRequest)) -> RolloutSpec {
    let mut request = request("10%,50%,100%");
    adjust(&mut request);
    RolloutSpec::from_request(&request).expect("a valid request")
}

fn text(value: &str) -> Option<NumberOrText> {
    Some(NumberOrText::Text(value.into()))
}

fn ok() -> Outcome {
    Outcome::Succeeded(json!({"status": "completed"}))
}

fn failure() -> Outcome {
    Outcome::Failed(TargetError::new("healthCheckFailed", "exit 1"))
}

/// Answers every started attempt of the step with `answer(target)`; returns the records to persist.
fn answer_all(
    rollout: &mut RolloutExecution,
    step: &RolloutStep,
    now: OffsetDateTime,
    answer: impl Fn(&IdentityKey) -> Outcome,
) -> Vec<RolloutTarget> {
    step.start
        .iter()
        .map(|started| {
            let outcome = answer(&started.attempt.target);
            rollout
                .on_outcome(
                    started.phase,
                    &started.attempt.target,
                    started.attempt.number,
                    outcome,
                    now,
                )
                .expect("the attempt is running")
        })
        .collect()
}

fn started_in(step: &RolloutStep, rollout: &RolloutExecution) -> Vec<usize> {
    let mut waves: Vec<usize> = step
        .start
        .iter()
        .filter_map(|attempt| rollout.plan().placement(&attempt.attempt.target))
        .map(|placement| placement.wave)
        .collect();
    waves.dedup();
    waves
}

// ---- the request ----

#[test]
fn wave_lists_read_counts_and_percentages_and_say_what_is_wrong() {
    let percent = |hundredths| WaveSize::Percent(Percent::from_hundredths(hundredths).unwrap());
    assert_eq!(
        parse_waves("1%,10%,50%,100%"),
        Ok(vec![
            percent(100),
            percent(1000),
            percent(5000),
            percent(10_000)
        ])
    );
    assert_eq!(
        parse_waves(" 10, 100 ,1000"),
        Ok(vec![
            WaveSize::Count(10),
            WaveSize::Count(100),
            WaveSize::Count(1000)
        ])
    );
    assert_eq!(
        parse_waves("0.5%,12.25%"),
        Ok(vec![percent(50), percent(1225)])
    );
    assert_eq!(
        parse_waves("5,10%"),
        Ok(vec![WaveSize::Count(5), percent(1000)])
    );
    let cases = [
        ("", "neither a device count"),
        ("10%,,100%", "neither a device count"),
        ("0", "is 0: a wave needs devices"),
        ("0%", "is 0%"),
        ("101%", "more than 100%"),
        ("1.234%", "at most two decimals"),
        ("ten", "neither a device count"),
        ("-5", "neither a device count"),
        (
            "50%,10%",
            "cumulative and must grow: 10% is not more than 50%",
        ),
        ("10,10", "10 is not more than 10"),
    ];
    for (input, expected) in cases {
        let error = parse_waves(input).expect_err(input);
        assert!(error.contains(expected), "{input:?}: {error}");
    }
    let too_many = (1..=101)
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        parse_waves(&too_many)
            .unwrap_err()
            .contains("at most 100 waves")
    );
}

#[test]
fn percentages_print_as_they_were_written() {
    for text in ["1%", "12.5%", "0.01%", "100%", "99.99%"] {
        assert_eq!(
            Threshold::parse("t", text).map(|threshold| threshold.to_string()),
            Ok(text.to_owned())
        );
    }
    assert_eq!(Threshold::parse("t", "3"), Ok(Threshold::Count(3)));
    assert!(
        Threshold::parse("successThreshold", "x")
            .unwrap_err()
            .starts_with("successThreshold \"x\"")
    );
    let ten = Percent::from_hundredths(1000).unwrap();
    assert_eq!(ten.of_ceil(50), 5);
    assert_eq!(ten.of_ceil(51), 6);
    assert_eq!(Percent::from_hundredths(1).unwrap().of_ceil(1), 1);
    assert!(ten.reached_by(1, 10) && !ten.reached_by(1, 11) && !ten.reached_by(0, 0));
}

#[test]
fn a_request_gets_the_defaults_and_a_final_hundred_percent_wave() {
    let spec = RolloutSpec::from_request(&request("10,100,1000")).expect("valid");
    let sizes: Vec<String> = spec
        .waves
        .iter()
        .map(|wave| wave.size.to_string())
        .collect();
    assert_eq!(sizes, ["10", "100", "1000", "100%"]);
    let wave = spec.waves[0];
    assert_eq!(wave.success_threshold, DEFAULT_SUCCESS_THRESHOLD);
    assert_eq!(wave.error_threshold, Some(DEFAULT_ERROR_THRESHOLD));
    assert_eq!(wave.error_minimum_devices, DEFAULT_ERROR_MINIMUM_DEVICES);
    assert!(!wave.approval);
    assert_eq!(spec.max_concurrency, DEFAULT_MAX_CONCURRENCY);
    assert_eq!(spec.device_timeout, DEFAULT_DEVICE_TIMEOUT);
    assert_eq!(spec.offline_timeout, Some(DEFAULT_OFFLINE_TIMEOUT));
    assert_eq!(spec.max_attempts, 1);
    let only = RolloutSpec::from_request(&RolloutRequest {
        waves: None,
        ..request("")
    })
    .expect("valid");
    assert_eq!(only.waves.len(), 1);

    // Per-wave settings override the defaults; "none" turns the error threshold off.
    let mut detailed = request("");
    detailed.waves = Some(
        serde_json::from_value(json!([
            "5%",
            {"size": "50%", "successThreshold": "90%", "errorThreshold": "none", "approval": true},
            {"size": 100, "errorThreshold": 2, "errorMinimumDevices": 3}
        ]))
        .unwrap(),
    );
    detailed.success_threshold = text("95%");
    detailed.offline_timeout_in_seconds = Some(0);
    detailed.start_rate_per_second = Some(0);
    let spec = RolloutSpec::from_request(&detailed).expect("valid");
    assert_eq!(spec.waves.len(), 4, "a count list ends with 100%");
    assert_eq!(spec.waves[0].success_threshold.to_string(), "95%");
    assert_eq!(spec.waves[1].success_threshold.to_string(), "90%");
    assert_eq!(spec.waves[1].error_threshold, None);
    assert!(spec.waves[1].approval && !spec.waves[2].approval);
    assert_eq!(spec.waves[2].error_threshold, Some(Threshold::Count(2)));
    assert_eq!(spec.waves[2].error_minimum_devices, 3);
    assert_eq!(spec.offline_timeout, None, "0 waits for ever");
    assert_eq!(spec.start_rate_per_second, None, "0 is no limit");

    // What a stored rollout keeps reads back as the same spec.
    let again = RolloutSpec::from_request(&spec.to_request(7)).expect("valid");
    assert_eq!(again, spec);
    assert_eq!(spec.to_request(7).seed, Some(7));
}

#[test]
fn bad_requests_say_what_is_wrong() {
    type Adjust = Box<dyn Fn(&mut RolloutRequest)>;
    let cases: Vec<(Adjust, &str)> = vec![
        (Box::new(|r| r.artifact = None), "artifact is required"),
        (
            Box::new(|r| r.artifact.as_mut().unwrap().version = "../x".into()),
            "artifact: invalid manifest: version",
        ),
        (
            Box::new(|r| r.target_condition = Some("  ".into())),
            "targetCondition is required",
        ),
        (
            Box::new(|r| r.waves = Some(WavesRequest::Text("50%,5%".into()))),
            "waves: wave sizes are cumulative",
        ),
        (
            Box::new(|r| {
                r.waves = Some(serde_json::from_value(json!([{"approval": true}])).unwrap())
            }),
            "waves[0]: size is required",
        ),
        (
            Box::new(|r| r.success_threshold = text("120%")),
            "successThreshold \"120%\" is more than 100%",
        ),
        (
            Box::new(|r| r.error_threshold = text("0")),
            "would abort before any device failed",
        ),
        (
            Box::new(|r| r.error_threshold = text("0%")),
            "would abort before any device failed",
        ),
        (
            Box::new(|r| r.error_minimum_devices = Some(0)),
            "errorMinimumDevices must be at least 1",
        ),
        (
            Box::new(|r| r.max_concurrency = Some(0)),
            "maxConcurrency must be from 1 to 10000",
        ),
        (
            Box::new(|r| r.max_attempts = Some(11)),
            "maxAttempts must be from 1 to 10",
        ),
        (
            Box::new(|r| r.device_timeout_in_seconds = Some(0)),
            "deviceTimeoutInSeconds must be from 1",
        ),
        (
            Box::new(|r| r.offline_timeout_in_seconds = Some(31 * 24 * 3600)),
            "offlineTimeoutInSeconds must be from 0 to 2592000",
        ),
        (
            Box::new(|r| {
                r.rollback = Some(ArtifactRef {
                    model: "other".into(),
                    version: "1.0.0".into(),
                })
            }),
            "rollback is for model \"other\"",
        ),
        (
            Box::new(|r| {
                r.rollback = Some(ArtifactRef {
                    model: "thermostat-x".into(),
                    version: "2.0.0".into(),
                })
            }),
            "rollback is the rollout's own artifact",
        ),
    ];
    for (adjust, expected) in cases {
        let mut bad = request("10%,100%");
        adjust(&mut bad);
        let error = RolloutSpec::from_request(&bad).expect_err(expected);
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
}

// ---- the plan ----

#[test]
fn waves_end_at_their_cumulative_sizes_and_the_last_covers_everything() {
    let sizes = parse_waves("1%,10%,50%,100%").unwrap();
    assert_eq!(wave_ends(50, &sizes), [1, 5, 25, 50]);
    assert_eq!(wave_ends(1000, &sizes), [10, 100, 500, 1000]);
    assert_eq!(wave_ends(0, &sizes), [0, 0, 0, 0]);
    let counts = parse_waves("10,100,1000").unwrap();
    assert_eq!(wave_ends(50, &counts), [10, 50, 50]);
    assert_eq!(
        wave_ends(5000, &counts),
        [10, 100, 5000],
        "the last wave always takes the rest"
    );
    let mixed = parse_waves("20,10%").unwrap();
    assert_eq!(wave_ends(100, &mixed), [20, 100]);
    assert_eq!(
        wave_ends(100, &parse_waves("20,10%,50%").unwrap()),
        [20, 20, 100]
    );
}

#[test]
fn the_plan_is_a_reproducible_shuffle_cut_into_waves() {
    let sizes = parse_waves("10%,50%,100%").unwrap();
    let mut targets = keys(40);
    targets.push(key(3));
    let plan = WavePlan::new(targets.clone(), &sizes, 42);
    assert_eq!(plan.len(), 40, "duplicates dropped");
    assert_eq!(
        (0..3).map(|wave| plan.wave(wave).len()).collect::<Vec<_>>(),
        [4, 16, 20]
    );
    targets.reverse();
    assert_eq!(
        WavePlan::new(targets.clone(), &sizes, 42),
        plan,
        "input order does not matter"
    );
    assert_ne!(WavePlan::new(targets, &sizes, 43).wave(0), plan.wave(0));
    let sorted: Vec<IdentityKey> = keys(40);
    assert_ne!(
        plan.wave(0),
        &sorted[..4],
        "the first wave is a random sample"
    );
    let positions: Vec<u64> = plan
        .placements()
        .map(|(_, placement)| placement.position)
        .collect();
    assert_eq!(positions, (0..40).collect::<Vec<u64>>());
    let stored = WavePlan::from_placements(
        3,
        plan.placements()
            .map(|(key, placement)| (key.clone(), placement)),
    );
    assert_eq!(stored, plan);
}

// ---- the machine ----

#[test]
fn waves_advance_when_the_current_one_reaches_its_success_threshold() {
    let spec = spec(|request| request.success_threshold = text("80%"));
    let (mut rollout, records) = RolloutExecution::start(spec, 1, keys(20), T0);
    assert_eq!(records.len(), 20);
    assert!(
        records
            .iter()
            .all(|target| target.record.status == TargetStatus::Pending)
    );
    assert_eq!(
        records.iter().filter(|target| target.wave == 1).count(),
        2,
        "10% of 20"
    );
    let step = rollout.poll(T0);
    assert_eq!(started_in(&step, &rollout), [0]);
    assert_eq!(rollout.state().waves_started, 1);
    // The first wave's two devices succeed: the second wave (8 devices) starts.
    answer_all(&mut rollout, &step, at(1.0), |_| ok());
    let step = rollout.poll(at(1.0));
    assert_eq!(started_in(&step, &rollout), [1]);
    assert_eq!(step.start.len(), 8);
    assert_eq!(rollout.status(), RolloutStatus::Running);
    assert_eq!(rollout.wave_status(0), WaveStatus::Passed);
    // 7 of 8 succeed: 7 >= ceil(80% of 8) = 7, the last wave starts while one device still runs.
    let (first, rest) = step.start.split_at(7);
    for attempt in first {
        rollout.on_outcome(
            attempt.phase,
            &attempt.attempt.target,
            attempt.attempt.number,
            ok(),
            at(2.0),
        );
    }
    let step = rollout.poll(at(2.0));
    assert_eq!(started_in(&step, &rollout), [2]);
    assert_eq!(step.start.len(), 10);
    assert_eq!(rollout.state().waves_started, 3);
    answer_all(&mut rollout, &step, at(3.0), |_| ok());
    rollout.poll(at(3.0));
    assert!(!rollout.is_finished(), "a device of wave 2 still runs");
    let straggler = &rest[0];
    rollout.on_outcome(
        straggler.phase,
        &straggler.attempt.target,
        straggler.attempt.number,
        ok(),
        at(4.0),
    );
    rollout.poll(at(4.0));
    assert!(rollout.is_finished());
    assert_eq!(rollout.status(), RolloutStatus::Completed);
    let statistics = rollout.statistics();
    assert_eq!((statistics.device_count, statistics.succeeded), (20, 20));
    assert!(
        rollout
            .status_message()
            .starts_with("every wave done: 20 of 20")
    );
    assert_eq!(
        rollout.pause(),
        Err(RolloutCommandError::Over(RolloutStatus::Completed))
    );
}

#[test]
fn an_approval_wave_waits_for_approve_before_the_next_one() {
    let spec = spec(|request| request.approval = Some(true));
    let (mut rollout, _) = RolloutExecution::start(spec, 1, keys(10), T0);
    let step = rollout.poll(T0);
    assert_eq!(
        rollout.approve(),
        Err(RolloutCommandError::NotWaitingForApproval(
            RolloutStatus::Running
        ))
    );
    answer_all(&mut rollout, &step, at(1.0), |_| ok());
    let step = rollout.poll(at(1.0));
    assert!(step.start.is_empty());
    assert_eq!(rollout.status(), RolloutStatus::WaitingForApproval);
    assert!(
        rollout.status_message().contains("approve to start wave 2"),
        "{}",
        rollout.status_message()
    );
    assert_eq!(
        rollout.state().gate,
        Some(Gate {
            wave: 0,
            reason: GateReason::Approval
        })
    );
    rollout.approve().expect("waiting");
    let step = rollout.poll(at(2.0));
    assert_eq!(started_in(&step, &rollout), [1]);
    assert_eq!(rollout.status(), RolloutStatus::Running);
}

#[test]
fn a_wave_below_its_success_threshold_waits_for_a_decision() {
    // No error threshold: only the success threshold stops it.
    let spec = spec(|request| request.error_threshold = text("none"));
    let (mut rollout, _) = RolloutExecution::start(spec, 1, keys(20), T0);
    let step = rollout.poll(T0);
    let mut outcomes = [failure(), ok()].into_iter();
    for attempt in &step.start {
        rollout.on_outcome(
            attempt.phase,
            &attempt.attempt.target,
            attempt.attempt.number,
            outcomes.next().unwrap(),
            at(1.0),
        );
    }
    let step = rollout.poll(at(1.0));
    assert!(step.start.is_empty(), "100% success is out of reach");
    assert_eq!(rollout.status(), RolloutStatus::WaitingForApproval);
    assert_eq!(rollout.wave_status(0), WaveStatus::Failed);
    assert!(
        rollout
            .status_message()
            .contains("can no longer reach its success threshold of 100%")
    );
    rollout.approve().expect("waiting");
    let step = rollout.poll(at(2.0));
    assert_eq!(
        started_in(&step, &rollout),
        [1],
        "approved: the next wave starts"
    );
}

#[test]
fn the_error_threshold_aborts_only_after_its_minimum_and_failed_devices_get_the_rollback() {
    let spec = spec(|request| {
        request.waves = Some(WavesRequest::Text("50%,100%".into()));
        request.error_threshold = text("30%");
        request.error_minimum_devices = Some(4);
        request.max_concurrency = Some(2);
        request.rollback = Some(ArtifactRef {
            model: "thermostat-x".into(),
            version: "1.0.0".into(),
        });
    });
    let (mut rollout, _) = RolloutExecution::start(spec, 9, keys(20), T0);
    // Devices fail one by one: 1 of 1, 2 of 2, 3 of 3 would all be over 30%, but the minimum is 4.
    let mut now = 0.0;
    let mut failed = Vec::new();
    loop {
        now += 1.0;
        let step = rollout.poll(at(now));
        if rollout.state().abort.is_some() {
            break;
        }
        let attempt = step.start.first().expect("one more device");
        failed.push(attempt.attempt.target.clone());
        let finished = rollout.wave_statistics(0).failed;
        assert!(finished < 4, "no abort before 4 devices finished");
        rollout.on_outcome(
            attempt.phase,
            &attempt.attempt.target,
            attempt.attempt.number,
            failure(),
            at(now),
        );
        // The second started device of the first poll is still running; keep it so.
    }
    assert_eq!(
        rollout.state().abort,
        Some(AbortReason::ErrorThreshold {
            wave: 0,
            failed: 4,
            finished: 4
        })
    );
    assert_eq!(rollout.status(), RolloutStatus::Aborting);
    assert_eq!(rollout.wave_status(0), WaveStatus::Failed);
    assert_eq!(rollout.wave_status(1), WaveStatus::Skipped);
    let statistics = rollout.wave_statistics(0);
    assert_eq!(statistics.running, 1, "the running device finishes");
    assert_eq!(statistics.cancelled, 5, "the rest of the wave is cancelled");
    let second_wave = rollout.wave_statistics(1);
    assert_eq!(
        (second_wave.pending, second_wave.cancelled),
        (0, 10),
        "a wave that never started is cancelled too"
    );
    // The running device finishes (it fails too): then the rollback goes to the 5 failed devices.
    let running = rollout
        .plan()
        .wave(0)
        .iter()
        .find(|key| {
            rollout
                .record(RolloutPhase::Update, key)
                .map(|record| record.status)
                == Some(TargetStatus::Running)
        })
        .cloned()
        .expect("a running device");
    rollout.on_outcome(RolloutPhase::Update, &running, 1, failure(), at(now + 1.0));
    let step = rollout.poll(at(now + 1.0));
    let rollback_records: Vec<&RolloutTarget> = step
        .records
        .iter()
        .filter(|target| target.phase == RolloutPhase::Rollback)
        .collect();
    let devices: std::collections::BTreeSet<&IdentityKey> = rollback_records
        .iter()
        .map(|target| &target.record.target)
        .collect();
    assert_eq!(devices.len(), 5, "every failed device, and only those");
    assert!(rollback_records.iter().all(|target| target.wave == 0));
    assert_eq!(
        step.start.len(),
        2,
        "the rollback runs within the same limits"
    );
    assert!(
        step.start
            .iter()
            .all(|attempt| attempt.phase == RolloutPhase::Rollback)
    );
    let mut step = step;
    let mut now = now + 2.0;
    while !rollout.is_finished() {
        answer_all(&mut rollout, &step, at(now), |_| ok());
        now += 1.0;
        step = rollout.poll(at(now));
    }
    assert_eq!(rollout.status(), RolloutStatus::Aborted);
    let rollback = rollout.rollback_statistics().expect("rollback ran");
    assert_eq!((rollback.device_count, rollback.succeeded), (5, 5));
    assert!(
        rollout
            .status_message()
            .contains("rollback: 5 of 5 devices succeeded"),
        "{}",
        rollout.status_message()
    );
}

#[test]
fn abort_on_request_cancels_what_did_not_start_and_pause_holds_starts() {
    let spec = spec(|request| request.max_concurrency = Some(1));
    let (mut rollout, _) = RolloutExecution::start(spec, 3, keys(10), T0);
    let step = rollout.poll(T0);
    assert_eq!(step.start.len(), 1);
    rollout.pause().expect("running");
    rollout.pause().expect("pausing twice is fine");
    assert_eq!(rollout.status(), RolloutStatus::Paused);
    answer_all(&mut rollout, &step, at(1.0), |_| ok());
    let step = rollout.poll(at(1.0));
    assert!(step.start.is_empty(), "paused");
    assert_eq!(
        rollout.state().waves_started,
        2,
        "the next wave is due, held by the pause"
    );
    assert_eq!(rollout.next_wakeup(), None, "nothing to do until resumed");
    rollout.resume().expect("paused");
    let step = rollout.poll(at(2.0));
    assert_eq!(step.start.len(), 1);
    let running = step.start[0].clone();
    rollout.abort(at(3.0)).expect("running");
    rollout.abort(at(3.0)).expect("aborting twice is fine");
    let step = rollout.poll(at(3.0));
    assert_eq!(step.records.len(), 3 + 5, "the rest of wave 2, and wave 3");
    assert!(
        step.records
            .iter()
            .all(|target| target.record.status == TargetStatus::Cancelled)
    );
    assert_eq!(
        rollout.status(),
        RolloutStatus::Aborting,
        "a device still runs"
    );
    rollout
        .on_outcome(
            running.phase,
            &running.attempt.target,
            running.attempt.number,
            ok(),
            at(4.0),
        )
        .expect("running");
    rollout.poll(at(4.0));
    assert_eq!(
        rollout.status(),
        RolloutStatus::Aborted,
        "no rollback artifact"
    );
    assert_eq!(rollout.wave_status(2), WaveStatus::Skipped);
    assert_eq!(
        rollout.abort(at(5.0)),
        Err(RolloutCommandError::Over(RolloutStatus::Aborted))
    );
}

#[test]
fn offline_devices_wait_then_fail_after_the_offline_timeout() {
    let spec = spec(|request| {
        request.waves = Some(WavesRequest::Text("100%".into()));
        request.offline_timeout_in_seconds = Some(60);
        request.error_threshold = text("none");
    });
    let (mut rollout, _) = RolloutExecution::start(spec, 5, keys(3), T0);
    let step = rollout.poll(T0);
    let targets: Vec<IdentityKey> = step
        .start
        .iter()
        .map(|attempt| attempt.attempt.target.clone())
        .collect();
    for attempt in &step.start {
        let record = rollout
            .on_outcome(
                attempt.phase,
                &attempt.attempt.target,
                attempt.attempt.number,
                Outcome::Offline,
                at(1.0),
            )
            .expect("running");
        assert_eq!(record.record.status, TargetStatus::Pending);
    }
    assert_eq!(rollout.next_wakeup(), Some(at(61.0)));
    // One comes back in time and succeeds; the two others never do.
    rollout.on_device_online(&targets[0], at(30.0));
    let step = rollout.poll(at(30.0));
    assert_eq!(step.start.len(), 1);
    answer_all(&mut rollout, &step, at(31.0), |_| ok());
    let step = rollout.poll(at(61.0));
    let failed: Vec<&RolloutTarget> = step
        .records
        .iter()
        .filter(|target| target.record.status == TargetStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|target| {
        target
            .record
            .error
            .as_ref()
            .map(|error| error.code.as_str())
            == Some(error_codes::DEVICE_NOT_ONLINE)
    }));
    assert_eq!(
        rollout.status(),
        RolloutStatus::WaitingForApproval,
        "1 of 3 is below 100%"
    );
}

#[test]
fn a_restored_rollout_goes_on_where_it_stopped() {
    let spec_of = || spec(|request| request.error_threshold = text("none"));
    let (mut rollout, records) = RolloutExecution::start(spec_of(), 11, keys(20), T0);
    let mut stored: HashMap<(RolloutPhase, IdentityKey), RolloutTarget> = records
        .into_iter()
        .map(|target| ((target.phase, target.record.target.clone()), target))
        .collect();
    let mut keep = |targets: Vec<RolloutTarget>| {
        for target in targets {
            stored.insert((target.phase, target.record.target.clone()), target);
        }
    };
    let step = rollout.poll(T0);
    keep(step.records.clone());
    let answered = answer_all(&mut rollout, &step, at(1.0), |_| ok());
    keep(answered);
    let step = rollout.poll(at(1.0));
    keep(step.records.clone());
    assert_eq!(started_in(&step, &rollout), [1]);
    // Half of wave 2 succeeded, the other half was running when the hub stopped; the state was not saved
    // after wave 2 started.
    let (done, _interrupted) = step.start.split_at(4);
    for attempt in done {
        let record = rollout
            .on_outcome(
                attempt.phase,
                &attempt.attempt.target,
                attempt.attempt.number,
                ok(),
                at(2.0),
            )
            .unwrap();
        keep(vec![record]);
    }
    let mut state = rollout.state().clone();
    state.waves_started = 1;
    let mut restored = RolloutExecution::restore(
        spec_of(),
        state,
        stored.values().cloned().collect(),
        at(10.0),
    );
    assert_eq!(restored.state().waves_started, 2, "wave 2 had started");
    let mut expected = rollout.statistics();
    expected.pending += expected.running;
    expected.running = 0;
    assert_eq!(restored.statistics(), expected);
    let step = restored.poll(at(10.0));
    // The attempts that were out do not count: they are made again, marked to follow the device's update.
    let again: Vec<&PhaseAttempt> = step.start.iter().collect();
    assert_eq!(again.len(), 4);
    for attempt in &again {
        let record = restored
            .record(RolloutPhase::Update, &attempt.attempt.target)
            .expect("known");
        assert_eq!(record.status, TargetStatus::Running);
        assert_eq!(record.attempts, 1, "one attempt, as before the restart");
        assert_eq!(
            record.error.map(|error| error.code),
            Some(REATTACH.to_owned())
        );
    }
    assert!(
        step.records
            .iter()
            .any(|target| target.record.status == TargetStatus::Pending),
        "the interrupted records are persisted as pending before they start again"
    );
    let step = RolloutStep {
        start: again.into_iter().cloned().collect(),
        ..RolloutStep::default()
    };
    answer_all(&mut restored, &step, at(11.0), |_| ok());
    let step = restored.poll(at(11.0));
    assert_eq!(started_in(&step, &restored), [2]);
    assert_eq!(step.start.len(), 10);
}

#[test]
fn an_empty_target_set_completes_at_once() {
    let (mut rollout, records) = RolloutExecution::start(spec(|_| {}), 1, Vec::new(), T0);
    assert!(records.is_empty());
    let step = rollout.poll(T0);
    assert!(step.start.is_empty());
    assert_eq!(rollout.status(), RolloutStatus::Completed);
    assert_eq!(rollout.state().waves_started, 3);
}
