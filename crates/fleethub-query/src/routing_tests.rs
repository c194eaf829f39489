//! Route conditions on messages and events: references, the `$body` rules, functions, Azure's
//! undefined rules, errors; enrichments; property tests.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::ast::{Path, Segment};
use crate::fuzzing::{SampleMessage, sample_messages, sample_twin};
use crate::{Enrichment, EnrichmentError, EnrichmentValue, QueryError};
use crate::{RouteCondition, RouteOutcome, RoutedMessage};

/// Azure's example telemetry (the routing page), with the twin of its twin example.
fn weather() -> SampleMessage {
    sample_messages().remove(0)
}

fn twin_change_event() -> SampleMessage {
    sample_messages().remove(3)
}

fn outcome(condition: &str, message: &RoutedMessage<'_>) -> RouteOutcome {
    RouteCondition::parse(condition)
        .unwrap_or_else(|error| panic!("{condition}: {error}"))
        .evaluate(message)
}

#[track_caller]
fn assert_outcomes(message: &RoutedMessage<'_>, table: &[(&str, RouteOutcome)]) {
    for (condition, expected) in table {
        assert_eq!(outcome(condition, message), *expected, "{condition}");
    }
}

#[track_caller]
fn assert_all_true(message: &RoutedMessage<'_>, conditions: &[&str]) {
    for condition in conditions {
        assert_eq!(
            outcome(condition, message),
            RouteOutcome::True,
            "{condition}"
        );
    }
}

use RouteOutcome::{False, NotBoolean, True};

#[test]
fn azure_examples_route_the_example_message() {
    let sample = weather();
    let twin = sample_twin();
    let message = sample.message().with_twin(&twin);
    assert_all_true(
        &message,
        &[
            "$contentEncoding = 'UTF-8'",
            "processingPath = 'hot'",
            "$contentEncoding = 'UTF-8' AND processingPath = 'hot'",
            "$body.Weather.HistoricalData[0].Month = 'Feb'",
            "$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled",
            "length($body.Weather.Location.State) = 2",
            "$body.Weather.Temperature = 50 AND processingPath = 'hot'",
            "$twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
            "$body.Weather.Temperature = 50 AND $twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
            // Azure's page compares the string "1" with the number 1; types must agree here.
            "$twin.tags.deploymentLocation.floor = '1'",
        ],
    );
    assert_eq!(
        outcome("$twin.tags.deploymentLocation.floor = 1", &message),
        NotBoolean
    );
}

#[test]
fn system_properties_are_read_by_keyword_or_event_hubs_name_in_any_case() {
    let system = [
        ("message-id", "m1"),
        ("correlation-id", "c1"),
        ("user-id", "u1"),
        ("content-type", "application/json"),
        ("content-encoding", "utf-8"),
        ("iothub-connection-device-id", "dev1"),
        ("iothub-connection-module-id", "mod1"),
        ("iothub-connection-auth-generation-id", "g1"),
        (
            "iothub-connection-auth-method",
            r#"{"scope":"device","type":"sas","issuer":"iothub"}"#,
        ),
        ("iothub-message-source", "Telemetry"),
        ("dt-dataschema", "dtmi:com:example;1"),
        ("dt-subject", "thermostat1"),
        ("iothub-interface-id", "urn:x"),
        ("iothub-outputname", "out1"),
        ("absolute-expiry-time", "2030-01-01T00:00:00Z"),
    ]
    .map(|(key, value)| (key.to_owned(), value.to_owned()));
    let message =
        RoutedMessage::new(&system, &[], b"{}").with_enqueued_time("2024-05-01T10:00:00.0000000Z");
    assert_all_true(
        &message,
        &[
            "$messageId = 'm1'",
            "$correlationId = 'c1'",
            "$userId = 'u1'",
            "$contentType = 'application/json'",
            "$contentEncoding = 'utf-8'",
            "$connectionDeviceId = 'dev1'",
            "$connectionModuleId = 'mod1'",
            "$connectionDeviceGenerationId = 'g1'",
            "STARTSWITH($connectionAuthMethod, '{\"scope\":\"device\"')",
            "$enqueuedTime = '2024-05-01T10:00:00.0000000Z'",
            "$enqueuedTime > '2024-01-01'",
            "$dt-dataschema = 'dtmi:com:example;1'",
            "$dt-subject = 'thermostat1'",
            "$iothub-message-source = 'Telemetry'",
            "$iothub-interface-id = 'urn:x'",
            "$iothub-outputname = 'out1'",
            "$absolute-expiry-time = '2030-01-01T00:00:00Z'",
            // Event Hubs names and any case.
            "$message-id = 'm1'",
            "$content-type = 'application/json'",
            "$iothub-connection-device-id = 'dev1'",
            "$iothub-enqueuedtime = '2024-05-01T10:00:00.0000000Z'",
            "$CONTENTTYPE = 'application/json'",
            "$ConnectionDeviceId = 'dev1'",
            "$IOTHUB-MESSAGE-SOURCE = 'Telemetry'",
            "[[$dt-subject]] = 'thermostat1'",
        ],
    );
    // Values compare case-sensitively; absent properties are undefined.
    let bare = RoutedMessage::new(&[], &[], b"");
    assert_outcomes(
        &bare,
        &[
            ("$connectionModuleId = 'mod1'", NotBoolean),
            ("IS_DEFINED($connectionModuleId)", False),
            ("IS_DEFINED($enqueuedTime)", False),
        ],
    );
    assert_eq!(outcome("$contentEncoding = 'UTF-8'", &message), False);
}

