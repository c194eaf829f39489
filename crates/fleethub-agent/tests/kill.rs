//! The real `fleethub-agent` binary, killed with SIGKILL during a download and again before the new firmware
//! is committed, then started again: each time a committed slot (the old one, then the new one) and reported
//! properties that say so. Its reboot is a real `exec` of itself (same process id).

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use support::{
    FACTORY_VERSION, Fault, MODEL, Scenario, WAIT, bytes_for_percent, image, manifest, started,
};

/// A running `fleethub-agent` process, its log kept in a file and printed if the test fails.
struct AgentProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(scenario: &Scenario, public_key: &Path, health_check: &str, log: PathBuf) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the agent log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleethub-agent"))
            .arg("--ca")
            .arg(scenario.ca_path())
            .arg("--state-dir")
            .arg(scenario.state_dir())
            .args(["--model", MODEL, "--initial-version", FACTORY_VERSION])
            .arg("--public-key")
            .arg(public_key)
            .args(["--health-check", health_check, "--boot-limit", "3"])
            // The connection string from the environment, as a service manager would pass it.
            .env(
                "FLEETHUB_DEVICE_CONNECTION_STRING",
                &scenario.connection_string,
            )
            .env("RUST_LOG", "fleethub_agent=debug,fleethub_device=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("start fleethub-agent");
        Self { child, log }
    }

    /// SIGKILL: no chance to clean up, as a power cut.
    async fn kill(mut self) {
        self.child.kill().await.expect("kill the agent");
    }

    /// SIGTERM, and the agent exits cleanly.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the agent exits after SIGTERM")
            .expect("wait for the agent");
        assert!(
            exit.success(),
            "the agent exits with 0 after SIGTERM: {exit}"
        );
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- fleethub-agent log ---\n{log}\n--- end of log ---");
        }
    }
}

fn boot_fields(boot: &Value) -> (Value, Value, Value, Value) {
    (
        boot["active"].clone(),
        boot["tentative"].clone(),
        boot["bootCount"].clone(),
        boot["committed"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_during_download_and_before_commit_ends_committed() {
    let mut scenario = Scenario::start().await;
    let public_key = scenario.directory.path().join("firmware-key.pem");
    std::fs::write(&public_key, scenario.key.public_key().to_spki_pem()).expect("write the key");
    // Holds the new firmware's health check until the test creates `release`, so the agent can be killed
    // while the check runs (before the commit). The loop is the check's own; the test waits on reports. A
    // SIGKILLed agent leaves its check running (as a power cut would not), so the check also ends, failing,
    // once the test's directory is gone.
    let release = scenario.directory.path().join("release");
    let health_check = format!(
        "while [ ! -e '{release}' ]; do [ -d '{directory}' ] || exit 1; sleep 0.05; done",
        release = release.display(),
        directory = scenario.directory.path().display(),
    );
    let log = scenario.directory.path().join("agent.log");

    let agent = AgentProcess::spawn(&scenario, &public_key, &health_check, log.clone());
    let reported = scenario.reported.until_status("standBy").await;
    assert_eq!(reported["firmware"]["currentVersion"], FACTORY_VERSION);
    assert_eq!(reported["firmware"]["model"], MODEL);

    // Killed during the download.
    let total = 400_000;
    let image = image(total, 9);
    let signed = scenario.sign(&manifest(&image, "2.0.0", None));
    let stalled_at = bytes_for_percent(total, 40);
    scenario.server.inject(Fault::StallAfter(stalled_at));
    let published = scenario.publish_on_test_server("2.0.0", image.clone(), Some(signed));
    assert_eq!(scenario.update(&published).await, started());
    scenario.server.fault_happened().await;
    scenario
        .reported
        .until("40 % downloaded", |reported| {
            reported["firmware"]["progress"] == 40
        })
        .await;
    agent.kill().await;
    assert_eq!(
        boot_fields(&scenario.boot_json()),
        (json!("a"), Value::Null, json!(0), json!(true)),
        "killed during the download: the old firmware is committed"
    );
    assert!(scenario.state_dir().join("download/partial.json").exists());

    // Restarted: the download resumes, the image is applied, the agent re-executes itself into the trial
    // and runs the health check, where it is killed again.
    let agent = AgentProcess::spawn(&scenario, &public_key, &health_check, log.clone());
    scenario
        .reported
        .until("the new slot booted on trial", |reported| {
            reported["firmwareStatus"] == "applying" && reported["firmware"]["slot"] == "b"
        })
        .await;
    agent.kill().await;
    let boot = scenario.boot_json();
    assert_eq!(
        boot_fields(&boot),
        (json!("a"), json!("b"), json!(1), json!(false)),
        "killed during the health check: the old firmware is still the committed one, the new on trial"
    );
    assert_eq!(
        scenario.slot_file("b", "image").as_deref(),
        Some(&image[..])
    );
    // Reported progress is never ahead of what is on disk: 40 % was reported, so the bytes the server had
    // sent before stalling survived the SIGKILL and the download resumed right after them.
    let requests = scenario.server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].range, Some(format!("bytes={stalled_at}-")));
    assert_eq!(
        requests[1].if_range,
        Some(format!("\"{}\"", support::sha256_hex(&image)))
    );
    assert_eq!(requests[1].status, 206);
    assert!(
        requests
            .iter()
            .all(|request| request.authorized_by == "sas")
    );

    // Restarted with the health check passing: the second boot of the trial commits it.
    std::fs::write(&release, b"").expect("release the health check");
    let agent = AgentProcess::spawn(&scenario, &public_key, &health_check, log);
    let reported = scenario.reported.until_status("completed").await;
    assert_eq!(reported["firmware"]["currentVersion"], "2.0.0");
    assert_eq!(reported["firmware"]["slot"], "b");
    assert_eq!(
        boot_fields(&scenario.boot_json()),
        (json!("b"), Value::Null, json!(0), json!(true)),
        "the new firmware is committed"
    );
    agent.terminate().await;
    let boot = scenario.boot_json();
    assert_eq!(boot["lastUpdate"]["result"], "completed");
    assert_eq!(boot["lastUpdate"]["reported"], true);
}
