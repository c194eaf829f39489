//! Table and snapshot tests of the twin rules, metadata shape, versions, service bodies and storage.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2024-05-01 10:00 UTC);
const T1: OffsetDateTime = datetime!(2024-05-01 10:00:01.5 UTC);
const T2: OffsetDateTime = datetime!(2024-05-01 10:00:02.1234567 UTC);
const S0: &str = "2024-05-01T10:00:00.0000000Z";
const S1: &str = "2024-05-01T10:00:01.5000000Z";
const S2: &str = "2024-05-01T10:00:02.1234567Z";

fn limits() -> TwinLimits {
    TwinLimits::default()
}

fn report(twin: &mut TwinDocument, patch: Value, now: OffsetDateTime) -> ReportedPatchApplied {
    twin.apply_reported_patch(&patch, now, &limits())
        .expect("reported patch is valid")
}

fn desire(twin: &mut TwinDocument, patch: Value, now: OffsetDateTime) -> DesiredPatchApplied {
    twin.apply_desired_patch(&patch, now, &limits())
        .expect("desired patch is valid")
}

/// `{"l1": {"l2": ... {"l<levels>": inner}}}`: `inner` sits at depth `levels` (section members are at
/// depth 1), so an object `inner` is the `levels`-th nested object.
fn nested(levels: usize, leaf: Value) -> Value {
    (1..=levels)
        .rev()
        .fold(leaf, |inner, level| json!({ format!("l{level}"): inner }))
}

/// `properties.reported.l1.l2...l<levels>`.
fn nested_path(prefix: &str, levels: usize) -> String {
    (1..=levels).fold(prefix.to_owned(), |path, level| format!("{path}.l{level}"))
}

// ---- fresh twin, metadata shape -------------------------------------------------------------------

#[test]
fn fresh_twin_looks_like_azures() {
    let twin = TwinDocument::new(T0);
    assert_eq!(twin.version(), 2);
    assert_eq!(twin.etag(), "AAAAAAAAAAE=");
    assert_eq!((twin.desired_version(), twin.reported_version()), (1, 1));
    assert!(twin.tags().is_empty());
    assert_eq!(
        twin.properties_json(),
        json!({
            "desired": {"$metadata": {"$lastUpdated": S0}, "$version": 1},
            "reported": {"$metadata": {"$lastUpdated": S0}, "$version": 1}
        })
    );
}

#[test]
fn reported_metadata_stamps_touched_nodes_and_their_ancestors_only() {
    let mut twin = TwinDocument::new(T0);
    report(
        &mut twin,
        json!({"fw": {"version": "1.0", "state": "ok"}, "battery": 55}),
        T1,
    );
    report(&mut twin, json!({"fw": {"state": "updating"}}), T2);
    assert_eq!(
        twin.reported_json(),
        json!({
            "fw": {"version": "1.0", "state": "updating"},
            "battery": 55,
            "$metadata": {
                "$lastUpdated": S2,
                "fw": {
                    "$lastUpdated": S2,
                    "version": {"$lastUpdated": S1},
                    "state": {"$lastUpdated": S2}
                },
                "battery": {"$lastUpdated": S1}
            },
            "$version": 3
        })
    );
    // Desired is untouched by reported writes.
    assert_eq!(
        twin.desired_json(),
        json!({"$metadata": {"$lastUpdated": S0}, "$version": 1})
    );
}

#[test]
fn desired_metadata_carries_last_updated_version_and_the_device_gets_the_patch() {
    let mut twin = TwinDocument::new(T0);
    let first = desire(
        &mut twin,
        json!({"telemetryConfig": {"sendFrequency": "5m"}, "x": 1}),
        T1,
    );
    assert_eq!(first.desired_version, 2);
    assert_eq!(
        first.patch_for_device,
        json!({"telemetryConfig": {"sendFrequency": "5m"}, "x": 1, "$version": 2})
    );
    let second = desire(&mut twin, json!({"telemetryConfig": {"mode": "eco"}}), T2);
    assert_eq!(
        second.patch_for_device,
        json!({"telemetryConfig": {"mode": "eco"}, "$version": 3})
    );
    assert_eq!(
        twin.desired_json(),
        json!({
            "telemetryConfig": {"sendFrequency": "5m", "mode": "eco"},
            "x": 1,
            "$metadata": {
                "$lastUpdated": S2,
                "$lastUpdatedVersion": 3,
                "telemetryConfig": {
                    "$lastUpdated": S2,
                    "$lastUpdatedVersion": 3,
                    "sendFrequency": {"$lastUpdated": S1, "$lastUpdatedVersion": 2},
                    "mode": {"$lastUpdated": S2, "$lastUpdatedVersion": 3}
                },
                "x": {"$lastUpdated": S1, "$lastUpdatedVersion": 2}
            },
            "$version": 3
        })
    );
}

