//! Throttling and limits on a real hub over real TLS, MQTT and HTTPS: each rate limit refuses what is over
//! it the way Azure does (429 `ThrottlingException` over REST, twin status 429 over MQTT, CONNACK 3 for new
//! connections), recovers once its bucket refills, and leaves other devices alone; an abusive telemetry
//! device is cut off; the connection cap holds; the per-device table stays bounded under a flood; and the
//! default configuration throttles nothing. Waits are polls with generous deadlines, never tight timings.

use std::time::Duration;

use bytes::Bytes;
use fleethub_core::throttle::Rate;
use fleethub_mqtt::{ConnectReturnCode, Packet, Publish, QoS};
use fleethub_testkit::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// The longest any limit here takes to let a refused caller in again; generous for two shared cores.
const RECOVERY: Duration = Duration::from_secs(20);

fn rate(per_second: f64, burst: f64) -> Option<Rate> {
    Some(Rate { per_second, burst })
}

fn telemetry(device_id: &str, qos: QoS, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: format!("devices/{device_id}/messages/events/"),
        packet_id: (qos == QoS::AtLeastOnce).then(|| packet_id(id)),
        payload: Bytes::from_static(b"{\"temperature\": 21}"),
    })
}

fn twin_get(rid: u32) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: format!("$iothub/twin/GET/?$rid={rid}"),
        packet_id: None,
        payload: Bytes::new(),
    })
}

/// The status in a twin response topic (`$iothub/twin/res/{status}/?$rid=...`).
fn twin_status(topic: &str) -> u16 {
    topic
        .strip_prefix("$iothub/twin/res/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not a twin response: {topic}"))
}

async fn subscribed_to_twin_responses(hub: &TestHub, device_id: &str) -> RawClient {
    let record = hub.create_device(device_id).await;
    let mut client = hub.connected(&record).await;
    client
        .send(&subscribe(1, "$iothub/twin/res/#", QoS::AtMostOnce))
        .await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
    client
}

