//! Conformance checks of firmware artifacts' metadata and download grants.

use fleethub_protocol::firmware::FirmwareManifest;
use fleethub_protocol::ids::DeviceId;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::StoreFactory;
use crate::{ArtifactRecord, FirmwareGrant, Store, StoreError};

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

pub(super) async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    artifacts_are_created_read_listed_and_deleted(&*store).await;
    images_are_counted_across_artifacts(&*store).await;
    grants_are_found_while_live_and_replaced_per_source(&*store).await;
    grants_die_with_their_artifact_and_need_one(&*store).await;
    grants_are_revoked_by_source_and_purged(&*store).await;
    drop(store);
    artifacts_and_grants_survive_reopening(factory).await;
}

fn device(text: &str) -> DeviceId {
    text.parse().expect("test ids are valid")
}

fn artifact(model: &str, version: &str, sha_byte: &str, signed: bool) -> ArtifactRecord {
    ArtifactRecord {
        manifest: FirmwareManifest {
            model: model.into(),
            version: version.into(),
            sha256: sha_byte.repeat(32),
            size: 1024,
            created: datetime!(2026-04-30 08:00 UTC),
            health_check: signed.then(|| "true".to_owned()),
            description: Some(format!("{model} {version}")),
        },
        manifest_jws: signed.then(|| "eyJhbGciOiJFZERTQSJ9.e30.c2ln".to_owned()),
        key_id: signed.then(|| "0011223344556677".to_owned()),
        uploaded: NOW,
    }
}

fn grant(
    device_id: &str,
    model: &str,
    version: &str,
    expires: OffsetDateTime,
    source: &str,
) -> FirmwareGrant {
    FirmwareGrant {
        device_id: device(device_id),
        model: model.into(),
        version: version.into(),
        expires,
        source: source.into(),
    }
}

async fn artifacts_are_created_read_listed_and_deleted(store: &dyn Store) {
    let signed = artifact("crud-m", "2.0.0", "aa", true);
    let unsigned = artifact("crud-m", "10.0.0", "bb", false);
    let other = artifact("crud-a", "1.0.0", "cc", false);
    for record in [&signed, &unsigned, &other] {
        store.create_artifact(record.clone()).await.expect("create");
    }
    assert_eq!(
        store.get_artifact("crud-m", "2.0.0").await.expect("get"),
        Some(signed.clone())
    );
    assert_eq!(
        store.get_artifact("crud-m", "10.0.0").await.expect("get"),
        Some(unsigned.clone())
    );
    assert!(signed.signed() && !unsigned.signed());
    assert_eq!(store.get_artifact("crud-m", "9").await.expect("get"), None);

    let duplicate = store
        .create_artifact(artifact("crud-m", "2.0.0", "dd", false))
        .await
        .expect_err("taken");
    assert_eq!(
        duplicate,
        StoreError::ArtifactAlreadyExists {
            model: "crud-m".into(),
            version: "2.0.0".into()
        }
    );
    assert_eq!(
        store.get_artifact("crud-m", "2.0.0").await.expect("get"),
        Some(signed.clone()),
        "a refused create changes nothing"
    );

    // By model, then version as bytes ("10.0.0" before "2.0.0").
    let listed: Vec<(String, String)> = store
        .list_artifacts(None)
        .await
        .expect("list")
        .iter()
        .filter(|record| record.model().starts_with("crud-"))
        .map(|record| (record.model().to_owned(), record.version().to_owned()))
        .collect();
    assert_eq!(
        listed,
        [
            ("crud-a", "1.0.0"),
            ("crud-m", "10.0.0"),
            ("crud-m", "2.0.0")
        ]
        .map(|(model, version)| (model.to_owned(), version.to_owned()))
    );
    let one_model = store.list_artifacts(Some("crud-m")).await.expect("list");
    assert_eq!(one_model, vec![unsigned.clone(), signed.clone()]);
    assert!(
        store
            .list_artifacts(Some("crud-none"))
            .await
            .expect("list")
            .is_empty()
    );

    let deleted = store
        .delete_artifact("crud-m", "2.0.0")
        .await
        .expect("delete");
    assert_eq!(deleted, signed);
    assert_eq!(
        store.get_artifact("crud-m", "2.0.0").await.expect("get"),
        None
    );
    assert_eq!(
        store
            .delete_artifact("crud-m", "2.0.0")
            .await
            .expect_err("gone"),
        StoreError::ArtifactNotFound {
            model: "crud-m".into(),
            version: "2.0.0".into()
        }
    );
}

async fn images_are_counted_across_artifacts(store: &dyn Store) {
    let sha = "e1".repeat(32);
    assert_eq!(
        store
            .count_artifacts_with_sha256(&sha)
            .await
            .expect("count"),
        0
    );
    store
        .create_artifact(artifact("shared-a", "1", "e1", false))
        .await
        .expect("create");
    store
        .create_artifact(artifact("shared-b", "1", "e1", true))
        .await
        .expect("create");
    assert_eq!(
        store
            .count_artifacts_with_sha256(&sha)
            .await
            .expect("count"),
        2
    );
    store
        .delete_artifact("shared-a", "1")
        .await
        .expect("delete");
    assert_eq!(
        store
            .count_artifacts_with_sha256(&sha)
            .await
            .expect("count"),
        1
    );
    store
        .delete_artifact("shared-b", "1")
        .await
        .expect("delete");
    assert_eq!(
        store
            .count_artifacts_with_sha256(&sha)
            .await
            .expect("count"),
        0
    );
}

