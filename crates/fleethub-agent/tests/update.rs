//! The agent in-process against a real hub (real TLS, real MQTT, the service SDK calling `firmwareUpdate`
//! through the hub's REST API) and a real HTTPS artifact server: the reported properties and the state
//! directory after each scenario. The in-process "reboot" is [`run_in_process`] starting a new agent.

mod support;

use std::time::Duration;

use fleethub_agent::{AgentConfig, AgentError, run_in_process};
use serde_json::{Value, json};
use support::{
    FACTORY_VERSION, Fault, MODEL, Scenario, WAIT, bytes_for_percent, image, manifest, started,
};
use tokio::sync::oneshot;

/// An agent running in this process, rebooting in-process, until stopped.
struct InProcessAgent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl InProcessAgent {
    fn start(config: AgentConfig) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_in_process(config, async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the agent stops in time")
            .expect("the agent task does not panic")
            .expect("the agent ran without error");
    }
}

fn quick_checkpoints(config: AgentConfig) -> AgentConfig {
    let policy = config
        .download
        .clone()
        .with_sync_interval(Duration::from_millis(100));
    config.with_download_policy(policy)
}

fn assert_time(reported: &Value, property: &str) {
    let text = reported[property]
        .as_str()
        .unwrap_or_else(|| panic!("{property} is reported: {reported}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{property} {text:?} is RFC 3339: {error}"));
}

