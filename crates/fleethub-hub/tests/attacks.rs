//! Attacks on a real hub over real TLS, each with its exact outcome: a device reaching for another device's
//! topics, twin or messages; tokens that are not the connecting identity's (another device's, expired,
//! tampered, a module's, a policy's without DeviceConnect); device credentials on service endpoints; a
//! slowloris and a connection flood while a device keeps being served. RELIABILITY.md lists the cases.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleethub_mqtt::{Connect, ConnectReturnCode, Packet, QoS};
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use fleethub_store::DeviceRecord;
use fleethub_testkit::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// The connect timeout of the hubs the slowloris and flood tests start: short, so they see it fire.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The slowest a twin GET round trip of a served device may be while the hub is under attack. Generous
/// for an unoptimised build on two shared cores; unattacked it takes a few milliseconds.
const SERVED_WITHIN: Duration = Duration::from_secs(2);

fn encode(packet: &Packet) -> Vec<u8> {
    let mut bytes = bytes::BytesMut::new();
    fleethub_mqtt::encode(packet, &mut bytes).expect("test packets encode");
    bytes.to_vec()
}

fn key_of(record: &DeviceRecord) -> Vec<u8> {
    decode_key(
        record
            .identity
            .authentication
            .primary_key
            .as_deref()
            .expect("SAS identity"),
    )
    .expect("stored keys are base64")
}

fn with_password(connect: Connect, token: &str) -> Connect {
    Connect {
        password: Some(Bytes::copy_from_slice(token.as_bytes())),
        ..connect
    }
}

/// A token whose base64 signature has one character changed: still 32 bytes, no longer the HMAC.
fn tamper_signature(token: &str) -> String {
    let start = token.find("sig=").expect("a token has sig") + 4;
    let mut bytes = token.as_bytes().to_vec();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("still ASCII")
}

/// A token with its `se` moved a day later and its signature kept.
fn extend_expiry(token: &str) -> String {
    let (head, expiry) = token
        .rsplit_once("&se=")
        .expect("Python-style tokens end in se");
    let expiry: u64 = expiry.parse().expect("se is a number");
    format!("{head}&se={}", expiry + 86_400)
}

async fn refused_with(hub: &TestHub, case: &str, connect: Connect, expected: ConnectReturnCode) {
    let mut client = hub.raw().await;
    client.send(&Packet::Connect(connect)).await;
    match client.receive().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, expected, "{case}"),
        other => panic!("{case}: expected CONNACK {expected:?}, got {other:?}"),
    }
    assert_eq!(
        client.receive().await,
        None,
        "{case}: the hub closes after refusing"
    );
}

