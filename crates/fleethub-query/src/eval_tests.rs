//! The evaluator on realistic documents: operators, functions, Azure's undefined and cross-type
//! rules, names, aggregates, GROUP BY, ORDER BY, TOP and `devices.jobs`.

use serde_json::{Value, json};

use crate::parse;

/// A device twin in the shape of `GET /twins/{id}` (PROTOCOL.md §3.4).
fn device_twin() -> Value {
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
        "tags": {
            "site": "a",
            "location": {"region": "US", "plant": "Redmond43"},
            "group": 7,
            "a.b c": 1,
            "order": 2,
            "list": ["a", "b"],
            "weight": 10,
            "f": 1.5
        },
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
                "$metadata": {
                    "$lastUpdated": "2024-05-01T10:05:00.0000000Z",
                    "temp": {"$lastUpdated": "2024-05-01T10:05:00.0000000Z"}
                },
                "$version": 1
            }
        },
        "capabilities": {"iotEdge": false}
    })
}

fn module_twin() -> Value {
    json!({
        "deviceId": "edge1",
        "moduleId": "$edgeAgent",
        "etag": "AAAAAAAAAAI=",
        "status": "enabled",
        "connectionState": "Connected",
        "version": 5,
        "tags": {},
        "properties": {
            "desired": {"$version": 7, "$metadata": {"$lastUpdated": "2024-05-02T10:00:00.0000000Z"}},
            "reported": {"lastDesiredVersion": 7, "lastDesiredStatus": {"code": 200}, "$version": 3}
        },
        "configurations": {"cfg-1": {"status": "Applied"}},
        "capabilities": {"iotEdge": true}
    })
}

fn device_job() -> Value {
    json!({
        "deviceId": "dev1",
        "jobId": "job1",
        "jobType": "scheduleDeviceMethod",
        "status": "completed",
        "startTimeUtc": "2024-05-01T10:00:00Z",
        "endTimeUtc": "2024-05-01T10:01:00Z",
        "createdDateTimeUtc": "2024-05-01T09:59:00Z",
        "lastUpdatedDateTimeUtc": "2024-05-01T10:01:00Z",
        "outcome": {"deviceMethodResponse": {"status": 200, "payload": {"result": "rebooted"}}},
        "error": {"code": "", "description": ""}
    })
}

/// Whether `SELECT * FROM devices WHERE {condition}` matches `document`.
fn matches(condition: &str, document: &Value) -> bool {
    let text = format!("SELECT * FROM devices WHERE {condition}");
    parse(&text)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .matches(document)
}

/// The value of `expr` on the device twin; `None` for undefined.
fn value_of(expr: &str) -> Option<Value> {
    value_on(expr, &device_twin())
}

fn value_on(expr: &str, document: &Value) -> Option<Value> {
    let text = format!("SELECT {expr} AS v FROM devices");
    parse(&text)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .project(document)
        .get("v")
        .cloned()
}

fn check_values(cases: &[(&str, Option<Value>)]) {
    for (expr, expected) in cases {
        assert_eq!(&value_of(expr), expected, "{expr}");
    }
}

#[test]
fn every_comparison_operator_on_numbers_strings_booleans_and_null() {
    let twin = device_twin();
    for (condition, expected) in [
        ("version = 3", true),
        ("version = 4", false),
        ("version != 4", true),
        ("version <> 3", false),
        ("version < 4", true),
        ("version < 3", false),
        ("version <= 3", true),
        ("version > 2", true),
        ("version > 3", false),
        ("version >= 3", true),
        ("version = 3.0", true),
        ("properties.reported.temp = 21.5", true),
        ("properties.reported.temp > 21", true),
        ("deviceId = 'dev1'", true),
        ("deviceId = 'DEV1'", false),
        ("deviceId < 'dev2'", true),
        ("deviceId >= 'dev1'", true),
        ("capabilities.iotEdge = false", true),
        ("capabilities.iotEdge < true", true),
        ("statusReason = null", true),
        ("statusReason != null", false),
        ("statusReason <= null", true),
        ("statusReason < null", false),
    ] {
        assert_eq!(matches(condition, &twin), expected, "{condition}");
    }
    // Strings compare by code point: uppercase letters sort before lowercase ones.
    check_values(&[
        ("'B' < 'a'", Some(json!(true))),
        ("'é' > 'z'", Some(json!(true))),
        ("'' < 'a'", Some(json!(true))),
    ]);
}

