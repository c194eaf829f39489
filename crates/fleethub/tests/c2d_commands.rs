//! `fleethub c2d` of the real binary against a real `fleethub serve` process: a message sent from the command
//! line reaches a device (our SDK) with its properties, its feedback is printed, a queue is purged, and the
//! refusals read as what to do.

use std::process::Stdio;
use std::time::Duration;

use fleethub_device::{DeviceClient, DeviceClientOptions};
use serde_json::{Value, json};

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_commands_send_to_a_device_print_feedback_and_purge() {
    let hub = Hub::start();
    let cli = |args: &[&str]| hub.run_async(args);
    for device in ["dev1", "offline"] {
        let created = cli(&["device", "create", device]).await;
        assert!(created.status.success(), "{}", stderr(&created));
    }
    let connection_string = cli(&["device", "connection-string", "dev1"]).await;
    let device = DeviceClient::connect(
        stdout(&connection_string).trim(),
        DeviceClientOptions::default()
            .with_ca_pem(hub.ca_pem())
            .with_port(hub.mqtt_port),
    )
    .await
    .expect("the device connects");
    let mut messages = device.cloud_to_device_messages().await.expect("subscribed");

    let sent = json_of(
        &cli(&[
            "c2d",
            "send",
            "dev1",
            r#"{"led":"on"}"#,
            "--property",
            "priority=high",
            "--property",
            "flag",
            "--ttl",
            "600",
            "--ack",
            "full",
            "--message-id",
            "cli-1",
            "--content-type",
            "application/json",
            "--output",
            "json",
        ])
        .await,
    );
    assert_eq!(sent["messageId"], "cli-1");
    assert!(sent["sequenceNumber"].as_u64().is_some(), "{sent}");

    let message = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("delivered in time")
        .expect("the stream goes on");
    assert_eq!(message.body_text(), Some(r#"{"led":"on"}"#));
    assert_eq!(message.message_id(), Some("cli-1"));
    assert_eq!(message.content_type(), Some("application/json"));
    assert_eq!(message.ack(), Some("full"));
    assert_eq!(
        message.application_properties().collect::<Vec<_>>(),
        vec![("flag", None), ("priority", Some("high"))]
    );
    // The device is done with it.
    drop(messages);

    // `feedback` prints the Success record once it exists, and marks it read.
    let deadline = tokio::time::Instant::now() + WAIT;
    let records = loop {
        let records = json_of(&cli(&["c2d", "feedback", "--output", "json"]).await);
        if records
            .as_array()
            .is_some_and(|records| !records.is_empty())
        {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no feedback within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(records[0]["originalMessageId"], "cli-1");
    assert_eq!(records[0]["statusCode"], "Success");
    assert_eq!(records[0]["deviceId"], "dev1");
    assert_eq!(
        json_of(&cli(&["c2d", "feedback", "--output", "json"]).await),
        json!([]),
        "read feedback is gone"
    );

    // `feedback --watch` prints each new record as a line of JSON.
    let mut watch_args = vec!["c2d", "feedback", "--watch", "--output", "json"];
    watch_args.extend(["--data-dir", hub.data_dir_text()]);
    let mut watcher = command_in(hub.directory.path(), &watch_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the watcher");
    let lines = Lines::of(&mut watcher);
    let _watcher = Reaped(watcher);
    let negative = cli(&[
        "c2d",
        "send",
        "offline",
        "x",
        "--ack",
        "negative",
        "--message-id",
        "w-1",
    ])
    .await;
    assert!(negative.status.success(), "{}", stderr(&negative));
    let purged = cli(&["c2d", "purge", "offline"]).await;
    assert!(purged.status.success(), "{}", stderr(&purged));
    let line = tokio::task::spawn_blocking(move || lines.next())
        .await
        .expect("the reader thread");
    let watched: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(watched["originalMessageId"], "w-1");
    assert_eq!(watched["statusCode"], "Purged");

    // A queue for a device that is not connected, in a table, then purged.
    let table = cli(&["c2d", "send", "offline", "hello", "--message-id", "m-2"]).await;
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.contains("message id  m-2"), "{text}");
    assert!(text.contains("device      offline"), "{text}");
    let purged = cli(&["c2d", "purge", "offline"]).await;
    assert_eq!(
        stdout(&purged),
        "purged 1 message from the queue of device offline\n"
    );
    let purged: Value = json_of(&cli(&["c2d", "purge", "offline", "--output", "json"]).await);
    assert_eq!(purged["totalMessagesPurged"], 0);

    // Refusals say what was wrong and what to do.
    failure(
        &cli(&["c2d", "send", "nobody", "x"]).await,
        &[
            "device nobody is not registered",
            "fleethub device create nobody",
        ],
    );
    failure(
        &cli(&["c2d", "send", "offline", "x", "--property", "bad name=1"]).await,
        &["rejected the request", "contains ' '"],
    );
    failure(
        &cli(&["c2d", "send", "offline", "x", "--ttl", "0"]).await,
        &["refused the expiry", "--ttl"],
    );
    let large = "a".repeat(70 * 1024);
    failure(
        &cli(&["c2d", "send", "offline", &large]).await,
        &["too large", "MessageTooLarge"],
    );
    for index in 0..50 {
        let body = format!("m{index}");
        let queued = cli(&["c2d", "send", "offline", &body]).await;
        assert!(queued.status.success(), "{}", stderr(&queued));
    }
    failure(
        &cli(&["c2d", "send", "offline", "one too many"]).await,
        &[
            "403004 DeviceMaximumQueueDepthExceeded",
            "fleethub c2d purge offline",
        ],
    );
    device.disconnect().await.expect("disconnect");
}
