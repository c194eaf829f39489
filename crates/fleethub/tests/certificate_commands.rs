//! `fleethub certificate` and `device create --auth` of the real binary against a real `fleethub serve`
//! process: a CA made, uploaded and verified from the command line lets a CA-signed device (our SDK) connect;
//! a self-signed device registered by the thumbprint `create-device` printed connects; refusals say why.

use std::os::unix::fs::PermissionsExt as _;

use fleethub_device::{
    ClientCertificate, ConnectError, ConnectReturnCode, DeviceClient, DeviceClientOptions,
};

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_made_and_registered_from_the_command_line_let_devices_connect() {
    let hub = Hub::start();
    let cli = |args: &[&str]| hub.run_async(args);
    let file = |name: &str| hub.directory.path().join(name).to_str().unwrap().to_owned();
    let connect = |device_id: &str, certificate: &str, key: &str| {
        let connection_string = format!("HostName=localhost;DeviceId={device_id};x509=true");
        let options = DeviceClientOptions::default()
            .with_ca_pem(hub.ca_pem())
            .with_port(hub.mqtt_port)
            .with_client_certificate(
                ClientCertificate::from_files(certificate, key).expect("certificate files"),
            );
        async move { DeviceClient::connect(&connection_string, options).await }
    };

    // A CA, uploaded, proven and trusted.
    let made = cli(&[
        "certificate",
        "create-ca",
        "--subject",
        "cli root",
        "--out",
        &file("ca.pem"),
        "--key-out",
        &file("ca-key.pem"),
    ])
    .await;
    assert!(made.status.success(), "{}", stderr(&made));
    let mode = |name: &str| {
        std::fs::metadata(file(name))
            .expect("the file was written")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca-key.pem"), 0o600, "the CA's private key");
    assert_eq!(mode("ca.pem"), 0o644, "the CA certificate");
    // A second run never replaces the key (nor the certificate), and says so.
    let key_before = std::fs::read_to_string(file("ca-key.pem")).unwrap();
    let again = cli(&[
        "certificate",
        "create-ca",
        "--out",
        &file("another-ca.pem"),
        "--key-out",
        &file("ca-key.pem"),
    ])
    .await;
    failure(&again, &["ca-key.pem exists", "never replaced"]);
    assert_eq!(
        std::fs::read_to_string(file("ca-key.pem")).unwrap(),
        key_before
    );
    assert!(
        !std::path::Path::new(&file("another-ca.pem")).exists(),
        "nothing is written when one output exists"
    );
    let uploaded = json_of(
        &cli(&[
            "certificate",
            "upload",
            "root",
            "--file",
            &file("ca.pem"),
            "--output",
            "json",
        ])
        .await,
    );
    assert_eq!(uploaded["properties"]["isVerified"], false, "{uploaded}");
    assert_eq!(
        uploaded["properties"]["subject"], "CN=cli root",
        "{uploaded}"
    );
    let listed = cli(&["certificate", "list"]).await;
    let table = stdout(&listed);
    for column in ["NAME", "SUBJECT", "VERIFIED", "EXPIRY", "THUMBPRINT"] {
        assert!(table.contains(column), "{table}");
    }
    assert!(table.contains("root") && table.contains(" no "), "{table}");
    let verified = json_of(
        &cli(&[
            "certificate",
            "verify",
            "root",
            "--ca-key",
            &file("ca-key.pem"),
            "--output",
            "json",
        ])
        .await,
    );
    assert_eq!(verified["properties"]["isVerified"], true, "{verified}");

    // A CA-signed device.
    let made = cli(&[
        "certificate",
        "create-device",
        "cli-ca-device",
        "--out",
        &file("ca-device.pem"),
        "--key-out",
        &file("ca-device-key.pem"),
        "--ca-cert",
        &file("ca.pem"),
        "--ca-key",
        &file("ca-key.pem"),
    ])
    .await;
    assert!(made.status.success(), "{}", stderr(&made));
    assert_eq!(mode("ca-device-key.pem"), 0o600, "the device's private key");
    let again = cli(&[
        "certificate",
        "create-device",
        "cli-ca-device",
        "--out",
        &file("ca-device.pem"),
        "--key-out",
        &file("other-key.pem"),
    ])
    .await;
    failure(&again, &["ca-device.pem exists"]);
    let created = cli(&["device", "create", "cli-ca-device", "--auth", "ca"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains("certificateAuthority"),
        "{}",
        stdout(&created)
    );
    let connection_string = cli(&["device", "connection-string", "cli-ca-device"]).await;
    assert_eq!(
        stdout(&connection_string).trim(),
        "HostName=localhost;DeviceId=cli-ca-device;x509=true",
        "{}",
        stderr(&connection_string)
    );
    let device = connect(
        "cli-ca-device",
        &file("ca-device.pem"),
        &file("ca-device-key.pem"),
    )
    .await
    .expect("the CA-signed device connects");
    device.disconnect().await.unwrap();

    // A self-signed device, registered by the SHA-256 thumbprint create-device printed.
    let made = json_of(
        &cli(&[
            "certificate",
            "create-device",
            "cli-self-signed",
            "--out",
            &file("self.pem"),
            "--key-out",
            &file("self-key.pem"),
            "--output",
            "json",
        ])
        .await,
    );
    let thumbprint = made["sha256Thumbprint"]
        .as_str()
        .expect("a thumbprint")
        .to_owned();
    let refused = cli(&[
        "device",
        "create",
        "cli-self-signed",
        "--auth",
        "self-signed",
    ])
    .await;
    failure(&refused, &["--primary-thumbprint"]);
    let created = cli(&[
        "device",
        "create",
        "cli-self-signed",
        "--auth",
        "self-signed",
        "--primary-thumbprint",
        &thumbprint,
    ])
    .await;
    assert!(created.status.success(), "{}", stderr(&created));
    let device = connect("cli-self-signed", &file("self.pem"), &file("self-key.pem"))
        .await
        .expect("the self-signed device connects");
    device.disconnect().await.unwrap();
    // A self-signed certificate whose CN is the CA device's id: not signed by the CA, so the hub refuses it
    // (CONNACK 5), after a TLS handshake that succeeded.
    let made = cli(&[
        "certificate",
        "create-device",
        "cli-ca-device",
        "--out",
        &file("unsigned.pem"),
        "--key-out",
        &file("unsigned-key.pem"),
    ])
    .await;
    assert!(made.status.success(), "{}", stderr(&made));
    let refused = connect(
        "cli-ca-device",
        &file("unsigned.pem"),
        &file("unsigned-key.pem"),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ConnectError::Refused {
                return_code: ConnectReturnCode::NotAuthorized
            })
        ),
        "a self-signed certificate for the CA device: {:?}",
        refused.err()
    );

    // Refusals read as what is wrong.
    std::fs::write(file("garbage.pem"), "not a certificate").unwrap();
    failure(
        &cli(&[
            "certificate",
            "upload",
            "bad",
            "--file",
            &file("garbage.pem"),
        ])
        .await,
        &["upload CA certificate bad", "neither PEM nor base64"],
    );
    failure(
        &cli(&["certificate", "upload", "leaf", "--file", &file("self.pem")]).await,
        &["not a CA certificate"],
    );

    // Deleted: the CA-signed device is refused.
    let deleted = cli(&["certificate", "delete", "root"]).await;
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let refused = connect(
        "cli-ca-device",
        &file("ca-device.pem"),
        &file("ca-device-key.pem"),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ConnectError::Refused {
                return_code: ConnectReturnCode::NotAuthorized
            })
        ),
        "the CA is gone: {:?}",
        refused.err()
    );
    failure(
        &cli(&["certificate", "show", "root"]).await,
        &["CertificateNotFound"],
    );
}
