//! Query pushdown on the SQLite store agrees with the query language's evaluator: the store's filter is a
//! superset of what the evaluator matches (exactly equal when the store says it can count exactly), paging is
//! stable, and GROUP BY counts from the index equal counting by evaluation.

use std::sync::Arc;

use fleethub_core::identity::{Authentication, FreshKeys, IdentityKey, IdentitySpec};
use fleethub_protocol::ids::IfMatch;
use fleethub_protocol::rest::{AuthenticationType, ConnectionState, DeviceStatus};
use fleethub_query::{Predicate, Source};
use fleethub_store::{
    CreateIdentity, SqliteStore, SqliteStoreOptions, Store, TwinChange, TwinQuery, UpdateTwin,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::macros::datetime;

const DEVICES: usize = 240;

fn spec() -> IdentitySpec {
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

/// A request to create `key` with the test key pair.
fn create(key: IdentityKey, now: time::OffsetDateTime) -> CreateIdentity {
    CreateIdentity {
        key,
        spec: spec(),
        generation_id: "1".into(),
        fresh_keys: FreshKeys {
            primary: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
            secondary: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        },
        now,
    }
}

/// Tags and reported values of every JSON type, so type-strict comparison is exercised.
fn population(index: usize) -> (Value, Value) {
    let site = match index % 9 {
        0 => json!("a"),
        1 => json!("b"),
        2 => json!("ab"),
        3 => json!(1),
        4 => json!("1"),
        5 => json!(true),
        6 => json!(null),
        7 => json!({"nested": "a"}),
        _ => json!([1, 2]),
    };
    let mut tags =
        json!({"site": site, "floor": (index % 5) as i64, "ratio": (index % 4) as f64 / 2.0});
    if index.is_multiple_of(7) {
        tags.as_object_mut().unwrap().remove("floor");
    }
    let status = ["standBy", "downloading", "applying", "completed"][index % 4];
    let reported = if index.is_multiple_of(6) {
        json!({"other": 1})
    } else {
        json!({"firmwareStatus": status, "level": index % 3})
    };
    (tags, reported)
}

async fn populated_store(directory: &std::path::Path) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&directory.join("q.db"), SqliteStoreOptions::default()).expect("open"),
    );
    let now = datetime!(2026-05-01 10:00 UTC);
    for index in 0..DEVICES {
        let key = IdentityKey::device(format!("dev{index:03}").parse().unwrap());
        store
            .create_identity(create(key.clone(), now))
            .await
            .unwrap();
        let (tags, reported) = population(index);
        let update = |change| UpdateTwin {
            key: key.clone(),
            change,
            if_match: IfMatch::Any,
            now,
            on_commit: None,
        };
        store
            .update_twin(update(TwinChange::ServicePatch(json!({ "tags": tags }))))
            .await
            .unwrap();
        store
            .update_twin(update(TwinChange::ReportedPatch(reported)))
            .await
            .unwrap();
        if index % 10 == 0 {
            store
                .set_connection_state(&key, ConnectionState::Connected, now)
                .await
                .unwrap();
        }
        if index % 20 == 0 {
            let module = IdentityKey::module(key.device_id.clone(), "m1".parse().unwrap());
            store.create_identity(create(module, now)).await.unwrap();
        }
    }
    store
}

async fn all_pages(store: &dyn Store, modules: bool, filter: Predicate, page: usize) -> Vec<Value> {
    let mut documents = Vec::new();
    let mut after = None;
    loop {
        let records = store
            .query_twins(TwinQuery {
                modules,
                filter: filter.clone(),
                after: after.clone(),
                limit: page,
            })
            .await
            .unwrap();
        let done = records.len() < page;
        after = records.last().map(|record| record.key.clone());
        documents.extend(records.iter().map(|record| record.twin_json()));
        if done {
            return documents;
        }
    }
}

