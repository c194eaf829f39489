use std::collections::{BTreeMap, BTreeSet};

use fleethub_protocol::configurations::{ConfigurationContent, ConfigurationStatus};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::twin::{TwinDocument, TwinLimits};

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

fn id(text: &str) -> ConfigurationId {
    ConfigurationId::new(text).expect("valid test id")
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

fn device_content(value: Value) -> ConfigurationContent {
    ConfigurationContent {
        device_content: Some(object(value)),
        ..ConfigurationContent::default()
    }
}

fn spec(content: Value) -> ConfigurationSpec {
    ConfigurationSpec {
        content: Some(device_content(content)),
        target_condition: "tags.env = 'prod'".into(),
        priority: 10,
        ..ConfigurationSpec::default()
    }
}

fn winner_of(name: &str, created: OffsetDateTime, content: Value) -> Winner {
    Winner {
        id: id(name),
        created_time: created,
        content: DesiredContent::parse(&object(content)).expect("valid content"),
    }
}

fn assignment(targeted: &[&str], winner: Option<Winner>) -> Assignment {
    Assignment {
        targeted: targeted.iter().map(|name| id(name)).collect(),
        winner,
    }
}

fn twin_with_desired(desired: Value) -> TwinDocument {
    let mut twin = TwinDocument::new(NOW);
    twin.apply_desired_patch(&desired, NOW, &TwinLimits::default())
        .expect("desired written");
    twin
}

#[test]
fn ids_are_lowercase_digits_and_a_few_specials_up_to_128() {
    for valid in ["cfg1", "firmware-update", "a+b%c_d*e!f'g", &"x".repeat(128)] {
        assert!(ConfigurationId::new(valid).is_ok(), "{valid:?}");
    }
    let cases = [
        ("", ConfigurationIdError::Empty),
        (
            "Cfg1",
            ConfigurationIdError::InvalidCharacter {
                character: 'C',
                position: 0,
            },
        ),
        (
            "my config",
            ConfigurationIdError::InvalidCharacter {
                character: ' ',
                position: 2,
            },
        ),
        (
            "a/b",
            ConfigurationIdError::InvalidCharacter {
                character: '/',
                position: 1,
            },
        ),
        (
            "a.b",
            ConfigurationIdError::InvalidCharacter {
                character: '.',
                position: 1,
            },
        ),
        (
            "ü",
            ConfigurationIdError::InvalidCharacter {
                character: 'ü',
                position: 0,
            },
        ),
    ];
    for (text, error) in cases {
        assert_eq!(ConfigurationId::new(text), Err(error), "{text:?}");
    }
    assert_eq!(
        ConfigurationId::new("x".repeat(129)),
        Err(ConfigurationIdError::TooLong { length: 129 })
    );
}

#[test]
fn content_paths_are_keys_below_desired_properties() {
    let content = DesiredContent::parse(&object(json!({
        "properties.desired.chiller-water": {"temperature": 66, "pressure": 28},
        "properties.desired.a.b.c": 1,
        "properties.desired.gone": null,
    })))
    .expect("valid");
    assert_eq!(
        content.entries(),
        &[
            (
                vec!["chiller-water".to_owned()],
                json!({"temperature": 66, "pressure": 28})
            ),
            (
                vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
                json!(1)
            ),
            (vec!["gone".to_owned()], Value::Null),
        ]
    );
    let whole = DesiredContent::parse(&object(
        json!({"properties.desired": {"x": 1, "y": {"z": 2}}}),
    ))
    .expect("whole section");
    assert_eq!(
        whole.paths(),
        vec![vec!["x".to_owned()], vec!["y".to_owned()]]
    );
}

#[test]
fn malformed_content_is_refused_with_the_reason() {
    let cases = [
        (
            json!({"tags.env": "x"}),
            "a path starts with properties.desired",
        ),
        (
            json!({"properties.reported.x": 1}),
            "a path starts with properties.desired",
        ),
        (
            json!({"properties.desiredx": 1}),
            "a path starts with properties.desired.",
        ),
        (json!({"properties.desired": 5}), "must be an object"),
        (json!({"properties.desired..x": 1}), "a key is empty"),
        (json!({"properties.desired.$version": 1}), "`$` is reserved"),
        (json!({"properties.desired.a b": 1}), "contains ' '"),
        (
            json!({"properties.desired.a": 1, "properties.desired.a.b": 2}),
            "overlap",
        ),
    ];
    for (content, reason) in cases {
        let error = DesiredContent::parse(&object(content.clone())).expect_err("refused");
        let ConfigurationError::InvalidContent(message) = &error else {
            panic!("{content}: {error:?}");
        };
        assert!(message.contains(reason), "{content}: {message}");
    }
}

#[test]
fn content_kinds_are_device_or_module_and_edge_deployments_are_refused() {
    let module = ConfigurationContent {
        module_content: Some(object(json!({"properties.desired.a": 1}))),
        ..ConfigurationContent::default()
    };
    assert_eq!(
        parse_content(&module).expect("module").0,
        ConfigurationKind::Module
    );
    assert_eq!(
        parse_content(&device_content(json!({}))).expect("device").0,
        ConfigurationKind::Device
    );
    let edge = ConfigurationContent {
        modules_content: Some(object(json!({"$edgeAgent": {}}))),
        ..ConfigurationContent::default()
    };
    assert!(
        matches!(parse_content(&edge), Err(ConfigurationError::InvalidContent(m)) if m.contains("IoT Edge"))
    );
    let both = ConfigurationContent {
        device_content: Some(Map::new()),
        module_content: Some(Map::new()),
        modules_content: None,
    };
    assert!(parse_content(&both).is_err());
    assert!(parse_content(&ConfigurationContent::default()).is_err());
}

#[test]
fn creation_fills_defaults_and_checks_the_rules() {
    let configuration =
        Configuration::create(id("cfg1"), spec(json!({"properties.desired.a": 1})), NOW)
            .expect("created");
    assert_eq!(configuration.schema_version, DEFAULT_SCHEMA_VERSION);
    assert_eq!(configuration.kind, ConfigurationKind::Device);
    assert_eq!(configuration.etag(), "MQ==");
    assert_eq!(configuration.created_time, NOW);
    assert_eq!(configuration.last_updated_time, NOW);

    let mut five = spec(json!({}));
    five.metric_queries = (0..5)
        .map(|n| (format!("m{n}"), "SELECT deviceId FROM devices".to_owned()))
        .collect();
    assert!(Configuration::create(id("five"), five.clone(), NOW).is_ok());
    let mut six = five;
    six.metric_queries
        .insert("m5".into(), "SELECT deviceId FROM devices".into());
    assert_eq!(
        Configuration::create(id("six"), six, NOW),
        Err(ConfigurationError::TooManyMetrics { count: 6 })
    );

    let mut negative = spec(json!({}));
    negative.priority = -1;
    assert_eq!(
        Configuration::create(id("neg"), negative, NOW),
        Err(ConfigurationError::InvalidPriority(-1))
    );
    let mut no_content = spec(json!({}));
    no_content.content = None;
    assert!(matches!(
        Configuration::create(id("empty"), no_content, NOW),
        Err(ConfigurationError::InvalidContent(_))
    ));
    let mut label = spec(json!({}));
    label.labels = BTreeMap::from([("$reserved".into(), "x".into())]);
    assert!(matches!(
        Configuration::create(id("label"), label, NOW),
        Err(ConfigurationError::InvalidLabel(_))
    ));
}

#[test]
fn content_is_immutable_and_the_rest_can_change() {
    let mut configuration =
        Configuration::create(id("cfg1"), spec(json!({"properties.desired.a": 1})), NOW)
            .expect("created");
    let later = datetime!(2026-05-01 11:00 UTC);

    let changed_content = spec(json!({"properties.desired.a": 2}));
    assert_eq!(
        configuration.clone().update(changed_content, later),
        Err(ConfigurationError::ImmutableContent)
    );

    let mut update = spec(json!({"properties.desired.a": 1}));
    update.target_condition = "tags.env = 'test'".into();
    update.priority = 20;
    update.labels = BTreeMap::from([("Version".into(), "2".into())]);
    update.metric_queries = BTreeMap::from([("m".into(), "SELECT deviceId FROM devices".into())]);
    update.schema_version = Some("2.0".into());
    configuration.update(update, later).expect("updated");
    assert_eq!(configuration.target_condition, "tags.env = 'test'");
    assert_eq!(configuration.priority, 20);
    assert_eq!(configuration.labels.len(), 1);
    assert_eq!(configuration.metric_queries.len(), 1);
    assert_eq!(
        configuration.schema_version, DEFAULT_SCHEMA_VERSION,
        "not updatable"
    );
    assert_eq!(configuration.created_time, NOW);
    assert_eq!(configuration.last_updated_time, later);
    assert_eq!(configuration.etag(), "Mg==");

    // An update may leave the content out.
    let mut without = spec(json!({}));
    without.content = None;
    configuration
        .update(without, later)
        .expect("content omitted");
    assert_eq!(
        configuration.desired_content().paths(),
        vec![vec!["a".to_owned()]]
    );
}

#[test]
fn the_highest_priority_wins_then_the_newest_then_the_first_id() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let early = datetime!(2026-01-01 0:00 UTC);
    let late = datetime!(2026-02-01 0:00 UTC);
    let candidate = |id, priority, created_time| Candidate {
        id,
        priority,
        created_time,
    };
    assert_eq!(winner(&[]), None);
    assert_eq!(
        winner(&[
            candidate(&a, 1, late),
            candidate(&b, 5, early),
            candidate(&c, 3, late)
        ]),
        Some(&b)
    );
    assert_eq!(
        winner(&[candidate(&a, 5, early), candidate(&b, 5, late)]),
        Some(&b),
        "same priority: the one created most recently"
    );
    assert_eq!(
        winner(&[
            candidate(&c, 5, late),
            candidate(&a, 5, late),
            candidate(&b, 5, late)
        ]),
        Some(&a),
        "a full tie goes to the id that sorts first"
    );
}