#[test]
fn the_enqueued_time_among_the_system_properties_wins_over_the_one_given_apart() {
    let system = [(
        "iothub-enqueuedtime".to_owned(),
        "2024-01-01T00:00:00Z".to_owned(),
    )];
    let message = RoutedMessage::new(&system, &[], b"").with_enqueued_time("2025");
    assert_eq!(
        outcome("$enqueuedTime = '2024-01-01T00:00:00Z'", &message),
        True
    );
}

#[test]
fn a_dollar_name_that_is_no_system_property_is_looked_up_among_application_properties() {
    let system = [("content-type".to_owned(), "text/plain".to_owned())];
    let application = [
        ("$custom".to_owned(), Some("x".to_owned())),
        ("$contentType".to_owned(), Some("shadowed".to_owned())),
    ];
    let message = RoutedMessage::new(&system, &application, b"");
    assert_outcomes(
        &message,
        &[
            ("$custom = 'x'", True),
            ("$CUSTOM = 'x'", True),
            // "IoT Hub will search for it in the system properties" first.
            ("$contentType = 'text/plain'", True),
            ("$contentType = 'shadowed'", False),
        ],
    );
}

#[test]
fn application_property_names_are_case_insensitive_and_values_are_strings() {
    let application = [
        ("processingPath".to_owned(), Some("hot".to_owned())),
        ("severity".to_owned(), Some("3".to_owned())),
        ("flag".to_owned(), None),
        ("Mode".to_owned(), Some("upper".to_owned())),
        ("mode".to_owned(), Some("lower".to_owned())),
        ("temperature.unit".to_owned(), Some("C".to_owned())),
        (
            "iothub-creation-time-utc".to_owned(),
            Some("2024".to_owned()),
        ),
        ("group".to_owned(), Some("g".to_owned())),
    ];
    let message = RoutedMessage::new(&[], &application, b"");
    assert_outcomes(
        &message,
        &[
            ("processingPath = 'hot'", True),
            ("processingpath = 'hot'", True),
            ("PROCESSINGPATH = 'hot'", True),
            ("[[ProcessingPath]] = 'hot'", True),
            // An exact match first, then the first equal ignoring case.
            ("mode = 'lower'", True),
            ("Mode = 'upper'", True),
            ("MODE = 'upper'", True),
            // Values are strings: a number never equals them.
            ("severity = 3", NotBoolean),
            ("severity = '3'", True),
            ("AS_NUMBER(severity) = 3", True),
            ("AS_NUMBER(severity) > 2.5", True),
            // A property without value is null, and defined.
            ("IS_NULL(flag)", True),
            ("IS_DEFINED(flag)", True),
            ("flag = null", True),
            ("IS_DEFINED(missing)", False),
            ("missing = 'x'", NotBoolean),
            // Names with dots and hyphens.
            ("temperature.unit = 'C'", True),
            ("Temperature.Unit = 'C'", True),
            ("[[temperature.unit]] = 'C'", True),
            ("iothub-creation-time-utc = '2024'", True),
            ("[[group]] = 'g'", True),
            // A property is a string: nothing is inside it.
            ("IS_DEFINED(processingPath[0])", False),
        ],
    );
}

#[test]
fn hyphens_join_words_into_names_but_spaces_numbers_and_dollars_subtract() {
    let system = [
        ("content-type".to_owned(), "application/json".to_owned()),
        ("content-encoding".to_owned(), "utf-8".to_owned()),
    ];
    let body = json!({"max": 10, "min": 4, "x": 5, "a-b": 1, "a": 7, "b": 7});
    let message = RoutedMessage::with_json_body(&system, &[], &body);
    assert_all_true(
        &message,
        &[
            "$body.max-$body.min = 6",
            "$body.x-1 = 4",
            "$body.a-b = 1",
            "$body.a - $body.b = 0",
            "$body.[[a-b]] = 1",
        ],
    );
    let parsed = RouteCondition::parse("$body.a-b = 1").expect("parses");
    assert_eq!(parsed.to_string(), "($body.[[a-b]] = 1)");
}

