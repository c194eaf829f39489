//! Desired-state catch-up (docs/compat.md): a persistent session's device that missed desired patches while
//! offline gets one patch to the current desired properties right after it reconnects, before any other twin
//! traffic; desired patches go at QoS 1 where the subscription grants it. Real hub, real MQTT over TLS, raw
//! clients, so every packet and its order is seen.

use std::time::Duration;

use fleethub_hub::sessions::{DeliveryError, DeviceRouter, Outbound};
use fleethub_mqtt::{Connect, Packet, Publish, QoS};
use fleethub_protocol::changes::ChangeOperation;
use fleethub_protocol::ids::IfMatch;
use fleethub_protocol::topics::Subscription;
use fleethub_store::{ChangeFilter, DeviceRecord, TwinChange, UpdateTwin};
use fleethub_testkit::*;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";

/// Sets desired properties as a service does and returns the new desired `$version`.
async fn set_desired(hub: &TestHub, record: &DeviceRecord, desired: Value) -> u64 {
    hub.hub
        .services
        .update_twin(
            &record.key,
            TwinChange::ServicePatch(json!({"properties": {"desired": desired}})),
            IfMatch::Any,
        )
        .await
        .expect("desired patch")
        .record
        .twin
        .desired_version()
}

async fn service_desired(hub: &TestHub, record: &DeviceRecord) -> Value {
    let stored = hub
        .hub
        .services
        .get_identity(&record.key)
        .await
        .expect("the device exists");
    Value::Object(stored.twin.desired_properties().clone())
}

/// A persistent-session (clean session 0) connection subscribed to desired patches at `qos`.
async fn subscribed(hub: &TestHub, record: &DeviceRecord, qos: QoS) -> RawClient {
    let mut client = hub.connected(record).await;
    client.send(&subscribe(1, DESIRED, qos)).await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
    client
}

/// Connects again with the same session (subscriptions kept by the hub, no SUBSCRIBE).
async fn reconnect(hub: &TestHub, record: &DeviceRecord, clean_session: bool) -> RawClient {
    let mut client = hub.raw().await;
    let connect = Connect {
        clean_session,
        ..connect_for(record, 60)
    };
    client.connect_accepted(connect).await;
    client
}

/// Sends DISCONNECT and waits until the hub recorded the `count`-th disconnection of the device, which
/// comes after the connection wrote what it had to.
async fn disconnect(hub: &TestHub, record: &DeviceRecord, mut client: RawClient, count: usize) {
    client.send(&Packet::Disconnect).await;
    client.expect_closed().await;
    disconnections(hub, record, count).await;
}

/// Waits until the hub recorded the `count`-th disconnection of the device.
async fn disconnections(hub: &TestHub, record: &DeviceRecord, count: usize) {
    let store = &hub.hub.services.store;
    let mut notifier = store.change_notifier();
    let disconnected = async {
        loop {
            notifier.borrow_and_update();
            let records = store
                .read_changes(
                    0,
                    10_000,
                    ChangeFilter::device(record.key.device_id.clone()),
                )
                .await
                .expect("read the change feed");
            let seen = records
                .iter()
                .filter(|change| change.operation == ChangeOperation::DeviceDisconnected)
                .count();
            if seen >= count {
                return;
            }
            notifier.changed().await.expect("the store runs");
        }
    };
    tokio::time::timeout(WAIT, disconnected)
        .await
        .expect("the disconnection is recorded");
}

fn desired_version_of(publish: &Publish) -> u64 {
    let version = publish
        .topic
        .strip_prefix("$iothub/twin/PATCH/properties/desired/?$version=")
        .unwrap_or_else(|| panic!("not a desired patch: {}", publish.topic));
    version.parse().expect("a numeric $version")
}

fn body(publish: &Publish) -> Value {
    serde_json::from_slice(&publish.payload).expect("JSON payload")
}

/// What a device that only listens to patches does: RFC 7386 merge, ignoring `$version`.
fn apply(state: &mut Value, patch: &Value) {
    fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
        for (key, value) in patch {
            match value {
                Value::Null => {
                    target.remove(key);
                }
                Value::Object(members) => {
                    let entry = target
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !entry.is_object() {
                        *entry = Value::Object(Map::new());
                    }
                    merge(entry.as_object_mut().expect("an object"), members);
                }
                other => {
                    target.insert(key.clone(), other.clone());
                }
            }
        }
    }
    let mut patch = patch.as_object().expect("a patch is an object").clone();
    patch.remove("$version");
    merge(
        state.as_object_mut().expect("the state is an object"),
        &patch,
    );
}