#[tokio::test]
async fn tokens_that_are_not_the_connecting_identitys_are_refused_at_connect() {
    let hub = TestHub::start().await;
    let mallory = hub.create_device("mallory").await;
    let victim = hub.create_device("victim").await;
    let module = hub.create_module("mallory", "m1").await;
    let policy_token = |policy: &str, resource: &str, key_of_policy: &str| {
        let key =
            decode_key(&hub.policy(key_of_policy).primary_key).expect("policy keys are base64");
        generate_sas_token(resource, &key, unix_now() + 600, Some(policy))
    };
    let own = device_token(&mallory, unix_now() + 600);
    use ConnectReturnCode::{BadUserNameOrPassword, NotAuthorized};
    let cases: Vec<(&str, Connect, ConnectReturnCode)> = vec![
        (
            "another device's valid token",
            with_password(
                connect_for(&mallory, 60),
                &device_token(&victim, unix_now() + 600),
            ),
            NotAuthorized,
        ),
        (
            "own token, connecting as another device",
            with_password(connect_for(&victim, 60), &own),
            NotAuthorized,
        ),
        (
            "another device's resource signed with own key",
            with_password(
                connect_for(&victim, 60),
                &generate_sas_token(
                    "localhost/devices/victim",
                    &key_of(&mallory),
                    unix_now() + 600,
                    None,
                ),
            ),
            NotAuthorized,
        ),
        (
            "expired token",
            with_password(
                connect_for(&mallory, 60),
                &device_token(&mallory, unix_now() - 5),
            ),
            NotAuthorized,
        ),
        (
            "tampered signature",
            with_password(connect_for(&mallory, 60), &tamper_signature(&own)),
            NotAuthorized,
        ),
        (
            "expiry extended after signing",
            with_password(
                connect_for(&mallory, 60),
                &extend_expiry(&device_token(&mallory, unix_now() - 5)),
            ),
            NotAuthorized,
        ),
        (
            "resource changed after signing",
            with_password(connect_for(&victim, 60), &own.replace("mallory", "victim")),
            NotAuthorized,
        ),
        (
            "a module's token used as its device",
            with_password(
                connect_for(&mallory, 60),
                &device_token(&module, unix_now() + 600),
            ),
            NotAuthorized,
        ),
        (
            "a device's token used as its module",
            with_password(connect_for(&module, 60), &own),
            NotAuthorized,
        ),
        (
            "a token for another hub",
            with_password(
                connect_for(&mallory, 60),
                &generate_sas_token(
                    "evil.example.com/devices/mallory",
                    &key_of(&mallory),
                    unix_now() + 600,
                    None,
                ),
            ),
            NotAuthorized,
        ),
        (
            "policy token with ServiceConnect only",
            with_password(
                connect_for(&mallory, 60),
                &policy_token("service", "localhost", "service"),
            ),
            NotAuthorized,
        ),
        (
            "policy token with registry rights only",
            with_password(
                connect_for(&mallory, 60),
                &policy_token("registryReadWrite", "localhost", "registryReadWrite"),
            ),
            NotAuthorized,
        ),
        (
            "DeviceConnect policy name signed with another policy's key",
            with_password(
                connect_for(&mallory, 60),
                &policy_token("device", "localhost", "service"),
            ),
            NotAuthorized,
        ),
        (
            "DeviceConnect policy token scoped to another device",
            with_password(
                connect_for(&mallory, 60),
                &policy_token("device", "localhost/devices/victim", "device"),
            ),
            NotAuthorized,
        ),
        (
            "unknown policy",
            with_password(
                connect_for(&mallory, 60),
                &policy_token("root", "localhost", "iothubowner"),
            ),
            NotAuthorized,
        ),
        (
            "signature that is not an HMAC-SHA256",
            with_password(
                connect_for(&mallory, 60),
                "SharedAccessSignature sr=localhost%2Fdevices%2Fmallory&sig=AAAA&se=4102444800",
            ),
            BadUserNameOrPassword,
        ),
        (
            "username naming another device",
            Connect {
                username: Some("localhost/victim/?api-version=2021-04-12".into()),
                ..connect_for(&mallory, 60)
            },
            BadUserNameOrPassword,
        ),
    ];
    for (case, connect, expected) in cases {
        refused_with(&hub, case, connect, expected).await;
    }
    // The right credentials still work: the refusals above were about the credentials, not the device.
    let _ = hub.connected(&mallory).await;
}

/// A victim connected with every subscription a device makes, which must receive nothing of the attack.
async fn subscribed_victim(hub: &TestHub, record: &DeviceRecord) -> RawClient {
    let mut client = hub.connected(record).await;
    let filters = [
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/methods/POST/#",
        "devices/victim/messages/devicebound/#",
    ];
    for (index, filter) in filters.into_iter().enumerate() {
        client
            .send(&subscribe(index as u16 + 1, filter, QoS::AtLeastOnce))
            .await;
        assert!(
            matches!(client.receive().await, Some(Packet::SubAck(_))),
            "{filter}"
        );
    }
    client
}

async fn twin_get(client: &mut RawClient, rid: &str) -> (String, Value) {
    client
        .send(&publish_qos1(
            &format!("$iothub/twin/GET/?$rid={rid}"),
            77,
            b" ",
        ))
        .await;
    let response = client.receive_publish().await;
    let body = serde_json::from_slice(&response.payload).unwrap_or(Value::Null);
    (response.topic.to_string(), body)
}

