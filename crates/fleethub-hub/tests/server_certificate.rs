//! Bring-your-own server certificate: the hub serves the operator's chain and key, and swaps in a replaced
//! pair for new connections without a restart while existing connections go on; a pair that does not load
//! is refused and the old one stays in service.

use std::path::Path;
use std::time::Duration;

use fleethub_hub::{ServerCertificateFiles, StartError, tls::TlsSetupError};
use fleethub_mqtt::Packet;
use fleethub_testkit::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// An operator's CA and server certificates it issues for the loopback names.
struct OperatorCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

struct ServerPair {
    certificate_pem: String,
    key_pem: String,
    leaf: CertificateDer<'static>,
}

impl OperatorCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "operator test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).unwrap();
        Self {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, common_name: &str) -> ServerPair {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        ServerPair {
            // The chain as operators get it: leaf first, then the issuer.
            certificate_pem: format!("{}{}", certificate.pem(), self.pem),
            key_pem: key.serialize_pem(),
            leaf: certificate.der().clone(),
        }
    }
}

/// Replaces a file the way deployment tools do: write aside, then rename over.
fn replace(path: &Path, contents: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn install(files: &ServerCertificateFiles, certificate_pem: &str, key_pem: &str) {
    replace(&files.key, key_pem);
    replace(&files.certificate, certificate_pem);
}

/// The leaf certificate a new TLS connection to `address` is shown (verified against the operator's CA).
async fn presented_leaf(
    address: std::net::SocketAddr,
    connector: &TlsConnector,
) -> CertificateDer<'static> {
    try_presented_leaf(address, connector)
        .await
        .expect("handshake verifies against the operator's CA")
}

/// The leaf a new TLS connection is shown, or why the handshake failed (a certificate the connector does not
/// trust, while the one it trusts is not served yet).
async fn try_presented_leaf(
    address: std::net::SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<CertificateDer<'static>> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

/// Waits until new connections are shown `leaf`; until then they may be shown a certificate the connector
/// does not trust (the hub's own, before the operator's replaces it).
async fn wait_until_presented(
    address: std::net::SocketAddr,
    connector: &TlsConnector,
    leaf: &CertificateDer<'static>,
) {
    tokio::time::timeout(WAIT, async {
        while try_presented_leaf(address, connector).await.ok().as_ref() != Some(leaf) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("new connections get the replaced certificate in time");
}

fn files_in(directory: &Path) -> ServerCertificateFiles {
    ServerCertificateFiles {
        certificate: directory.join("server-chain.pem"),
        key: directory.join("server-key.pem"),
    }
}

#[tokio::test]
async fn a_replaced_certificate_reaches_new_connections_while_existing_ones_continue() {
    let certificates = tempfile::tempdir().unwrap();
    let files = files_in(certificates.path());
    let ca = OperatorCa::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    install(&files, &first.certificate_pem, &first.key_pem);
    let hub = TestHub::start_with(|config| config.server_certificate = Some(files.clone())).await;
    let connector = tls_connector(&ca.pem);
    let (mqtt, https) = (hub.hub.mqtt_address, hub.hub.https_address);
    assert_eq!(presented_leaf(mqtt, &connector).await, first.leaf);
    assert_eq!(presented_leaf(https, &connector).await, first.leaf);
    assert!(
        hub.hub.ca_pem.contains(ca.pem.trim()),
        "the hub names the top of the operator's chain as what clients trust"
    );

    let record = hub.create_device("d1").await;
    let mut existing = RawClient::connect(mqtt, connector.clone()).await;
    existing.connect_accepted(connect_for(&record, 60)).await;

    install(&files, &second.certificate_pem, &second.key_pem);
    wait_until_presented(mqtt, &connector, &second.leaf).await;
    assert_eq!(presented_leaf(https, &connector).await, second.leaf);
    assert_eq!(hub.hub.server_certificate.rejected(), 0);

    existing.send(&Packet::PingReq).await;
    assert_eq!(existing.receive().await, Some(Packet::PingResp));
    let mut later = RawClient::connect(mqtt, connector.clone()).await;
    later.connect_accepted(connect_for(&record, 60)).await;

    // The first certificate with the second's key: refused, the second stays.
    install(&files, &first.certificate_pem, &second.key_pem);
    hub.hub.reload_server_certificate();
    wait_for_rejections(&hub, 1).await;
    assert_eq!(presented_leaf(mqtt, &connector).await, second.leaf);
    // Not PEM at all: refused too.
    install(&files, "not a certificate", &second.key_pem);
    wait_for_rejections(&hub, 2).await;
    assert_eq!(presented_leaf(https, &connector).await, second.leaf);
    assert_eq!(hub.hub.server_certificate.reloads(), 1);

    // Fixed again: served again.
    install(&files, &first.certificate_pem, &first.key_pem);
    wait_until_presented(mqtt, &connector, &first.leaf).await;
}

async fn wait_for_rejections(hub: &TestHub, count: u64) {
    tokio::time::timeout(WAIT, async {
        while hub.hub.server_certificate.rejected() < count {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the broken pair is looked at and refused in time");
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_stops_the_start() {
    let certificates = tempfile::tempdir().unwrap();
    let files = files_in(certificates.path());
    let ca = OperatorCa::new();
    let (first, second) = (ca.issue("first"), ca.issue("second"));
    install(&files, &first.certificate_pem, &second.key_pem);
    let data = tempfile::tempdir().unwrap();
    let mut config = fleethub_hub::HubConfig::for_loopback(data.path().join("data"));
    config.server_certificate = Some(files);
    let error = match fleethub_hub::start(config).await {
        Ok(_) => panic!("a hub started with a key that is not its certificate's"),
        Err(error) => error,
    };
    assert!(
        matches!(
            error,
            StartError::ProvidedCertificate(TlsSetupError::KeyMismatch { .. })
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("--tls-cert") && message.contains("--tls-key"),
        "{message}"
    );
    assert!(
        !data.path().join("data").join("ca.pem").exists(),
        "no CA of the hub's own"
    );
}

#[tokio::test]
async fn the_self_issued_certificate_is_reloaded_when_its_files_are_replaced() {
    let hub = TestHub::start().await;
    let data_dir = hub.directory.path().join("data");
    let ca = OperatorCa::new();
    let replacement = ca.issue("replacement");
    let files = ServerCertificateFiles {
        certificate: data_dir.join("server.pem"),
        key: data_dir.join("server-key.pem"),
    };
    install(&files, &replacement.certificate_pem, &replacement.key_pem);
    hub.hub.reload_server_certificate();
    wait_until_presented(
        hub.hub.mqtt_address,
        &tls_connector(&ca.pem),
        &replacement.leaf,
    )
    .await;
}
