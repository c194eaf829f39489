//! The MQTT gateway against a real hub over real TLS, driven by a raw client: authentication, sessions,
//! twin and method topics, and every kind of bad input with its exact outcome.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleethub_hub::services::MethodInvocation;
use fleethub_mqtt::{Connect, ConnectReturnCode, Packet, Publish, QoS, SubscribeReturnCode};
use fleethub_protocol::rest::{ConnectionState, DeviceStatus};
use fleethub_testkit::*;
use serde_json::{Value, json};

fn invocation(method_name: &str, timeout_seconds: u64) -> MethodInvocation {
    MethodInvocation {
        method_name: method_name.into(),
        payload: json!({"fwPackageUri": "https://example.invalid/fw.bin"}),
        response_timeout: Duration::from_secs(timeout_seconds),
        connect_timeout: Duration::ZERO,
    }
}

fn rid_of(topic: &str) -> String {
    let query = topic.split_once('?').expect("topic has a query").1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("$rid="))
        .expect("topic has a $rid")
        .to_owned()
}

#[tokio::test]
async fn device_connects_reports_and_gets_its_twin() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut client = hub.connected(&record).await;

    let stored = hub.hub.services.get_identity(&record.key).await.unwrap();
    assert_eq!(stored.identity.connection_state, ConnectionState::Connected);

    // A twin GET is answered even without a subscription to the response topic (PROTOCOL.md §2.9).
    client
        .send(&publish_qos1("$iothub/twin/GET/?$rid=g1", 1, b" "))
        .await;
    let response = client.receive_publish().await;
    assert_eq!(response.topic, "$iothub/twin/res/200/?$rid=g1");
    let twin: Value = serde_json::from_slice(&response.payload).unwrap();
    assert_eq!(twin["desired"]["$version"], json!(1));
    assert!(twin["reported"]["$metadata"]["$lastUpdated"].is_string());

    client
        .send(&publish_qos1(
            "$iothub/twin/PATCH/properties/reported/?$rid=p1",
            2,
            br#"{"firmwareStatus":"standBy"}"#,
        ))
        .await;
    assert_eq!(
        client.receive().await,
        Some(Packet::PubAck(packet_id(2))),
        "PUBACK after the durable write"
    );
    let response = client.receive_publish().await;
    assert_eq!(response.topic, "$iothub/twin/res/204/?$rid=p1&$version=2");
    assert!(response.payload.is_empty());

    let stored = hub.hub.services.get_identity(&record.key).await.unwrap();
    assert_eq!(
        stored.twin.properties_json()["reported"]["firmwareStatus"],
        json!("standBy")
    );
}

#[tokio::test]
async fn method_round_trip_and_late_answer_is_dropped() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut client = hub.connected(&record).await;
    client
        .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));

    let services = hub.hub.services.clone();
    let key = record.key.clone();
    let call = tokio::spawn(async move {
        services
            .invoke_method(&key, invocation("firmwareUpdate", 30))
            .await
    });
    let request = client.receive_publish().await;
    assert!(
        request
            .topic
            .starts_with("$iothub/methods/POST/firmwareUpdate/?$rid="),
        "{}",
        request.topic
    );
    let payload: Value = serde_json::from_slice(&request.payload).unwrap();
    assert_eq!(
        payload["fwPackageUri"],
        json!("https://example.invalid/fw.bin")
    );
    let rid = rid_of(&request.topic);
    client
        .send(&publish_qos1(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            2,
            br#"{"Response":"Firmware update started"}"#,
        ))
        .await;
    let result = call.await.unwrap().expect("method succeeds");
    assert_eq!(result.status, 200);
    assert_eq!(
        result.payload,
        json!({"Response": "Firmware update started"})
    );

    // A second call times out; the device's late answer afterwards is dropped without harm.
    let services = hub.hub.services.clone();
    let key = record.key.clone();
    let started = Instant::now();
    let call =
        tokio::spawn(async move { services.invoke_method(&key, invocation("slow", 5)).await });
    let request = client.receive_publish().await;
    let error = call.await.unwrap().expect_err("times out");
    assert!(error.to_string().contains("did not answer"), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    let rid = rid_of(&request.topic);
    client
        .send(&publish_qos1(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            3,
            b"{}",
        ))
        .await;
    assert_eq!(
        client.receive().await,
        Some(Packet::PubAck(packet_id(3))),
        "the late answer is acknowledged and dropped"
    );
    assert_eq!(hub.hub.services.methods.in_flight(), 0);
}