#[tokio::test]
async fn a_device_publishing_or_subscribing_to_another_devices_topics_is_disconnected() {
    let hub = TestHub::start().await;
    let mallory = hub.create_device("mallory").await;
    let victim = hub.create_device("victim").await;
    hub.create_module("victim", "m1").await;
    let mut victim_client = subscribed_victim(&hub, &victim).await;

    let publish = |topic: &str| encode(&publish_qos1(topic, 3, br#"{"forged":true}"#));
    let subscribe_to = |filter: &str| encode(&subscribe(4, filter, QoS::AtLeastOnce));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "telemetry as another device",
            publish("devices/victim/messages/events/"),
        ),
        (
            "telemetry as another device's module",
            publish("devices/victim/modules/m1/messages/events/"),
        ),
        (
            "a cloud-to-device message to another device",
            publish("devices/victim/messages/devicebound/"),
        ),
        (
            "a desired patch (service-only)",
            publish("$iothub/twin/PATCH/properties/desired/?$version=9"),
        ),
        (
            "a method request (service-only)",
            publish("$iothub/methods/POST/reboot/?$rid=1"),
        ),
        (
            "a twin response to another device",
            publish("$iothub/twin/res/200/?$rid=1"),
        ),
        (
            "another device's twin by path",
            publish("$iothub/twin/GET/devices/victim/?$rid=1"),
        ),
        (
            "another device's reported properties by path",
            publish("$iothub/twin/PATCH/properties/reported/devices/victim/?$rid=1"),
        ),
        (
            "path traversal in the telemetry topic",
            publish("devices/mallory/../victim/messages/events/"),
        ),
        (
            "another device's cloud-to-device messages",
            subscribe_to("devices/victim/messages/devicebound/#"),
        ),
        (
            "another device's module's messages",
            subscribe_to("devices/victim/modules/m1/messages/devicebound/#"),
        ),
        (
            "another device's module inputs",
            subscribe_to("devices/victim/modules/m1/inputs/#"),
        ),
        (
            "another device's telemetry",
            subscribe_to("devices/victim/messages/events/#"),
        ),
        (
            "every device's telemetry",
            subscribe_to("devices/+/messages/events/#"),
        ),
        ("everything", subscribe_to("#")),
        ("every device topic", subscribe_to("devices/#")),
        ("every hub topic", subscribe_to("$iothub/#")),
        ("every twin topic", subscribe_to("$iothub/twin/#")),
    ];
    for (case, bytes) in cases {
        let mut client = hub.connected(&mallory).await;
        client.send_bytes(&bytes).await;
        client.expect_closed_because(case).await;
    }

    // The embedded C SDK's `devices/+/messages/devicebound/#` is accepted and means the device's own queue:
    // a message for the victim goes to the victim only.
    let mut wildcard = hub.connected(&mallory).await;
    wildcard
        .send(&subscribe(
            1,
            "devices/+/messages/devicebound/#",
            QoS::AtLeastOnce,
        ))
        .await;
    assert!(matches!(wildcard.receive().await, Some(Packet::SubAck(_))));
    let api = ServiceApi::for_hub(&hub, "service");
    for device in ["victim", "mallory"] {
        let reply = api
            .send(
                Method::POST,
                &format!("/devices/{device}/messages/deviceBound"),
                &[],
                Some(json!({ "body": format!("for {device}") })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let first = wildcard.receive_publish().await;
    assert!(
        first
            .topic
            .starts_with("devices/mallory/messages/devicebound/"),
        "mallory got {:?}",
        first.topic
    );
    assert_eq!(&first.payload[..], b"for mallory");

    // Nothing of the attack reached the victim: its next publish is the message meant for it.
    let delivered = victim_client.receive_publish().await;
    assert!(
        delivered
            .topic
            .starts_with("devices/victim/messages/devicebound/"),
        "{:?}",
        delivered.topic
    );
    assert_eq!(&delivered.payload[..], b"for victim");
}

#[tokio::test]
async fn a_device_reads_and_patches_only_its_own_twin() {
    let hub = TestHub::start().await;
    let mallory = hub.create_device("mallory").await;
    let victim = hub.create_device("victim").await;
    let api = ServiceApi::for_hub(&hub, "service");
    let reply = api
        .send(
            Method::PATCH,
            "/twins/victim",
            &[],
            Some(json!({"properties": {"desired": {"secret": "victim-only"}}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let mut victim_client = hub.connected(&victim).await;
    victim_client
        .send(&subscribe(1, "$iothub/twin/res/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(
        victim_client.receive().await,
        Some(Packet::SubAck(_))
    ));
    victim_client
        .send(&publish_qos1(
            "$iothub/twin/PATCH/properties/reported/?$rid=v1",
            2,
            br#"{"owner":"victim"}"#,
        ))
        .await;
    let reported = victim_client.receive_publish().await;
    assert!(
        reported.topic.starts_with("$iothub/twin/res/204/"),
        "{:?}",
        reported.topic
    );

    let mut client = hub.connected(&mallory).await;
    client
        .send(&subscribe(1, "$iothub/twin/res/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
    // Extra query parameters naming the victim are ignored: the twin is always the connection's own.
    client
        .send(&publish_qos1(
            "$iothub/twin/GET/?$rid=1&deviceId=victim&$deviceId=victim",
            2,
            b" ",
        ))
        .await;
    let response = client.receive_publish().await;
    assert!(
        response.topic.starts_with("$iothub/twin/res/200/"),
        "{:?}",
        response.topic
    );
    let twin: Value = serde_json::from_slice(&response.payload).expect("a twin body");
    assert_eq!(twin["desired"].get("secret"), None, "mallory read {twin}");
    assert_eq!(twin["reported"].get("owner"), None, "mallory read {twin}");

    client
        .send(&publish_qos1(
            "$iothub/twin/PATCH/properties/reported/?$rid=2&deviceId=victim",
            3,
            br#"{"owner":"mallory"}"#,
        ))
        .await;
    let response = client.receive_publish().await;
    assert!(
        response.topic.starts_with("$iothub/twin/res/204/"),
        "{:?}",
        response.topic
    );

    let stored_victim = hub
        .hub
        .services
        .store
        .get(&victim.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored_victim.twin.reported_properties().get("owner"),
        Some(&json!("victim")),
        "the victim's reported properties are untouched"
    );
    let stored_mallory = hub
        .hub
        .services
        .store
        .get(&mallory.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored_mallory.twin.reported_properties().get("owner"),
        Some(&json!("mallory")),
        "the patch went to mallory's own twin"
    );
    let (topic, own) = twin_get(&mut victim_client, "v2").await;
    assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
    assert_eq!(own["desired"]["secret"], json!("victim-only"));
}

#[tokio::test]
async fn device_credentials_do_not_open_service_endpoints() {
    let hub = TestHub::start().await;
    let mallory = hub.create_device("mallory").await;
    let victim = hub.create_device("victim").await;
    let api = ServiceApi::for_hub(&hub, "service");
    let device_token = device_token(&mallory, unix_now() + 600);
    let device_policy_key = decode_key(&hub.policy("device").primary_key).unwrap();
    let device_policy_token = generate_sas_token(
        &api.host,
        &device_policy_key,
        unix_now() + 600,
        Some("device"),
    );
    let endpoints: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/devices/victim", None),
        (Method::GET, "/devices/mallory", None),
        (Method::GET, "/devices", None),
        (
            Method::PUT,
            "/devices/mallory2",
            Some(json!({"deviceId": "mallory2"})),
        ),
        (Method::DELETE, "/devices/victim", None),
        (Method::GET, "/twins/victim", None),
        (
            Method::PATCH,
            "/twins/victim",
            Some(json!({"properties": {"desired": {"x": 1}}})),
        ),
        (
            Method::PATCH,
            "/twins/mallory",
            Some(json!({"tags": {"x": 1}})),
        ),
        (
            Method::POST,
            "/twins/victim/methods",
            Some(json!({"methodName": "reboot", "payload": {}})),
        ),
        (
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT * FROM devices"})),
        ),
        (
            Method::POST,
            "/devices/victim/messages/deviceBound",
            Some(json!({"body": "x"})),
        ),
        (Method::GET, "/messages/serviceBound/feedback", None),
        (Method::GET, "/events", None),
        (Method::GET, "/changes", None),
        (Method::GET, "/firmware/artifacts", None),
    ];
    for (method, path, body) in &endpoints {
        let body = body.as_ref().map(|body| serde_json::to_vec(body).unwrap());
        let reply = api
            .call(Some(&device_token), method.clone(), path, &[], body.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "device token on {method} {path}: {}",
            reply.body
        );
        let reply = api
            .call(Some(&device_policy_token), method.clone(), path, &[], body)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "DeviceConnect policy on {method} {path}: {}",
            reply.body
        );
    }
    // The device-facing HTTPS endpoint takes a device token, but only for that device's own queue.
    let reply = api
        .call(
            Some(&device_token),
            Method::GET,
            "/devices/victim/messages/deviceBound",
            &[],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    let reply = api
        .call(
            Some(&device_token),
            Method::GET,
            "/devices/mallory/messages/deviceBound",
            &[],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    // Nothing above changed the registry.
    assert!(
        hub.hub
            .services
            .store
            .get(&victim.key)
            .await
            .unwrap()
            .is_some(),
        "the victim still exists"
    );
    assert!(
        hub.hub
            .services
            .store
            .get(&fleethub_core::identity::IdentityKey::device(
                "mallory2".parse().unwrap()
            ))
            .await
            .unwrap()
            .is_none(),
        "no device was created"
    );
}

/// A device connected before the attack, answering twin GETs: each round trip is timed.
struct ServedDevice {
    client: RawClient,
    slowest: Duration,
    round_trips: usize,
}

impl ServedDevice {
    async fn start(hub: &TestHub) -> Self {
        let record = hub.create_device("served").await;
        let mut client = hub.connected(&record).await;
        client
            .send(&subscribe(1, "$iothub/twin/res/#", QoS::AtLeastOnce))
            .await;
        assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
        Self {
            client,
            slowest: Duration::ZERO,
            round_trips: 0,
        }
    }

    async fn round_trip(&mut self) {
        let started = Instant::now();
        let rid = format!("r{}", self.round_trips);
        let (topic, twin) = twin_get(&mut self.client, &rid).await;
        let took = started.elapsed();
        assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
        assert!(twin["desired"]["$version"].is_u64(), "{twin}");
        assert!(
            took < SERVED_WITHIN,
            "a twin GET took {took:?} under attack"
        );
        self.slowest = self.slowest.max(took);
        self.round_trips += 1;
    }

    /// Round trips, back to back, until `attack` has finished (never cancelling one half-way, which could
    /// leave half a packet on the wire); returns the attack's output.
    async fn serve_during<T>(&mut self, attack: tokio::task::JoinHandle<T>) -> T {
        self.round_trip().await;
        while !attack.is_finished() {
            self.round_trip().await;
        }
        attack.await.expect("the attack task does not panic")
    }
}

/// Waits until the hub closes `stream` (EOF or reset), reading and discarding what it sends; returns how
/// long that took. Panics after `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 256];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buffer)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_slowloris_is_cut_off_at_the_connect_timeout_while_a_device_is_served() {
    let hub = TestHub::start_with(|config| config.limits.connect_timeout = CONNECT_TIMEOUT).await;
    let mut served = ServedDevice::start(&hub).await;
    let attacker = hub.create_device("slow").await;
    let connect = encode(&Packet::Connect(connect_for(&attacker, 60)));
    let client_hello_prefix = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];

    const SLOW_CLIENTS: usize = 50;
    let mut attackers = tokio::task::JoinSet::new();
    for index in 0..SLOW_CLIENTS {
        let connect = connect.clone();
        let address = hub.hub.mqtt_address;
        let connector = hub.tls_connector();
        attackers.spawn(async move {
            // Half finish TLS and dribble a CONNECT, half dribble a TLS ClientHello: one byte every 100 ms,
            // which would take longer than the timeout to complete either.
            let dribble = Duration::from_millis(100);
            if index % 2 == 0 {
                let tcp = TcpStream::connect(address).await.expect("tcp connect");
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .expect("tls handshake");
                let (mut reader, mut writer) = tokio::io::split(tls);
                let writing = async {
                    for byte in &connect[..connect.len() - 1] {
                        if writer.write_all(&[*byte]).await.is_err()
                            || writer.flush().await.is_err()
                        {
                            break;
                        }
                        tokio::time::sleep(dribble).await;
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    took = closed_within(&mut reader, CONNECT_TIMEOUT * 5) => took,
                    () = writing => unreachable!(),
                }
            } else {
                let mut tcp = TcpStream::connect(address).await.expect("tcp connect");
                let (mut reader, mut writer) = tcp.split();
                let writing = async {
                    for byte in client_hello_prefix {
                        if writer.write_all(&[byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(dribble).await;
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    took = closed_within(&mut reader, CONNECT_TIMEOUT * 5) => took,
                    () = writing => unreachable!(),
                }
            }
        });
    }
    let cut_off = served
        .serve_during(tokio::spawn(async move {
            let mut times = Vec::new();
            while let Some(took) = attackers.join_next().await {
                times.push(took.expect("an attacker task ends"));
            }
            times
        }))
        .await;
    assert_eq!(cut_off.len(), SLOW_CLIENTS);
    for took in &cut_off {
        // TLS then CONNECT each get the timeout, so a dribbled CONNECT may live up to twice it.
        assert!(
            *took >= CONNECT_TIMEOUT - Duration::from_millis(100) && *took < CONNECT_TIMEOUT * 4,
            "a slow client was cut off after {took:?}"
        );
    }
    served.round_trip().await;
    assert!(
        served.round_trips >= 2,
        "the served device was not exercised"
    );
    eprintln!(
        "slowloris: {SLOW_CLIENTS} slow clients cut off after {:?}..{:?}; {} twin GETs, slowest {:?}",
        cut_off.iter().min().unwrap(),
        cut_off.iter().max().unwrap(),
        served.round_trips,
        served.slowest
    );
}

#[tokio::test]
async fn a_connection_flood_is_shed_at_the_connect_timeout_while_a_device_is_served() {
    let hub = TestHub::start_with(|config| config.limits.connect_timeout = CONNECT_TIMEOUT).await;
    let mut served = ServedDevice::start(&hub).await;

    // 2,000 sockets that never start TLS, and 100 that finish TLS and never send CONNECT.
    const SILENT_TCP: usize = 2_000;
    const SILENT_TLS: usize = 100;
    let started = Instant::now();
    let address = hub.hub.mqtt_address;
    let connector = hub.tls_connector();
    let (tcp, tls) = served
        .serve_during(tokio::spawn(async move {
            let mut tcp = Vec::with_capacity(SILENT_TCP);
            for _ in 0..SILENT_TCP {
                tcp.push(TcpStream::connect(address).await.expect("tcp connect"));
            }
            let mut tls = Vec::with_capacity(SILENT_TLS);
            for _ in 0..SILENT_TLS {
                let tcp = TcpStream::connect(address).await.expect("tcp connect");
                let name = ServerName::try_from("localhost").expect("valid name");
                tls.push(connector.connect(name, tcp).await.expect("tls handshake"));
            }
            (tcp, tls)
        }))
        .await;
    let opened = started.elapsed();

    let mut closers = tokio::task::JoinSet::new();
    for mut socket in tcp {
        closers.spawn(async move { closed_within(&mut socket, CONNECT_TIMEOUT * 10).await });
    }
    for mut socket in tls {
        closers.spawn(async move { closed_within(&mut socket, CONNECT_TIMEOUT * 10).await });
    }
    let closed = served
        .serve_during(tokio::spawn(async move {
            let mut closed = 0;
            while let Some(result) = closers.join_next().await {
                result.expect("every flood socket is closed by the hub");
                closed += 1;
            }
            closed
        }))
        .await;
    assert_eq!(closed, SILENT_TCP + SILENT_TLS);
    let shed = started.elapsed();
    assert!(
        shed < opened + CONNECT_TIMEOUT * 10,
        "the flood took {shed:?} to shed"
    );
    // Slots are free again: a new device connects at once.
    let late = hub.create_device("late").await;
    let _ = hub.connected(&late).await;
    served.round_trip().await;
    eprintln!(
        "flood: {} sockets opened in {opened:?}, all closed by the hub after {shed:?}; {} twin GETs, slowest {:?}",
        SILENT_TCP + SILENT_TLS,
        served.round_trips,
        served.slowest
    );
}
