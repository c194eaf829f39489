//! Test support: a real hub on loopback with a temporary data directory, and a raw MQTT client that can
//! send any bytes (valid or not) over real TLS, for tests that must see the hub's exact reaction.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleethub_core::identity::{Authentication, IdentityKey, IdentitySpec};
use fleethub_hub::{HubConfig, RunningHub};
use fleethub_mqtt::{Connect, ConnectReturnCode, Packet, PacketId, Publish, QoS, Subscribe};
use fleethub_protocol::ids::ETag;
use fleethub_protocol::rest::{AuthenticationType, DeviceStatus};
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use fleethub_store::DeviceRecord;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub mod certificates;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestHub {
    pub hub: RunningHub,
    pub directory: tempfile::TempDir,
}

impl TestHub {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut HubConfig)) -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let mut config = HubConfig::for_loopback(directory.path().join("data"));
        adjust(&mut config);
        let hub = fleethub_hub::start(config).await.expect("the hub starts");
        Self { hub, directory }
    }

    /// Waits (up to [`WAIT`]) until the change feed holds a record of `operation` for `device`.
    pub async fn wait_for_change(
        &self,
        device: &fleethub_protocol::ids::DeviceId,
        operation: fleethub_protocol::changes::ChangeOperation,
    ) {
        let store = &self.hub.services.store;
        let mut notifier = store.change_notifier();
        let found = async {
            loop {
                notifier.borrow_and_update();
                let records = store
                    .read_changes(
                        0,
                        10_000,
                        fleethub_store::ChangeFilter::device(device.clone()),
                    )
                    .await
                    .expect("read the change feed");
                if records.iter().any(|record| record.operation == operation) {
                    return;
                }
                if notifier.changed().await.is_err() {
                    panic!("the store stopped");
                }
            }
        };
        tokio::time::timeout(WAIT, found)
            .await
            .unwrap_or_else(|_| panic!("no {operation:?} for {device} within {WAIT:?}"));
    }

    pub fn policy(&self, name: &str) -> fleethub_core::access::AccessPolicy {
        self.hub
            .services
            .policies()
            .iter()
            .find(|policy| policy.key_name == name)
            .cloned()
            .expect("built-in policy")
    }

    pub fn tls_connector(&self) -> TlsConnector {
        tls_connector(&self.hub.ca_pem)
    }

    /// Registers a device with SAS keys and returns its record (keys included).
    pub async fn create_device(&self, device_id: &str) -> DeviceRecord {
        self.create_identity(IdentityKey::device(device_id.parse().expect("valid id")))
            .await
    }

    pub async fn create_module(&self, device_id: &str, module_id: &str) -> DeviceRecord {
        let key = IdentityKey::module(
            device_id.parse().expect("valid id"),
            module_id.parse().expect("valid id"),
        );
        self.create_identity(key).await
    }

    async fn create_identity(&self, key: IdentityKey) -> DeviceRecord {
        self.hub
            .services
            .put_identity(key, sas_spec(DeviceStatus::Enabled), None)
            .await
            .expect("create identity")
    }

    pub async fn set_status(&self, record: &DeviceRecord, status: DeviceStatus) {
        let if_match = fleethub_protocol::ids::IfMatch::Tag(ETag::new(record.identity.etag()));
        let mut spec = sas_spec(status);
        spec.authentication.primary_key = record.identity.authentication.primary_key.clone();
        spec.authentication.secondary_key = record.identity.authentication.secondary_key.clone();
        self.hub
            .services
            .put_identity(record.key.clone(), spec, Some(if_match))
            .await
            .expect("update status");
    }

    /// A raw MQTT/TLS connection to the hub, before CONNECT.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.hub.mqtt_address, self.tls_connector()).await
    }

    /// A raw connection that has completed CONNECT/CONNACK for `record`.
    pub async fn connected(&self, record: &DeviceRecord) -> RawClient {
        let mut client = self.raw().await;
        client.connect_accepted(connect_for(record, 60)).await;
        client
    }
}