#[test]
fn the_body_is_queryable_only_as_json_in_a_utf_encoding() {
    let json_text = r#"{"a": 1, "s": "é"}"#;
    let utf8 = json_text.as_bytes().to_vec();
    let mut utf8_bom = b"\xEF\xBB\xBF".to_vec();
    utf8_bom.extend_from_slice(json_text.as_bytes());
    let utf16_le: Vec<u8> = json_text
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut utf16_be_bom = vec![0xFE, 0xFF];
    utf16_be_bom.extend(json_text.encode_utf16().flat_map(u16::to_be_bytes));
    let mut utf16_le_bom = vec![0xFF, 0xFE];
    utf16_le_bom.extend_from_slice(&utf16_le);
    let utf32_le: Vec<u8> = json_text
        .chars()
        .flat_map(|c| u32::from(c).to_le_bytes())
        .collect();
    let mut utf32_be_bom = vec![0x00, 0x00, 0xFE, 0xFF];
    utf32_be_bom.extend(json_text.chars().flat_map(|c| u32::from(c).to_be_bytes()));
    // Content type, content encoding, body, whether `$body` may query it.
    type Row<'r> = (Option<&'r str>, Option<&'r str>, Vec<u8>, bool);
    let table: Vec<Row<'_>> = vec![
        (Some("application/json"), Some("utf-8"), utf8.clone(), true),
        (Some("application/json"), Some("UTF-8"), utf8.clone(), true),
        (Some("Application/JSON"), Some("Utf-8"), utf8.clone(), true),
        (
            Some(" application/json "),
            Some(" utf-8 "),
            utf8.clone(),
            true,
        ),
        (Some("application/json"), Some("utf-8"), utf8_bom, true),
        (
            Some("application/json;charset=utf-8"),
            None,
            utf8.clone(),
            true,
        ),
        (
            Some("application/json; charset=\"UTF-8\""),
            None,
            utf8.clone(),
            true,
        ),
        // content-encoding wins over the charset parameter.
        (
            Some("application/json; charset=utf-8"),
            Some("gzip"),
            utf8.clone(),
            false,
        ),
        (
            Some("application/json"),
            Some("utf-16"),
            utf16_le.clone(),
            true,
        ),
        (Some("application/json"), Some("UTF-16"), utf16_le_bom, true),
        (Some("application/json"), Some("utf-16"), utf16_be_bom, true),
        (
            Some("application/json"),
            Some("utf-32"),
            utf32_le.clone(),
            true,
        ),
        (Some("application/json"), Some("utf-32"), utf32_be_bom, true),
        // Not allowed: no or another content type or encoding.
        (Some("application/json"), None, utf8.clone(), false),
        (None, Some("utf-8"), utf8.clone(), false),
        (None, None, utf8.clone(), false),
        (Some("text/plain"), Some("utf-8"), utf8.clone(), false),
        (
            Some("application/jsonx"),
            Some("utf-8"),
            utf8.clone(),
            false,
        ),
        (
            Some("application/octet-stream"),
            Some("utf-8"),
            utf8.clone(),
            false,
        ),
        (Some("application/json"), Some("ascii"), utf8.clone(), false),
        (Some("application/json"), Some("utf8"), utf8.clone(), false),
        (
            Some("application/json"),
            Some("base64"),
            utf8.clone(),
            false,
        ),
        // Allowed but not JSON in that encoding.
        (
            Some("application/json"),
            Some("utf-8"),
            utf16_le.clone(),
            false,
        ),
        (
            Some("application/json"),
            Some("utf-16"),
            utf8.clone(),
            false,
        ),
        (Some("application/json"), Some("utf-16"), vec![b'{'], false),
        (
            Some("application/json"),
            Some("utf-32"),
            utf32_le[..7].to_vec(),
            false,
        ),
        (
            Some("application/json"),
            Some("utf-32"),
            vec![0, 0, 0x11, 0],
            false,
        ),
        (
            Some("application/json"),
            Some("utf-8"),
            b"{\"a\": 1".to_vec(),
            false,
        ),
        (
            Some("application/json"),
            Some("utf-8"),
            vec![0xFF, b'{', b'}'],
            false,
        ),
        (Some("application/json"), Some("utf-8"), Vec::new(), false),
    ];
    for (index, (content_type, content_encoding, body, queryable)) in table.iter().enumerate() {
        let mut system = Vec::new();
        if let Some(content_type) = content_type {
            system.push(("content-type".to_owned(), (*content_type).to_owned()));
        }
        if let Some(content_encoding) = content_encoding {
            system.push((
                "Content-Encoding".to_owned(),
                (*content_encoding).to_owned(),
            ));
        }
        let message = RoutedMessage::new(&system, &[], body);
        let row = format!("row {index}: {content_type:?} {content_encoding:?}");
        assert_eq!(message.body_json().is_some(), *queryable, "{row}");
        let expected = |when_queryable| {
            if *queryable {
                when_queryable
            } else {
                NotBoolean
            }
        };
        assert_eq!(outcome("$body.a = 1", &message), expected(True), "{row}");
        assert_eq!(outcome("$body.s = 'é'", &message), expected(True), "{row}");
        assert_eq!(outcome("$body.a = 2", &message), expected(False), "{row}");
        // Undefined stays undefined under NOT.
        assert_eq!(
            outcome("NOT ($body.a = 2)", &message),
            expected(True),
            "{row}"
        );
        assert_eq!(
            outcome("IS_DEFINED($body.a)", &message),
            if *queryable { True } else { False },
            "{row}"
        );
    }
}

