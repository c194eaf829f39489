//! The `fleethub` binary's exact interface: `serve` flags and their errors, `connection-string`.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fleethub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleethub"))
        .args(args)
        .output()
        .expect("run fleethub")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn free_address() -> String {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// A `fleethub serve` process, killed and reaped when dropped (also when a test fails).
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and waits until it has written its connection metadata (the hub is up).
fn serve(data_dir: &std::path::Path, mqtt: &str, https: &str) -> Served {
    let child = Command::new(env!("CARGO_BIN_EXE_fleethub"))
        .args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--mqtt-listen",
            mqtt,
            "--https-listen",
            https,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let child = Served(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let https_port = https.rsplit(':').next().unwrap().to_owned();
    loop {
        let output = fleethub(&[
            "connection-string",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]);
        if output.status.success()
            && String::from_utf8_lossy(&output.stdout).contains(&format!(":{https_port};"))
        {
            return child;
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_port_that_cannot_be_bound_names_the_flag_to_change() {
    let directory = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap().to_string();
    let data_dir = directory.path().join("data");
    let data_dir = data_dir.to_str().unwrap();

    let output = fleethub(&[
        "serve",
        "--data-dir",
        data_dir,
        "--mqtt-listen",
        &taken_address,
        "--https-listen",
        &free_address(),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&format!("cannot listen on {taken_address} for MQTT")),
        "{message}"
    );
    assert!(message.contains("--mqtt-listen"), "{message}");

    let output = fleethub(&[
        "serve",
        "--data-dir",
        data_dir,
        "--mqtt-listen",
        &free_address(),
        "--https-listen",
        &taken_address,
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("for HTTPS") && message.contains("--https-listen"),
        "{message}"
    );
}

#[test]
fn connection_string_prints_each_policy_and_explains_mistakes() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let data_dir_text = data_dir.to_str().unwrap();

    let before = fleethub(&["connection-string", "--data-dir", data_dir_text]);
    assert!(!before.status.success());
    assert!(
        stderr(&before).contains("fleethub serve --data-dir"),
        "{}",
        stderr(&before)
    );

    let https = free_address();
    let hub = serve(&data_dir, &free_address(), &https);
    let port = https.rsplit(':').next().unwrap();
    for policy in [
        "iothubowner",
        "service",
        "registryRead",
        "registryReadWrite",
        "device",
    ] {
        let output = fleethub(&[
            "connection-string",
            "--data-dir",
            data_dir_text,
            "--policy",
            policy,
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = String::from_utf8(output.stdout).unwrap();
        let prefix =
            format!("HostName=localhost:{port};SharedAccessKeyName={policy};SharedAccessKey=");
        assert!(text.starts_with(&prefix), "{text}");
        let key = &text.trim()[prefix.len()..];
        assert!(
            key.len() == 44 && key.ends_with('='),
            "a base64 32-byte key: {key:?}"
        );
    }
    let unknown = fleethub(&[
        "connection-string",
        "--data-dir",
        data_dir_text,
        "--policy",
        "root",
    ]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("iothubowner"),
        "lists the policies that exist: {}",
        stderr(&unknown)
    );

    // A second hub on the same directory is refused instead of corrupting it.
    let second = fleethub(&[
        "serve",
        "--data-dir",
        data_dir_text,
        "--mqtt-listen",
        &free_address(),
        "--https-listen",
        &free_address(),
    ]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("in use by another fleethub process"),
        "{}",
        stderr(&second)
    );

    drop(hub);
}

#[test]
fn serve_help_documents_the_exact_flags() {
    let output = fleethub(&["serve", "--help"]);
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--data-dir",
        "--hostname",
        "--mqtt-listen",
        "--https-listen",
        "./fleethub-data",
        "0.0.0.0:8883",
        "0.0.0.0:443",
    ] {
        assert!(help.contains(flag), "serve --help mentions {flag}:\n{help}");
    }
}
