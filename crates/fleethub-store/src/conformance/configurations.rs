//! Conformance checks of configurations (automatic device management) and of the per-twin bookkeeping
//! written by `assign_configurations`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fleethub_core::configuration::{
    Assignment, Configuration, ConfigurationError, ConfigurationId, ConfigurationSpec,
    DesiredContent, Winner,
};
use fleethub_core::identity::{FreshKeys, IdentityKey, IdentitySpec};
use fleethub_protocol::configurations::{ConfigurationContent, ConfigurationStatus};
use fleethub_protocol::ids::{DeviceId, ETag, IfMatch};
use fleethub_protocol::rest::{AuthenticationType, DeviceStatus};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::StoreFactory;
use crate::{
    AssignConfigurations, ChangeOperation, CreateIdentity, Store, StoreError, TwinChange,
    TwinCommitHook, TwinUpdated, UpdateTwin,
};

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

pub(super) async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    configurations_are_created_read_listed_updated_and_deleted(&*store).await;
    the_number_of_configurations_is_capped(&*store).await;
    assignments_write_content_once_and_statuses_without_change_records(&*store).await;
    a_refused_assignment_changes_nothing(&*store).await;
    drop(store);
    configurations_and_bookkeeping_survive_reopening(factory).await;
}

fn id(text: &str) -> ConfigurationId {
    ConfigurationId::new(text).expect("test ids are valid")
}

fn device(text: &str) -> IdentityKey {
    IdentityKey::device(text.parse::<DeviceId>().expect("test ids are valid"))
}

fn content(value: Value) -> ConfigurationContent {
    ConfigurationContent {
        device_content: Some(value.as_object().cloned().expect("an object")),
        ..ConfigurationContent::default()
    }
}

fn spec(content_value: Value, priority: i64) -> ConfigurationSpec {
    ConfigurationSpec {
        content: Some(content(content_value)),
        target_condition: "tags.env = 'prod'".into(),
        priority,
        labels: BTreeMap::from([("team".into(), "ops".into())]),
        metric_queries: BTreeMap::from([(
            "ok".into(),
            "SELECT deviceId FROM devices WHERE properties.reported.ok = true".into(),
        )]),
        ..ConfigurationSpec::default()
    }
}

fn configuration(name: &str, priority: i64) -> Configuration {
    Configuration::create(
        id(name),
        spec(
            json!({"properties.desired.fw": {"version": name}}),
            priority,
        ),
        NOW,
    )
    .expect("valid configuration")
}