#[tokio::test]
async fn method_waits_for_a_device_to_connect_within_the_connect_timeout() {
    let hub = TestHub::start().await;
    let record = hub.create_device("late").await;
    let services = hub.hub.services.clone();
    let key = record.key.clone();
    let call = tokio::spawn(async move {
        let mut request = invocation("ping", 10);
        request.connect_timeout = Duration::from_secs(20);
        services.invoke_method(&key, request).await
    });
    let mut client = hub.connected(&record).await;
    client
        .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtMostOnce))
        .await;
    let request = client.receive_publish().await;
    let rid = rid_of(&request.topic);
    client
        .send(&publish_qos1(
            &format!("$iothub/methods/res/201/?$rid={rid}"),
            2,
            b"null",
        ))
        .await;
    let result = call
        .await
        .unwrap()
        .expect("delivered once the device subscribed");
    assert_eq!((result.status, result.payload), (201, Value::Null));
}

#[tokio::test]
async fn desired_patches_are_pushed_in_version_order_with_their_version_inside() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut client = hub.connected(&record).await;
    client
        .send(&subscribe(
            1,
            "$iothub/twin/PATCH/properties/desired/#",
            QoS::AtLeastOnce,
        ))
        .await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));

    let mut writers = Vec::new();
    for index in 0..20 {
        let services = hub.hub.services.clone();
        let key = record.key.clone();
        writers.push(tokio::spawn(async move {
            services
                .update_twin(
                    &key,
                    fleethub_store::TwinChange::ServicePatch(
                        json!({"properties": {"desired": {"n": index}}}),
                    ),
                    fleethub_protocol::ids::IfMatch::Any,
                )
                .await
                .expect("desired patch")
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut versions = Vec::new();
    for _ in 0..20 {
        let patch = client.receive_publish().await;
        let body: Value = serde_json::from_slice(&patch.payload).unwrap();
        let version = body["$version"]
            .as_u64()
            .expect("$version inside the patch");
        assert_eq!(
            patch.topic,
            format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
        );
        versions.push(version);
    }
    assert_eq!(
        versions,
        (2..22).collect::<Vec<u64>>(),
        "every patch, in version order"
    );
}

#[tokio::test]
async fn subscriptions_survive_reconnects_without_resubscribing() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut first = hub.connected(&record).await;
    first
        .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(first.receive().await, Some(Packet::SubAck(_))));
    drop(first);

    let mut second = hub.raw().await;
    second
        .send(&Packet::Connect(connect_for(&record, 60)))
        .await;
    match second.receive().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, ConnectReturnCode::Accepted);
            assert!(
                ack.session_present,
                "clean-session 0 resumes the stored session"
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let services = hub.hub.services.clone();
    let key = record.key.clone();
    let call = tokio::spawn(async move {
        let mut request = invocation("ping", 10);
        request.connect_timeout = Duration::from_secs(10);
        services.invoke_method(&key, request).await
    });
    let request = second.receive_publish().await;
    let rid = rid_of(&request.topic);
    second
        .send(&publish_qos1(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            1,
            b"{}",
        ))
        .await;
    assert_eq!(call.await.unwrap().unwrap().status, 200);
}

#[tokio::test]
async fn a_clean_session_discards_stored_subscriptions() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut first = hub.connected(&record).await;
    first
        .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(first.receive().await, Some(Packet::SubAck(_))));
    drop(first);
    let mut clean = hub.raw().await;
    clean
        .send(&Packet::Connect(Connect {
            clean_session: true,
            ..connect_for(&record, 60)
        }))
        .await;
    match clean.receive().await {
        Some(Packet::ConnAck(ack)) => assert!(!ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let error = hub
        .hub
        .services
        .invoke_method(&record.key, invocation("ping", 5))
        .await
        .expect_err("not subscribed");
    assert!(error.to_string().contains("not online"), "{error}");
}

#[tokio::test]
async fn a_second_connection_takes_over_the_first() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut first = hub.connected(&record).await;
    let _second = hub.connected(&record).await;
    first.expect_closed().await;
    // The device stays connected: the first connection's end must not record a disconnect.
    let stored = hub.hub.services.get_identity(&record.key).await.unwrap();
    assert_eq!(stored.identity.connection_state, ConnectionState::Connected);
}

