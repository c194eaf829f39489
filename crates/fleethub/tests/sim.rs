//! `fleethub sim` of the real binary against a real `fleethub serve` process: a fleet registered in bulk and
//! connected (connection state on the service side), its telemetry in the event stream, its direct methods
//! answered, a signed firmware rollout completed on every device (failure rate 0) or failed on every
//! device (failure rate 1) with the simulation's reasons, churn seen by the hub as disconnections and
//! reconnections, devices kept with `--keep` and reused by the next run, deleted at the end; and malformed
//! arguments refused before anything is registered.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Output, Stdio};

use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::events::sources;
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::{CloudToDeviceMethod, ConnectionState};
use fleethub_service::{
    ChangeStream, EventReadOptions, EventStart, ServiceClient, ServiceClientOptions, WatchOptions,
};
use serde_json::{Value, json};
use support::*;

const MODEL: &str = "sim-board";

fn path_text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8 here")
}

/// Runs `fleethub ARGS --data-dir DATA` without blocking the runtime.
async fn cli(hub: &Hub, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", hub.data_dir_text()]);
    tokio::process::Command::from(command_in(hub.directory.path(), &all))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run fleethub")
}

/// `fleethub sim ARGS --output json --data-dir DATA`, running until it is interrupted.
fn start_sim(hub: &Hub, args: &[&str]) -> tokio::process::Child {
    let mut all = vec!["sim"];
    all.extend(args);
    all.extend(["--output", "json", "--data-dir", hub.data_dir_text()]);
    tokio::process::Command::from(command_in(hub.directory.path(), &all))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start fleethub sim")
}

/// Ctrl-C, then the summary the simulator printed on its way out.
async fn interrupt(sim: tokio::process::Child) -> Value {
    let pid = sim.id().expect("the simulator is running").to_string();
    let signalled = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(signalled.success());
    let output = tokio::time::timeout(WAIT * 2, sim.wait_with_output())
        .await
        .expect("the simulator stops after Ctrl-C")
        .expect("its output");
    json_of(&output)
}

fn service(hub: &Hub) -> ServiceClient {
    ServiceClient::from_connection_string(
        &hub.connection_string("iothubowner"),
        ServiceClientOptions {
            ca_pem: Some(hub.ca_pem()),
            ..ServiceClientOptions::default()
        },
    )
    .expect("service client")
}

async fn next_change(changes: &mut ChangeStream) -> ChangeRecord {
    tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("a change within the timeout")
        .expect("the feed goes on")
        .expect("a change")
}

/// Waits until every device of `ids` connected, as the change feed says.
async fn wait_connected(changes: &mut ChangeStream, ids: &[String]) {
    let mut waiting: HashSet<&str> = ids.iter().map(String::as_str).collect();
    while !waiting.is_empty() {
        let change = next_change(changes).await;
        if change.operation == ChangeOperation::DeviceConnected
            && let Some(device_id) = &change.device_id
        {
            waiting.remove(device_id.as_str());
        }
    }
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}{index:06}"))
        .collect()
}

/// Signs and uploads a `MODEL` 2.0.0 image; returns the public key's path.
async fn upload_signed_image(hub: &Hub) -> String {
    let keys = hub.directory.path().join("release");
    let keygen = cli(hub, &["firmware", "keygen", "--out", path_text(&keys)]).await;
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let image = hub.directory.path().join("image.bin");
    std::fs::write(&image, (0..70_000u32).map(|n| n as u8).collect::<Vec<u8>>())
        .expect("write the image");
    let key = hub.directory.path().join("release.key.pem");
    let upload = cli(
        hub,
        &[
            "firmware",
            "upload",
            path_text(&image),
            "--model",
            MODEL,
            "--version",
            "2.0.0",
            "--sign-key",
            path_text(&key),
        ],
    )
    .await;
    assert!(upload.status.success(), "{}", stderr(&upload));
    path_text(&hub.directory.path().join("release.pub.pem")).to_owned()
}

