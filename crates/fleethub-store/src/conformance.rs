//! The conformance suite every `Store` backend must pass. A backend's tests call [`run_all`] with a
//! factory that opens the backend on the same underlying data each time it is called (so persistence
//! across reopening is checked too).

mod artifacts;
mod audit;
mod c2d;
mod certificates;
mod configurations;
mod jobs;
mod rollouts;

use std::sync::Arc;

use fleethub_core::access::{AccessPolicy, BUILT_IN_POLICIES};
use fleethub_core::identity::{Authentication, FreshKeys, IdentityKey, IdentitySpec};
use fleethub_protocol::ids::{DeviceId, ETag, IfMatch, ModuleId};
use fleethub_protocol::rest::{AuthenticationType, ConnectionState, DeviceStatus};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::{
    ChangeFilter, ChangeOperation, CreateIdentity, DesiredCheckpoint, Store, StoreError,
    StoredSession, StoredSubscription, TwinChange, UpdateIdentity, UpdateTwin,
};

/// Opens the backend under test; every call must see the data written through earlier instances.
pub trait StoreFactory {
    fn open(&self) -> Arc<dyn Store>;
}

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

/// Runs every conformance check, each on fresh identities so they do not interfere.
pub async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    identities_are_created_read_listed_and_deleted(&*store).await;
    creating_twice_or_under_a_missing_device_is_refused(&*store).await;
    identity_updates_honour_if_match(&*store).await;
    twin_writes_follow_core_rules_and_etags(&*store).await;
    a_failing_write_does_not_disturb_concurrent_writes(&store).await;
    commit_hooks_run_in_version_order(&store).await;
    twin_writes_return_the_current_identity(&*store).await;
    bulk_writes_apply_each_item_on_its_own(&*store).await;
    change_feed_is_ordered_filtered_and_notified(&*store).await;
    sessions_persist_and_die_with_their_identity(&*store).await;
    desired_checkpoints_only_move_forward_and_go_with_their_session(&*store).await;
    connection_state_and_activity_are_recorded(&*store).await;
    policies_and_meta_round_trip(&*store).await;
    drop(store);
    everything_survives_reopening(factory).await;
    jobs::run_all(factory).await;
    configurations::run_all(factory).await;
    artifacts::run_all(factory).await;
    rollouts::run_all(factory).await;
    c2d::run_all(factory).await;
    audit::run_all(factory).await;
    certificates::run_all(factory).await;
}

fn device(id: &str) -> IdentityKey {
    IdentityKey::device(id.parse::<DeviceId>().expect("test ids are valid"))
}

fn module(device_id: &str, module_id: &str) -> IdentityKey {
    IdentityKey::module(
        device_id.parse::<DeviceId>().expect("test ids are valid"),
        module_id.parse::<ModuleId>().expect("test ids are valid"),
    )
}

fn sas_spec() -> IdentitySpec {
    IdentitySpec {
        status: DeviceStatus::Enabled,
        status_reason: None,
        authentication: Authentication {
            kind: AuthenticationType::Sas,
            primary_key: None,
            secondary_key: None,
            primary_thumbprint: None,
            secondary_thumbprint: None,
        },
        iot_edge: false,
        managed_by: None,
        device_scope: None,
        parent_scopes: vec![],
    }
}

fn fresh_keys() -> FreshKeys {
    FreshKeys {
        primary: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        secondary: "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=".into(),
    }
}

fn create(key: &IdentityKey) -> CreateIdentity {
    CreateIdentity {
        key: key.clone(),
        spec: sas_spec(),
        generation_id: "638500000000000000".into(),
        fresh_keys: fresh_keys(),
        now: NOW,
    }
}

fn tag(etag: String) -> IfMatch {
    IfMatch::Tag(ETag::new(etag))
}