fn ids(documents: &[Value]) -> Vec<String> {
    documents
        .iter()
        .map(|document| {
            format!(
                "{}/{}",
                document["deviceId"].as_str().unwrap(),
                document["moduleId"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Checks one condition: superset, exact count, stable paging.
async fn check(store: &dyn Store, everything: &[Value], modules: &[Value], condition: &str) {
    for (source, universe, is_modules) in [
        (Source::Devices, everything, false),
        (Source::Modules, modules, true),
    ] {
        let query = match fleethub_query::parse_condition(condition, source) {
            Ok(query) => query,
            Err(_) => return,
        };
        let expected: Vec<Value> = universe
            .iter()
            .filter(|document| query.matches(document))
            .cloned()
            .collect();
        let pushdown = query.pushdown();
        let candidates = all_pages(store, is_modules, pushdown.predicate.clone(), 7).await;
        let matched: Vec<Value> = candidates
            .iter()
            .filter(|document| query.matches(document))
            .cloned()
            .collect();
        assert_eq!(
            ids(&matched),
            ids(&expected),
            "{condition}: the store's filter lost a match"
        );
        if let Some(count) = store
            .count_twins(is_modules, pushdown.clone())
            .await
            .unwrap()
        {
            assert!(
                pushdown.exact,
                "{condition}: counted exactly from an inexact pushdown"
            );
            assert_eq!(count as usize, expected.len(), "{condition}: exact count");
            assert_eq!(
                ids(&candidates),
                ids(&expected),
                "{condition}: an exact filter returns exactly the matches"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushdown_agrees_with_the_evaluator_on_a_table_of_conditions() {
    let directory = tempfile::tempdir().unwrap();
    let store = populated_store(directory.path()).await;
    let everything = all_pages(&*store, false, Predicate::True, 1000).await;
    let modules = all_pages(&*store, true, Predicate::True, 1000).await;
    assert_eq!(everything.len(), DEVICES);
    for condition in [
        "tags.site = 'a'",
        "tags.site = 1",
        "tags.site = '1'",
        "tags.site = true",
        "tags.site = null",
        "tags.site != 'a'",
        "tags.site > 'a'",
        "tags.site IN ['a', 1, true]",
        "tags.site NIN ['a', 'b']",
        "IS_DEFINED(tags.floor)",
        "NOT IS_DEFINED(tags.floor)",
        "IS_DEFINED(tags.site.nested)",
        "tags.site.nested = 'a'",
        "STARTSWITH(tags.site, 'a')",
        "tags.floor >= 2 AND tags.floor < 4",
        "tags.floor = 2 OR properties.reported.firmwareStatus = 'completed'",
        "NOT (tags.floor = 2)",
        "tags.ratio = 0.5",
        "tags.ratio = 1",
        "properties.reported.firmwareStatus = 'downloading'",
        "properties.reported.level = 1",
        "deviceId = 'dev007'",
        "deviceId IN ['dev001', 'dev002', 'nope']",
        "STARTSWITH(deviceId, 'dev01')",
        "moduleId = 'm1'",
        "STARTSWITH(moduleId, '')",
        "tags.site != null",
        "tags.site < null",
        "connectionState = 'Connected'",
        "status = 'enabled' AND tags.site = 'b'",
        "tags.floor + 1 = 3",
        "UPPER(tags.site) = 'A'",
    ] {
        check(&*store, &everything, &modules, condition).await;
    }
    let groups = store
        .group_count(
            false,
            fleethub_query::Pushdown {
                predicate: Predicate::True,
                exact: true,
            },
            vec![
                "properties".into(),
                "reported".into(),
                "firmwareStatus".into(),
            ],
        )
        .await
        .unwrap()
        .expect("firmwareStatus is indexed by default");
    assert_eq!(groups.total as usize, everything.len());
    for (value, count) in &groups.groups {
        let expected = everything
            .iter()
            .filter(|document| &document["properties"]["reported"]["firmwareStatus"] == value)
            .count();
        assert_eq!(*count as usize, expected, "group {value}");
    }
    assert_eq!(
        groups.defined as usize,
        everything
            .iter()
            .filter(|document| document["properties"]["reported"]
                .get("firmwareStatus")
                .is_some())
            .count()
    );
}

fn leaf() -> impl Strategy<Value = String> {
    let path = prop::sample::select(vec![
        "tags.site",
        "tags.floor",
        "tags.ratio",
        "tags.site.nested",
        "tags.missing",
        "properties.reported.firmwareStatus",
        "properties.reported.level",
        "properties.reported.other",
        "deviceId",
        "moduleId",
        "status",
        "connectionState",
    ]);
    let literal = prop::sample::select(vec![
        "'a'",
        "'ab'",
        "'b'",
        "1",
        "'1'",
        "0.5",
        "2",
        "true",
        "false",
        "null",
        "'completed'",
        "'dev010'",
        "'Connected'",
    ]);
    let op = prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">="]);
    prop_oneof![
        (path.clone(), op, literal.clone())
            .prop_map(|(path, op, literal)| format!("{path} {op} {literal}")),
        (path.clone(), prop::collection::vec(literal, 0..3))
            .prop_map(|(path, list)| format!("{path} IN [{}]", list.join(", "))),
        path.clone().prop_map(|path| format!("IS_DEFINED({path})")),
        path.prop_map(|path| format!("STARTSWITH({path}, 'a')")),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone())
                .prop_map(|(left, right)| format!("({left} AND {right})")),
            (inner.clone(), inner.clone()).prop_map(|(left, right)| format!("({left} OR {right})")),
            inner.prop_map(|condition| format!("NOT ({condition})")),
        ]
    })
}

#[test]
fn pushdown_agrees_with_the_evaluator_on_random_conditions() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let (store, everything, modules) = runtime.block_on(async {
        let store = populated_store(directory.path()).await;
        let everything = all_pages(&*store, false, Predicate::True, 1000).await;
        let modules = all_pages(&*store, true, Predicate::True, 1000).await;
        (store, everything, modules)
    });
    proptest!(ProptestConfig::with_cases(256), |(condition in condition())| {
        runtime.block_on(check(&*store, &everything, &modules, &condition));
    });
}

/// Index rows die with their identity: a device created later (which may reuse the row id) does not inherit
/// the deleted one's tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_identities_leave_nothing_in_the_index() {
    let directory = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            &directory.path().join("d.db"),
            SqliteStoreOptions::default(),
        )
        .unwrap(),
    );
    let now = datetime!(2026-05-01 10:00 UTC);
    let device = |id: &str| IdentityKey::device(id.parse().unwrap());
    store
        .create_identity(create(device("old"), now))
        .await
        .unwrap();
    let key = IdentityKey::device("old".parse().unwrap());
    store
        .update_twin(UpdateTwin {
            key: key.clone(),
            change: TwinChange::ServicePatch(json!({"tags": {"doomed": true}})),
            if_match: IfMatch::Any,
            now,
            on_commit: None,
        })
        .await
        .unwrap();
    store.delete_identity(&key, IfMatch::Any).await.unwrap();
    store
        .create_identity(create(device("new"), now))
        .await
        .unwrap();
    let query = fleethub_query::parse_condition("tags.doomed = true", Source::Devices).unwrap();
    let pushdown = query.pushdown();
    assert_eq!(
        store.count_twins(false, pushdown.clone()).await.unwrap(),
        Some(0)
    );
    assert!(
        store
            .query_twins(TwinQuery {
                modules: false,
                filter: pushdown.predicate,
                after: None,
                limit: 10
            })
            .await
            .unwrap()
            .is_empty()
    );
}

