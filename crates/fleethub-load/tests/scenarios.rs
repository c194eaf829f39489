//! Every benchmark kind runs end to end at a small size against a real hub (the debug `fleethub` binary next
//! to the load tool) and writes well-formed results. Numbers are never asserted: only that each scenario
//! completes, measured something, and reported it in the JSON the runner collects.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn load_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleethub-load"))
}

/// Runs one scenario with `--json` and returns the report.
fn run(arguments: &[&str]) -> Value {
    let hub = load_tool().with_file_name("fleethub");
    assert!(
        hub.exists(),
        "no hub binary at {} (build it: cargo build -p fleethub)",
        hub.display()
    );
    let directory = tempfile::tempdir().expect("temporary directory");
    let json = directory.path().join("results.json");
    let output = Command::new(load_tool())
        .arg("--json")
        .arg(&json)
        .args(arguments)
        .output()
        .expect("run fleethub-load");
    assert!(
        output.status.success(),
        "fleethub-load {arguments:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("| scenario |"),
        "a Markdown table on stdout: {stdout}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("the JSON report"))
        .expect("valid JSON");
    let machine = &report["machine"];
    assert!(
        machine["cores"].as_u64().is_some_and(|cores| cores > 0),
        "{machine}"
    );
    assert!(
        machine["memory_gib"].as_f64().is_some_and(|gib| gib > 0.0),
        "{machine}"
    );
    let results = report["results"].as_array().expect("results");
    assert!(!results.is_empty(), "{report}");
    // A size this machine cannot hold is reported as skipped, with the reason, and measures nothing.
    for result in results.iter().filter(|result| result["skipped"].is_null()) {
        assert!(
            result["scenario"]
                .as_str()
                .is_some_and(|name| !name.is_empty()),
            "{result}"
        );
        assert!(
            result["operations"].as_u64().is_some_and(|count| count > 0),
            "nothing measured: {result}"
        );
        assert!(
            result["seconds"]
                .as_f64()
                .is_some_and(|seconds| seconds > 0.0),
            "{result}"
        );
        assert!(
            result["per_second"].as_f64().is_some_and(|rate| rate > 0.0),
            "{result}"
        );
        // QoS 0 has no acknowledgements: its "errors" are messages sent but not yet read when the reader
        // stopped waiting (a debug-build consumer falls behind a full-speed publisher), not failures.
        if !result["scenario"]
            .as_str()
            .is_some_and(|name| name.contains("QoS 0"))
        {
            assert_eq!(result["errors"], Value::from(0), "{result}");
        }
    }
    report
}

#[test]
fn methods_patches_and_idle_connections() {
    let report = run(&[
        "methods",
        "--devices",
        "20",
        "--in-flight",
        "1,10",
        "--seconds",
        "1",
    ]);
    assert_eq!(report["results"].as_array().map(Vec::len), Some(2));
    for result in report["results"].as_array().expect("results") {
        assert!(result["p99_ms"].as_f64().is_some(), "latencies: {result}");
    }
    run(&["patches", "--devices", "50", "--seconds", "1"]);
    let idle = run(&["idle", "--devices", "50", "--settle-seconds", "1"]);
    assert!(
        idle["results"][0]["bytes_per_connection"]
            .as_f64()
            .is_some(),
        "{idle}"
    );
}

#[test]
fn telemetry_into_the_durable_log() {
    let report = run(&[
        "telemetry",
        "--devices",
        "50",
        "--in-flight",
        "2",
        "--seconds",
        "1",
    ]);
    assert!(
        report["results"][0]["p99_ms"].as_f64().is_some(),
        "{report}"
    );
}

#[test]
fn queries_over_a_small_fleet() {
    // 1000 twins: every one of the 1000 buildings the selective filter asks for has a twin.
    run(&["query", "--twins", "1000", "--seconds", "1"]);
}

#[test]
fn a_rollout_to_50_devices() {
    let report = run(&[
        "rollout",
        "--devices",
        "50",
        "--image-kib",
        "64",
        "--max-concurrency",
        "10",
    ]);
    let end = &report["results"][0];
    assert_eq!(end["operations"], Value::from(50), "{end}");
    assert!(end["peak_hub_memory_bytes"].as_u64().is_some(), "{end}");
    assert!(
        report["results"][2]["bytes_per_second"].as_f64().is_some(),
        "{report}"
    );
}

/// Needs Mosquitto (`apt-get install mosquitto`; scripts/test installs it).
#[test]
fn telemetry_side_by_side_with_mosquitto() {
    let report = run(&[
        "telemetry-vs-mosquitto",
        "--devices",
        "50",
        "--seconds",
        "1",
    ]);
    let results = report["results"].as_array().expect("results");
    assert_eq!(
        results.len(),
        3,
        "fleethub TLS, Mosquitto TLS, Mosquitto plain: {report}"
    );
    for result in results {
        assert_eq!(
            result["delivered"].as_u64(),
            result["operations"].as_u64(),
            "every acknowledged message reached the reader: {result}"
        );
    }
}

/// The runner behind `bench/run.sh`: every kind in one command, at a small size, with the machine's facts
/// in the JSON and a Markdown table in a file.
#[test]
fn the_runner_runs_every_kind_and_writes_json_and_markdown() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let markdown = directory.path().join("results.md");
    let markdown_arg = markdown.to_str().expect("utf-8 path").to_owned();
    // A size the open-file limit cannot hold (the tool inherits ours) is reported as skipped, not run.
    let limit = std::fs::read_to_string("/proc/self/limits")
        .expect("/proc/self/limits")
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| {
            line["Max open files".len()..]
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .expect("an open-file limit");
    let idle_sizes = match limit.parse::<u64>() {
        Ok(limit) => format!("50,{limit}"),
        Err(_) => "50".to_owned(),
    };
    let report = run(&[
        "--markdown",
        &markdown_arg,
        "all",
        "--seconds",
        "1",
        "--method-devices",
        "10",
        "--method-in-flight",
        "1,10",
        "--patch-devices",
        "20",
        "--idle-devices",
        &idle_sizes,
        "--telemetry-devices",
        "20",
        "--query-twins",
        "1000",
        "--rollout-devices",
        "20",
        "--rollout-concurrency",
        "10",
    ]);
    let scenarios: Vec<&str> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|result| result["scenario"].as_str())
        .collect();
    for kind in [
        "method",
        "patches",
        "idle",
        "telemetry QoS 1: fleethub",
        "telemetry QoS 1: Mosquitto over TLS",
        "telemetry QoS 0: fleethub",
        "telemetry QoS 0: Mosquitto over plain TCP",
        "query",
        "rollout",
    ] {
        assert!(
            scenarios.iter().any(|scenario| scenario.contains(kind)),
            "no {kind:?} in {scenarios:?}"
        );
    }
    let idle: Vec<&serde_json::Value> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|result| result["scenario"] == "idle connections")
        .collect();
    assert!(
        idle[0]["bytes_per_connection"]
            .as_f64()
            .is_some_and(|bytes| bytes > 0.0),
        "{}",
        idle[0]
    );
    if idle_sizes.contains(',') {
        assert!(
            idle[1]["skipped"]
                .as_str()
                .is_some_and(|reason| reason.contains("open files") && reason.contains(&limit)),
            "{}",
            idle[1]
        );
    }
    let machine = &report["machine"];
    assert!(
        machine["hub"]
            .as_str()
            .is_some_and(|hub| hub.contains("fleethub")),
        "{machine}"
    );
    assert!(
        machine["mosquitto"]
            .as_str()
            .is_some_and(|text| text.contains("mosquitto")),
        "{machine}"
    );
    let table = std::fs::read_to_string(&markdown).expect("the Markdown file");
    assert!(table.starts_with("machine: "), "{table}");
    assert_eq!(
        table
            .lines()
            .filter(|line| line.starts_with("| ")
                && !line.starts_with("| scenario")
                && !line.starts_with("| ---"))
            .count(),
        scenarios.len(),
        "a row per measurement: {table}"
    );
}