#[test]
fn a_missing_property_is_undefined_not_null() {
    let twin = device_twin();
    check_values(&[
        ("tags.missing = null", None),
        ("tags.missing != 1", None),
        ("tags.missing = tags.missing", None),
        ("IS_DEFINED(tags.missing)", Some(json!(false))),
        ("IS_DEFINED(statusReason)", Some(json!(true))),
        ("IS_NULL(tags.missing)", Some(json!(false))),
        ("tags.x = undefined", None),
        ("IS_DEFINED(undefined)", Some(json!(false))),
    ]);
    assert!(!matches("tags.missing != 'a'", &twin));
    assert!(!matches("NOT (tags.missing = 'a')", &twin));
    assert!(matches("NOT IS_DEFINED(tags.missing)", &twin));
    assert!(matches("statusReason = null", &twin));
    // A path through a value that is not an object is undefined too.
    assert!(!matches("IS_DEFINED(deviceId.length)", &twin));
}

#[test]
fn comparisons_between_different_types_are_undefined() {
    let twin = device_twin();
    check_values(&[
        ("deviceId = 5", None),
        ("'5' = 5", None),
        ("tags.weight = '10'", None),
        ("tags.weight != '10'", None),
        ("true = 1", None),
        ("null = 0", None),
        ("null < 1", None),
    ]);
    // Neither the comparison nor its negation matches: undefined is not false.
    assert!(!matches("tags.weight = '10'", &twin));
    assert!(!matches("NOT (tags.weight = '10')", &twin));
    assert!(!matches("tags.weight != 'x'", &twin));
}

#[test]
fn objects_and_arrays_compare_to_nothing() {
    check_values(&[
        ("tags.location = tags.location", None),
        ("tags.list = ['a', 'b']", None),
        ("properties.desired = properties.desired", None),
        ("[1] = [1]", None),
    ]);
}

#[test]
fn only_true_passes_the_where_clause() {
    let twin = device_twin();
    for condition in [
        "'abc'",
        "1",
        "null",
        "undefined",
        "tags.location",
        "tags.list",
        "capabilities.iotEdge",
        "false",
    ] {
        assert!(!matches(condition, &twin), "{condition}");
    }
    assert!(matches("true", &twin));
    assert!(matches("capabilities.iotEdge", &module_twin()));
    assert!(parse("SELECT * FROM devices").unwrap().matches(&twin));
}

#[test]
fn and_or_not_use_three_valued_logic() {
    check_values(&[
        ("true AND true", Some(json!(true))),
        ("true AND false", Some(json!(false))),
        ("true AND undefined", None),
        ("false AND undefined", Some(json!(false))),
        ("undefined AND false", Some(json!(false))),
        ("true OR undefined", Some(json!(true))),
        ("undefined OR true", Some(json!(true))),
        ("false OR undefined", None),
        ("false OR false", Some(json!(false))),
        ("NOT undefined", None),
        ("NOT 'a'", None),
        ("NOT false", Some(json!(true))),
        ("1 AND true", None),
        ("'x' OR false", None),
        ("tags.missing = 1 OR deviceId = 'dev1'", Some(json!(true))),
    ]);
}