#[tokio::test]
async fn refused_connects_get_the_right_connack() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let other = hub.create_device("dev2").await;

    let cases: Vec<(&str, Connect, ConnectReturnCode)> = vec![
        (
            "wrong key",
            Connect {
                password: Some(
                    device_token(&other, unix_now() + 3600)
                        .replace("dev2", "dev1")
                        .into_bytes()
                        .into(),
                ),
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "another device's token",
            Connect {
                password: Some(device_token(&other, unix_now() + 3600).into_bytes().into()),
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "expired token",
            Connect {
                password: Some(device_token(&record, unix_now() - 10).into_bytes().into()),
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "garbage password",
            Connect {
                password: Some(Bytes::from_static(b"hunter2")),
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::BadUserNameOrPassword,
        ),
        (
            "username for another client",
            Connect {
                username: Some("localhost/dev2/?api-version=2021-04-12".into()),
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::BadUserNameOrPassword,
        ),
        (
            "unknown device",
            Connect {
                client_id: "ghost".into(),
                username: Some("localhost/ghost/?api-version=2021-04-12".into()),
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "invalid client id",
            Connect {
                client_id: "bad id!#".into(),
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::IdentifierRejected,
        ),
        (
            "no password",
            Connect {
                password: None,
                ..connect_for(&record, 60)
            },
            ConnectReturnCode::NotAuthorized,
        ),
    ];
    for (name, connect, expected) in cases {
        let mut client = hub.raw().await;
        client.send(&Packet::Connect(connect)).await;
        match client.receive().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, expected, "{name}"),
            other => panic!("{name}: expected CONNACK, got {other:?}"),
        }
        assert_eq!(
            client.receive().await,
            None,
            "{name}: the hub closes after refusing"
        );
    }
}

#[tokio::test]
async fn a_disabled_device_is_refused_and_disconnected() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut client = hub.connected(&record).await;
    hub.set_status(&record, DeviceStatus::Disabled).await;
    client.expect_closed().await;

    let mut again = hub.raw().await;
    again.send(&Packet::Connect(connect_for(&record, 60))).await;
    match again.receive().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::NotAuthorized),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // The hub records the disconnect after the socket closes: wait for that change-feed record, then check.
    hub.wait_for_change(
        &record.key.device_id,
        fleethub_protocol::changes::ChangeOperation::DeviceDisconnected,
    )
    .await;
    let stored = hub.hub.services.get_identity(&record.key).await.unwrap();
    assert_eq!(
        stored.identity.connection_state,
        ConnectionState::Disconnected
    );
}

#[tokio::test]
async fn deleting_a_device_disconnects_it_and_its_modules() {
    let hub = TestHub::start().await;
    let device = hub.create_device("dev1").await;
    let module = hub.create_module("dev1", "mod1").await;
    let mut device_client = hub.connected(&device).await;
    let mut module_client = hub.connected(&module).await;
    hub.hub
        .services
        .delete_identity(&device.key, fleethub_protocol::ids::IfMatch::Any)
        .await
        .unwrap();
    device_client.expect_closed().await;
    module_client.expect_closed().await;
}

#[tokio::test]
async fn mqtt5_connect_is_refused_with_unacceptable_protocol_version() {
    let hub = TestHub::start().await;
    let mut client = hub.raw().await;
    // An MQTT 5 CONNECT: protocol level 5, clean start, keep alive 60, properties length 0, client id "d".
    client
        .send_bytes(&[
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00,
            0x01, b'd',
        ])
        .await;
    match client.receive().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, ConnectReturnCode::UnacceptableProtocolVersion)
        }
        other => panic!("expected CONNACK 1, got {other:?}"),
    }
    assert_eq!(client.receive().await, None);
}