/// A reported patch re-indexes only the indexed paths under its own top-level keys: the index rows of the
/// other indexed reported properties stay, and the ones it changes or deletes follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_patch_reindexes_what_it_names_and_keeps_the_rest() {
    let directory = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            &directory.path().join("r.db"),
            SqliteStoreOptions::default(),
        )
        .unwrap(),
    );
    let now = datetime!(2026-05-01 10:00 UTC);
    let key = IdentityKey::device("fw".parse().unwrap());
    store
        .create_identity(create(key.clone(), now))
        .await
        .unwrap();
    let patch = |reported: Value| {
        let store = Arc::clone(&store);
        let key = key.clone();
        async move {
            store
                .update_twin(UpdateTwin {
                    key,
                    change: TwinChange::ReportedPatch(reported),
                    if_match: IfMatch::Any,
                    now,
                    on_commit: None,
                })
                .await
                .unwrap();
        }
    };
    let count = |condition: &'static str| {
        let store = Arc::clone(&store);
        async move {
            let pushdown = fleethub_query::parse_condition(condition, Source::Devices)
                .unwrap()
                .pushdown();
            assert!(pushdown.exact, "{condition} is answered from the index");
            store.count_twins(false, pushdown).await.unwrap().unwrap()
        }
    };
    patch(json!({
        "firmwareVersion": "1.0",
        "firmwareStatus": "standBy",
        "firmware": {"current": "1.0"},
    }))
    .await;
    patch(json!({"firmwareStatus": "downloading", "progress": 5})).await;
    assert_eq!(
        count("properties.reported.firmwareStatus = 'downloading'").await,
        1
    );
    assert_eq!(
        count("properties.reported.firmwareStatus = 'standBy'").await,
        0
    );
    assert_eq!(
        count("properties.reported.firmwareVersion = '1.0'").await,
        1
    );
    assert_eq!(
        count("properties.reported.firmware.current = '1.0'").await,
        1
    );

    patch(json!({"firmware": null})).await;
    assert_eq!(count("IS_DEFINED(properties.reported.firmware)").await, 0);
    assert_eq!(
        count("properties.reported.firmware.current = '1.0'").await,
        0
    );
    assert_eq!(
        count("properties.reported.firmwareVersion = '1.0'").await,
        1
    );

    patch(json!({"firmware": {"current": "2.0"}, "firmwareVersion": "2.0"})).await;
    assert_eq!(
        count("properties.reported.firmware.current = '2.0'").await,
        1
    );
    assert_eq!(
        count("properties.reported.firmwareVersion = '1.0'").await,
        0
    );
    assert_eq!(
        count("properties.reported.firmwareStatus = 'downloading'").await,
        1
    );
}
