//! `fleethub audit list` of the real binary against a real `fleethub serve` process: operations made from
//! the command line show up, newest first, filtered by operation and target, as a table and as JSON; a bad
//! `--since` is a usage error.

mod support;

use support::*;

#[test]
fn audit_list_shows_what_the_cli_changed() {
    let hub = Hub::start();
    for device in ["audit-a", "audit-b"] {
        let created = hub.run(&["device", "create", device]);
        assert!(created.status.success(), "{}", stderr(&created));
    }
    let deleted = hub.run(&["device", "delete", "audit-b"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let missing = hub.run(&["device", "delete", "audit-nobody"]);
    assert!(!missing.status.success());

    let all = json_of(&hub.run(&["audit", "list", "--since", "1h", "--output", "json"]));
    let records = all.as_array().expect("an array of records");
    let operations: Vec<(&str, &str, u64)> = records
        .iter()
        .map(|record| {
            (
                record["operation"].as_str().expect("operation"),
                record["target"].as_str().unwrap_or("-"),
                record["status"].as_u64().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        operations,
        vec![
            ("device.delete", "audit-nobody", 404),
            ("device.delete", "audit-b", 204),
            ("device.put", "audit-b", 200),
            ("device.put", "audit-a", 200),
        ],
        "newest first: {all}"
    );
    assert!(
        records
            .iter()
            .all(|record| record["policy"] == "iothubowner"),
        "{all}"
    );

    let filtered = json_of(&hub.run(&[
        "audit",
        "list",
        "--operation",
        "device.put",
        "--target",
        "audit-a",
        "--output",
        "json",
    ]));
    assert_eq!(filtered.as_array().map(Vec::len), Some(1), "{filtered}");

    let limited = json_of(&hub.run(&["audit", "list", "--limit", "1", "--output", "json"]));
    assert_eq!(limited.as_array().map(Vec::len), Some(1), "{limited}");

    let table = hub.run(&["audit", "list"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    for column in ["TIME", "POLICY", "OPERATION", "TARGET", "RESULT", "PEER"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(text.contains("404 DeviceNotFound"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour off a terminal: {text:?}"
    );

    failure(
        &hub.run(&["audit", "list", "--since", "yesterday"]),
        &["--since", "span"],
    );
}
