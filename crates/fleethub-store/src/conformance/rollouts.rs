//! Conformance checks of firmware rollouts: the rollout rows, their devices' records and counts, their
//! change-feed records, and the artifacts they hold on to.

use fleethub_core::executor::{TargetError, TargetRecord, TargetStatus};
use fleethub_core::identity::IdentityKey;
use fleethub_core::rollout::RolloutTarget;
use fleethub_protocol::firmware::FirmwareManifest;
use fleethub_protocol::ids::RolloutId;
use fleethub_protocol::rollouts::{
    ArtifactRef, DeviceRolloutChange, DeviceRolloutStatus, Rollout, RolloutPhase,
    RolloutStatistics, RolloutStatus, WaveProgress, WaveStatus,
};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::StoreFactory;
use crate::{
    ArtifactRecord, ChangeFilter, ChangeOperation, RolloutFilter, RolloutRecord, Store, StoreError,
};

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

pub(super) async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    rollouts_are_created_read_listed_and_need_their_artifacts(&*store).await;
    device_records_keep_the_counts_and_feed_the_change_feed(&*store).await;
    an_artifact_an_unfinished_rollout_uses_cannot_be_deleted(&*store).await;
    cleared_targets_leave_no_counts(&*store).await;
    drop(store);
    rollouts_survive_reopening(factory).await;
}

fn id(text: &str) -> RolloutId {
    text.parse().expect("test ids are valid")
}

fn key(text: &str) -> IdentityKey {
    IdentityKey::device(text.parse().expect("test ids are valid"))
}

fn artifact(model: &str, version: &str) -> ArtifactRecord {
    ArtifactRecord {
        manifest: FirmwareManifest {
            model: model.into(),
            version: version.into(),
            sha256: "ab".repeat(32),
            size: 10,
            created: NOW,
            health_check: None,
            description: None,
        },
        manifest_jws: None,
        key_id: None,
        uploaded: NOW,
    }
}

fn wave(number: u32, size: &str) -> WaveProgress {
    WaveProgress {
        wave: number,
        size: size.into(),
        success_threshold: "100%".into(),
        error_threshold: Some("10%".into()),
        error_minimum_devices: 10,
        approval: false,
        status: WaveStatus::Pending,
        statistics: RolloutStatistics::default(),
    }
}

fn rollout(rollout_id: &str, model: &str, version: &str, rollback: Option<&str>) -> RolloutRecord {
    RolloutRecord {
        rollout: Rollout {
            rollout_id: id(rollout_id),
            artifact: ArtifactRef {
                model: model.into(),
                version: version.into(),
            },
            rollback: rollback.map(|version| ArtifactRef {
                model: model.into(),
                version: version.into(),
            }),
            target_condition: "IS_DEFINED(deviceId)".into(),
            status: RolloutStatus::Running,
            status_message: None,
            created_time: NOW,
            start_time: None,
            end_time: None,
            current_wave: 0,
            waves: vec![wave(1, "50%"), wave(2, "100%")],
            max_concurrency: 10,
            start_rate_per_second: None,
            device_timeout_in_seconds: 60,
            max_attempts: 1,
            retry_backoff_in_seconds: 5,
            offline_timeout_in_seconds: None,
            seed: 7,
            statistics: RolloutStatistics::default(),
            rollback_statistics: None,
        },
        state: json!({"wavesStarted": 0}),
    }
}

fn target(
    phase: RolloutPhase,
    device: &str,
    wave: u32,
    position: u64,
    status: TargetStatus,
) -> RolloutTarget {
    RolloutTarget {
        phase,
        wave,
        position,
        record: TargetRecord {
            target: key(device),
            status,
            attempts: u32::from(status != TargetStatus::Pending),
            created: NOW,
            started: (status != TargetStatus::Pending).then_some(NOW),
            finished: status.is_terminal().then_some(NOW),
            last_updated: NOW,
            outcome: (status == TargetStatus::Succeeded).then(|| json!({"currentVersion": "2"})),
            error: (status == TargetStatus::Failed)
                .then(|| TargetError::new("healthCheckFailed", "exit 1")),
        },
    }
}

fn counts(
    device_count: u64,
    pending: u64,
    running: u64,
    succeeded: u64,
    failed: u64,
) -> RolloutStatistics {
    RolloutStatistics {
        device_count,
        pending,
        running,
        succeeded,
        failed,
        cancelled: device_count - pending - running - succeeded - failed,
    }
}