async fn identities_are_created_read_listed_and_deleted(store: &dyn Store) {
    let first = device("crud-a");
    let second = device("crud-b");
    let first_module = module("crud-a", "m1");
    let created = store
        .create_identity(create(&first))
        .await
        .expect("create device");
    assert_eq!(created.key, first);
    assert_eq!(
        created.identity.authentication.primary_key.as_deref(),
        Some(fresh_keys().primary.as_str())
    );
    store
        .create_identity(create(&second))
        .await
        .expect("create second device");
    store
        .create_identity(create(&first_module))
        .await
        .expect("create module");

    let read = store
        .get(&first)
        .await
        .expect("get")
        .expect("device exists");
    assert_eq!(
        read, created,
        "a read returns exactly what the create returned"
    );

    let listed = store
        .list_devices(Some("crud-".parse().expect("valid")), 10)
        .await
        .expect("list");
    let ids: Vec<String> = listed.iter().map(|record| record.key.to_string()).collect();
    assert!(
        ids.starts_with(&["crud-a".to_string(), "crud-b".to_string()]),
        "devices only, by id: {ids:?}"
    );
    let page = store
        .list_devices(Some("crud-a".parse().expect("valid")), 1)
        .await
        .expect("list after");
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0].key, second,
        "paging continues strictly after the given id"
    );

    let modules = store
        .list_modules(&first.device_id)
        .await
        .expect("list modules");
    assert_eq!(modules.len(), 1);
    assert_eq!(modules[0].key, first_module);

    store
        .delete_identity(&first, IfMatch::Any)
        .await
        .expect("delete device");
    assert!(store.get(&first).await.expect("get").is_none());
    assert!(
        store.get(&first_module).await.expect("get").is_none(),
        "modules go with their device"
    );
    assert_eq!(
        store.delete_identity(&first, IfMatch::Any).await,
        Err(StoreError::NotFound(first.clone()))
    );
}

async fn creating_twice_or_under_a_missing_device_is_refused(store: &dyn Store) {
    let key = device("dup");
    store.create_identity(create(&key)).await.expect("create");
    assert_eq!(
        store.create_identity(create(&key)).await,
        Err(StoreError::AlreadyExists(key.clone()))
    );
    let orphan = module("no-such-device", "m");
    assert_eq!(
        store.create_identity(create(&orphan)).await,
        Err(StoreError::ParentNotFound(
            "no-such-device".parse().expect("valid")
        ))
    );
}

async fn identity_updates_honour_if_match(store: &dyn Store) {
    let key = device("upd");
    let created = store.create_identity(create(&key)).await.expect("create");
    let mut spec = sas_spec();
    spec.status = DeviceStatus::Disabled;
    let update = |if_match| UpdateIdentity {
        key: key.clone(),
        spec: spec.clone(),
        if_match,
        fresh_keys: fresh_keys(),
        now: NOW,
    };
    let stale = store.update_identity(update(tag("bm90LWl0".into()))).await;
    assert!(
        matches!(stale, Err(StoreError::PreconditionFailed { .. })),
        "{stale:?}"
    );
    let updated = store
        .update_identity(update(tag(created.identity.etag())))
        .await
        .expect("update");
    assert!(updated.status_changed);
    assert_ne!(updated.record.identity.etag(), created.identity.etag());
    let again = store
        .update_identity(update(IfMatch::Any))
        .await
        .expect("update any");
    assert!(!again.status_changed);
    let missing = UpdateIdentity {
        key: device("upd-missing"),
        ..update(IfMatch::Any)
    };
    assert_eq!(
        store.update_identity(missing).await.map(|_| ()),
        Err(StoreError::NotFound(device("upd-missing")))
    );
    let stats = store.statistics().await.expect("statistics");
    assert!(stats.disabled_device_count >= 1);
    assert_eq!(
        stats.total_device_count,
        stats.enabled_device_count + stats.disabled_device_count
    );
}