#[test]
fn in_and_nin_are_or_of_equalities_and_its_negation() {
    let twin = device_twin();
    check_values(&[
        ("deviceId IN ['dev1', 'dev2']", Some(json!(true))),
        ("deviceId IN ['x']", Some(json!(false))),
        ("deviceId NIN ['x']", Some(json!(true))),
        ("deviceId NIN ['dev1']", Some(json!(false))),
        ("deviceId NOT IN ['dev1']", Some(json!(false))),
        ("tags.missing IN ['a']", None),
        ("tags.missing NIN ['a']", None),
        ("version IN ['3']", None),
        ("version NIN ['3']", None),
        ("version IN [3, 'a']", Some(json!(true))),
        ("version IN ['a', 4]", None),
        ("version NIN [4, 5]", Some(json!(true))),
        ("version IN [3.0]", Some(json!(true))),
        ("statusReason IN [null]", Some(json!(true))),
        ("version IN []", Some(json!(false))),
        ("version NIN []", Some(json!(true))),
        ("tags.list IN [ ['a', 'b']]", None),
    ]);
    assert!(matches("deviceId IN ['dev1']", &twin));
    assert!(!matches("tags.weight NIN ['10']", &twin));
}

#[test]
fn arithmetic_on_numbers() {
    check_values(&[
        ("version + 1", Some(json!(4))),
        ("version - 5", Some(json!(-2))),
        ("version * 2", Some(json!(6))),
        ("7 / 2", Some(json!(3.5))),
        ("6 / 3", Some(json!(2))),
        ("7 % 3", Some(json!(1))),
        ("-7 % 3", Some(json!(-1))),
        ("7.5 % 2", Some(json!(1.5))),
        ("2 + 3 * 4", Some(json!(14))),
        ("(2 + 3) * 4", Some(json!(20))),
        ("10 - 4 - 3", Some(json!(3))),
        ("0x10 + 1", Some(json!(17))),
        ("1.5e1", Some(json!(15))),
        ("-(version)", Some(json!(-3))),
        ("properties.reported.temp * 2", Some(json!(43))),
        ("1 / 0", None),
        ("1 % 0", None),
        ("1.5 / 0", None),
        ("'a' + 1", None),
        ("'a' + 'b'", None),
        ("tags.missing + 1", None),
        ("-'a'", None),
        (
            "9223372036854775807 + 1",
            Some(json!(9_223_372_036_854_775_808.0)),
        ),
        ("-9223372036854775808 % -1", Some(json!(0))),
    ]);
    assert!(matches(
        "properties.reported.telemetryConfig.sendFrequencyInSecs / 60 = 5",
        &device_twin()
    ));
}

#[test]
fn type_functions_report_the_json_type() {
    let checks = [
        ("IS_NULL", [true, false, false, false, false, false, false]),
        ("IS_BOOL", [false, true, false, false, false, false, false]),
        (
            "IS_NUMBER",
            [false, false, true, false, false, false, false],
        ),
        (
            "IS_STRING",
            [false, false, false, true, false, false, false],
        ),
        ("IS_ARRAY", [false, false, false, false, true, false, false]),
        (
            "IS_OBJECT",
            [false, false, false, false, false, true, false],
        ),
        (
            "IS_PRIMITIVE",
            [true, true, true, true, false, false, false],
        ),
        ("IS_DEFINED", [true, true, true, true, true, true, false]),
    ];
    let arguments = [
        "statusReason",
        "capabilities.iotEdge",
        "version",
        "deviceId",
        "tags.list",
        "tags.location",
        "tags.missing",
    ];
    for (function, expected) in checks {
        for (argument, expected) in arguments.iter().zip(expected) {
            let expr = format!("{function}({argument})");
            assert_eq!(value_of(&expr), Some(json!(expected)), "{expr}");
        }
    }
    check_values(&[("is_array([1, 2])", Some(json!(true)))]);
}

