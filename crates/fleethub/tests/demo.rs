//! `fleethub demo` on a fresh data directory: exits 0 after the firmware update went through its states.

use std::process::Command;

#[test]
fn the_demo_runs_the_reference_workflow_and_exits_zero() {
    let output = Command::new(env!("CARGO_BIN_EXE_fleethub"))
        .args(["demo", "--step-seconds", "0.8"])
        .output()
        .expect("run fleethub demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = [
        "Method response: status 200, payload {\"Response\":\"Firmware update started\"}",
        "Downloading firmware...",
        "Download complete, applying firmware...",
        "Firmware applied",
        "\"firmwareStatus\": \"completed\"",
        "\"lastFirmwareUpdate\"",
    ];
    let mut from = 0;
    for line in lines {
        let found = stdout[from..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} after position {from} in:\n{stdout}"));
        from += found + line.len();
    }
}
