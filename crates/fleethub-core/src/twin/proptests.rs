//! Property tests of the algebraic twin rules: merge-patch laws against a naive RFC 7386 reference,
//! metadata mirroring, version monotonicity, size accounting, the replace diff, and storage round trips.

use proptest::prelude::*;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

const START: OffsetDateTime = datetime!(2024-05-01 10:00 UTC);

/// RFC 7386 section 2, transcribed as naively as possible.
fn reference_merge(target: Value, patch: &Value) -> Value {
    let Value::Object(patch_members) = patch else {
        return patch.clone();
    };
    let mut target_members = match target {
        Value::Object(members) => members,
        _ => Map::new(),
    };
    for (name, value) in patch_members {
        if value.is_null() {
            target_members.remove(name);
        } else {
            let old = target_members.remove(name).unwrap_or(Value::Null);
            target_members.insert(name.clone(), reference_merge(old, value));
        }
    }
    Value::Object(target_members)
}

/// Azure's size counting transcribed from the docs, independently of `rules.rs`.
fn reference_size(members: &Map<String, Value>) -> i64 {
    fn text(text: &str) -> i64 {
        text.chars()
            .filter(|c| !c.is_control())
            .map(|c| c.len_utf8() as i64)
            .sum()
    }
    fn value_size(value: &Value) -> i64 {
        match value {
            Value::Null => 0,
            Value::Bool(_) => 4,
            Value::Number(_) => 8,
            Value::String(s) => text(s),
            Value::Array(items) => items.iter().map(value_size).sum(),
            Value::Object(members) => reference_size(members),
        }
    }
    members.iter().map(|(k, v)| text(k) + value_size(v)).sum()
}

/// Every `$metadata` object has `$lastUpdated`, and exactly the property keys below it.
fn assert_metadata_mirrors(properties: &Map<String, Value>, metadata: &Value, desired: bool) {
    let metadata = metadata.as_object().expect("$metadata is an object");
    assert!(metadata.contains_key("$lastUpdated"), "{metadata:?}");
    let child_keys: Vec<&String> = metadata
        .keys()
        .filter(|key| !key.starts_with('$'))
        .collect();
    let property_keys: Vec<&String> = properties.keys().collect();
    assert_eq!(child_keys, property_keys);
    for (key, value) in properties {
        let child = &metadata[key.as_str()];
        if desired {
            assert!(child.get("$lastUpdatedVersion").is_some(), "{key}: {child}");
        } else {
            assert!(child.get("$lastUpdatedVersion").is_none(), "{key}: {child}");
        }
        match value {
            Value::Object(members) => assert_metadata_mirrors(members, child, desired),
            _ => assert!(
                child
                    .as_object()
                    .expect("leaf metadata")
                    .keys()
                    .all(|key| key.starts_with('$')),
                "leaf {key} has child metadata: {child}"
            ),
        }
    }
}

fn assert_invariants(twin: &TwinDocument) {
    for (section, properties) in [
        (TwinSectionKind::Tags, twin.tags()),
        (TwinSectionKind::Desired, twin.desired_properties()),
        (TwinSectionKind::Reported, twin.reported_properties()),
    ] {
        let size = twin.section_size(section);
        assert_eq!(size as i64, reference_size(properties), "{section} size");
    }
    let rendered = twin.properties_json();
    assert_metadata_mirrors(
        twin.desired_properties(),
        &rendered["desired"]["$metadata"],
        true,
    );
    assert_metadata_mirrors(
        twin.reported_properties(),
        &rendered["reported"]["$metadata"],
        false,
    );
}

fn key() -> impl Strategy<Value = String> {
    // Few keys, so patches collide with what is there; one multibyte key.
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("é")].prop_map(str::to_owned)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-1000_i64..1000).prop_map(Value::from),
        (-1.0e6_f64..1.0e6).prop_map(Value::from),
        "[a-zé€\n\u{85}]{0,4}".prop_map(Value::from),
    ]
}

/// Values a twin can store: no nulls; arrays of scalars or small objects.
fn stored_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), stored_value(), 0..4)
        .prop_map(|members| members.into_iter().collect())
}

/// Patch values: like stored values, plus null (delete) anywhere outside arrays.
fn patch_value() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Null), scalar()].prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(stored_value(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn patch() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), patch_value(), 0..4)
        .prop_map(|members| Value::Object(members.into_iter().collect()))
}

