//! Automatic device management against a real hub: configurations over REST, their content reaching device
//! twins and connected devices, priorities, twins that stop matching, devices created later, metrics, the
//! REST rules (immutable content, etags, ids, limits, rights), and a restart.

use std::time::{Duration, Instant};

use fleethub_core::identity::IdentityKey;
use fleethub_device::{DesiredPatchStream, DeviceClient, DeviceClientOptions};
use fleethub_protocol::ids::IfMatch;
use fleethub_store::{DeviceRecord, TwinChange};
use fleethub_testkit::{Reply, ServiceApi, TestHub, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The bound the engine is held to: a trigger is acted on within this.
const BOUND: Duration = Duration::from_secs(1);

async fn put(api: &ServiceApi, id: &str, if_match: Option<&str>, body: Value) -> Reply {
    let headers: Vec<(&str, &str)> = if_match.map(|tag| ("if-match", tag)).into_iter().collect();
    api.send(
        Method::PUT,
        &format!("/configurations/{id}"),
        &headers,
        Some(body),
    )
    .await
}

async fn create(api: &ServiceApi, id: &str, body: Value) -> Value {
    let reply = put(api, id, None, body).await;
    assert_eq!(reply.status, StatusCode::OK, "create {id}: {}", reply.body);
    reply.body
}

async fn get(api: &ServiceApi, path: &str) -> Reply {
    api.send(Method::GET, path, &[], None).await
}

fn firmware(id: &str, priority: i64, target: &str, version: &str) -> Value {
    json!({
        "id": id,
        "content": {"deviceContent": {"properties.desired.firmware": {"version": version}}},
        "targetCondition": target,
        "priority": priority,
        "labels": {"purpose": "firmware"},
    })
}

async fn set_tags(hub: &TestHub, device: &str, tags: Value) {
    hub.hub
        .services
        .update_twin(
            &key(device),
            TwinChange::ServicePatch(json!({ "tags": tags })),
            IfMatch::Any,
        )
        .await
        .expect("tags written");
}

fn key(device: &str) -> IdentityKey {
    IdentityKey::device(device.parse().expect("valid id"))
}

async fn twin(hub: &TestHub, device: &str) -> Value {
    hub.hub
        .services
        .get_identity(&key(device))
        .await
        .expect("twin exists")
        .twin_json()
}

/// Waits until the engine acted on everything so far, within the bound.
async fn settled(hub: &TestHub) {
    tokio::time::timeout(BOUND, hub.hub.services.configurations_settled())
        .await
        .expect("configurations settle within the bound");
}

fn status(twin: &Value, configuration: &str) -> Option<String> {
    twin.pointer(&format!("/configurations/{configuration}/status"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn system_metric(configuration: &Value, name: &str) -> u64 {
    configuration["systemMetrics"]["results"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {configuration}"))
}

async fn device_client(hub: &TestHub, record: &DeviceRecord) -> DeviceClient {
    let key = record
        .identity
        .authentication
        .primary_key
        .as_deref()
        .expect("SAS identity");
    let connection_string = format!(
        "HostName=localhost;DeviceId={};SharedAccessKey={key}",
        record.key.device_id
    );
    let options = DeviceClientOptions::default()
        .with_ca_pem(hub.hub.ca_pem.clone())
        .with_port(hub.hub.mqtt_address.port());
    tokio::time::timeout(WAIT, DeviceClient::connect(&connection_string, options))
        .await
        .expect("connected within the wait")
        .expect("the hub accepts the device")
}

/// The next desired item carrying `firmware`, within `within`.
async fn next_firmware(patches: &mut DesiredPatchStream, within: Duration) -> Value {
    tokio::time::timeout(within, async {
        loop {
            let item = patches.next().await.expect("the stream is open");
            if let Some(firmware) = item.get("firmware") {
                return firmware.clone();
            }
        }
    })
    .await
    .expect("a desired patch with firmware in time")
}

#[tokio::test]
async fn matching_devices_get_the_content_and_show_applied() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let connected = hub.create_device("prod-1").await;
    hub.create_device("prod-2").await;
    hub.create_device("test-1").await;
    set_tags(&hub, "prod-1", json!({"env": "prod"})).await;
    set_tags(&hub, "prod-2", json!({"env": "prod"})).await;
    set_tags(&hub, "test-1", json!({"env": "test"})).await;
    let client = device_client(&hub, &connected).await;
    let mut patches = client.desired_patches().await.expect("desired stream");

    let mut body = firmware("prod-fw", 10, "tags.env = 'prod'", "2.0");
    body["metrics"] = json!({"queries": {
        "current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.0'",
        "applied-by-query": "SELECT deviceId FROM devices WHERE configurations.[[prod-fw]].status = 'Applied'",
    }});
    let created = create(&api, "prod-fw", body).await;
    assert_eq!(created["etag"], json!("MQ=="));
    assert_eq!(created["schemaVersion"], json!("1.0"));

    // The connected device receives the content as a desired patch.
    assert_eq!(
        next_firmware(&mut patches, BOUND).await,
        json!({"version": "2.0"})
    );
    settled(&hub).await;
    for device in ["prod-1", "prod-2"] {
        let twin = twin(&hub, device).await;
        assert_eq!(
            status(&twin, "prod-fw").as_deref(),
            Some("applied"),
            "{twin}"
        );
        assert_eq!(
            twin["properties"]["desired"]["firmware"],
            json!({"version": "2.0"})
        );
    }
    let untouched = twin(&hub, "test-1").await;
    assert!(untouched.get("configurations").is_none(), "{untouched}");
    assert!(untouched["properties"]["desired"].get("firmware").is_none());

    // Queries see the statuses, in Azure's spelling and in the twin's.
    for text in [
        "SELECT deviceId FROM devices WHERE configurations.[[prod-fw]].status = 'applied'",
        "SELECT deviceId FROM devices WHERE configurations.[[prod-fw]].status = 'Applied'",
    ] {
        let reply = api
            .send(
                Method::POST,
                "/devices/query",
                &[],
                Some(json!({ "query": text })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            reply.body,
            json!([{"deviceId": "prod-1"}, {"deviceId": "prod-2"}]),
            "{text}"
        );
    }

    // Metrics: system ones from the twins, custom ones by running their queries.
    let configuration = get(&api, "/configurations/prod-fw").await.body;
    assert_eq!(system_metric(&configuration, "targetedCount"), 2);
    assert_eq!(system_metric(&configuration, "appliedCount"), 2);
    assert_eq!(configuration["metrics"]["results"]["current"], json!(0));
    assert_eq!(
        configuration["metrics"]["results"]["applied-by-query"],
        json!(2)
    );
    assert_eq!(
        configuration["systemMetrics"]["queries"]["targetedCount"],
        json!("select deviceId from devices where tags.env = 'prod'")
    );
    assert_eq!(
        configuration["systemMetrics"]["queries"]["appliedCount"],
        json!("select deviceId from devices where configurations.[[prod-fw]].status = 'Applied'")
    );

    // A reported property changes a custom metric.
    client
        .patch_reported(&json!({"firmware": {"version": "2.0"}}))
        .await
        .expect("reported");
    settled(&hub).await;
    let configuration = get(&api, "/configurations/prod-fw").await.body;
    assert_eq!(configuration["metrics"]["results"]["current"], json!(1));
}

#[tokio::test]
async fn the_highest_priority_wins_and_a_device_that_stops_matching_falls_back_then_loses_the_settings()
 {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let record = hub.create_device("meter").await;
    set_tags(&hub, "meter", json!({"env": "prod", "ring": "canary"})).await;
    hub.hub
        .services
        .update_twin(
            &key("meter"),
            TwinChange::ServicePatch(json!({"properties": {"desired": {"tariff": "night"}}})),
            IfMatch::Any,
        )
        .await
        .expect("a desired property of the service's own");
    let client = device_client(&hub, &record).await;
    let mut patches = client.desired_patches().await.expect("desired stream");

    create(
        &api,
        "stable",
        firmware("stable", 1, "tags.env = 'prod'", "2.0"),
    )
    .await;
    assert_eq!(
        next_firmware(&mut patches, BOUND).await,
        json!({"version": "2.0"})
    );

    // A configuration of higher priority takes over.
    let mut canary = firmware("canary", 5, "tags.ring = 'canary'", "3.0-beta");
    canary["content"]["deviceContent"]["properties.desired.beta-channel"] = json!(true);
    create(&api, "canary", canary).await;
    assert_eq!(
        next_firmware(&mut patches, BOUND).await,
        json!({"version": "3.0-beta"})
    );
    settled(&hub).await;
    let state = twin(&hub, "meter").await;
    assert_eq!(status(&state, "canary").as_deref(), Some("applied"));
    assert_eq!(status(&state, "stable").as_deref(), Some("targeted"));
    assert_eq!(state["properties"]["desired"]["beta-channel"], json!(true));

    // The device leaves the canary ring: it falls back to the next configuration, and canary's own
    // settings go.
    let started = Instant::now();
    set_tags(&hub, "meter", json!({"ring": null})).await;
    assert_eq!(
        next_firmware(&mut patches, BOUND).await,
        json!({"version": "2.0"})
    );
    let fell_back = started.elapsed();
    assert!(fell_back < BOUND, "fell back in {fell_back:?}");
    println!("a tag change reached the device as a desired patch in {fell_back:?}");
    settled(&hub).await;
    let state = twin(&hub, "meter").await;
    assert_eq!(status(&state, "stable").as_deref(), Some("applied"));
    assert_eq!(status(&state, "canary"), None);
    assert!(
        state["properties"]["desired"].get("beta-channel").is_none(),
        "{state}"
    );

    // It leaves production: no configuration targets it, the settings are removed, the service's stay.
    set_tags(&hub, "meter", json!({"env": "lab"})).await;
    let removal = tokio::time::timeout(BOUND, patches.next())
        .await
        .expect("a desired patch in time")
        .expect("stream open");
    assert_eq!(removal["firmware"], Value::Null, "{removal}");
    settled(&hub).await;
    let state = twin(&hub, "meter").await;
    assert!(state.get("configurations").is_none(), "{state}");
    assert!(state["properties"]["desired"].get("firmware").is_none());
    assert_eq!(state["properties"]["desired"]["tariff"], json!("night"));

    let stable = get(&api, "/configurations/stable").await.body;
    assert_eq!(system_metric(&stable, "targetedCount"), 0);
    assert_eq!(system_metric(&stable, "appliedCount"), 0);
}

#[tokio::test]
async fn a_device_created_later_is_picked_up_within_the_bound() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    create(&api, "everyone", firmware("everyone", 0, "*", "1.0")).await;
    create(
        &api,
        "tagged",
        firmware("tagged", 3, "tags.site = 'plant-7'", "1.1"),
    )
    .await;
    settled(&hub).await;

    let started = Instant::now();
    hub.create_device("newcomer").await;
    settled(&hub).await;
    let state = twin(&hub, "newcomer").await;
    assert_eq!(
        status(&state, "everyone").as_deref(),
        Some("applied"),
        "{state}"
    );
    assert_eq!(
        state["properties"]["desired"]["firmware"],
        json!({"version": "1.0"})
    );

    set_tags(&hub, "newcomer", json!({"site": "plant-7"})).await;
    settled(&hub).await;
    let elapsed = started.elapsed();
    let state = twin(&hub, "newcomer").await;
    assert_eq!(
        status(&state, "tagged").as_deref(),
        Some("applied"),
        "{state}"
    );
    assert_eq!(status(&state, "everyone").as_deref(), Some("targeted"));
    assert_eq!(
        state["properties"]["desired"]["firmware"],
        json!({"version": "1.1"})
    );
    assert!(elapsed < 2 * BOUND, "two triggers acted on in {elapsed:?}");

    // A burst: many devices created at once are all picked up, each within the bound of its trigger.
    let started = Instant::now();
    for index in 0..50 {
        hub.create_device(&format!("burst-{index:02}")).await;
    }
    settled(&hub).await;
    let after_last = started.elapsed();
    for index in 0..50 {
        let state = twin(&hub, &format!("burst-{index:02}")).await;
        assert_eq!(status(&state, "everyone").as_deref(), Some("applied"));
    }
    let everyone = get(&api, "/configurations/everyone").await.body;
    assert_eq!(system_metric(&everyone, "targetedCount"), 51);
    assert_eq!(system_metric(&everyone, "appliedCount"), 50);
    println!("50 devices created and configured in {after_last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_reaches_hundreds_of_devices_within_the_bound() {
    const DEVICES: usize = 500;
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let mut creators = Vec::new();
    for worker in 0..10 {
        let services = std::sync::Arc::clone(&hub.hub.services);
        creators.push(tokio::spawn(async move {
            for index in (worker..DEVICES).step_by(10) {
                let key = key(&format!("fleet-{index:03}"));
                services
                    .put_identity(
                        key.clone(),
                        fleethub_testkit::sas_spec(fleethub_protocol::rest::DeviceStatus::Enabled),
                        None,
                    )
                    .await
                    .expect("device created");
                services
                    .update_twin(
                        &key,
                        TwinChange::ServicePatch(json!({"tags": {"env": "prod"}})),
                        IfMatch::Any,
                    )
                    .await
                    .expect("tagged");
            }
        }));
    }
    for creator in creators {
        creator.await.expect("creator finished");
    }
    settled(&hub).await;

    let started = Instant::now();
    create(
        &api,
        "fleet-fw",
        firmware("fleet-fw", 1, "tags.env = 'prod'", "7.0"),
    )
    .await;
    settled(&hub).await;
    let elapsed = started.elapsed();
    let configuration = get(&api, "/configurations/fleet-fw").await.body;
    assert_eq!(
        system_metric(&configuration, "appliedCount"),
        DEVICES as u64
    );
    assert!(elapsed < BOUND, "{DEVICES} twins configured in {elapsed:?}");
    println!("{DEVICES} twins configured in {elapsed:?}");
}

#[tokio::test]
async fn deleting_a_configuration_hands_its_devices_to_the_next_one() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    hub.create_device("d1").await;
    set_tags(&hub, "d1", json!({"env": "prod"})).await;
    create(
        &api,
        "base",
        firmware("base", 1, "tags.env = 'prod'", "1.0"),
    )
    .await;
    create(
        &api,
        "hotfix",
        firmware("hotfix", 2, "tags.env = 'prod'", "1.0.1"),
    )
    .await;
    settled(&hub).await;
    assert_eq!(
        twin(&hub, "d1").await["properties"]["desired"]["firmware"],
        json!({"version": "1.0.1"})
    );

    let reply = api
        .send(
            Method::DELETE,
            "/configurations/hotfix",
            &[("if-match", "*")],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    settled(&hub).await;
    let state = twin(&hub, "d1").await;
    assert_eq!(
        state["properties"]["desired"]["firmware"],
        json!({"version": "1.0"})
    );
    assert_eq!(
        state["configurations"],
        json!({"base": {"status": "applied"}})
    );

    let reply = api
        .send(
            Method::DELETE,
            "/configurations/base",
            &[("if-match", "\"*\"")],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    settled(&hub).await;
    let state = twin(&hub, "d1").await;
    assert!(state.get("configurations").is_none());
    assert!(state["properties"]["desired"].get("firmware").is_none());
}

#[tokio::test]
async fn a_module_configuration_applies_to_module_twins() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    hub.create_device("gateway").await;
    hub.create_module("gateway", "sensor").await;
    let module = IdentityKey::module("gateway".parse().unwrap(), "sensor".parse().unwrap());
    hub.hub
        .services
        .update_twin(
            &module,
            TwinChange::ServicePatch(json!({"tags": {"role": "sensor"}})),
            IfMatch::Any,
        )
        .await
        .expect("module tags");
    let created = create(
        &api,
        "sensors",
        json!({
            "content": {"moduleContent": {"properties.desired.sampling": {"hz": 10}}},
            "targetCondition": "FROM devices.modules WHERE tags.role = 'sensor'",
            "priority": 1,
        }),
    )
    .await;
    assert_eq!(
        created["systemMetrics"]["queries"]["targetedCount"],
        json!("select deviceId, moduleId FROM devices.modules WHERE tags.role = 'sensor'")
    );
    settled(&hub).await;
    let module_twin = hub
        .hub
        .services
        .get_identity(&module)
        .await
        .expect("module")
        .twin_json();
    assert_eq!(status(&module_twin, "sensors").as_deref(), Some("applied"));
    assert_eq!(
        module_twin["properties"]["desired"]["sampling"],
        json!({"hz": 10})
    );
    assert!(twin(&hub, "gateway").await.get("configurations").is_none());

    let reply = put(
        &api,
        "everything",
        None,
        json!({"content": {"moduleContent": {}}, "targetCondition": "*"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_code.as_deref(),
        Some("InvalidConfigurationTargetCondition")
    );
}

#[tokio::test]
async fn the_rest_api_enforces_azure_rules() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let body = firmware("cfg1", 10, "tags.env = 'prod'", "2.0");
    create(&api, "cfg1", body.clone()).await;

    let expect_error = |reply: Reply, status: StatusCode, code: &str| {
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(reply.error_code.as_deref(), Some(code), "{}", reply.body);
    };
    expect_error(
        put(&api, "cfg1", None, body.clone()).await,
        StatusCode::CONFLICT,
        "ConfigurationAlreadyExists",
    );

    // Content is immutable; the rest changes under If-Match.
    let mut changed = body.clone();
    changed["content"]["deviceContent"]["properties.desired.firmware"]["version"] = json!("9.9");
    expect_error(
        put(&api, "cfg1", Some("*"), changed).await,
        StatusCode::BAD_REQUEST,
        "CannotModifyImmutableConfigurationContent",
    );
    let mut update = get(&api, "/configurations/cfg1").await.body;
    update["priority"] = json!(20);
    update["targetCondition"] = json!("tags.env = 'test'");
    update["labels"] = json!({"purpose": "firmware", "wave": "2"});
    expect_error(
        put(&api, "cfg1", Some("\"Mg==\""), update.clone()).await,
        StatusCode::PRECONDITION_FAILED,
        "PreconditionFailed",
    );
    let updated = put(&api, "cfg1", Some("\"MQ==\""), update).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["etag"], json!("Mg=="));
    assert_eq!(updated.body["priority"], json!(20));
    assert_eq!(updated.body["labels"]["wave"], json!("2"));
    assert_ne!(
        updated.body["createdTimeUtc"], updated.body["lastUpdatedTimeUtc"],
        "the update time moves"
    );
    // Content may be left out of an update.
    let reply = put(
        &api,
        "cfg1",
        Some("Mg=="),
        json!({"id": "cfg1", "targetCondition": "*", "priority": 1}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["content"], body["content"]);
    expect_error(
        put(&api, "nothing-here", Some("*"), json!({"priority": 1})).await,
        StatusCode::NOT_FOUND,
        "ConfigurationNotFound",
    );

    // Ids, metrics, conditions and content are checked.
    expect_error(
        put(&api, "Upper", None, firmware("Upper", 1, "*", "1")).await,
        StatusCode::BAD_REQUEST,
        "ArgumentInvalid",
    );
    expect_error(
        put(&api, &"x".repeat(129), None, firmware("x", 1, "*", "1")).await,
        StatusCode::BAD_REQUEST,
        "ArgumentInvalid",
    );
    expect_error(
        put(&api, "other", None, firmware("cfg1", 1, "*", "1")).await,
        StatusCode::BAD_REQUEST,
        "ArgumentInvalid",
    );
    let mut six = firmware("six", 1, "*", "1");
    six["metrics"] = json!({"queries": (0..6).map(|n| (format!("m{n}"), json!("SELECT deviceId FROM devices"))).collect::<serde_json::Map<_, _>>()});
    expect_error(
        put(&api, "six", None, six).await,
        StatusCode::BAD_REQUEST,
        "InvalidConfigurationCustomMetricsQuery",
    );
    let mut bad_metric = firmware("bad-metric", 1, "*", "1");
    bad_metric["metrics"] = json!({"queries": {"m": "SELECT deviceId FROM"}});
    expect_error(
        put(&api, "bad-metric", None, bad_metric).await,
        StatusCode::BAD_REQUEST,
        "InvalidConfigurationCustomMetricsQuery",
    );
    expect_error(
        put(
            &api,
            "bad-target",
            None,
            firmware("bad-target", 1, "tags.env = ", "1"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "InvalidConfigurationTargetCondition",
    );
    expect_error(
        put(
            &api,
            "bad-content",
            None,
            json!({"content": {"deviceContent": {"tags.x": 1}}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "InvalidConfigurationContent",
    );
    expect_error(
        put(
            &api,
            "edge",
            None,
            json!({"content": {"modulesContent": {"$edgeAgent": {}}}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "InvalidConfigurationContent",
    );

    // testQueries reports errors instead of failing.
    let reply = api
        .send(
            Method::POST,
            "/configurations/testQueries",
            &[],
            Some(json!({
                "targetCondition": "tags.env = ",
                "customMetricQueries": {"good": "SELECT deviceId FROM devices", "bad": "SELECT"}
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_ne!(reply.body["targetConditionError"], json!(""));
    assert!(reply.body["customMetricQueryErrors"].get("bad").is_some());
    assert!(reply.body["customMetricQueryErrors"].get("good").is_none());

    // Listing, top, and rights.
    create(&api, "cfg2", firmware("cfg2", 1, "*", "1")).await;
    let all = get(&api, "/configurations").await;
    assert_eq!(all.status, StatusCode::OK);
    let ids: Vec<&str> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cfg1", "cfg2"]);
    assert_eq!(
        get(&api, "/configurations?top=1")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let reader = ServiceApi::for_hub(&hub, "registryRead");
    assert_eq!(
        get(&reader, "/configurations/cfg1").await.status,
        StatusCode::OK
    );
    expect_error(
        put(&reader, "cfg3", None, firmware("cfg3", 1, "*", "1")).await,
        StatusCode::FORBIDDEN,
        "GenericForbidden",
    );

    // Deletion honours If-Match; afterwards the configuration is gone.
    expect_error(
        api.send(
            Method::DELETE,
            "/configurations/cfg2",
            &[("if-match", "\"Mg==\"")],
            None,
        )
        .await,
        StatusCode::PRECONDITION_FAILED,
        "PreconditionFailed",
    );
    let deleted = api
        .send(
            Method::DELETE,
            "/configurations/cfg2",
            &[("if-match", "MQ==")],
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    expect_error(
        get(&api, "/configurations/cfg2").await,
        StatusCode::NOT_FOUND,
        "ConfigurationNotFound",
    );
    expect_error(
        api.send(
            Method::DELETE,
            "/configurations/cfg2",
            &[("if-match", "*")],
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "ConfigurationNotFound",
    );
}

#[tokio::test]
async fn configurations_and_twin_state_survive_a_restart() {
    let first = TestHub::start().await;
    let api = ServiceApi::for_hub(&first, "iothubowner");
    first.create_device("kept").await;
    set_tags(&first, "kept", json!({"env": "prod"})).await;
    create(
        &api,
        "durable",
        firmware("durable", 4, "tags.env = 'prod'", "5.0"),
    )
    .await;
    settled(&first).await;

    let TestHub { hub, directory } = first;
    hub.shutdown(Duration::from_secs(1)).await;
    let second = TestHub {
        hub: fleethub_hub::start(fleethub_hub::HubConfig::for_loopback(
            directory.path().join("data"),
        ))
        .await
        .expect("the hub restarts"),
        directory,
    };
    let api = ServiceApi::for_hub(&second, "iothubowner");
    settled(&second).await;
    let configuration = get(&api, "/configurations/durable").await;
    assert_eq!(configuration.status, StatusCode::OK);
    assert_eq!(configuration.body["etag"], json!("MQ=="));
    assert_eq!(system_metric(&configuration.body, "appliedCount"), 1);
    let state = twin(&second, "kept").await;
    assert_eq!(status(&state, "durable").as_deref(), Some("applied"));
    assert_eq!(
        state["properties"]["desired"]["firmware"],
        json!({"version": "5.0"})
    );

    // And the engine keeps working: the device leaves the target and loses the settings.
    set_tags(&second, "kept", json!({"env": "retired"})).await;
    settled(&second).await;
    let state = twin(&second, "kept").await;
    assert!(state.get("configurations").is_none());
    assert!(state["properties"]["desired"].get("firmware").is_none());
}
