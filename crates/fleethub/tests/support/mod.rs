//! What the tests of the client commands share: a real `fleethub serve` process on free loopback ports,
//! running the real binary with exactly the environment a test chooses, and reading its output.
// Included by two test binaries (`client_commands.rs`, `job_config_commands.rs`); each uses part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BINARY: &str = env!("CARGO_BIN_EXE_fleethub");
pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fleethub ARGS` in `directory`, with none of the environment variables that choose a hub: each test says
/// exactly how the hub is found.
pub fn command_in(directory: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .current_dir(directory)
        .env_remove("FLEETHUB_CONNECTION_STRING")
        .env_remove("FLEETHUB_DATA_DIR")
        .env_remove("RUST_LOG");
    command
}

pub fn run_in(directory: &Path, args: &[&str]) -> Output {
    command_in(directory, args)
        .stdin(Stdio::null())
        .output()
        .expect("run fleethub")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The JSON a successful command printed.
pub fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "expected success, got {:?}: {}",
        output.status.code(),
        stderr(output)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("stdout is not json ({error}): {}", stdout(output)))
}

/// Asserts exit status 1, nothing on stdout, and every needle in the message; returns the message.
pub fn failure(output: &Output, needles: &[&str]) -> String {
    let message = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1: {message}{}",
        stdout(output)
    );
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {}",
        stdout(output)
    );
    assert!(message.starts_with("error: "), "{message}");
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    message
}

/// A `fleethub serve` process on free loopback ports with its own data directory; killed when dropped.
pub struct Hub {
    pub child: Option<Child>,
    /// The temporary directory: `data/` is the hub's, and commands run here unless a test says otherwise.
    pub directory: tempfile::TempDir,
    /// `directory/data` as text, for command lines.
    pub data_dir: String,
    pub mqtt_port: u16,
    pub https_port: u16,
}

impl Hub {
    pub fn start() -> Hub {
        let directory = tempfile::tempdir().unwrap();
        let mqtt_port = free_port();
        let https_port = free_port();
        let child = Command::new(BINARY)
            .args(["serve", "--data-dir"])
            .arg(directory.path().join("data"))
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .args(["--https-listen", &format!("127.0.0.1:{https_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fleethub serve");
        let data_dir = directory
            .path()
            .join("data")
            .to_str()
            .expect("temporary directories have UTF-8 paths here")
            .to_owned();
        let hub = Hub {
            child: Some(child),
            directory,
            data_dir,
            mqtt_port,
            https_port,
        };
        // Up when the HTTPS port accepts (the store is set up by then: nothing here opens it while the hub
        // creates it), and then a client command gets an answer through --data-dir discovery.
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", https_port)).is_err() {
            assert!(Instant::now() < deadline, "the hub did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            let output = hub.run(&["device", "list", "--output", "json"]);
            if output.status.success() && hub.recorded_port_is_current() {
                return hub;
            }
            assert!(
                Instant::now() < deadline,
                "the hub did not come up: {}",
                stderr(&output)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn recorded_port_is_current(&self) -> bool {
        stdout(&run_in(
            self.directory.path(),
            &["connection-string", "--data-dir", self.data_dir_text()],
        ))
        .contains(&format!(":{};", self.https_port))
    }

    pub fn data_dir_text(&self) -> &str {
        &self.data_dir
    }

    pub fn ca_path(&self) -> PathBuf {
        Path::new(&self.data_dir).join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path()).unwrap()
    }

    pub fn connection_string(&self, policy: &str) -> String {
        let output = run_in(
            self.directory.path(),
            &[
                "connection-string",
                "--data-dir",
                self.data_dir_text(),
                "--policy",
                policy,
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).trim().to_owned()
    }

    /// `fleethub ARGS --data-dir DATA` (discovery through the data directory).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--data-dir", self.data_dir_text()]);
        run_in(self.directory.path(), &all)
    }

    /// [`Hub::run`] without blocking the runtime: the command is built now, run when awaited.
    pub fn run_async(&self, args: &[&str]) -> impl std::future::Future<Output = Output> + use<> {
        let mut all = args.to_vec();
        all.extend(["--data-dir", self.data_dir_text()]);
        let mut command = tokio::process::Command::from(command_in(self.directory.path(), &all));
        command.stdin(Stdio::null());
        async move { command.output().await.expect("run fleethub") }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a child's stdout lines on a thread, so that a test can wait for the next one with a timeout.
pub struct Lines {
    pub receiver: mpsc::Receiver<String>,
}

impl Lines {
    pub fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { receiver }
    }

    pub fn next(&self) -> String {
        self.receiver
            .recv_timeout(WAIT)
            .expect("a line within the timeout")
    }
}

/// Kills and reaps a child when dropped, also when the test fails.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fleethub serve` on these addresses and data directory, with `extra` flags, its output discarded.
pub fn spawn_serve(
    data_dir: &Path,
    mqtt: std::net::SocketAddr,
    https: std::net::SocketAddr,
    extra: &[&str],
) -> Child {
    Command::new(BINARY)
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--mqtt-listen", &mqtt.to_string()])
        .args(["--https-listen", &https.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fleethub serve")
}

/// How long a (re)started hub may take to become healthy (a restart replays its logs).
pub const HEALTHY_WAIT: Duration = Duration::from_secs(60);

/// Waits until the hub of `data_dir` answers `GET /healthz` with 200 on `https` (polled: the process gives no
/// other signal), and returns its CA. Panics with `context` after [`HEALTHY_WAIT`].
pub async fn wait_until_healthy(
    data_dir: &Path,
    https: std::net::SocketAddr,
    context: &str,
) -> String {
    let deadline = Instant::now() + HEALTHY_WAIT;
    loop {
        if let Ok(ca) = std::fs::read_to_string(data_dir.join("ca.pem")) {
            let api = fleethub_testkit::ServiceApi::new(https, &ca, "unused", "AAAA");
            if let Ok(response) = api.client.get(format!("{}/healthz", api.base)).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return ca;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{context}: the hub did not become healthy within {HEALTHY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `iothubowner` connection string of the hub in `data_dir`.
pub fn owner_connection_string(data_dir: &Path) -> String {
    let output = Command::new(BINARY)
        .args(["connection-string", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run fleethub connection-string");
    assert!(output.status.success(), "{}", stderr(&output));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}