pub fn sas_spec(status: DeviceStatus) -> IdentitySpec {
    IdentitySpec {
        status,
        status_reason: None,
        authentication: Authentication {
            kind: AuthenticationType::Sas,
            primary_key: None,
            secondary_key: None,
            primary_thumbprint: None,
            secondary_thumbprint: None,
        },
        iot_edge: false,
        managed_by: None,
        device_scope: None,
        parent_scopes: vec![],
    }
}

pub fn tls_connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(certificate.expect("CA PEM parses"))
            .expect("CA certificate is usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A SAS token for an identity, as the Python device SDK makes it.
pub fn device_token(record: &DeviceRecord, expiry_unix: u64) -> String {
    let key = decode_key(
        record
            .identity
            .authentication
            .primary_key
            .as_deref()
            .expect("SAS identity"),
    )
    .expect("stored keys are base64");
    let resource = match &record.key.module_id {
        Some(module) => format!(
            "localhost/devices/{}/modules/{module}",
            record.key.device_id
        ),
        None => format!("localhost/devices/{}", record.key.device_id),
    };
    generate_sas_token(&resource, &key, expiry_unix, None)
}

pub fn unix_now() -> u64 {
    time::OffsetDateTime::now_utc().unix_timestamp() as u64
}

pub fn connect_for(record: &DeviceRecord, keep_alive: u16) -> Connect {
    let key = record
        .identity
        .authentication
        .primary_key
        .as_deref()
        .expect("SAS identity");
    connect_with_key(&record.key.client_id().to_string(), key, keep_alive)
}

/// A clean-session-0 CONNECT for `client_id` (`device` or `device/module`) signed with a base64 key, as the
/// official SDKs send it.
pub fn connect_with_key(client_id: &str, key_base64: &str, keep_alive: u16) -> Connect {
    let key = decode_key(key_base64).expect("keys are base64");
    let resource = match client_id.split_once('/') {
        Some((device, module)) => format!("localhost/devices/{device}/modules/{module}"),
        None => format!("localhost/devices/{client_id}"),
    };
    Connect {
        protocol_level: 4,
        clean_session: false,
        keep_alive,
        username: Some(format!("localhost/{client_id}/?api-version=2021-04-12")),
        password: Some(
            generate_sas_token(&resource, &key, unix_now() + 3600, None)
                .into_bytes()
                .into(),
        ),
        client_id: client_id.to_owned(),
        will: None,
    }
}

pub fn packet_id(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero packet id")
}

pub fn publish_qos1(topic: &str, id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: Some(packet_id(id)),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

pub fn subscribe(id: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: packet_id(id),
        filters: vec![(filter.into(), qos)],
    })
}

pub struct RawClient {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
}