async fn twin_writes_follow_core_rules_and_etags(store: &dyn Store) {
    let key = device("twin");
    let created = store.create_identity(create(&key)).await.expect("create");
    let start_version = created.twin.version();

    let reported = store
        .update_twin(UpdateTwin {
            key: key.clone(),
            change: TwinChange::ReportedPatch(
                json!({"firmwareStatus": "downloading", "nested": {"a": 1}}),
            ),
            if_match: IfMatch::Any,
            now: NOW,
            on_commit: None,
        })
        .await
        .expect("reported patch");
    assert!(reported.desired_patch_for_device.is_none());
    assert!(reported.record.twin.version() > start_version);

    let etag = reported.record.twin.etag();
    let desired = store
        .update_twin(UpdateTwin {
            key: key.clone(),
            change: TwinChange::ServicePatch(
                json!({"tags": {"site": "a"}, "properties": {"desired": {"fw": "2.0"}}}),
            ),
            if_match: tag(etag.clone()),
            now: NOW,
            on_commit: None,
        })
        .await
        .expect("desired patch with the current etag");
    let pushed = desired
        .desired_patch_for_device
        .expect("a desired change is pushed to the device");
    assert_eq!(pushed["fw"], json!("2.0"));
    assert_eq!(
        pushed["$version"],
        json!(desired.record.twin.desired_version())
    );

    let stale = store
        .update_twin(UpdateTwin {
            key: key.clone(),
            change: TwinChange::ServicePatch(json!({"tags": {"site": "b"}})),
            if_match: tag(etag),
            now: NOW,
            on_commit: None,
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::PreconditionFailed { .. })),
        "{stale:?}"
    );

    let invalid = store
        .update_twin(UpdateTwin {
            key: key.clone(),
            change: TwinChange::ReportedPatch(json!({"bad.key": 1})),
            if_match: IfMatch::Any,
            now: NOW,
            on_commit: None,
        })
        .await;
    assert!(matches!(invalid, Err(StoreError::Twin(_))), "{invalid:?}");

    let stored = store.get(&key).await.expect("get").expect("exists");
    assert_eq!(
        stored.twin, desired.record.twin,
        "refused writes leave the twin untouched"
    );
    let properties = stored.twin.properties_json();
    assert_eq!(
        properties["reported"]["firmwareStatus"],
        json!("downloading")
    );
    assert_eq!(properties["desired"]["fw"], json!("2.0"));
    assert_eq!(stored.twin.tags()["site"], json!("a"));

    let missing = store
        .update_twin(UpdateTwin {
            key: device("twin-missing"),
            change: TwinChange::ReportedPatch(json!({})),
            if_match: IfMatch::Any,
            now: NOW,
            on_commit: None,
        })
        .await;
    assert_eq!(
        missing.map(|_| ()),
        Err(StoreError::NotFound(device("twin-missing")))
    );
}

async fn a_failing_write_does_not_disturb_concurrent_writes(store: &Arc<dyn Store>) {
    let keys: Vec<IdentityKey> = (0..50)
        .map(|index| device(&format!("batch-{index:02}")))
        .collect();
    for key in &keys {
        store.create_identity(create(key)).await.expect("create");
    }
    // Interleave valid and invalid patches so that, on a group-committing backend, they share batches.
    let mut tasks = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let store = Arc::clone(store);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let patch = if index % 2 == 0 {
                json!({"n": index})
            } else {
                json!({"$bad": index})
            };
            let result = store
                .update_twin(UpdateTwin {
                    key,
                    change: TwinChange::ReportedPatch(patch),
                    if_match: IfMatch::Any,
                    now: NOW,
                    on_commit: None,
                })
                .await;
            (index, result.is_ok())
        }));
    }
    for task in tasks {
        let (index, ok) = task.await.expect("task");
        assert_eq!(ok, index % 2 == 0, "write {index}");
    }
    for (index, key) in keys.iter().enumerate() {
        let record = store.get(key).await.expect("get").expect("exists");
        let reported = record.twin.properties_json()["reported"].clone();
        if index % 2 == 0 {
            assert_eq!(reported["n"], json!(index));
        } else {
            assert!(reported.get("$bad").is_none());
        }
    }
}

