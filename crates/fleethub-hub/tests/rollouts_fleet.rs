//! Firmware rollouts end to end: a real hub, real firmware agents (in-process, each with its own state
//! directory, downloading signed images from the hub with the signed URLs of their grants), rollouts
//! followed on the change feed. Waves advance on their success threshold, an approval gate holds the next
//! wave, pause holds new starts, a hub restart in the middle of a wave resumes the rollout without updating
//! any device twice, the error threshold aborts and the failed devices get the rollback artifact, offline
//! devices wait and update when they connect, and the counts add up at every step.

#[path = "support/rollouts.rs"]
mod support;

use std::collections::HashSet;

use fleethub_core::identity::IdentityKey;
use fleethub_core::rollout::{WavePlan, parse_waves};
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::rollouts::{
    ArtifactRef, DeviceRolloutStatus, NumberOrText, RolloutPhase, RolloutStatus, WaveStatus,
    WavesRequest,
};
use fleethub_service::ServiceError;
use serde_json::json;
use support::*;

/// The plan a rollout with these waves and seed makes over the fleet's first `count` devices.
fn plan(count: usize, waves: &str, seed: u64) -> WavePlan {
    let keys: Vec<IdentityKey> = (0..count)
        .map(|index| IdentityKey::device(device_name(index).parse().expect("valid")))
        .collect();
    WavePlan::new(keys, &parse_waves(waves).expect("sizes"), seed)
}

/// In what a watcher saw, no device of a wave started before the wave before it had passed (every wave here
/// needs all its devices).
fn waves_started_after_the_previous_passed(follower: &Follower) {
    let mut started = HashSet::new();
    for progress in &follower.history {
        let Some(device) = &progress.device else {
            continue;
        };
        if device.phase != RolloutPhase::Update
            || device.status != DeviceRolloutStatus::Running
            || device.wave < 2
            || !started.insert(device.wave)
        {
            continue;
        }
        let previous = &progress.rollout.waves[device.wave as usize - 2];
        assert_eq!(
            previous.statistics.succeeded,
            previous.statistics.device_count,
            "wave {} started with wave {} at {:?}",
            device.wave,
            device.wave - 1,
            previous.statistics
        );
    }
}