#[test]
fn the_whole_body_cannot_be_queried_and_body_names_are_case_sensitive() {
    let system = [
        ("content-type".to_owned(), "application/json".to_owned()),
        ("content-encoding".to_owned(), "utf-8".to_owned()),
    ];
    let array = json!(["Feb", "Jan"]);
    let message = RoutedMessage::with_json_body(&system, &[], &array);
    assert_outcomes(
        &message,
        &[
            ("$body[0] = 'Feb'", NotBoolean),
            ("IS_DEFINED($body)", False),
            ("IS_ARRAY($body)", False),
        ],
    );
    let sample = weather();
    let message = sample.message();
    assert_outcomes(
        &message,
        &[
            ("IS_OBJECT($body)", False),
            ("IS_OBJECT($body.Weather)", True),
            ("$body.weather.temperature = 50", NotBoolean),
            ("$BODY.Weather.Temperature = 50", True),
            ("$body.Weather.PrevTemperatures[2] = 40", True),
            ("$body.Weather.PrevTemperatures[3] = 40", NotBoolean),
        ],
    );
}

#[test]
fn a_json_body_given_as_json_still_needs_the_json_content_type() {
    let body = json!({"a": 1});
    let message = RoutedMessage::with_json_body(&[], &[], &body);
    assert_eq!(message.body_json(), None);
    assert_eq!(outcome("$body.a = 1", &message), NotBoolean);
}

#[test]
fn twin_references_read_tags_and_properties_ignoring_case() {
    let sample = weather();
    let twin = sample_twin();
    let message = sample.message().with_twin(&twin);
    assert_outcomes(
        &message,
        &[
            ("$twin.tags.deploymentLocation.building = '43'", True),
            ("$TWIN.TAGS.DEPLOYMENTLOCATION.BUILDING = '43'", True),
            ("$twin.Properties.Reported.batteryLevel > 50", True),
            ("$twin.properties.reported.BatteryLevel = 55", True),
            (
                "$twin.properties.reported.telemetryConfig.status = 'success'",
                True,
            ),
            ("$twin.properties.desired.$version = 1", True),
            ("$twin.tags.weight * 2 = 20", True),
            ("$twin.tags.deploymentLocation.room = '1'", NotBoolean),
            ("IS_OBJECT($twin.tags)", True),
            ("IS_DEFINED($twin.tags.missing)", False),
            ("$twin.deviceId = 'dev1'", True),
        ],
    );
    // Without a twin, `$twin` is undefined.
    let without_twin = sample.message();
    assert_outcomes(
        &without_twin,
        &[
            ("$twin.tags.deploymentLocation.building = '43'", NotBoolean),
            ("IS_DEFINED($twin.tags)", False),
            ("NOT IS_DEFINED($twin.tags)", True),
        ],
    );
    let parsed = RouteCondition::parse("$Twin.Properties.Desired.X = 1").expect("parses");
    assert_eq!(parsed.to_string(), "($twin.properties.desired.X = 1)");
}

#[test]
fn conditions_that_are_not_boolean_true_do_not_match() {
    let sample = weather();
    let message = sample.message();
    let table = [
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("null", NotBoolean),
        ("undefined", NotBoolean),
        ("'true'", NotBoolean),
        ("1", NotBoolean),
        ("processingPath", NotBoolean),
        ("$body.Weather", NotBoolean),
        ("$body.Weather.IsEnabled", True),
        ("$body.Weather.Temperature", NotBoolean),
        ("[true]", NotBoolean),
        // Undefined and type mismatches are neither true nor false.
        ("missing = 1", NotBoolean),
        ("NOT (missing = 1)", NotBoolean),
        ("missing != 1", NotBoolean),
        ("$body.Weather.Temperature = '50'", NotBoolean),
        ("$body.Weather.Temperature != '50'", NotBoolean),
        (
            "$body.Weather.Location = $body.Weather.Location",
            NotBoolean,
        ),
        ("missing IN ['a']", NotBoolean),
        ("missing NIN ['a']", NotBoolean),
        // Three-valued AND and OR.
        ("missing = 1 OR true", True),
        ("missing = 1 OR false", NotBoolean),
        ("missing = 1 AND false", False),
        ("missing = 1 AND true", NotBoolean),
        ("NOT NOT true", True),
    ];
    for (condition, expected) in table {
        let parsed = RouteCondition::parse(condition).expect("parses");
        assert_eq!(parsed.evaluate(&message), expected, "{condition}");
        assert_eq!(parsed.matches(&message), expected == True, "{condition}");
    }
}

