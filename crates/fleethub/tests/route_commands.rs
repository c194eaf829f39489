//! `fleethub route` of the real binary against a real `fleethub serve` process: building a configuration
//! command by command (endpoints, routes, enrichments, the fallback route), tables and JSON, route tests, a
//! device's telemetry reaching a file sink through it, export and import, and the messages of every way a
//! change is refused.

mod support;

use std::process::Output;
use std::sync::Arc;

use fleethub_device::{DeviceClient, DeviceClientOptions, Message};
use serde_json::{Value, json};
use support::*;

/// `fleethub ARGS --data-dir DATA` off the async runtime.
async fn cli(hub: &Arc<Hub>, args: &[&str]) -> Output {
    let hub = Arc::clone(hub);
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hub.run(&args)
    })
    .await
    .expect("the command ran")
}

fn success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "expected success, got {:?}: {}",
        output.status.code(),
        stderr(output)
    );
    stdout(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_built_command_by_command_routes_telemetry_to_a_file() {
    let hub = Arc::new(tokio::task::spawn_blocking(Hub::start).await.unwrap());

    // A fresh hub: the hub's events each have a route to `events`, device messages go there too.
    let listed = success(&cli(&hub, &["route", "list"]).await);
    assert_eq!(
        listed,
        "NAME                            SOURCE                       ENABLED  ENDPOINTS  CONDITION\n\
         twin-change-events              TwinChangeEvents             yes      events     true\n\
         device-lifecycle-events         DeviceLifecycleEvents        yes      events     true\n\
         device-connection-state-events  DeviceConnectionStateEvents  yes      events     true\n\
         unmatched device messages go to events (no fallback route)\n"
    );

    let added = success(
        &cli(
            &hub,
            &[
                "route",
                "endpoint",
                "add-file",
                "archive",
                "--path",
                "hot/telemetry.jsonl",
            ],
        )
        .await,
    );
    assert!(
        added.starts_with("added file sink archive (DATA_DIR/routes/archive/hot/telemetry.jsonl)"),
        "{added}"
    );
    let added = success(
        &cli(
            &hub,
            &[
                "route",
                "add",
                "hot",
                "--condition",
                "$body.temperature > 40",
                "--endpoint",
                "archive",
            ],
        )
        .await,
    );
    assert_eq!(
        added,
        "added route hot: DeviceMessages where $body.temperature > 40 -> archive\n"
    );
    success(
        &cli(
            &hub,
            &[
                "route",
                "enrichment",
                "add",
                "site",
                "--value",
                "$twin.tags.site",
                "--endpoint",
                "archive",
            ],
        )
        .await,
    );
    let fallback = success(&cli(&hub, &["route", "fallback", "disable"]).await);
    assert_eq!(
        fallback,
        "unmatched device messages are dropped (the fallback route is disabled)\n"
    );

    let shown = success(&cli(&hub, &["route", "show", "HOT"]).await);
    assert!(
        shown.contains("condition    $body.temperature > 40\n"),
        "{shown}"
    );
    let json = json_of(&cli(&hub, &["route", "show", "hot", "--output", "json"]).await);
    assert_eq!(
        json,
        json!({"name": "hot", "source": "DeviceMessages", "condition": "$body.temperature > 40", "endpointNames": ["archive"], "isEnabled": true})
    );

    // Route tests, on the hub's evaluator.
    let tested = success(
        &cli(
            &hub,
            &[
                "route",
                "test",
                "--condition",
                "$body.temperature > 40 AND level = 'x'",
                "--body",
                r#"{"temperature": 45}"#,
                "--property",
                "level=x",
            ],
        )
        .await,
    );
    assert_eq!(tested, "true: the message takes the route\n");
    let tested = success(&cli(&hub, &["route", "test", "--condition", "missing = 1"]).await);
    assert!(tested.starts_with("undefined"), "{tested}");
    let which = success(&cli(&hub, &["route", "test", "--body", r#"{"temperature": 50}"#]).await);
    assert!(
        which
            .lines()
            .nth(1)
            .is_some_and(|line| line.starts_with("hot ")),
        "{which}"
    );
    let broken = cli(&hub, &["route", "test", "--condition", "level = "]).await;
    failure(
        &broken,
        &[
            "the condition does not compile",
            "syntax error at position 8",
        ],
    );

    // A device's telemetry: the hot one reaches the file with the enrichment, the other is dropped.
    success(&cli(&hub, &["device", "create", "sensor-1"]).await);
    success(
        &cli(
            &hub,
            &["twin", "patch", "sensor-1", r#"{"tags": {"site": "lab"}}"#],
        )
        .await,
    );
    let connection_string = success(&cli(&hub, &["device", "connection-string", "sensor-1"]).await);
    let device = DeviceClient::connect(
        connection_string.trim(),
        DeviceClientOptions::default()
            .with_ca_pem(hub.ca_pem())
            .with_port(hub.mqtt_port),
    )
    .await
    .expect("the device connects");
    device
        .send_message(Message::json(&json!({"temperature": 10})))
        .await
        .unwrap();
    device
        .send_message(Message::json(&json!({"temperature": 50})))
        .await
        .unwrap();
    device.disconnect().await.unwrap();
    let file = std::path::Path::new(&hub.data_dir).join("routes/archive/hot/telemetry.jsonl");
    let deadline = std::time::Instant::now() + WAIT;
    let endpoints = loop {
        let listed = json_of(&cli(&hub, &["route", "endpoint", "list", "--output", "json"]).await);
        if listed["health"][0]["delivered"] == json!(1)
            && listed["health"][0]["unreadEvents"] == json!(0)
        {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file sink did not get the message: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        endpoints["endpoints"]["fileSinks"][0]["name"],
        json!("archive")
    );
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .expect("the sink's file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("json lines"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["body"], json!(r#"{"temperature":50}"#));
    assert_eq!(lines[0]["properties"]["site"], json!("lab"));
    let table = success(&cli(&hub, &["route", "endpoint", "list"]).await);
    assert!(
        table.starts_with("NAME     TYPE  TARGET                              STATUS   DELIVERED"),
        "{table}"
    );
    assert!(
        table.contains("archive  file  routes/archive/hot/telemetry.jsonl  healthy  1 "),
        "{table}"
    );
    assert_eq!(
        success(&cli(&hub, &["route", "dead-letters"]).await),
        "no dead letters\n"
    );

    // Export, change, import.
    let exported = json_of(&cli(&hub, &["route", "export"]).await);
    assert_eq!(
        exported["enrichments"][0]["value"],
        json!("$twin.tags.site")
    );
    assert_eq!(exported["fallbackRoute"]["isEnabled"], json!(false));
    let mut changed = exported.clone();
    changed["routes"] = json!([]);
    changed["enrichments"] = json!([]);
    let imported = success(&cli(&hub, &["route", "import", &changed.to_string()]).await);
    assert_eq!(
        imported,
        "routing configuration replaced: 0 routes, 1 custom endpoints, 0 enrichments\n"
    );
    success(
        &cli(
            &hub,
            &["route", "fallback", "enable", "--endpoint", "archive"],
        )
        .await,
    );
    let fallback = json_of(&cli(&hub, &["route", "fallback", "show", "--output", "json"]).await);
    assert_eq!(fallback["endpointNames"], json!(["archive"]));
    assert_eq!(fallback["isEnabled"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_say_why_and_change_nothing() {
    let hub = Arc::new(tokio::task::spawn_blocking(Hub::start).await.unwrap());
    let before = json_of(&cli(&hub, &["route", "export"]).await);

    let unknown = cli(&hub, &["route", "add", "r1", "--endpoint", "nowhere"]).await;
    failure(
        &unknown,
        &[
            "the hub refused the routing configuration",
            "route \"r1\" names endpoint \"nowhere\"",
            "nothing was changed",
        ],
    );
    let syntax = cli(
        &hub,
        &[
            "route",
            "add",
            "r1",
            "--condition",
            "a = ",
            "--endpoint",
            "events",
        ],
    )
    .await;
    failure(
        &syntax,
        &["route \"r1\": condition \"a = \": syntax error at position 4"],
    );
    let taken = cli(
        &hub,
        &["route", "add", "twin-change-events", "--endpoint", "events"],
    )
    .await;
    failure(&taken, &["route twin-change-events already exists"]);
    let missing = cli(&hub, &["route", "remove", "nope"]).await;
    failure(
        &missing,
        &["there is no route nope: the routes are twin-change-events"],
    );
    let bad_url = cli(
        &hub,
        &["route", "endpoint", "add-webhook", "w", "--url", "ftp://x"],
    )
    .await;
    failure(
        &bad_url,
        &["webhook \"w\": url must start with http:// or https://"],
    );
    let escape = cli(
        &hub,
        &[
            "route",
            "endpoint",
            "add-file",
            "f",
            "--path",
            "../../etc/x",
        ],
    )
    .await;
    failure(&escape, &["has an empty, '.' or '..' name"]);
    let bad_enrichment = cli(
        &hub,
        &[
            "route",
            "enrichment",
            "add",
            "k",
            "--value",
            "$twin.x",
            "--endpoint",
            "events",
        ],
    )
    .await;
    failure(&bad_enrichment, &["is not a supported variable"]);
    let bad_source = cli(
        &hub,
        &[
            "route",
            "add",
            "r",
            "--source",
            "telemetry",
            "--endpoint",
            "events",
        ],
    )
    .await;
    assert_eq!(bad_source.status.code(), Some(2), "{}", stderr(&bad_source));
    assert!(stderr(&bad_source).contains("expected one of DeviceMessages"));
    let no_endpoint = cli(&hub, &["route", "add", "r"]).await;
    assert_eq!(no_endpoint.status.code(), Some(2));

    success(
        &cli(
            &hub,
            &[
                "route",
                "endpoint",
                "add-webhook",
                "hook",
                "--url",
                "http://127.0.0.1:9/x",
                "--header",
                "Authorization=Bearer t",
            ],
        )
        .await,
    );
    success(&cli(&hub, &["route", "add", "to-hook", "--endpoint", "hook"]).await);
    let in_use = cli(&hub, &["route", "endpoint", "remove", "hook"]).await;
    failure(
        &in_use,
        &["endpoint hook is still used by route to-hook: remove or change those first"],
    );
    success(&cli(&hub, &["route", "remove", "to-hook"]).await);
    success(&cli(&hub, &["route", "endpoint", "remove", "hook"]).await);
    assert_eq!(json_of(&cli(&hub, &["route", "export"]).await), before);

    // A policy that may read the configuration but not write it.
    let reader = hub.connection_string("registryRead");
    let forbidden = cli(
        &hub,
        &[
            "route",
            "add",
            "r",
            "--endpoint",
            "events",
            "--hub",
            &reader,
        ],
    )
    .await;
    failure(
        &forbidden,
        &["policy registryRead may not add route r", "RegistryWrite"],
    );
}
