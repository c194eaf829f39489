//! The client commands (`device`, `twin`, `method`) of the real `fleethub` binary against a real `fleethub serve`
//! process: JSON output, exit codes, and the messages of every way they fail.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fleethub_device::{DeviceClient, DeviceClientOptions, MethodRequest, MethodResponse};
use serde_json::{Value, json};

mod support;

use support::*;

#[test]
fn device_commands_manage_devices_and_modules_found_through_the_data_directory() {
    let hub = Hub::start();

    let created = json_of(&hub.run(&["device", "create", "dev1", "--output", "json"]));
    assert_eq!(created["deviceId"], "dev1");
    assert_eq!(created["status"], "enabled");
    let primary_key = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("the hub generated a primary key")
        .to_owned();

    let given = "cHJpbWFyeS1rZXktZm9yLWNsaS10ZXN0cy0zMg==";
    let disabled = json_of(&hub.run(&[
        "device",
        "create",
        "dev2",
        "--disabled",
        "--primary-key",
        given,
        "--output",
        "json",
    ]));
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(
        disabled["authentication"]["symmetricKey"]["primaryKey"],
        given
    );
    assert!(disabled["authentication"]["symmetricKey"]["secondaryKey"].is_string());

    let shown = json_of(&hub.run(&["device", "show", "dev1", "--output", "json"]));
    assert_eq!(shown["deviceId"], "dev1");
    assert_eq!(shown["etag"], created["etag"]);

    let listed = json_of(&hub.run(&["device", "list", "--output", "json"]));
    let mut ids: Vec<&str> = listed
        .as_array()
        .expect("an array of devices")
        .iter()
        .map(|device| device["deviceId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["dev1", "dev2"]);
    let top = json_of(&hub.run(&["device", "list", "--top", "1", "--output", "json"]));
    assert_eq!(top.as_array().unwrap().len(), 1);

    let table = hub.run(&["device", "list"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("DEVICE ID  STATUS    CONNECTION"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour when stdout is a pipe: {text:?}"
    );
    let status_column = lines[0].find("STATUS").unwrap();
    for line in &lines[1..] {
        assert!(
            line[status_column..].starts_with("enabled")
                || line[status_column..].starts_with("disabled"),
            "aligned: {text}"
        );
    }

    // Modules.
    let module = json_of(&hub.run(&[
        "device", "create", "dev1", "--module", "m1", "--output", "json",
    ]));
    assert_eq!(
        (&module["deviceId"], &module["moduleId"]),
        (&json!("dev1"), &json!("m1"))
    );
    let modules = json_of(&hub.run(&["device", "list", "dev1", "--modules", "--output", "json"]));
    assert_eq!(modules.as_array().unwrap().len(), 1);
    assert_eq!(modules[0]["moduleId"], "m1");
    let shown_module = json_of(&hub.run(&[
        "device", "show", "dev1", "--module", "m1", "--output", "json",
    ]));
    assert_eq!(shown_module["moduleId"], "m1");

    // Connection strings for the Azure device SDKs: no port in HostName.
    let connection_string = hub.run(&["device", "connection-string", "dev1"]);
    assert_eq!(
        stdout(&connection_string),
        format!("HostName=localhost;DeviceId=dev1;SharedAccessKey={primary_key}\n")
    );
    let module_string = json_of(&hub.run(&[
        "device",
        "connection-string",
        "dev1",
        "--module",
        "m1",
        "--gateway",
        "edge.local",
        "--output",
        "json",
    ]));
    let module_string = module_string["connectionString"].as_str().unwrap();
    assert!(
        module_string.starts_with("HostName=localhost;DeviceId=dev1;ModuleId=m1;SharedAccessKey=")
            && module_string.ends_with(";GatewayHostName=edge.local"),
        "{module_string}"
    );

    // What goes wrong, and what the messages say.
    failure(
        &hub.run(&["device", "create", "dev1"]),
        &[
            "device dev1 already exists (409001 DeviceAlreadyExists)",
            "fleethub device show dev1",
        ],
    );
    failure(
        &hub.run(&["device", "create", "dev1", "--module", "m1"]),
        &["module m1 of device dev1 already exists (409301 ModuleAlreadyExistsOnDevice)"],
    );
    failure(
        &hub.run(&["device", "show", "ghost"]),
        &[
            "device ghost is not registered (404001 DeviceNotFound)",
            "fleethub device list",
        ],
    );
    failure(
        &hub.run(&["device", "show", "dev1", "--module", "ghost"]),
        &[
            "module ghost of device dev1 is not registered (404010 ModuleNotFound)",
            "fleethub device list dev1 --modules",
        ],
    );
    failure(
        &hub.run(&["device", "show", "ghost", "--module", "m1"]),
        &["device ghost is not registered (404001 DeviceNotFound)"],
    );
    failure(
        &hub.run(&["device", "create", "dev3", "--primary-key", "not base64!"]),
        &["the hub rejected the request to create device dev3 (400004 ArgumentInvalid"],
    );

    // Deleting: a stale etag is refused, the current one (or none) works.
    failure(
        &hub.run(&["device", "delete", "dev2", "--etag", "AAAAAAAAAAA="]),
        &[
            "the etag AAAAAAAAAAA= is not the current one",
            "412001 PreconditionFailed",
            "fleethub device show dev2",
        ],
    );
    let etag = disabled["etag"].as_str().unwrap();
    let deleted = hub.run(&[
        "device", "delete", "dev2", "--etag", etag, "--output", "json",
    ]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(deleted.stdout.is_empty(), "a 204 has no body to print");
    let deleted = hub.run(&["device", "delete", "dev1", "--module", "m1"]);
    assert_eq!(stdout(&deleted), "deleted module m1 of device dev1\n");
    failure(
        &hub.run(&["device", "show", "dev2"]),
        &["device dev2 is not registered (404001 DeviceNotFound)"],
    );
    failure(
        &hub.run(&["device", "delete", "dev2"]),
        &["device dev2 is not registered (404001 DeviceNotFound)"],
    );
}

#[test]
fn twin_commands_patch_show_and_replace_through_hub_and_ca_flags() {
    let hub = Hub::start();
    let created = hub.run(&["device", "create", "dev1"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let created = hub.run(&["device", "create", "dev1", "--module", "m1"]);
    assert!(created.status.success(), "{}", stderr(&created));

    // Run from a directory without a hub, finding it only through the flags.
    let elsewhere = tempfile::tempdir().unwrap();
    let connection_string = hub.connection_string("iothubowner");
    let ca = hub.ca_path();
    let ca = ca.to_str().unwrap();
    let twin = |args: &[&str]| {
        let mut all = vec!["twin"];
        all.extend_from_slice(args);
        all.extend(["--hub", connection_string.as_str(), "--ca", ca]);
        run_in(elsewhere.path(), &all)
    };

    let patched = json_of(&twin(&[
        "patch",
        "dev1",
        "--desired",
        r#"{"fw": "2.0", "config": {"interval": 5}}"#,
        "--tags",
        r#"{"site": "lab"}"#,
        "--output",
        "json",
    ]));
    assert_eq!(patched["deviceId"], "dev1");
    assert_eq!(patched["tags"], json!({"site": "lab"}));
    assert_eq!(patched["properties"]["desired"]["fw"], "2.0");
    assert_eq!(patched["properties"]["desired"]["config"]["interval"], 5);

    // The REST body itself, from a file and from stdin.
    let patch_file = elsewhere.path().join("patch.json");
    std::fs::write(
        &patch_file,
        r#"{"properties": {"desired": {"fw": "2.1", "config": null}}}"#,
    )
    .unwrap();
    let from_file = json_of(&twin(&[
        "patch",
        "dev1",
        &format!("@{}", patch_file.display()),
        "--output",
        "json",
    ]));
    assert_eq!(from_file["properties"]["desired"]["fw"], "2.1");
    assert!(from_file["properties"]["desired"].get("config").is_none());

    let mut child = command_in(
        elsewhere.path(),
        &[
            "twin",
            "patch",
            "dev1",
            "-",
            "--output",
            "json",
            "--hub",
            &connection_string,
            "--ca",
            ca,
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"tags": {"owner": "ops"}}"#)
        .unwrap();
    let from_stdin = json_of(&child.wait_with_output().unwrap());
    assert_eq!(from_stdin["tags"], json!({"site": "lab", "owner": "ops"}));

    let shown = json_of(&twin(&["show", "dev1", "--output", "json"]));
    assert_eq!(shown["etag"], from_stdin["etag"]);
    assert_eq!(shown["version"], from_stdin["version"]);

    // Etags: the current one works, an old one is refused with the fix.
    let current = shown["etag"].as_str().unwrap().to_owned();
    let old = patched["etag"].as_str().unwrap().to_owned();
    let with_etag = json_of(&twin(&[
        "patch",
        "dev1",
        "--desired",
        r#"{"fw": "2.2"}"#,
        "--etag",
        &current,
        "--output",
        "json",
    ]));
    assert_eq!(with_etag["properties"]["desired"]["fw"], "2.2");
    failure(
        &twin(&[
            "patch",
            "dev1",
            "--desired",
            r#"{"fw": "9"}"#,
            "--etag",
            &old,
        ]),
        &[
            &format!("the etag {old} is not the current one"),
            "412001 PreconditionFailed",
            "fleethub twin show dev1",
        ],
    );

    // Replace: tags and desired properties not given are gone.
    let replaced = json_of(&twin(&[
        "replace",
        "dev1",
        r#"{"tags": {"site": "plant"}, "properties": {"desired": {"mode": "eco"}}}"#,
        "--output",
        "json",
    ]));
    assert_eq!(replaced["tags"], json!({"site": "plant"}));
    assert_eq!(replaced["properties"]["desired"]["mode"], "eco");
    assert!(replaced["properties"]["desired"].get("fw").is_none());
    failure(
        &twin(&["replace", "dev1", "{}", "--etag", &current]),
        &["412001 PreconditionFailed"],
    );

    // Module twins.
    let module_twin = json_of(&twin(&[
        "patch",
        "dev1",
        "--module",
        "m1",
        "--desired",
        r#"{"level": 3}"#,
        "--output",
        "json",
    ]));
    assert_eq!(module_twin["moduleId"], "m1");
    assert_eq!(module_twin["properties"]["desired"]["level"], 3);

    // Table output: the summary, then one row per property.
    let table = twin(&["show", "dev1"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.starts_with("device id "), "{text}");
    assert!(text.contains("\nPROPERTY "), "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with("desired.mode") && line.contains("\"eco\"")),
        "{text}"
    );

    // Mistakes, each named.
    failure(
        &twin(&["patch", "dev1", r#"{"tags": {"a": 1,}}"#]),
        &["the patch is not valid JSON", "line 1 column 18"],
    );
    failure(
        &twin(&["patch", "dev1", "--desired", "fw=2"]),
        &["--desired is not valid JSON", "double quotes"],
    );
    failure(
        &twin(&["patch", "dev1", r#"{"fw": "2.0"}"#]),
        &[
            "neither \"tags\" nor \"properties\"",
            "--desired '{\"fw\":\"2.0\"}'",
        ],
    );
    failure(
        &twin(&["patch", "dev1", "@/nonexistent/patch.json"]),
        &["cannot read the patch from /nonexistent/patch.json"],
    );
    failure(
        &twin(&["patch", "ghost", "--desired", "{}"]),
        &["device ghost is not registered (404001 DeviceNotFound)"],
    );
    failure(
        &twin(&["show", "dev1", "--module", "ghost"]),
        &["module ghost of device dev1 is not registered (404010 ModuleNotFound)"],
    );
    failure(
        &twin(&["patch", "dev1", "--desired", r#"{"a.b": 1}"#]),
        &["the hub rejected the request to patch the twin of device dev1 (400004 ArgumentInvalid"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_invoke_returns_the_device_answer_and_explains_failures() {
    let hub = tokio::task::spawn_blocking(Hub::start).await.unwrap();
    let directory = hub.directory.path().to_owned();
    let data_dir = hub.data_dir_text().to_owned();
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

    for device in ["dev1", "offline"] {
        let created = cli(args(&["device", "create", device])).await;
        assert!(created.status.success(), "{}", stderr(&created));
    }
    // The device app connects with the string `device connection-string` printed, as a user would.
    let connection_string = cli(args(&["device", "connection-string", "dev1"])).await;
    let connection_string = stdout(&connection_string).trim().to_owned();
    let device = DeviceClient::connect(
        &connection_string,
        DeviceClientOptions::default()
            .with_ca_pem(hub.ca_pem())
            .with_port(hub.mqtt_port),
    )
    .await
    .expect("the printed connection string connects");
    device
        .on_method(|request: MethodRequest| async move {
            match request.method_name.as_str() {
                "echo" => MethodResponse::ok(json!({"echo": request.payload})),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(8)).await;
                    MethodResponse::ok(json!(null))
                }
                _ => MethodResponse::new(404, json!({"message": "unknown method"})),
            }
        })
        .await
        .expect("subscribe to methods");

    let answered = cli(args(&[
        "method",
        "invoke",
        "dev1",
        "echo",
        "--payload",
        r#"{"n": 1}"#,
        "--timeout",
        "10",
        "--output",
        "json",
    ]))
    .await;
    assert_eq!(
        json_of(&answered),
        json!({"status": 200, "payload": {"echo": {"n": 1}}})
    );

    // Any status the device chose is an answer: exit 0.
    let refused = cli(args(&[
        "method", "invoke", "dev1", "reboot", "--output", "json",
    ]))
    .await;
    assert_eq!(
        json_of(&refused),
        json!({"status": 404, "payload": {"message": "unknown method"}})
    );
    let table = cli(args(&[
        "method",
        "invoke",
        "dev1",
        "echo",
        "--payload",
        "\"hi\"",
    ]))
    .await;
    assert_eq!(
        stdout(&table),
        "STATUS  PAYLOAD\n200     {\"echo\":\"hi\"}\n"
    );

    failure(
        &cli(args(&[
            "method",
            "invoke",
            "dev1",
            "slow",
            "--timeout",
            "5",
        ]))
        .await,
        &[
            "device dev1 did not answer method slow within 5 s (504101 GatewayTimeout)",
            "raise --timeout",
        ],
    );
    failure(
        &cli(args(&["method", "invoke", "offline", "reboot"])).await,
        &[
            "device offline is not online (404103 DeviceNotOnline): it is not connected or has not subscribed to methods; check the device app or use --connect-timeout",
        ],
    );
    failure(
        &cli(args(&[
            "method",
            "invoke",
            "offline",
            "reboot",
            "--connect-timeout",
            "1",
        ]))
        .await,
        &[
            "device offline is not online (404103 DeviceNotOnline)",
            "raise --connect-timeout",
        ],
    );
    failure(
        &cli(args(&["method", "invoke", "ghost", "reboot"])).await,
        &["device ghost is not registered (404001 DeviceNotFound)"],
    );
    failure(
        &cli(args(&[
            "method",
            "invoke",
            "dev1",
            "echo",
            "--payload",
            "{oops}",
        ]))
        .await,
        &["--payload is not valid JSON", "line 1 column 2"],
    );
    for usage in [
        &["method", "invoke", "dev1", "bad name"][..],
        &["method", "invoke", "dev1", "echo", "--timeout", "1"],
        &[
            "method",
            "invoke",
            "dev1",
            "echo",
            "--connect-timeout",
            "301",
        ],
    ] {
        let output = cli(args(usage)).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{usage:?}: {}",
            stderr(&output)
        );
    }

    device.disconnect().await.expect("disconnect");
    drop(hub);
}

#[test]
fn twin_watch_prints_each_change_as_it_happens() {
    let hub = Hub::start();
    for args in [
        &["device", "create", "dev1"][..],
        &["device", "create", "dev2"],
        &["twin", "patch", "dev1", "--desired", r#"{"fw": "2.0"}"#],
    ] {
        let output = hub.run(args);
        assert!(output.status.success(), "{}", stderr(&output));
    }

    // JSON lines of one device, replayed from the start, then live.
    let mut watch = Reaped(
        command_in(
            hub.directory.path(),
            &[
                "twin",
                "watch",
                "dev1",
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
    let lines = Lines::of(&mut watch.0);
    let created: Value = serde_json::from_str(&lines.next()).unwrap();
    assert_eq!(created["deviceId"], "dev1");
    assert_eq!(created["operation"], "createDeviceIdentity");
    let patched: Value = serde_json::from_str(&lines.next()).unwrap();
    assert_eq!(patched["operation"], "updateTwin");
    assert_eq!(patched["body"]["properties"]["desired"]["fw"], "2.0");
    assert!(patched["sequence"].as_u64() > created["sequence"].as_u64());

    for args in [
        &["twin", "patch", "dev2", "--desired", r#"{"fw": "other"}"#][..],
        &["twin", "patch", "dev1", "--tags", r#"{"site": "lab"}"#],
    ] {
        let output = hub.run(args);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let live: Value = serde_json::from_str(&lines.next()).unwrap();
    assert_eq!(
        live["deviceId"], "dev1",
        "dev2's change is filtered out: {live}"
    );
    assert_eq!(live["body"]["tags"], json!({"site": "lab"}));

    // Table lines of every device.
    let mut table = Reaped(
        command_in(
            hub.directory.path(),
            &[
                "twin",
                "watch",
                "--after",
                "0",
                "--data-dir",
                hub.data_dir_text(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let lines = Lines::of(&mut table.0);
    let seen: Vec<String> = (0..5).map(|_| lines.next()).collect();
    assert!(
        seen[0].contains("#1")
            && seen[0].contains("dev1")
            && seen[0].contains("createDeviceIdentity"),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|line| line.contains("dev2")
            && line.contains("updateTwin")
            && line.contains("desired.fw=\"other\"")),
        "{seen:#?}"
    );

    // A watch that cannot start says why.
    let read_only = hub.connection_string("device");
    failure(
        &run_in(
            hub.directory.path(),
            &[
                "twin",
                "watch",
                "--hub",
                &read_only,
                "--ca",
                hub.ca_path().to_str().unwrap(),
            ],
        ),
        &[
            "policy device may not watch changes",
            "ServiceConnect or RegistryRead",
        ],
    );
}

#[test]
fn client_commands_explain_where_the_hub_is_and_why_it_cannot_be_used() {
    let mut hub = Hub::start();
    let nowhere = tempfile::tempdir().unwrap();
    let owner = hub.connection_string("iothubowner");
    let ca = hub.ca_path();
    let ca = ca.to_str().unwrap().to_owned();

    // No hub anywhere.
    failure(
        &run_in(nowhere.path(), &["device", "list"]),
        &[
            "no hub: pass --hub CONNECTION_STRING, set FLEETHUB_CONNECTION_STRING, or run `fleethub serve --data-dir DIR`",
        ],
    );
    failure(
        &run_in(nowhere.path(), &["device", "list", "--data-dir", "empty"]),
        &[
            "no hub: empty holds none",
            "fleethub serve --data-dir empty",
        ],
    );

    // The environment variable, and ./fleethub-data found by default (with its CA).
    let from_environment = command_in(
        nowhere.path(),
        &["device", "list", "--output", "json", "--ca", &ca],
    )
    .env("FLEETHUB_CONNECTION_STRING", &owner)
    .output()
    .unwrap();
    assert_eq!(json_of(&from_environment), json!([]));
    let from_data_dir_environment =
        command_in(nowhere.path(), &["device", "list", "--output", "json"])
            .env("FLEETHUB_DATA_DIR", hub.data_dir_text())
            .output()
            .unwrap();
    assert_eq!(json_of(&from_data_dir_environment), json!([]));
    std::os::unix::fs::symlink(hub.data_dir_text(), nowhere.path().join("fleethub-data")).unwrap();
    assert_eq!(
        json_of(&run_in(
            nowhere.path(),
            &["device", "list", "--output", "json"]
        )),
        json!([])
    );
    let empty_table = run_in(nowhere.path(), &["device", "list"]);
    assert!(
        stdout(&empty_table).starts_with("no devices yet"),
        "{}",
        stdout(&empty_table)
    );
    std::fs::remove_file(nowhere.path().join("fleethub-data")).unwrap();

    // Trust: no CA (system roots), a wrong CA, a missing CA file.
    failure(
        &run_in(nowhere.path(), &["device", "list", "--hub", &owner]),
        &[
            "tls handshake with localhost:",
            "not signed by a CA the system trusts",
            "--ca FILE",
        ],
    );
    let other_ca = nowhere.path().join("other-ca.pem");
    std::fs::write(
        &other_ca,
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert
            .pem(),
    )
    .unwrap();
    failure(
        &run_in(
            nowhere.path(),
            &[
                "device",
                "list",
                "--hub",
                &owner,
                "--ca",
                other_ca.to_str().unwrap(),
            ],
        ),
        &[
            "tls handshake with localhost:",
            "UnknownIssuer",
            "--ca FILE",
        ],
    );
    failure(
        &run_in(
            nowhere.path(),
            &["device", "list", "--hub", &owner, "--ca", "missing.pem"],
        ),
        &["cannot read --ca missing.pem"],
    );
    failure(
        &run_in(
            nowhere.path(),
            &["device", "list", "--hub", "HostName=localhost", "--ca", &ca],
        ),
        &[
            "the connection string from --hub is not usable",
            "SharedAccessKeyName",
        ],
    );

    // Credentials: a wrong key, a policy without the right.
    let (without_key, _) = owner.rsplit_once("SharedAccessKey=").unwrap();
    let wrong_key =
        format!("{without_key}SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    failure(
        &run_in(
            nowhere.path(),
            &["device", "list", "--hub", &wrong_key, "--ca", &ca],
        ),
        &[
            "the hub rejected the credentials of policy iothubowner (401002 IotHubUnauthorizedAccess",
        ],
    );
    let read_only = hub.connection_string("registryRead");
    failure(
        &run_in(
            nowhere.path(),
            &["device", "create", "dev1", "--hub", &read_only, "--ca", &ca],
        ),
        &[
            "policy registryRead may not create device dev1 (403000 GenericForbidden",
            "RegistryWrite (registryReadWrite or iothubowner)",
        ],
    );
    let service = hub.connection_string("service");
    failure(
        &run_in(
            nowhere.path(),
            &["device", "list", "--hub", &service, "--ca", &ca],
        ),
        &[
            "policy service may not list devices",
            "--policy registryRead",
        ],
    );

    // A usage error is exit 2, from clap.
    let usage = run_in(nowhere.path(), &["device", "list", "--top", "many"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));

    // The hub stopped: its data directory still names it, and the message says to start it.
    hub.stop();
    failure(
        &hub.run(&["device", "list"]),
        &[
            "cannot reach the hub at localhost:",
            "fleethub serve --data-dir",
        ],
    );
}

#[test]
fn client_help_documents_how_the_hub_is_found() {
    let help = run_in(Path::new("."), &["device", "--help"]);
    let text = stdout(&help);
    for needle in [
        "--hub <CONNECTION_STRING>",
        "--data-dir <DIR>",
        "--ca <FILE>",
        "--output <FORMAT>",
        "FLEETHUB_CONNECTION_STRING",
        "FLEETHUB_DATA_DIR",
        "./fleethub-data",
        "Which hub (the first that applies)",
    ] {
        assert!(
            text.contains(needle),
            "device --help mentions {needle}:\n{text}"
        );
    }
    let text = stdout(&run_in(
        Path::new("."),
        &["device", "connection-string", "--help"],
    ));
    assert!(text.contains("HostName carries no port"), "{text}");
    for group in [&["twin", "--help"][..], &["method", "--help"], &["--help"]] {
        let output = run_in(Path::new("."), group);
        assert!(output.status.success(), "{group:?}: {}", stderr(&output));
    }
}

#[test]
fn query_follows_every_page_and_prints_tables_or_json() {
    let hub = Hub::start();
    for index in 0..5 {
        let id = format!("q{index}");
        assert!(hub.run(&["device", "create", &id]).status.success());
        let site = if index < 3 { "north" } else { "south" };
        let patch = format!(r#"{{"tags": {{"site": "{site}"}}}}"#);
        assert!(hub.run(&["twin", "patch", &id, &patch]).status.success());
    }
    let all = json_of(&hub.run(&[
        "query",
        "SELECT deviceId FROM devices WHERE tags.site = 'north'",
        "--page-size",
        "2",
        "--output",
        "json",
    ]));
    assert_eq!(
        all,
        json!([{"deviceId": "q0"}, {"deviceId": "q1"}, {"deviceId": "q2"}])
    );
    let groups = stdout(&hub.run(&[
        "query",
        "SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site",
    ]));
    assert!(
        groups.starts_with("SITE") && groups.contains("north") && groups.contains('3'),
        "{groups}"
    );
    let twins = stdout(&hub.run(&["query", "SELECT * FROM devices WHERE tags.site = 'south'"]));
    assert!(
        twins.contains("q3") && twins.contains("q4") && !twins.contains("q0"),
        "{twins}"
    );
    let bad = hub.run(&["query", "SELECT * FROM devices WHERE"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("syntax error at position"),
        "{}",
        stderr(&bad)
    );
}