#[derive(Clone, Debug)]
enum Operation {
    Reported(Value),
    Desired(Value),
    ServicePatch(Value),
    ServiceReplace(Value),
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        patch().prop_map(Operation::Reported),
        patch().prop_map(Operation::Desired),
        (patch(), patch()).prop_map(|(tags, desired)| Operation::ServicePatch(
            serde_json::json!({"tags": tags, "properties": {"desired": desired}})
        )),
        (document(), document()).prop_map(|(tags, desired)| Operation::ServiceReplace(
            serde_json::json!({"tags": tags, "properties": {"desired": desired}})
        )),
    ]
}

fn apply(twin: &mut TwinDocument, operation: &Operation, now: OffsetDateTime) {
    let limits = TwinLimits::default();
    let outcome = match operation {
        Operation::Reported(patch) => twin.apply_reported_patch(patch, now, &limits).map(|_| ()),
        Operation::Desired(patch) => twin.apply_desired_patch(patch, now, &limits).map(|_| ()),
        Operation::ServicePatch(body) => twin.apply_service_patch(body, now, &limits).map(|_| ()),
        Operation::ServiceReplace(body) => {
            twin.apply_service_replace(body, now, &limits).map(|_| ())
        }
    };
    outcome.expect("generated writes are valid and small");
}