#[test]
fn desired_patches_replace_paths_and_remove_what_the_previous_configuration_wrote() {
    let current = object(
        json!({"fw": {"version": "1", "url": "u", "extra": true}, "keep": 1, "old": {"x": 1, "y": 2}}),
    );
    let content = DesiredContent::parse(&object(json!({
        "properties.desired.fw": {"version": "2", "url": "u"},
        "properties.desired.new.deep": {"n": null, "m": 1},
        "properties.desired.keep": null,
    })))
    .expect("content");
    let patch = desired_patch(&current, &[vec!["old".into(), "x".into()]], &content);
    assert_eq!(
        Value::Object(patch),
        json!({
            "fw": {"version": "2", "extra": null},
            "keep": null,
            "old": {"x": null},
            "new": {"deep": {"m": 1}},
        })
    );
    // Already there: nothing to write.
    let settled = object(json!({"a": {"b": 1}}));
    let same =
        DesiredContent::parse(&object(json!({"properties.desired.a.b": 1}))).expect("content");
    assert!(desired_patch(&settled, &[], &same).is_empty());
}

#[test]
fn assigning_a_winner_writes_its_content_once_and_records_statuses() {
    let mut twin = twin_with_desired(json!({"other": 1}));
    let version = twin.desired_version();
    let first = assignment(
        &["cfg1", "cfg2"],
        Some(winner_of(
            "cfg2",
            NOW,
            json!({"properties.desired.fw": "2.0"}),
        )),
    );
    let assigned = assign(&mut twin, &first, NOW, &TwinLimits::default()).expect("assigned");
    assert!(assigned.changed);
    assert_eq!(
        assigned.desired_patch_for_device,
        Some(json!({"fw": "2.0", "$version": version + 1}))
    );
    assert_eq!(twin.desired_properties().get("fw"), Some(&json!("2.0")));
    assert_eq!(
        twin.configurations().status(&id("cfg2")),
        Some(ConfigurationStatus::Applied)
    );
    assert_eq!(
        twin.configurations().status(&id("cfg1")),
        Some(ConfigurationStatus::Targeted)
    );
    assert_eq!(twin.configurations().status(&id("cfg3")), None);
    assert_eq!(
        twin.configurations().to_json(),
        json!({"cfg1": {"status": "targeted"}, "cfg2": {"status": "applied"}})
    );

    // The same assignment again changes nothing, even after a service overrode the value.
    twin.apply_desired_patch(&json!({"fw": "manual"}), NOW, &TwinLimits::default())
        .expect("override");
    let before = twin.clone();
    let again = assign(&mut twin, &first, NOW, &TwinLimits::default()).expect("assigned");
    assert!(!again.changed);
    assert_eq!(again.desired_patch_for_device, None);
    assert_eq!(twin, before);

    // A status-only change (cfg1 no longer targets) is a change without a desired write.
    let fewer = assignment(&["cfg2"], first.winner.clone());
    let assigned = assign(&mut twin, &fewer, NOW, &TwinLimits::default()).expect("assigned");
    assert!(assigned.changed);
    assert_eq!(assigned.desired_patch_for_device, None);
    assert_eq!(twin.desired_version(), before.desired_version());
    assert_eq!(
        twin.version(),
        before.version(),
        "statuses are not a twin write"
    );
}