/// The old firmware is committed and nothing of the update is left but an incomplete slot.
fn assert_nothing_applied(scenario: &Scenario) {
    let boot = scenario.boot_json();
    assert_eq!(
        (&boot["active"], &boot["tentative"], &boot["committed"]),
        (&json!("a"), &Value::Null, &json!(true)),
        "{boot}"
    );
    assert_eq!(
        scenario.slot_file("b", "manifest"),
        None,
        "slot b was not written"
    );
    assert!(scenario.download_dir_is_empty(), "the download was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_goes_from_standby_to_completed_through_the_real_hub() {
    let mut scenario = Scenario::start().await;
    let agent = InProcessAgent::start(scenario.agent_config());
    let reported = scenario.reported.until_status("standBy").await;
    // A reported null deletes the property (merge patch), so `error: null` and the like are absent.
    assert_eq!(
        reported["firmware"],
        json!({"model": MODEL, "currentVersion": FACTORY_VERSION, "status": "standBy", "slot": "a"})
    );

    let image = image(300_000, 1);
    let signed = scenario.sign(&manifest(&image, "2.0.0", None));
    let published = scenario.publish("2.0.0", image.clone(), Some(signed)).await;
    // The reference payload, the URL alone: the manifest comes with the download (x-fleethub-manifest).
    let answer = scenario
        .invoke("firmwareUpdate", json!({"fwPackageUri": published.url}))
        .await;
    assert_eq!(answer, started());

    let reported = scenario.reported.until_status("completed").await;
    assert_eq!(
        scenario.reported.distinct_statuses(),
        ["standBy", "downloading", "applying", "completed"]
    );
    assert_eq!(
        reported["firmware"],
        json!({
            "model": MODEL, "currentVersion": "2.0.0", "targetVersion": "2.0.0",
            "status": "completed", "progress": 100, "slot": "b",
        })
    );
    for property in [
        "downloadComplete",
        "startedApplyingImage",
        "lastFirmwareUpdate",
    ] {
        assert_time(&reported, property);
    }
    // Before the reboot `applying` names the old slot, after it (during the health check) the new one.
    let applying_slots: Vec<&Value> = scenario
        .reported
        .patches
        .iter()
        .filter(|patch| patch["firmwareStatus"] == "applying")
        .map(|patch| &patch["firmware"]["slot"])
        .collect();
    assert_eq!(applying_slots, [&json!("a"), &json!("b")]);
    let progress_patches = scenario
        .reported
        .patches
        .iter()
        .filter(|patch| patch.get("firmwareStatus").is_none())
        .count();
    assert!(
        progress_patches <= 11,
        "{progress_patches} progress reports"
    );

    let boot = scenario.boot_json();
    assert_eq!(
        (
            &boot["active"],
            &boot["tentative"],
            &boot["bootCount"],
            &boot["committed"]
        ),
        (&json!("b"), &Value::Null, &json!(0), &json!(true)),
        "{boot}"
    );
    assert_eq!(
        scenario.slot_file("b", "image").as_deref(),
        Some(&image[..])
    );
    assert!(scenario.download_dir_is_empty());
    if scenario.source == support::ArtifactSource::TestServer {
        let requests = scenario.server.requests();
        assert!(
            requests
                .iter()
                .all(|request| request.authorized_by == "sas"),
            "a URL that is not signed is fetched with the device's SAS token: {requests:?}"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_mismatch_is_rejected_and_nothing_is_applied() {
    let mut scenario = Scenario::start().await;
    let agent = InProcessAgent::start(scenario.agent_config());
    scenario.reported.until_status("standBy").await;

    // A correctly signed manifest for other bytes of the same size: only the hash can tell. (The hub would
    // refuse such an upload, so this one is served by the test server whatever the source.)
    let served = image(50_000, 2);
    let signed = scenario.sign(&manifest(&image(50_000, 3), "2.0.0", None));
    let published = scenario.publish_on_test_server("2.0.0", served, Some(signed));
    assert_eq!(scenario.update(&published).await, started());

    let reported = scenario.reported.until_status("failed").await;
    let error = &reported["firmware"]["error"];
    assert_eq!(error["code"], "hashMismatch", "{reported}");
    assert!(
        error["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("SHA-256")),
        "{error}"
    );
    assert_eq!(reported["firmware"]["currentVersion"], FACTORY_VERSION);
    assert_eq!(reported["firmware"]["status"], "failed");
    assert_nothing_applied(&scenario);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_or_an_unsigned_artifact_is_rejected_and_nothing_is_applied() {
    let mut scenario = Scenario::start().await;
    let agent = InProcessAgent::start(scenario.agent_config());
    scenario.reported.until_status("standBy").await;

    let image = image(40_000, 4);
    let forged = fleethub_protocol::firmware::SigningKey::from_seed([7; 32])
        .sign(&manifest(&image, "2.0.0", None))
        .expect("signs");
    let published = scenario.publish("2.0.0", image.clone(), Some(forged)).await;
    assert_eq!(scenario.update(&published).await, started());
    let reported = scenario.reported.until_status("failed").await;
    assert_eq!(
        reported["firmware"]["error"]["code"], "badSignature",
        "{reported}"
    );
    assert_nothing_applied(&scenario);

    // The device is idle again, and an unsigned artifact is refused too.
    let unsigned = scenario.publish("2.0.1", image, None).await;
    assert_eq!(scenario.update(&unsigned).await, started());
    let reported = scenario
        .reported
        .until("an unsigned artifact refused", |reported| {
            reported["firmware"]["error"]["code"] == "unsignedArtifact"
        })
        .await;
    assert_eq!(reported["firmwareStatus"], "failed");
    assert_eq!(
        scenario.reported.distinct_statuses(),
        ["standBy", "downloading", "failed", "downloading", "failed"]
    );
    assert_nothing_applied(&scenario);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_midway_resumes_with_a_range_request() {
    let mut scenario = Scenario::start().await;
    let agent = InProcessAgent::start(quick_checkpoints(scenario.agent_config()));
    scenario.reported.until_status("standBy").await;

    let total = 300_000;
    let cut_at = bytes_for_percent(total, 33);
    let image = image(total, 5);
    let signed = scenario.sign(&manifest(&image, "2.0.0", None));
    scenario.server.inject(Fault::StallAfter(cut_at));
    let published = scenario.publish_on_test_server("2.0.0", image.clone(), Some(signed));
    assert_eq!(scenario.update(&published).await, started());

    scenario.server.fault_happened().await;
    scenario
        .reported
        .until("33 % downloaded", |reported| {
            reported["firmware"]["progress"] == 33
        })
        .await;
    scenario.server.cut_stalled();

    let reported = scenario.reported.until_status("completed").await;
    assert_eq!(reported["firmware"]["currentVersion"], "2.0.0");
    assert_eq!(
        scenario.slot_file("b", "image").as_deref(),
        Some(&image[..])
    );
    let requests = scenario.server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        (requests[0].range.as_deref(), requests[0].status),
        (None, 200)
    );
    assert_eq!(requests[1].range, Some(format!("bytes={cut_at}-")));
    assert_eq!(
        requests[1].if_range,
        Some(format!("\"{}\"", support::sha256_hex(&image)))
    );
    assert_eq!(requests[1].status, 206);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_rolls_back() {
    let mut scenario = Scenario::start().await;
    let agent = InProcessAgent::start(scenario.agent_config());
    scenario.reported.until_status("standBy").await;

    let image = image(20_000, 6);
    let signed = scenario.sign(&manifest(
        &image,
        "2.0.0",
        Some("echo cannot reach the sensor >&2; exit 1"),
    ));
    let mut published = scenario.publish("2.0.0", image, Some(signed)).await;
    if scenario.source == support::ArtifactSource::TestServer {
        // A signed URL this time: fetched without the SAS token.
        published.url = scenario.server.signed_url(MODEL, "2.0.0", support::DEVICE);
    }
    assert_eq!(scenario.update(&published).await, started());

    let reported = scenario.reported.until_status("rolledBack").await;
    assert_eq!(
        scenario.reported.distinct_statuses(),
        ["standBy", "downloading", "applying", "rolledBack"]
    );
    let firmware = &reported["firmware"];
    assert_eq!(
        (
            &firmware["currentVersion"],
            &firmware["targetVersion"],
            &firmware["slot"],
            &firmware["status"]
        ),
        (
            &json!(FACTORY_VERSION),
            &json!("2.0.0"),
            &json!("a"),
            &json!("rolledBack")
        )
    );
    assert_eq!(firmware["error"]["code"], "healthCheckFailed");
    let reason = firmware["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("exited with status 1: cannot reach the sensor"),
        "{reason}"
    );
    let boot = scenario.boot_json();
    assert_eq!(
        (&boot["active"], &boot["tentative"], &boot["committed"]),
        (&json!("a"), &Value::Null, &json!(true)),
        "{boot}"
    );
    assert_eq!(boot["lastUpdate"]["result"], "rolledBack");
    if scenario.source == support::ArtifactSource::TestServer {
        let requests = scenario.server.requests();
        assert!(
            requests
                .iter()
                .all(|request| request.authorized_by == "signed-url"),
            "{requests:?}"
        );
    }
    // The hub acknowledged the report (the change feed shows it); once that acknowledgement reached the agent,
    // which stopping waits for, the outcome is marked reported and will not be reported again.
    agent.stop().await;
    assert_eq!(scenario.boot_json()["lastUpdate"]["reported"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_update_while_one_runs_is_refused_with_409() {
    let mut scenario = Scenario::start().await;
    let agent = InProcessAgent::start(scenario.agent_config());
    scenario.reported.until_status("standBy").await;

    // Refused before anything starts: a bad payload (400), another model's manifest (409).
    let (status, payload) = scenario
        .invoke("firmwareUpdate", json!({"fwPackageUri": 42}))
        .await;
    assert_eq!(status, 400);
    assert!(
        payload["Response"]
            .as_str()
            .is_some_and(|message| message.contains("fwPackageUri must be a string")),
        "{payload}"
    );
    let image = image(100_000, 8);
    let mut other_model = manifest(&image, "2.0.0", None);
    other_model.model = "toaster".into();
    let (status, payload) = scenario
        .invoke(
            "firmwareUpdate",
            json!({"fwPackageUri": scenario.server.url(MODEL, "2.0.0"), "manifest": scenario.sign(&other_model)}),
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        payload["Response"]
            .as_str()
            .is_some_and(|message| message.contains("\"toaster\"")),
        "{payload}"
    );
    let (status, _) = scenario.invoke("reboot", json!(null)).await;
    assert_eq!(status, 404);

    // An update that stalls mid-download is running; a second one is refused.
    let signed = scenario.sign(&manifest(&image, "2.0.0", None));
    scenario.server.inject(Fault::StallAfter(10_000));
    let published = scenario.publish_on_test_server("2.0.0", image, Some(signed));
    assert_eq!(scenario.update(&published).await, started());
    scenario.reported.until_status("downloading").await;
    let (status, payload) = scenario.update(&published).await;
    assert_eq!(status, 409);
    assert!(
        payload["Response"]
            .as_str()
            .is_some_and(|message| message.contains("already running")),
        "{payload}"
    );
    // Stopping leaves the download to resume at the next start; nothing was applied.
    agent.stop().await;
    let boot = scenario.boot_json();
    assert_eq!(
        (&boot["active"], &boot["tentative"]),
        (&json!("a"), &Value::Null)
    );
    assert!(scenario.state_dir().join("download/partial.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unreachable_artifact_fails_the_update() {
    let mut scenario = Scenario::start().await;
    let agent = InProcessAgent::start(scenario.agent_config());
    scenario.reported.until_status("standBy").await;

    // 404 is final: one request, no retries.
    let missing = scenario.server.url(MODEL, "9.9.9");
    let (status, _) = scenario
        .invoke("firmwareUpdate", json!({"fwPackageUri": missing}))
        .await;
    assert_eq!(status, 200);
    let reported = scenario.reported.until_status("failed").await;
    assert_eq!(reported["firmware"]["error"]["code"], "downloadRefused");
    let reason = reported["firmware"]["error"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("404"), "{reason}");
    assert_eq!(scenario.server.requests().len(), 1);

    // Nothing listens: retried with backoff, then given up (the policy allows 5 attempts).
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let unreachable =
        format!("https://localhost:{closed_port}/firmware/artifacts/{MODEL}/2.0.0/image");
    let (status, _) = scenario
        .invoke("firmwareUpdate", json!({"fwPackageUri": unreachable}))
        .await;
    assert_eq!(status, 200);
    let reported = scenario
        .reported
        .until("the download given up", |reported| {
            reported["firmware"]["error"]["code"] == "downloadFailed"
        })
        .await;
    let reason = reported["firmware"]["error"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("gave up after 5 attempts"), "{reason}");
    assert_eq!(reported["firmwareStatus"], "failed");
    assert_nothing_applied(&scenario);
    agent.stop().await;
}
