//! Device-to-cloud messages end to end on a real hub (TLS, MQTT, HTTPS on loopback): our device SDK sends,
//! the service SDK reads the event stream; raw MQTT clients for what the SDK would never send (oversized
//! messages, bad property bags, RETAIN, Will messages, interleaved PUBACK order); the hub's own events in
//! Azure's schema; consumer groups resuming from their checkpoints.

use std::time::Duration;

use bytes::Bytes;
use fleethub_device::{DeviceClient, DeviceClientOptions, Message};
use fleethub_mqtt::{LastWill, Packet, Publish, QoS};
use fleethub_protocol::events::{Checkpoint, EventMessage};
use fleethub_protocol::ids::DeviceId;
use fleethub_service::{
    EventReadOptions, EventStart, EventStream, ServiceClient, ServiceClientOptions,
};
use fleethub_store::DeviceRecord;
use fleethub_testkit::{TestHub, connect_for, packet_id, publish_qos1};
use reqwest::StatusCode;
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

fn connection_string(record: &DeviceRecord) -> String {
    let key = record
        .identity
        .authentication
        .primary_key
        .as_deref()
        .expect("SAS identity");
    let module = record
        .key
        .module_id
        .as_ref()
        .map(|module| format!(";ModuleId={module}"))
        .unwrap_or_default();
    format!(
        "HostName=localhost;DeviceId={}{module};SharedAccessKey={key}",
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

async fn next_event(stream: &mut EventStream) -> EventMessage {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event within the timeout")
        .expect("the stream goes on")
        .expect("no stream error")
}

/// The next event of `source`, skipping others (connection events, say).
async fn next_of(stream: &mut EventStream, source: &str) -> EventMessage {
    loop {
        let event = next_event(stream).await;
        if event.message_source() == Some(source) {
            return event;
        }
    }
}

async fn stream_of(client: &ServiceClient, device: &str, start: EventStart) -> EventStream {
    client
        .read_events(EventReadOptions {
            device: Some(device.parse::<DeviceId>().unwrap()),
            start,
            ..EventReadOptions::default()
        })
        .await
        .expect("the stream opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_with_properties_reaches_the_event_stream_with_azures_system_properties() {
    let hub = TestHub::start().await;
    let record = hub.create_device("thermostat-1").await;
    let client = service(&hub, "service");
    let mut events = stream_of(&client, "thermostat-1", EventStart::Latest).await;
    let device = device_client(&hub, &record).await;

    // Three messages in flight at once; each call resolves at its own PUBACK.
    let messages = (0..3).map(|index| {
        Message::json(&json!({"temperature": 20 + index}))
            .with_message_id(format!("mid-{index}"))
            .with_correlation_id("corr-1")
            .with_user_id("user-1")
            .with_expiry_time_utc("2030-01-02T03:04:05+00:00")
            .with_property("alert", "high temp")
            .with_property("zz", "a&b=c/d")
    });
    let sends = messages.map(|message| device.send_message(message));
    for result in futures_util::future::join_all(sends).await {
        result.expect("acknowledged");
    }

    for index in 0..3 {
        let event = next_of(&mut events, "Telemetry").await;
        let system = &event.system_properties;
        assert_eq!(event.body, json!({"temperature": 20 + index}).to_string());
        assert_eq!(system["message-id"], json!(format!("mid-{index}")));
        assert_eq!(system["correlation-id"], json!("corr-1"));
        assert_eq!(system["user-id"], json!("user-1"));
        assert_eq!(system["content-type"], json!("application/json"));
        assert_eq!(system["content-encoding"], json!("utf-8"));
        assert_eq!(
            system["absolute-expiry-time"],
            json!("2030-01-02T03:04:05+00:00")
        );
        assert_eq!(system["iothub-connection-device-id"], json!("thermostat-1"));
        assert_eq!(
            system["iothub-connection-auth-method"],
            json!(
                r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            )
        );
        assert_eq!(
            system["iothub-connection-auth-generation-id"],
            json!(record.identity.generation_id)
        );
        assert_eq!(system["iothub-message-source"], json!("Telemetry"));
        assert!(
            system["iothub-enqueuedtime"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(
            event.properties,
            json!({"alert": "high temp", "zz": "a&b=c/d"})
                .as_object()
                .unwrap()
                .clone()
        );
        // Durable before the PUBACK: the log already holds it.
        let info = hub
            .hub
            .services
            .events
            .partition_info(event.partition)
            .unwrap();
        assert!(info.next_offset > event.sequence_number);
    }

    // A module's output: its module id and output name are stamped too.
    let module = hub.create_module("thermostat-1", "filter").await;
    let module_client = device_client(&hub, &module).await;
    module_client
        .send_message(Message::new("raw bytes").with_output_name("out1"))
        .await
        .expect("acknowledged");
    let event = next_of(&mut events, "Telemetry").await;
    assert_eq!(event.module_id(), Some("filter"));
    assert_eq!(event.system_property("iothub-outputname"), Some("out1"));
    assert!(
        event
            .system_property("iothub-connection-auth-method")
            .unwrap()
            .contains(r#""scope":"module""#)
    );
    assert_eq!(event.body, "raw bytes");
    device.disconnect().await.unwrap();
    module_client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_connection_and_lifecycle_events_appear_in_azures_schema() {
    let hub = TestHub::start().await;
    let client = service(&hub, "iothubowner");
    let mut events = stream_of(&client, "dev-events", EventStart::Earliest).await;
    let record = hub.create_device("dev-events").await;
    let device = device_client(&hub, &record).await;
    device
        .patch_reported(&json!({"firmware": "1.0"}))
        .await
        .expect("reported");
    let twin = client
        .get_twin(&"dev-events".parse().unwrap())
        .await
        .unwrap();
    client
        .update_twin(
            &"dev-events".parse().unwrap(),
            &json!({"properties": {"desired": {"interval": 5}}}),
            twin.etag.as_ref(),
        )
        .await
        .unwrap();
    device.disconnect().await.unwrap();

    let expected = [
        (
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            "createDeviceIdentity",
        ),
        (
            "deviceConnectionStateEvents",
            "deviceConnectionStateNotification",
            "deviceConnected",
        ),
        ("twinChangeEvents", "twinChangeNotification", "updateTwin"),
        ("twinChangeEvents", "twinChangeNotification", "updateTwin"),
        (
            "deviceConnectionStateEvents",
            "deviceConnectionStateNotification",
            "deviceDisconnected",
        ),
        (
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            "deleteDeviceIdentity",
        ),
    ];
    let mut seen = Vec::new();
    for (source, schema, operation) in expected {
        if operation == "deleteDeviceIdentity" {
            // Only now: the hub records the disconnection when the connection task ends, after the client's
            // DISCONNECT; a delete before that would come first in the log.
            hub.hub
                .services
                .delete_identity(&record.key, fleethub_protocol::ids::IfMatch::Any)
                .await
                .unwrap();
        }
        let event = next_event(&mut events).await;
        assert_eq!(event.message_source(), Some(source), "{seen:?}");
        assert_eq!(event.property("iothub-message-schema"), Some(schema));
        assert_eq!(event.property("opType"), Some(operation));
        assert_eq!(event.property("deviceId"), Some("dev-events"));
        assert_eq!(event.property("hubName"), Some("localhost"));
        assert!(event.property("operationTimestamp").unwrap().ends_with('Z'));
        assert_eq!(
            event.system_property("content-type"),
            Some("application/json")
        );
        assert_eq!(event.system_property("content-encoding"), Some("utf-8"));
        assert_eq!(event.system_property("user-id"), Some("localhost"));
        assert_eq!(event.device_id(), Some("dev-events"));
        let body: Value = serde_json::from_str(&event.body).unwrap();
        match operation {
            "createDeviceIdentity" => {
                assert_eq!(body["deviceId"], json!("dev-events"));
                assert!(
                    body["properties"]["desired"]["$version"].is_number(),
                    "{body}"
                );
            }
            "deviceConnected" | "deviceDisconnected" => {
                let sequence = body["sequenceNumber"].as_str().unwrap();
                assert_eq!(sequence.len(), 64);
                assert!(sequence.chars().all(|digit| digit.is_ascii_hexdigit()));
            }
            "updateTwin" => assert!(body["version"].is_number(), "{body}"),
            _ => {}
        }
        seen.push((operation, body));
    }
    assert_eq!(
        seen[2].1["properties"]["reported"]["firmware"],
        json!("1.0")
    );
    assert_eq!(seen[3].1["properties"]["desired"]["interval"], json!(5));
}

/// A raw connection of `record` that has completed CONNECT, with an optional Will message.
async fn raw_with_will(
    hub: &TestHub,
    record: &DeviceRecord,
    will: Option<LastWill>,
) -> fleethub_testkit::RawClient {
    let mut client = hub.raw().await;
    let mut connect = connect_for(record, 60);
    connect.will = will;
    client.connect_accepted(connect).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_or_a_bad_property_bag_closes_only_that_connection() {
    let hub = TestHub::start().await;
    let bad = hub.create_device("bad").await;
    let good = hub.create_device("good").await;
    let mut good_client = hub.connected(&good).await;

    // 256 KB of body plus a property: one byte over IoT Hub's limit (the packet itself is within the MQTT
    // limit, so it is the message rule that refuses it).
    let mut big = hub.connected(&bad).await;
    let body = vec![b'x'; 256 * 1024];
    big.send(&publish_qos1("devices/bad/messages/events/k=v", 1, &body))
        .await;
    big.expect_closed_because("an oversized message").await;

    let mut malformed = hub.connected(&bad).await;
    malformed
        .send(&publish_qos1("devices/bad/messages/events/a=%zz", 2, b"x"))
        .await;
    malformed
        .expect_closed_because("a malformed property bag")
        .await;

    // The other device never noticed.
    good_client
        .send(&publish_qos1(
            "devices/good/messages/events/ok=1",
            9,
            b"fine",
        ))
        .await;
    assert_eq!(
        good_client.receive().await,
        Some(Packet::PubAck(packet_id(9)))
    );
    let events = &hub.hub.services.events;
    let mut bodies = Vec::new();
    for partition in 0..events.partition_count() {
        let batch = events
            .read(partition, 0, fleethub_eventlog::ReadLimits::default())
            .await
            .unwrap();
        bodies.extend(
            batch
                .events
                .into_iter()
                .filter(|event| event.system_property("iothub-message-source") == Some("Telemetry"))
                .map(|event| event.body),
        );
    }
    assert_eq!(
        bodies,
        vec![Bytes::from("fine")],
        "nothing of the refused messages was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_follow_the_order_of_the_publishes_even_with_twin_requests_between() {
    let hub = TestHub::start().await;
    let record = hub.create_device("ordered").await;
    let mut client = hub.connected(&record).await;
    let mut wire = bytes::BytesMut::new();
    for id in 1..=40u16 {
        let packet = if id == 20 {
            publish_qos1("$iothub/twin/GET/?$rid=7", id, b" ")
        } else {
            publish_qos1(&format!("devices/ordered/messages/events/n={id}"), id, b"m")
        };
        fleethub_mqtt::encode(&packet, &mut wire).unwrap();
    }
    // All in one write: the hub reads them together and must still acknowledge in order.
    client.send_bytes(&wire).await;
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 40 {
        match client.receive().await {
            Some(Packet::PubAck(id)) => acknowledged.push(id.get()),
            Some(Packet::Publish(_)) => {} // the twin response
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acknowledged, (1..=40).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_publishes_and_will_messages_become_telemetry_with_their_properties() {
    let hub = TestHub::start().await;
    let record = hub.create_device("willing").await;
    let client = service(&hub, "service");
    let mut events = stream_of(&client, "willing", EventStart::Latest).await;

    let will = LastWill {
        topic: "devices/willing/messages/events/reason=gone".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    let mut raw = raw_with_will(&hub, &record, Some(will.clone())).await;
    raw.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "devices/willing/messages/events/".into(),
        packet_id: Some(packet_id(1)),
        payload: Bytes::from_static(b"kept?"),
    }))
    .await;
    assert_eq!(raw.receive().await, Some(Packet::PubAck(packet_id(1))));
    let retained = next_of(&mut events, "Telemetry").await;
    assert_eq!(retained.property("mqtt-retain"), Some("true"));

    // The connection dies without DISCONNECT: the Will message is delivered.
    drop(raw);
    let delivered = next_of(&mut events, "Telemetry").await;
    assert_eq!(delivered.body, "offline");
    assert_eq!(delivered.property("iothub-MessageType"), Some("Will"));
    assert_eq!(delivered.property("reason"), Some("gone"));

    // A clean DISCONNECT discards it: the next telemetry is the one sent after.
    let mut raw = raw_with_will(&hub, &record, Some(will)).await;
    raw.send(&Packet::Disconnect).await;
    raw.expect_closed().await;
    let mut plain = hub.connected(&record).await;
    plain
        .send(&publish_qos1(
            "devices/willing/messages/events/",
            5,
            b"after",
        ))
        .await;
    assert_eq!(plain.receive().await, Some(Packet::PubAck(packet_id(5))));
    assert_eq!(next_of(&mut events, "Telemetry").await.body, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_resumes_after_its_checkpoint_without_gaps_or_duplicates() {
    let hub = TestHub::start().await;
    let record = hub.create_device("counted").await;
    let client = service(&hub, "service");
    let device = device_client(&hub, &record).await;
    for index in 0..10 {
        device
            .send_message(Message::new(format!("m{index}")))
            .await
            .unwrap();
    }
    let options = || EventReadOptions {
        device: Some("counted".parse().unwrap()),
        start: EventStart::Earliest,
        consumer_group: Some("billing".into()),
        ..EventReadOptions::default()
    };
    let mut received = Vec::new();
    let mut first = client.read_events(options()).await.unwrap();
    for _ in 0..4 {
        received.push(next_of(&mut first, "Telemetry").await);
    }
    let last = received.last().unwrap().clone();
    client
        .save_checkpoints(
            "billing",
            &[Checkpoint {
                partition: last.partition,
                sequence_number: last.sequence_number,
            }],
        )
        .await
        .unwrap();
    drop(first);

    let mut second = client.read_events(options()).await.unwrap();
    for _ in 4..10 {
        received.push(next_of(&mut second, "Telemetry").await);
    }
    let bodies: Vec<&str> = received.iter().map(|event| event.body.as_str()).collect();
    assert_eq!(
        bodies,
        (0..10).map(|index| format!("m{index}")).collect::<Vec<_>>()
    );
    let saved = client.checkpoints("billing").await.unwrap();
    assert_eq!(saved.checkpoints.len(), 1);

    // Checkpoints name events that exist.
    let error = client
        .save_checkpoints(
            "billing",
            &[Checkpoint {
                partition: last.partition,
                sequence_number: 1_000_000,
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    client.delete_consumer_group("billing").await.unwrap();
    assert!(
        client
            .checkpoints("billing")
            .await
            .unwrap()
            .checkpoints
            .is_empty()
    );
    device.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_resumes_from_last_event_id_and_needs_service_connect() {
    let hub = TestHub::start().await;
    let record = hub.create_device("resumed").await;
    let device = device_client(&hub, &record).await;
    for index in 0..3 {
        device
            .send_message(Message::new(format!("r{index}")))
            .await
            .unwrap();
    }
    let api = fleethub_testkit::ServiceApi::for_hub(&hub, "service");
    let token = api.token(fleethub_testkit::unix_now() + 600);
    let read_first_events = |last_event_id: Option<String>, wanted: usize| {
        let api = &api;
        let token = token.clone();
        async move {
            let mut request = api
                .client
                .get(format!(
                    "{}/events?deviceId=resumed&from=@earliest",
                    api.base
                ))
                .header("authorization", token);
            if let Some(id) = last_event_id {
                request = request.header("last-event-id", id);
            }
            let mut response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            assert!(
                response
                    .headers()
                    .contains_key("x-fleethub-stream-position")
            );
            let mut text = String::new();
            let mut found = Vec::new();
            while found.len() < wanted {
                let chunk = tokio::time::timeout(WAIT, response.chunk())
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("more");
                text.push_str(std::str::from_utf8(&chunk).unwrap());
                found = text
                    .split("\n\n")
                    .filter(|block| block.contains("event: Telemetry"))
                    .map(|block| {
                        let id = block
                            .lines()
                            .find_map(|line| line.strip_prefix("id: "))
                            .unwrap()
                            .to_owned();
                        let data = block
                            .lines()
                            .find_map(|line| line.strip_prefix("data: "))
                            .unwrap();
                        let event: EventMessage = serde_json::from_str(data).unwrap();
                        (id, event.body)
                    })
                    .collect::<Vec<_>>();
            }
            found
        }
    };
    let first = read_first_events(None, 3).await;
    let bodies: Vec<&str> = first.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(bodies, vec!["r0", "r1", "r2"]);
    let resumed = read_first_events(Some(first[1].0.clone()), 1).await;
    assert_eq!(
        resumed[0].1, "r2",
        "Last-Event-ID resumes right after that event"
    );

    // RegistryRead alone may not read events; the service policy may.
    let registry = fleethub_testkit::ServiceApi::for_hub(&hub, "registryRead");
    let denied = registry
        .client
        .get(format!("{}/events/partitions", registry.base))
        .header(
            "authorization",
            registry.token(fleethub_testkit::unix_now() + 600),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let partitions = service(&hub, "service").event_partitions().await.unwrap();
    assert_eq!(partitions.partition_count, 4);
    assert_eq!(partitions.partitions.len(), 4);
    assert!(
        partitions
            .partitions
            .iter()
            .any(|partition| !partition.is_empty)
    );
    device.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_telemetry_is_kept_and_a_partition_reads_from_a_sequence_number() {
    let hub = TestHub::start().await;
    let record = hub.create_device("quiet").await;
    let mut raw = hub.connected(&record).await;
    for (index, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtMostOnce]
        .into_iter()
        .enumerate()
    {
        raw.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: format!("devices/quiet/messages/events/n={index}"),
            packet_id: (qos == QoS::AtLeastOnce).then(|| packet_id(7)),
            payload: Bytes::from(format!("q{index}")),
        }))
        .await;
    }
    // The one PUBACK is for the QoS 1 publish; the QoS 0 ones get none, but are kept all the same.
    assert_eq!(raw.receive().await, Some(Packet::PubAck(packet_id(7))));
    let client = service(&hub, "service");
    let mut all = stream_of(&client, "quiet", EventStart::Earliest).await;
    let mut telemetry = Vec::new();
    for _ in 0..3 {
        telemetry.push(next_of(&mut all, "Telemetry").await);
    }
    let bodies: Vec<&str> = telemetry.iter().map(|event| event.body.as_str()).collect();
    assert_eq!(bodies, vec!["q0", "q1", "q2"]);
    let partition = hub.hub.services.events.partition_of("quiet");
    assert!(telemetry.iter().all(|event| event.partition == partition));

    // A partition from a sequence number: that event first, then what follows.
    let mut from_second = client
        .read_events(EventReadOptions {
            partitions: Some(vec![partition]),
            start: EventStart::SequenceNumber(telemetry[1].sequence_number),
            ..EventReadOptions::default()
        })
        .await
        .expect("the stream opens");
    let first = next_event(&mut from_second).await;
    assert_eq!(
        (first.partition, first.sequence_number, first.body.as_str()),
        (partition, telemetry[1].sequence_number, "q1")
    );
    assert_eq!(next_event(&mut from_second).await.body, "q2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_and_checkpoint_requests_are_refused_with_400_and_a_reason() {
    let hub = TestHub::start().await;
    let api = fleethub_testkit::ServiceApi::for_hub(&hub, "service");
    for (query, reason) in [
        ("partition=4", "partition must list partitions from 0 to 3"),
        ("partition=0,x", "partition must list partitions"),
        ("from=yesterday", "from must be @latest, @earliest"),
        ("from=-5", "from must be"),
        ("position=0:x", "is not a stream position"),
        ("position=0:1,0:2", "is not a stream position"),
        ("consumerGroup=a%2Fb", "consumer group \"a/b\" is not valid"),
        ("consumerGroup=", "consumer group \"\" is not valid"),
        ("deviceId=bad%20id", "deviceId \"bad id\""),
    ] {
        let reply = api
            .send(reqwest::Method::GET, &format!("/events?{query}"), &[], None)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {:?}",
            reply.body
        );
        let message = reply.body["Message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
            + reply.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{query}: {}", reply.body);
    }
    let bad_last_event_id = api
        .send(
            reqwest::Method::GET,
            "/events",
            &[("last-event-id", "garbage")],
            None,
        )
        .await;
    assert_eq!(bad_last_event_id.status, StatusCode::BAD_REQUEST);

    for (body, reason) in [
        (json!({"checkpoints": []}), "checkpoints is empty"),
        (
            json!({"checkpoints": [{"partition": 9, "sequenceNumber": 0}]}),
            "there is no partition 9",
        ),
        (
            json!({"checkpoints": [{"partition": 0, "sequenceNumber": 0}]}),
            "has no event 0 yet",
        ),
        (json!({"checkpoints": [{"partition": -1}]}), ""),
        (json!([1, 2]), ""),
    ] {
        let reply = api
            .send(
                reqwest::Method::PUT,
                "/events/consumerGroups/g1/checkpoints",
                &[],
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {:?}",
            reply.body
        );
        assert!(
            reply.body.to_string().contains(reason),
            "{body}: {}",
            reply.body
        );
    }
    let not_json = api
        .call(
            Some(&api.token(fleethub_testkit::unix_now() + 600)),
            reqwest::Method::PUT,
            "/events/consumerGroups/g1/checkpoints",
            &[],
            Some(b"{\"checkpoints\": [".to_vec()),
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    let missing = api
        .send(
            reqwest::Method::DELETE,
            "/events/consumerGroups/never-used",
            &[],
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
