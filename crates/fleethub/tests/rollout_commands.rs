//! `fleethub rollout` of the real binary against a real `fleethub serve` process and real firmware agents
//! (in-process): an artifact signed and uploaded with `fleethub firmware`, a rollout created and watched to
//! its end with `--watch --output json`, then shown, listed, and refused once over; and a rollout waiting
//! for approval, aborted, whose watch fails.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use fleethub_agent::{AgentConfig, DownloadPolicy};
use fleethub_device::DeviceClientOptions;
use fleethub_protocol::changes::ChangeOperation;
use fleethub_protocol::firmware::PublicKey;
use fleethub_protocol::rollouts::RolloutStatus;
use fleethub_service::{ServiceClient, ServiceClientOptions, WatchOptions};
use serde_json::{Value, json};
use support::*;

const MODEL: &str = "gateway-9";
const DEVICES: [&str; 4] = ["gw-1", "gw-2", "gw-3", "gw-4"];

fn path_text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8 here")
}

/// How long a command may take; `--watch` and `rollout watch` last until their rollout ends.
const COMMAND_WAIT: Duration = Duration::from_secs(120);

/// Runs `fleethub ARGS --data-dir DATA` without blocking the runtime the agents run on.
async fn cli(hub: &Hub, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", hub.data_dir_text()]);
    let output = tokio::process::Command::from(command_in(hub.directory.path(), &all))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(COMMAND_WAIT, output)
        .await
        .unwrap_or_else(|_| panic!("fleethub {args:?} did not end within {COMMAND_WAIT:?}"))
        .expect("run fleethub")
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_created_and_watched_to_its_end_then_shown_and_refused() {
    let hub = tokio::task::spawn_blocking(Hub::start)
        .await
        .expect("the hub starts");
    let keys = hub.directory.path().join("release");
    let keygen = cli(&hub, &["firmware", "keygen", "--out", path_text(&keys)]).await;
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let public_key = PublicKey::parse(
        &std::fs::read_to_string(hub.directory.path().join("release.pub.pem")).expect("public key"),
    )
    .expect("a public key");

    // The service side, to wait (on the change feed) until every agent reported its model.
    let service = ServiceClient::from_connection_string(
        &hub.connection_string("iothubowner"),
        ServiceClientOptions {
            ca_pem: Some(hub.ca_pem()),
            ..ServiceClientOptions::default()
        },
    )
    .expect("service client");
    let mut changes = service
        .watch_changes(WatchOptions {
            after: Some(0),
            ..WatchOptions::default()
        })
        .await
        .expect("watch the change feed");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents = Vec::new();
    for id in DEVICES {
        let created = cli(&hub, &["device", "create", id]).await;
        assert!(created.status.success(), "{}", stderr(&created));
        let connection_string = cli(&hub, &["device", "connection-string", id]).await;
        let config = AgentConfig::new(
            stdout(&connection_string).trim(),
            hub.directory.path().join("agents").join(id),
            MODEL,
        )
        .with_device_options(DeviceClientOptions::default().with_port(hub.mqtt_port))
        .with_ca_pem(hub.ca_pem())
        .with_public_key(public_key)
        .with_initial_version("1.0.0")
        .with_download_policy(
            DownloadPolicy::default()
                .with_backoff(Duration::from_millis(50), Duration::from_millis(500)),
        );
        let mut stopped = stopped.clone();
        agents.push(tokio::spawn(fleethub_agent::run_in_process(
            config,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )));
    }
    let mut reported = HashSet::new();
    while reported.len() < DEVICES.len() {
        let change = tokio::time::timeout(WAIT, changes.next())
            .await
            .expect("the agents report within the timeout")
            .expect("the feed goes on")
            .expect("a change");
        if change.operation == ChangeOperation::UpdateTwin
            && change.body.pointer("/properties/reported/firmware/model") == Some(&json!(MODEL))
            && let Some(device_id) = change.device_id
        {
            reported.insert(device_id.to_string());
        }
    }

    let image = hub.directory.path().join("image.bin");
    std::fs::write(&image, vec![7u8; 8192]).expect("write the image");
    let key = hub.directory.path().join("release.key.pem");
    let upload = cli(
        &hub,
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

    // Created and watched to its end: JSON lines, the final rollout last.
    let watched = cli(
        &hub,
        &[
            "rollout",
            "create",
            "gw-2-0",
            "--model",
            MODEL,
            "--version",
            "2.0.0",
            "--query",
            "deviceId IN ['gw-1', 'gw-2', 'gw-3', 'gw-4']",
            "--waves",
            "25%,100%",
            "--max-concurrency",
            "2",
            "--watch",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(watched.status.success(), "{}", stderr(&watched));
    let lines = json_lines(&watched);
    let (last, progress) = lines.split_last().expect("lines");
    assert_eq!(last["rolloutId"], json!("gw-2-0"));
    assert_eq!(last["status"], json!("completed"));
    assert_eq!(last["statistics"]["succeeded"], json!(4));
    assert_eq!(last["waves"][0]["status"], json!("passed"));
    assert_eq!(last["waves"][1]["statistics"]["deviceCount"], json!(3));
    assert_eq!(
        progress[0]["sequence"],
        Value::Null,
        "the rollout as first read"
    );
    let succeeded: HashSet<&str> = progress
        .iter()
        .filter(|line| line["device"]["status"] == json!("succeeded"))
        .filter_map(|line| line["device"]["deviceId"].as_str())
        .collect();
    assert_eq!(succeeded, DEVICES.into_iter().collect());
    let sequences: Vec<u64> = progress[1..]
        .iter()
        .map(|line| line["sequence"].as_u64().expect("a sequence"))
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] < pair[1]),
        "{sequences:?}"
    );
    for line in progress {
        let counts = &line["statistics"];
        let sum: u64 = ["pending", "running", "succeeded", "failed", "cancelled"]
            .iter()
            .map(|name| counts[name].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(Some(sum), counts["deviceCount"].as_u64(), "{line}");
    }

    let shown = json_of(&cli(&hub, &["rollout", "show", "gw-2-0", "--output", "json"]).await);
    assert_eq!(shown["status"], json!("completed"));
    let table = cli(&hub, &["rollout", "show", "gw-2-0"]).await;
    assert!(
        stdout(&table).contains("every wave done: 4 of 4 devices succeeded"),
        "{}",
        stdout(&table)
    );
    let list = cli(&hub, &["rollout", "list"]).await;
    assert!(
        stdout(&list).contains("gw-2-0      gateway-9 2.0.0  completed"),
        "{}",
        stdout(&list)
    );
    let paused = cli(&hub, &["rollout", "pause", "gw-2-0"]).await;
    failure(
        &paused,
        &[
            "cannot pause rollout gw-2-0",
            "409000 GenericConflict",
            "the rollout is completed and will not change again",
            "fleethub rollout show gw-2-0",
        ],
    );
    failure(
        &cli(&hub, &["rollout", "show", "nope"]).await,
        &["rollout nope does not exist", "fleethub rollout list"],
    );

    // Waiting for approval after its first wave, then aborted: its watch says so and fails.
    let created = cli(
        &hub,
        &[
            "rollout",
            "create",
            "held",
            "--model",
            MODEL,
            "--version",
            "2.0.0",
            "--waves",
            "50%",
            "--approval",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(json_of(&created)["waves"][0]["approval"], json!(true));
    // The devices are at 2.0.0 already: wave 1 passes at once, and the rollout waits for approval.
    let mut progress = service
        .watch_rollout(&"held".parse().expect("valid"))
        .await
        .expect("watch the rollout");
    let waiting = loop {
        let update = tokio::time::timeout(WAIT, progress.next())
            .await
            .expect("progress within the timeout")
            .expect("the watch goes on")
            .expect("progress");
        if update.status() == RolloutStatus::WaitingForApproval || update.is_over() {
            break serde_json::to_value(&update.rollout).expect("serialises");
        }
    };
    assert_eq!(waiting["status"], json!("waitingForApproval"), "{waiting}");
    let aborted = json_of(&cli(&hub, &["rollout", "abort", "held", "--output", "json"]).await);
    assert!(
        matches!(aborted["status"].as_str(), Some("aborting" | "aborted")),
        "{aborted}"
    );
    let watch = cli(&hub, &["rollout", "watch", "held"]).await;
    failure_with_output(&watch, &["rollout held was aborted: aborted on request"]);
    assert!(stdout(&watch).contains("aborted"), "{}", stdout(&watch));

    let _ = stop.send(true);
    for agent in agents {
        agent
            .await
            .expect("the agent task ends")
            .expect("the agent stops cleanly");
    }
}

/// Exit 1 with every needle in the message; unlike `failure`, stdout may hold the final rollout.
fn failure_with_output(output: &Output, needles: &[&str]) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(1), "expected exit 1: {message}");
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}