/// Asserts the hub sends nothing more before answering a PINGREQ.
async fn nothing_before_pingresp(client: &mut RawClient) {
    client.send(&Packet::PingReq).await;
    match client.receive().await {
        Some(Packet::PingResp) => {}
        other => panic!("expected only PINGRESP, got {other:?}"),
    }
}

/// The next desired patch from the hub, at `qos`.
async fn next_patch(client: &mut RawClient, qos: QoS) -> Publish {
    let publish = client.receive_publish().await;
    assert!(
        publish
            .topic
            .starts_with("$iothub/twin/PATCH/properties/desired/"),
        "expected a desired patch, got {}",
        publish.topic
    );
    assert_eq!(publish.qos, qos, "{}", publish.topic);
    assert_eq!(publish.packet_id.is_some(), qos == QoS::AtLeastOnce);
    publish
}

/// The device's PUBACK of a QoS 1 patch.
async fn acknowledge(client: &mut RawClient, patch: &Publish) {
    client
        .send(&Packet::PubAck(patch.packet_id.expect("QoS 1")))
        .await;
}

#[tokio::test]
async fn a_reconnecting_device_gets_one_patch_from_its_acknowledged_version_before_any_twin_response()
 {
    let hub = TestHub::start().await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;

    let v2 = set_desired(
        &hub,
        &record,
        json!({"a": 1, "b": {"c": 1, "d": 2}, "gone": true, "same": "x"}),
    )
    .await;
    assert_eq!(v2, 2);
    let patch = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&patch), 2);
    let mut device_state = json!({});
    apply(&mut device_state, &body(&patch));
    acknowledge(&mut client, &patch).await;
    disconnect(&hub, &record, client, 1).await;

    set_desired(&hub, &record, json!({"x": 1})).await;
    set_desired(&hub, &record, json!({"a": 2})).await;
    set_desired(&hub, &record, json!({"gone": null})).await;
    let v6 = set_desired(&hub, &record, json!({"b": {"c": null}})).await;
    assert_eq!(v6, 6);

    let mut client = reconnect(&hub, &record, false).await;
    // The device asks for its twin at once, as the SDKs do after connecting; the catch-up is already first.
    client
        .send(&publish_qos1("$iothub/twin/GET/?$rid=get1", 7, b" "))
        .await;
    let catch_up = match client.receive().await {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("expected the catch-up patch first, got {other:?}"),
    };
    assert_eq!(catch_up.qos, QoS::AtLeastOnce);
    assert_eq!(desired_version_of(&catch_up), 6);
    let caught_up = body(&catch_up);
    assert_eq!(caught_up["$version"], json!(6));
    assert_eq!(
        caught_up["gone"],
        Value::Null,
        "a deleted key comes as null"
    );
    assert!(caught_up.get("gone").is_some());
    assert_eq!(caught_up["b"], json!({"c": null, "d": 2}));
    assert_eq!(caught_up["a"], json!(2));
    assert_eq!(caught_up["x"], json!(1));
    apply(&mut device_state, &caught_up);
    assert_eq!(
        device_state,
        service_desired(&hub, &record).await,
        "a device that only applies patches converges"
    );
    let mut restarted_device = json!({});
    apply(&mut restarted_device, &caught_up);
    assert_eq!(
        restarted_device, device_state,
        "so does one whose application restarted and kept nothing"
    );

    // Then the twin response, and nothing else.
    assert_eq!(client.receive().await, Some(Packet::PubAck(packet_id(7))));
    let response = client.receive_publish().await;
    assert_eq!(response.topic, "$iothub/twin/res/200/?$rid=get1");
    assert_eq!(body(&response)["desired"]["$version"], json!(6));
    acknowledge(&mut client, &catch_up).await;
    nothing_before_pingresp(&mut client).await;

    // Live patches go on from there, and a device that is up to date gets nothing on its next connection.
    set_desired(&hub, &record, json!({"y": 2})).await;
    let live = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&live), 7);
    assert_eq!(body(&live), json!({"y": 2, "$version": 7}));
    acknowledge(&mut client, &live).await;
    disconnect(&hub, &record, client, 2).await;
    let mut client = reconnect(&hub, &record, false).await;
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn a_patch_not_acknowledged_before_the_disconnect_comes_again() {
    let hub = TestHub::start().await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    set_desired(&hub, &record, json!({"a": 1})).await;
    let acknowledged = next_patch(&mut client, QoS::AtLeastOnce).await;
    acknowledge(&mut client, &acknowledged).await;
    set_desired(&hub, &record, json!({"b": 2})).await;
    let lost = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&lost), 3);
    // No PUBACK for version 3.
    disconnect(&hub, &record, client, 1).await;

    let mut client = reconnect(&hub, &record, false).await;
    let catch_up = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&catch_up), 3);
    assert_eq!(body(&catch_up), json!({"a": 1, "b": 2, "$version": 3}));
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn a_qos_0_subscriber_catches_up_from_the_version_it_was_last_sent() {
    let hub = TestHub::start().await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtMostOnce).await;
    set_desired(&hub, &record, json!({"a": 1, "b": 1})).await;
    let sent = next_patch(&mut client, QoS::AtMostOnce).await;
    assert_eq!(desired_version_of(&sent), 2);
    disconnect(&hub, &record, client, 1).await;

    // Nothing changed: nothing to send, although version 2 was never acknowledged (QoS 0 cannot be).
    let client = reconnect(&hub, &record, false).await;
    disconnect(&hub, &record, client, 2).await;

    set_desired(&hub, &record, json!({"b": null, "c": 3})).await;
    let mut client = reconnect(&hub, &record, false).await;
    let catch_up = next_patch(&mut client, QoS::AtMostOnce).await;
    assert_eq!(desired_version_of(&catch_up), 3);
    assert_eq!(
        body(&catch_up),
        json!({"a": 1, "b": null, "c": 3, "$version": 3})
    );
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn a_clean_session_gets_nothing_extra() {
    let hub = TestHub::start().await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    set_desired(&hub, &record, json!({"a": 1})).await;
    let patch = next_patch(&mut client, QoS::AtLeastOnce).await;
    acknowledge(&mut client, &patch).await;
    disconnect(&hub, &record, client, 1).await;
    set_desired(&hub, &record, json!({"a": 2})).await;

    // A clean session discards the persistent one, catch-up state included, as Azure does.
    let mut client = reconnect(&hub, &record, true).await;
    nothing_before_pingresp(&mut client).await;
    client.send(&subscribe(2, DESIRED, QoS::AtLeastOnce)).await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
    nothing_before_pingresp(&mut client).await;
    disconnect(&hub, &record, client, 2).await;
    set_desired(&hub, &record, json!({"a": 3})).await;
    let mut client = reconnect(&hub, &record, true).await;
    nothing_before_pingresp(&mut client).await;
    // And the persistent session that follows starts afresh: nothing from before its subscription.
    disconnect(&hub, &record, client, 3).await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    nothing_before_pingresp(&mut client).await;
    disconnect(&hub, &record, client, 4).await;
    let mut client = reconnect(&hub, &record, false).await;
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn an_unsubscribed_session_is_not_caught_up() {
    let hub = TestHub::start().await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    client
        .send(&Packet::Unsubscribe(fleethub_mqtt::Unsubscribe {
            packet_id: packet_id(2),
            filters: vec![DESIRED.into()],
        }))
        .await;
    assert_eq!(client.receive().await, Some(Packet::UnsubAck(packet_id(2))));
    disconnect(&hub, &record, client, 1).await;
    set_desired(&hub, &record, json!({"a": 1})).await;
    let mut client = reconnect(&hub, &record, false).await;
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn a_missed_push_is_replaced_by_the_difference_to_the_twin() {
    let hub = TestHub::start().await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    // Version 2 is written without its push, as when the connection's push queue was full.
    hub.hub
        .services
        .store
        .update_twin(UpdateTwin {
            key: record.key.clone(),
            change: TwinChange::ServicePatch(json!({"properties": {"desired": {"a": 1, "b": 1}}})),
            if_match: IfMatch::Any,
            now: hub.hub.services.now(),
            on_commit: None,
        })
        .await
        .expect("desired write");
    set_desired(&hub, &record, json!({"b": null, "c": 3})).await;
    let patch = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&patch), 3);
    assert_eq!(body(&patch), json!({"a": 1, "c": 3, "$version": 3}));
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn desired_patches_and_cloud_to_device_messages_never_share_a_packet_id() {
    let hub = TestHub::start().await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    client
        .send(&subscribe(
            2,
            "devices/meter/messages/devicebound/#",
            QoS::AtLeastOnce,
        ))
        .await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
    for index in 0..5 {
        set_desired(&hub, &record, json!({"n": index})).await;
        let request = fleethub_protocol::c2d::SendC2dRequest {
            body: Some(format!("message {index}")),
            ..Default::default()
        };
        fleethub_hub::c2d::send(&hub.hub.services, &record.key.device_id, request)
            .await
            .expect("C2D send");
    }
    let mut packet_ids = std::collections::HashSet::new();
    let (mut patches, mut messages) = (Vec::new(), 0);
    while patches.len() + messages < 10 {
        let publish = client.receive_publish().await;
        let packet_id = publish.packet_id.expect("QoS 1");
        assert!(packet_ids.insert(packet_id), "{packet_id} used twice");
        if publish.topic.starts_with("$iothub/twin/") {
            patches.push(desired_version_of(&publish));
            // Acknowledging a patch must not complete a message.
            client.send(&Packet::PubAck(packet_id)).await;
        } else {
            messages += 1;
        }
    }
    assert_eq!(patches, (2..7).collect::<Vec<u64>>());
    nothing_before_pingresp(&mut client).await;
    let pending = hub
        .hub
        .services
        .store
        .pending_c2d_for_device(
            &record.key.device_id,
            None,
            100,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .expect("read the queue");
    assert_eq!(
        pending.len(),
        5,
        "no message was completed by a patch's PUBACK"
    );
}

#[tokio::test]
async fn the_catch_up_survives_a_hub_restart() {
    let first = TestHub::start().await;
    let record = first.create_device("meter").await;
    let mut client = subscribed(&first, &record, QoS::AtLeastOnce).await;
    set_desired(&first, &record, json!({"a": 1, "gone": true})).await;
    let patch = next_patch(&mut client, QoS::AtLeastOnce).await;
    acknowledge(&mut client, &patch).await;
    nothing_before_pingresp(&mut client).await;
    // The hub stops with the device connected: the acknowledgement is written as the connection closes.
    let TestHub { hub, directory } = first;
    hub.shutdown(Duration::from_secs(1)).await;
    client.expect_closed().await;

    // Fresh ports (the old ones may be taken by a parallel test by now); devices connect by hostname.
    let config = fleethub_hub::HubConfig::for_loopback(directory.path().join("data"));
    let second = TestHub {
        hub: fleethub_hub::start(config).await.expect("the hub restarts"),
        directory,
    };
    let checkpoint = second
        .hub
        .services
        .store
        .load_desired_checkpoint(&record.key)
        .await
        .expect("read the checkpoint")
        .expect("the session's checkpoint is durable");
    assert_eq!(checkpoint.version, 2);
    set_desired(&second, &record, json!({"gone": null, "b": 2})).await;

    let mut client = reconnect(&second, &record, false).await;
    let catch_up = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&catch_up), 3);
    assert_eq!(
        body(&catch_up),
        json!({"a": 1, "gone": null, "b": 2, "$version": 3})
    );
    acknowledge(&mut client, &catch_up).await;
    nothing_before_pingresp(&mut client).await;
    disconnect(&second, &record, client, 2).await;

    // Restarted again between a disconnect and the next connection: still caught up from version 3.
    set_desired(&second, &record, json!({"a": null})).await;
    let TestHub { hub, directory } = second;
    hub.shutdown(Duration::from_secs(1)).await;
    let config = fleethub_hub::HubConfig::for_loopback(directory.path().join("data"));
    let third = TestHub {
        hub: fleethub_hub::start(config).await.expect("the hub restarts"),
        directory,
    };
    let mut client = reconnect(&third, &record, false).await;
    let catch_up = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&catch_up), 4);
    assert_eq!(body(&catch_up), json!({"a": null, "b": 2, "$version": 4}));
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn a_qos_0_catch_up_that_never_left_the_hub_is_not_counted_as_sent() {
    // The catch-up is far larger than what the sockets can buffer, so the hub's flush is still writing
    // when the device resets the connection.
    let hub = TestHub::start_with(|config| config.twin_limits.desired_max_bytes = 8 << 20).await;
    let record = hub.create_device("meter").await;
    let client = subscribed(&hub, &record, QoS::AtMostOnce).await;
    disconnect(&hub, &record, client, 1).await;
    let string = "x".repeat(4000);
    let large: Map<String, Value> = (0..1000)
        .map(|index| (format!("k{index}"), Value::from(string.clone())))
        .collect();
    let v2 = set_desired(&hub, &record, Value::Object(large)).await;

    // A device with a tiny receive buffer that reads the CONNACK, then resets the connection.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    socket.set_zero_linger().expect("linger");
    let tcp = socket
        .connect(hub.hub.mqtt_address)
        .await
        .expect("tcp connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
    let mut tls = hub
        .tls_connector()
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    let mut connect = bytes::BytesMut::new();
    fleethub_mqtt::encode(
        &Packet::Connect(Connect {
            clean_session: false,
            ..connect_for(&record, 60)
        }),
        &mut connect,
    )
    .expect("CONNECT encodes");
    tls.write_all(&connect).await.expect("send CONNECT");
    let mut first = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut first))
        .await
        .expect("the hub answers in time")
        .expect("read the CONNACK");
    assert_eq!(first, [0x20, 2, 1, 0], "CONNACK, session present, accepted");
    drop(tls);
    disconnections(&hub, &record, 2).await;

    let checkpoint = hub
        .hub
        .services
        .store
        .load_desired_checkpoint(&record.key)
        .await
        .expect("read the checkpoint")
        .expect("the session has a checkpoint");
    assert_eq!(
        checkpoint.version, 1,
        "the catch-up was queued, never flushed: the device does not have version {v2}"
    );
    let mut client = reconnect(&hub, &record, false).await;
    let catch_up = next_patch(&mut client, QoS::AtMostOnce).await;
    assert_eq!(desired_version_of(&catch_up), v2);
    nothing_before_pingresp(&mut client).await;
}