async fn bulk_writes_apply_each_item_on_its_own(store: &dyn Store) {
    use crate::BulkOperation;
    let existing = device("bulk-existing");
    store
        .create_identity(create(&existing))
        .await
        .expect("create");
    let update = UpdateIdentity {
        key: existing.clone(),
        spec: sas_spec(),
        if_match: IfMatch::Any,
        fresh_keys: fresh_keys(),
        now: NOW,
    };
    let operations = vec![
        BulkOperation::Create {
            request: create(&device("bulk-new")),
            twin_patch: Some(json!({"tags": {"site": "x"}})),
            reported: Some(json!({"firmwareStatus": "standBy"})),
        },
        BulkOperation::Create {
            request: create(&existing),
            twin_patch: None,
            reported: None,
        },
        BulkOperation::Create {
            request: create(&device("bulk-bad-twin")),
            twin_patch: Some(json!({"tags": {"a.b": 1}})),
            reported: None,
        },
        BulkOperation::Update {
            request: update,
            twin_patch: Some(json!({"properties": {"desired": {"fw": "3"}}})),
        },
        BulkOperation::UpdateTwin {
            key: device("bulk-missing"),
            patch: json!({"tags": {"x": 1}}),
            if_match: IfMatch::Any,
            now: NOW,
        },
        BulkOperation::Delete {
            key: device("bulk-missing"),
            if_match: IfMatch::Any,
        },
    ];
    let results = store.bulk(operations).await.expect("the batch commits");
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().err(),
        Some(&StoreError::AlreadyExists(existing.clone()))
    );
    assert!(
        matches!(results[2], Err(StoreError::Twin(_))),
        "{:?}",
        results[2]
    );
    let updated = results[3].as_ref().expect("update with twin patch");
    assert_eq!(
        updated
            .desired_patch_for_device
            .as_ref()
            .map(|patch| patch["fw"].clone()),
        Some(json!("3"))
    );
    assert!(matches!(results[4], Err(StoreError::NotFound(_))));
    assert!(matches!(results[5], Err(StoreError::NotFound(_))));
    let created = store
        .get(&device("bulk-new"))
        .await
        .expect("get")
        .expect("created in bulk");
    assert_eq!(created.twin.tags()["site"], json!("x"));
    assert_eq!(
        created.twin.properties_json()["reported"]["firmwareStatus"],
        json!("standBy")
    );
    assert!(
        store
            .get(&device("bulk-bad-twin"))
            .await
            .expect("get")
            .is_none(),
        "a refused item wrote nothing"
    );
}

/// A twin write returns the whole record as it is now, including identity changes made between twin writes
/// (a backend that keeps hot records in memory must not serve a stale identity).
async fn twin_writes_return_the_current_identity(store: &dyn Store) {
    let key = device("fresh-identity");
    store.create_identity(create(&key)).await.expect("create");
    let patch = |n: i64| UpdateTwin {
        key: key.clone(),
        change: TwinChange::ReportedPatch(json!({ "n": n })),
        if_match: IfMatch::Any,
        now: NOW,
        on_commit: None,
    };
    store.update_twin(patch(1)).await.expect("first patch");
    let mut spec = sas_spec();
    spec.status = DeviceStatus::Disabled;
    let update = UpdateIdentity {
        key: key.clone(),
        spec,
        if_match: IfMatch::Any,
        fresh_keys: fresh_keys(),
        now: NOW,
    };
    store.update_identity(update).await.expect("disable");
    let after_disable = store.update_twin(patch(2)).await.expect("second patch");
    assert_eq!(after_disable.record.identity.status, DeviceStatus::Disabled);
    store
        .set_connection_state(&key, ConnectionState::Connected, NOW)
        .await
        .expect("connect");
    let after_connect = store.update_twin(patch(3)).await.expect("third patch");
    assert_eq!(
        after_connect.record.identity.connection_state,
        ConnectionState::Connected
    );
    let active_at = datetime!(2026-05-01 12:00 UTC);
    store
        .record_activity(vec![(key.clone(), active_at)])
        .await
        .expect("activity");
    let after_activity = store.update_twin(patch(4)).await.expect("fourth patch");
    assert_eq!(
        after_activity.record.identity.last_activity_time,
        Some(active_at)
    );
    let refused = store
        .update_twin(UpdateTwin {
            change: TwinChange::ReportedPatch(json!({"$bad": 1})),
            ..patch(0)
        })
        .await;
    assert!(matches!(refused, Err(StoreError::Twin(_))));
    let after_refusal = store.update_twin(patch(5)).await.expect("fifth patch");
    assert_eq!(
        after_refusal.record.twin.properties_json()["reported"]["n"],
        json!(5)
    );
    assert_eq!(
        after_refusal.record.twin.reported_version(),
        after_activity.record.twin.reported_version() + 1,
        "a refused patch changed nothing"
    );
    store
        .delete_identity(&key, IfMatch::Any)
        .await
        .expect("delete");
    assert_eq!(
        store.update_twin(patch(6)).await.map(|_| ()),
        Err(StoreError::NotFound(key.clone()))
    );
}