impl RawClient {
    pub async fn connect(address: std::net::SocketAddr, connector: TlsConnector) -> Self {
        let tcp = TcpStream::connect(address).await.expect("tcp connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = ServerName::try_from("localhost").expect("valid name");
        let stream = connector.connect(name, tcp).await.expect("tls handshake");
        Self {
            stream,
            buffer: BytesMut::new(),
        }
    }

    /// Sends CONNECT and asserts it is accepted; returns the CONNACK's session-present flag.
    pub async fn connect_accepted(&mut self, connect: Connect) -> bool {
        let client_id = connect.client_id.clone();
        self.send(&Packet::Connect(connect)).await;
        match self.receive().await {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(
                    ack.code,
                    ConnectReturnCode::Accepted,
                    "CONNACK for {client_id}"
                );
                ack.session_present
            }
            other => panic!("expected CONNACK for {client_id}, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut bytes = BytesMut::new();
        fleethub_mqtt::encode(packet, &mut bytes).expect("test packets encode");
        self.send_bytes(&bytes).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The hub may already have closed the connection; tests then observe that on receive.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or `None` when the hub closed the connection. Panics after `WAIT`.
    pub async fn receive(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.receive_inner())
            .await
            .expect("the hub answered or closed in time")
    }

    /// Like `receive`, but without a deadline: for tasks that run until the hub goes away.
    pub async fn receive_or_closed(&mut self) -> Option<Packet> {
        self.receive_inner().await
    }

    async fn receive_inner(&mut self) -> Option<Packet> {
        loop {
            match fleethub_mqtt::decode(&mut self.buffer, usize::MAX >> 4) {
                Ok(Some(packet)) => return Some(packet),
                Ok(None) => {}
                Err(error) => panic!("the hub sent a malformed packet: {error}"),
            }
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next PUBLISH, skipping acknowledgements.
    pub async fn receive_publish(&mut self) -> Publish {
        loop {
            match self.receive().await {
                Some(Packet::Publish(publish)) => return publish,
                Some(Packet::PubAck(_) | Packet::SubAck(_)) => continue,
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
    }

    /// Asserts the hub closes the connection (after possibly sending some acknowledgements first).
    pub async fn expect_closed(&mut self) {
        self.expect_closed_because("the hub should close the connection")
            .await;
    }

    pub async fn expect_closed_because(&mut self, case: &str) {
        loop {
            match tokio::time::timeout(WAIT, self.receive_inner()).await {
                Err(_) => panic!("{case}: the connection is still open after {WAIT:?}"),
                Ok(None) => return,
                Ok(Some(Packet::ConnAck(_) | Packet::PubAck(_) | Packet::SubAck(_))) => continue,
                Ok(Some(other)) => {
                    panic!("{case}: expected the hub to close the connection, got {other:?}")
                }
            }
        }
    }
}

/// A REST client for tests: real HTTPS trusting the hub's CA, service SAS tokens signed like the Python SDK
/// signs them, and replies decoded with Azure's error header.
pub struct ServiceApi {
    pub client: reqwest::Client,
    pub base: String,
    /// `localhost:port`, the HostName a service connection string would carry.
    pub host: String,
    policy_name: String,
    policy_key: Vec<u8>,
}

pub struct Reply {
    pub status: reqwest::StatusCode,
    pub error_code: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    /// Asserts the status and that the body says `says` (the whole body is in the message when not).
    pub fn assert_refused(&self, status: reqwest::StatusCode, says: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.body.to_string().contains(says),
            "expected {says:?} in {}",
            self.body
        );
    }
}

impl ServiceApi {
    pub fn new(
        https_address: std::net::SocketAddr,
        ca_pem: &str,
        policy_name: &str,
        policy_key_base64: &str,
    ) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(certificate.expect("CA PEM parses"))
                .expect("CA certificate is usable");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .expect("HTTP client");
        let port = https_address.port();
        Self {
            client,
            base: format!("https://localhost:{port}"),
            host: format!("localhost:{port}"),
            policy_name: policy_name.to_owned(),
            policy_key: decode_key(policy_key_base64).expect("policy keys are base64"),
        }
    }

    /// For a hub in this process, with one of its built-in policies.
    pub fn for_hub(hub: &TestHub, policy_name: &str) -> Self {
        let policy = hub.policy(policy_name);
        Self::new(
            hub.hub.https_address,
            &hub.hub.ca_pem,
            policy_name,
            &policy.primary_key,
        )
    }

    /// A token for this client's policy.
    pub fn token(&self, expiry_unix: u64) -> String {
        generate_sas_token(
            &self.host,
            &self.policy_key,
            expiry_unix,
            Some(&self.policy_name),
        )
    }

    /// A request signed with this client's policy.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Reply {
        let token = self.token(unix_now() + 3600);
        let body = body.map(|body| serde_json::to_vec(&body).expect("JSON serialises"));
        self.call(Some(&token), method, path, headers, body).await
    }

    /// A request with any token (or none) and any body bytes.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut request = self.client.request(
            method,
            format!("{}{path}{separator}api-version=2021-04-12", self.base),
        );
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json; charset=utf-8")
                .body(body);
        }
        let response = request.send().await.expect("the hub answers");
        let status = response.status();
        let headers = response.headers().clone();
        let error_code = response
            .headers()
            .get("iothub-errorcode")
            .map(|value| value.to_str().expect("ASCII header").to_owned());
        let text = response.text().await.expect("a readable body");
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Reply {
            status,
            error_code,
            headers,
            body,
        }
    }
}