#[test]
fn string_functions() {
    check_values(&[
        ("STARTSWITH(deviceId, 'dev')", Some(json!(true))),
        ("STARTS_WITH(deviceId, 'ev')", Some(json!(false))),
        ("startswith(deviceId, 'Dev')", Some(json!(false))),
        ("ENDSWITH(deviceId, 'v1')", Some(json!(true))),
        ("ENDS_WITH(deviceId, 'dev')", Some(json!(false))),
        ("CONTAINS(deviceId, 'ev')", Some(json!(true))),
        ("CONTAINS(deviceId, 'x')", Some(json!(false))),
        ("STARTSWITH(version, '3')", None),
        ("CONTAINS(deviceId, 1)", None),
        ("STARTSWITH(deviceId, '')", Some(json!(true))),
        ("LOWER('ÀbC')", Some(json!("àbc"))),
        ("UPPER('straße')", Some(json!("STRASSE"))),
        ("LOWER(5)", None),
        ("LENGTH('héllo😀')", Some(json!(6))),
        ("LENGTH('')", Some(json!(0))),
        ("LENGTH(tags.list)", None),
        ("SUBSTRING('hello', 1, 3)", Some(json!("ell"))),
        ("SUBSTRING('hello', 2)", Some(json!("llo"))),
        ("SUBSTRING('hello', -1, 2)", Some(json!("he"))),
        ("SUBSTRING('hello', 10)", Some(json!(""))),
        ("SUBSTRING('hello', 1, -1)", Some(json!(""))),
        ("SUBSTRING('héllo', 1, 1.9)", Some(json!("é"))),
        ("SUBSTRING(5, 1)", None),
        ("SUBSTRING('hello', '1')", None),
        ("SUBSTRING('hello', 1, 'x')", None),
        ("INDEX_OF('héllo', 'l')", Some(json!(2))),
        ("INDEX_OF('abc', 'z')", Some(json!(-1))),
        ("INDEX_OF('abc', '')", Some(json!(0))),
        ("INDEX_OF(1, 'a')", None),
        ("CONCAT('a', 'b', 'c')", Some(json!("abc"))),
        ("CONCAT(deviceId, '-', status)", Some(json!("dev1-enabled"))),
        ("CONCAT('a', 1)", None),
        ("CONCAT('a', tags.missing)", None),
    ]);
}

#[test]
fn math_functions() {
    check_values(&[
        ("ABS(-3)", Some(json!(3))),
        ("ABS(-2.5)", Some(json!(2.5))),
        (
            "ABS(-9223372036854775808)",
            Some(json!(9_223_372_036_854_775_808.0)),
        ),
        ("CEILING(1.2)", Some(json!(2))),
        ("CEILING(-1.2)", Some(json!(-1))),
        ("CEILING(4)", Some(json!(4))),
        ("FLOOR(1.8)", Some(json!(1))),
        ("FLOOR(-1.2)", Some(json!(-2))),
        ("SIGN(-4)", Some(json!(-1))),
        ("SIGN(0)", Some(json!(0))),
        ("SIGN(2.5)", Some(json!(1))),
        ("SQUARE(3)", Some(json!(9))),
        ("SQUARE(1.5)", Some(json!(2.25))),
        ("POWER(2, 10)", Some(json!(1024))),
        ("POWER(2, -1)", Some(json!(0.5))),
        ("POWER(4, 0.5)", Some(json!(2))),
        ("POWER(10, 400)", None),
        ("SQRT(16)", Some(json!(4))),
        ("SQRT(2)", Some(json!(std::f64::consts::SQRT_2))),
        ("SQRT(-1)", None),
        ("EXP(0)", Some(json!(1))),
        ("EXP(1)", Some(json!(std::f64::consts::E))),
        ("EXP(1000)", None),
        ("ABS('a')", None),
        ("FLOOR(tags.missing)", None),
        ("AS_NUMBER('42')", Some(json!(42))),
        ("AS_NUMBER('4.5e1')", Some(json!(45))),
        ("AS_NUMBER(' -1.25 ')", Some(json!(-1.25))),
        ("AS_NUMBER('abc')", None),
        ("AS_NUMBER('0x10')", None),
        ("AS_NUMBER(7)", Some(json!(7))),
        ("AS_NUMBER(true)", None),
    ]);
}

#[test]
fn quoted_names_reach_properties_with_special_characters() {
    let twin = device_twin();
    assert!(matches("tags.[[group]] = 7", &twin));
    assert!(matches("tags.group = 7", &twin));
    assert!(matches("tags.[[a.b c]] = 1", &twin));
    assert!(matches("tags.order = 2", &twin));
    assert!(matches("[[tags]].[[order]] = 2", &twin));
    assert!(matches("tags.list[1] = 'b'", &twin));
    assert!(!matches("IS_DEFINED(tags.list[5])", &twin));
}

