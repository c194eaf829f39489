//! `fleethub serve --tls-cert --tls-key`: the operator's own server certificate, refused at start with a
//! clear error when the key is not the certificate's, and a broken replacement refused with an error log
//! while the hub keeps serving.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};

fn free_address() -> String {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// A self-signed server certificate for localhost and its key, as PEM.
fn pair() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (certificate.pem(), key.serialize_pem())
}

fn serve_command(data_dir: &Path, certificate: &Path, key: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleethub"));
    command.args([
        "serve",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--mqtt-listen",
        &free_address(),
        "--https-listen",
        &free_address(),
        "--tls-cert",
        certificate.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    command
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_at_start_naming_both_flags() {
    let directory = tempfile::tempdir().unwrap();
    let (certificate, _) = pair();
    let (_, other_key) = pair();
    let (certificate_path, key_path) = (
        directory.path().join("cert.pem"),
        directory.path().join("key.pem"),
    );
    std::fs::write(&certificate_path, certificate).unwrap();
    std::fs::write(&key_path, other_key).unwrap();
    let output = serve_command(&directory.path().join("data"), &certificate_path, &key_path)
        .output()
        .expect("run fleethub serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls-cert")
            && stderr.contains("--tls-key")
            && stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );

    let alone = Command::new(env!("CARGO_BIN_EXE_fleethub"))
        .args(["serve", "--tls-cert", certificate_path.to_str().unwrap()])
        .output()
        .expect("run fleethub serve");
    assert!(!alone.status.success());
    assert!(
        String::from_utf8_lossy(&alone.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
}

/// A `fleethub serve` process, killed and reaped when dropped (also when a test fails).
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_broken_replacement_is_refused_with_an_error_log_and_the_hub_keeps_serving() {
    let directory = tempfile::tempdir().unwrap();
    let (certificate, key) = pair();
    let (certificate_path, key_path) = (
        directory.path().join("cert.pem"),
        directory.path().join("key.pem"),
    );
    std::fs::write(&certificate_path, certificate).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let data_dir = directory.path().join("data");
    let mut served = Served(
        serve_command(&data_dir, &certificate_path, &key_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fleethub serve"),
    );
    let (lines_sender, lines) = mpsc::channel();
    let stderr = served.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if lines_sender.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for_line = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(error) => panic!("no log line with {needle:?}: {error}"),
            }
        }
    };
    wait_for_line("fleethub is serving");

    // Client commands keep working on the data directory (no CA of the hub's own there).
    let connection_string = Command::new(env!("CARGO_BIN_EXE_fleethub"))
        .args([
            "connection-string",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(connection_string.status.success());
    assert!(!data_dir.join("ca.pem").exists());

    std::fs::write(&certificate_path, "not a certificate").unwrap();
    let hangup = Command::new("kill")
        .args(["-HUP", &served.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let refused = wait_for_line("refused the changed server certificate");
    assert!(refused.contains("ERROR"), "{refused}");
    assert!(
        served.0.try_wait().unwrap().is_none(),
        "the hub goes on serving"
    );
}
