//! The parser's oracles, shared by the fuzz targets (`fuzz/`), the corpus replay tests and the
//! property tests ([`check_query`], [`check_route_condition`]), and the reference implementation
//! of [`Predicate`] that SQL translations are checked against.
//!
//! Compiled only for tests and with the `fuzzing` feature, so that the fuzzer and CI check the
//! same properties with the same code.

use std::cmp::Ordering;

use serde_json::{Value, json};

use crate::ast::{Number, Query, Source};
use crate::pushdown::{Predicate, Scalar};
use crate::routing::{RouteCondition, RouteOutcome, RoutedMessage};

/// Parses `text` as a query and as a condition over each collection, and panics if the crate
/// breaks one of its promises:
/// - nothing panics (parsing, evaluation, projection, aggregation, pushdown, printing);
/// - an error points inside the text;
/// - a parsed query prints as text that parses back to an equal query;
/// - on the sample documents, the pushdown predicate holds whenever the query matches, and
///   agrees with it exactly when it says it is exact;
/// - TOP bounds the answer; aggregates without GROUP BY answer one row.
pub fn check_query(text: &str) {
    check_result(crate::parse(text), text);
    for source in [Source::Devices, Source::Modules, Source::Jobs] {
        check_result(crate::parse_condition(text, source), text);
    }
}

fn check_result(result: Result<Query, crate::QueryError>, text: &str) {
    match result {
        Err(error) => check_error(&error, text),
        Ok(query) => check_parsed_query(&query),
    }
}

/// A parse error says something and points inside the text.
fn check_error(error: &crate::QueryError, text: &str) {
    let message = error.to_string();
    assert!(!message.is_empty());
    if let Some(position) = error.position() {
        assert!(
            position <= text.chars().count(),
            "error position {position} beyond the text: {message}"
        );
    }
}

/// The promises of a successfully parsed query (see [`check_query`]).
pub fn check_parsed_query(query: &Query) {
    let printed = query.to_string();
    // Printing may add parentheses beyond the length limit; the round trip ignores the limit.
    let reparsed = crate::parser::parse_query(&printed);
    assert_eq!(
        reparsed.as_ref(),
        Ok(query),
        "the query printed as {printed:?} does not parse back to itself"
    );
    let documents = sample_documents();
    let pushdown = query.pushdown();
    for document in &documents {
        let matched = query.matches(document);
        let holds = predicate_holds(&pushdown.predicate, document);
        assert!(
            !matched || holds,
            "{printed}: matches a document its pushdown {pushdown:?} rejects: {document}"
        );
        if pushdown.exact {
            assert_eq!(
                matched, holds,
                "{printed}: exact pushdown {pushdown:?} disagrees on {document}"
            );
        }
        let _ = query.project(document);
    }
    let mut aggregator = query.aggregator();
    for document in documents.iter().chain(&documents) {
        if query.matches(document) {
            aggregator.push(document);
        }
    }
    let rows = aggregator.finish();
    if let Some(top) = query.top {
        assert!(rows.len() as u64 <= top, "{printed}: more rows than TOP");
    }
    if query.is_aggregate() && query.group_by.is_empty() {
        let expected = query.top.map_or(1, |top| top.min(1) as usize);
        assert_eq!(rows.len(), expected, "{printed}: aggregates answer one row");
    }
    let _ = (
        query.result_item_type(),
        query.needs_all_rows(),
        query.column_names(),
    );
}

/// Parses `text` as a route condition and panics if the crate breaks one of its promises:
/// - nothing panics (parsing, evaluation, printing);
/// - an error points inside the text;
/// - a parsed condition prints as text that parses back to an equal condition;
/// - on the sample messages, [`RouteCondition::matches`] agrees with [`RouteCondition::evaluate`],
///   a condition that does not use `$twin` evaluates the same without the twin, and one that does
///   not use `$body` the same with another body.
pub fn check_route_condition(text: &str) {
    match RouteCondition::parse(text) {
        Err(error) => check_error(&error, text),
        Ok(condition) => check_parsed_route_condition(&condition),
    }
}