async fn rollouts_are_created_read_listed_and_need_their_artifacts(store: &dyn Store) {
    store
        .create_artifact(artifact("ro-crud", "2"))
        .await
        .expect("artifact");
    store
        .create_artifact(artifact("ro-crud", "1"))
        .await
        .expect("artifact");
    let created = rollout("ro-crud-a", "ro-crud", "2", Some("1"));
    store.create_rollout(created.clone()).await.expect("create");
    assert_eq!(
        store.get_rollout(&id("ro-crud-a")).await.expect("get"),
        Some(created.clone())
    );
    assert_eq!(store.get_rollout(&id("ro-nope")).await.expect("get"), None);
    assert_eq!(
        store.create_rollout(created.clone()).await,
        Err(StoreError::RolloutAlreadyExists(id("ro-crud-a")))
    );
    assert_eq!(
        store
            .create_rollout(rollout("ro-crud-b", "ro-crud", "3", None))
            .await,
        Err(StoreError::ArtifactNotFound {
            model: "ro-crud".into(),
            version: "3".into()
        })
    );
    assert_eq!(
        store
            .create_rollout(rollout("ro-crud-b", "ro-crud", "2", Some("0")))
            .await,
        Err(StoreError::ArtifactNotFound {
            model: "ro-crud".into(),
            version: "0".into()
        }),
        "the rollback artifact must exist too"
    );
    let mut done = rollout("ro-crud-c", "ro-crud", "2", None);
    store.create_rollout(done.clone()).await.expect("create");
    done.rollout.status = RolloutStatus::Completed;
    store.update_rollout(done.clone()).await.expect("update");
    assert_eq!(
        store
            .update_rollout(rollout("ro-crud-z", "ro-crud", "2", None))
            .await,
        Err(StoreError::RolloutNotFound(id("ro-crud-z")))
    );

    let ids = |records: Vec<RolloutRecord>| -> Vec<String> {
        records
            .into_iter()
            .map(|record| record.rollout.rollout_id.to_string())
            .filter(|rollout_id| rollout_id.starts_with("ro-crud"))
            .collect()
    };
    let all = store
        .list_rollouts(RolloutFilter {
            limit: 1000,
            ..RolloutFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(all), ["ro-crud-a", "ro-crud-c"]);
    let completed = store
        .list_rollouts(RolloutFilter {
            status: Some(RolloutStatus::Completed),
            limit: 1000,
            ..RolloutFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(completed), ["ro-crud-c"]);
    let after = store
        .list_rollouts(RolloutFilter {
            after: Some(id("ro-crud-a")),
            limit: 1,
            ..RolloutFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(after), ["ro-crud-c"]);
    let unfinished = store.list_unfinished_rollouts().await.expect("unfinished");
    assert_eq!(ids(unfinished), ["ro-crud-a"]);
}

async fn device_records_keep_the_counts_and_feed_the_change_feed(store: &dyn Store) {
    store
        .create_artifact(artifact("ro-feed", "2"))
        .await
        .expect("artifact");
    store
        .create_artifact(artifact("ro-feed", "1"))
        .await
        .expect("artifact");
    let rollout_id = id("ro-feed");
    let before = *store.change_notifier().borrow();
    let mut record = rollout("ro-feed", "ro-feed", "2", Some("1"));
    store.create_rollout(record.clone()).await.expect("create");
    let created = store
        .read_changes(before, 100, ChangeFilter::rollout(rollout_id.clone()))
        .await
        .expect("read");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].operation, ChangeOperation::RolloutUpdated);
    assert_eq!(created[0].device_id, None);
    assert_eq!(created[0].rollout_id, Some(rollout_id.clone()));
    let after_create = created[0].sequence;

    // Freezing the targets (all pending) appends nothing and counts them per wave.
    use RolloutPhase::{Rollback, Update};
    use TargetStatus::{Failed, Pending, Running, Succeeded};
    let frozen = vec![
        target(Update, "ro-feed-a", 1, 0, Pending),
        target(Update, "ro-feed-b", 1, 1, Pending),
        target(Update, "ro-feed-c", 2, 2, Pending),
        target(Update, "ro-feed-d", 2, 3, Pending),
        target(Update, "ro-feed-e", 2, 4, Pending),
    ];
    store
        .save_rollout_targets(&rollout_id, frozen.clone())
        .await
        .expect("freeze");
    let read = store
        .get_rollout(&rollout_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.rollout.statistics, counts(5, 5, 0, 0, 0));
    assert_eq!(read.rollout.waves[0].statistics, counts(2, 2, 0, 0, 0));
    assert_eq!(read.rollout.waves[1].statistics, counts(3, 3, 0, 0, 0));
    assert_eq!(
        store
            .read_changes(after_create, 100, ChangeFilter::rollout(rollout_id.clone()))
            .await
            .expect("read"),
        []
    );

    // Status changes append one record each, with the counts after them.
    let progress = vec![
        target(Update, "ro-feed-a", 1, 0, Running),
        target(Update, "ro-feed-b", 1, 1, Running),
    ];
    store
        .save_rollout_targets(&rollout_id, progress.clone())
        .await
        .expect("start");
    store
        .save_rollout_targets(&rollout_id, progress)
        .await
        .expect("saving again is idempotent");
    store
        .save_rollout_targets(
            &rollout_id,
            vec![
                target(Update, "ro-feed-a", 1, 0, Succeeded),
                target(Update, "ro-feed-b", 1, 1, Failed),
            ],
        )
        .await
        .expect("finish");
    let records = store
        .read_changes(after_create, 100, ChangeFilter::rollout(rollout_id.clone()))
        .await
        .expect("read");
    assert_eq!(records.len(), 4);
    assert!(
        records
            .iter()
            .all(|record| record.operation == ChangeOperation::DeviceRolloutUpdated)
    );
    let last: DeviceRolloutChange =
        serde_json::from_value(records[3].body.clone()).expect("a device rollout change");
    assert_eq!(last.device.device_id.as_str(), "ro-feed-b");
    assert_eq!(last.device.status, DeviceRolloutStatus::Failed);
    assert_eq!(last.device.wave, 1);
    assert_eq!(
        last.device.error.map(|error| error.code),
        Some("healthCheckFailed".into())
    );
    assert_eq!(last.statistics, counts(5, 3, 0, 1, 1));
    assert_eq!(last.wave_statistics, Some(counts(2, 0, 0, 1, 1)));
    // A device's own records include its rollout records.
    let of_b = store
        .read_changes(
            after_create,
            100,
            ChangeFilter::device(key("ro-feed-b").device_id),
        )
        .await
        .expect("read");
    assert_eq!(of_b.len(), 2);

    // The rollback phase is counted apart.
    store
        .save_rollout_targets(
            &rollout_id,
            vec![
                target(Rollback, "ro-feed-b", 0, 1, Pending),
                target(Rollback, "ro-feed-b", 0, 1, Succeeded),
            ],
        )
        .await
        .expect("rollback");
    let read = store
        .get_rollout(&rollout_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.rollout.statistics, counts(5, 3, 0, 1, 1));
    assert_eq!(
        read.rollout.rollback_statistics,
        Some(counts(1, 0, 0, 1, 0))
    );

    // Device records by phase and position, paged.
    let update = store
        .list_rollout_targets(&rollout_id, Update, None, 3)
        .await
        .expect("list");
    assert_eq!(
        update
            .iter()
            .map(|target| (target.position, target.record.status))
            .collect::<Vec<_>>(),
        [(0, Succeeded), (1, Failed), (2, Pending)]
    );
    assert_eq!(update[0], target(Update, "ro-feed-a", 1, 0, Succeeded));
    let rest = store
        .list_rollout_targets(&rollout_id, Update, Some(2), 100)
        .await
        .expect("list");
    assert_eq!(rest, frozen[3..].to_vec());
    let rollback = store
        .list_rollout_targets(&rollout_id, Rollback, None, 100)
        .await
        .expect("list");
    assert_eq!(rollback, [target(Rollback, "ro-feed-b", 0, 1, Succeeded)]);

    // The rollout's own record comes when more than its state changes.
    let sequence = *store.change_notifier().borrow();
    record.state = json!({"wavesStarted": 1});
    store.update_rollout(record.clone()).await.expect("state");
    assert_eq!(*store.change_notifier().borrow(), sequence, "state only");
    record.rollout.current_wave = 1;
    record.rollout.start_time = Some(NOW);
    store.update_rollout(record.clone()).await.expect("started");
    let updated = store
        .read_changes(sequence, 100, ChangeFilter::rollout(rollout_id.clone()))
        .await
        .expect("read");
    assert_eq!(updated.len(), 1);
    let body: Rollout = serde_json::from_value(updated[0].body.clone()).expect("a rollout");
    assert_eq!(body.current_wave, 1);
    assert_eq!(
        body.statistics,
        counts(5, 3, 0, 1, 1),
        "with the stored counts"
    );
    // Filters combine, and other records never match a rollout filter.
    let none = store
        .read_changes(
            0,
            10_000,
            ChangeFilter {
                job: Some("ro-feed".parse().expect("valid")),
                rollout: Some(rollout_id.clone()),
                device: None,
            },
        )
        .await
        .expect("read");
    assert_eq!(none, []);
    assert_eq!(
        store.save_rollout_targets(&id("ro-missing"), frozen).await,
        Err(StoreError::RolloutNotFound(id("ro-missing")))
    );
}

async fn an_artifact_an_unfinished_rollout_uses_cannot_be_deleted(store: &dyn Store) {
    for version in ["1", "2", "3"] {
        store
            .create_artifact(artifact("ro-use", version))
            .await
            .expect("artifact");
    }
    let mut first = rollout("ro-use-a", "ro-use", "2", Some("1"));
    store.create_rollout(first.clone()).await.expect("create");
    store
        .create_rollout(rollout("ro-use-b", "ro-use", "2", None))
        .await
        .expect("create");
    assert_eq!(
        store
            .unfinished_rollouts_using_artifact("ro-use", "2")
            .await
            .expect("read"),
        [id("ro-use-a"), id("ro-use-b")]
    );
    let refused = store.delete_artifact("ro-use", "2").await;
    assert_eq!(
        refused,
        Err(StoreError::ArtifactInUse {
            model: "ro-use".into(),
            version: "2".into(),
            rollouts: vec![id("ro-use-a"), id("ro-use-b")],
        })
    );
    assert!(
        refused
            .expect_err("refused")
            .to_string()
            .contains("used by unfinished rollouts: ro-use-a, ro-use-b")
    );
    assert!(
        matches!(store.delete_artifact("ro-use", "1").await, Err(StoreError::ArtifactInUse { rollouts, .. }) if rollouts == [id("ro-use-a")]),
        "a rollback artifact is in use too"
    );
    store
        .delete_artifact("ro-use", "3")
        .await
        .expect("unused: deleted");
    first.rollout.status = RolloutStatus::Aborted;
    store.update_rollout(first).await.expect("aborted");
    store
        .delete_artifact("ro-use", "1")
        .await
        .expect("its rollout ended");
    assert!(
        store
            .get_artifact("ro-use", "2")
            .await
            .expect("get")
            .is_some()
    );
}

async fn cleared_targets_leave_no_counts(store: &dyn Store) {
    store
        .create_artifact(artifact("ro-clear", "2"))
        .await
        .expect("artifact");
    let rollout_id = id("ro-clear");
    store
        .create_rollout(rollout("ro-clear", "ro-clear", "2", None))
        .await
        .expect("create");
    store
        .save_rollout_targets(
            &rollout_id,
            vec![
                target(
                    RolloutPhase::Update,
                    "ro-clear-a",
                    1,
                    0,
                    TargetStatus::Pending,
                ),
                target(
                    RolloutPhase::Update,
                    "ro-clear-b",
                    2,
                    1,
                    TargetStatus::Pending,
                ),
            ],
        )
        .await
        .expect("freeze");
    store
        .clear_rollout_targets(&rollout_id)
        .await
        .expect("clear");
    assert_eq!(
        store
            .list_rollout_targets(&rollout_id, RolloutPhase::Update, None, 100)
            .await
            .expect("list"),
        []
    );
    let read = store
        .get_rollout(&rollout_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.rollout.statistics, RolloutStatistics::default());
    assert_eq!(
        store.clear_rollout_targets(&id("ro-clear-none")).await,
        Err(StoreError::RolloutNotFound(id("ro-clear-none")))
    );
}

async fn rollouts_survive_reopening(factory: &dyn StoreFactory) {
    let store = factory.open();
    let read = store
        .get_rollout(&id("ro-feed"))
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(read.rollout.current_wave, 1);
    assert_eq!(read.state, json!({"wavesStarted": 1}));
    assert_eq!(
        store
            .list_rollout_targets(&id("ro-feed"), RolloutPhase::Update, None, 100)
            .await
            .expect("list")
            .len(),
        5
    );
}