#[test]
fn every_routing_function_works_on_message_values() {
    let system = [
        ("content-type".to_owned(), "application/json".to_owned()),
        ("content-encoding".to_owned(), "utf-8".to_owned()),
        ("iothub-connection-device-id".to_owned(), "dev1".to_owned()),
    ];
    let application = [
        ("severity".to_owned(), Some("3".to_owned())),
        ("level".to_owned(), Some(" 2.5 ".to_owned())),
        ("flag".to_owned(), None),
        ("path".to_owned(), Some("hot".to_owned())),
    ];
    let body = json!({
        "n": -2, "f": 1.5, "s": "Hello", "b": true, "a": [1, 2], "o": {"k": 1}, "z": null,
        "e": "", "text": "température"
    });
    let message = RoutedMessage::with_json_body(&system, &application, &body);
    let conditions = [
        // Math.
        "ABS($body.n) = 2",
        "ABS($body.f) = 1.5",
        "EXP(0) = 1",
        "EXP(1) > 2.718 AND EXP(1) < 2.719",
        "POWER(2, 10) = 1024",
        "POWER($body.f, 2) = 2.25",
        "POWER(4, 0.5) = 2",
        "SQUARE($body.n) = 4",
        "SQUARE($body.f) = 2.25",
        "CEILING($body.f) = 2",
        "CEILING(-1.5) = -1",
        "FLOOR($body.f) = 1",
        "FLOOR(-1.5) = -2",
        "SIGN($body.n) = -1",
        "SIGN(0) = 0",
        "SIGN($body.f) = 1",
        "SQRT(16) = 4",
        "SQRT(2) > 1.414 AND SQRT(2) < 1.415",
        // Type checks.
        "AS_NUMBER(severity) = 3",
        "AS_NUMBER(level) = 2.5",
        "AS_NUMBER($body.n) = -2",
        "NOT IS_DEFINED(AS_NUMBER(path))",
        "NOT IS_DEFINED(AS_NUMBER($body.b))",
        "IS_ARRAY($body.a)",
        "NOT IS_ARRAY($body.o)",
        "IS_BOOL($body.b)",
        "NOT IS_BOOL(path)",
        "IS_DEFINED($body.z)",
        "IS_DEFINED(flag)",
        "NOT IS_DEFINED($body.missing)",
        "IS_NULL($body.z)",
        "IS_NULL(flag)",
        "NOT IS_NULL($body.missing)",
        "IS_NUMBER($body.n)",
        "IS_NUMBER($body.f)",
        "NOT IS_NUMBER(severity)",
        "IS_OBJECT($body.o)",
        "NOT IS_OBJECT($body.a)",
        "IS_PRIMITIVE($body.s)",
        "IS_PRIMITIVE($body.z)",
        "IS_PRIMITIVE($body.n)",
        "NOT IS_PRIMITIVE($body.o)",
        "NOT IS_PRIMITIVE($body.missing)",
        "IS_STRING($body.s)",
        "IS_STRING($connectionDeviceId)",
        "NOT IS_STRING($body.n)",
        // Strings.
        "CONCAT($connectionDeviceId, '-', path) = 'dev1-hot'",
        "CONCAT($body.s, $body.e) = 'Hello'",
        "NOT IS_DEFINED(CONCAT($body.s, $body.n))",
        "LENGTH($body.s) = 5",
        "LENGTH($body.text) = 11",
        "LENGTH($body.e) = 0",
        "LOWER($body.s) = 'hello'",
        "UPPER($body.s) = 'HELLO'",
        "UPPER($body.text) = 'TEMPÉRATURE'",
        "SUBSTRING($body.s, 1, 3) = 'ell'",
        "SUBSTRING($body.s, 2) = 'llo'",
        "SUBSTRING($body.text, 6, 1) = 'a'",
        "INDEX_OF($body.s, 'l') = 2",
        "INDEX_OF($body.s, 'x') = -1",
        "INDEX_OF($body.text, 'r') = 5",
        "STARTS_WITH($body.s, 'He')",
        "STARTSWITH($body.s, 'He')",
        "NOT STARTS_WITH($body.s, 'he')",
        "ENDS_WITH($body.s, 'lo')",
        "ENDSWITH($body.s, 'lo')",
        "CONTAINS($body.s, 'ell')",
        "NOT CONTAINS($body.s, 'L')",
        // Names are case-insensitive.
        "abs($body.n) = 2",
        "Is_Defined(flag)",
        "starts_with(path, 'h')",
        "Length(path) = 3",
        "as_number(severity) = 3",
    ];
    assert_all_true(&message, &conditions);
    // Wrong types and impossible results are undefined.
    assert_outcomes(
        &message,
        &[
            ("ABS($body.s) = 1", NotBoolean),
            ("SQRT(-1) = 0", NotBoolean),
            ("EXP(1000) > 0", NotBoolean),
            ("POWER(-8, 0.5) = 0", NotBoolean),
            ("LENGTH($body.n) = 1", NotBoolean),
            ("LOWER($body.missing) = 'a'", NotBoolean),
            ("STARTS_WITH($body.n, '1')", NotBoolean),
            ("CONTAINS(path, $body.missing)", NotBoolean),
            ("IS_DEFINED(SUBSTRING($body.s, 'x'))", False),
        ],
    );
}