#[test]
fn deleted_keys_leave_metadata_and_restamp_their_parent() {
    let mut twin = TwinDocument::new(T0);
    report(&mut twin, json!({"a": {"b": 1, "c": 2}, "d": 3}), T1);
    report(
        &mut twin,
        json!({"a": {"b": null}, "d": null, "never": null}),
        T2,
    );
    assert_eq!(
        twin.reported_json(),
        json!({
            "a": {"c": 2},
            "$metadata": {
                "$lastUpdated": S2,
                "a": {"$lastUpdated": S2, "c": {"$lastUpdated": S1}}
            },
            "$version": 3
        })
    );
}

#[test]
fn replacing_objects_and_scalars_rebuilds_their_metadata() {
    let mut twin = TwinDocument::new(T0);
    report(
        &mut twin,
        json!({"was_object": {"x": 1}, "was_scalar": 1, "list": [1, {"k": "v"}]}),
        T1,
    );
    report(
        &mut twin,
        json!({"was_object": 7, "was_scalar": {"y": {"z": null, "w": true}}}),
        T2,
    );
    assert_eq!(
        twin.reported_json(),
        json!({
            "was_object": 7,
            "was_scalar": {"y": {"w": true}},
            "list": [1, {"k": "v"}],
            "$metadata": {
                "$lastUpdated": S2,
                "was_object": {"$lastUpdated": S2},
                "was_scalar": {
                    "$lastUpdated": S2,
                    "y": {"$lastUpdated": S2, "w": {"$lastUpdated": S2}}
                },
                // Arrays are leaves: their elements get no metadata.
                "list": {"$lastUpdated": S1}
            },
            "$version": 3
        })
    );
}

// ---- versions and etag ---------------------------------------------------------------------------

#[test]
fn versions_and_etag_follow_azure() {
    let mut twin = TwinDocument::new(T0);

    let reported = report(&mut twin, json!({"a": 1}), T1);
    assert_eq!(
        reported,
        ReportedPatchApplied {
            reported_version: 2,
            twin_version: 3
        }
    );
    assert_eq!(
        twin.etag(),
        "AAAAAAAAAAE=",
        "reported writes leave the etag alone"
    );

    // Every accepted patch is a new version, even with the same value or nothing in it.
    let same = report(&mut twin, json!({"a": 1}), T1);
    assert_eq!(
        same,
        ReportedPatchApplied {
            reported_version: 3,
            twin_version: 4
        }
    );
    let empty = report(&mut twin, json!({}), T1);
    assert_eq!(
        empty,
        ReportedPatchApplied {
            reported_version: 4,
            twin_version: 5
        }
    );

    let desired = desire(&mut twin, json!({"b": 1}), T1);
    assert_eq!((desired.desired_version, desired.twin_version), (2, 6));
    assert_eq!(twin.etag(), "AAAAAAAAAAI=");
    let desired_again = desire(&mut twin, json!({"b": 1}), T1);
    assert_eq!(
        (desired_again.desired_version, desired_again.twin_version),
        (3, 7)
    );
    assert_eq!(
        desired_again.patch_for_device,
        json!({"b": 1, "$version": 3})
    );
    assert_eq!(twin.etag(), "AAAAAAAAAAM=");

    let tags = twin
        .apply_service_patch(&json!({"tags": {"site": "a"}}), T2, &limits())
        .expect("tags patch is valid");
    assert_eq!(
        tags,
        ServiceTwinUpdate {
            twin_version: 8,
            tags_changed: true,
            desired_patch_for_device: None
        }
    );
    assert_eq!(
        (twin.etag(), twin.desired_version()),
        ("AAAAAAAAAAQ=".to_owned(), 3)
    );

    // Tags have no `$version`; rewriting them unchanged is no write at all.
    let unchanged = twin
        .apply_service_patch(&json!({"tags": {"site": "a", "gone": null}}), T2, &limits())
        .expect("tags patch is valid");
    assert_eq!(
        unchanged,
        ServiceTwinUpdate {
            twin_version: 8,
            tags_changed: false,
            desired_patch_for_device: None
        }
    );
    assert_eq!(twin.etag(), "AAAAAAAAAAQ=");
}

#[test]
fn etag_is_base64_of_the_big_endian_counter() {
    let mut twin = TwinDocument::new(T0);
    let cases = [
        (1, "AAAAAAAAAAE="),
        (2, "AAAAAAAAAAI="),
        (256, "AAAAAAAAAQA="),
        (u64::MAX, "//////////8="),
    ];
    for (counter, expected) in cases {
        twin.etag_version = counter;
        assert_eq!(twin.etag(), expected);
    }
}

// ---- content rules --------------------------------------------------------------------------------

/// Each case is a reported patch onto a fresh twin and the expected outcome (`Ok(())` = accepted).
fn assert_reported_rules(cases: Vec<(Value, Result<(), TwinPatchError>)>) {
    for (patch, expected) in cases {
        let mut twin = TwinDocument::new(T0);
        let before = twin.clone();
        let outcome = twin.apply_reported_patch(&patch, T1, &limits()).map(|_| ());
        let shown: String = patch.to_string().chars().take(120).collect();
        assert_eq!(outcome, expected, "patch {shown}");
        if expected.is_err() {
            assert_eq!(twin, before, "a refused patch changes nothing: {shown}");
        }
    }
}