#[tokio::test]
async fn a_patch_dropped_for_a_full_push_queue_reaches_the_device_as_the_difference() {
    let hub = TestHub::start_with(|config| config.limits.outbound_queue_depth = 1).await;
    let record = hub.create_device("meter").await;
    let mut client = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    // Versions 2 and 3 are written without their pushes, which are then delivered back to back: the
    // connection cannot run in between (single-threaded test runtime), so the second finds the queue full.
    let mut payloads = Vec::new();
    for desired in [json!({"a": 1, "b": 1}), json!({"b": null, "c": 3})] {
        let updated = hub
            .hub
            .services
            .store
            .update_twin(UpdateTwin {
                key: record.key.clone(),
                change: TwinChange::ServicePatch(
                    json!({"properties": {"desired": desired.clone()}}),
                ),
                if_match: IfMatch::Any,
                now: hub.hub.services.now(),
                on_commit: None,
            })
            .await
            .expect("desired write");
        let version = updated.record.twin.desired_version();
        let mut patch = desired;
        patch["$version"] = Value::from(version);
        payloads.push((version, serde_json::to_vec(&patch).expect("JSON")));
    }
    let router: &dyn DeviceRouter = &*hub.hub.services.sessions;
    let mut deliveries = payloads.into_iter().map(|(version, payload)| {
        router.deliver(
            &record.key,
            Subscription::DesiredPatches,
            Outbound::DesiredPatch {
                version,
                payload: payload.into(),
            },
        )
    });
    assert_eq!(deliveries.next(), Some(Ok(())));
    assert_eq!(deliveries.next(), Some(Err(DeliveryError::QueueFull)));
    drop(deliveries);

    let pushed = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&pushed), 2);
    assert_eq!(body(&pushed), json!({"a": 1, "b": 1, "$version": 2}));
    let resynchronised = next_patch(&mut client, QoS::AtLeastOnce).await;
    assert_eq!(desired_version_of(&resynchronised), 3);
    assert_eq!(
        body(&resynchronised),
        json!({"b": null, "c": 3, "$version": 3})
    );
    nothing_before_pingresp(&mut client).await;
}