#[test]
fn twin_change_connection_state_and_lifecycle_events_route_like_messages() {
    let sample = twin_change_event();
    // The hub hands its events over with a JSON body.
    let body: Value = serde_json::from_slice(&sample.body).expect("sample body is JSON");
    let message = RoutedMessage::with_json_body(
        &sample.system_properties,
        &sample.application_properties,
        &body,
    );
    assert_all_true(
        &message,
        &[
            "$iothub-message-source = 'twinChangeEvents'",
            "opType = 'updateTwin'",
            "OPTYPE = 'updateTwin'",
            "iothub-message-schema = 'twinChangeNotification'",
            "hubName = 'hub1' AND deviceId = 'dev1' AND $userId = 'hub1'",
            "$body.properties.desired.telemetryConfig.sendFrequency > 10",
            "is_defined($body.properties.desired.telemetryConfig.sendFrequency)",
            "$body.version = 4",
        ],
    );
    // The same event read from its bytes.
    assert_eq!(
        outcome("$body.version = 4", &sample.message()),
        RouteOutcome::True
    );
    let system = [
        ("content-type", "application/json"),
        ("content-encoding", "utf-8"),
        ("iothub-connection-device-id", "dev1"),
        ("iothub-message-source", "deviceConnectionStateEvents"),
    ]
    .map(|(key, value)| (key.to_owned(), value.to_owned()));
    let application = [
        ("opType".to_owned(), Some("deviceConnected".to_owned())),
        (
            "iothub-message-schema".to_owned(),
            Some("deviceConnectionStateNotification".to_owned()),
        ),
    ];
    let body = json!({"sequenceNumber": "000000000000000000000000000000000000000000000000000000000000002A"});
    let connected = RoutedMessage::with_json_body(&system, &application, &body);
    assert_all_true(
        &connected,
        &[
            "$iothub-message-source = 'deviceConnectionStateEvents' AND opType = 'deviceConnected'",
            "LENGTH($body.sequenceNumber) = 64",
        ],
    );
    let lifecycle_system = [
        (
            "iothub-message-source".to_owned(),
            "deviceLifecycleEvents".to_owned(),
        ),
        ("content-type".to_owned(), "application/json".to_owned()),
        ("content-encoding".to_owned(), "utf-8".to_owned()),
    ];
    let lifecycle_application = [("opType".to_owned(), Some("createDeviceIdentity".to_owned()))];
    let lifecycle_body = json!({"deviceId": "dev9", "tags": {"site": "a"}});
    let created =
        RoutedMessage::with_json_body(&lifecycle_system, &lifecycle_application, &lifecycle_body);
    assert_all_true(
        &created,
        &["opType IN ['createDeviceIdentity', 'deleteDeviceIdentity'] AND $body.tags.site = 'a'"],
    );
}

#[test]
fn an_empty_condition_is_true_and_conditions_print_canonically() {
    let sample = weather();
    let message = sample.message();
    for text in ["", "   ", "\n\t"] {
        let condition = RouteCondition::parse(text).expect("empty is true");
        assert_eq!(condition, RouteCondition::always());
        assert!(condition.matches(&message));
    }
    assert_eq!(RouteCondition::default(), RouteCondition::always());
    assert_eq!(RouteCondition::always().to_string(), "true");
    let table = [
        ("$ContentType = 'x'", "($contentType = 'x')"),
        ("$content-type = 'x'", "($contentType = 'x')"),
        (
            "$IOTHUB-Message-Source = 'x'",
            "([[$iothub-message-source]] = 'x')",
        ),
        ("$dt-subject = 'x'", "([[$dt-subject]] = 'x')"),
        ("$Custom = 'x'", "($Custom = 'x')"),
        ("a.b = 'x'", "([[a.b]] = 'x')"),
        ("$BODY.Weather[0] = 1", "($body.Weather[0] = 1)"),
        (
            "starts_with(p, 'a') and not q in ['b']",
            "(STARTSWITH(p, 'a') AND (NOT (q IN ['b'])))",
        ),
    ];
    for (text, printed) in table {
        let condition: RouteCondition = text.parse().expect("parses");
        assert_eq!(condition.to_string(), printed, "{text}");
        assert_eq!(RouteCondition::parse(printed), Ok(condition), "{printed}");
    }
}

#[test]
fn conditions_say_whether_they_need_the_twin_or_the_body() {
    let table = [
        ("true", false, false),
        ("processingPath = 'hot'", false, false),
        ("$body.a = 1", false, true),
        ("$twin.tags.a = 1", true, false),
        ("NOT ($twin.tags.a = 1) OR LENGTH($body.s) > 2", true, true),
        ("CONCAT($twin.tags.a, 'x') IN ['yx']", true, false),
        ("-$body.a = 1", false, true),
        ("[[$body]] = 1", false, true),
        ("body.a = 1 AND twin.a = 1", false, false),
    ];
    for (text, twin, body) in table {
        let condition = RouteCondition::parse(text).expect("parses");
        assert_eq!(condition.uses_twin(), twin, "{text}");
        assert_eq!(condition.uses_body(), body, "{text}");
    }
}

