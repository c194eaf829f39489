//! Pushdown: the predicates typical queries produce, and the property that a predicate is a
//! superset of WHERE (and equal to it when exact), against the reference evaluator.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::ast::{CompareOp, Number};
use crate::fuzzing::predicate_holds;
use crate::pushdown::{Predicate, Pushdown, Scalar};
use crate::{Query, parse};

fn pushdown_of(condition: &str) -> Pushdown {
    let text = format!("SELECT * FROM devices WHERE {condition}");
    parse(&text)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .pushdown()
}

fn path(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

fn compare(names: &[&str], op: CompareOp, value: Scalar) -> Predicate {
    Predicate::Compare {
        path: path(names),
        op,
        value,
    }
}

fn text(value: &str) -> Scalar {
    Scalar::String(value.to_owned())
}

fn exact(predicate: Predicate) -> Pushdown {
    Pushdown {
        predicate,
        exact: true,
    }
}

#[test]
fn typical_conditions_push_down_exactly() {
    let cases = [
        (
            "tags.location.region = 'US'",
            exact(compare(
                &["tags", "location", "region"],
                CompareOp::Equal,
                text("US"),
            )),
        ),
        (
            "tags.location.region = 'US' AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60",
            exact(Predicate::And(vec![
                compare(
                    &["tags", "location", "region"],
                    CompareOp::Equal,
                    text("US"),
                ),
                compare(
                    &[
                        "properties",
                        "reported",
                        "telemetryConfig",
                        "sendFrequencyInSecs",
                    ],
                    CompareOp::GreaterOrEqual,
                    Scalar::Number(Number::Int(60)),
                ),
            ])),
        ),
        (
            "properties.reported.connectivity IN ['wired', 'wifi']",
            exact(Predicate::In {
                path: path(&["properties", "reported", "connectivity"]),
                values: vec![text("wired"), text("wifi")],
            }),
        ),
        (
            "is_defined(properties.reported.connectivity)",
            exact(Predicate::IsDefined(path(&[
                "properties",
                "reported",
                "connectivity",
            ]))),
        ),
        (
            "NOT IS_DEFINED(tags.site)",
            exact(Predicate::IsUndefined(path(&["tags", "site"]))),
        ),
        (
            "DEVICEID = 'dev1' OR 'dev2' = devices.deviceId",
            exact(Predicate::Or(vec![
                compare(&["deviceId"], CompareOp::Equal, text("dev1")),
                compare(&["deviceId"], CompareOp::Equal, text("dev2")),
            ])),
        ),
        // Constants on the left mirror the operator.
        (
            "5 < version",
            exact(compare(
                &["version"],
                CompareOp::Greater,
                Scalar::Number(Number::Int(5)),
            )),
        ),
        // NOT of a comparison is the negated comparison: a twin without `version` matches neither.
        (
            "NOT (version < 5)",
            exact(compare(
                &["version"],
                CompareOp::GreaterOrEqual,
                Scalar::Number(Number::Int(5)),
            )),
        ),
        (
            "deviceId NIN ['a', 'b']",
            exact(Predicate::And(vec![
                compare(&["deviceId"], CompareOp::NotEqual, text("a")),
                compare(&["deviceId"], CompareOp::NotEqual, text("b")),
            ])),
        ),
        (
            "NOT (tags.a = 1 OR tags.b = 2)",
            exact(Predicate::And(vec![
                compare(
                    &["tags", "a"],
                    CompareOp::NotEqual,
                    Scalar::Number(Number::Int(1)),
                ),
                compare(
                    &["tags", "b"],
                    CompareOp::NotEqual,
                    Scalar::Number(Number::Int(2)),
                ),
            ])),
        ),
        (
            "capabilities.iotEdge",
            exact(compare(
                &["capabilities", "iotEdge"],
                CompareOp::Equal,
                Scalar::Bool(true),
            )),
        ),
        (
            "NOT capabilities.iotEdge",
            exact(compare(
                &["capabilities", "iotEdge"],
                CompareOp::Equal,
                Scalar::Bool(false),
            )),
        ),
        (
            "STARTSWITH(deviceId, 'sensor-')",
            exact(Predicate::StartsWith {
                path: path(&["deviceId"]),
                prefix: "sensor-".to_owned(),
            }),
        ),
        (
            "IS_NULL(statusReason)",
            exact(compare(&["statusReason"], CompareOp::Equal, Scalar::Null)),
        ),
        (
            "properties.reported.$metadata.temp.$lastUpdated > '2024'",
            exact(compare(
                &[
                    "properties",
                    "reported",
                    "$metadata",
                    "temp",
                    "$lastUpdated",
                ],
                CompareOp::Greater,
                text("2024"),
            )),
        ),
        (
            "tags.x = -0x10",
            exact(compare(
                &["tags", "x"],
                CompareOp::Equal,
                Scalar::Number(Number::Int(-16)),
            )),
        ),
        // Constants are decided at once.
        ("1 = 1", exact(Predicate::True)),
        ("1 = 2", exact(Predicate::never())),
        ("tags.x = 1 AND 1 = 2", exact(Predicate::never())),
        ("tags.x = 1 OR 1 = 1", exact(Predicate::True)),
        // Comparisons that can never hold: objects, arrays, undefined.
        ("tags.x = [1, 2]", exact(Predicate::never())),
        ("tags.x = undefined", exact(Predicate::never())),
        ("NOT (tags.x = undefined)", exact(Predicate::never())),
        ("tags.x IN [ [1]]", exact(Predicate::never())),
        ("tags.x NIN [ [1]]", exact(Predicate::never())),
        ("tags.x NIN []", exact(Predicate::True)),
        ("tags.x + 1", exact(Predicate::never())),
        ("LOWER(deviceId)", exact(Predicate::never())),
    ];
    for (condition, expected) in cases {
        assert_eq!(pushdown_of(condition), expected, "{condition}");
    }
    assert_eq!(
        parse("SELECT * FROM devices").unwrap().pushdown(),
        exact(Predicate::True)
    );
}

#[test]
fn what_cannot_be_expressed_weakens_to_true_and_is_inexact() {
    let inexact = |predicate| Pushdown {
        predicate,
        exact: false,
    };
    let cases = [
        ("tags.x + 1 > 2", inexact(Predicate::True)),
        ("tags.x = tags.y", inexact(Predicate::True)),
        ("LOWER(deviceId) = 'dev1'", inexact(Predicate::True)),
        ("IS_STRING(tags.x)", inexact(Predicate::True)),
        ("NOT STARTSWITH(deviceId, 'a')", inexact(Predicate::True)),
        ("NOT IS_NULL(statusReason)", inexact(Predicate::True)),
        ("tags.list[0] = 'a'", inexact(Predicate::True)),
        // Compared ignoring case by the evaluator (twins hold `applied`, queries say `'Applied'`).
        (
            "configurations.[[cfg-1]].status = 'Applied'",
            inexact(Predicate::True),
        ),
        (
            "configurations.[[cfg-1]].status IN ['Applied', 'Targeted']",
            inexact(Predicate::True),
        ),
        (
            "status = 'enabled' AND configurations.[[cfg-1]].status = 'Applied'",
            inexact(compare(&["status"], CompareOp::Equal, text("enabled"))),
        ),
        (
            "status = 'enabled' AND LOWER(deviceId) = 'dev1'",
            inexact(compare(&["status"], CompareOp::Equal, text("enabled"))),
        ),
        (
            "status = 'enabled' OR LOWER(deviceId) = 'dev1'",
            inexact(Predicate::True),
        ),
    ];
    for (condition, expected) in cases {
        assert_eq!(pushdown_of(condition), expected, "{condition}");
    }
}

#[test]
fn job_queries_push_down_on_job_record_paths() {
    let pushdown = parse("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'job1' AND devices.jobs.createdTimeUtc > '2024'")
        .unwrap()
        .pushdown();
    assert_eq!(
        pushdown,
        exact(Predicate::And(vec![
            compare(&["jobId"], CompareOp::Equal, text("job1")),
            compare(&["createdDateTimeUtc"], CompareOp::Greater, text("2024")),
        ]))
    );
}

#[test]
fn the_reference_semantics_are_type_strict() {
    let twin = json!({"tags": {"x": 5, "s": "5", "n": null, "o": {"a": 1}}});
    let holds = |predicate: Predicate| predicate_holds(&predicate, &twin);
    assert!(holds(compare(
        &["tags", "x"],
        CompareOp::Equal,
        Scalar::Number(Number::Float(5.0))
    )));
    assert!(!holds(compare(&["tags", "x"], CompareOp::Equal, text("5"))));
    assert!(!holds(compare(
        &["tags", "s"],
        CompareOp::Equal,
        Scalar::Number(Number::Int(5))
    )));
    assert!(!holds(compare(
        &["tags", "missing"],
        CompareOp::NotEqual,
        text("5")
    )));
    assert!(!holds(compare(
        &["tags", "o"],
        CompareOp::NotEqual,
        text("5")
    )));
    assert!(holds(compare(
        &["tags", "n"],
        CompareOp::LessOrEqual,
        Scalar::Null
    )));
    assert!(!holds(compare(
        &["tags", "n"],
        CompareOp::Less,
        Scalar::Null
    )));
    assert!(holds(Predicate::IsDefined(path(&["tags", "n"]))));
    assert!(holds(Predicate::IsUndefined(path(&[
        "tags", "s", "deeper"
    ]))));
    assert!(!holds(Predicate::never()));
    assert!(holds(Predicate::And(Vec::new())));
}

// ---------------------------------------------------------------------------------------------
// The superset property on random documents and random conditions.

const PATHS: [&str; 7] = [
    "tags.a",
    "tags.b",
    "tags.c.d",
    "properties.reported.x",
    "deviceId",
    "status",
    "version",
];

fn document_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => any::<bool>().prop_map(|value| Some(json!(value))),
        2 => (-3i64..4).prop_map(|value| Some(json!(value))),
        1 => prop::sample::select(vec![1.0, 2.5, -0.5]).prop_map(|value| Some(json!(value))),
        2 => prop::sample::select(vec!["a", "b", "A", "ab", ""]).prop_map(|value| Some(json!(value))),
        1 => Just(Some(json!([1, "a"]))),
        1 => Just(Some(json!({"d": 1}))),
    ]
}