fn percent_done(rollout: &fleethub_protocol::rollouts::Rollout) -> String {
    let statistics = rollout.statistics;
    format!(
        "{} {}/{} succeeded",
        rollout.status.as_str(),
        statistics.succeeded,
        statistics.device_count
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_over_fifty_agents_advances_wave_by_wave_and_survives_a_restart() {
    const SEED: u64 = 2026;
    // The first three devices of wave 3 to start have slow health checks: their updates are surely under
    // way when the hub restarts (once five devices of wave 3 have succeeded).
    let plan = plan(50, "2%,10%,50%,100%", SEED);
    let slow: HashSet<String> = plan.wave(2)[..3]
        .iter()
        .map(|key| key.device_id.to_string())
        .collect();
    let mut fleet = Fleet::new(50, |index| {
        slow.contains(&device_name(index)).then_some(SLOW)
    })
    .await;
    fleet.start_all_agents();
    fleet.wait_for_reported_models(50).await;
    fleet.upload(TARGET).await;

    let id = rollout_id("fleet-2-0");
    let request = request(|request| {
        request.waves = Some(
            serde_json::from_value(json!(["2%", {"size": "10%", "approval": true}, "50%", "100%"]))
                .expect("waves"),
        );
        request.seed = Some(SEED);
    });
    let created = fleet
        .service
        .create_rollout(&id, &request)
        .await
        .expect("create the rollout");
    assert_eq!(created.status, RolloutStatus::Running);
    assert_eq!(created.waves.len(), 4);
    let mut follower = Follower::open(&fleet.service, &id).await;

    // Waves 1 and 2 (1 and 4 devices) pass; wave 2 asks for approval.
    let waiting = follower
        .until("wave 2 waits for approval", |rollout| {
            rollout.status == RolloutStatus::WaitingForApproval
        })
        .await;
    assert_eq!(waiting.current_wave, 2);
    assert_eq!(
        waiting
            .waves
            .iter()
            .map(|wave| (wave.statistics.device_count, wave.status))
            .collect::<Vec<_>>(),
        [
            (1, WaveStatus::Passed),
            (4, WaveStatus::Passed),
            (20, WaveStatus::Pending),
            (25, WaveStatus::Pending)
        ]
    );
    assert_eq!(waiting.statistics.succeeded, 5);

    // Paused while waiting, then approved: wave 3 is due but nothing starts until resumed.
    let paused = fleet.service.pause_rollout(&id).await.expect("pause");
    assert_eq!(paused.status, RolloutStatus::Paused);
    let approved = fleet.service.approve_rollout(&id).await.expect("approve");
    assert_eq!(approved.status, RolloutStatus::Paused);
    assert_eq!(approved.current_wave, 3);
    let held = fleet.service.get_rollout(&id).await.expect("get");
    assert_eq!(
        (held.statistics.running, held.waves[2].statistics.pending),
        (0, 20),
        "no device starts while paused"
    );
    let approve_again = fleet.service.approve_rollout(&id).await;
    assert!(
        matches!(&approve_again, Err(error) if error.error_code() == Some(ErrorCode::GenericConflict)),
        "{approve_again:?}"
    );
    let resumed = fleet.service.resume_rollout(&id).await.expect("resume");
    assert_eq!(resumed.status, RolloutStatus::Running);

    // The hub restarts in the middle of wave 3; devices updating meanwhile finish on their own.
    follower
        .until("wave 3 under way", |rollout| {
            rollout.waves[2].statistics.succeeded >= 5
        })
        .await;
    waves_started_after_the_previous_passed(&follower);
    fleet.restart_hub().await;
    let resumed = fleet
        .service
        .get_rollout(&id)
        .await
        .expect("get after restart");
    assert!(
        !resumed.status.is_final(),
        "resumed: {}",
        percent_done(&resumed)
    );
    let mut follower = Follower::open(&fleet.service, &id).await;
    let done = follower
        .until("the rollout completes", |rollout| rollout.status.is_final())
        .await;
    let failed: Vec<_> = follower
        .history
        .iter()
        .filter_map(|progress| progress.device.as_ref())
        .filter(|device| device.status == DeviceRolloutStatus::Failed)
        .collect();
    assert_eq!(
        done.status,
        RolloutStatus::Completed,
        "{:?}; failed devices: {failed:?}",
        done.status_message
    );
    assert_eq!(
        (
            done.statistics.device_count,
            done.statistics.succeeded,
            done.statistics.failed
        ),
        (50, 50, 0)
    );
    assert!(
        done.waves
            .iter()
            .all(|wave| wave.status == WaveStatus::Passed)
    );
    assert!(done.end_time.is_some());
    fleet
        .wait_for_devices(
            &format!("properties.reported.firmware.currentVersion = '{TARGET}'"),
            50,
        )
        .await;

    // Every device downloaded exactly once: the restart re-attached to updates under way (the slow ones at
    // least), without asking their devices again.
    let reattached = fleet.reattached(&id).await;
    assert!(reattached.is_superset(&slow), "{reattached:?} {slow:?}");
    let downloads = fleet.downloads_per_device().await;
    assert_eq!(downloads.len(), 50);
    assert!(downloads.values().all(|count| *count == 1), "{downloads:?}");

    waves_started_after_the_previous_passed(&follower);
    fleet.stop_all_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_threshold_aborts_and_the_failed_devices_get_the_rollback() {
    // The plan is reproducible from its seed: pick the first wave's devices and make two of them unhealthy.
    const SEED: u64 = 12_345;
    let plan = plan(20, "25%,100%", SEED);
    let first_wave: Vec<String> = plan
        .wave(0)
        .iter()
        .map(|key| key.device_id.to_string())
        .collect();
    assert_eq!(first_wave.len(), 5);
    let unhealthy: HashSet<String> = first_wave[..2].iter().cloned().collect();
    let mut fleet = Fleet::new(20, |index| {
        unhealthy.contains(&device_name(index)).then_some(UNHEALTHY)
    })
    .await;
    fleet.start_all_agents();
    fleet.wait_for_reported_models(20).await;
    fleet.upload(FACTORY).await;
    fleet.upload(TARGET).await;

    let id = rollout_id("risky");
    let request = request(|request| {
        request.waves = Some(WavesRequest::Text("25%,100%".into()));
        request.error_threshold = Some(NumberOrText::Text("30%".into()));
        request.error_minimum_devices = Some(5);
        request.seed = Some(SEED);
        request.rollback = Some(ArtifactRef {
            model: MODEL.into(),
            version: FACTORY.into(),
        });
    });
    fleet
        .service
        .create_rollout(&id, &request)
        .await
        .expect("create");
    let mut follower = Follower::open(&fleet.service, &id).await;

    // While it runs, neither of its artifacts can be deleted.
    for version in [TARGET, FACTORY] {
        let refused = fleet.service.delete_artifact(MODEL, version).await;
        match refused {
            Err(ServiceError::Api {
                status, message, ..
            }) => {
                assert_eq!(status, 409);
                assert!(message.contains("risky"), "{message}");
            }
            other => panic!("deleting {version} during the rollout: {other:?}"),
        }
    }

    let aborted = follower
        .until("the rollout ends", |rollout| rollout.status.is_final())
        .await;
    assert_eq!(aborted.status, RolloutStatus::Aborted);
    let message = aborted.status_message.clone().unwrap_or_default();
    assert!(
        message
            .contains("wave 1 reached its error threshold of 30% (2 of 5 finished devices failed)"),
        "{message}"
    );
    assert_eq!(aborted.waves[0].status, WaveStatus::Failed);
    assert_eq!(aborted.waves[1].status, WaveStatus::Skipped);
    let statistics = aborted.statistics;
    assert_eq!(
        (
            statistics.succeeded,
            statistics.failed,
            statistics.cancelled
        ),
        (3, 2, 15)
    );
    let rollback = aborted.rollback_statistics.expect("a rollback phase");
    assert_eq!((rollback.device_count, rollback.succeeded), (2, 2));

    // The devices' records tell why each failed and what the rollback did.
    let failed: Vec<_> = follower
        .history
        .iter()
        .filter_map(|progress| progress.device.clone())
        .filter(|device| {
            device.phase == RolloutPhase::Update && device.status == DeviceRolloutStatus::Failed
        })
        .collect();
    assert_eq!(
        failed
            .iter()
            .map(|device| device.device_id.to_string())
            .collect::<HashSet<_>>(),
        unhealthy
    );
    assert!(failed.iter().all(|device| {
        device.error.as_ref().map(|error| error.code.as_str()) == Some("healthCheckFailed")
    }));
    let rolled_back: HashSet<String> = follower
        .history
        .iter()
        .filter_map(|progress| progress.device.clone())
        .filter(|device| {
            device.phase == RolloutPhase::Rollback
                && device.status == DeviceRolloutStatus::Succeeded
        })
        .map(|device| device.device_id.to_string())
        .collect();
    assert_eq!(rolled_back, unhealthy);

    // Over: its commands are refused, and its artifacts can go.
    let abort_again = fleet.service.abort_rollout(&id).await;
    match abort_again {
        Err(error) => assert_eq!(error.error_code(), Some(ErrorCode::GenericConflict)),
        Ok(rollout) => panic!("aborted twice: {rollout:?}"),
    }
    fleet
        .service
        .delete_artifact(MODEL, TARGET)
        .await
        .expect("the rollout ended");
    fleet.stop_all_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_wait_and_update_when_they_connect() {
    let mut fleet = Fleet::new(6, |_| None).await;
    fleet.start_all_agents();
    fleet.wait_for_reported_models(6).await;
    fleet.upload(TARGET).await;
    // Two devices go offline (they reported their model before).
    let offline = [device_name(1), device_name(4)];
    fleet
        .stop_agents(&[offline[0].as_str(), offline[1].as_str()])
        .await;
    fleet
        .wait_for_devices("connectionState = 'Disconnected'", 2)
        .await;

    let id = rollout_id("with-stragglers");
    fleet
        .service
        .create_rollout(&id, &request(|_| {}))
        .await
        .expect("create");
    let mut follower = Follower::open(&fleet.service, &id).await;
    let waiting = follower
        .until("the connected devices are done", |rollout| {
            rollout.statistics.succeeded == 4
        })
        .await;
    assert_eq!(waiting.status, RolloutStatus::Running);
    assert_eq!(waiting.statistics.pending, 2, "the offline devices wait");
    let waiting_devices: HashSet<String> = follower
        .history
        .iter()
        .filter_map(|progress| progress.device.clone())
        .filter(|device| {
            device.status == DeviceRolloutStatus::Pending
                && device.error.as_ref().map(|error| error.code.as_str()) == Some("DeviceNotOnline")
        })
        .map(|device| {
            assert_eq!(device.attempts, 0, "an offline device consumes no attempt");
            device.device_id.to_string()
        })
        .collect();
    assert_eq!(waiting_devices, offline.iter().cloned().collect());

    fleet.start_agents(offline.iter().map(String::as_str));
    let done = follower
        .until("the rollout completes", |rollout| rollout.status.is_final())
        .await;
    assert_eq!(done.status, RolloutStatus::Completed);
    assert_eq!(done.statistics.succeeded, 6);
    fleet.stop_all_agents().await;
}