#[test]
fn malformed_conditions_are_refused_with_a_position_and_what_was_expected() {
    let table: [(&str, usize, &str); 17] = [
        (
            "processingPath = 'hot' AND",
            26,
            "syntax error at position 26: expected an expression after 'AND', found end of query",
        ),
        (
            "$body.x =",
            9,
            "syntax error at position 9: expected an expression after '=', found end of query",
        ),
        (
            "processingPath = 'hot",
            17,
            "syntax error at position 17: unterminated string: no closing '",
        ),
        (
            "frobnicate($body.x)",
            0,
            "invalid query at position 0: unknown function 'frobnicate'",
        ),
        (
            "abs(1, 2) = 1",
            0,
            "invalid query at position 0: ABS takes 1 argument, found 2",
        ),
        (
            "POWER(2) = 4",
            0,
            "invalid query at position 0: POWER takes 2 arguments, found 1",
        ),
        (
            "CONCAT('a') = 'a'",
            0,
            "invalid query at position 0: CONCAT takes at least 2 arguments, found 1",
        ),
        (
            "COUNT() > 1",
            0,
            "invalid query at position 0: aggregate function COUNT is not allowed in a condition",
        ),
        (
            "$body.x = 1 2",
            12,
            "syntax error at position 12: expected AND, OR or end of condition, found number 2",
        ),
        (
            "SELECT * FROM devices",
            0,
            "syntax error at position 0: expected an expression, found 'SELECT'",
        ),
        (
            "a ! b",
            2,
            "syntax error at position 2: unexpected character '!'; did you mean '!='?",
        ),
        (
            "[[unterminated",
            0,
            "syntax error at position 0: unterminated quoted name: '[[' without ']]'",
        ),
        (
            "1 < $body.x < 3",
            12,
            "syntax error at position 12: comparisons cannot be chained; combine them with AND",
        ),
        (
            "$body. = 1",
            7,
            "syntax error at position 7: expected a property name after '.', found '='",
        ),
        (
            "processingPath IN 'hot'",
            18,
            "syntax error at position 18: expected an array constant such as ['a', 'b'] after IN, found a string",
        ),
        (
            "(a = 1",
            6,
            "syntax error at position 6: expected ')' to close the '(' at position 0, found end of query",
        ),
        (
            "a = 1\nAND b ==",
            13,
            "syntax error at position 13: expected an expression after '=', found '='",
        ),
    ];
    for (text, position, message) in table {
        let error = RouteCondition::parse(text).expect_err(text);
        assert_eq!(error.to_string(), message, "{text}");
        assert_eq!(error.position(), Some(position), "{text}");
    }
    let error = RouteCondition::parse("a = 1\nAND b ==").expect_err("malformed");
    assert_eq!(error.line_column(), Some((2, 8)));
    let long = format!("a = '{}'", "x".repeat(crate::MAX_QUERY_LENGTH));
    assert!(matches!(
        RouteCondition::parse(&long),
        Err(QueryError::TooLong { .. })
    ));
    let deep = format!("{}true{}", "(".repeat(500), ")".repeat(500));
    assert!(matches!(
        RouteCondition::parse(&deep),
        Err(QueryError::Invalid { .. })
    ));
}

#[test]
fn the_body_is_decoded_once_for_every_condition_and_never_without_a_body_reference() {
    let sample = weather();
    let message = sample.message();
    let first = message.body_json().expect("queryable") as *const Value;
    let second = message.body_json().expect("queryable") as *const Value;
    assert_eq!(first, second);
    let conditions: Vec<RouteCondition> =
        ["$body.Weather.Temperature = 50", "processingPath = 'hot'"]
            .into_iter()
            .map(|text| RouteCondition::parse(text).expect("parses"))
            .collect();
    assert!(
        conditions
            .iter()
            .all(|condition| condition.matches(&message))
    );
}

// ---------------------------------------------------------------------------------------------
// Enrichments

#[test]
fn enrichment_values_are_static_strings_the_hub_name_or_twin_paths() {
    let twin = sample_twin();
    let table = [
        ("customer-7", Some(&twin), "customer-7"),
        ("a b.c", None, "a b.c"),
        ("$iothubname", Some(&twin), "hub1"),
        ("$IoTHubName", None, "hub1"),
        ("$twin.tags.deploymentLocation.building", Some(&twin), "43"),
        ("$Twin.Tags.DeploymentLocation.Building", Some(&twin), "43"),
        ("$twin.tags.weight", Some(&twin), "10"),
        (
            "$twin.tags.deploymentLocation",
            Some(&twin),
            r#"{"building":"43","floor":"1"}"#,
        ),
        (
            "$twin.properties.desired.telemetryConfig.sendFrequency",
            Some(&twin),
            "5m",
        ),
        ("$twin.properties.reported.batteryLevel", Some(&twin), "55"),
        ("$twin.properties.reported.$version", Some(&twin), "4"),
        // A missing path or twin stamps the value as written, as Azure does.
        ("$twin.tags.location", Some(&twin), "$twin.tags.location"),
        (
            "$twin.tags.deploymentLocation.building",
            None,
            "$twin.tags.deploymentLocation.building",
        ),
        (
            "$twin.properties.desired.telemetryConfig.sendFrequency.x",
            Some(&twin),
            "$twin.properties.desired.telemetryConfig.sendFrequency.x",
        ),
    ];
    for (value, twin, expected) in table {
        let enrichment = Enrichment::parse("key", value).expect(value);
        assert_eq!(enrichment.key(), "key");
        assert_eq!(enrichment.resolve(twin, "hub1"), expected, "{value}");
    }
    assert_eq!(
        EnrichmentValue::parse("$twin.Properties.Reported.a.b"),
        Ok(EnrichmentValue::Twin {
            path: ["properties", "reported", "a", "b"]
                .map(str::to_owned)
                .to_vec(),
            text: "$twin.Properties.Reported.a.b".to_owned(),
        })
    );
    assert_eq!(
        Enrichment::parse("k", "$iothubname").map(|e| e.value().clone()),
        Ok(EnrichmentValue::HubName)
    );
}

