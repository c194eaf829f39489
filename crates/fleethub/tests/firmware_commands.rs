//! `fleethub firmware` of the real binary against a real `fleethub serve` process: a key pair OpenSSL reads,
//! a signed upload shown, granted and downloaded with the printed URL (as a device would, checking the
//! manifest with the public key), unsigned uploads, deletes, and the messages of every way they fail.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use fleethub_device::{DeviceClient, DeviceClientOptions};
use fleethub_protocol::firmware::PublicKey;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use support::*;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8 here")
}

/// Registers `device_id` and reports `model` from the device itself, as an agent does at start.
async fn device_reporting(hub: &Hub, device_id: &str, model: &str) {
    let created = hub.run(&["device", "create", device_id]);
    assert!(created.status.success(), "{}", stderr(&created));
    let connection_string = hub.run(&["device", "connection-string", device_id]);
    let device = DeviceClient::connect(
        stdout(&connection_string).trim(),
        DeviceClientOptions::default()
            .with_ca_pem(hub.ca_pem())
            .with_port(hub.mqtt_port),
    )
    .await
    .expect("connects");
    device
        .patch_reported(&json!({"firmware": {"model": model, "currentVersion": "1.0.0"}}))
        .await
        .expect("reports its model");
}

/// A reqwest client that trusts the hub's CA, as an agent would.
fn https_client(ca_pem: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.expect("CA PEM")).expect("usable CA");
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("client")
}

