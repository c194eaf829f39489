//! `fleethub firmware update --watch`, the native service app of the firmware workflow: the real binary
//! against a real `fleethub serve`, updating a real `fleethub-agent` (in-process, its own A/B state directory)
//! to a signed artifact, following every state from the change feed; a bad image rolls back and fails the
//! command; and the messages when the update cannot start.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use fleethub_agent::AgentConfig;
use fleethub_device::DeviceClientOptions;
use fleethub_protocol::firmware::PublicKey;
use serde_json::Value;
use support::*;

const MODEL: &str = "sensor-7";

fn path_text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8 here")
}

async fn run(hub: &Hub, args: &[&str]) -> Output {
    let mut command = command_in(hub.directory.path(), args);
    command
        .args(["--data-dir", hub.data_dir_text()])
        .env("NO_COLOR", "1");
    tokio::task::spawn_blocking(move || command.output().expect("run fleethub"))
        .await
        .expect("the command's thread")
}

/// Uploads a 200 KB image as `version`, signed with the key at `prefix`.
async fn upload(hub: &Hub, prefix: &Path, version: &str, health_check: Option<&str>) {
    let image = hub.directory.path().join(format!("image-{version}.bin"));
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|index| (index.wrapping_mul(31) ^ version.len() as u32) as u8)
        .collect();
    std::fs::write(&image, bytes).expect("write the image");
    let key = format!("{}.key.pem", path_text(prefix));
    let mut args = vec![
        "firmware",
        "upload",
        path_text(&image),
        "--model",
        MODEL,
        "--version",
        version,
        "--sign-key",
        &key,
    ];
    if let Some(command) = health_check {
        args.extend(["--health-check", command]);
    }
    let uploaded = run(hub, &args).await;
    assert!(uploaded.status.success(), "{}", stderr(&uploaded));
}

/// Waits until the device's twin shows the agent's reported model (the agent reports it when it connects).
async fn wait_for_agent(hub: &Hub, device_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let twin = json_of(&run(hub, &["twin", "show", device_id, "--output", "json"]).await);
        if twin["properties"]["reported"]["firmware"]["model"] == MODEL {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not report its model: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_followed_to_completion_and_a_bad_image_rolls_back_and_fails() {
    let hub = Hub::start();
    let prefix = hub.directory.path().join("signing");
    let made = run(&hub, &["firmware", "keygen", "--out", path_text(&prefix)]).await;
    assert!(made.status.success(), "{}", stderr(&made));
    upload(&hub, &prefix, "2.0.0", None).await;
    upload(&hub, &prefix, "3.0.0", Some("exit 1")).await;

    let created = run(&hub, &["device", "create", "sensor-a"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let connection_string = stdout(&run(&hub, &["device", "connection-string", "sensor-a"]).await)
        .trim()
        .to_owned();
    let public_pem =
        std::fs::read_to_string(format!("{}.pub.pem", path_text(&prefix))).expect("the public key");
    let config = AgentConfig::new(connection_string, hub.directory.path().join("agent"), MODEL)
        .with_ca_pem(hub.ca_pem())
        .with_device_options(
            DeviceClientOptions::default()
                .with_ca_pem(hub.ca_pem())
                .with_port(hub.mqtt_port),
        )
        .with_public_key(PublicKey::parse(&public_pem).expect("a public key"))
        .with_initial_version("1.0.0");
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(fleethub_agent::run_in_process(config, async {
        let _ = stopped.await;
    }));
    wait_for_agent(&hub, "sensor-a").await;

    // The model comes from the device's reports; JSON lines: started, then each state.
    let updated = run(
        &hub,
        &[
            "firmware",
            "update",
            "sensor-a",
            "--version",
            "2.0.0",
            "--watch",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(updated.status.success(), "{}", stderr(&updated));
    let lines: Vec<Value> = stdout(&updated)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["event"], "started");
    assert_eq!(lines[0]["model"], MODEL);
    assert_eq!(lines[0]["methodStatus"], 200);
    let statuses: Vec<&str> = lines[1..]
        .iter()
        .map(|line| line["firmwareStatus"].as_str().expect("a status"))
        .collect();
    assert!(statuses.contains(&"downloading"), "{statuses:?}");
    assert!(statuses.contains(&"applying"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"completed"), "{statuses:?}");
    let last = lines.last().expect("lines");
    assert_eq!(last["firmware"]["currentVersion"], "2.0.0");
    assert_eq!(last["deviceId"], "sensor-a");

    // A signed image whose health check fails: the agent rolls back, the command says so and fails.
    let bad = run(
        &hub,
        &[
            "firmware",
            "update",
            "sensor-a",
            "--version",
            "3.0.0",
            "--watch",
        ],
    )
    .await;
    let message = stderr(&bad);
    assert_eq!(bad.status.code(), Some(1), "{message}");
    assert!(
        message
            .contains("the update of device sensor-a to 3.0.0 ended rolledBack: healthCheckFailed"),
        "{message}"
    );
    let table = stdout(&bad);
    assert!(
        table.contains("started firmware sensor-7 3.0.0 on device sensor-a"),
        "{table}"
    );
    assert!(table.contains("rolledBack    running 2.0.0"), "{table}");

    // An artifact that does not exist: nothing is sent to the device.
    let missing = run(
        &hub,
        &["firmware", "update", "sensor-a", "--version", "9.9.9"],
    )
    .await;
    failure(&missing, &["sensor-7", "9.9.9"]);

    let _ = stop_agent.send(());
    agent.await.expect("agent task").expect("agent");

    // A device without an agent has reported no model: say how to name it.
    let created = run(&hub, &["device", "create", "bare"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let bare = run(&hub, &["firmware", "update", "bare", "--version", "2.0.0"]).await;
    failure(
        &bare,
        &[
            "device bare has not reported properties.reported.firmware.model",
            "--model",
        ],
    );
}
