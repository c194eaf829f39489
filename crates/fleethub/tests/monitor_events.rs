//! `fleethub monitor-events` against a real `fleethub serve` process: messages sent by a device (our SDK, over
//! MQTT/TLS) come out in `az iot hub monitor-events`' JSON shape, and a consumer group picks up where the
//! previous run stopped.

mod support;

use std::process::Stdio;

use fleethub_device::{DeviceClient, DeviceClientOptions, Message};
use serde_json::{Value, json};
use support::{Hub, Lines, Reaped, WAIT, command_in, json_of};

/// Starts `fleethub monitor-events ARGS --data-dir DATA` with stdout piped.
fn monitor(hub: &Hub, args: &[&str]) -> (Reaped, Lines) {
    let mut all = vec!["monitor-events"];
    all.extend(args);
    all.extend(["--data-dir", hub.data_dir_text()]);
    let mut child = command_in(hub.directory.path(), &all)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn monitor-events");
    let lines = Lines::of(&mut child);
    (Reaped(child), lines)
}

/// Waits for the monitor to exit on its own (`--max-messages`): its stdout closes (within WAIT), then its
/// status must be success.
fn wait_for_exit(monitor: &mut Reaped, lines: &Lines) {
    match lines.receiver.recv_timeout(WAIT) {
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        Ok(line) => panic!("monitor-events printed more than expected: {line}"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("monitor-events did not stop"),
    }
    let status = monitor.0.wait().expect("wait for the monitor");
    assert!(status.success(), "monitor-events failed: {status}");
}

async fn device(hub: &Hub, device_id: &str) -> DeviceClient {
    let created = json_of(&hub.run(&["device", "create", device_id, "--output", "json"]));
    let key = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("a generated key");
    let options = DeviceClientOptions::default()
        .with_ca_pem(hub.ca_pem())
        .with_port(hub.mqtt_port);
    DeviceClient::connect(
        &format!("HostName=localhost;DeviceId={device_id};SharedAccessKey={key}"),
        options,
    )
    .await
    .expect("the device connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_events_prints_telemetry_like_az_and_a_consumer_group_resumes() {
    let hub = Hub::start();
    let sensor = device(&hub, "sensor-1").await;

    let (mut first, lines) = monitor(
        &hub,
        &[
            "--output",
            "json",
            "--properties",
            "--from-start",
            "--device",
            "sensor-*",
            "--source",
            "telemetry",
            "--max-messages",
            "2",
        ],
    );
    for index in 0..2 {
        sensor
            .send_message(
                Message::json(&json!({"reading": index}))
                    .with_message_id(format!("m{index}"))
                    .with_property("unit", "C"),
            )
            .await
            .expect("acknowledged");
    }
    let printed: Vec<Value> = (0..2)
        .map(|_| serde_json::from_str(&lines.next()).expect("one JSON object per line"))
        .collect();
    wait_for_exit(&mut first, &lines);
    for (index, event) in printed.iter().enumerate() {
        let event = &event["event"];
        assert_eq!(event["origin"], json!("sensor-1"));
        assert_eq!(event["module"], json!(""));
        assert_eq!(event["payload"], json!({"reading": index}));
        assert_eq!(
            event["properties"]["system"]["message_id"],
            json!(format!("m{index}"))
        );
        assert_eq!(
            event["properties"]["system"]["content_type"],
            json!("application/json")
        );
        assert_eq!(event["properties"]["application"], json!({"unit": "C"}));
        assert_eq!(
            event["annotations"]["iothub-connection-device-id"],
            json!("sensor-1")
        );
        assert_eq!(
            event["annotations"]["iothub-message-source"],
            json!("Telemetry")
        );
        assert!(event["annotations"]["x-opt-sequence-number"].is_u64());
    }

    // A consumer group: each run prints one message and checkpoints it; the next run goes on after it.
    for expected in [0, 1] {
        let (mut run, lines) = monitor(
            &hub,
            &[
                "--output",
                "json",
                "--consumer-group",
                "audit",
                "--from-start",
                "--device",
                "sensor-1",
                "--source",
                "telemetry",
                "--max-messages",
                "1",
            ],
        );
        let event: Value = serde_json::from_str(&lines.next()).expect("a JSON line");
        assert_eq!(event["event"]["payload"], json!({"reading": expected}));
        wait_for_exit(&mut run, &lines);
    }
    sensor.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_events_lines_show_twin_and_connection_events_with_their_properties() {
    let hub = Hub::start();
    let (mut run, lines) = monitor(
        &hub,
        &[
            "--from-start",
            "--device",
            "lamp",
            "--properties",
            "app",
            "--max-messages",
            "3",
        ],
    );
    let lamp = device(&hub, "lamp").await;
    lamp.patch_reported(&json!({"on": true})).await.unwrap();
    let mut text = Vec::new();
    while text.len() < 6 {
        text.push(lines.next());
    }
    wait_for_exit(&mut run, &lines);
    // Each event: a line, then its application properties indented below it.
    let events: Vec<&String> = text.iter().filter(|line| !line.starts_with(' ')).collect();
    assert!(
        events[0].contains("lamp")
            && events[0].contains("lifecycle")
            && events[0].ends_with("createDeviceIdentity"),
        "{text:?}"
    );
    assert!(
        events[1].contains("connection") && events[1].ends_with("deviceConnected"),
        "{text:?}"
    );
    assert!(
        events[2].contains("twin")
            && events[2].contains("updateTwin")
            && events[2].contains("\"on\":true"),
        "{text:?}"
    );
    assert!(text[1].trim_start().starts_with("application"), "{text:?}");
    assert!(
        text[1].contains("iothub-message-schema=deviceLifecycleNotification"),
        "{text:?}"
    );
    lamp.disconnect().await.unwrap();
}