/// Each malformed or forbidden input closes that device's connection, and only that one: a bystander device
/// connected alongside keeps working (a method reaches it afterwards).
#[tokio::test]
async fn bad_input_closes_only_the_offending_connection() {
    let hub = TestHub::start().await;
    let bystander = hub.create_device("bystander").await;
    let mut bystander_client = hub.connected(&bystander).await;
    bystander_client
        .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(
        bystander_client.receive().await,
        Some(Packet::SubAck(_))
    ));
    let offender = hub.create_device("offender").await;
    let _victim = hub.create_device("victim").await;

    let oversize = vec![b'x'; 300 * 1024];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "malformed remaining length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        (
            "reserved flags on SUBSCRIBE",
            vec![0x80, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
        ),
        (
            "invalid UTF-8 topic",
            vec![0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, b'x'],
        ),
        ("QoS 3 publish", vec![0x36, 0x04, 0x00, 0x01, b'a', 0x00]),
        (
            "packet over the size limit",
            encode(&publish_qos1(
                "devices/offender/messages/events/",
                9,
                &oversize,
            )),
        ),
        (
            "unknown topic",
            encode(&publish_qos1("$iothub/nonsense", 2, b"{}")),
        ),
        (
            "another device's telemetry topic",
            encode(&publish_qos1("devices/victim/messages/events/", 3, b"{}")),
        ),
        (
            "subscription to another device's messages",
            encode(&subscribe(
                4,
                "devices/victim/messages/devicebound/#",
                QoS::AtLeastOnce,
            )),
        ),
        (
            "QoS 2 publish",
            encode(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "devices/offender/messages/events/".into(),
                packet_id: Some(packet_id(5)),
                payload: Bytes::from_static(b"{}"),
            })),
        ),
        (
            "a second CONNECT",
            encode(&Packet::Connect(connect_for(&offender, 60))),
        ),
        ("a server-only packet", encode(&Packet::PingResp)),
    ];
    for (name, bytes) in cases {
        let mut client = hub.connected(&offender).await;
        client.send_bytes(&bytes).await;
        client.expect_closed_because(name).await;
    }

    // Truncated packets and abrupt closes leave the hub unharmed too.
    let mut client = hub.connected(&offender).await;
    client.send_bytes(&[0x30, 0x10, 0x00]).await;
    drop(client);

    let services = hub.hub.services.clone();
    let key = bystander.key.clone();
    let call = tokio::spawn(async move {
        services
            .invoke_method(&key, invocation("still-there", 10))
            .await
    });
    let request = bystander_client.receive_publish().await;
    let rid = rid_of(&request.topic);
    bystander_client
        .send(&publish_qos1(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            9,
            b"{}",
        ))
        .await;
    assert_eq!(
        call.await.unwrap().unwrap().status,
        200,
        "the bystander was not disturbed"
    );
}

fn encode(packet: &Packet) -> Vec<u8> {
    let mut bytes = bytes::BytesMut::new();
    fleethub_mqtt::encode(packet, &mut bytes).unwrap();
    bytes.to_vec()
}

