//! `POST /devices` (bulk registry) against a real hub: Azure's import modes, per-item errors, 200 vs 400.

use fleethub_mqtt::{Packet, QoS};
use fleethub_testkit::{ServiceApi, TestHub, connect_with_key, subscribe};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn import_modes_create_update_delete_and_patch_twins_item_by_item() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let created = api
        .send(
            Method::POST,
            "/devices",
            &[],
            Some(json!([
                {"id": "b1", "importMode": "create", "tags": {"site": "a"}},
                {"id": "b2", "importMode": "create", "status": "disabled", "properties": {"desired": {"fw": "1"}}},
                {"id": "b3", "moduleId": "m", "importMode": "create"},
            ])),
        )
        .await;
    assert_eq!(created.status, StatusCode::BAD_REQUEST, "{}", created.body);
    assert_eq!(created.body["isSuccessful"], json!(false));
    let errors = created.body["errors"].as_array().unwrap();
    assert_eq!(
        errors.len(),
        1,
        "only the module of a missing device fails: {errors:?}"
    );
    assert_eq!(
        (
            errors[0]["deviceId"].as_str(),
            errors[0]["errorCode"].as_str()
        ),
        (Some("b3"), Some("DeviceNotFound"))
    );
    assert_eq!(errors[0]["operation"], json!("create"));

    let twin = api.send(Method::GET, "/twins/b1", &[], None).await;
    assert_eq!(twin.body["tags"]["site"], json!("a"));
    let device = api.send(Method::GET, "/devices/b2", &[], None).await;
    assert_eq!(device.body["status"], json!("disabled"));
    let twin2 = api.send(Method::GET, "/twins/b2", &[], None).await;
    assert_eq!(twin2.body["properties"]["desired"]["fw"], json!("1"));
    let b2_etag = api.send(Method::GET, "/devices/b2", &[], None).await.body["etag"]
        .as_str()
        .unwrap()
        .to_owned();

    let mixed = api
        .send(
            Method::POST,
            "/devices",
            &[],
            Some(json!([
                {"id": "b1", "importMode": "create"},
                {"id": "b1", "importMode": "updateIfMatchETag", "eTag": "bm9wZQ==", "status": "disabled"},
                {"id": "b1", "importMode": "updateTwin", "tags": {"site": "b"}},
                {"id": "b2", "importMode": "updateIfMatchETag", "eTag": b2_etag, "status": "enabled"},
                {"id": "b4", "importMode": "update"},
                {"id": "b9", "importMode": "delete"},
                {"id": "bad id!", "importMode": "create"},
                {"id": "b2", "importMode": "deleteIfMatchETag"},
            ])),
        )
        .await;
    let codes: Vec<(String, String)> = mixed.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            (
                error["deviceId"].as_str().unwrap().to_owned(),
                error["errorCode"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        codes.contains(&("b1".into(), "DeviceAlreadyExists".into())),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("b1".into(), "PreconditionFailed".into())),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("b9".into(), "DeviceNotFound".into())),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("bad id!".into(), "ArgumentInvalid".into())),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("b2".into(), "ArgumentInvalid".into())),
        "deleteIfMatchETag needs an eTag: {codes:?}"
    );
    assert_eq!(codes.len(), 5, "{codes:?}");
    assert_eq!(
        api.send(Method::GET, "/devices/b2", &[], None).await.body["status"],
        json!("enabled"),
        "matching etag"
    );
    assert_eq!(
        api.send(Method::GET, "/twins/b1", &[], None).await.body["tags"]["site"],
        json!("b")
    );
    assert_eq!(
        api.send(Method::GET, "/devices/b4", &[], None).await.status,
        StatusCode::OK,
        "update creates"
    );

    let ok = api
        .send(
            Method::POST,
            "/devices",
            &[],
            Some(json!([{"id": "b4", "importMode": "delete"}])),
        )
        .await;
    assert_eq!(
        (ok.status, ok.body.clone()),
        (
            StatusCode::OK,
            json!({"isSuccessful": true, "errors": [], "warnings": []})
        )
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|index| json!({"id": format!("x{index}"), "importMode": "create"}))
        .collect();
    let refused = api
        .send(Method::POST, "/devices", &[], Some(Value::Array(too_many)))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bulk_twin_updates_reach_connected_devices_and_bulk_deletes_disconnect_them() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let record = hub.create_device("live").await;
    let mut client = hub.raw().await;
    client
        .connect_accepted(connect_with_key(
            "live",
            record
                .identity
                .authentication
                .primary_key
                .as_deref()
                .unwrap(),
            60,
        ))
        .await;
    client
        .send(&subscribe(
            1,
            "$iothub/twin/PATCH/properties/desired/#",
            QoS::AtLeastOnce,
        ))
        .await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
    let reply = api
        .send(Method::POST, "/devices", &[], Some(json!([{"id": "live", "importMode": "updateTwin", "properties": {"desired": {"fw": "9"}}}])))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let patch = client.receive_publish().await;
    let body: Value = serde_json::from_slice(&patch.payload).unwrap();
    assert_eq!(body["fw"], json!("9"));
    let reply = api
        .send(
            Method::POST,
            "/devices",
            &[],
            Some(json!([{"id": "live", "importMode": "delete"}])),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    client
        .expect_closed_because("the device was deleted in bulk")
        .await;
}