#[test]
fn enrichments_with_bad_keys_or_unsupported_variables_are_refused() {
    let table: [(&str, &str, EnrichmentError); 11] = [
        ("", "v", EnrichmentError::EmptyKey),
        (
            "a b",
            "v",
            EnrichmentError::InvalidKey {
                key: "a b".to_owned(),
                character: ' ',
            },
        ),
        (
            "a$",
            "v",
            EnrichmentError::InvalidKey {
                key: "a$".to_owned(),
                character: '$',
            },
        ),
        (
            "clé",
            "v",
            EnrichmentError::InvalidKey {
                key: "clé".to_owned(),
                character: 'é',
            },
        ),
        ("k", "", EnrichmentError::EmptyValue),
        ("k", "$twin", unsupported("$twin")),
        ("k", "$twin.deviceId", unsupported("$twin.deviceId")),
        ("k", "$twin.properties", unsupported("$twin.properties")),
        ("k", "$body.x", unsupported("$body.x")),
        ("k", "$iothubname.x", unsupported("$iothubname.x")),
        (
            "k",
            "$twin.tags.a..b",
            EnrichmentError::EmptyTwinName {
                value: "$twin.tags.a..b".to_owned(),
            },
        ),
    ];
    for (key, value, expected) in table {
        assert_eq!(
            Enrichment::parse(key, value),
            Err(expected),
            "{key} {value}"
        );
    }
    assert!(Enrichment::parse("Key-1_a.b", "v").is_ok());
    assert_eq!(
        unsupported("$x").to_string(),
        "enrichment value '$x' is not a supported variable; the variables are $iothubname, $twin.tags, $twin.properties.desired and $twin.properties.reported"
    );
}

fn unsupported(value: &str) -> EnrichmentError {
    EnrichmentError::UnsupportedVariable {
        value: value.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

/// Route paths in canonical form (what the parser builds).
fn route_path() -> impl Strategy<Value = Path> {
    let name = || crate::proptests::user_name().prop_map(Segment::Name);
    let tail = prop::collection::vec(
        prop_oneof![3 => name(), 1 => (0u64..3).prop_map(Segment::Index)],
        0..3,
    );
    let names = |root: &[&str]| -> Vec<Segment> {
        root.iter()
            .map(|name| Segment::Name((*name).to_owned()))
            .collect()
    };
    // Names under `tags`, `desired` and `reported` are the user's; right under `$twin` they
    // would be canonicalised (`Tags` is `tags`), so nothing is generated there.
    let twin_root = prop_oneof![
        Just(names(&["$twin", "tags"])),
        Just(names(&["$twin", "properties", "desired"])),
        Just(names(&["$twin", "properties", "reported"])),
    ];
    prop_oneof![
        (Just(names(&["$body"])), tail.clone()).prop_map(|(mut root, tail)| {
            root.extend(tail);
            Path { segments: root }
        }),
        (twin_root, prop::collection::vec(name(), 0..3)).prop_map(|(mut root, tail)| {
            root.extend(tail);
            Path { segments: root }
        }),
        Just(Path {
            segments: names(&["$twin"])
        }),
        prop::sample::select(vec![
            "$contentType",
            "$enqueuedTime",
            "$connectionDeviceId",
            "$iothub-message-source",
            "$dt-subject",
            "$custom",
        ])
        .prop_map(|name| Path {
            segments: vec![Segment::Name(name.to_owned())],
        }),
        crate::proptests::user_name().prop_map(|name| Path {
            segments: vec![Segment::Name(name)],
        }),
        (crate::proptests::user_name(), 0u64..3).prop_map(|(name, index)| Path {
            segments: vec![Segment::Name(name), Segment::Index(index)],
        }),
    ]
}

fn route_condition() -> impl Strategy<Value = RouteCondition> {
    crate::proptests::expression(route_path().boxed()).prop_map(RouteCondition::from_expr)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_route_conditions_parse_back_to_the_same_tree(condition in route_condition()) {
        let printed = condition.to_string();
        let reparsed = crate::parser::parse_route_condition(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(condition.expr()), "printed as {}", printed);
    }

    #[test]
    fn generated_route_conditions_keep_every_promise_of_the_oracle(condition in route_condition()) {
        crate::fuzzing::check_parsed_route_condition(&condition);
    }

    #[test]
    fn any_text_parses_as_a_route_condition_or_fails_without_panicking(text in "\\PC{0,60}") {
        crate::fuzzing::check_route_condition(&text);
    }

    #[test]
    fn condition_like_text_parses_or_fails_without_panicking(
        words in prop::collection::vec(
            prop::sample::select(vec![
                "$body", "$twin", ".", "tags", "properties", "desired", "[", "]", "0", "-", "x",
                "$contentType", "$dt", "subject", "processingPath", "=", "!=", "<", "(", ")", ",",
                "'a'", "1.5", "+", "AND", "OR", "NOT", "IN", "NIN", "IS_DEFINED", "AS_NUMBER",
                "CONCAT", "SUBSTRING", "[[q-r]]", "null", "true", "undefined", "COUNT", "0x1F",
            ]),
            0..16,
        ),
        glue in prop::collection::vec(any::<bool>(), 16),
    ) {
        // Words joined with and without spaces, so that hyphens and dots glue names together.
        let mut text = String::new();
        for (word, spaced) in words.iter().zip(glue) {
            if spaced {
                text.push(' ');
            }
            text.push_str(word);
        }
        crate::fuzzing::check_route_condition(&text);
    }
}