fn insert(document: &mut Value, path: &str, value: Value) {
    let mut current = document;
    let names: Vec<&str> = path.split('.').collect();
    for (index, name) in names.iter().enumerate() {
        let Value::Object(map) = current else {
            return;
        };
        if index + 1 == names.len() {
            map.insert((*name).to_owned(), value);
            return;
        }
        current = map
            .entry((*name).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn document() -> impl Strategy<Value = Value> {
    prop::collection::vec(document_value(), PATHS.len()).prop_map(|values| {
        let mut document = json!({});
        for (path, value) in PATHS.iter().zip(values) {
            if let Some(value) = value {
                insert(&mut document, path, value);
            }
        }
        document
    })
}

fn constant_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "1",
        "2",
        "-1",
        "2.5",
        "0",
        "'a'",
        "'b'",
        "'A'",
        "''",
        "true",
        "false",
        "null",
        "undefined",
        "[1]",
    ])
    .prop_map(str::to_owned)
}

fn condition() -> impl Strategy<Value = String> {
    let path = prop::sample::select(PATHS.to_vec()).prop_map(str::to_owned);
    let op = prop::sample::select(vec!["=", "!=", "<>", "<", "<=", ">", ">="]);
    let leaf = prop_oneof![
        (path.clone(), op.clone(), constant_text()).prop_map(|(p, o, c)| format!("{p} {o} {c}")),
        (constant_text(), op.clone(), path.clone()).prop_map(|(c, o, p)| format!("{c} {o} {p}")),
        (path.clone(), op, path.clone()).prop_map(|(p, o, q)| format!("{p} {o} {q}")),
        (
            path.clone(),
            prop::collection::vec(constant_text(), 0..3),
            any::<bool>()
        )
            .prop_map(|(p, values, negated)| {
                let values: Vec<String> = values
                    .into_iter()
                    .filter(|value| value != "undefined")
                    .collect();
                let keyword = if negated { "NIN" } else { "IN" };
                format!("{p} {keyword} [ {}]", values.join(", "))
            }),
        path.clone().prop_map(|p| format!("IS_DEFINED({p})")),
        path.clone().prop_map(|p| format!("IS_NULL({p})")),
        path.clone().prop_map(|p| format!("IS_STRING({p})")),
        path.clone().prop_map(|p| format!("STARTSWITH({p}, 'a')")),
        path.clone().prop_map(|p| format!("LOWER({p}) = 'a'")),
        path.clone().prop_map(|p| format!("{p} + 1 > 1")),
        path.clone(),
        constant_text(),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| format!("NOT ({c})")),
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|cs| format!("({})", cs.join(") AND ("))),
            prop::collection::vec(inner, 2..4).prop_map(|cs| format!("({})", cs.join(") OR ("))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pushdown_is_a_superset_of_where_and_equal_when_exact(
        condition in condition(),
        documents in prop::collection::vec(document(), 1..6),
    ) {
        let text = format!("SELECT * FROM devices WHERE {condition}");
        let query: Query = parse(&text).map_err(|error| TestCaseError::fail(format!("{text}: {error}")))?;
        let pushdown = query.pushdown();
        for document in &documents {
            let matched = query.matches(document);
            let holds = predicate_holds(&pushdown.predicate, document);
            prop_assert!(!matched || holds, "{} matches {} but {:?} does not hold", text, document, pushdown);
            if pushdown.exact {
                prop_assert_eq!(matched, holds, "{} on {} with exact {:?}", text, document, pushdown);
            }
        }
    }
}