async fn create_device(store: &dyn Store, name: &str) -> IdentityKey {
    let key = device(name);
    store
        .create_identity(CreateIdentity {
            key: key.clone(),
            spec: IdentitySpec {
                status: DeviceStatus::Enabled,
                status_reason: None,
                authentication: fleethub_core::identity::Authentication {
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
            },
            generation_id: "638500000000000000".into(),
            fresh_keys: FreshKeys {
                primary: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
                secondary: "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=".into(),
            },
            now: NOW,
        })
        .await
        .expect("identity created");
    key
}

fn winner(configuration: &Configuration) -> Winner {
    Winner {
        id: configuration.id.clone(),
        created_time: configuration.created_time,
        content: configuration.desired_content(),
    }
}

fn assignment(targeted: &[&Configuration], applied: Option<&Configuration>) -> Assignment {
    Assignment {
        targeted: targeted
            .iter()
            .map(|configuration| configuration.id.clone())
            .collect(),
        winner: applied.map(winner),
    }
}

async fn assign(
    store: &dyn Store,
    key: &IdentityKey,
    assignment: Assignment,
    on_commit: Option<TwinCommitHook>,
) -> Result<TwinUpdated, StoreError> {
    store
        .assign_configurations(AssignConfigurations {
            key: key.clone(),
            assignment,
            now: NOW,
            on_commit,
        })
        .await
}

async fn newest_sequence(store: &dyn Store) -> u64 {
    *store.change_notifier().borrow()
}

async fn configurations_are_created_read_listed_updated_and_deleted(store: &dyn Store) {
    let created = store
        .create_configuration(configuration("crud-b", 10), 100)
        .await
        .expect("created");
    assert_eq!(created.etag(), "MQ==");
    store
        .create_configuration(configuration("crud-a", 5), 100)
        .await
        .expect("created");
    assert_eq!(
        store
            .create_configuration(configuration("crud-b", 1), 100)
            .await,
        Err(StoreError::ConfigurationAlreadyExists(id("crud-b")))
    );
    assert_eq!(
        store.get_configuration(&id("crud-b")).await.expect("read"),
        Some(created.clone())
    );
    assert_eq!(
        store
            .get_configuration(&id("crud-none"))
            .await
            .expect("read"),
        None
    );
    let listed: Vec<String> = store
        .list_configurations(1000)
        .await
        .expect("listed")
        .into_iter()
        .map(|configuration| configuration.id.to_string())
        .filter(|name| name.starts_with("crud-"))
        .collect();
    assert_eq!(listed, ["crud-a", "crud-b"], "ordered by id");
    assert_eq!(store.list_configurations(1).await.expect("listed").len(), 1);

    // Updates honour If-Match and core's rules.
    let later = NOW + time::Duration::minutes(5);
    let mut changed = spec(json!({"properties.desired.fw": {"version": "crud-b"}}), 50);
    changed.target_condition = "tags.env = 'test'".into();
    assert!(matches!(
        store
            .update_configuration(
                &id("crud-b"),
                changed.clone(),
                IfMatch::Tag(ETag::new("Mg==")),
                later
            )
            .await,
        Err(StoreError::PreconditionFailed { .. })
    ));
    let updated = store
        .update_configuration(
            &id("crud-b"),
            changed,
            IfMatch::Tag(ETag::new("MQ==")),
            later,
        )
        .await
        .expect("updated");
    assert_eq!(updated.etag(), "Mg==");
    assert_eq!(updated.priority, 50);
    assert_eq!(updated.target_condition, "tags.env = 'test'");
    assert_eq!(updated.created_time, NOW);
    assert_eq!(updated.last_updated_time, later);
    assert_eq!(
        store.get_configuration(&id("crud-b")).await.expect("read"),
        Some(updated.clone())
    );
    assert_eq!(
        store
            .update_configuration(
                &id("crud-b"),
                spec(json!({"properties.desired.other": 1}), 1),
                IfMatch::Any,
                later
            )
            .await,
        Err(StoreError::Configuration(
            ConfigurationError::ImmutableContent
        ))
    );
    assert_eq!(
        store
            .update_configuration(&id("crud-none"), spec(json!({}), 1), IfMatch::Any, later)
            .await,
        Err(StoreError::ConfigurationNotFound(id("crud-none")))
    );

    // Deletion honours If-Match too.
    assert!(matches!(
        store
            .delete_configuration(&id("crud-b"), IfMatch::Tag(ETag::new("MQ==")))
            .await,
        Err(StoreError::PreconditionFailed { .. })
    ));
    store
        .delete_configuration(&id("crud-b"), IfMatch::Tag(ETag::new("Mg==")))
        .await
        .expect("deleted");
    store
        .delete_configuration(&id("crud-a"), IfMatch::Any)
        .await
        .expect("deleted");
    assert_eq!(
        store.get_configuration(&id("crud-b")).await.expect("read"),
        None
    );
    assert_eq!(
        store
            .delete_configuration(&id("crud-b"), IfMatch::Any)
            .await,
        Err(StoreError::ConfigurationNotFound(id("crud-b")))
    );
}

async fn the_number_of_configurations_is_capped(store: &dyn Store) {
    let existing = store.list_configurations(1000).await.expect("listed").len();
    let max = existing + 2;
    for name in ["cap-a", "cap-b"] {
        store
            .create_configuration(configuration(name, 1), max)
            .await
            .expect("below the cap");
    }
    assert_eq!(
        store
            .create_configuration(configuration("cap-c", 1), max)
            .await,
        Err(StoreError::TooManyConfigurations { max })
    );
    store
        .delete_configuration(&id("cap-a"), IfMatch::Any)
        .await
        .expect("deleted");
    store
        .create_configuration(configuration("cap-c", 1), max)
        .await
        .expect("room again");
    for name in ["cap-b", "cap-c"] {
        store
            .delete_configuration(&id(name), IfMatch::Any)
            .await
            .expect("deleted");
    }
}

async fn assignments_write_content_once_and_statuses_without_change_records(store: &dyn Store) {
    let key = create_device(store, "assigned-device").await;
    let low = configuration("assign-low", 1);
    let high = configuration("assign-high", 9);

    // The first assignment writes the winner's content, with a change record, and runs the hook.
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let hook_pushed = Arc::clone(&pushed);
    let hook: TwinCommitHook = Box::new(move |updated: &TwinUpdated| {
        hook_pushed
            .lock()
            .expect("hook lock")
            .push(updated.desired_patch_for_device.clone());
    });
    let before = newest_sequence(store).await;
    let updated = assign(
        store,
        &key,
        assignment(&[&low, &high], Some(&high)),
        Some(hook),
    )
    .await
    .expect("assigned");
    let patch = updated
        .desired_patch_for_device
        .clone()
        .expect("a desired patch");
    assert_eq!(patch["fw"], json!({"version": "assign-high"}));
    assert_eq!(
        pushed.lock().expect("hook lock").as_slice(),
        &[Some(patch.clone())]
    );
    let changes = store
        .read_changes(
            before,
            10,
            crate::ChangeFilter::device(key.device_id.clone()),
        )
        .await
        .expect("changes");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].operation, ChangeOperation::UpdateTwin);
    assert_eq!(changes[0].body["properties"]["desired"], patch);
    assert_eq!(changes[0].twin_version, Some(updated.record.twin.version()));

    // What readers see: the twin JSON carries the statuses.
    let record = store.get(&key).await.expect("read").expect("exists");
    assert_eq!(
        record.twin_json()["configurations"],
        json!({"assign-high": {"status": "applied"}, "assign-low": {"status": "targeted"}})
    );
    assert_eq!(
        record.twin.configurations().status(&high.id),
        Some(ConfigurationStatus::Applied)
    );

    // The same assignment again writes nothing.
    let sequence = newest_sequence(store).await;
    let again = assign(store, &key, assignment(&[&low, &high], Some(&high)), None)
        .await
        .expect("assigned");
    assert_eq!(again.desired_patch_for_device, None);
    assert_eq!(again.record, record);
    assert_eq!(newest_sequence(store).await, sequence);

    // Statuses alone are stored without a change record and without a new twin version.
    let fewer = assign(store, &key, assignment(&[&high], Some(&high)), None)
        .await
        .expect("assigned");
    assert_eq!(fewer.desired_patch_for_device, None);
    assert_eq!(fewer.record.twin.version(), record.twin.version());
    assert_eq!(newest_sequence(store).await, sequence);
    let reread = store.get(&key).await.expect("read").expect("exists");
    assert_eq!(reread.twin.configurations().status(&low.id), None);

    // A service write in between is kept: the assignment is computed against the twin inside the write.
    store
        .update_twin(UpdateTwin {
            key: key.clone(),
            change: TwinChange::ServicePatch(json!({"properties": {"desired": {"mine": 1}}})),
            if_match: IfMatch::Any,
            now: NOW,
            on_commit: None,
        })
        .await
        .expect("service write");
    let fallback = assign(store, &key, assignment(&[&low], Some(&low)), None)
        .await
        .expect("low applies");
    assert_eq!(
        fallback.desired_patch_for_device.expect("a desired patch")["fw"],
        json!({"version": "assign-low"})
    );
    let none = assign(store, &key, Assignment::default(), None)
        .await
        .expect("nothing applies");
    assert!(none.desired_patch_for_device.is_some());
    let desired = none.record.twin.desired_properties();
    assert_eq!(desired.get("mine"), Some(&json!(1)));
    assert_eq!(
        desired.get("fw"),
        None,
        "the configuration's settings are removed"
    );
    assert!(none.record.twin_json().get("configurations").is_none());

    let missing = device("assigned-nobody");
    assert_eq!(
        assign(store, &missing, assignment(&[&low], Some(&low)), None)
            .await
            .err(),
        Some(StoreError::NotFound(missing))
    );
}

