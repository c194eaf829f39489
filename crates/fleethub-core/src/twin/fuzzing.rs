//! The twin write oracle, shared by the fuzz target (`fuzz/`) and the corpus replay test: any JSON a
//! device (reported patch) or a service (desired patch, twin PATCH, twin PUT) sends.
//!
//! Compiled only for tests and with the `fuzzing` feature, so that the fuzzer and CI check the same
//! properties with the same code.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::rules::members_size;
use super::{TwinDocument, TwinLimits, TwinSectionKind};

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_714_557_600 + seconds).expect("a valid timestamp")
}

/// Small enough that ordinary inputs reach every limit.
const SMALL_LIMITS: TwinLimits = TwinLimits {
    tags_max_bytes: 96,
    desired_max_bytes: 128,
    reported_max_bytes: 128,
    max_string_bytes: 16,
    max_key_bytes: 8,
    max_depth: 3,
};

/// A twin that already holds tags and properties in both sections.
fn populated_twin() -> TwinDocument {
    let mut twin = TwinDocument::new(at(0));
    let limits = TwinLimits::default();
    twin.apply_service_patch(
        &json!({"tags": {"site": "a", "n": {"x": 1}}, "properties": {"desired": {"fw": "1.0", "cfg": {"a": 1, "b": [1, 2]}}}}),
        at(1),
        &limits,
    )
    .expect("a valid service patch");
    twin.apply_reported_patch(&json!({"fw": "1.0", "s": {"t": true}}), at(2), &limits)
        .expect("a valid reported patch");
    twin
}

/// Parses `data` as JSON and applies it as each kind of twin write, to a fresh and to a populated twin,
/// under Azure's limits and small ones, and panics if the twin breaks a promise:
/// - nothing panics;
/// - a refused write leaves the twin exactly as it was;
/// - an accepted write moves the versions as documented (reported: its `$version` and the twin version,
///   not the etag; desired: its `$version`, the twin version and the etag; a service write that changes
///   nothing moves nothing);
/// - after an accepted write every section is within its limits, its kept size is its real size, it holds
///   no `null`, and it is itself a write the same limits accept; the twin survives its storage form;
/// - merge patches are idempotent: the same reported patch twice leaves the same properties.
pub fn check_twin_patch(data: &[u8]) {
    let Ok(patch) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for limits in [TwinLimits::default(), SMALL_LIMITS] {
        for twin in [TwinDocument::new(at(0)), populated_twin()] {
            check_reported(&twin, &patch, &limits);
            check_desired(&twin, &patch, &limits);
            check_service_write(&twin, &patch, &limits, false);
            check_service_write(&twin, &patch, &limits, true);
        }
    }
}

fn check_reported(before: &TwinDocument, patch: &Value, limits: &TwinLimits) {
    let mut twin = before.clone();
    match twin.apply_reported_patch(patch, at(10), limits) {
        Err(_) => assert_eq!(&twin, before, "a refused reported patch changed the twin"),
        Ok(applied) => {
            assert_eq!(applied.reported_version, before.reported_version() + 1);
            assert_eq!(applied.twin_version, before.version() + 1);
            assert_eq!(twin.etag_version(), before.etag_version());
            assert_eq!(twin.desired_properties(), before.desired_properties());
            assert_eq!(twin.tags(), before.tags());
            check_invariants(&twin, limits);
            let once = twin.reported_properties().clone();
            twin.apply_reported_patch(patch, at(11), limits)
                .expect("a patch accepted once is accepted again");
            assert_eq!(
                twin.reported_properties(),
                &once,
                "a merge patch is idempotent"
            );
        }
    }
}

fn check_desired(before: &TwinDocument, patch: &Value, limits: &TwinLimits) {
    let mut twin = before.clone();
    match twin.apply_desired_patch(patch, at(10), limits) {
        Err(_) => assert_eq!(&twin, before, "a refused desired patch changed the twin"),
        Ok(applied) => {
            assert_eq!(applied.desired_version, before.desired_version() + 1);
            assert_eq!(applied.twin_version, before.version() + 1);
            assert_eq!(twin.etag_version(), before.etag_version() + 1);
            assert_eq!(twin.reported_properties(), before.reported_properties());
            assert_eq!(
                applied.patch_for_device["$version"],
                Value::from(applied.desired_version)
            );
            check_invariants(&twin, limits);
        }
    }
}

fn check_service_write(before: &TwinDocument, body: &Value, limits: &TwinLimits, replace: bool) {
    let mut twin = before.clone();
    let result = if replace {
        twin.apply_service_replace(body, at(10), limits)
    } else {
        twin.apply_service_patch(body, at(10), limits)
    };
    match result {
        Err(_) => assert_eq!(&twin, before, "a refused service write changed the twin"),
        Ok(update) => {
            assert_eq!(twin.reported_properties(), before.reported_properties());
            assert_eq!(update.twin_version, twin.version());
            let wrote = update.tags_changed || update.desired_patch_for_device.is_some();
            if wrote {
                assert_eq!(twin.version(), before.version() + 1);
                assert_eq!(twin.etag_version(), before.etag_version() + 1);
            } else {
                assert_eq!(
                    &twin, before,
                    "a service write that wrote nothing changed the twin"
                );
            }
            assert_eq!(update.tags_changed, twin.tags() != before.tags());
            if update.desired_patch_for_device.is_some() {
                assert_eq!(twin.desired_version(), before.desired_version() + 1);
            }
            check_invariants(&twin, limits);
        }
    }
}

fn check_invariants(twin: &TwinDocument, limits: &TwinLimits) {
    let sections = [
        (TwinSectionKind::Tags, twin.tags()),
        (TwinSectionKind::Desired, twin.desired_properties()),
        (TwinSectionKind::Reported, twin.reported_properties()),
    ];
    for (section, members) in sections {
        assert_eq!(
            twin.section_size(section),
            members_size(members),
            "{section}: kept size differs from its real size"
        );
        assert!(twin.section_size(section) <= limits.max_bytes(section));
        assert!(!holds_null(members), "{section} holds a null: {members:?}");
        // What a twin holds is itself acceptable as a write under the same limits.
        let relaxed = TwinLimits {
            reported_max_bytes: limits.max_bytes(section),
            ..*limits
        };
        TwinDocument::new(at(0))
            .apply_reported_patch(&Value::Object(members.clone()), at(1), &relaxed)
            .unwrap_or_else(|error| panic!("{section} holds what a write may not: {error}"));
    }
    let stored = serde_json::to_string(twin).expect("a twin serialises");
    let loaded: TwinDocument = serde_json::from_str(&stored).expect("a stored twin loads");
    assert_eq!(&loaded, twin, "the storage form loses something");
}

fn holds_null(members: &Map<String, Value>) -> bool {
    members.values().any(|value| match value {
        Value::Null => true,
        Value::Object(members) => holds_null(members),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::check_twin_patch;

    /// CI runs on stable without libFuzzer, so it replays the committed corpus instead.
    #[test]
    fn fuzz_corpus_replays_without_breaking_a_promise() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/twin_patch");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is committed") {
            let path = entry.expect("corpus entries are readable").path();
            let data = std::fs::read(&path).expect("corpus files are readable");
            // Shown only when the check panics, to name the offending file.
            eprintln!("replaying {}", path.display());
            check_twin_patch(&data);
            replayed += 1;
        }
        assert!(replayed >= 15, "only {replayed} corpus files found");
    }
}
