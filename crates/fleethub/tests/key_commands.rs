//! `fleethub device renew-key` and `fleethub policy renew-key` of the real binary against a real `fleethub
//! serve` process: the key changes, the others stay, and the old policy key stops working.

mod support;

use support::*;

#[test]
fn device_and_policy_keys_are_renewed_from_the_command_line() {
    let hub = Hub::start();
    let created = json_of(&hub.run(&["device", "create", "dev1", "--output", "json"]));
    let keys = |device: &serde_json::Value| {
        let keys = &device["authentication"]["symmetricKey"];
        (
            keys["primaryKey"].as_str().expect("primary").to_owned(),
            keys["secondaryKey"].as_str().expect("secondary").to_owned(),
        )
    };
    let (primary, secondary) = keys(&created);

    let renewed = json_of(&hub.run(&[
        "device",
        "renew-key",
        "dev1",
        "--key",
        "secondary",
        "--output",
        "json",
    ]));
    let (renewed_primary, renewed_secondary) = keys(&renewed);
    assert_eq!(renewed_primary, primary, "the primary key is kept");
    assert_ne!(renewed_secondary, secondary, "the secondary key is new");
    let swapped = json_of(&hub.run(&[
        "device",
        "renew-key",
        "dev1",
        "--key",
        "swap",
        "--output",
        "json",
    ]));
    assert_eq!(keys(&swapped), (renewed_secondary, renewed_primary));
    let usage = hub.run(&["device", "renew-key", "dev1", "--key", "tertiary"]);
    assert_eq!(usage.status.code(), Some(2), "a usage error");
    assert!(stderr(&usage).contains("expected primary, secondary or swap"));

    // The service policy's primary key: renewed by the owner, after which the old connection string fails.
    let old_service = hub.connection_string("service");
    let policy = json_of(&hub.run(&[
        "policy",
        "renew-key",
        "service",
        "--key",
        "primary",
        "--output",
        "json",
    ]));
    assert_eq!(policy["keyName"], "service");
    assert!(
        !old_service.contains(policy["primaryKey"].as_str().expect("primary key")),
        "the key changed"
    );
    assert!(
        hub.connection_string("service")
            .contains(policy["primaryKey"].as_str().expect("primary key")),
        "the hub stored the new key"
    );
    let ca = hub.ca_path();
    let ca = ca.to_str().expect("utf-8 path");
    failure(
        &run_in(
            hub.directory.path(),
            &["device", "show", "dev1", "--hub", &old_service, "--ca", ca],
        ),
        &["rejected the credentials of policy service"],
    );
    // Only the owner changes keys; unknown policies are named.
    failure(
        &run_in(
            hub.directory.path(),
            &[
                "policy",
                "renew-key",
                "device",
                "--hub",
                &hub.connection_string("registryReadWrite"),
                "--ca",
                ca,
            ],
        ),
        &["iothubowner"],
    );
    failure(&hub.run(&["policy", "renew-key", "nobody"]), &["nobody"]);
}
