//! Cloud-to-device messages end to end on a real hub (TLS, MQTT, HTTPS on loopback): the service SDK sends and
//! reads feedback, our device SDK receives; raw MQTT clients for what the SDK does on its own (PUBACK timing,
//! reconnection): redelivery with DUP until PUBACK, the in-flight window, a persistent session across a hub
//! restart, QoS 0 subscriptions; the REST edge's refusals (queue full, size, malformed requests, rights);
//! Azure's device-side HTTPS receive.

use std::collections::BTreeMap;
use std::time::Duration;

use fleethub_device::{DeviceClient, DeviceClientOptions};
use fleethub_mqtt::{Packet, Publish, QoS};
use fleethub_protocol::c2d::{
    DeliveryAcknowledgement, FeedbackRecord, FeedbackStatusCode, SendC2dRequest,
};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::property_bag::PropertyBag;
use fleethub_protocol::topics::{HubTopic, parse_hub_publish};
use fleethub_service::{FeedbackStream, ServiceClient, ServiceClientOptions};
use fleethub_store::DeviceRecord;
use fleethub_testkit::{
    RawClient, ServiceApi, TestHub, device_token, packet_id, subscribe, unix_now,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn service(hub: &TestHub, policy: &str) -> ServiceClient {
    let key = hub.policy(policy).primary_key;
    let connection_string = format!(
        "HostName=localhost:{};SharedAccessKeyName={policy};SharedAccessKey={key}",
        hub.hub.https_address.port()
    );
    let options = ServiceClientOptions {
        ca_pem: Some(hub.hub.ca_pem.clone()),
        ..ServiceClientOptions::default()
    };
    ServiceClient::from_connection_string(&connection_string, options).expect("service client")
}

fn device_id(text: &str) -> DeviceId {
    text.parse().expect("valid id")
}

fn connection_string(record: &DeviceRecord) -> String {
    let key = record
        .identity
        .authentication
        .primary_key
        .as_deref()
        .expect("SAS identity");
    format!(
        "HostName=localhost;DeviceId={};SharedAccessKey={key}",
        record.key.device_id
    )
}

async fn device_client(hub: &TestHub, record: &DeviceRecord) -> DeviceClient {
    let options = DeviceClientOptions::default()
        .with_ca_pem(hub.hub.ca_pem.clone())
        .with_port(hub.hub.mqtt_address.port());
    DeviceClient::connect(&connection_string(record), options)
        .await
        .expect("the device connects")
}

fn text(body: &str) -> SendC2dRequest {
    SendC2dRequest {
        body: Some(body.to_owned()),
        ..SendC2dRequest::default()
    }
}

async fn send(client: &ServiceClient, device: &str, request: SendC2dRequest) -> u64 {
    client
        .send_c2d(&device_id(device), &request)
        .await
        .expect("queued")
        .sequence_number
}

async fn next_feedback(stream: &mut FeedbackStream) -> FeedbackRecord {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("feedback within the timeout")
        .expect("the hub answers")
}

/// The property bag of a devicebound publish, as a device SDK parses it.
fn bag(publish: &Publish) -> PropertyBag {
    match parse_hub_publish(&publish.topic) {
        Ok(HubTopic::CloudToDevice { properties }) => properties,
        other => panic!("{} is not a C2D topic: {other:?}", publish.topic),
    }
}

/// A raw device connection (clean session 0) subscribed to its messages at `qos`.
async fn subscribed(hub: &TestHub, record: &DeviceRecord, qos: QoS) -> RawClient {
    let mut client = hub.connected(record).await;
    let filter = format!("devices/{}/messages/devicebound/#", record.key.device_id);
    client.send(&subscribe(1, &filter, qos)).await;
    match client.receive().await {
        Some(Packet::SubAck(_)) => client,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The next packet is a PINGRESP: everything the hub had to send before it was sent.
async fn nothing_before_pingresp(client: &mut RawClient) {
    client.send(&Packet::PingReq).await;
    match client.receive().await {
        Some(Packet::PingResp) => {}
        other => panic!("expected only PINGRESP, got {other:?}"),
    }
}

async fn pending_count(hub: &TestHub, device: &str) -> usize {
    hub.hub
        .services
        .store
        .pending_c2d_for_device(
            &device_id(device),
            None,
            100,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .expect("read the queue")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_properties_reaches_our_device_sdk_and_its_completion_gives_feedback() {
    let hub = TestHub::start().await;
    let record = hub.create_device("lamp-1").await;
    let client = service(&hub, "service");
    let device = device_client(&hub, &record).await;
    let mut messages = device.cloud_to_device_messages().await.expect("subscribed");

    let request = SendC2dRequest {
        message_id: Some("cmd-1".into()),
        correlation_id: Some("corr-1".into()),
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        ack: Some(DeliveryAcknowledgement::Full),
        ttl_seconds: Some(600),
        properties: BTreeMap::from([
            ("priority".to_owned(), Some("high".to_owned())),
            ("flag".to_owned(), None),
        ]),
        ..SendC2dRequest::with_payload(br#"{"led":"on"}"#.to_vec())
    };
    let sent = client
        .send_c2d(&device_id("lamp-1"), &request)
        .await
        .expect("queued");
    assert_eq!(sent.message_id, "cmd-1");
    assert!(sent.expiry_time_utc > sent.enqueued_time_utc);

    let message = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("delivered in time")
        .expect("the stream goes on");
    assert_eq!(message.body_text(), Some(r#"{"led":"on"}"#));
    assert_eq!(message.message_id(), Some("cmd-1"));
    assert_eq!(message.correlation_id(), Some("corr-1"));
    assert_eq!(message.content_type(), Some("application/json"));
    assert_eq!(message.content_encoding(), Some("utf-8"));
    assert_eq!(message.to(), Some("/devices/lamp-1/messages/devicebound"));
    assert_eq!(message.ack(), Some("full"));
    assert!(message.expiry_time_utc().is_some());
    assert_eq!(
        message.application_properties().collect::<Vec<_>>(),
        vec![("flag", None), ("priority", Some("high"))]
    );

    // Not completed until the application asks for the next message.
    assert_eq!(pending_count(&hub, "lamp-1").await, 1);
    let second = send(&client, "lamp-1", text("second")).await;
    let next = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("delivered in time")
        .expect("the stream goes on");
    assert_eq!(next.body_text(), Some("second"));

    let mut feedback = client.feedback_stream(Duration::from_millis(50));
    let record = next_feedback(&mut feedback).await;
    assert_eq!(record.original_message_id, "cmd-1");
    assert_eq!(record.status_code, FeedbackStatusCode::Success);
    assert_eq!(record.device_id, device_id("lamp-1"));
    assert!(second > sent.sequence_number);
    // The second message asked for no feedback; dropping the stream acknowledges it.
    drop(messages);
    let drained = async {
        while pending_count(&hub, "lamp-1").await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, drained)
        .await
        .expect("the last message is completed when the stream is dropped");
    device.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_come_again_with_dup_and_their_packet_ids_until_puback() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let client = service(&hub, "service");
    let mut raw = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    send(&client, "dev1", text("one")).await;
    send(&client, "dev1", text("two")).await;
    let first = raw.receive_publish().await;
    let second = raw.receive_publish().await;
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"one"[..], &b"two"[..])
    );
    assert!(!first.dup && !second.dup);
    assert_eq!(first.qos, QoS::AtLeastOnce);
    assert_eq!(bag(&first).get("iothub-ack"), Some("none"));
    // The device goes away without acknowledging anything.
    drop(raw);

    // A new connection of the persistent session, which does not subscribe again (as the Python SDK).
    let mut raw = hub.connected(&record).await;
    let again_first = raw.receive_publish().await;
    let again_second = raw.receive_publish().await;
    assert!(again_first.dup && again_second.dup);
    assert_eq!(again_first.payload, first.payload);
    assert_eq!(again_first.packet_id, first.packet_id);
    assert_eq!(again_second.packet_id, second.packet_id);
    raw.send(&Packet::PubAck(again_first.packet_id.expect("QoS 1")))
        .await;
    nothing_before_pingresp(&mut raw).await;
    drop(raw);

    let mut raw = hub.connected(&record).await;
    let only = raw.receive_publish().await;
    assert_eq!(&only.payload[..], b"two");
    assert!(only.dup);
    raw.send(&Packet::PubAck(only.packet_id.expect("QoS 1")))
        .await;
    nothing_before_pingresp(&mut raw).await;
    assert_eq!(pending_count(&hub, "dev1").await, 0);
    drop(raw);

    // Nothing is left to deliver, and nothing is left in memory.
    let mut raw = hub.connected(&record).await;
    nothing_before_pingresp(&mut raw).await;
    assert_eq!(
        hub.hub.services.c2d.devices_with_unacknowledged(),
        0,
        "nothing unacknowledged is remembered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_at_most_its_window_in_flight_and_reads_on_at_each_puback() {
    let hub = TestHub::start_with(|config| config.limits.c2d_in_flight = 2).await;
    let record = hub.create_device("dev1").await;
    let client = service(&hub, "service");
    for index in 0..5 {
        send(&client, "dev1", text(&format!("m{index}"))).await;
    }
    let mut raw = subscribed(&hub, &record, QoS::AtLeastOnce).await;
    let mut received = Vec::new();
    for _ in 0..2 {
        received.push(raw.receive_publish().await);
    }
    nothing_before_pingresp(&mut raw).await;
    for expected in 2..5 {
        let oldest = received.remove(0);
        raw.send(&Packet::PubAck(oldest.packet_id.expect("QoS 1")))
            .await;
        let next = raw.receive_publish().await;
        assert_eq!(next.payload, format!("m{expected}").into_bytes());
        received.push(next);
    }
    for publish in received {
        raw.send(&Packet::PubAck(publish.packet_id.expect("QoS 1")))
            .await;
    }
    nothing_before_pingresp(&mut raw).await;
    assert_eq!(pending_count(&hub, "dev1").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_across_a_hub_restart_receives_its_pending_messages_in_order() {
    let first = TestHub::start().await;
    let record = first.create_device("meter").await;
    let raw = subscribed(&first, &record, QoS::AtLeastOnce).await;
    drop(raw);
    let client = service(&first, "service");
    for index in 0..3 {
        send(&client, "meter", text(&format!("while offline {index}"))).await;
    }

    let TestHub { hub, directory } = first;
    let (mqtt_address, https_address) = (hub.mqtt_address, hub.https_address);
    hub.shutdown(Duration::from_secs(1)).await;
    let mut config = fleethub_hub::HubConfig::for_loopback(directory.path().join("data"));
    config.mqtt_listen = mqtt_address;
    config.https_listen = https_address;
    let second = TestHub {
        hub: fleethub_hub::start(config).await.expect("the hub restarts"),
        directory,
    };
    let client = service(&second, "service");
    send(&client, "meter", text("after the restart")).await;

    // The session's subscription was persisted: no SUBSCRIBE needed.
    let mut raw = second.connected(&record).await;
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let publish = raw.receive_publish().await;
        bodies.push(String::from_utf8(publish.payload.to_vec()).expect("text"));
        raw.send(&Packet::PubAck(publish.packet_id.expect("QoS 1")))
            .await;
    }
    assert_eq!(
        bodies,
        [
            "while offline 0",
            "while offline 1",
            "while offline 2",
            "after the restart"
        ]
    );
    nothing_before_pingresp(&mut raw).await;
    assert_eq!(pending_count(&second, "meter").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_produces_expired_feedback_and_is_never_delivered() {
    let hub = TestHub::start().await;
    hub.create_device("sleepy").await;
    let client = service(&hub, "service");
    let request = SendC2dRequest {
        message_id: Some("short-lived".into()),
        ack: Some(DeliveryAcknowledgement::Negative),
        ttl_seconds: Some(1),
        ..text("too late")
    };
    send(&client, "sleepy", request).await;
    let mut feedback = client.feedback_stream(Duration::from_millis(100));
    let record = next_feedback(&mut feedback).await;
    assert_eq!(record.original_message_id, "short-lived");
    assert_eq!(record.status_code, FeedbackStatusCode::Expired);
    assert_eq!(record.description, "Expired");
    assert_eq!(pending_count(&hub, "sleepy").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos_0_subscription_gets_messages_at_most_once() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let client = service(&hub, "service");
    let mut raw = subscribed(&hub, &record, QoS::AtMostOnce).await;
    send(&client, "dev1", text("fire and forget")).await;
    let publish = raw.receive_publish().await;
    assert_eq!(publish.qos, QoS::AtMostOnce);
    assert_eq!(publish.packet_id, None);
    nothing_before_pingresp(&mut raw).await;
    assert_eq!(pending_count(&hub, "dev1").await, 0, "completed when sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_403004_without_affecting_other_devices_and_purge_empties_it() {
    let hub = TestHub::start().await;
    hub.create_device("busy").await;
    hub.create_device("other").await;
    let api = ServiceApi::for_hub(&hub, "service");
    for index in 0..50 {
        let reply = api
            .send(
                Method::POST,
                "/devices/busy/messages/deviceBound",
                &[],
                Some(json!({ "body": format!("m{index}") })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{index}: {}", reply.body);
    }
    let full = api
        .send(
            Method::POST,
            "/devices/busy/messages/deviceBound",
            &[],
            Some(json!({"body": "one too many"})),
        )
        .await;
    assert_eq!(full.status, StatusCode::FORBIDDEN);
    assert_eq!(
        full.error_code.as_deref(),
        Some("DeviceMaximumQueueDepthExceeded")
    );
    assert!(
        full.body.to_string().contains("already has 50"),
        "{}",
        full.body
    );
    let client = service(&hub, "service");
    let refused = client
        .send_c2d(&device_id("busy"), &text("still full"))
        .await
        .unwrap_err();
    let code = refused.error_code().expect("a known code");
    assert_eq!(
        (code, code.numeric()),
        (
            fleethub_protocol::errors::ErrorCode::DeviceMaximumQueueDepthExceeded,
            403004
        )
    );
    let other = api
        .send(
            Method::POST,
            "/devices/other/messages/deviceBound",
            &[],
            Some(json!({"body": "fine"})),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);

    let purged = client.purge_c2d(&device_id("busy")).await.expect("purged");
    assert_eq!(purged.total_messages_purged, 50);
    assert_eq!(purged.device_id, device_id("busy"));
    send(&client, "busy", text("room again")).await;
    let unknown = client.purge_c2d(&device_id("nobody")).await.unwrap_err();
    assert_eq!(
        unknown.error_code(),
        Some(fleethub_protocol::errors::ErrorCode::DeviceNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_are_refused_with_a_reason_and_the_right_status() {
    let hub = TestHub::start().await;
    hub.create_device("dev1").await;
    let api = ServiceApi::for_hub(&hub, "service");
    let path = "/devices/dev1/messages/deviceBound";
    // 64 KB counts the body and the message id.
    let at_limit = json!({"messageId": "m", "body": "a".repeat(64 * 1024 - 1)});
    let reply = api.send(Method::POST, path, &[], Some(at_limit)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let over = json!({"messageId": "m", "body": "a".repeat(64 * 1024)});
    let reply = api.send(Method::POST, path, &[], Some(over)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code.as_deref(), Some("MessageTooLarge"));
    assert!(
        reply.body.to_string().contains("65537 bytes"),
        "{}",
        reply.body
    );

    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            json!({"body": "x", "propeties": {}}),
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "propeties",
        ),
        (
            json!({"body": "x", "bodyBase64": "eA=="}),
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "not both",
        ),
        (
            json!({"properties": {"k": "high temp"}}),
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "contains ' '",
        ),
        (
            json!({"messageId": "a/b"}),
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "messageId contains '/'",
        ),
        (
            json!({"ack": "sometimes"}),
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "not an acknowledgement",
        ),
        (
            json!({"ttlSeconds": 0}),
            StatusCode::FORBIDDEN,
            "InvalidMessageExpiryTime",
            "not in the future",
        ),
        (
            json!({"ttlSeconds": 3 * 24 * 3600}),
            StatusCode::FORBIDDEN,
            "InvalidMessageExpiryTime",
            "more than 2 days ahead",
        ),
    ];
    for (body, status, code, says) in cases {
        let reply = api.send(Method::POST, path, &[], Some(body.clone())).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.error_code.as_deref(), Some(code), "{body}");
        assert!(
            reply.body.to_string().contains(says),
            "{body}: {} does not say {says:?}",
            reply.body
        );
    }
    let not_json = api
        .call(
            Some(&api.token(unix_now() + 600)),
            Method::POST,
            path,
            &[],
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(not_json.body.to_string().contains("not valid JSON"));

    let unknown = api
        .send(
            Method::POST,
            "/devices/nobody/messages/deviceBound",
            &[],
            Some(json!({"body": "x"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code.as_deref(), Some("DeviceNotFound"));

    let reader = ServiceApi::for_hub(&hub, "registryRead");
    let forbidden = reader
        .send(Method::POST, path, &[], Some(json!({"body": "x"})))
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    let anonymous = api
        .call(None, Method::POST, path, &[], Some(b"{}".to_vec()))
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // Nothing refused was queued: only the message at the limit.
    assert_eq!(pending_count(&hub, "dev1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_batches_are_locked_abandoned_received_again_and_completed() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let client = service(&hub, "service");
    assert!(
        client.receive_feedback().await.expect("answers").is_none(),
        "204 when there is none"
    );
    let request = SendC2dRequest {
        message_id: Some("purged-1".into()),
        ack: Some(DeliveryAcknowledgement::Negative),
        ..text("x")
    };
    send(&client, "dev1", request).await;
    client.purge_c2d(&device_id("dev1")).await.expect("purged");

    let batch = client
        .receive_feedback()
        .await
        .expect("answers")
        .expect("a batch");
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].status_code, FeedbackStatusCode::Purged);
    assert_eq!(
        batch.records[0].device_generation_id,
        record.identity.generation_id
    );
    assert!(
        client.receive_feedback().await.expect("answers").is_none(),
        "a locked batch is handed out once"
    );
    client
        .abandon_feedback(&batch.lock_token)
        .await
        .expect("abandoned");
    let again = client
        .receive_feedback()
        .await
        .expect("answers")
        .expect("the batch again");
    assert_eq!(again.records, batch.records);
    assert_ne!(again.lock_token, batch.lock_token);
    let stale = client
        .complete_feedback(&batch.lock_token)
        .await
        .unwrap_err();
    assert_eq!(
        stale.error_code(),
        Some(fleethub_protocol::errors::ErrorCode::DeviceMessageLockLost)
    );
    client
        .complete_feedback(&again.lock_token)
        .await
        .expect("completed");
    assert!(client.receive_feedback().await.expect("answers").is_none());

    let api = ServiceApi::for_hub(&hub, "service");
    let bad = api
        .send(
            Method::DELETE,
            "/messages/serviceBound/feedback/not%20a%20token",
            &[],
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_receives_over_https_with_a_lock_and_completes_rejects_or_abandons() {
    let hub = TestHub::start().await;
    let record = hub.create_device("http-dev").await;
    let other = hub.create_device("other").await;
    let client = service(&hub, "service");
    let request = SendC2dRequest {
        message_id: Some("h-1".into()),
        correlation_id: Some("c-1".into()),
        content_type: Some("text/plain".into()),
        ack: Some(DeliveryAcknowledgement::Full),
        properties: BTreeMap::from([("Mode".to_owned(), Some("eco".to_owned()))]),
        ..text("over https")
    };
    send(&client, "http-dev", request).await;
    send(
        &client,
        "http-dev",
        SendC2dRequest {
            message_id: Some("h-2".into()),
            ack: Some(DeliveryAcknowledgement::Negative),
            ..text("to reject")
        },
    )
    .await;

    let api = ServiceApi::for_hub(&hub, "service");
    let token = device_token(&record, unix_now() + 600);
    let receive = || {
        api.call(
            Some(&token),
            Method::GET,
            "/devices/http-dev/messages/deviceBound",
            &[],
            None,
        )
    };
    let first = receive().await;
    assert_eq!(first.status, StatusCode::OK);
    let header = |name: &str| {
        first
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(first.body, json!("over https"));
    assert_eq!(header("iothub-messageid").as_deref(), Some("h-1"));
    assert_eq!(header("iothub-correlationid").as_deref(), Some("c-1"));
    assert_eq!(header("iothub-ack").as_deref(), Some("full"));
    assert_eq!(header("iothub-app-mode").as_deref(), Some("eco"));
    assert_eq!(header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(
        header("iothub-to").as_deref(),
        Some("/devices/http-dev/messages/devicebound")
    );
    let etag = header("etag").expect("a lock token");
    let lock = etag.trim_matches('"').to_owned();

    // Locked: the next receive gets the second message.
    let second = receive().await;
    assert_eq!(second.body, json!("to reject"));
    let second_etag = second
        .headers
        .get("etag")
        .and_then(|value| value.to_str().ok())
        .expect("a lock token")
        .trim_matches('"')
        .to_owned();
    let nothing = receive().await;
    assert_eq!(nothing.status, StatusCode::NO_CONTENT);

    // Another device's token may not settle this device's messages.
    let intruder = api
        .call(
            Some(&device_token(&other, unix_now() + 600)),
            Method::DELETE,
            &format!("/devices/http-dev/messages/deviceBound/{lock}"),
            &[],
            None,
        )
        .await;
    assert_eq!(intruder.status, StatusCode::UNAUTHORIZED);

    // Abandon the first: it comes back. Then complete it; reject the second.
    let abandoned = api
        .call(
            Some(&token),
            Method::POST,
            &format!("/devices/http-dev/messages/deviceBound/{lock}/abandon"),
            &[],
            None,
        )
        .await;
    assert_eq!(abandoned.status, StatusCode::NO_CONTENT);
    let again = receive().await;
    assert_eq!(again.body, json!("over https"));
    let again_headers = &again.headers;
    assert_eq!(
        again_headers
            .get("iothub-deliverycount")
            .and_then(|value| value.to_str().ok()),
        Some("1")
    );
    let again_lock = again_headers
        .get("etag")
        .and_then(|value| value.to_str().ok())
        .expect("a lock token")
        .trim_matches('"')
        .to_owned();
    let stale = api
        .call(
            Some(&token),
            Method::DELETE,
            &format!("/devices/http-dev/messages/deviceBound/{lock}"),
            &[],
            None,
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.error_code.as_deref(), Some("DeviceMessageLockLost"));
    for (lock, query) in [(&again_lock, ""), (&second_etag, "?reject")] {
        let settled = api
            .call(
                Some(&token),
                Method::DELETE,
                &format!("/devices/http-dev/messages/devicebound/{lock}{query}"),
                &[],
                None,
            )
            .await;
        assert_eq!(settled.status, StatusCode::NO_CONTENT, "{query}");
    }
    assert_eq!(pending_count(&hub, "http-dev").await, 0);

    let mut feedback = client.feedback_stream(Duration::from_millis(50));
    let mut outcomes = [
        next_feedback(&mut feedback).await,
        next_feedback(&mut feedback).await,
    ];
    outcomes.sort_by(|a, b| a.original_message_id.cmp(&b.original_message_id));
    assert_eq!(outcomes[0].original_message_id, "h-1");
    assert_eq!(outcomes[0].status_code, FeedbackStatusCode::Success);
    assert_eq!(outcomes[1].original_message_id, "h-2");
    assert_eq!(outcomes[1].status_code, FeedbackStatusCode::Rejected);

    let anonymous = api
        .call(
            None,
            Method::GET,
            "/devices/http-dev/messages/deviceBound",
            &[],
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_connection_never_disturbs_another_devices_delivery() {
    let hub = TestHub::start().await;
    let good = hub.create_device("good").await;
    let bad = hub.create_device("bad").await;
    let client = service(&hub, "service");
    let mut good_raw = subscribed(&hub, &good, QoS::AtLeastOnce).await;
    let mut bad_raw = subscribed(&hub, &bad, QoS::AtLeastOnce).await;
    send(&client, "bad", text("for bad")).await;
    let publish = bad_raw.receive_publish().await;
    assert_eq!(&publish.payload[..], b"for bad");
    // A PUBACK for a packet id the hub never used, then garbage: only that connection closes.
    bad_raw.send(&Packet::PubAck(packet_id(999))).await;
    bad_raw.send_bytes(&[0xff, 0xff, 0xff]).await;
    bad_raw.expect_closed().await;
    send(&client, "good", text("for good")).await;
    let publish = good_raw.receive_publish().await;
    assert_eq!(&publish.payload[..], b"for good");
    good_raw
        .send(&Packet::PubAck(publish.packet_id.expect("QoS 1")))
        .await;
    nothing_before_pingresp(&mut good_raw).await;
    assert_eq!(pending_count(&hub, "good").await, 0);
    assert_eq!(pending_count(&hub, "bad").await, 1, "never acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_device_sdk_keeps_receiving_across_a_hub_restart_and_gets_unacknowledged_messages_again()
 {
    let first = TestHub::start().await;
    let record = first.create_device("sdk-dev").await;
    let device = device_client(&first, &record).await;
    let mut messages = device.cloud_to_device_messages().await.expect("subscribed");
    let client = service(&first, "service");
    send(&client, "sdk-dev", text("before")).await;
    let before = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("in time")
        .expect("the stream goes on");
    assert_eq!(before.body_text(), Some("before"));

    // The hub stops while the application still holds "before" (not acknowledged yet).
    let TestHub { hub, directory } = first;
    let (mqtt_address, https_address) = (hub.mqtt_address, hub.https_address);
    hub.shutdown(Duration::from_secs(1)).await;
    let mut state = device.connection_state();
    tokio::time::timeout(WAIT, async {
        while !matches!(
            *state.borrow_and_update(),
            fleethub_device::ConnectionState::Reconnecting { .. }
        ) {
            state.changed().await.expect("the client runs");
        }
    })
    .await
    .expect("the client notices the hub is gone");
    let mut config = fleethub_hub::HubConfig::for_loopback(directory.path().join("data"));
    config.mqtt_listen = mqtt_address;
    config.https_listen = https_address;
    let second = TestHub {
        hub: fleethub_hub::start(config).await.expect("the hub restarts"),
        directory,
    };
    let client = service(&second, "service");
    send(&client, "sdk-dev", text("after")).await;

    // "before" comes again (its acknowledgement belonged to the lost connection), then "after".
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("in time")
            .expect("the stream goes on");
        bodies.push(message.body_text().expect("text").to_owned());
    }
    assert_eq!(bodies, ["before", "after"]);
    drop(messages);
    let drained = async {
        while pending_count(&second, "sdk-dev").await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, drained)
        .await
        .expect("both are completed once the application has them");
    device.disconnect().await.expect("disconnect");
}