#[test]
fn a_new_winner_replaces_the_previous_settings_and_no_winner_removes_them() {
    let limits = TwinLimits::default();
    let mut twin = TwinDocument::new(NOW);
    let low = winner_of(
        "low",
        NOW,
        json!({"properties.desired.fw": {"v": 1, "url": "a"}, "properties.desired.low-only": true}),
    );
    assign(
        &mut twin,
        &assignment(&["low"], Some(low.clone())),
        NOW,
        &limits,
    )
    .expect("low");

    let high = winner_of("high", NOW, json!({"properties.desired.fw": {"v": 2}}));
    let assigned = assign(
        &mut twin,
        &assignment(&["high", "low"], Some(high)),
        NOW,
        &limits,
    )
    .expect("high takes over");
    let patch = assigned.desired_patch_for_device.expect("a desired patch");
    assert_eq!(patch["fw"], json!({"v": 2, "url": null}));
    assert_eq!(patch["low-only"], Value::Null);
    assert_eq!(
        Value::Object(twin.desired_properties().clone()),
        json!({"fw": {"v": 2}})
    );

    // High stops targeting: low applies again.
    let assigned =
        assign(&mut twin, &assignment(&["low"], Some(low)), NOW, &limits).expect("fallback");
    assert!(assigned.desired_patch_for_device.is_some());
    assert_eq!(
        Value::Object(twin.desired_properties().clone()),
        json!({"fw": {"v": 1, "url": "a"}, "low-only": true})
    );

    // Nothing targets: the settings go.
    let assigned = assign(&mut twin, &Assignment::default(), NOW, &limits).expect("none");
    assert!(assigned.changed);
    assert_eq!(twin.desired_properties(), &Map::new());
    assert!(twin.configurations().is_empty());
}