/// `rollout create ID ... --watch --output json` over the simulated devices, never aborted, done once
/// every device finished (`--success-threshold 0%`); the rollout as it ended.
async fn roll_out(hub: &Hub, rollout_id: &str) -> Value {
    let args = [
        "rollout",
        "create",
        rollout_id,
        "--model",
        MODEL,
        "--version",
        "2.0.0",
        "--query",
        "tags.sim = true",
        "--error-threshold",
        "none",
        "--success-threshold",
        "0%",
        "--watch",
        "--output",
        "json",
    ];
    let watching = cli(hub, &args);
    let watched = tokio::time::timeout(WAIT * 4, watching)
        .await
        .expect("the rollout ends within the timeout");
    let lines: Vec<Value> = stdout(&watched)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect();
    lines.last().cloned().expect("the rollout as it ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_connects_sends_answers_completes_a_rollout_and_is_deleted() {
    const DEVICES: usize = 50;
    let hub = tokio::task::spawn_blocking(Hub::start)
        .await
        .expect("the hub starts");
    let public_key = upload_signed_image(&hub).await;
    let service = service(&hub);
    let mut changes = service
        .watch_changes(WatchOptions {
            after: Some(0),
            ..WatchOptions::default()
        })
        .await
        .expect("watch the change feed");
    let mut events = service
        .read_events(EventReadOptions {
            start: EventStart::Earliest,
            ..EventReadOptions::default()
        })
        .await
        .expect("read the event stream");

    let sim = start_sim(
        &hub,
        &[
            "--devices",
            "50",
            "--telemetry-every",
            "0.5",
            "--report-every",
            "1",
            "--payload-bytes",
            "300",
            "--public-key",
            &public_key,
        ],
    );
    let ids = ids("sim-", DEVICES);

    // Registered in bulk and connected, each with its own identity.
    wait_connected(&mut changes, &ids).await;
    for id in &ids {
        let device = service
            .get_device(&DeviceId::new(id.clone()).expect("valid"))
            .await
            .expect("the device is registered");
        assert_eq!(
            device.connection_state,
            Some(ConnectionState::Connected),
            "{id}"
        );
        let twin = service
            .get_twin(&DeviceId::new(id.clone()).expect("valid"))
            .await
            .expect("its twin");
        let twin = serde_json::to_value(&twin).expect("serialises");
        assert_eq!(twin["tags"]["sim"], json!(true), "{twin}");
        assert_eq!(
            twin["properties"]["reported"]["firmware"]["model"],
            json!(MODEL)
        );
    }

    // Telemetry from every device in the event stream, JSON padded to the asked size.
    let mut sending: HashSet<&str> = ids.iter().map(String::as_str).collect();
    while !sending.is_empty() {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event within the timeout")
            .expect("the stream goes on")
            .expect("an event");
        if event.message_source() != Some(sources::TELEMETRY) {
            continue;
        }
        let device_id = event.device_id().expect("a device").to_owned();
        let body = event.body_bytes().expect("a body");
        assert_eq!(body.len(), 300);
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["deviceId"], json!(device_id));
        sending.remove(device_id.as_str());
    }

    // Direct methods: ping echoes, anything unknown is 404.
    let device_id = DeviceId::new("sim-000007").expect("valid");
    let call = |name: &str, payload: Value| CloudToDeviceMethod {
        method_name: name.to_owned(),
        payload,
        response_timeout_in_seconds: Some(30),
        connect_timeout_in_seconds: None,
    };
    let ping = service
        .invoke_method(&device_id, &call("ping", json!({"hello": "sim"})))
        .await
        .expect("ping answered");
    assert_eq!((ping.status, ping.payload), (200, json!({"hello": "sim"})));
    let unknown = service
        .invoke_method(&device_id, &call("reboot", Value::Null))
        .await
        .expect("answered");
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.payload["Response"]
            .as_str()
            .is_some_and(|text| text.contains("unknown method \"reboot\"")),
        "{}",
        unknown.payload
    );

    // A signed rollout completes on every simulated device (failure rate 0).
    let ended = roll_out(&hub, "sim-fw").await;
    assert_eq!(ended["status"], json!("completed"), "{ended}");
    assert_eq!(ended["statistics"]["succeeded"], json!(DEVICES));
    let twin = service.get_twin(&device_id).await.expect("twin");
    let reported =
        serde_json::to_value(&twin).expect("serialises")["properties"]["reported"].clone();
    assert_eq!(
        reported["firmware"]["currentVersion"],
        json!("2.0.0"),
        "{reported}"
    );
    assert_eq!(reported["firmware"]["status"], json!("completed"));
    assert_eq!(reported["firmwareStatus"], json!("completed"));

    // Ctrl-C: disconnected and deleted, and the summary says what happened.
    let summary = interrupt(sim).await;
    assert_eq!(summary["devices"], json!(DEVICES));
    assert_eq!(summary["connected"], json!(DEVICES));
    assert_eq!(summary["connectFailures"], json!(0));
    assert_eq!(summary["stoppedBy"], json!("interrupted"));
    assert!(
        summary["telemetry"]["sent"].as_u64() >= Some(DEVICES as u64),
        "{summary}"
    );
    assert!(summary["reports"]["sent"].as_u64() > Some(0), "{summary}");
    assert_eq!(summary["methods"]["answered"], json!(DEVICES + 2));
    assert_eq!(
        summary["firmware"],
        json!({"updates": DEVICES, "completed": DEVICES, "failed": 0, "rolledBack": 0})
    );
    assert_eq!(summary["deleted"], json!(DEVICES));
    assert_eq!(summary["kept"], json!(false));
    let statistics = service.registry_statistics().await.expect("statistics");
    assert_eq!(statistics.total_device_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_devices_reconnect_kept_devices_are_reused_and_every_update_fails_at_rate_one() {
    const DEVICES: usize = 10;
    let hub = tokio::task::spawn_blocking(Hub::start)
        .await
        .expect("the hub starts");
    let public_key = upload_signed_image(&hub).await;
    let service = service(&hub);
    let mut changes = service
        .watch_changes(WatchOptions {
            after: Some(0),
            ..WatchOptions::default()
        })
        .await
        .expect("watch the change feed");
    let ids = ids("fleet-", DEVICES);

    // Churn: the hub sees a simulated device disconnect and connect again.
    let sim = start_sim(
        &hub,
        &[
            "--devices",
            "10",
            "--prefix",
            "fleet-",
            "--churn-every",
            "0.3",
            "--churn-fraction",
            "0.5",
            "--telemetry-every",
            "0",
            "--report-every",
            "0",
            "--source-addresses",
            "127.0.0.1,127.0.0.2",
            "--keep",
        ],
    );
    wait_connected(&mut changes, &ids).await;
    let mut disconnected = HashSet::new();
    loop {
        let change = next_change(&mut changes).await;
        let Some(device_id) = change.device_id.map(|id| id.to_string()) else {
            continue;
        };
        match change.operation {
            ChangeOperation::DeviceDisconnected => {
                disconnected.insert(device_id);
            }
            ChangeOperation::DeviceConnected if disconnected.contains(&device_id) => break,
            _ => {}
        }
    }
    let summary = interrupt(sim).await;
    assert!(
        summary["churn"]["disconnects"].as_u64() >= Some(1),
        "{summary}"
    );
    assert_eq!(summary["kept"], json!(true));
    assert_eq!(summary["deleted"], json!(0));
    let statistics = service.registry_statistics().await.expect("statistics");
    assert_eq!(statistics.total_device_count, DEVICES as u64, "kept");

    // The next run reuses the kept devices; with a failure rate of 1 every update fails, half of them
    // before the reboot (failed), half after it (rolledBack), each saying it was simulated. A fresh watch
    // of the change feed, so that the first run's connections do not count.
    let mut changes = service
        .watch_changes(WatchOptions::default())
        .await
        .expect("watch the change feed");
    let sim = start_sim(
        &hub,
        &[
            "--devices",
            "10",
            "--prefix",
            "fleet-",
            "--firmware-failure-rate",
            "1",
            "--public-key",
            &public_key,
        ],
    );
    wait_connected(&mut changes, &ids).await;
    let ended = roll_out(&hub, "doomed").await;
    assert_eq!(ended["statistics"]["failed"], json!(DEVICES), "{ended}");
    assert_eq!(ended["statistics"]["succeeded"], json!(0));
    for id in &ids {
        let twin = service
            .get_twin(&DeviceId::new(id.clone()).expect("valid"))
            .await
            .expect("twin");
        let firmware =
            serde_json::to_value(&twin).expect("serialises")["properties"]["reported"]["firmware"]
                .clone();
        let status = firmware["status"].as_str().expect("a status");
        assert!(matches!(status, "failed" | "rolledBack"), "{firmware}");
        assert_eq!(firmware["currentVersion"], json!("1.0.0"));
        assert!(
            firmware["error"]["reason"].as_str().is_some_and(
                |reason| reason.contains("simulated failure (--firmware-failure-rate)")
            ),
            "{firmware}"
        );
    }
    let summary = interrupt(sim).await;
    let firmware = &summary["firmware"];
    assert_eq!(firmware["updates"], json!(DEVICES));
    assert_eq!(firmware["completed"], json!(0));
    assert_eq!(
        firmware["failed"].as_u64().unwrap_or(0) + firmware["rolledBack"].as_u64().unwrap_or(0),
        DEVICES as u64,
        "{summary}"
    );
    assert_eq!(summary["deleted"], json!(DEVICES));
    let statistics = service.registry_statistics().await.expect("statistics");
    assert_eq!(statistics.total_device_count, 0);
}

#[test]
fn malformed_arguments_are_refused_before_anything_is_registered() {
    let directory = tempfile::tempdir().expect("a directory");
    let usage = |args: &[&str], needles: &[&str]| {
        let output = run_in(directory.path(), args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{args:?}: {message:?} lacks {needle:?}"
            );
        }
    };
    usage(&["sim"], &["--devices <N>"]);
    usage(&["sim", "--devices", "0"], &["0 is not in 1..=1000000"]);
    usage(
        &["sim", "--devices", "5", "--firmware-failure-rate", "1.5"],
        &["give a fraction from 0 to 1"],
    );
    usage(
        &["sim", "--devices", "5", "--churn-fraction", "0"],
        &["give a fraction above 0"],
    );
    usage(
        &["sim", "--devices", "5", "--telemetry-every=-1"],
        &["give 0 or a positive number of seconds"],
    );
    usage(
        &["sim", "--devices", "5", "--report-every", "often"],
        &["\"often\" is not a number of seconds"],
    );
    usage(
        &[
            "sim",
            "--devices",
            "5",
            "--source-addresses",
            "127.0.0.1,nope",
        ],
        &["--source-addresses", "invalid IP address syntax"],
    );
    usage(
        &["sim", "--devices", "5", "--payload-bytes", "300000"],
        &["300000 is not in 1..=261120"],
    );

    let refused = |args: &[&str], needles: &[&str]| {
        failure(&run_in(directory.path(), args), needles);
    };
    refused(
        &["sim", "--devices", "5", "--prefix", "a/b"],
        &["--prefix \"a/b\"", "is not a valid device id"],
    );
    refused(
        &["sim", "--devices", "5", "--model", "bad model"],
        &["--model", "contains ' '"],
    );
    refused(
        &["sim", "--devices", "5", "--public-key", "missing.pem"],
        &["--public-key missing.pem"],
    );
    // No hub anywhere.
    refused(&["sim", "--devices", "5"], &["no hub"]);
    // A hub given by connection string only: devices need its CA (they never use the system's roots).
    refused(
        &[
            "sim",
            "--devices",
            "5",
            "--hub",
            "HostName=localhost:1;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0",
        ],
        &["simulated devices need the CA", "--ca FILE"],
    );
}
