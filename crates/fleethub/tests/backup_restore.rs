//! `fleethub backup` of a live hub while a writer keeps patching a twin, and `fleethub restore` into a new
//! data directory: the hub started on it has every device, key, twin, C2D message, artifact and telemetry
//! event acknowledged before the backup started; restores refuse a non-empty target and a tampered file.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleethub_mqtt::{Packet, QoS};
use fleethub_service::{
    ArtifactUpload, EventReadOptions, EventStart, ServiceClient, ServiceClientOptions,
};
use fleethub_testkit::{
    RawClient, ServiceApi, connect_with_key, publish_qos1, subscribe, tls_connector,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const BINARY: &str = env!("CARGO_BIN_EXE_fleethub");

struct HubProcess {
    child: Child,
    data_dir: PathBuf,
    mqtt: SocketAddr,
    https: SocketAddr,
}

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

impl HubProcess {
    async fn start(data_dir: &Path) -> Self {
        let (mqtt, https) = (free_address(), free_address());
        let child = Command::new(BINARY)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--mqtt-listen", &mqtt.to_string()])
            .args(["--https-listen", &https.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fleethub serve");
        let hub = Self {
            child,
            data_dir: data_dir.to_owned(),
            mqtt,
            https,
        };
        support::wait_until_healthy(data_dir, https, "start").await;
        hub
    }

    fn ca(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("ca.pem")).unwrap()
    }

    fn owner_key(&self) -> String {
        let output = Command::new(BINARY)
            .args(["connection-string", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .expect("run fleethub connection-string");
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        text.trim()
            .rsplit_once("SharedAccessKey=")
            .unwrap()
            .1
            .to_owned()
    }

    /// REST as `iothubowner` with `key` (the old hub's key on the restored one).
    fn api(&self, owner_key: &str) -> ServiceApi {
        ServiceApi::new(self.https, &self.ca(), "iothubowner", owner_key)
    }

    fn service(&self, owner_key: &str) -> ServiceClient {
        let connection_string = format!(
            "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={owner_key}",
            self.https.port()
        );
        let options = ServiceClientOptions {
            ca_pem: Some(self.ca()),
            ..ServiceClientOptions::default()
        };
        ServiceClient::from_connection_string(&connection_string, options).expect("service client")
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fleethub(args: &[&str]) -> Output {
    tokio::process::Command::new(BINARY)
        .args(args)
        .env_remove("FLEETHUB_DATA_DIR")
        .env_remove("FLEETHUB_CONNECTION_STRING")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run fleethub")
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8 here")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "expected success: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

fn failure_message(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "expected exit 1");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn create_device(api: &ServiceApi, id: &str) -> String {
    let created = api
        .send(
            Method::PUT,
            &format!("/devices/{id}"),
            &[],
            Some(json!({"deviceId": id})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    created.body["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn patch_desired(api: &ServiceApi, id: &str, desired: Value) -> StatusCode {
    api.send(
        Method::PATCH,
        &format!("/twins/{id}"),
        &[],
        Some(json!({"properties": {"desired": desired}})),
    )
    .await
    .status
}

/// Patches `counter` = 1, 2, ... on the twin, recording the last one acknowledged, until told to stop.
async fn keep_patching(api: ServiceApi, acknowledged: Arc<AtomicU64>, stop: Arc<AtomicU64>) {
    let mut counter = 0u64;
    while stop.load(Ordering::SeqCst) == 0 {
        counter += 1;
        assert_eq!(
            patch_desired(&api, "writer", json!({"counter": counter})).await,
            StatusCode::OK
        );
        acknowledged.store(counter, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_live_hub_restores_everything_acknowledged_before_it() {
    let directory = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&directory.path().join("data")).await;
    let owner_key = hub.owner_key();
    let api = hub.api(&owner_key);
    let ca = hub.ca();

    // Devices, a twin, telemetry, a queued C2D message and a firmware artifact.
    let sensor_key = create_device(&api, "sensor").await;
    create_device(&api, "writer").await;
    assert_eq!(
        patch_desired(&api, "sensor", json!({"interval": 30})).await,
        StatusCode::OK
    );
    let mut device = RawClient::connect(hub.mqtt, tls_connector(&ca)).await;
    device
        .connect_accepted(connect_with_key("sensor", &sensor_key, 60))
        .await;
    for sequence in 1..=5u16 {
        device
            .send(&publish_qos1(
                "devices/sensor/messages/events/",
                sequence,
                format!("reading {sequence}").as_bytes(),
            ))
            .await;
        assert!(matches!(device.receive().await, Some(Packet::PubAck(_))));
    }
    drop(device);
    let sent = api
        .send(
            Method::POST,
            "/devices/sensor/messages/deviceBound",
            &[],
            Some(json!({"body": "reboot"})),
        )
        .await;
    assert!(sent.status.is_success(), "{:?}", sent.body);
    let image = directory.path().join("image.bin");
    std::fs::write(&image, vec![7u8; 300_000]).unwrap();
    let artifact = hub
        .service(&owner_key)
        .upload_artifact(&ArtifactUpload {
            model: "thermostat".into(),
            version: "1.0.0".into(),
            file: image,
            ..ArtifactUpload::default()
        })
        .await
        .expect("upload the artifact");

    // The backup runs while a writer keeps patching a twin.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(keep_patching(
        hub.api(&owner_key),
        Arc::clone(&acknowledged),
        Arc::clone(&stop),
    ));
    while acknowledged.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acknowledged_before_backup = acknowledged.load(Ordering::SeqCst);
    let backup = directory.path().join("backup");
    let summary = json_of(
        &fleethub(&[
            "backup",
            "--data-dir",
            text(&hub.data_dir),
            "--out",
            text(&backup),
            "--output",
            "json",
        ])
        .await,
    );
    let acknowledged_during_backup = acknowledged.load(Ordering::SeqCst);
    stop.store(1, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        acknowledged_during_backup > acknowledged_before_backup,
        "the writer kept writing during the backup"
    );
    assert!(summary["files"].as_u64().unwrap() >= 5, "{summary}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("backup.json")).unwrap()).unwrap();
    let paths: BTreeSet<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["path"].as_str().unwrap())
        .collect();
    for expected in ["fleethub.db", "ca.pem", "ca-key.pem", "events/log.json"] {
        assert!(paths.contains(expected), "{expected} in {paths:?}");
    }
    assert!(!paths.contains("fleethub.lock"));
    for secret in ["ca-key.pem", "fleethub.db"] {
        let mode = std::fs::metadata(backup.join(secret))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
            0,
            "{secret} is private"
        );
    }
    let blob = format!("artifacts/blobs/{}", artifact.sha256);
    assert!(paths.contains(blob.as_str()), "{blob} in {paths:?}");
    hub.stop();

    // Restore into a new directory and serve it.
    let restored_dir = directory.path().join("restored");
    let restored = json_of(
        &fleethub(&[
            "restore",
            "--from",
            text(&backup),
            "--data-dir",
            text(&restored_dir),
            "--output",
            "json",
        ])
        .await,
    );
    assert_eq!(restored["files"], summary["files"]);
    let database = rusqlite::Connection::open(restored_dir.join("fleethub.db")).unwrap();
    let integrity: String = database
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(database);

    let hub = HubProcess::start(&restored_dir).await;
    // The old owner key still works: policies came along.
    let api = hub.api(&owner_key);
    let writer_twin = api.send(Method::GET, "/twins/writer", &[], None).await;
    assert_eq!(writer_twin.status, StatusCode::OK);
    let counter = writer_twin.body["properties"]["desired"]["counter"]
        .as_u64()
        .expect("the writer's counter");
    assert!(
        counter >= acknowledged_before_backup,
        "patch {acknowledged_before_backup} was acknowledged before the backup, the restored twin has {counter}"
    );
    let sensor_twin = api.send(Method::GET, "/twins/sensor", &[], None).await;
    assert_eq!(
        sensor_twin.body["properties"]["desired"]["interval"],
        json!(30)
    );
    let artifacts = hub
        .service(&owner_key)
        .list_artifacts(None)
        .await
        .expect("list artifacts");
    assert!(
        artifacts
            .iter()
            .any(|listed| listed.model == "thermostat" && listed.sha256 == artifact.sha256),
        "{artifacts:?}"
    );

    // The device's old key works, and its C2D message waited for it.
    let mut device = RawClient::connect(hub.mqtt, tls_connector(&hub.ca())).await;
    device
        .connect_accepted(connect_with_key("sensor", &sensor_key, 60))
        .await;
    device
        .send(&subscribe(
            1,
            "devices/sensor/messages/devicebound/#",
            QoS::AtLeastOnce,
        ))
        .await;
    let message = tokio::time::timeout(WAIT, device.receive_publish())
        .await
        .expect("the queued C2D message");
    assert_eq!(&message.payload[..], b"reboot");

    // Every telemetry message is in the restored event log.
    let mut events = hub
        .service(&owner_key)
        .read_events(EventReadOptions {
            start: EventStart::Earliest,
            no_reconnect: true,
            ..EventReadOptions::default()
        })
        .await
        .expect("read events");
    let mut readings = BTreeSet::new();
    while readings.len() < 5 {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("events within the timeout")
            .expect("the stream goes on")
            .expect("no stream error");
        if event.message_source() == Some("Telemetry") {
            readings.insert(event.body.clone());
        }
    }
    assert_eq!(
        readings,
        (1..=5)
            .map(|n| format!("reading {n}"))
            .collect::<BTreeSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_non_empty_target_and_a_tampered_file() {
    let directory = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&directory.path().join("data")).await;
    let api = hub.api(&hub.owner_key());
    create_device(&api, "sensor").await;
    let backup = directory.path().join("backup");
    let output = fleethub(&[
        "backup",
        "--data-dir",
        text(&hub.data_dir),
        "--out",
        text(&backup),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    hub.stop();

    // A backup never overwrites: the same --out again is refused.
    let again = fleethub(&[
        "backup",
        "--data-dir",
        text(&directory.path().join("data")),
        "--out",
        text(&backup),
    ])
    .await;
    assert!(failure_message(&again).contains("is not empty"));

    let occupied = directory.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();
    let refused = fleethub(&[
        "restore",
        "--from",
        text(&backup),
        "--data-dir",
        text(&occupied),
    ])
    .await;
    let message = failure_message(&refused);
    assert!(message.contains("is not empty"), "{message}");
    assert_eq!(
        std::fs::read_to_string(occupied.join("keep.txt")).unwrap(),
        "mine"
    );

    let mut certificate = std::fs::read(backup.join("ca.pem")).unwrap();
    certificate[40] ^= 1;
    std::fs::write(backup.join("ca.pem"), certificate).unwrap();
    let target = directory.path().join("restored");
    let tampered = fleethub(&[
        "restore",
        "--from",
        text(&backup),
        "--data-dir",
        text(&target),
    ])
    .await;
    let message = failure_message(&tampered);
    assert!(message.contains("backup file ca.pem"), "{message}");
    assert!(!target.exists(), "a failed restore leaves nothing behind");
    let leftovers: Vec<_> = std::fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".fleethub-restore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