fn invalid_key(path: &str, reason: InvalidKeyReason) -> Result<(), TwinPatchError> {
    Err(TwinPatchError::InvalidKey {
        path: path.to_owned(),
        reason,
    })
}

#[test]
fn patches_must_be_objects() {
    for patch in [json!(null), json!([1]), json!("x"), json!(1), json!(true)] {
        let mut twin = TwinDocument::new(T0);
        let section = TwinSectionKind::Reported;
        assert_eq!(
            twin.apply_reported_patch(&patch, T1, &limits()),
            Err(TwinPatchError::NotAnObject { section })
        );
        let section = TwinSectionKind::Desired;
        assert_eq!(
            twin.apply_desired_patch(&patch, T1, &limits()).map(|_| ()),
            Err(TwinPatchError::NotAnObject { section })
        );
    }
}

#[test]
fn key_rules() {
    let at_limit = "k".repeat(1024);
    let past_limit = "k".repeat(1025);
    let multibyte_at_limit = "é".repeat(512);
    let multibyte_past_limit = format!("{multibyte_at_limit}a");
    assert_reported_rules(vec![
        (json!({ at_limit.clone(): 1 }), Ok(())),
        (
            json!({ past_limit.clone(): 1 }),
            invalid_key(
                &format!("properties.reported.{past_limit}"),
                InvalidKeyReason::TooLong {
                    bytes: 1025,
                    max: 1024,
                },
            ),
        ),
        (json!({ multibyte_at_limit.clone(): 1 }), Ok(())),
        (
            json!({ multibyte_past_limit.clone(): 1 }),
            invalid_key(
                &format!("properties.reported.{multibyte_past_limit}"),
                InvalidKeyReason::TooLong {
                    bytes: 1025,
                    max: 1024,
                },
            ),
        ),
        (
            json!({"Case": 1, "case": 2, "ünï-code_#:@": 3, "": 4}),
            Ok(()),
        ),
        (
            json!({"$version": 3}),
            invalid_key("properties.reported.$version", InvalidKeyReason::DollarSign),
        ),
        (
            json!({"a": {"b$": 1}}),
            invalid_key("properties.reported.a.b$", InvalidKeyReason::DollarSign),
        ),
        (
            json!({"a": {"b.c": 1}}),
            invalid_key("properties.reported.a.b.c", InvalidKeyReason::Dot),
        ),
        (
            json!({"a b": 1}),
            invalid_key("properties.reported.a b", InvalidKeyReason::Space),
        ),
        (
            json!({"a\u{0}": 1}),
            invalid_key(
                "properties.reported.a\u{0}",
                InvalidKeyReason::ControlCharacter { code_point: 0 },
            ),
        ),
        (
            json!({"tab\there": 1}),
            invalid_key(
                "properties.reported.tab\there",
                InvalidKeyReason::ControlCharacter { code_point: 9 },
            ),
        ),
        (
            json!({"\u{7f}": 1}),
            invalid_key(
                "properties.reported.\u{7f}",
                InvalidKeyReason::ControlCharacter { code_point: 0x7f },
            ),
        ),
        (
            json!({"c1\u{9f}": 1}),
            invalid_key(
                "properties.reported.c1\u{9f}",
                InvalidKeyReason::ControlCharacter { code_point: 0x9f },
            ),
        ),
        // Objects inside arrays follow the key rules too; a deletion's key is checked as well.
        (
            json!({"list": [1, {"$x": 1}]}),
            invalid_key(
                "properties.reported.list[1].$x",
                InvalidKeyReason::DollarSign,
            ),
        ),
        (
            json!({"a.b": null}),
            invalid_key("properties.reported.a.b", InvalidKeyReason::Dot),
        ),
    ]);
}

#[test]
fn string_rules() {
    let string_error = |path: &str, bytes| {
        Err(TwinPatchError::StringTooLong {
            path: path.to_owned(),
            bytes,
            max: 4096,
        })
    };
    assert_reported_rules(vec![
        (json!({"s": "x".repeat(4096)}), Ok(())),
        (
            json!({"s": "x".repeat(4097)}),
            string_error("properties.reported.s", 4097),
        ),
        (json!({"s": "é".repeat(2048)}), Ok(())),
        (
            json!({"s": format!("{}a", "é".repeat(2048))}),
            string_error("properties.reported.s", 4097),
        ),
        // Control characters are free in the size count but still count against the 4 KB cap.
        (
            json!({"s": "\n".repeat(4097)}),
            string_error("properties.reported.s", 4097),
        ),
        (
            json!({"a": {"list": ["ok", "x".repeat(4097)]}}),
            string_error("properties.reported.a.list[1]", 4097),
        ),
    ]);
}