/// `count` pipelined twin GETs; the statuses of their responses, in order.
async fn twin_gets(client: &mut RawClient, first_rid: u32, count: u32) -> Vec<u16> {
    for rid in first_rid..first_rid + count {
        client.send(&twin_get(rid)).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..count {
        let response = client.receive_publish().await;
        let status = twin_status(&response.topic);
        if status == 429 {
            let body: Value = serde_json::from_slice(&response.payload).expect("a JSON body");
            assert_eq!(body["errorCode"], 429001, "{body}");
        }
        statuses.push(status);
    }
    statuses
}

async fn scrape(api: &ServiceApi) -> String {
    let reply = api.send(Method::GET, "/metrics", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body.as_str().expect("metrics are text").to_owned()
}

fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .expect("a number")
}

/// `fleethub_throttled_operations_total` for one operation class and limit (`hub` or `device`).
fn throttled_total(text: &str, class: &str, limit: &str) -> u64 {
    sample(
        text,
        &format!("fleethub_throttled_operations_total{{class=\"{class}\",limit=\"{limit}\"}}"),
    )
}

#[tokio::test]
async fn rest_twin_reads_over_the_hub_limit_get_429_throttling_exception_and_recover() {
    let hub = TestHub::start_with(|config| {
        // Slow enough that even a heavily loaded machine sends 30 requests faster than it refills.
        config.limits.throttle.hub.twin_reads = rate(0.5, 5.0);
    })
    .await;
    hub.create_device("dev1").await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");

    let mut admitted = 0;
    let mut throttled = None;
    for _ in 0..30 {
        let reply = api.send(Method::GET, "/twins/dev1", &[], None).await;
        match reply.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled = Some(reply);
                break;
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    let throttled = throttled.expect("30 reads in a row at 0.5/s are throttled");
    // The burst of 5, plus what refilled meanwhile (requests take a few ms each).
    assert!((5..15).contains(&admitted), "{admitted} admitted");
    assert_eq!(throttled.error_code.as_deref(), Some("ThrottlingException"));
    let message = throttled.body["Message"]
        .as_str()
        .expect("Azure's registry envelope");
    assert!(
        message.starts_with("ErrorCode:ThrottlingException;"),
        "{message}"
    );
    assert!(
        throttled.body["ExceptionMessage"]
            .as_str()
            .is_some_and(|text| text.starts_with("Tracking ID:")),
        "{}",
        throttled.body
    );
    // Twin updates have their own limit (none here).
    let patched = api
        .send(
            Method::PATCH,
            "/twins/dev1",
            &[],
            Some(json!({"tags": {"site": "a"}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);

    // The bucket refills: a read is admitted again within two seconds or so.
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        let reply = api.send(Method::GET, "/twins/dev1", &[], None).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = scrape(&api).await;
    assert!(throttled_total(&metrics, "twin_read", "hub") >= 1);
}

#[tokio::test]
async fn rest_twin_updates_over_a_devices_limit_get_429_for_that_device_only() {
    let hub = TestHub::start_with(|config| {
        config.limits.throttle.device.twin_updates = rate(0.5, 2.0);
    })
    .await;
    hub.create_device("busy").await;
    hub.create_device("calm").await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let patch = || Some(json!({"properties": {"desired": {"mode": "eco"}}}));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            api.send(Method::PATCH, "/twins/busy", &[], patch())
                .await
                .status,
        );
    }
    assert_eq!(&statuses[..2], &[StatusCode::OK, StatusCode::OK]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    let other = api.send(Method::PATCH, "/twins/calm", &[], patch()).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    assert_eq!(hub.hub.services.throttle.tracked_devices(), 2);
}

#[tokio::test]
async fn mqtt_twin_gets_over_the_limit_get_status_429() {
    let hub = TestHub::start_with(|config| {
        config.limits.throttle.device.twin_reads = rate(0.2, 3.0);
    })
    .await;
    let mut greedy = subscribed_to_twin_responses(&hub, "greedy").await;
    let statuses = twin_gets(&mut greedy, 1, 10).await;
    let ok = statuses.iter().filter(|status| **status == 200).count();
    let throttled = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!(ok + throttled, 10, "{statuses:?}");
    assert!((3..=4).contains(&ok), "{statuses:?}");
    assert_eq!(&statuses[..3], &[200, 200, 200], "the burst comes first");

    // Another device has its own bucket.
    let mut modest = subscribed_to_twin_responses(&hub, "modest").await;
    assert_eq!(twin_gets(&mut modest, 1, 3).await, vec![200, 200, 200]);

    // The greedy device is served again once its bucket refills (one read per 5 s).
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let mut rid = 100;
    loop {
        if twin_gets(&mut greedy, rid, 1).await == [200] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        rid += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reported patches over a hub limit get 429 too.
    let hub_limited = TestHub::start_with(|config| {
        config.limits.throttle.hub.twin_updates = rate(0.1, 1.0);
    })
    .await;
    let mut reporter = subscribed_to_twin_responses(&hub_limited, "reporter").await;
    let mut statuses = Vec::new();
    for rid in 1..=3u16 {
        reporter
            .send(&publish_qos1(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                rid + 10,
                b"{\"battery\": 80}",
            ))
            .await;
        statuses.push(twin_status(&reporter.receive_publish().await.topic));
    }
    assert_eq!(statuses, vec![204, 429, 429]);
}

#[tokio::test]
async fn method_calls_over_the_hub_limit_get_429_in_the_methods_error_shape() {
    let hub = TestHub::start_with(|config| {
        config.limits.throttle.hub.method_calls = rate(0.2, 2.0);
    })
    .await;
    hub.create_device("offline").await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let call = json!({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 5});
    // Within the burst the calls go through to the device (which is offline).
    for _ in 0..2 {
        let reply = api
            .send(
                Method::POST,
                "/twins/offline/methods",
                &[],
                Some(call.clone()),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
        assert_eq!(reply.error_code.as_deref(), Some("DeviceNotOnline"));
    }
    let reply = api
        .send(
            Method::POST,
            "/twins/offline/methods",
            &[],
            Some(call.clone()),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_code.as_deref(), Some("ThrottlingException"));
    let nested: Value = serde_json::from_str(
        reply.body["Message"]
            .as_str()
            .expect("the numeric body nested in Message"),
    )
    .expect("Message holds JSON");
    assert_eq!(nested["errorCode"], 429001, "{nested}");
    // A large payload costs one token per started 4 KB: over the whole burst, it is refused outright.
    let big = json!({"methodName": "upload", "payload": {"blob": "x".repeat(20_000)}});
    let reply = api
        .send(Method::POST, "/twins/offline/methods", &[], Some(big))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn new_connections_over_the_hub_rate_get_connack_3_then_are_admitted() {
    let hub = TestHub::start_with(|config| {
        config.limits.throttle.hub.connections = rate(0.2, 2.0);
    })
    .await;
    let record = hub.create_device("dev1").await;
    let _first = hub.connected(&record).await;
    let other = hub.create_device("dev2").await;
    let _second = hub.connected(&other).await;
    let third = hub.create_device("dev3").await;
    let mut refused = hub.raw().await;
    refused
        .send(&Packet::Connect(connect_for(&third, 60)))
        .await;
    match refused.receive().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable),
        other => panic!("expected CONNACK 3, got {other:?}"),
    }
    assert_eq!(refused.receive().await, None, "closed after the refusal");

    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        let mut client = hub.raw().await;
        client.send(&Packet::Connect(connect_for(&third, 60))).await;
        match client.receive().await {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Accepted => break,
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable)
            }
            other => panic!("expected a CONNACK, got {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never admitted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let metrics = scrape(&api).await;
    assert!(throttled_total(&metrics, "connection", "hub") >= 1);
}

#[tokio::test]
async fn an_abusive_telemetry_device_is_disconnected_while_another_keeps_being_served() {
    let hub = TestHub::start_with(|config| {
        config.limits.throttle.device.telemetry = rate(20.0, 20.0);
        config.limits.throttle.abusive_after = Duration::from_secs(1);
    })
    .await;
    let abuser = hub.create_device("abuser").await;
    let mut abusive = hub.connected(&abuser).await;
    let mut polite = subscribed_to_twin_responses(&hub, "polite").await;

    // 400 messages as fast as the socket takes them: 20 a second would take 20 s; at 1 s over its limit
    // the hub closes the connection.
    let flood = tokio::spawn(async move {
        for _ in 0..400 {
            abusive.send(&telemetry("abuser", QoS::AtMostOnce, 0)).await;
        }
        abusive.expect_closed_because("the abuser is cut off").await;
    });
    // Meanwhile the polite device sends at 5/s and reads its twin, and every one is answered.
    let mut id = 1;
    while !flood.is_finished() {
        polite
            .send(&telemetry("polite", QoS::AtLeastOnce, id))
            .await;
        match polite.receive().await {
            Some(Packet::PubAck(acked)) => assert_eq!(acked, packet_id(id)),
            other => panic!("expected the PUBACK of {id}, got {other:?}"),
        }
        assert_eq!(twin_gets(&mut polite, u32::from(id), 1).await, vec![200]);
        id += 1;
        assert!(id < 200, "the abuser was never disconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    flood.await.expect("the flood task ends");
    polite
        .send(&telemetry("polite", QoS::AtLeastOnce, id))
        .await;
    assert!(matches!(polite.receive().await, Some(Packet::PubAck(_))));

    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let metrics = scrape(&api).await;
    assert_eq!(
        sample(
            &metrics,
            "fleethub_throttle_disconnects_total{reason=\"abusive\"}"
        ),
        1
    );
    assert!(throttled_total(&metrics, "telemetry", "device") >= 10);
}

#[tokio::test]
async fn the_default_configuration_throttles_nothing() {
    let hub = TestHub::start().await;
    assert_eq!(
        hub.hub.services.throttle.settings(),
        &fleethub_hub::throttle::ThrottleSettings::default()
    );
    let mut client = subscribed_to_twin_responses(&hub, "bench").await;
    // 5,000 twin GETs pipelined in batches of 250, every one answered 200.
    for batch in 0..20 {
        let statuses = twin_gets(&mut client, batch * 250, 250).await;
        assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    }
    // Reported patches, REST reads and new connections in a burst, none refused.
    for rid in 1..=200u16 {
        client
            .send(&publish_qos1(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                rid,
                b"{\"n\": 1}",
            ))
            .await;
        assert_eq!(twin_status(&client.receive_publish().await.topic), 204);
    }
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    for _ in 0..200 {
        let reply = api.send(Method::GET, "/twins/bench", &[], None).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let mut connections = Vec::new();
    for index in 0..50 {
        let record = hub.create_device(&format!("burst{index}")).await;
        connections.push(hub.connected(&record).await);
    }
    let metrics = scrape(&api).await;
    for class in [
        "twin_read",
        "twin_update",
        "method_call",
        "telemetry",
        "connection",
    ] {
        for limit in ["hub", "device"] {
            assert_eq!(
                throttled_total(&metrics, class, limit),
                0,
                "{class} {limit}"
            );
        }
    }
}

#[tokio::test]
async fn the_connection_cap_refuses_extra_sockets_until_one_closes() {
    // The cap counts MQTT and HTTPS connections alike.
    let hub = TestHub::start_with(|config| config.limits.max_connections = 3).await;
    let mut open = Vec::new();
    for index in 0..3 {
        let record = hub.create_device(&format!("dev{index}")).await;
        open.push(hub.connected(&record).await);
    }
    // A fourth socket is accepted by the kernel and closed by the hub before TLS completes.
    let tcp = TcpStream::connect(hub.hub.mqtt_address)
        .await
        .expect("tcp connect");
    let name = ServerName::try_from("localhost").expect("valid name");
    let handshake = tokio::time::timeout(WAIT, hub.tls_connector().connect(name, tcp))
        .await
        .expect("the hub answers or closes in time");
    assert!(handshake.is_err(), "a connection over the cap got through");
    assert!(
        sample_at_cap(&hub) >= 1,
        "the refusal is counted in the metrics"
    );

    // Once one closes, a new connection is served.
    drop(open.pop());
    let late = hub.create_device("late").await;
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        let tcp = TcpStream::connect(hub.hub.mqtt_address)
            .await
            .expect("tcp connect");
        let name = ServerName::try_from("localhost").expect("valid name");
        if hub.tls_connector().connect(name, tcp).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The probe above held the slot only while it lived; a device now connects.
    let _late = hub.connected(&late).await;
}

fn sample_at_cap(hub: &TestHub) -> u64 {
    let mut text = String::new();
    hub.hub.services.throttle.render_metrics(&mut text);
    sample(&text, "fleethub_connections_refused_at_cap_total")
}

#[tokio::test]
async fn per_device_state_stays_bounded_under_a_flood_of_devices() {
    const CAP: usize = 50;
    let hub = TestHub::start_with(|config| {
        // Buckets that stay spent for a long time, so none is forgotten for free.
        config.limits.throttle.device.twin_reads = rate(0.001, 1.0);
        config.limits.throttle.device.telemetry = rate(0.001, 1.0);
        config.limits.throttle.max_tracked_devices = CAP;
    })
    .await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    // REST reads of 600 different twins (most do not exist: the limit applies before the lookup).
    for index in 0..600 {
        let reply = api
            .send(Method::GET, &format!("/twins/flood{index}"), &[], None)
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
        assert!(hub.hub.services.throttle.tracked_devices() <= CAP);
    }
    // Many devices connecting and sending: their entries share the same bounded table.
    for index in 0..100 {
        let record = hub.create_device(&format!("conn{index}")).await;
        let mut client = hub.connected(&record).await;
        client
            .send(&telemetry(&format!("conn{index}"), QoS::AtLeastOnce, 1))
            .await;
        assert!(matches!(client.receive().await, Some(Packet::PubAck(_))));
        assert!(hub.hub.services.throttle.tracked_devices() <= CAP);
    }
    let metrics = scrape(&api).await;
    assert!(sample(&metrics, "fleethub_throttle_tracked_devices") <= CAP as u64);
}

#[tokio::test]
async fn a_devices_twin_read_limit_is_one_budget_across_reconnects_and_rest() {
    let hub = TestHub::start_with(|config| {
        // Four reads, then one per 100 s: nothing refills during the test.
        config.limits.throttle.device.twin_reads = rate(0.01, 4.0);
    })
    .await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let mut device = subscribed_to_twin_responses(&hub, "hopper").await;
    assert_eq!(twin_gets(&mut device, 1, 2).await, vec![200, 200]);
    let reply = api.send(Method::GET, "/twins/hopper", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // A reconnect does not bring a fresh burst: one read is left.
    drop(device);
    let mut device = subscribed_to_twin_responses_again(&hub, "hopper").await;
    assert_eq!(twin_gets(&mut device, 10, 2).await, vec![200, 429]);
    let reply = api.send(Method::GET, "/twins/hopper", &[], None).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the service's reads share the device's budget: {}",
        reply.body
    );
}

/// Connects an existing device again and subscribes to its twin responses.
async fn subscribed_to_twin_responses_again(hub: &TestHub, device_id: &str) -> RawClient {
    let key = fleethub_core::identity::IdentityKey::device(device_id.parse().expect("valid id"));
    let record = hub
        .hub
        .services
        .store
        .get(&key)
        .await
        .expect("store read")
        .expect("the device exists");
    let mut client = hub.connected(&record).await;
    client
        .send(&subscribe(1, "$iothub/twin/res/#", QoS::AtMostOnce))
        .await;
    assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
    client
}

#[tokio::test]
async fn an_abusive_device_that_reconnects_is_still_disconnected() {
    let hub = TestHub::start_with(|config| {
        // One message a second; a reconnect well within a second keeps the device over its limit.
        config.limits.throttle.device.telemetry = rate(1.0, 1.0);
        config.limits.throttle.abusive_after = Duration::from_secs(4);
    })
    .await;
    let abuser = hub.create_device("hopper").await;
    // Each connection sends three messages back to back, each as soon as the last is acknowledged: it is
    // over its limit for about two seconds, under `abusive_after`, then reconnects.
    let mut id = 1;
    let mut connections = 0;
    'reconnect: loop {
        connections += 1;
        assert!(
            connections <= 10,
            "the device evaded the abusive-device limit by reconnecting"
        );
        let mut client = hub.connected(&abuser).await;
        for _ in 0..3 {
            client
                .send(&telemetry("hopper", QoS::AtLeastOnce, id))
                .await;
            id += 1;
            match client.receive().await {
                Some(Packet::PubAck(_)) => {}
                None => break 'reconnect,
                other => panic!("expected a PUBACK, got {other:?}"),
            }
        }
    }
    assert!(connections >= 2, "cut off on its first connection");
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let metrics = scrape(&api).await;
    assert_eq!(
        sample(
            &metrics,
            "fleethub_throttle_disconnects_total{reason=\"abusive\"}"
        ),
        1
    );
}

#[tokio::test]
async fn a_flood_of_unauthenticated_connects_does_not_lock_out_a_device() {
    let hub = TestHub::start_with(|config| {
        // Two new connections, then one per 100 s.
        config.limits.throttle.hub.connections = rate(0.01, 2.0);
    })
    .await;
    let record = hub.create_device("legit").await;
    // A well-formed CONNECT for the device, signed with a key that is not the device's.
    let forged = connect_with_key("legit", "bm90IHRoZSBkZXZpY2UncyBrZXksIGEgZ3Vlc3MhIQ==", 60);
    for _ in 0..20 {
        let mut attacker = hub.raw().await;
        attacker.send(&Packet::Connect(forged.clone())).await;
        match attacker.receive().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(
                ack.code,
                ConnectReturnCode::NotAuthorized,
                "refused for its token, not for the rate"
            ),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }
    // The device's own CONNECTs still have the whole budget.
    let _first = hub.connected(&record).await;
    let other = hub.create_device("other").await;
    let _second = hub.connected(&other).await;
    // An authenticated CONNECT over the rate is refused with CONNACK 3.
    let third = hub.create_device("third").await;
    let mut refused = hub.raw().await;
    refused
        .send(&Packet::Connect(connect_for(&third, 60)))
        .await;
    match refused.receive().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable),
        other => panic!("expected CONNACK 3, got {other:?}"),
    }
}