async fn commit_hooks_run_in_version_order(store: &Arc<dyn Store>) {
    let key = device("hooks");
    store.create_identity(create(&key)).await.expect("create");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for index in 0..40 {
        let store = Arc::clone(store);
        let key = key.clone();
        let seen = Arc::clone(&seen);
        tasks.push(tokio::spawn(async move {
            let hook: crate::TwinCommitHook = Box::new(move |updated| {
                seen.lock()
                    .expect("lock")
                    .push(updated.record.twin.desired_version());
            });
            store
                .update_twin(UpdateTwin {
                    key,
                    change: TwinChange::ServicePatch(
                        json!({"properties": {"desired": {"n": index}}}),
                    ),
                    if_match: IfMatch::Any,
                    now: NOW,
                    on_commit: Some(hook),
                })
                .await
                .expect("desired patch")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 40, "every hook ran once");
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "hooks ran in version order: {seen:?}"
    );
}

async fn change_feed_is_ordered_filtered_and_notified(store: &dyn Store) {
    let mut notifier = store.change_notifier();
    let before = *notifier.borrow_and_update();
    let key = device("feed");
    store.create_identity(create(&key)).await.expect("create");
    store
        .update_twin(UpdateTwin {
            key: key.clone(),
            change: TwinChange::ReportedPatch(json!({"step": 1})),
            if_match: IfMatch::Any,
            now: NOW,
            on_commit: None,
        })
        .await
        .expect("patch");
    store
        .create_identity(create(&device("feed-other")))
        .await
        .expect("create other");
    assert!(
        notifier.has_changed().expect("notifier alive"),
        "durable changes wake watchers"
    );
    let newest = *notifier.borrow_and_update();
    assert!(newest > before);

    let all = store
        .read_changes(before, 100, ChangeFilter::all())
        .await
        .expect("read all");
    assert!(
        all.windows(2)
            .all(|pair| pair[0].sequence < pair[1].sequence),
        "strictly increasing"
    );
    assert_eq!(all.last().map(|record| record.sequence), Some(newest));

    let mine = store
        .read_changes(before, 100, ChangeFilter::device(key.device_id.clone()))
        .await
        .expect("read device");
    let operations: Vec<ChangeOperation> = mine.iter().map(|record| record.operation).collect();
    assert_eq!(
        operations,
        vec![
            ChangeOperation::CreateDeviceIdentity,
            ChangeOperation::UpdateTwin
        ]
    );
    assert_eq!(mine[1].body["properties"]["reported"]["step"], json!(1));
    assert_eq!(
        mine[1].twin_version,
        Some(
            store
                .get(&key)
                .await
                .expect("get")
                .expect("exists")
                .twin
                .version()
        )
    );

    // Resuming after a sequence number yields exactly the rest: no gap, no repeat.
    let first_half = store
        .read_changes(before, 1, ChangeFilter::all())
        .await
        .expect("page 1");
    let rest = store
        .read_changes(first_half[0].sequence, 100, ChangeFilter::all())
        .await
        .expect("page 2");
    let stitched: Vec<u64> = first_half
        .iter()
        .chain(rest.iter())
        .map(|record| record.sequence)
        .collect();
    let expected: Vec<u64> = all.iter().map(|record| record.sequence).collect();
    assert_eq!(stitched, expected);
}

async fn sessions_persist_and_die_with_their_identity(store: &dyn Store) {
    let key = device("sess");
    let module_key = module("sess", "m");
    store.create_identity(create(&key)).await.expect("create");
    store
        .create_identity(create(&module_key))
        .await
        .expect("create module");
    let session = StoredSession {
        subscriptions: vec![
            StoredSubscription {
                filter: "$iothub/methods/POST/#".into(),
                qos: 1,
            },
            StoredSubscription {
                filter: "$iothub/twin/res/#".into(),
                qos: 0,
            },
        ],
    };
    assert_eq!(store.load_session(&key).await.expect("load"), None);
    store
        .save_session(&key, session.clone())
        .await
        .expect("save");
    store
        .save_session(&module_key, StoredSession::default())
        .await
        .expect("save module session");
    assert_eq!(store.load_session(&key).await.expect("load"), Some(session));
    store
        .delete_session(&module_key)
        .await
        .expect("delete session");
    assert_eq!(store.load_session(&module_key).await.expect("load"), None);

    assert_eq!(
        store
            .save_session(&device("sess-missing"), StoredSession::default())
            .await,
        Err(StoreError::NotFound(device("sess-missing")))
    );
    store
        .delete_identity(&key, IfMatch::Any)
        .await
        .expect("delete");
    assert_eq!(
        store.load_session(&key).await.expect("load"),
        None,
        "sessions are deleted with the device"
    );
    store
        .create_identity(create(&key))
        .await
        .expect("re-create");
    assert_eq!(
        store.load_session(&key).await.expect("load"),
        None,
        "a re-created device starts clean"
    );
}

async fn desired_checkpoints_only_move_forward_and_go_with_their_session(store: &dyn Store) {
    let key = device("checkpoint");
    store.create_identity(create(&key)).await.expect("create");
    let checkpoint = |version: u64, value: serde_json::Value| DesiredCheckpoint {
        version,
        desired: match value {
            serde_json::Value::Object(members) => members,
            other => panic!("not an object: {other}"),
        },
    };
    store
        .save_desired_checkpoint(&key, Some(checkpoint(3, json!({"a": 1}))))
        .await
        .expect("save without a session");
    assert_eq!(
        store.load_desired_checkpoint(&key).await.expect("load"),
        None,
        "only a persisted session keeps a checkpoint"
    );
    let session = StoredSession {
        subscriptions: vec![StoredSubscription {
            filter: "$iothub/twin/PATCH/properties/desired/#".into(),
            qos: 1,
        }],
    };
    store
        .save_session(&key, session.clone())
        .await
        .expect("save session");
    store
        .save_desired_checkpoint(&key, Some(checkpoint(3, json!({"a": 1, "b": {"c": [1]}}))))
        .await
        .expect("save");
    store
        .save_desired_checkpoint(&key, Some(checkpoint(2, json!({"a": 0}))))
        .await
        .expect("save an older one");
    assert_eq!(
        store.load_desired_checkpoint(&key).await.expect("load"),
        Some(checkpoint(3, json!({"a": 1, "b": {"c": [1]}}))),
        "an older checkpoint never replaces a newer one"
    );
    store
        .save_session(&key, session.clone())
        .await
        .expect("save session again");
    store
        .save_desired_checkpoint(&key, Some(checkpoint(5, json!({}))))
        .await
        .expect("save a newer one");
    assert_eq!(
        store.load_desired_checkpoint(&key).await.expect("load"),
        Some(checkpoint(5, json!({}))),
        "saving the subscriptions keeps the checkpoint"
    );
    assert_eq!(
        store.load_session(&key).await.expect("load"),
        Some(session.clone())
    );
    store
        .save_desired_checkpoint(&key, None)
        .await
        .expect("forget");
    assert_eq!(
        store.load_desired_checkpoint(&key).await.expect("load"),
        None
    );
    store
        .save_desired_checkpoint(&key, Some(checkpoint(1, json!({"x": true}))))
        .await
        .expect("save after forgetting");
    assert_eq!(
        store.load_desired_checkpoint(&key).await.expect("load"),
        Some(checkpoint(1, json!({"x": true})))
    );
    store.delete_session(&key).await.expect("delete session");
    store
        .save_session(&key, session)
        .await
        .expect("save session");
    assert_eq!(
        store.load_desired_checkpoint(&key).await.expect("load"),
        None,
        "a clean session starts without a checkpoint"
    );
}

async fn connection_state_and_activity_are_recorded(store: &dyn Store) {
    let key = device("conn");
    store.create_identity(create(&key)).await.expect("create");
    let mut notifier = store.change_notifier();
    notifier.borrow_and_update();
    let connected_at = datetime!(2026-05-01 11:00 UTC);
    store
        .set_connection_state(&key, ConnectionState::Connected, connected_at)
        .await
        .expect("connect");
    let record = store.get(&key).await.expect("get").expect("exists");
    assert_eq!(record.identity.connection_state, ConnectionState::Connected);
    assert_eq!(
        record.identity.connection_state_updated_time,
        Some(connected_at)
    );
    let sequence = *notifier.borrow_and_update();
    // Setting the same state again writes nothing new.
    store
        .set_connection_state(&key, ConnectionState::Connected, NOW)
        .await
        .expect("again");
    assert_eq!(*notifier.borrow(), sequence);

    let other = device("conn-other");
    store
        .create_identity(create(&other))
        .await
        .expect("create other");
    store
        .set_connection_state(&other, ConnectionState::Connected, connected_at)
        .await
        .expect("connect other");
    let marked = store
        .mark_all_disconnected(NOW)
        .await
        .expect("mark all disconnected");
    assert!(
        marked >= 2,
        "both connected identities were marked, got {marked}"
    );
    for key in [&key, &other] {
        let record = store.get(key).await.expect("get").expect("exists");
        assert_eq!(
            record.identity.connection_state,
            ConnectionState::Disconnected
        );
    }
    assert_eq!(store.mark_all_disconnected(NOW).await.expect("again"), 0);
    store
        .set_connection_state(&key, ConnectionState::Connected, connected_at)
        .await
        .expect("reconnect");

    let active_at = datetime!(2026-05-01 11:30 UTC);
    store
        .record_activity(vec![
            (key.clone(), active_at),
            (device("conn-missing"), active_at),
        ])
        .await
        .expect("activity, unknown keys skipped");
    let record = store.get(&key).await.expect("get").expect("exists");
    assert_eq!(record.identity.last_activity_time, Some(active_at));
    // Deleted while connected: recording the disconnect is a no-op, not an error.
    store
        .delete_identity(&key, IfMatch::Any)
        .await
        .expect("delete");
    store
        .set_connection_state(&key, ConnectionState::Disconnected, NOW)
        .await
        .expect("disconnect after delete");
}

async fn policies_and_meta_round_trip(store: &dyn Store) {
    for (name, rights) in BUILT_IN_POLICIES {
        store
            .put_policy(AccessPolicy {
                key_name: name.into(),
                primary_key: fresh_keys().primary,
                secondary_key: fresh_keys().secondary,
                rights,
            })
            .await
            .expect("put policy");
    }
    let policies = store.policies().await.expect("policies");
    assert_eq!(policies.len(), BUILT_IN_POLICIES.len());
    let owner = policies
        .iter()
        .find(|policy| policy.key_name == "iothubowner")
        .expect("owner policy");
    assert_eq!(owner.rights, BUILT_IN_POLICIES[0].1);

    assert_eq!(store.get_meta("https_port").await.expect("meta"), None);
    store
        .set_meta("https_port", "8443")
        .await
        .expect("set meta");
    store
        .set_meta("https_port", "443")
        .await
        .expect("overwrite meta");
    assert_eq!(
        store.get_meta("https_port").await.expect("meta").as_deref(),
        Some("443")
    );
}

async fn everything_survives_reopening(factory: &dyn StoreFactory) {
    let store = factory.open();
    let record = store
        .get(&device("twin"))
        .await
        .expect("get")
        .expect("twin device survived");
    assert_eq!(record.twin.properties_json()["desired"]["fw"], json!("2.0"));
    assert_eq!(
        store.get_meta("https_port").await.expect("meta").as_deref(),
        Some("443")
    );
    assert_eq!(
        store.policies().await.expect("policies").len(),
        BUILT_IN_POLICIES.len()
    );
    let newest = *store.change_notifier().borrow();
    assert!(newest > 0, "the change feed position is restored");
    let tail = store
        .read_changes(newest.saturating_sub(1), 10, ChangeFilter::all())
        .await
        .expect("tail");
    assert_eq!(tail.len(), 1);
    let key = device("after-reopen");
    store
        .create_identity(create(&key))
        .await
        .expect("writes work after reopening");
    let next = store
        .read_changes(newest, 10, ChangeFilter::all())
        .await
        .expect("next");
    assert_eq!(
        next[0].sequence,
        newest + 1,
        "sequence numbers continue without reuse"
    );
}