proptest! {
    #[test]
    fn reported_patch_equals_the_rfc_7386_reference(start in document(), patch in patch()) {
        let mut twin = TwinDocument::new(START);
        twin.apply_reported_patch(&Value::Object(start.clone()), START, &TwinLimits::default())
            .expect("start document is valid");
        twin.apply_reported_patch(&patch, START, &TwinLimits::default()).expect("patch is valid");
        let expected = reference_merge(Value::Object(start), &patch);
        prop_assert_eq!(&Value::Object(twin.reported_properties().clone()), &expected);
        assert_invariants(&twin);
    }

    #[test]
    fn applying_a_patch_twice_equals_applying_it_once(start in document(), patch in patch()) {
        let limits = TwinLimits::default();
        let mut twin = TwinDocument::new(START);
        twin.apply_desired_patch(&Value::Object(start), START, &limits).expect("valid");
        twin.apply_desired_patch(&patch, START, &limits).expect("valid");
        let once = twin.desired_properties().clone();
        let once_size = twin.section_size(TwinSectionKind::Desired);
        twin.apply_desired_patch(&patch, START, &limits).expect("valid");
        prop_assert_eq!(twin.desired_properties(), &once);
        prop_assert_eq!(twin.section_size(TwinSectionKind::Desired), once_size);
    }

    #[test]
    fn tags_patch_equals_the_reference(start in document(), patch in patch()) {
        let limits = TwinLimits::default();
        let mut twin = TwinDocument::new(START);
        twin.apply_service_patch(&serde_json::json!({"tags": start.clone()}), START, &limits).expect("valid");
        let update = twin.apply_service_patch(&serde_json::json!({"tags": patch.clone()}), START, &limits)
            .expect("valid");
        let expected = reference_merge(Value::Object(start.clone()), &patch);
        prop_assert_eq!(&Value::Object(twin.tags().clone()), &expected);
        prop_assert_eq!(update.tags_changed, expected != Value::Object(start));
        assert_invariants(&twin);
    }

    #[test]
    fn versions_only_go_up_and_invariants_hold(operations in prop::collection::vec(operation(), 1..12)) {
        let mut twin = TwinDocument::new(START);
        let mut now = START;
        for operation in &operations {
            now += time::Duration::milliseconds(250);
            let before = twin.clone();
            apply(&mut twin, operation, now);
            assert_invariants(&twin);
            let versions = |t: &TwinDocument| (t.version(), t.etag_version(), t.desired_version(), t.reported_version());
            let (v0, e0, d0, r0) = versions(&before);
            let (v1, e1, d1, r1) = versions(&twin);
            prop_assert!(v1 >= v0 && e1 >= e0 && d1 >= d0 && r1 >= r0);
            // The twin version moves iff something changed, by one per operation.
            let changed = twin.tags() != before.tags()
                || d1 != d0 || r1 != r0;
            prop_assert_eq!(v1, v0 + u64::from(changed));
            if matches!(operation, Operation::Reported(_)) {
                prop_assert_eq!((r1, e1), (r0 + 1, e0));
            }
            if matches!(operation, Operation::Desired(_)) {
                prop_assert_eq!((d1, e1), (d0 + 1, e0 + 1));
            }
        }
        let stored = serde_json::to_string(&twin).expect("serialises");
        let loaded: TwinDocument = serde_json::from_str(&stored).expect("loads");
        prop_assert_eq!(loaded, twin);
    }

    #[test]
    fn replace_pushes_a_diff_that_turns_the_old_desired_into_the_new(
        old in document(),
        new in document(),
    ) {
        let limits = TwinLimits::default();
        let mut twin = TwinDocument::new(START);
        twin.apply_desired_patch(&Value::Object(old.clone()), START, &limits).expect("valid");
        let body = serde_json::json!({"properties": {"desired": new.clone()}});
        let update = twin.apply_service_replace(&body, START, &limits).expect("valid");
        prop_assert_eq!(twin.desired_properties(), &new);
        match update.desired_patch_for_device {
            None => prop_assert_eq!(&old, &new),
            Some(mut patch) => {
                let version = patch.as_object_mut().and_then(|p| p.shift_remove("$version"));
                prop_assert_eq!(version, Some(Value::from(twin.desired_version())));
                prop_assert_eq!(reference_merge(Value::Object(old), &patch), Value::Object(new));
            }
        }
        assert_invariants(&twin);
    }

    #[test]
    fn catch_up_patch_brings_the_acknowledged_desired_or_nothing_to_the_current(
        start in document(),
        patches in prop::collection::vec(patch(), 0..6),
        acknowledged_after in 0usize..6,
    ) {
        let limits = TwinLimits::default();
        let mut twin = TwinDocument::new(START);
        twin.apply_desired_patch(&Value::Object(start), START, &limits).expect("valid");
        let mut acknowledged = twin.desired_properties().clone();
        for (index, patch) in patches.iter().enumerate() {
            twin.apply_desired_patch(patch, START, &limits).expect("valid");
            if index < acknowledged_after {
                acknowledged = twin.desired_properties().clone();
            }
        }
        let current = Value::Object(twin.desired_properties().clone());
        match twin.desired_catch_up_patch(&acknowledged) {
            None => prop_assert_eq!(&Value::Object(acknowledged), &current),
            Some(mut patch) => {
                let version = patch.as_object_mut().and_then(|p| p.shift_remove("$version"));
                prop_assert_eq!(version, Some(Value::from(twin.desired_version())));
                prop_assert_eq!(&reference_merge(Value::Object(acknowledged), &patch), &current);
                prop_assert_eq!(&reference_merge(Value::Object(Map::new()), &patch), &current);
            }
        }
    }

    #[test]
    fn merge_patch_restating_law(old in document(), new in document()) {
        let patch = Value::Object(merge_patch_restating(&old, &new));
        prop_assert_eq!(reference_merge(Value::Object(old), &patch), Value::Object(new.clone()));
        prop_assert_eq!(reference_merge(Value::Object(Map::new()), &patch), Value::Object(new));
    }

    #[test]
    fn merge_patch_diff_law(old in document(), new in document()) {
        let patch = Value::Object(merge_patch_diff(&old, &new));
        prop_assert_eq!(reference_merge(Value::Object(old), &patch), Value::Object(new));
    }

    #[test]
    fn refused_patches_change_nothing(
        start in document(),
        bad_key in "[a-z$. \u{0}\u{9f}]{1,3}",
        value in patch_value(),
    ) {
        let limits = TwinLimits::default();
        let mut twin = TwinDocument::new(START);
        twin.apply_reported_patch(&Value::Object(start), START, &limits).expect("valid");
        let before = twin.clone();
        let patch = serde_json::json!({"a": {"b": value, bad_key.clone(): 1}});
        match twin.apply_reported_patch(&patch, START, &limits) {
            Ok(_) => prop_assert!(bad_key.chars().all(|c| c.is_ascii_lowercase())),
            Err(_) => prop_assert_eq!(twin, before),
        }
    }

    #[test]
    fn string_size_matches_the_character_reference(text in any::<String>()) {
        let mut members = Map::new();
        members.insert(String::new(), Value::String(text.clone()));
        prop_assert_eq!(super::rules::string_size(&text) as i64, reference_size(&members));
    }
}