/// The promises of a successfully parsed route condition (see [`check_route_condition`]).
pub fn check_parsed_route_condition(condition: &RouteCondition) {
    let printed = condition.to_string();
    // Printing may add parentheses beyond the length limit; the round trip ignores the limit.
    let reparsed = crate::parser::parse_route_condition(&printed);
    assert_eq!(
        reparsed.as_ref(),
        Ok(condition.expr()),
        "the condition printed as {printed:?} does not parse back to itself"
    );
    let twin = sample_twin();
    for sample in sample_messages() {
        let message = sample.message().with_twin(&twin);
        let outcome = condition.evaluate(&message);
        assert_eq!(
            condition.matches(&message),
            outcome == RouteOutcome::True,
            "{printed}: matches disagrees with evaluate"
        );
        if !condition.uses_twin() {
            assert_eq!(
                condition.evaluate(&sample.message()),
                outcome,
                "{printed}: depends on the twin without naming $twin"
            );
        }
        if !condition.uses_body() {
            let other_body = SampleMessage {
                body: b"[1, 2]".to_vec(),
                ..sample.clone()
            };
            assert_eq!(
                condition.evaluate(&other_body.message().with_twin(&twin)),
                outcome,
                "{printed}: depends on the body without naming $body"
            );
        }
    }
}

/// A message's parts, owned, for [`RoutedMessage`] to borrow.
#[derive(Debug, Clone)]
pub struct SampleMessage {
    pub system_properties: Vec<(String, String)>,
    pub application_properties: Vec<(String, Option<String>)>,
    pub body: Vec<u8>,
}

impl SampleMessage {
    pub fn message(&self) -> RoutedMessage<'_> {
        RoutedMessage::new(
            &self.system_properties,
            &self.application_properties,
            &self.body,
        )
    }
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// Messages in the shapes the hub routes: telemetry with a JSON body (Azure's example), with a
/// binary body, with a UTF-16 body, and a twin change event.
pub fn sample_messages() -> Vec<SampleMessage> {
    let telemetry_system = pairs(&[
        ("message-id", "m1"),
        ("content-type", "application/json"),
        ("content-encoding", "UTF-8"),
        ("iothub-connection-device-id", "dev1"),
        ("iothub-connection-auth-generation-id", "638000000000000000"),
        ("iothub-message-source", "Telemetry"),
        ("iothub-enqueuedtime", "2024-05-01T10:00:00.0000000Z"),
    ]);
    let weather = json!({
        "Weather": {
            "Temperature": 50,
            "Time": "2017-03-09T00:00:00.000Z",
            "PrevTemperatures": [20, 30, 40],
            "IsEnabled": true,
            "Location": {"Street": "One Microsoft Way", "City": "Redmond", "State": "WA"},
            "HistoricalData": [{"Month": "Feb", "Temperature": 40}, {"Month": "Jan", "Temperature": 30}]
        }
    });
    let utf16: Vec<u8> =
        r#"{"a": 1, "s": "é"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    vec![
        SampleMessage {
            system_properties: telemetry_system.clone(),
            application_properties: vec![
                ("processingPath".to_owned(), Some("hot".to_owned())),
                ("severity".to_owned(), Some("3".to_owned())),
                ("flag".to_owned(), None),
                ("$custom".to_owned(), Some("x".to_owned())),
            ],
            body: weather.to_string().into_bytes(),
        },
        SampleMessage {
            system_properties: pairs(&[
                ("content-type", "application/octet-stream"),
                ("iothub-connection-device-id", "dev2"),
                ("iothub-connection-module-id", "mod1"),
            ]),
            application_properties: vec![("Severity".to_owned(), Some("5".to_owned()))],
            body: vec![0xFF, 0x00, 0x7B],
        },
        SampleMessage {
            system_properties: pairs(&[
                ("content-type", "application/json"),
                ("content-encoding", "utf-16"),
            ]),
            application_properties: Vec::new(),
            body: utf16,
        },
        SampleMessage {
            system_properties: pairs(&[
                ("content-encoding", "utf-8"),
                ("content-type", "application/json"),
                ("correlation-id", "2a"),
                ("user-id", "hub1"),
                ("iothub-connection-device-id", "dev1"),
                ("iothub-message-source", "twinChangeEvents"),
            ]),
            application_properties: vec![
                ("hubName".to_owned(), Some("hub1".to_owned())),
                ("deviceId".to_owned(), Some("dev1".to_owned())),
                (
                    "operationTimestamp".to_owned(),
                    Some("2024-05-01T10:00:00.0000000Z".to_owned()),
                ),
                (
                    "iothub-message-schema".to_owned(),
                    Some("twinChangeNotification".to_owned()),
                ),
                ("opType".to_owned(), Some("updateTwin".to_owned())),
            ],
            body: json!({
                "version": 4,
                "properties": {"desired": {"telemetryConfig": {"sendFrequency": 15}, "$version": 3}}
            })
            .to_string()
            .into_bytes(),
        },
    ]
}

