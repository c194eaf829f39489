//! `fleethub demo` on a fresh data directory: the real agent takes a signed update and rolls back a bad one;
//! `--simulated` runs the original tutorial. Both exit 0.

use std::process::{Command, Output};

fn demo(arguments: &[&str]) -> String {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_fleethub"))
        .arg("demo")
        .args(arguments)
        .env("NO_COLOR", "1")
        .output()
        .expect("run fleethub demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Each line appears, in this order.
fn assert_in_order(stdout: &str, lines: &[&str]) {
    let mut from = 0;
    for line in lines {
        let found = stdout[from..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} after position {from} in:\n{stdout}"));
        from += found + line.len();
    }
}

#[test]
fn the_demo_updates_a_real_agent_and_rolls_back_a_bad_image() {
    let stdout = demo(&[]);
    assert_in_order(
        &stdout,
        &[
            "Uploaded signed firmware demo-board 2.0.0",
            "Uploaded signed firmware demo-board 2.1.0",
            "Registered device demo-device",
            "started firmware demo-board 2.0.0 on device demo-device: Firmware update started",
            "downloading",
            "100%",
            "applying",
            "completed     running 2.0.0",
            "Firmware 2.0.0 committed.",
            "started firmware demo-board 2.1.0",
            "applying",
            "rolledBack    running 2.0.0  healthCheckFailed",
            "The device still runs 2.0.0.",
            "\"firmwareStatus\": \"rolledBack\"",
            "\"currentVersion\": \"2.0.0\"",
            "\"targetVersion\": \"2.1.0\"",
        ],
    );
    assert!(!stdout.contains("$metadata"), "{stdout}");
}

#[test]
fn the_simulated_demo_runs_the_reference_workflow() {
    let stdout = demo(&["--simulated", "--step-seconds", "0.8"]);
    assert_in_order(
        &stdout,
        &[
            "Method response: status 200, payload {\"Response\":\"Firmware update started\"}",
            "Downloading firmware...",
            "Download complete, applying firmware...",
            "Firmware applied",
            "\"firmwareStatus\": \"completed\"",
            "\"lastFirmwareUpdate\"",
        ],
    );
}