#[test]
fn system_names_match_in_any_case_and_user_names_exactly() {
    let twin = device_twin();
    assert!(matches("DEVICEID = 'dev1'", &twin));
    assert!(matches("Properties.Reported.temp = 21.5", &twin));
    assert!(matches("CAPABILITIES.IOTEDGE = false", &twin));
    assert!(matches("X509THUMBPRINT.PRIMARYTHUMBPRINT = null", &twin));
    assert!(matches("devices.deviceId = 'dev1'", &twin));
    assert!(matches("DEVICES.Tags.site = 'a'", &twin));
    assert!(!matches("tags.SITE = 'a'", &twin));
    assert!(!matches("properties.reported.TEMP = 21.5", &twin));
}

#[test]
fn metadata_and_version_paths() {
    let twin = device_twin();
    assert!(matches(
        "properties.reported.$metadata.temp.$lastUpdated = '2024-05-01T10:05:00.0000000Z'",
        &twin
    ));
    assert!(matches(
        "properties.reported.$metadata.temp.$lastUpdated > '2024-05-01T10:00:00Z'",
        &twin
    ));
    assert!(matches("properties.desired.$version = 2", &twin));
    assert!(matches("Properties.Desired.$VERSION = 2", &twin));
    assert!(matches(
        "properties.desired.$metadata.foo.$lastUpdatedVersion = 2",
        &twin
    ));
    assert!(matches(
        "properties.reported.$version < properties.desired.$version",
        &twin
    ));
}

#[test]
fn module_twins_configurations_and_capabilities() {
    let module = module_twin();
    let query = parse(
        "SELECT * FROM devices.modules WHERE devices.modules.moduleId = '$edgeAgent' AND configurations.[[cfg-1]].status = 'Applied' AND properties.desired.$version = properties.reported.lastDesiredVersion AND properties.reported.lastDesiredStatus.code = 200 AND capabilities.iotEdge = true",
    )
    .unwrap();
    assert!(query.matches(&module));
    assert!(!query.matches(&device_twin()));
    let projection = parse("SELECT deviceId, moduleId FROM devices.modules WHERE properties.reported.lastDesiredStatus.code = 200").unwrap();
    assert_eq!(
        projection.project(&module),
        json!({"deviceId": "edge1", "moduleId": "$edgeAgent"})
    );
}

#[test]
fn configuration_statuses_compare_ignoring_case() {
    let twin = json!({"deviceId": "d", "configurations": {"cfg-1": {"status": "applied"}, "cfg-2": {"status": "targeted"}}});
    for (text, expected) in [
        ("configurations.[[cfg-1]].status = 'Applied'", true),
        ("configurations.[[cfg-1]].status = 'applied'", true),
        ("'APPLIED' = configurations.[[cfg-1]].status", true),
        (
            "configurations.[[cfg-2]].status IN ['Applied', 'Targeted']",
            true,
        ),
        ("configurations.[[cfg-2]].status = 'Applied'", false),
        ("configurations.[[cfg-3]].status = 'Applied'", false),
        // Elsewhere strings stay case-sensitive.
        ("deviceId = 'D'", false),
    ] {
        let query = parse(&format!("SELECT * FROM devices WHERE {text}")).unwrap();
        assert_eq!(query.matches(&twin), expected, "{text}");
    }
}

#[test]
fn projections_keep_select_order_canonical_names_and_leave_out_undefined() {
    let twin = device_twin();
    let query = parse(
        "SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected'",
    )
    .unwrap();
    assert!(query.matches(&twin));
    let row = query.project(&twin);
    assert_eq!(
        row,
        json!({"deviceId": "dev1", "lastActivityTime": "2024-05-01T10:00:00.0000000Z"})
    );
    let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["deviceId", "lastActivityTime"]);
    let query = parse(
        "SELECT tags.location AS loc, tags.missing, tags.list, version + 1, UPPER(deviceId) AS up FROM devices",
    )
    .unwrap();
    assert_eq!(
        query.project(&twin),
        json!({"loc": {"region": "US", "plant": "Redmond43"}, "list": ["a", "b"], "$1": 4, "up": "DEV1"})
    );
    let star = parse("SELECT * FROM devices").unwrap();
    assert_eq!(star.project(&twin), twin);
}