#[test]
fn a_configuration_created_again_with_the_same_id_is_applied_again() {
    let limits = TwinLimits::default();
    let mut twin = TwinDocument::new(NOW);
    let first = winner_of("cfg", NOW, json!({"properties.desired.a": 1}));
    assign(&mut twin, &assignment(&["cfg"], Some(first)), NOW, &limits).expect("first");
    let later = datetime!(2026-05-02 10:00 UTC);
    let second = winner_of("cfg", later, json!({"properties.desired.b": 2}));
    let assigned = assign(
        &mut twin,
        &assignment(&["cfg"], Some(second)),
        later,
        &limits,
    )
    .expect("second");
    assert!(assigned.desired_patch_for_device.is_some());
    assert_eq!(
        Value::Object(twin.desired_properties().clone()),
        json!({"b": 2})
    );
}

#[test]
fn a_refused_write_changes_nothing() {
    let limits = TwinLimits::default();
    let mut twin = TwinDocument::new(NOW);
    let huge = "x".repeat(5000);
    let too_long = winner_of("cfg", NOW, json!({"properties.desired.a": huge}));
    let before = twin.clone();
    assign(
        &mut twin,
        &assignment(&["cfg"], Some(too_long)),
        NOW,
        &limits,
    )
    .expect_err("string too long");
    assert_eq!(twin, before);
}

#[test]
fn twin_bookkeeping_survives_the_storage_form() {
    let mut twin = TwinDocument::new(NOW);
    let winner = winner_of("cfg2", NOW, json!({"properties.desired.fw.v": 1}));
    assign(
        &mut twin,
        &assignment(&["cfg1", "cfg2"], Some(winner)),
        NOW,
        &TwinLimits::default(),
    )
    .expect("assigned");
    let stored = serde_json::to_string(&twin).expect("serialises");
    assert!(
        stored.contains(r#""configurations":{"targeted":["cfg1","cfg2"],"applied":{"id":"cfg2""#),
        "{stored}"
    );
    let back: TwinDocument = serde_json::from_str(&stored).expect("reads back");
    assert_eq!(back, twin);
    // A twin without configurations stores no such field.
    let plain = serde_json::to_string(&TwinDocument::new(NOW)).expect("serialises");
    assert!(!plain.contains("configurations"), "{plain}");
    let targeted: BTreeSet<ConfigurationId> = back.configurations().targeted().clone();
    assert_eq!(targeted.len(), 2);
}