#[tokio::test]
async fn the_first_packet_must_be_connect_and_come_in_time() {
    let hub =
        TestHub::start_with(|config| config.limits.connect_timeout = Duration::from_secs(1)).await;
    let mut client = hub.raw().await;
    client.send(&Packet::PingReq).await;
    assert_eq!(
        client.receive().await,
        None,
        "a PINGREQ before CONNECT closes the connection"
    );

    let mut silent = hub.raw().await;
    let started = Instant::now();
    assert_eq!(
        silent.receive().await,
        None,
        "no CONNECT within the connect timeout closes the connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut client = hub.raw().await;
    client.send(&Packet::Connect(connect_for(&record, 1))).await;
    assert!(matches!(client.receive().await, Some(Packet::ConnAck(_))));
    client.send(&Packet::PingReq).await;
    assert_eq!(client.receive().await, Some(Packet::PingResp));
    let quiet_since = Instant::now();
    assert_eq!(
        client.receive().await,
        None,
        "closed after 1.5 s without traffic"
    );
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn bad_reported_patches_get_a_400_twin_response_naming_the_rule() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut client = hub.connected(&record).await;
    let deep = (0..12).fold(json!(1), |inner, _| json!({ "a": inner }));
    let cases = [
        ("not json", b"{not json".to_vec(), "not valid JSON"),
        ("not an object", b"[1,2]".to_vec(), "object"),
        ("dollar key", br#"{"$bad": 1}"#.to_vec(), "$"),
        ("too deep", serde_json::to_vec(&deep).unwrap(), "deep"),
        ("string too long", serde_json::to_vec(&json!({"s": "x".repeat(5000)})).unwrap(), "4096"),
        ("section too large", serde_json::to_vec(&json!({"a": "x".repeat(4000), "b": "x".repeat(4000), "c": "x".repeat(4000), "d": "x".repeat(4000), "e": "x".repeat(4000), "f": "x".repeat(4000), "g": "x".repeat(4000), "h": "x".repeat(4000), "i": "x".repeat(4000)})).unwrap(), "32768"),
    ];
    for (index, (name, payload, needle)) in cases.into_iter().enumerate() {
        let id = index as u16 + 1;
        client
            .send(&publish_qos1(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid=r{id}"),
                id,
                &payload,
            ))
            .await;
        let response = client.receive_publish().await;
        assert_eq!(
            response.topic,
            format!("$iothub/twin/res/400/?$rid=r{id}"),
            "{name}"
        );
        let body: Value = serde_json::from_slice(&response.payload).unwrap();
        assert_eq!(body["errorCode"], json!(400004), "{name}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "{name}: {message}");
    }
    // Nothing of it was kept, and the connection is still fine.
    client
        .send(&publish_qos1("$iothub/twin/GET/?$rid=g", 99, b""))
        .await;
    let response = client.receive_publish().await;
    let twin: Value = serde_json::from_slice(&response.payload).unwrap();
    assert_eq!(twin["reported"]["$version"], json!(1));
}

#[tokio::test]
async fn qos2_subscriptions_are_granted_qos1() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let mut client = hub.connected(&record).await;
    client
        .send(&subscribe(7, "$iothub/twin/res/#", QoS::ExactlyOnce))
        .await;
    match client.receive().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.packet_id, packet_id(7));
            assert_eq!(
                ack.return_codes,
                vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)]
            );
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_on_the_tls_ports_is_dropped_and_the_hub_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = TestHub::start().await;
    for address in [hub.hub.mqtt_address, hub.hub.https_address] {
        let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage")
            .await
            .unwrap();
        let mut answer = Vec::new();
        // Closed cleanly or reset: either way the read ends, and no HTTP or MQTT answer came in clear text.
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
            .await
            .expect("the hub closes the connection");
        assert!(
            !answer.starts_with(b"HTTP/"),
            "no plain-text answer on a TLS port"
        );
        assert!(
            answer.len() < 64,
            "at most a TLS alert, got {} bytes",
            answer.len()
        );
    }
    let record = hub.create_device("dev1").await;
    let _client = hub.connected(&record).await;
}

#[tokio::test]
async fn secondary_keys_and_device_connect_policy_tokens_are_accepted() {
    use fleethub_protocol::sas::{decode_key, generate_sas_token};
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let secondary = record
        .identity
        .authentication
        .secondary_key
        .clone()
        .unwrap();
    let mut client = hub.raw().await;
    client
        .connect_accepted(connect_with_key("dev1", &secondary, 60))
        .await;
    drop(client);

    // A token signed with a policy that has DeviceConnect, scoped to the hub or to the device, connects it;
    // a policy without DeviceConnect does not.
    let policy_token = |policy: &str, resource: &str| {
        let key = decode_key(&hub.policy(policy).primary_key).unwrap();
        generate_sas_token(resource, &key, unix_now() + 600, Some(policy))
    };
    let cases = [
        (
            "device policy, hub scope",
            policy_token("device", "localhost"),
            ConnectReturnCode::Accepted,
        ),
        (
            "device policy, device scope",
            policy_token("device", "localhost/devices/dev1"),
            ConnectReturnCode::Accepted,
        ),
        (
            "device policy, other device",
            policy_token("device", "localhost/devices/dev2"),
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "service policy",
            policy_token("service", "localhost"),
            ConnectReturnCode::NotAuthorized,
        ),
    ];
    for (name, token, expected) in cases {
        let mut client = hub.raw().await;
        client
            .send(&Packet::Connect(Connect {
                password: Some(token.into_bytes().into()),
                ..connect_for(&record, 60)
            }))
            .await;
        match client.receive().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, expected, "{name}"),
            other => panic!("{name}: expected CONNACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_device_is_closed_when_its_token_expires() {
    use fleethub_protocol::sas::{decode_key, generate_sas_token};
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let key = decode_key(
        record
            .identity
            .authentication
            .primary_key
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    let token = generate_sas_token("localhost/devices/dev1", &key, unix_now() + 2, None);
    let mut client = hub.raw().await;
    client
        .connect_accepted(Connect {
            password: Some(token.into_bytes().into()),
            ..connect_for(&record, 60)
        })
        .await;
    let started = Instant::now();
    client.expect_closed_because("the token expired").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at expiry, not at keep-alive"
    );
}