async fn grants_are_found_while_live_and_replaced_per_source(store: &dyn Store) {
    store
        .create_artifact(artifact("grant-m", "1", "f1", false))
        .await
        .expect("create");
    let find = |device_id: &str, at: OffsetDateTime| {
        let device_id = device(device_id);
        async move {
            store
                .find_firmware_grant(&device_id, "grant-m", "1", at)
                .await
                .expect("find")
        }
    };
    assert_eq!(find("g1", NOW).await, None);
    let short = grant("g1", "grant-m", "1", NOW + Duration::minutes(10), "update");
    store.put_firmware_grant(short.clone()).await.expect("put");
    assert_eq!(find("g1", NOW).await, Some(short.clone()));
    assert_eq!(
        find("g1", NOW + Duration::minutes(10)).await,
        Some(short.clone()),
        "live up to and including its expiry second"
    );
    assert_eq!(
        find("g1", NOW + Duration::minutes(10) + Duration::seconds(1)).await,
        None
    );
    assert_eq!(find("g2", NOW).await, None, "another device holds none");
    assert_eq!(
        store
            .find_firmware_grant(&device("g1"), "grant-m", "2", NOW)
            .await
            .expect("find"),
        None,
        "another version is not granted"
    );

    // A second source: the longest-lasting grant answers.
    let rollout = grant("g1", "grant-m", "1", NOW + Duration::hours(2), "rollout:r1");
    store
        .put_firmware_grant(rollout.clone())
        .await
        .expect("put");
    assert_eq!(find("g1", NOW).await, Some(rollout.clone()));
    // Putting the same source again replaces its expiry, even with an earlier one.
    let shorter = grant(
        "g1",
        "grant-m",
        "1",
        NOW + Duration::minutes(1),
        "rollout:r1",
    );
    store.put_firmware_grant(shorter).await.expect("put");
    assert_eq!(find("g1", NOW).await, Some(short));
}

async fn grants_die_with_their_artifact_and_need_one(store: &dyn Store) {
    let missing = grant("d1", "nothing-m", "1", NOW + Duration::hours(1), "update");
    assert_eq!(
        store
            .put_firmware_grant(missing)
            .await
            .expect_err("no artifact"),
        StoreError::ArtifactNotFound {
            model: "nothing-m".into(),
            version: "1".into()
        }
    );
    store
        .create_artifact(artifact("dies-m", "1", "f2", false))
        .await
        .expect("create");
    store
        .put_firmware_grant(grant(
            "d1",
            "dies-m",
            "1",
            NOW + Duration::hours(1),
            "update",
        ))
        .await
        .expect("put");
    store.delete_artifact("dies-m", "1").await.expect("delete");
    // Uploaded again (perhaps with other bytes): the old grant does not entitle anyone to the new one.
    store
        .create_artifact(artifact("dies-m", "1", "f3", false))
        .await
        .expect("create");
    assert_eq!(
        store
            .find_firmware_grant(&device("d1"), "dies-m", "1", NOW)
            .await
            .expect("find"),
        None
    );
}

async fn grants_are_revoked_by_source_and_purged(store: &dyn Store) {
    store
        .create_artifact(artifact("ro-m", "1", "f4", false))
        .await
        .expect("create");
    store
        .create_artifact(artifact("ro-m", "2", "f5", false))
        .await
        .expect("create");
    let in_an_hour = NOW + Duration::hours(1);
    for (device_id, version, source, expires) in [
        ("r1", "1", "rollout:b", in_an_hour),
        ("r2", "1", "rollout:b", in_an_hour),
        ("r1", "1", "rollout:a", in_an_hour),
        ("r3", "1", "update", in_an_hour),
        ("r3", "1", "rollout:old", NOW - Duration::minutes(1)),
        ("r4", "2", "rollout:c", in_an_hour),
    ] {
        store
            .put_firmware_grant(grant(device_id, "ro-m", version, expires, source))
            .await
            .expect("put");
    }
    let find = |device_id: &'static str, version: &'static str| async move {
        store
            .find_firmware_grant(&device(device_id), "ro-m", version, NOW)
            .await
            .expect("find")
            .map(|grant| grant.source)
    };
    assert_eq!(
        store
            .revoke_firmware_grants("rollout:b")
            .await
            .expect("revoke"),
        2
    );
    assert_eq!(find("r2", "1").await, None, "its only grant was revoked");
    assert_eq!(
        find("r1", "1").await.as_deref(),
        Some("rollout:a"),
        "other sources stay"
    );
    assert_eq!(find("r4", "2").await.as_deref(), Some("rollout:c"));
    assert_eq!(
        store
            .revoke_firmware_grants("rollout:b")
            .await
            .expect("revoke"),
        0
    );

    // Only what expired before `now` goes; other artifacts' expired grants may go too.
    let purged = store.purge_expired_grants(NOW).await.expect("purge");
    assert!(purged >= 1, "the expired rollout grant is purged");
    assert_eq!(store.purge_expired_grants(NOW).await.expect("purge"), 0);
    assert!(
        store
            .find_firmware_grant(&device("r3"), "ro-m", "1", NOW)
            .await
            .expect("find")
            .is_some(),
        "the live grant stays"
    );
}

async fn artifacts_and_grants_survive_reopening(factory: &dyn StoreFactory) {
    let record = artifact("persist-m", "3.1.4", "f6", true);
    let live = grant(
        "p1",
        "persist-m",
        "3.1.4",
        NOW + Duration::days(3),
        "rollout:p",
    );
    {
        let store = factory.open();
        store.create_artifact(record.clone()).await.expect("create");
        store.put_firmware_grant(live.clone()).await.expect("put");
    }
    let store = factory.open();
    assert_eq!(
        store.get_artifact("persist-m", "3.1.4").await.expect("get"),
        Some(record)
    );
    assert_eq!(
        store
            .find_firmware_grant(&device("p1"), "persist-m", "3.1.4", NOW)
            .await
            .expect("find"),
        Some(live)
    );
}