#[test]
fn integer_rules() {
    let out_of_range = |path: &str| {
        Err(TwinPatchError::IntegerOutOfRange {
            path: path.to_owned(),
        })
    };
    assert_reported_rules(vec![
        (json!({"max": 4_503_599_627_370_495_i64}), Ok(())),
        (
            json!({"max": 4_503_599_627_370_496_i64}),
            out_of_range("properties.reported.max"),
        ),
        (json!({"min": -4_503_599_627_370_496_i64}), Ok(())),
        (
            json!({"min": -4_503_599_627_370_497_i64}),
            out_of_range("properties.reported.min"),
        ),
        (
            json!({"big": u64::MAX}),
            out_of_range("properties.reported.big"),
        ),
        (
            json!({"small": i64::MIN}),
            out_of_range("properties.reported.small"),
        ),
        // Floats have no range rule, even integral ones beyond the integer range.
        (
            json!({"f": 1.5, "g": 1e300, "h": -4_503_599_627_370_497.0_f64}),
            Ok(()),
        ),
        (
            json!({"list": [1, [4_503_599_627_370_496_i64]]}),
            out_of_range("properties.reported.list[1][0]"),
        ),
    ]);
}

#[test]
fn depth_rules() {
    let too_deep = |path: String| Err(TwinPatchError::TooDeep { path, max: 10 });
    let prefix = "properties.reported";
    assert_reported_rules(vec![
        // Azure's own example (`one` .. `ten` around `"property": "value"`) is the maximum.
        (nested(10, json!({"property": "value"})), Ok(())),
        (
            nested(11, json!({"property": "value"})),
            too_deep(nested_path(prefix, 11)),
        ),
        (nested(11, json!("value")), Ok(())),
        (nested(11, json!({})), too_deep(nested_path(prefix, 11))),
        (nested(10, json!({})), Ok(())),
        // Arrays are a level like objects.
        (nested(9, json!({"arr": [1]})), Ok(())),
        (
            nested(10, json!({"arr": [1]})),
            too_deep(format!("{}.arr", nested_path(prefix, 10))),
        ),
        (
            nested(9, json!({"arr": [[1]]})),
            too_deep(format!("{}.arr[0]", nested_path(prefix, 9))),
        ),
        (
            nested(9, json!({"arr": [{"k": 1}]})),
            too_deep(format!("{}.arr[0]", nested_path(prefix, 9))),
        ),
        (nested(8, json!({"arr": [{"k": 1}]})), Ok(())),
        // A deletion deep down is no container.
        (nested(10, json!({"gone": null})), Ok(())),
    ]);
}

#[test]
fn depth_counts_from_the_section_when_merging_into_existing_objects() {
    let mut twin = TwinDocument::new(T0);
    report(&mut twin, nested(9, json!("value")), T1);
    // Merging one more level under the existing l9 reaches depth 10: allowed; another is not.
    assert!(
        twin.apply_reported_patch(&nested(9, json!({"l10": {"x": 1}})), T1, &limits())
            .is_ok()
    );
    assert_eq!(
        twin.apply_reported_patch(&nested(10, json!({"l11": {}})), T1, &limits()),
        Err(TwinPatchError::TooDeep {
            path: nested_path("properties.reported", 11),
            max: 10
        })
    );
}

#[test]
fn azures_depth_example_is_a_valid_tags_document() {
    let mut twin = TwinDocument::new(T0);
    let tags = json!({"one": {"two": {"three": {"four": {"five": {"six": {"seven": {"eight":
        {"nine": {"ten": {"property": "value"}}}}}}}}}}});
    let update = twin.apply_service_patch(&json!({ "tags": tags }), T1, &limits());
    assert!(update.is_ok(), "{update:?}");
    assert_eq!(twin.tags(), tags.as_object().expect("tags are an object"));
}

#[test]
fn null_is_refused_inside_arrays() {
    let null_in_array = |path: &str| {
        Err(TwinPatchError::NullInArray {
            path: path.to_owned(),
        })
    };
    assert_reported_rules(vec![
        (
            json!({"a": [1, null]}),
            null_in_array("properties.reported.a[1]"),
        ),
        (
            json!({"a": [{"b": null}]}),
            null_in_array("properties.reported.a[0].b"),
        ),
        (
            json!({"a": [[null]]}),
            null_in_array("properties.reported.a[0][0]"),
        ),
        (
            json!({"a": [], "b": [true, "x", 1.5, {"c": {"d": [1]}}]}),
            Ok(()),
        ),
    ]);
}