#[test]
fn keygen_writes_a_key_pair_openssl_reads_and_never_overwrites() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let prefix = directory.path().join("signing");
    let made = json_of(&run_in(
        directory.path(),
        &[
            "firmware",
            "keygen",
            "--out",
            path_text(&prefix),
            "--output",
            "json",
        ],
    ));
    let private = directory.path().join("signing.key.pem");
    let public = directory.path().join("signing.pub.pem");
    let jwk = directory.path().join("signing.pub.jwk");
    let mode = std::fs::metadata(&private)
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is the owner's alone");
    let public_pem = std::fs::read_to_string(&public).expect("public key");
    let key = PublicKey::parse(&public_pem).expect("an SPKI PEM");
    assert_eq!(
        PublicKey::parse(&std::fs::read_to_string(&jwk).expect("jwk")).expect("a JWK"),
        key
    );
    assert_eq!(made["keyId"], json!(key.key_id()));

    match Command::new("openssl").arg("version").output() {
        Ok(output) if output.status.success() => {
            let derived = Command::new("openssl")
                .args(["pkey", "-in", path_text(&private), "-pubout"])
                .output()
                .expect("run openssl");
            assert!(
                derived.status.success(),
                "{}",
                String::from_utf8_lossy(&derived.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&derived.stdout), public_pem);
        }
        _ => eprintln!(
            "SKIPPED one assertion: `openssl` is not installed, so `openssl pkey -in KEY -pubout` was not compared with the public key"
        ),
    }

    let before = std::fs::read(&private).expect("key");
    let again = run_in(
        directory.path(),
        &["firmware", "keygen", "--out", path_text(&prefix)],
    );
    failure(&again, &["signing.key.pem exists", "never replaces"]);
    assert_eq!(std::fs::read(&private).expect("key"), before, "untouched");
    // The default prefix, in the working directory.
    let default = run_in(directory.path(), &["firmware", "keygen"]);
    assert!(default.status.success(), "{}", stderr(&default));
    assert!(directory.path().join("fleethub-firmware.key.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_upload_is_shown_granted_and_downloaded_with_the_printed_url() {
    let hub = tokio::task::spawn_blocking(Hub::start).await.expect("hub");
    let work = hub.directory.path();
    let made = json_of(&run_in(
        work,
        &["firmware", "keygen", "--out", "release", "--output", "json"],
    ));
    let image: Vec<u8> = (0..3 * 1024 * 1024 + 7)
        .map(|index| (index % 253) as u8)
        .collect();
    std::fs::write(work.join("fw.bin"), &image).expect("write the image");
    device_reporting(&hub, "therm-1", "thermostat-x").await;

    let uploaded = json_of(&hub.run(&[
        "firmware",
        "upload",
        "fw.bin",
        "--model",
        "thermostat-x",
        "--version",
        "2.0.0",
        "--sign-key",
        "release.key.pem",
        "--health-check",
        "/bin/true",
        "--description",
        "fixes the heater",
        "--output",
        "json",
    ]));
    assert_eq!(uploaded["signed"], json!(true));
    assert_eq!(uploaded["keyId"], made["keyId"]);
    assert_eq!(uploaded["sha256"], json!(sha256_hex(&image)));
    assert_eq!(uploaded["size"], json!(image.len()));
    assert_eq!(uploaded["healthCheck"], json!("/bin/true"));
    assert_eq!(uploaded["description"], json!("fixes the heater"));

    let shown = json_of(&hub.run(&[
        "firmware",
        "show",
        "thermostat-x",
        "2.0.0",
        "--output",
        "json",
    ]));
    assert_eq!(shown, uploaded);
    let table = hub.run(&["firmware", "show", "thermostat-x", "2.0.0"]);
    let text = stdout(&table);
    assert!(
        text.contains("signed") && text.contains(made["keyId"].as_str().expect("text")),
        "{text}"
    );
    let listed = stdout(&hub.run(&["firmware", "list"]));
    assert!(listed.starts_with("MODEL"), "{listed}");
    assert!(listed.contains("thermostat-x  2.0.0"), "{listed}");

    let granted = hub.run(&[
        "firmware",
        "grant",
        "thermostat-x",
        "2.0.0",
        "--device",
        "therm-1",
        "--expires",
        "10m",
    ]);
    assert!(granted.status.success(), "{}", stderr(&granted));
    let url = stdout(&granted).trim().to_owned();
    assert!(
        url.starts_with(&format!(
            "https://localhost:{}/firmware/artifacts/thermostat-x/2.0.0/image?device=therm-1&",
            hub.https_port
        )),
        "{url}"
    );

    // The device's side: download with the URL alone, then check the manifest and the bytes.
    let response = https_client(&hub.ca_pem())
        .get(&url)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let manifest = response
        .headers()
        .get("x-fleethub-manifest")
        .expect("a signed artifact's manifest")
        .to_str()
        .expect("ASCII")
        .to_owned();
    let body = response.bytes().await.expect("the image");
    let public = PublicKey::parse(
        &std::fs::read_to_string(work.join("release.pub.pem")).expect("public key"),
    )
    .expect("key");
    let verified = public.verify(&manifest).expect("the manifest verifies");
    assert_eq!(verified.sha256, sha256_hex(&body));
    assert_eq!(verified.size, body.len() as u64);
    assert_eq!(body.as_ref(), image.as_slice());

    let as_json = json_of(&hub.run(&[
        "firmware",
        "grant",
        "thermostat-x",
        "2.0.0",
        "--device",
        "therm-1",
        "--output",
        "json",
    ]));
    assert!(
        as_json["url"]
            .as_str()
            .is_some_and(|url| url.contains("sig="))
    );
    assert!(as_json["expires"].is_string());
}

#[test]
fn unsigned_uploads_deletes_and_failures_say_what_to_do() {
    let hub = Hub::start();
    let work = hub.directory.path();
    std::fs::write(work.join("a.bin"), b"first image").expect("write");
    std::fs::write(work.join("b.bin"), b"second image").expect("write");

    let uploaded = json_of(&hub.run(&[
        "firmware",
        "upload",
        "a.bin",
        "--model",
        "m",
        "--version",
        "1",
        "--description",
        "unsigned",
        "--output",
        "json",
    ]));
    assert_eq!(uploaded["signed"], json!(false));
    assert_eq!(uploaded["manifest"], Value::Null);
    assert_eq!(uploaded["description"], json!("unsigned"));

    let duplicate = hub.run(&[
        "firmware",
        "upload",
        "b.bin",
        "--model",
        "m",
        "--version",
        "1",
    ]);
    failure(
        &duplicate,
        &["firmware m 1 already exists", "new --version"],
    );
    let missing = hub.run(&["firmware", "show", "m", "9"]);
    failure(
        &missing,
        &["firmware m 9 does not exist", "fleethub firmware list"],
    );
    let nobody = hub.run(&["firmware", "grant", "m", "1", "--device", "nobody"]);
    failure(&nobody, &["device nobody is not registered"]);
    let no_file = hub.run(&[
        "firmware",
        "upload",
        "nothing.bin",
        "--model",
        "m",
        "--version",
        "2",
    ]);
    failure(&no_file, &["nothing.bin"]);
    std::fs::write(work.join("bad.key.pem"), "not a key").expect("write");
    let bad_key = hub.run(&[
        "firmware",
        "upload",
        "b.bin",
        "--model",
        "m",
        "--version",
        "2",
        "--sign-key",
        "bad.key.pem",
    ]);
    failure(
        &bad_key,
        &["bad.key.pem is not a usable signing key", "firmware keygen"],
    );
    let registry_read = hub.connection_string("registryRead");
    let forbidden = hub.run(&[
        "firmware",
        "upload",
        "b.bin",
        "--model",
        "m",
        "--version",
        "2",
        "--hub",
        &registry_read,
    ]);
    failure(
        &forbidden,
        &[
            "policy registryRead may not upload firmware m 2",
            "RegistryWrite",
        ],
    );

    for args in [
        &[
            "firmware",
            "upload",
            "b.bin",
            "--model",
            "a/b",
            "--version",
            "1",
        ][..],
        &["firmware", "show", "m", ".."],
        &[
            "firmware",
            "grant",
            "m",
            "1",
            "--device",
            "d",
            "--expires",
            "31d",
        ],
        &[
            "firmware",
            "grant",
            "m",
            "1",
            "--device",
            "d",
            "--expires",
            "soon",
        ],
        &["firmware", "upload", "b.bin", "--version", "1"],
    ] {
        let output = hub.run(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }

    let deleted = hub.run(&["firmware", "delete", "m", "1"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(stdout(&deleted), "deleted firmware m 1\n");
    let empty = hub.run(&["firmware", "list"]);
    assert!(
        stdout(&empty).starts_with("no firmware artifacts"),
        "{}",
        stdout(&empty)
    );
    let again = hub.run(&["firmware", "delete", "m", "1"]);
    failure(&again, &["firmware m 1 does not exist"]);
}
