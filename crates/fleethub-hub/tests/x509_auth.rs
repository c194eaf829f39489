//! X.509 device authentication against a real hub over real TLS: self-signed certificates matched by SHA-1 or
//! SHA-256 thumbprint (primary or secondary), CA-signed certificates chaining to a CA uploaded and verified
//! through `/certificates` (proof of possession), and the refusals (CONNACK 5) for everything else.

use std::sync::Arc;

use fleethub_core::identity::{Authentication, IdentityKey};
use fleethub_device::{ClientCertificate, DeviceClient, DeviceClientOptions, Transport};
use fleethub_mqtt::{Connect, ConnectReturnCode, Packet};
use fleethub_protocol::rest::{AuthenticationType, DeviceStatus};
use fleethub_protocol::sas::generate_sas_token;
use fleethub_testkit::certificates::{TestCa, TestCertificate, self_signed, self_signed_valid};
use fleethub_testkit::*;
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tokio_rustls::TlsConnector;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn make_ca(common_name: &str) -> TestCa {
    TestCa::new(common_name)
}

fn connector(hub: &TestHub, certificate: Option<&TestCertificate>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(hub.hub.ca_pem.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("usable CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match certificate {
        None => builder.with_no_client_auth(),
        Some(certificate) => builder
            .with_client_auth_cert(
                certificate.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certificate.key.serialize_der())),
            )
            .expect("client certificate"),
    };
    TlsConnector::from(Arc::new(config))
}

/// CONNECT as an X.509 device does: a user name, no password.
fn x509_connect(client_id: &str) -> Connect {
    Connect {
        protocol_level: 4,
        clean_session: false,
        keep_alive: 60,
        username: Some(format!("localhost/{client_id}/?api-version=2021-04-12")),
        password: None,
        client_id: client_id.to_owned(),
        will: None,
    }
}

