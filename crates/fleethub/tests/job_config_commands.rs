//! `fleethub job` and `fleethub config` of the real binary against a real `fleethub serve` process: a method
//! job over connected devices watched to its end (progress lines, then the final job), a twin job, cancel,
//! configurations and their effect on a twin, and the exit codes and messages of every way they fail.

mod support;

use std::process::{Output, Stdio};

use fleethub_device::{DeviceClient, DeviceClientOptions, MethodRequest, MethodResponse};
use serde_json::{Value, json};
use support::*;
use time::format_description::well_known::Rfc3339;

/// An RFC 3339 time `seconds` from now.
fn in_seconds(seconds: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
        .format(&Rfc3339)
        .expect("formats")
}

/// The JSON lines a successful command printed.
fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "expected success, got {:?}: {}",
        output.status.code(),
        stderr(output)
    );
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect()
}

/// Asserts a usage error (exit 2) for each argument list.
fn usage_errors(hub: &Hub, cases: &[&[&str]]) {
    for args in cases {
        let output = hub.run(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}{}",
            stderr(&output),
            stdout(&output)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_job_over_connected_devices_is_watched_to_its_end() {
    let hub = tokio::task::spawn_blocking(Hub::start).await.unwrap();
    let directory = hub.directory.path().to_owned();
    let data_dir = hub.data_dir_text().to_owned();
    // The binary runs as a child process while the devices answer on this runtime.
    let cli = move |args: Vec<String>| {
        let directory = directory.clone();
        let data_dir = data_dir.clone();
        async move {
            let mut all = args;
            all.extend(["--data-dir".to_owned(), data_dir]);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            tokio::process::Command::from(command_in(&directory, &all))
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run fleethub")
        }
    };
    let args = |text: &[&str]| {
        text.iter()
            .map(|part| (*part).to_owned())
            .collect::<Vec<_>>()
    };

    let mut devices = Vec::new();
    for id in ["d1", "d2", "d3"] {
        let created = cli(args(&["device", "create", id])).await;
        assert!(created.status.success(), "{}", stderr(&created));
        let connection_string = cli(args(&["device", "connection-string", id])).await;
        let device = DeviceClient::connect(
            stdout(&connection_string).trim(),
            DeviceClientOptions::default()
                .with_ca_pem(hub.ca_pem())
                .with_port(hub.mqtt_port),
        )
        .await
        .expect("connects");
        let name = id.to_owned();
        device
            .on_method(move |request: MethodRequest| {
                let name = name.clone();
                async move {
                    MethodResponse::ok(json!({"device": name, "payload": request.payload}))
                }
            })
            .await
            .expect("subscribe to methods");
        devices.push(device);
    }

    // Starting a little later, so the watch (opened once the job is created) sees the job run.
    let start = in_seconds(3);
    let watched = cli(args(&[
        "job",
        "create",
        "reboot-all",
        "--method",
        "reboot",
        "--payload",
        r#"{"delay": 0}"#,
        "--timeout",
        "10",
        "--query",
        "deviceId IN ['d1', 'd2', 'd3']",
        "--start-time",
        &start,
        "--watch",
        "--output",
        "json",
    ]))
    .await;
    let lines = json_lines(&watched);
    let (last, progress) = lines.split_last().expect("lines");
    assert_eq!(last["jobId"], json!("reboot-all"));
    assert_eq!(last["type"], json!("scheduleDeviceMethod"));
    assert_eq!(last["status"], json!("completed"));
    assert_eq!(
        last["deviceJobStatistics"],
        json!({"deviceCount": 3, "failedCount": 0, "succeededCount": 3, "runningCount": 0, "pendingCount": 0})
    );
    assert!(last["endTime"].is_string(), "{last}");
    assert_eq!(
        progress[0]["sequence"],
        json!(null),
        "the job as read first"
    );
    assert!(
        matches!(progress[0]["status"].as_str(), Some("queued" | "scheduled")),
        "{}",
        progress[0]
    );
    assert!(
        progress[1..].iter().all(|line| line["sequence"].is_u64()),
        "{progress:#?}"
    );
    let answered: Vec<&Value> = progress
        .iter()
        .filter(|line| line["device"]["status"] == json!("completed"))
        .map(|line| &line["device"])
        .collect();
    assert_eq!(answered.len(), 3, "{progress:#?}");
    for device in &answered {
        assert_eq!(device["jobId"], json!("reboot-all"));
        assert_eq!(
            device["outcome"]["deviceMethodResponse"]["payload"]["payload"],
            json!({"delay": 0})
        );
    }
    let final_progress = progress.last().expect("progress");
    assert_eq!(final_progress["status"], json!("completed"));
    assert_eq!(
        final_progress["deviceJobStatistics"]["succeededCount"],
        json!(3)
    );

    // Without a terminal, tables print one line per change, then the job.
    let table = cli(args(&[
        "job",
        "create",
        "reboot-again",
        "--method",
        "reboot",
        "--query",
        "deviceId = 'd2'",
        "--start-time",
        &in_seconds(2),
        "--watch",
    ]))
    .await;
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let (changes, job) = text
        .split_once("\n\n")
        .expect("a blank line before the job");
    assert!(
        changes
            .lines()
            .any(|line| line.contains("running") && line.contains("d2: running")),
        "{text}"
    );
    assert!(
        changes
            .lines()
            .last()
            .is_some_and(|line| line.contains("completed")
                && line.contains("1/1 finished: 1 succeeded, 0 failed")),
        "{text}"
    );
    assert!(job.starts_with("job id    reboot-again\n"), "{job}");
    assert!(job.contains("status    completed\n"), "{job}");
    assert!(
        job.contains("method    reboot (payload null, timeout 30 s)\n"),
        "{job}"
    );

    // show, list, and the same through JSON.
    let shown = json_of(&cli(args(&["job", "show", "reboot-all", "--output", "json"])).await);
    assert_eq!(shown["status"], json!("completed"));
    assert_eq!(shown["cloudToDeviceMethod"]["methodName"], json!("reboot"));
    let listed = json_of(&cli(args(&["job", "list", "--output", "json"])).await);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|job| job["jobId"].as_str().expect("an id"))
        .collect();
    assert_eq!(ids, ["reboot-again", "reboot-all"]);
    let twins_only = cli(args(&["job", "list", "--type", "twin"])).await;
    assert_eq!(
        stdout(&twins_only),
        "no jobs: create one with `fleethub job create JOB_ID --method NAME --query CONDITION`\n"
    );
    let table = stdout(&cli(args(&["job", "list", "--status", "completed"])).await);
    assert!(table.starts_with("JOB ID"), "{table}");
    assert!(
        table.lines().any(|line| line.starts_with("reboot-all")
            && line.contains("method reboot")
            && line.contains("3/3")),
        "{table}"
    );
    // Watching a job that is over prints it at once.
    let over = json_lines(
        &cli(args(&[
            "job",
            "show",
            "reboot-all",
            "--watch",
            "--output",
            "json",
        ]))
        .await,
    );
    assert_eq!(over.len(), 2, "the job as read, then the job: {over:#?}");
    assert_eq!(over[1]["status"], json!("completed"));

    for device in devices {
        device.disconnect().await.expect("disconnect");
    }
    drop(hub);
}

#[test]
fn twin_jobs_cancel_and_failing_job_commands_say_what_to_do() {
    let hub = Hub::start();
    for id in ["t1", "t2"] {
        assert!(hub.run(&["device", "create", id]).status.success());
    }
    let lines = json_lines(&hub.run(&[
        "job",
        "create",
        "tag-canary",
        "--twin-patch",
        r#"{"tags": {"ring": "canary"}, "properties": {"desired": {"interval": 5}}}"#,
        "--query",
        "deviceId IN ['t1', 't2']",
        "--max-execution-time",
        "60",
        "--watch",
        "--output",
        "json",
    ]));
    let last = lines.last().expect("lines");
    assert_eq!(last["type"], json!("scheduleUpdateTwin"));
    assert_eq!(last["status"], json!("completed"));
    assert_eq!(last["maxExecutionTimeInSeconds"], json!(60));
    assert_eq!(last["deviceJobStatistics"]["succeededCount"], json!(2));
    let twin = json_of(&hub.run(&["twin", "show", "t2", "--output", "json"]));
    assert_eq!(twin["tags"], json!({"ring": "canary"}));
    assert_eq!(twin["properties"]["desired"]["interval"], json!(5));

    // t1 is offline: a method job waits for it until cancelled.
    let created = json_of(&hub.run(&[
        "job",
        "create",
        "waits",
        "--method",
        "ping",
        "--query",
        "deviceId = 't1'",
        "--output",
        "json",
    ]));
    assert_eq!(created["status"], json!("queued"));
    let cancelled = json_of(&hub.run(&["job", "cancel", "waits", "--output", "json"]));
    assert_eq!(cancelled["status"], json!("cancelled"));
    let over = json_lines(&hub.run(&["job", "show", "waits", "--watch", "--output", "json"]));
    let job = over.last().expect("lines");
    assert_eq!(job["status"], json!("cancelled"));
    assert!(job["endTime"].is_string(), "{job}");
    let table = stdout(&hub.run(&["job", "show", "waits"]));
    assert!(table.contains("status    cancelled\n"), "{table}");
    let cancelled_list =
        json_of(&hub.run(&["job", "list", "--status", "cancelled", "--output", "json"]));
    assert_eq!(cancelled_list.as_array().map(Vec::len), Some(1));

    failure(
        &hub.run(&["job", "show", "nope"]),
        &["job nope does not exist (404002 JobNotFound): see the jobs with `fleethub job list`"],
    );
    failure(
        &hub.run(&["job", "show", "nope", "--watch"]),
        &["job nope does not exist (404002 JobNotFound)"],
    );
    failure(
        &hub.run(&["job", "cancel", "nope"]),
        &["job nope does not exist (404002 JobNotFound)"],
    );
    failure(
        &hub.run(&[
            "job",
            "create",
            "waits",
            "--method",
            "ping",
            "--query",
            "deviceId = 't1'",
        ]),
        &[
            "job waits already exists (409104 JobAlreadyExists): see it with `fleethub job show waits`, or give the new job another id",
        ],
    );
    failure(
        &hub.run(&[
            "job",
            "create",
            "bad",
            "--method",
            "ping",
            "--query",
            "deviceId =",
        ]),
        &[
            "the hub rejected the request to create job bad (400004 ArgumentInvalid",
            "queryCondition",
        ],
    );
    failure(
        &hub.run(&[
            "job",
            "create",
            "reported",
            "--twin-patch",
            r#"{"properties": {"reported": {"a": 1}}}"#,
            "--query",
            "deviceId = 't1'",
        ]),
        &["--twin-patch may only change \"properties\".\"desired\""],
    );
    failure(
        &hub.run(&[
            "job",
            "create",
            "bare",
            "--twin-patch",
            r#"{"interval": 5}"#,
            "--query",
            "deviceId = 't1'",
        ]),
        &["--twin-patch has \"interval\": a job patches \"tags\" and \"properties\".\"desired\""],
    );
    failure(
        &hub.run(&[
            "job",
            "create",
            "payload",
            "--method",
            "ping",
            "--payload",
            "{oops",
            "--query",
            "deviceId = 't1'",
        ]),
        &["--payload is not valid JSON"],
    );
    let read_only = hub.connection_string("registryRead");
    let ca = hub.ca_path().to_str().expect("utf-8 path").to_owned();
    failure(
        &run_in(
            hub.directory.path(),
            &[
                "job",
                "create",
                "denied",
                "--method",
                "ping",
                "--query",
                "deviceId = 't1'",
                "--hub",
                &read_only,
                "--ca",
                &ca,
            ],
        ),
        &[
            "policy registryRead may not create job denied",
            "ServiceConnect or RegistryWrite (service, registryReadWrite or iothubowner)",
        ],
    );
    let device_policy = hub.connection_string("device");
    failure(
        &run_in(
            hub.directory.path(),
            &[
                "job",
                "show",
                "waits",
                "--watch",
                "--hub",
                &device_policy,
                "--ca",
                &ca,
            ],
        ),
        &[
            "policy device may not watch job waits",
            "ServiceConnect or RegistryRead",
        ],
    );
    usage_errors(
        &hub,
        &[
            &["job", "create", "x", "--method", "m"],
            &["job", "create", "x", "--query", "deviceId = 't1'"],
            &[
                "job",
                "create",
                "x",
                "--method",
                "m",
                "--twin-patch",
                "{}",
                "--query",
                "a = 1",
            ],
            &[
                "job",
                "create",
                "x",
                "--twin-patch",
                "{}",
                "--payload",
                "1",
                "--query",
                "a = 1",
            ],
            &[
                "job",
                "create",
                "x",
                "--method",
                "m",
                "--timeout",
                "1",
                "--query",
                "a = 1",
            ],
            &[
                "job", "create", "x", "--method", "bad name", "--query", "a = 1",
            ],
            &[
                "job",
                "create",
                "x",
                "--method",
                "m",
                "--query",
                "a = 1",
                "--start-time",
                "soon",
            ],
            &[
                "job",
                "create",
                "x",
                "--method",
                "m",
                "--query",
                "a = 1",
                "--max-execution-time",
                "0",
            ],
            &[
                "job", "create", "bad id!", "--method", "m", "--query", "a = 1",
            ],
            &["job", "list", "--type", "reboot"],
            &["job", "list", "--status", "canceled"],
            &["job", "show"],
        ],
    );
}

#[test]
fn configurations_are_managed_and_reach_the_twins_they_target() {
    let hub = Hub::start();
    assert!(hub.run(&["device", "create", "lab-1"]).status.success());
    assert!(
        hub.run(&["twin", "patch", "lab-1", "--tags", r#"{"site": "lab"}"#])
            .status
            .success()
    );
    let empty = hub.run(&["config", "list"]);
    assert_eq!(
        stdout(&empty),
        "no configurations: create one with `fleethub config create ID --target CONDITION --priority N --content JSON`\n"
    );
    // The twin's changes from the start, to see the configuration arrive and leave.
    let mut watch = Reaped(
        command_in(
            hub.directory.path(),
            &[
                "twin",
                "watch",
                "lab-1",
                "--after",
                "0",
                "--output",
                "json",
                "--data-dir",
                hub.data_dir_text(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let changes = Lines::of(&mut watch.0);

    let created = json_of(&hub.run(&[
        "config",
        "create",
        "fw-2",
        "--target",
        "tags.site = 'lab'",
        "--priority",
        "10",
        "--content",
        r#"{"properties.desired.firmware": {"version": "2.0"}}"#,
        "--label",
        "team=ops",
        "--metric",
        "on-2=SELECT deviceId FROM devices WHERE properties.desired.firmware.version = '2.0'",
        "--output",
        "json",
    ]));
    assert_eq!(created["id"], json!("fw-2"));
    assert_eq!(created["priority"], json!(10));
    assert_eq!(created["labels"], json!({"team": "ops"}));
    assert_eq!(
        created["content"],
        json!({"deviceContent": {"properties.desired.firmware": {"version": "2.0"}}})
    );
    let etag = created["etag"].as_str().expect("an etag").to_owned();
    let applied = loop {
        let change: Value = serde_json::from_str(&changes.next()).unwrap();
        if change["body"]["properties"]["desired"]
            .get("firmware")
            .is_some()
        {
            break change;
        }
    };
    assert_eq!(
        applied["body"]["properties"]["desired"]["firmware"],
        json!({"version": "2.0"})
    );
    let twin = json_of(&hub.run(&["twin", "show", "lab-1", "--output", "json"]));
    assert_eq!(
        twin["configurations"],
        json!({"fw-2": {"status": "applied"}})
    );
    let twin_table = stdout(&hub.run(&["twin", "show", "lab-1"]));
    assert!(
        twin_table.contains("configurations    fw-2 (applied)\n"),
        "{twin_table}"
    );

    let shown = stdout(&hub.run(&["config", "show", "fw-2"]));
    for line in [
        "id              fw-2\n",
        "priority        10\n",
        "target          tags.site = 'lab'\n",
        "labels          team=ops\n",
        "device content  properties.desired.firmware = {\"version\":\"2.0\"}\n",
    ] {
        assert!(shown.contains(line), "{line:?} in {shown}");
    }
    assert!(
        shown.contains(&format!("etag            {etag}\n")),
        "{shown}"
    );
    let listed = json_of(&hub.run(&["config", "list", "--top", "5", "--output", "json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let table = stdout(&hub.run(&["config", "list"]));
    assert!(table.starts_with("ID    PRIORITY"), "{table}");
    assert!(table.contains("fw-2  10"), "{table}");

    // Update: changes what it is told, keeps the rest; a stale etag is refused.
    let updated = json_of(&hub.run(&[
        "config",
        "update",
        "fw-2",
        "--priority",
        "20",
        "--label",
        "ring=1",
        "--output",
        "json",
    ]));
    assert_eq!(updated["priority"], json!(20));
    assert_eq!(updated["labels"], json!({"team": "ops", "ring": "1"}));
    assert_eq!(updated["targetCondition"], json!("tags.site = 'lab'"));
    assert_eq!(
        updated["metrics"]["queries"]
            .as_object()
            .map(|queries| queries.len()),
        Some(1)
    );
    let removed = json_of(&hub.run(&[
        "config", "update", "fw-2", "--label", "team=", "--output", "json",
    ]));
    assert_eq!(removed["labels"], json!({"ring": "1"}));
    failure(
        &hub.run(&[
            "config",
            "update",
            "fw-2",
            "--priority",
            "5",
            "--etag",
            &etag,
        ]),
        &[&format!(
            "the etag {etag} is not the current one: configuration fw-2 changed since that etag was read (412001 PreconditionFailed): read the current etag with `fleethub config show fw-2`, or leave out --etag to update regardless"
        )],
    );
    failure(
        &hub.run(&["config", "delete", "fw-2", "--etag", &etag]),
        &["leave out --etag to delete regardless"],
    );

    // Every way creating one goes wrong.
    failure(
        &hub.run(&[
            "config",
            "create",
            "fw-2",
            "--target",
            "*",
            "--priority",
            "1",
            "--content",
            r#"{"properties.desired.x": 1}"#,
        ]),
        &[
            "configuration fw-2 already exists (409401 ConfigurationAlreadyExists): see it with `fleethub config show fw-2`, change it with `fleethub config update fw-2`, or delete it first with `fleethub config delete fw-2`",
        ],
    );
    failure(
        &hub.run(&[
            "config",
            "create",
            "bad",
            "--target",
            "tags.site =",
            "--priority",
            "1",
            "--content",
            r#"{"properties.desired.x": 1}"#,
        ]),
        &[
            "the hub rejected the target condition (400401 InvalidConfigurationTargetCondition",
            "fix --target",
        ],
    );
    failure(
        &hub.run(&[
            "config",
            "create",
            "bad",
            "--target",
            "*",
            "--priority",
            "1",
            "--content",
            r#"{"tags.x": 1}"#,
        ]),
        &[
            "the hub rejected the content (400402 InvalidConfigurationContent",
            "--content maps twin paths under properties.desired",
        ],
    );
    failure(
        &hub.run(&[
            "config",
            "create",
            "bad",
            "--target",
            "*",
            "--priority",
            "1",
            "--content",
            r#"{"properties.desired.x": 1}"#,
            "--metric",
            "m=SELECT FROM",
        ]),
        &["the hub rejected a metric (400404 InvalidConfigurationCustomMetricsQuery"],
    );
    failure(
        &hub.run(&[
            "config",
            "create",
            "bad",
            "--target",
            "*",
            "--priority",
            "1",
            "--content",
            "[1]",
        ]),
        &["--content must be a JSON object, not an array"],
    );
    failure(
        &hub.run(&["config", "show", "nope"]),
        &[
            "configuration nope does not exist (404301 ConfigurationNotFound): see the configurations with `fleethub config list`",
        ],
    );
    failure(
        &hub.run(&["config", "update", "nope", "--priority", "1"]),
        &["configuration nope does not exist (404301 ConfigurationNotFound)"],
    );
    let read_only = hub.connection_string("registryRead");
    let ca = hub.ca_path().to_str().expect("utf-8 path").to_owned();
    failure(
        &run_in(
            hub.directory.path(),
            &["config", "delete", "fw-2", "--hub", &read_only, "--ca", &ca],
        ),
        &[
            "policy registryRead may not delete configuration fw-2",
            "RegistryWrite (registryReadWrite or iothubowner)",
        ],
    );
    usage_errors(
        &hub,
        &[
            &["config", "update", "fw-2"],
            &["config", "update", "fw-2", "--etag", "x"],
            &["config", "create", "x", "--target", "*", "--content", "{}"],
            &[
                "config",
                "create",
                "x",
                "--target",
                "*",
                "--priority",
                "-1",
                "--content",
                "{}",
            ],
            &[
                "config",
                "create",
                "x",
                "--target",
                "*",
                "--priority",
                "1",
                "--content",
                "{}",
                "--label",
                "novalue",
            ],
        ],
    );

    // Deleting it takes its settings off the twin.
    let deleted = hub.run(&["config", "delete", "fw-2"]);
    assert_eq!(stdout(&deleted), "deleted configuration fw-2\n");
    let removed = loop {
        let change: Value = serde_json::from_str(&changes.next()).unwrap();
        if change["body"]["properties"]["desired"]
            .get("firmware")
            .is_some()
        {
            break change;
        }
    };
    assert_eq!(
        removed["body"]["properties"]["desired"]["firmware"],
        json!(null)
    );
    assert!(hub.run(&["config", "list"]).status.success());
    assert_eq!(
        json_of(&hub.run(&["config", "list", "--output", "json"])),
        json!([])
    );
}