async fn a_refused_assignment_changes_nothing(store: &dyn Store) {
    let key = create_device(store, "assign-refused").await;
    let before = store.get(&key).await.expect("read").expect("exists");
    let sequence = newest_sequence(store).await;
    let too_long = Winner {
        id: id("too-long"),
        created_time: NOW,
        content: DesiredContent::parse(
            json!({"properties.desired.a": "x".repeat(5000)})
                .as_object()
                .expect("an object"),
        )
        .expect("valid paths"),
    };
    let refused = assign(
        store,
        &key,
        Assignment {
            targeted: [id("too-long")].into(),
            winner: Some(too_long),
        },
        None,
    )
    .await;
    assert!(matches!(refused, Err(StoreError::Twin(_))), "{refused:?}");
    assert_eq!(
        store.get(&key).await.expect("read").expect("exists"),
        before
    );
    assert_eq!(newest_sequence(store).await, sequence);
}

async fn configurations_and_bookkeeping_survive_reopening(factory: &dyn StoreFactory) {
    let kept = configuration("reopen-kept", 3);
    let key = {
        let store = factory.open();
        store
            .create_configuration(kept.clone(), 100)
            .await
            .expect("created");
        let key = create_device(&*store, "reopen-assigned").await;
        assign(&*store, &key, assignment(&[&kept], Some(&kept)), None)
            .await
            .expect("assigned");
        key
    };
    let store = factory.open();
    assert_eq!(
        store.get_configuration(&kept.id).await.expect("read"),
        Some(kept.clone())
    );
    let record = store.get(&key).await.expect("read").expect("exists");
    let applied = record.twin.configurations().applied().expect("applied");
    assert_eq!(applied.id, kept.id);
    assert_eq!(applied.paths, vec![vec!["fw".to_owned()]]);
    assert_eq!(
        record.twin.desired_properties().get("fw"),
        Some(&json!({"version": "reopen-kept"}))
    );
}