#[test]
fn error_messages_name_the_rule() {
    let cases = [
        (
            TwinPatchError::NotAnObject {
                section: TwinSectionKind::Reported,
            },
            "reported properties must be a json object",
        ),
        (
            TwinPatchError::InvalidKey {
                path: "properties.reported.$x".to_owned(),
                reason: InvalidKeyReason::DollarSign,
            },
            "invalid key at `properties.reported.$x`: `$` is reserved for the hub's own fields such as `$metadata` and `$version`",
        ),
        (
            TwinPatchError::SectionTooLarge {
                section: TwinSectionKind::Tags,
                bytes: 8193,
                max: 8192,
            },
            "tags would grow to 8193 bytes, above their limit of 8192 bytes",
        ),
        (
            TwinPatchError::TooDeep {
                path: "tags.a".to_owned(),
                max: 10,
            },
            "`tags.a` is nested deeper than the maximum twin depth of 10",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
}

// ---- size -----------------------------------------------------------------------------------------

/// `count` properties `k0`, `k1`, ... (keys of 2 bytes for count <= 10) whose string values make the
/// section exactly `total` bytes.
fn filler(count: usize, total: usize) -> Value {
    let per_property = total / count;
    let mut members = Map::new();
    for index in 0..count {
        let key = format!("k{index}");
        let extra = if index == count - 1 {
            total - per_property * count
        } else {
            0
        };
        let value = "x".repeat(per_property + extra - key.len());
        members.insert(key, Value::String(value));
    }
    Value::Object(members)
}

#[test]
fn reported_size_is_accepted_at_the_limit_and_refused_one_past_it() {
    let mut twin = TwinDocument::new(T0);
    report(&mut twin, filler(8, 32768), T1);
    assert_eq!(twin.section_size(TwinSectionKind::Reported), 32768);

    let mut past = TwinDocument::new(T0);
    assert_eq!(
        past.apply_reported_patch(&filler(9, 32769), T1, &limits()),
        Err(TwinPatchError::SectionTooLarge {
            section: TwinSectionKind::Reported,
            bytes: 32769,
            max: 32768
        })
    );
    // Growing a full section by one byte is refused too.
    assert_eq!(
        twin.apply_reported_patch(
            &json!({"k0": format!("{}x", "x".repeat(4094))}),
            T1,
            &limits()
        ),
        Err(TwinPatchError::SectionTooLarge {
            section: TwinSectionKind::Reported,
            bytes: 32769,
            max: 32768
        })
    );
}

#[test]
fn desired_and_tags_sizes_have_their_own_limits() {
    let mut twin = TwinDocument::new(T0);
    assert!(
        twin.apply_desired_patch(&filler(8, 32768), T1, &limits())
            .is_ok()
    );
    assert_eq!(
        twin.apply_desired_patch(&json!({"z": true}), T1, &limits())
            .map(|_| ()),
        Err(TwinPatchError::SectionTooLarge {
            section: TwinSectionKind::Desired,
            bytes: 32773,
            max: 32768
        })
    );

    let mut twin = TwinDocument::new(T0);
    assert!(
        twin.apply_service_patch(&json!({"tags": filler(2, 8192)}), T1, &limits())
            .is_ok()
    );
    assert_eq!(twin.section_size(TwinSectionKind::Tags), 8192);
    let mut past = TwinDocument::new(T0);
    assert_eq!(
        past.apply_service_patch(&json!({"tags": filler(3, 8193)}), T1, &limits()),
        Err(TwinPatchError::SectionTooLarge {
            section: TwinSectionKind::Tags,
            bytes: 8193,
            max: 8192
        })
    );
    assert_eq!(
        past.apply_service_replace(&json!({"tags": filler(3, 8193)}), T1, &limits()),
        Err(TwinPatchError::SectionTooLarge {
            section: TwinSectionKind::Tags,
            bytes: 8193,
            max: 8192
        })
    );
}

#[test]
fn size_counts_keys_values_and_nesting_like_azure() {
    let mut twin = TwinDocument::new(T0);
    report(
        &mut twin,
        json!({
            "s": "a\nb",          // 1 + 2 (the control character is free)
            "n": 1,               // 1 + 8
            "f": 2.5,             // 1 + 8
            "b": false,           // 1 + 4
            "o": {"é": "€"},      // 1 + (2 + 3)
            "l": [1, "xy"]        // 1 + (8 + 2)
        }),
        T1,
    );
    assert_eq!(
        twin.section_size(TwinSectionKind::Reported),
        3 + 9 + 9 + 5 + 6 + 11
    );
    report(
        &mut twin,
        json!({"o": {"é": null, "k": true}, "s": null}),
        T2,
    );
    assert_eq!(
        twin.section_size(TwinSectionKind::Reported),
        9 + 9 + 5 + (1 + 1 + 4) + 11
    );
}

#[test]
fn a_twin_over_a_lowered_limit_can_shrink_but_not_grow() {
    let mut twin = TwinDocument::new(T0);
    report(
        &mut twin,
        json!({"a": "x".repeat(59), "b": "y".repeat(39)}),
        T1,
    ); // 60 + 40
    let lowered = TwinLimits {
        reported_max_bytes: 50,
        ..TwinLimits::default()
    };

    // Same size: accepted. Smaller but still over: accepted.
    assert!(
        twin.apply_reported_patch(&json!({"b": "z".repeat(39)}), T2, &lowered)
            .is_ok()
    );
    assert!(
        twin.apply_reported_patch(&json!({"b": "z".repeat(9)}), T2, &lowered)
            .is_ok()
    );
    assert_eq!(twin.section_size(TwinSectionKind::Reported), 70);
    // Growing, even while deleting something: refused.
    assert_eq!(
        twin.apply_reported_patch(&json!({"b": null, "c": "w".repeat(20)}), T2, &lowered),
        Err(TwinPatchError::SectionTooLarge {
            section: TwinSectionKind::Reported,
            bytes: 81,
            max: 50
        })
    );
    assert!(
        twin.apply_reported_patch(&json!({"a": null}), T2, &lowered)
            .is_ok()
    );
    assert_eq!(twin.section_size(TwinSectionKind::Reported), 10);
}

// ---- service bodies -------------------------------------------------------------------------------

/// The service-side Twin JSON (PROTOCOL.md §3.4) of `twin`, as a GET returns it and SDKs send it back.
fn sdk_twin_body(twin: &TwinDocument) -> Value {
    json!({
        "deviceId": "dev1",
        "etag": twin.etag(),
        "deviceEtag": "NzA5NDc0MjQ4",
        "status": "enabled",
        "statusReason": null,
        "statusUpdateTime": "0001-01-01T00:00:00Z",
        "connectionState": "Disconnected",
        "lastActivityTime": "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": 0,
        "authenticationType": "sas",
        "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        "modelId": "",
        "version": twin.version(),
        "tags": twin.tags(),
        "properties": twin.properties_json(),
        "capabilities": {"iotEdge": false}
    })
}

fn twin_with_content() -> TwinDocument {
    let mut twin = TwinDocument::new(T0);
    twin.apply_service_patch(
        &json!({"tags": {"site": "a", "floor": 1}, "properties": {"desired": {"foo": 1, "cfg": {"x": 1, "y": 2}}}}),
        T0,
        &limits(),
    )
    .expect("setup body is valid");
    report(&mut twin, json!({"foo": 1}), T0);
    twin
}

#[test]
fn service_patch_accepts_a_full_sdk_twin_body() {
    let mut twin = twin_with_content();
    let mut body = sdk_twin_body(&twin);
    body["tags"]["site"] = json!("b");
    body["properties"]["desired"]["foo"] = json!(2);
    body["properties"]["reported"]["foo"] = json!("ignored");

    let update = twin
        .apply_service_patch(&body, T1, &limits())
        .expect("an SDK body is accepted");
    assert!(update.tags_changed);
    assert_eq!(
        update.desired_patch_for_device,
        Some(json!({"foo": 2, "cfg": {"x": 1, "y": 2}, "$version": 3}))
    );
    assert_eq!(update.twin_version, 5);
    assert_eq!(
        twin.tags(),
        json!({"site": "b", "floor": 1})
            .as_object()
            .expect("object")
    );
    assert_eq!(
        twin.desired_properties(),
        json!({"foo": 2, "cfg": {"x": 1, "y": 2}})
            .as_object()
            .expect("object")
    );
    assert_eq!(
        twin.reported_properties(),
        json!({"foo": 1}).as_object().expect("object")
    );
}

#[test]
fn service_patch_in_the_captured_sdk_shape() {
    let mut twin = twin_with_content();
    // `update_twin("dev1", Twin(tags=..., properties=TwinProperties(desired=...)), etag)` (PROTOCOL.md §3.3).
    let body = json!({"tags": {"site": "b"}, "properties": {"desired": {"foo": 2, "bar": null}}});
    let update = twin
        .apply_service_patch(&body, T1, &limits())
        .expect("body is valid");
    assert_eq!(
        update,
        ServiceTwinUpdate {
            twin_version: 5,
            tags_changed: true,
            desired_patch_for_device: Some(json!({"foo": 2, "bar": null, "$version": 3})),
        }
    );
}

#[test]
fn echoing_an_empty_desired_section_writes_no_desired() {
    let mut twin = TwinDocument::new(T0);
    let mut body = sdk_twin_body(&twin);
    body["tags"] = json!({"site": "a"});
    let update = twin
        .apply_service_patch(&body, T1, &limits())
        .expect("body is valid");
    assert_eq!(
        update,
        ServiceTwinUpdate {
            twin_version: 3,
            tags_changed: true,
            desired_patch_for_device: None
        }
    );
    assert_eq!(twin.desired_version(), 1);
}

#[test]
fn get_modify_replace_round_trip_pushes_the_diff() {
    let mut twin = twin_with_content();
    let desired_before = twin.desired_json();
    let mut body = sdk_twin_body(&twin);
    body["tags"] = json!({"site": "c"});
    body["properties"]["desired"]["cfg"] = json!({"x": 1, "z": 3});
    body["properties"]["desired"]["new"] = json!([1, 2]);
    body["properties"]["desired"]
        .as_object_mut()
        .expect("object")
        .shift_remove("foo");

    let update = twin
        .apply_service_replace(&body, T2, &limits())
        .expect("round trip body");
    assert_eq!(
        update,
        ServiceTwinUpdate {
            twin_version: 5,
            tags_changed: true,
            desired_patch_for_device: Some(
                json!({"foo": null, "cfg": {"y": null, "z": 3}, "new": [1, 2], "$version": 3})
            ),
        }
    );
    assert_eq!(
        twin.tags(),
        json!({"site": "c"}).as_object().expect("object")
    );
    assert_eq!(
        twin.desired_json(),
        json!({
            "cfg": {"x": 1, "z": 3},
            "new": [1, 2],
            "$metadata": {
                "$lastUpdated": S2,
                "$lastUpdatedVersion": 3,
                "cfg": {
                    "$lastUpdated": S2,
                    "$lastUpdatedVersion": 3,
                    "x": desired_before["$metadata"]["cfg"]["x"],
                    "z": {"$lastUpdated": S2, "$lastUpdatedVersion": 3}
                },
                "new": {"$lastUpdated": S2, "$lastUpdatedVersion": 3}
            },
            "$version": 3
        })
    );

    // Sending the twin back unchanged is no write.
    let etag = twin.etag();
    let again = twin
        .apply_service_replace(&sdk_twin_body(&twin), T2, &limits())
        .expect("round trip body");
    assert_eq!(
        again,
        ServiceTwinUpdate {
            twin_version: 5,
            tags_changed: false,
            desired_patch_for_device: None
        }
    );
    assert_eq!(twin.etag(), etag);
}

#[test]
fn replace_in_the_captured_sdk_shape_and_with_missing_sections() {
    let mut twin = twin_with_content();
    // `replace_twin("dev1", twin)` (PROTOCOL.md §3.3).
    let body = json!({"tags": {"x": 1}, "properties": {"desired": {"foo": 3}}});
    let update = twin
        .apply_service_replace(&body, T1, &limits())
        .expect("body is valid");
    assert_eq!(
        update.desired_patch_for_device,
        Some(json!({"cfg": null, "foo": 3, "$version": 3}))
    );
    assert_eq!(twin.tags(), json!({"x": 1}).as_object().expect("object"));

    // A replacement without a section empties it; null members are absent members.
    let update = twin
        .apply_service_replace(&json!({"tags": {"keep": 1, "drop": null}}), T2, &limits())
        .expect("body is valid");
    assert_eq!(
        update.desired_patch_for_device,
        Some(json!({"foo": null, "$version": 4}))
    );
    assert_eq!(twin.tags(), json!({"keep": 1}).as_object().expect("object"));
    assert!(twin.desired_properties().is_empty());
}

#[test]
fn malformed_service_bodies_are_refused_without_writing() {
    let cases = [
        (json!([]), TwinPatchError::BodyNotAnObject),
        (
            json!({"tags": 5}),
            TwinPatchError::NotAnObject {
                section: TwinSectionKind::Tags,
            },
        ),
        (
            json!({"properties": []}),
            TwinPatchError::FieldNotAnObject {
                field: "properties",
            },
        ),
        (
            json!({"properties": {"desired": "x"}}),
            TwinPatchError::NotAnObject {
                section: TwinSectionKind::Desired,
            },
        ),
        (
            json!({"tags": {"$x": 1}}),
            TwinPatchError::InvalidKey {
                path: "tags.$x".to_owned(),
                reason: InvalidKeyReason::DollarSign,
            },
        ),
        (
            json!({"properties": {"desired": {"$metadata": {}, "$lastUpdated": "x"}}}),
            TwinPatchError::InvalidKey {
                path: "properties.desired.$lastUpdated".to_owned(),
                reason: InvalidKeyReason::DollarSign,
            },
        ),
        // Valid tags do not get written when desired is refused.
        (
            json!({"tags": {"ok": 1}, "properties": {"desired": {"a": [null]}}}),
            TwinPatchError::NullInArray {
                path: "properties.desired.a[0]".to_owned(),
            },
        ),
    ];
    for (body, expected) in cases {
        for replace in [false, true] {
            let mut twin = twin_with_content();
            let before = twin.clone();
            let outcome = if replace {
                twin.apply_service_replace(&body, T1, &limits())
            } else {
                twin.apply_service_patch(&body, T1, &limits())
            };
            assert_eq!(
                outcome,
                Err(expected.clone()),
                "{body} (replace: {replace})"
            );
            assert_eq!(twin, before);
        }
    }
}

#[test]
fn desired_patch_refuses_read_only_fields_outside_service_bodies() {
    let mut twin = TwinDocument::new(T0);
    assert_eq!(
        twin.apply_desired_patch(&json!({"a": 1, "$version": 4}), T1, &limits())
            .map(|_| ()),
        Err(TwinPatchError::InvalidKey {
            path: "properties.desired.$version".to_owned(),
            reason: InvalidKeyReason::DollarSign
        })
    );
}

#[test]
fn catch_up_patch_restates_the_desired_with_nulls_for_what_was_deleted() {
    let mut twin = TwinDocument::new(T0);
    desire(&mut twin, json!({"a": 1, "b": {"c": 1, "d": 2}}), T1);
    let seen = twin.desired_properties().clone();
    assert_eq!(twin.desired_catch_up_patch(&seen), None);
    desire(&mut twin, json!({"a": null, "b": {"d": 3}, "e": true}), T2);
    desire(&mut twin, json!({"e": false}), T2);
    assert_eq!(
        twin.desired_catch_up_patch(&seen),
        Some(json!({"a": null, "b": {"c": 1, "d": 3}, "e": false, "$version": 4}))
    );
    // Same content at a later version: nothing to catch up.
    desire(&mut twin, json!({"e": false}), T2);
    let now_seen = twin.desired_properties().clone();
    desire(&mut twin, json!({"e": false}), T2);
    assert_eq!(twin.desired_version(), 6);
    assert_eq!(twin.desired_catch_up_patch(&now_seen), None);
}

// ---- storage --------------------------------------------------------------------------------------

#[test]
fn storage_form_is_compact_and_round_trips() {
    let mut twin = TwinDocument::new(T0);
    twin.apply_service_patch(
        &json!({"tags": {"site": "a"}, "properties": {"desired": {"fw": "1.2"}}}),
        T1,
        &limits(),
    )
    .expect("body is valid");
    report(&mut twin, json!({"ok": true, "o": {"n": 1}}), T2);

    let stored = serde_json::to_value(&twin).expect("a twin serialises");
    let t0 = crate::timestamp::TwinTicks::from_datetime(T0).raw();
    let t1 = crate::timestamp::TwinTicks::from_datetime(T1).raw();
    let t2 = crate::timestamp::TwinTicks::from_datetime(T2).raw();
    assert_eq!(t0, 17_145_576_000_000_000);
    assert_eq!(
        stored,
        json!({
            "schema": 1,
            "version": 4,
            "etagVersion": 2,
            "tags": {"site": "a"},
            "desired": {
                "version": 2,
                "properties": {"fw": "1.2"},
                "metadata": {"t": t1, "v": 2, "c": {"fw": {"t": t1, "v": 2}}}
            },
            "reported": {
                "version": 2,
                "properties": {"ok": true, "o": {"n": 1}},
                "metadata": {"t": t2, "c": {"ok": {"t": t2}, "o": {"t": t2, "c": {"n": {"t": t2}}}}}
            }
        })
    );
    let loaded: TwinDocument = serde_json::from_value(stored).expect("the storage form loads");
    assert_eq!(loaded, twin);
    assert_eq!(
        loaded.section_size(TwinSectionKind::Reported),
        2 + 4 + 1 + 1 + 8
    );

    let text = serde_json::to_string(&twin).expect("a twin serialises");
    let reloaded: TwinDocument = serde_json::from_str(&text).expect("the storage text loads");
    assert_eq!(reloaded, twin);
}

#[test]
fn storage_tolerates_unknown_fields_and_repairs_metadata_but_refuses_newer_schemas() {
    let t = 17_145_576_000_000_000_i64;
    let stored = json!({
        "schema": 1,
        "version": 9,
        "etagVersion": 3,
        "someFutureField": {"x": 1},
        "desired": {"version": 4, "properties": {"a": {"b": 1}}, "metadata": {"t": t, "v": 4}},
        "reported": {
            "version": 2,
            "properties": {"x": 1},
            "metadata": {"t": t, "c": {"x": {"t": t, "c": {"stale": {"t": t}}}, "gone": {"t": t}}}
        }
    });
    let twin: TwinDocument = serde_json::from_value(stored).expect("tolerant load");
    assert!(twin.tags().is_empty());
    assert_eq!(twin.etag(), "AAAAAAAAAAM=");
    assert_eq!(
        twin.properties_json(),
        json!({
            "desired": {
                "a": {"b": 1},
                "$metadata": {
                    "$lastUpdated": S0, "$lastUpdatedVersion": 4,
                    "a": {"$lastUpdated": S0, "$lastUpdatedVersion": 4,
                          "b": {"$lastUpdated": S0, "$lastUpdatedVersion": 4}}
                },
                "$version": 4
            },
            "reported": {"x": 1, "$metadata": {"$lastUpdated": S0, "x": {"$lastUpdated": S0}}, "$version": 2}
        })
    );

    let newer = json!({"schema": 2, "version": 1, "etagVersion": 1,
        "desired": {"version": 1, "metadata": {"t": t}}, "reported": {"version": 1, "metadata": {"t": t}}});
    let error = serde_json::from_value::<TwinDocument>(newer).expect_err("schema 2 is unknown");
    assert!(
        error.to_string().contains("twin storage schema 2 is newer"),
        "{error}"
    );
}

#[test]
fn default_limits_are_azures() {
    assert_eq!(
        TwinLimits::default(),
        TwinLimits {
            tags_max_bytes: 8192,
            desired_max_bytes: 32768,
            reported_max_bytes: 32768,
            max_string_bytes: 4096,
            max_key_bytes: 1024,
            max_depth: 10,
        }
    );
}