#[test]
fn device_jobs_filter_on_job_fields() {
    let job = device_job();
    let query = parse(
        "SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'dev1' AND devices.jobs.jobType = 'scheduleDeviceMethod' AND devices.jobs.status = 'completed' AND devices.jobs.createdTimeUtc > '2024-01-01'",
    )
    .unwrap();
    assert!(query.matches(&job));
    assert_eq!(query.project(&job), job);
    assert_eq!(query.result_item_type(), "deviceJob");
    let outcome =
        parse("SELECT * FROM devices.jobs WHERE outcome.deviceMethodResponse.payload.result = 'rebooted' AND error.code = ''")
            .unwrap();
    assert!(outcome.matches(&job));
    assert!(
        !parse("SELECT * FROM devices.jobs WHERE jobId = 'other'")
            .unwrap()
            .matches(&job)
    );
}

/// Twins for the aggregate tests: `properties.reported.telemetryConfig.status` of Azure's GROUP
/// BY example (three Success, two Pending, one Error), plus a temperature.
fn fleet() -> Vec<Value> {
    let statuses = [
        "Success", "Pending", "Success", "Error", "Pending", "Success",
    ];
    let temperatures = [
        json!(20),
        json!(22.5),
        json!(18),
        json!(30),
        json!(21),
        json!(null),
    ];
    statuses
        .iter()
        .zip(temperatures)
        .enumerate()
        .map(|(index, (status, temp))| {
            json!({
                "deviceId": format!("dev{index}"),
                "tags": {"site": if index % 2 == 0 { "a" } else { "b" }},
                "properties": {
                    "desired": {},
                    "reported": {"temp": temp, "telemetryConfig": {"status": status}}
                }
            })
        })
        .collect()
}

fn answer(text: &str, documents: &[Value]) -> Vec<Value> {
    let query = parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
    let mut aggregator = query.aggregator();
    for document in documents {
        if query.matches(document) {
            aggregator.push(document);
        }
    }
    aggregator.finish()
}

#[test]
fn every_aggregate_over_the_whole_collection() {
    let rows = answer(
        "SELECT COUNT() AS n, SUM(properties.reported.temp) AS total, AVG(properties.reported.temp) AS mean, MIN(properties.reported.temp) AS low, MAX(properties.reported.temp) AS high FROM devices WHERE IS_NUMBER(properties.reported.temp)",
        &fleet(),
    );
    assert_eq!(
        rows,
        [json!({"n": 5, "total": 111.5, "mean": 22.3, "low": 18, "high": 30})]
    );
    // COUNT() as in query-twins.md; unnamed aggregates are $1, $2, ...
    assert_eq!(
        answer(
            "SELECT COUNT() as totalNumberOfDevices FROM devices",
            &fleet()
        ),
        [json!({"totalNumberOfDevices": 6})]
    );
    assert_eq!(
        answer("SELECT COUNT(), MAX(deviceId) FROM devices", &fleet()),
        [json!({"$1": 6, "$2": "dev5"})]
    );
}

#[test]
fn aggregates_without_group_by_answer_one_row_even_for_no_documents() {
    assert_eq!(
        answer(
            "SELECT COUNT() AS n, SUM(tags.x) AS s, AVG(tags.x) AS a, MIN(tags.x) AS lo, MAX(tags.x) AS hi FROM devices",
            &[]
        ),
        [json!({"n": 0, "s": 0})]
    );
    assert!(answer("SELECT TOP 0 COUNT() AS n FROM devices", &fleet()).is_empty());
}