/// A device twin in the shape of Azure's routing example.
pub fn sample_twin() -> Value {
    json!({
        "deviceId": "dev1",
        "version": 3,
        "tags": {"deploymentLocation": {"building": "43", "floor": "1"}, "weight": 10},
        "properties": {
            "desired": {"telemetryConfig": {"sendFrequency": "5m"}, "$version": 1},
            "reported": {
                "telemetryConfig": {"sendFrequency": "5m", "status": "success"},
                "batteryLevel": 55,
                "$version": 4
            }
        }
    })
}

/// The reference semantics of [`Predicate`] (module documentation of [`crate::pushdown`]),
/// written independently of the evaluator.
pub fn predicate_holds(predicate: &Predicate, document: &Value) -> bool {
    match predicate {
        Predicate::True => true,
        Predicate::Compare { path, op, value } => find(document, path)
            .and_then(|stored| compare_scalar(stored, value))
            .is_some_and(|ordering| op.holds(ordering)),
        Predicate::In { path, values } => values.iter().any(|value| {
            find(document, path)
                .and_then(|stored| compare_scalar(stored, value))
                .is_some_and(Ordering::is_eq)
        }),
        Predicate::IsDefined(path) => find(document, path).is_some(),
        Predicate::IsUndefined(path) => find(document, path).is_none(),
        Predicate::StartsWith { path, prefix } => find(document, path)
            .and_then(Value::as_str)
            .is_some_and(|text| text.starts_with(prefix.as_str())),
        Predicate::And(list) => list.iter().all(|item| predicate_holds(item, document)),
        Predicate::Or(list) => list.iter().any(|item| predicate_holds(item, document)),
    }
}

fn find<'a>(document: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(document, |value, key| value.as_object()?.get(key))
}

fn compare_scalar(stored: &Value, value: &Scalar) -> Option<Ordering> {
    match (stored, value) {
        (Value::Null, Scalar::Null) => Some(Ordering::Equal),
        (Value::Bool(stored), Scalar::Bool(value)) => Some(stored.cmp(value)),
        (Value::Number(stored), Scalar::Number(value)) => {
            let stored = match stored.as_i64() {
                Some(stored) => Number::Int(stored),
                None => Number::Float(stored.as_f64()?),
            };
            Some(crate::eval::compare_numbers(stored, *value))
        }
        (Value::String(stored), Scalar::String(value)) => Some(stored.as_str().cmp(value)),
        _ => None,
    }
}