/// The CONNACK code the hub answers `connect` with over a TLS connection presenting `certificate`.
async fn connack(
    hub: &TestHub,
    certificate: Option<&TestCertificate>,
    connect: Connect,
) -> ConnectReturnCode {
    let mut client = RawClient::connect(hub.hub.mqtt_address, connector(hub, certificate)).await;
    client.send(&Packet::Connect(connect)).await;
    match client.receive().await {
        Some(Packet::ConnAck(ack)) => ack.code,
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

async fn create_x509_device(
    hub: &TestHub,
    device_id: &str,
    kind: AuthenticationType,
    primary: Option<String>,
    secondary: Option<String>,
) {
    let mut spec = sas_spec(DeviceStatus::Enabled);
    spec.authentication = Authentication {
        kind,
        primary_key: None,
        secondary_key: None,
        primary_thumbprint: primary,
        secondary_thumbprint: secondary,
    };
    hub.hub
        .services
        .put_identity(IdentityKey::device(device_id.parse().unwrap()), spec, None)
        .await
        .expect("create the device");
}

#[tokio::test]
async fn self_signed_devices_connect_with_a_certificate_matching_either_thumbprint_in_either_hash()
{
    let hub = TestHub::start().await;
    let by_sha1 = self_signed("thumbprint-device");
    let by_sha256 = self_signed("thumbprint-device");
    // Lower-case as the caller typed them; the registry keeps them upper-case and the match ignores case.
    create_x509_device(
        &hub,
        "thumbprint-device",
        AuthenticationType::SelfSigned,
        Some(by_sha1.sha1()),
        Some(by_sha256.sha256()),
    )
    .await;
    for (case, certificate) in [
        ("SHA-1 primary", &by_sha1),
        ("SHA-256 secondary", &by_sha256),
    ] {
        assert_eq!(
            connack(&hub, Some(certificate), x509_connect("thumbprint-device")).await,
            ConnectReturnCode::Accepted,
            "{case}"
        );
    }

    // Thumbprints swapped between the slots: SHA-256 primary and SHA-1 secondary work alike.
    create_x509_device(
        &hub,
        "swapped-device",
        AuthenticationType::SelfSigned,
        Some(by_sha256.sha256().to_uppercase()),
        Some(by_sha1.sha1()),
    )
    .await;
    for certificate in [&by_sha1, &by_sha256] {
        assert_eq!(
            connack(&hub, Some(certificate), x509_connect("swapped-device")).await,
            ConnectReturnCode::Accepted
        );
    }
}

#[tokio::test]
async fn self_signed_devices_are_refused_with_another_an_expired_or_no_certificate_or_a_sas_token()
{
    let hub = TestHub::start().await;
    let registered = self_signed("strict-device");
    let expired = self_signed_valid(
        "strict-device",
        now() - Duration::days(30),
        now() - Duration::days(1),
    );
    let not_yet_valid = self_signed_valid(
        "strict-device",
        now() + Duration::days(1),
        now() + Duration::days(30),
    );
    create_x509_device(
        &hub,
        "strict-device",
        AuthenticationType::SelfSigned,
        Some(registered.sha256()),
        Some(expired.sha1()),
    )
    .await;
    // The not-yet-valid one is registered too, so only its validity refuses it.
    create_x509_device(
        &hub,
        "future-device",
        AuthenticationType::SelfSigned,
        Some(not_yet_valid.sha256()),
        None,
    )
    .await;

    let another = self_signed("strict-device");
    assert_eq!(
        connack(&hub, Some(&another), x509_connect("strict-device")).await,
        ConnectReturnCode::NotAuthorized,
        "a certificate with another thumbprint"
    );
    assert_eq!(
        connack(&hub, Some(&expired), x509_connect("strict-device")).await,
        ConnectReturnCode::NotAuthorized,
        "an expired certificate whose thumbprint is registered"
    );
    assert_eq!(
        connack(&hub, Some(&not_yet_valid), x509_connect("future-device")).await,
        ConnectReturnCode::NotAuthorized,
        "a certificate not valid yet"
    );
    assert_eq!(
        connack(&hub, None, x509_connect("strict-device")).await,
        ConnectReturnCode::NotAuthorized,
        "no certificate"
    );
    // The right certificate with a device SAS token as the password: X.509 identities take no tokens.
    let mut with_token = x509_connect("strict-device");
    with_token.password = Some(
        generate_sas_token(
            "localhost/devices/strict-device",
            b"any key at all",
            unix_now() + 3600,
            None,
        )
        .into_bytes()
        .into(),
    );
    assert_eq!(
        connack(&hub, Some(&registered), with_token).await,
        ConnectReturnCode::NotAuthorized,
        "a SAS token for an X.509 device"
    );
    // A certificate registered for one device does not authenticate another.
    create_x509_device(
        &hub,
        "other-device",
        AuthenticationType::SelfSigned,
        Some(another.sha1()),
        None,
    )
    .await;
    assert_eq!(
        connack(&hub, Some(&registered), x509_connect("other-device")).await,
        ConnectReturnCode::NotAuthorized,
        "another device's certificate"
    );
    // And the registered one still works after all those refusals.
    assert_eq!(
        connack(&hub, Some(&registered), x509_connect("strict-device")).await,
        ConnectReturnCode::Accepted
    );
}

#[tokio::test]
async fn a_sas_device_presenting_a_certificate_still_authenticates_with_its_token_only() {
    let hub = TestHub::start().await;
    let record = hub.create_device("sas-with-certificate").await;
    let certificate = self_signed("sas-with-certificate");
    assert_eq!(
        connack(&hub, Some(&certificate), connect_for(&record, 60)).await,
        ConnectReturnCode::Accepted,
        "a valid token, with a certificate the hub does not look at"
    );
    assert_eq!(
        connack(
            &hub,
            Some(&certificate),
            x509_connect("sas-with-certificate")
        )
        .await,
        ConnectReturnCode::NotAuthorized,
        "a certificate instead of the token"
    );
}

#[tokio::test]
async fn ca_signed_devices_connect_once_their_ca_is_uploaded_and_verified_and_not_after_it_is_deleted()
 {
    let hub = TestHub::start().await;
    let owner = ServiceApi::for_hub(&hub, "registryReadWrite");
    let reader = ServiceApi::for_hub(&hub, "registryRead");
    let ca = make_ca("fleethub test root");
    create_x509_device(
        &hub,
        "ca-device",
        AuthenticationType::CertificateAuthority,
        None,
        None,
    )
    .await;
    let device_certificate = ca.issue("ca-device");

    // Malformed uploads are refused with the reason.
    let malformed = owner
        .send(
            Method::PUT,
            "/certificates/root",
            &[],
            Some(json!({"properties": {"certificate": "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"}})),
        )
        .await;
    malformed.assert_refused(StatusCode::BAD_REQUEST, "neither PEM nor base64");
    let not_a_ca = owner
        .send(
            Method::PUT,
            "/certificates/root",
            &[],
            Some(json!({"properties": {"certificate": ca.issue_pem("leaf")}})),
        )
        .await;
    not_a_ca.assert_refused(StatusCode::BAD_REQUEST, "not a CA certificate");
    let forbidden = reader
        .send(
            Method::PUT,
            "/certificates/root",
            &[],
            Some(json!({"properties": {"certificate": ca.pem}})),
        )
        .await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "{}",
        forbidden.body
    );

    // Uploaded but not verified: the device is refused.
    let uploaded = owner
        .send(
            Method::PUT,
            "/certificates/root",
            &[],
            Some(json!({"properties": {"certificate": ca.pem}})),
        )
        .await;
    assert_eq!(uploaded.status, StatusCode::OK, "{}", uploaded.body);
    assert_eq!(uploaded.body["name"], "root");
    assert_eq!(uploaded.body["properties"]["isVerified"], false);
    assert_eq!(
        uploaded.body["properties"]["subject"],
        "CN=fleethub test root"
    );
    assert_eq!(
        uploaded.body["properties"]["thumbprint"]
            .as_str()
            .unwrap()
            .len(),
        40
    );
    assert!(
        uploaded.body["properties"]["expiry"]
            .as_str()
            .unwrap()
            .ends_with(" GMT")
    );
    assert_eq!(
        connack(&hub, Some(&device_certificate), x509_connect("ca-device")).await,
        ConnectReturnCode::NotAuthorized,
        "the CA is not verified yet"
    );
    let listed = reader.send(Method::GET, "/certificates", &[], None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["value"].as_array().unwrap().len(), 1);

    // Proof of possession: a code, then a certificate with that CN signed by the CA's key.
    let etag = uploaded.body["etag"].as_str().unwrap().to_owned();
    let generated = owner
        .send(
            Method::POST,
            "/certificates/root/generateVerificationCode",
            &[("if-match", &etag)],
            None,
        )
        .await;
    assert_eq!(generated.status, StatusCode::OK, "{}", generated.body);
    let code = generated.body["properties"]["verificationCode"]
        .as_str()
        .expect("a verification code")
        .to_owned();
    let etag = generated.body["etag"].as_str().unwrap().to_owned();
    // Same subject as the real CA, another key: the signature does not verify.
    let impostor = make_ca("fleethub test root");
    let wrong_key = owner
        .send(
            Method::POST,
            "/certificates/root/verify",
            &[("if-match", &etag)],
            Some(json!({"certificate": impostor.issue_pem(&code)})),
        )
        .await;
    wrong_key.assert_refused(StatusCode::BAD_REQUEST, "not signed by");
    let wrong_code = owner
        .send(
            Method::POST,
            "/certificates/root/verify",
            &[("if-match", &etag)],
            Some(json!({"certificate": ca.issue_pem("not-the-code")})),
        )
        .await;
    assert_eq!(
        wrong_code.status,
        StatusCode::BAD_REQUEST,
        "{}",
        wrong_code.body
    );
    let stale = owner
        .send(
            Method::POST,
            "/certificates/root/verify",
            &[("if-match", "\"stale\"")],
            Some(json!({"certificate": ca.issue_pem(&code)})),
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let verified = owner
        .send(
            Method::POST,
            "/certificates/root/verify",
            &[("if-match", &etag)],
            Some(json!({"certificate": ca.issue_pem(&code)})),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
    assert_eq!(verified.body["properties"]["isVerified"], true);

    // Verified: the device connects; a certificate for another CN, or from another CA, does not.
    assert_eq!(
        connack(&hub, Some(&device_certificate), x509_connect("ca-device")).await,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        connack(
            &hub,
            Some(&ca.issue("someone-else")),
            x509_connect("ca-device")
        )
        .await,
        ConnectReturnCode::NotAuthorized,
        "subject CN is not the device id"
    );
    assert_eq!(
        connack(
            &hub,
            Some(&impostor.issue("ca-device")),
            x509_connect("ca-device")
        )
        .await,
        ConnectReturnCode::NotAuthorized,
        "signed by a CA that was not uploaded"
    );
    assert_eq!(
        connack(&hub, None, x509_connect("ca-device")).await,
        ConnectReturnCode::NotAuthorized,
        "no certificate"
    );

    // Every write is in the audit log.
    let audit = reader
        .send(Method::GET, "/audit?target=root", &[], None)
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let operations: Vec<&str> = audit.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["operation"].as_str().unwrap())
        .collect();
    for operation in [
        "certificate.put",
        "certificate.generateVerificationCode",
        "certificate.verify",
    ] {
        assert!(
            operations.contains(&operation),
            "{operation} in {operations:?}"
        );
    }

    // Deleted: refused again.
    let deleted = owner
        .send(
            Method::DELETE,
            "/certificates/root",
            &[("if-match", "*")],
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    let gone = reader
        .send(Method::GET, "/certificates/root", &[], None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    assert_eq!(gone.error_code.as_deref(), Some("CertificateNotFound"));
    assert_eq!(
        connack(&hub, Some(&device_certificate), x509_connect("ca-device")).await,
        ConnectReturnCode::NotAuthorized,
        "the CA was deleted"
    );
}

#[tokio::test]
async fn a_ca_uploaded_as_verified_is_trusted_at_once_and_survives_a_restart() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let data = directory.path().join("data");
    let ca = make_ca("preverified root");
    let device_certificate = ca.issue("restart-device");
    {
        let hub = TestHub::start_with(|config| config.data_dir = data.clone()).await;
        let owner = ServiceApi::for_hub(&hub, "iothubowner");
        let uploaded = owner
            .send(
                Method::PUT,
                "/certificates/preverified",
                &[],
                Some(json!({"properties": {"certificate": ca.pem, "isVerified": true}})),
            )
            .await;
        assert_eq!(uploaded.status, StatusCode::OK, "{}", uploaded.body);
        assert_eq!(uploaded.body["properties"]["isVerified"], true);
        create_x509_device(
            &hub,
            "restart-device",
            AuthenticationType::CertificateAuthority,
            None,
            None,
        )
        .await;
        assert_eq!(
            connack(
                &hub,
                Some(&device_certificate),
                x509_connect("restart-device")
            )
            .await,
            ConnectReturnCode::Accepted
        );
        // Replacing it needs its etag.
        let again = owner
            .send(
                Method::PUT,
                "/certificates/preverified",
                &[],
                Some(json!({"properties": {"certificate": ca.pem}})),
            )
            .await;
        assert_eq!(
            again.status,
            StatusCode::PRECONDITION_FAILED,
            "{}",
            again.body
        );
        hub.hub.shutdown(std::time::Duration::from_secs(5)).await;
    }
    let hub = TestHub::start_with(|config| config.data_dir = data.clone()).await;
    assert_eq!(
        connack(
            &hub,
            Some(&device_certificate),
            x509_connect("restart-device")
        )
        .await,
        ConnectReturnCode::Accepted,
        "after a restart"
    );
}

#[tokio::test]
async fn the_device_sdk_connects_with_a_client_certificate_over_tls_and_over_websocket() {
    let hub = TestHub::start().await;
    let ca = make_ca("sdk root");
    let owner = ServiceApi::for_hub(&hub, "iothubowner");
    let uploaded = owner
        .send(
            Method::PUT,
            "/certificates/sdk-root",
            &[],
            Some(json!({"properties": {"certificate": ca.pem, "isVerified": true}})),
        )
        .await;
    assert_eq!(uploaded.status, StatusCode::OK, "{}", uploaded.body);
    let self_signed_certificate = self_signed("sdk-self-signed");
    create_x509_device(
        &hub,
        "sdk-self-signed",
        AuthenticationType::SelfSigned,
        Some(self_signed_certificate.sha1()),
        None,
    )
    .await;
    create_x509_device(
        &hub,
        "sdk-ca-signed",
        AuthenticationType::CertificateAuthority,
        None,
        None,
    )
    .await;
    let ca_signed_certificate = ca.issue("sdk-ca-signed");
    let cases = [
        ("sdk-self-signed", &self_signed_certificate, Transport::Mqtt),
        (
            "sdk-self-signed",
            &self_signed_certificate,
            Transport::WebSocket,
        ),
        ("sdk-ca-signed", &ca_signed_certificate, Transport::Mqtt),
        (
            "sdk-ca-signed",
            &ca_signed_certificate,
            Transport::WebSocket,
        ),
    ];
    for (device_id, certificate, transport) in cases {
        let port = match transport {
            Transport::WebSocket => hub.hub.https_address.port(),
            _ => hub.hub.mqtt_address.port(),
        };
        let options = DeviceClientOptions::default()
            .with_ca_pem(hub.hub.ca_pem.clone())
            .with_transport(transport)
            .with_port(port)
            .with_client_certificate(ClientCertificate::from_pem(
                certificate.pem.clone(),
                certificate.key.serialize_pem(),
            ));
        let connection_string = format!("HostName=localhost;DeviceId={device_id};x509=true");
        let client = tokio::time::timeout(WAIT, DeviceClient::connect(&connection_string, options))
            .await
            .expect("connects in time")
            .unwrap_or_else(|error| panic!("{device_id} over {transport:?}: {error}"));
        client
            .patch_reported(&json!({"transport": format!("{transport:?}")}))
            .await
            .unwrap();
        let twin = client.get_twin().await.unwrap();
        assert_eq!(
            twin["reported"]["transport"],
            json!(format!("{transport:?}"))
        );
        client.disconnect().await.unwrap();
    }

    // Without the certificate the SDK says what is missing; with another one the hub refuses it.
    let Err(missing) = DeviceClient::connect(
        "HostName=localhost;DeviceId=sdk-self-signed;x509=true",
        DeviceClientOptions::default()
            .with_ca_pem(hub.hub.ca_pem.clone())
            .with_port(hub.hub.mqtt_address.port()),
    )
    .await
    else {
        panic!("connected without the right certificate");
    };
    assert!(
        matches!(
            missing,
            fleethub_device::ConnectError::MissingClientCertificate
        ),
        "{missing}"
    );
    let another = self_signed("sdk-self-signed");
    let Err(refused) = DeviceClient::connect(
        "HostName=localhost;DeviceId=sdk-self-signed;x509=true",
        DeviceClientOptions::default()
            .with_ca_pem(hub.hub.ca_pem.clone())
            .with_port(hub.hub.mqtt_address.port())
            .with_client_certificate(ClientCertificate::from_pem(
                another.pem.clone(),
                another.key.serialize_pem(),
            )),
    )
    .await
    else {
        panic!("connected without the right certificate");
    };
    assert!(
        matches!(
            refused,
            fleethub_device::ConnectError::Refused {
                return_code: ConnectReturnCode::NotAuthorized
            }
        ),
        "{refused}"
    );
}

#[tokio::test]
async fn a_resumed_tls_session_still_authenticates_with_its_client_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let hub = TestHub::start().await;
    let certificate = self_signed("resumed-device");
    create_x509_device(
        &hub,
        "resumed-device",
        AuthenticationType::SelfSigned,
        Some(certificate.sha256()),
        None,
    )
    .await;
    // One client configuration, so the second handshake resumes the first one's session.
    let connector = connector(&hub, Some(&certificate));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(hub.hub.mqtt_address)
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.expect("tls handshake");
        let mut bytes = bytes::BytesMut::new();
        fleethub_mqtt::encode(&Packet::Connect(x509_connect("resumed-device")), &mut bytes)
            .unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut buffer = bytes::BytesMut::new();
        let connack = loop {
            if let Some(packet) = fleethub_mqtt::decode(&mut buffer, 1 << 20).unwrap() {
                break packet;
            }
            let read = tokio::time::timeout(WAIT, stream.read_buf(&mut buffer))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(read > 0, "the hub closed the connection");
        };
        match connack {
            Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Accepted),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
        kinds.push(stream.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        vec![
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

#[tokio::test]
async fn a_self_signed_module_connects_with_its_certificate_and_not_with_its_devices() {
    let hub = TestHub::start().await;
    let device_certificate = self_signed("module-parent");
    let module_certificate = self_signed("module-parent/sensor");
    create_x509_device(
        &hub,
        "module-parent",
        AuthenticationType::SelfSigned,
        Some(device_certificate.sha1()),
        None,
    )
    .await;
    let mut spec = sas_spec(DeviceStatus::Enabled);
    spec.authentication = Authentication {
        kind: AuthenticationType::SelfSigned,
        primary_key: None,
        secondary_key: None,
        primary_thumbprint: Some(module_certificate.sha256()),
        secondary_thumbprint: None,
    };
    hub.hub
        .services
        .put_identity(
            IdentityKey::module("module-parent".parse().unwrap(), "sensor".parse().unwrap()),
            spec,
            None,
        )
        .await
        .expect("create the module");
    assert_eq!(
        connack(
            &hub,
            Some(&module_certificate),
            x509_connect("module-parent/sensor")
        )
        .await,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        connack(
            &hub,
            Some(&device_certificate),
            x509_connect("module-parent/sensor")
        )
        .await,
        ConnectReturnCode::NotAuthorized,
        "the device's certificate does not authenticate its module"
    );
}

/// Azure's documented proof of possession makes the verification certificate with `openssl x509 -req` and
/// no extensions: X.509 v1 (`tests/fixtures/x509-v1`, RSA). The hub takes it.
#[tokio::test]
async fn proof_of_possession_takes_a_v1_verification_certificate_made_as_azures_docs_make_it() {
    const FIXTURE_CA: &str = include_str!("fixtures/x509-v1/root-ca.pem");
    const FIXTURE_V1_PROOF: &str = include_str!("fixtures/x509-v1/v1-verification.pem");
    const FIXTURE_CODE: &str = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF";
    let hub = TestHub::start().await;
    let owner = ServiceApi::for_hub(&hub, "iothubowner");
    let uploaded = owner
        .send(
            Method::PUT,
            "/certificates/openssl-root",
            &[],
            Some(json!({"properties": {"certificate": FIXTURE_CA}})),
        )
        .await;
    assert_eq!(uploaded.status, StatusCode::OK, "{}", uploaded.body);
    let generated = owner
        .send(
            Method::POST,
            "/certificates/openssl-root/generateVerificationCode",
            &[],
            None,
        )
        .await;
    assert_eq!(generated.status, StatusCode::OK, "{}", generated.body);
    // The code is random; the fixture's CN is fixed, so the pending code is set to it in the store.
    let services = &hub.hub.services;
    let mut record = services
        .store
        .get_ca_certificate("openssl-root")
        .await
        .unwrap()
        .expect("the uploaded CA");
    record.verification_code = Some(FIXTURE_CODE.to_owned());
    services.store.put_ca_certificate(record).await.unwrap();

    let verified = owner
        .send(
            Method::POST,
            "/certificates/openssl-root/verify",
            &[],
            Some(json!({"certificate": FIXTURE_V1_PROOF})),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
    assert_eq!(verified.body["properties"]["isVerified"], true);
    assert!(
        services
            .certificates
            .trusted()
            .iter()
            .any(|ca| ca.name == "openssl-root"),
        "the verified CA is trusted at once"
    );
}