#[test]
fn sum_and_avg_skip_undefined_and_give_up_on_other_types() {
    let documents = [
        json!({"tags": {"x": 1}}),
        json!({"tags": {}}),
        json!({"tags": {"x": 2}}),
    ];
    assert_eq!(
        answer(
            "SELECT SUM(tags.x) AS s, AVG(tags.x) AS a FROM devices",
            &documents
        ),
        [json!({"s": 3, "a": 1.5})]
    );
    let mixed = [json!({"tags": {"x": 1}}), json!({"tags": {"x": "2"}})];
    assert_eq!(
        answer(
            "SELECT SUM(tags.x) AS s, AVG(tags.x) AS a, COUNT() AS n FROM devices",
            &mixed
        ),
        [json!({"n": 2})]
    );
    let big = [json!({"tags": {"x": i64::MAX}}), json!({"tags": {"x": 1}})];
    assert_eq!(
        answer("SELECT SUM(tags.x) AS s FROM devices", &big),
        [json!({"s": 9_223_372_036_854_775_808.0})]
    );
}

#[test]
fn min_and_max_follow_the_type_order_over_primitives() {
    let documents: Vec<Value> = [
        json!(3),
        json!("a"),
        json!(true),
        json!(null),
        json!({"o": 1}),
        json!([1]),
    ]
    .into_iter()
    .map(|x| json!({"tags": {"x": x}}))
    .collect();
    assert_eq!(
        answer(
            "SELECT MIN(tags.x) AS lo, MAX(tags.x) AS hi FROM devices",
            &documents
        ),
        [json!({"lo": null, "hi": "a"})]
    );
    let numbers: Vec<Value> = [json!(2.5), json!(-1), json!(10)]
        .into_iter()
        .map(|x| json!({"tags": {"x": x}}))
        .collect();
    assert_eq!(
        answer(
            "SELECT MIN(tags.x) AS lo, MAX(tags.x) AS hi FROM devices",
            &numbers
        ),
        [json!({"lo": -1, "hi": 10})]
    );
}

#[test]
fn group_by_the_docs_example_with_several_groups() {
    let text = "SELECT properties.reported.telemetryConfig.status AS status,\n    COUNT() AS numberOfDevices\n  FROM devices\n  GROUP BY properties.reported.telemetryConfig.status";
    // Groups in the order their first document came.
    assert_eq!(
        answer(text, &fleet()),
        [
            json!({"status": "Success", "numberOfDevices": 3}),
            json!({"status": "Pending", "numberOfDevices": 2}),
            json!({"status": "Error", "numberOfDevices": 1}),
        ]
    );
    // The order of Azure's sample answer.
    assert_eq!(
        answer(&format!("{text} ORDER BY numberOfDevices DESC"), &fleet()),
        [
            json!({"status": "Success", "numberOfDevices": 3}),
            json!({"status": "Pending", "numberOfDevices": 2}),
            json!({"status": "Error", "numberOfDevices": 1}),
        ]
    );
    assert_eq!(
        answer(
            &format!("{text} ORDER BY properties.reported.telemetryConfig.status"),
            &fleet()
        ),
        [
            json!({"status": "Error", "numberOfDevices": 1}),
            json!({"status": "Pending", "numberOfDevices": 2}),
            json!({"status": "Success", "numberOfDevices": 3}),
        ]
    );
}

#[test]
fn group_by_keys_are_type_strict_and_undefined_is_a_group() {
    let documents: Vec<Value> = [json!(1), json!(1.0), json!("1"), json!(null)]
        .into_iter()
        .map(|x| json!({"tags": {"x": x}}))
        .chain([json!({"tags": {}}), json!({"tags": {}})])
        .collect();
    assert_eq!(
        answer(
            "SELECT tags.x, COUNT() AS n FROM devices GROUP BY tags.x",
            &documents
        ),
        [
            json!({"x": 1, "n": 2}),
            json!({"x": "1", "n": 1}),
            json!({"x": null, "n": 1}),
            json!({"n": 2}),
        ]
    );
}