/// Documents in the shapes the store hands the evaluator: a device twin (PROTOCOL.md §3.4), a
/// module twin with configurations, a device-job record, and a twin with odd values.
pub fn sample_documents() -> Vec<Value> {
    vec![
        json!({
            "deviceId": "dev1",
            "etag": "AAAAAAAAAAE=",
            "deviceEtag": "NzA5NDc0MjQ4",
            "status": "enabled",
            "statusReason": null,
            "statusUpdateTime": "0001-01-01T00:00:00Z",
            "connectionState": "Disconnected",
            "lastActivityTime": "2024-05-01T10:00:00.0000000Z",
            "cloudToDeviceMessageCount": 0,
            "authenticationType": "sas",
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
            "modelId": "",
            "version": 3,
            "tags": {"site": "a", "location": {"region": "US", "plant": "Redmond43"}, "group": 7},
            "properties": {
                "desired": {
                    "foo": 1,
                    "$metadata": {
                        "$lastUpdated": "2024-05-01T10:00:00.0000000Z",
                        "$lastUpdatedVersion": 2,
                        "foo": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z", "$lastUpdatedVersion": 2}
                    },
                    "$version": 2
                },
                "reported": {
                    "temp": 21.5,
                    "connectivity": {"type": "cellular"},
                    "telemetryConfig": {"sendFrequencyInSecs": 300, "status": "Success"},
                    "$metadata": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z", "temp": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z"}},
                    "$version": 1
                }
            },
            "capabilities": {"iotEdge": false}
        }),
        json!({
            "deviceId": "dev2",
            "moduleId": "$edgeAgent",
            "etag": "AAAAAAAAAAI=",
            "status": "enabled",
            "connectionState": "Connected",
            "version": 5,
            "tags": {"site": "b", "weight": 10},
            "properties": {
                "desired": {"$version": 7, "$metadata": {"$lastUpdated": "2024-05-02T10:00:00.0000000Z"}},
                "reported": {"status": "scanning", "temp": 19, "lastDesiredVersion": 7, "$version": 3}
            },
            "configurations": {"cfg-1": {"status": "Applied"}},
            "capabilities": {"iotEdge": true}
        }),
        json!({
            "deviceId": "dev1",
            "jobId": "job1",
            "jobType": "scheduleDeviceMethod",
            "status": "completed",
            "startTimeUtc": "2024-05-01T10:00:00Z",
            "endTimeUtc": "2024-05-01T10:01:00Z",
            "createdDateTimeUtc": "2024-05-01T09:59:00Z",
            "lastUpdatedDateTimeUtc": "2024-05-01T10:01:00Z",
            "outcome": {"deviceMethodResponse": {"status": 200, "payload": {"result": "ok"}}},
            "error": {"code": "", "description": ""}
        }),
        json!({
            "deviceId": "5",
            "status": 5,
            "version": 1.0,
            "tags": {"site": ["a", "b"], "weight": "10", "nested": {"a.b": true}, "n": null, "big": 9007199254740993u64, "neg": -0.5},
            "properties": {"desired": {}, "reported": {"temp": "hot"}}
        }),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::check_query;

    /// CI runs on stable without libFuzzer, so it replays the committed corpus instead.
    #[test]
    fn fuzz_corpus_replays_without_breaking_a_promise() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/query_parse");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is committed") {
            let path = entry.expect("corpus entries are readable").path();
            let data = std::fs::read(&path).expect("corpus files are readable");
            // Shown only when the check panics, to name the offending file.
            eprintln!("replaying {}", path.display());
            if let Ok(text) = std::str::from_utf8(&data) {
                check_query(text);
            }
            replayed += 1;
        }
        assert!(replayed >= 30, "only {replayed} corpus files found");
    }

    #[test]
    fn route_condition_corpus_replays_without_breaking_a_promise() {
        let corpus =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/route_condition");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is committed") {
            let path = entry.expect("corpus entries are readable").path();
            let data = std::fs::read(&path).expect("corpus files are readable");
            eprintln!("replaying {}", path.display());
            if let Ok(text) = std::str::from_utf8(&data) {
                super::check_route_condition(text);
            }
            replayed += 1;
        }
        assert!(replayed >= 20, "only {replayed} corpus files found");
    }
}