#[test]
fn group_by_several_paths_with_aggregates() {
    let rows = answer(
        "SELECT tags.site AS site, properties.reported.telemetryConfig.status AS status, COUNT() AS n, MAX(properties.reported.temp) AS hottest FROM devices GROUP BY tags.site, properties.reported.telemetryConfig.status ORDER BY site, status",
        &fleet(),
    );
    assert_eq!(
        rows,
        [
            json!({"site": "a", "status": "Pending", "n": 1, "hottest": 21}),
            json!({"site": "a", "status": "Success", "n": 2, "hottest": 20}),
            json!({"site": "b", "status": "Error", "n": 1, "hottest": 30}),
            json!({"site": "b", "status": "Pending", "n": 1, "hottest": 22.5}),
            // MAX over a single null is null: null is a primitive value.
            json!({"site": "b", "status": "Success", "n": 1, "hottest": null}),
        ]
    );
    // A GROUP BY without aggregates lists the distinct values.
    assert_eq!(
        answer("SELECT tags.site FROM devices GROUP BY tags.site", &fleet()),
        [json!({"site": "a"}), json!({"site": "b"})]
    );
}

#[test]
fn order_by_sorts_mixed_types_in_the_documented_order() {
    let values = [
        json!("a"),
        json!(10),
        json!({"o": 1}),
        json!(true),
        json!(null),
        json!("B"),
        json!(-1),
        json!([1]),
        json!(false),
        json!(2.5),
    ];
    let mut documents: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(index, x)| json!({"deviceId": format!("d{index}"), "tags": {"v": x}}))
        .collect();
    documents.push(json!({"deviceId": "missing", "tags": {}}));
    let ids = |text: &str| -> Vec<String> {
        answer(text, &documents)
            .into_iter()
            .map(|row| row["deviceId"].as_str().unwrap().to_owned())
            .collect()
    };
    // undefined < null < false < true < numbers < strings (code point: 'B' < 'a') < arrays < objects
    assert_eq!(
        ids("SELECT deviceId FROM devices ORDER BY tags.v"),
        [
            "missing", "d4", "d8", "d3", "d6", "d9", "d1", "d5", "d0", "d7", "d2"
        ]
    );
    assert_eq!(
        ids("SELECT deviceId FROM devices ORDER BY tags.v DESC"),
        [
            "d2", "d7", "d0", "d5", "d1", "d9", "d6", "d3", "d8", "d4", "missing"
        ]
    );
    assert_eq!(
        ids("SELECT TOP 3 deviceId FROM devices ORDER BY tags.v DESC"),
        ["d2", "d7", "d0"]
    );
}

#[test]
fn order_by_several_keys_is_stable_and_top_applies_last() {
    let documents: Vec<Value> = (0..200)
        .map(|index| json!({"deviceId": format!("dev{index:03}"), "tags": {"bucket": index % 3, "n": index}}))
        .collect();
    let rows = answer(
        "SELECT TOP 5 deviceId FROM devices ORDER BY tags.bucket DESC, tags.n DESC",
        &documents,
    );
    assert_eq!(
        rows,
        ["dev197", "dev194", "dev191", "dev188", "dev185"].map(|id| json!({"deviceId": id}))
    );
    // Ties keep the pushed order.
    let rows = answer(
        "SELECT TOP 4 deviceId FROM devices ORDER BY tags.bucket",
        &documents,
    );
    assert_eq!(
        rows,
        ["dev000", "dev003", "dev006", "dev009"].map(|id| json!({"deviceId": id}))
    );
    // Without ORDER BY, TOP keeps the first documents.
    let rows = answer("SELECT TOP 2 * FROM devices", &documents);
    assert_eq!(rows, documents[..2]);
    assert!(answer("SELECT TOP 0 * FROM devices", &documents).is_empty());
    // SELECT * ordered by a document path.
    let rows = answer(
        "SELECT TOP 1 * FROM devices ORDER BY tags.n DESC",
        &documents,
    );
    assert_eq!(rows, [documents[199].clone()]);
}

#[test]
fn project_of_an_aggregate_query_is_the_row_of_one_document() {
    let query = parse("SELECT COUNT() AS n, MAX(version) AS v FROM devices").unwrap();
    assert_eq!(query.project(&device_twin()), json!({"n": 1, "v": 3}));
}
