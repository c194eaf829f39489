//! The client against a scripted MQTT server over real TLS and WebSocket on loopback: each connect failure
//! the errors promise to tell apart, and twin, method and desired-patch exchanges checked packet by packet.
//! No fleethub hub is involved (the SDK must not depend on it); the hub's own tests drive this SDK end to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fleethub_device::{
    ConnectError, ConnectReturnCode, ConnectStage, ConnectionState, DeviceClient,
    DeviceClientOptions, DisconnectReason, MethodRequest, MethodResponse, Transport, TwinError,
};
use fleethub_mqtt::{
    ConnAck, Connect, Packet, PacketId, Publish, QoS, SubAck, SubscribeReturnCode,
};
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const WAIT: Duration = Duration::from_secs(10);
/// base64 of 32 bytes; any key works, the scripted hub checks only the token's shape.
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// A TLS listener on 127.0.0.1 with a fresh CA, handing each accepted connection (after its CONNECT) to
/// the test.
struct ScriptedHub {
    address: SocketAddr,
    ca_pem: String,
    accepted: mpsc::Receiver<ServerConnection>,
}

struct ServerConnection {
    connect: Connect,
    io: ServerIo,
    buffer: BytesMut,
    /// The request path of the WebSocket upgrade, if any.
    websocket_path: Option<String>,
}

enum ServerIo {
    Tls(Box<ServerTls>),
    WebSocket(Box<WebSocketStream<ServerTls>>),
}

fn certificate_authority() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let certificate = params.self_signed(&key).expect("CA certificate");
    (certificate.pem(), Issuer::new(params, key))
}

impl ScriptedHub {
    async fn start(transport: Transport) -> Self {
        let (ca_pem, issuer) = certificate_authority();
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let chain: Vec<CertificateDer<'static>> = vec![server.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (sender, accepted) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    // Handshake failures (a client distrusting our CA) just end this connection.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(connection) = ServerConnection::accept(tls, transport).await else {
                        return;
                    };
                    let _ = sender.send(connection).await;
                });
            }
        });
        Self {
            address,
            ca_pem,
            accepted,
        }
    }

    fn options(&self) -> DeviceClientOptions {
        DeviceClientOptions::default()
            .with_ca_pem(self.ca_pem.clone())
            .with_port(self.address.port())
    }

    /// The next connection that sent CONNECT.
    async fn accept(&mut self) -> ServerConnection {
        tokio::time::timeout(WAIT, self.accepted.recv())
            .await
            .expect("a connection within the wait")
            .expect("open")
    }
}

fn connection_string(device: &str) -> String {
    format!("HostName=localhost;DeviceId={device};SharedAccessKey={KEY}")
}

impl ServerConnection {
    async fn accept(tls: ServerTls, transport: Transport) -> Option<Self> {
        let (io, websocket_path) = match transport {
            Transport::WebSocket => {
                let mut path = None;
                // The result type is the one tungstenite's `Callback` requires.
                #[allow(clippy::result_large_err)]
                let callback = |request: &Request, mut response: Response| {
                    path = Some(request.uri().path().to_owned());
                    let offered = request.headers().get("Sec-WebSocket-Protocol").cloned();
                    if let Some(protocol) = offered {
                        response
                            .headers_mut()
                            .insert("Sec-WebSocket-Protocol", protocol);
                    }
                    Ok(response)
                };
                let socket = tokio_tungstenite::accept_hdr_async(tls, callback)
                    .await
                    .ok()?;
                (ServerIo::WebSocket(Box::new(socket)), path)
            }
            _ => (ServerIo::Tls(Box::new(tls)), None),
        };
        let mut connection = Self {
            connect: Connect {
                protocol_level: 0,
                clean_session: true,
                keep_alive: 0,
                client_id: String::new(),
                will: None,
                username: None,
                password: None,
            },
            io,
            buffer: BytesMut::new(),
            websocket_path,
        };
        match connection.receive().await? {
            Packet::Connect(connect) => connection.connect = connect,
            other => panic!("expected CONNECT, got {other:?}"),
        }
        Some(connection)
    }

    /// The next packet, or `None` when the client closed the connection.
    async fn receive(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.receive_unbounded())
            .await
            .expect("a packet within the wait")
    }

    async fn receive_unbounded(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) =
                fleethub_mqtt::decode(&mut self.buffer, 1 << 20).expect("client sends valid MQTT")
            {
                return Some(packet);
            }
            match &mut self.io {
                ServerIo::Tls(stream) => {
                    self.buffer.reserve(1024);
                    match stream.read_buf(&mut self.buffer).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
                ServerIo::WebSocket(socket) => match socket.next().await {
                    Some(Ok(Message::Binary(data))) => self.buffer.extend_from_slice(&data),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) if other.is_close() => return None,
                    Some(Ok(other)) => panic!("unexpected WebSocket message {other:?}"),
                    Some(Err(_)) | None => return None,
                },
            }
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut bytes = BytesMut::new();
        fleethub_mqtt::encode(&packet, &mut bytes).expect("valid packet");
        match &mut self.io {
            ServerIo::Tls(stream) => {
                stream.write_all(&bytes).await.expect("write");
                stream.flush().await.expect("flush");
            }
            ServerIo::WebSocket(socket) => socket
                .send(Message::Binary(bytes.freeze()))
                .await
                .expect("send"),
        }
    }

    async fn accept_connect(&mut self) {
        self.send(Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }))
        .await;
    }

    /// Expects a SUBSCRIBE of exactly `filter` at QoS 1 and grants it.
    async fn grant_subscription(&mut self, filter: &str) {
        match self.receive().await {
            Some(Packet::Subscribe(subscribe)) => {
                assert_eq!(
                    subscribe.filters,
                    vec![(filter.to_owned(), QoS::AtLeastOnce)]
                );
                let return_codes = vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)];
                self.send(Packet::SubAck(SubAck {
                    packet_id: subscribe.packet_id,
                    return_codes,
                }))
                .await;
            }
            other => panic!("expected SUBSCRIBE {filter}, got {other:?}"),
        }
    }

    /// Expects a QoS 1 PUBLISH, acknowledges it and returns it.
    async fn receive_publish(&mut self) -> Publish {
        match self.receive().await {
            Some(Packet::Publish(publish)) => {
                assert_eq!(publish.qos, QoS::AtLeastOnce, "{}", publish.topic);
                self.send(Packet::PubAck(publish.packet_id.expect("QoS 1 has an id")))
                    .await;
                publish
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, packet_id: u16, payload: &[u8]) {
        self.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_owned(),
            packet_id: Some(packet_id_of(packet_id)),
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
    }

    async fn expect_puback(&mut self, packet_id: u16) {
        assert_eq!(
            self.receive().await,
            Some(Packet::PubAck(packet_id_of(packet_id)))
        );
    }
}

fn packet_id_of(value: u16) -> PacketId {
    PacketId::new(value).expect("non-zero")
}

fn rid_of(topic: &str) -> &str {
    topic.split_once("?$rid=").expect("topic has a $rid").1
}

async fn connect(
    hub: &mut ScriptedHub,
    adjust: impl FnOnce(DeviceClientOptions) -> DeviceClientOptions,
) -> (DeviceClient, ServerConnection) {
    let options = adjust(hub.options());
    let connecting = tokio::spawn(DeviceClient::connect(&connection_string("dev1"), options));
    let mut server = hub.accept().await;
    server.accept_connect().await;
    let client = connecting.await.expect("task").expect("connects");
    (client, server)
}

async fn wait_for_disconnect(client: &DeviceClient) -> DisconnectReason {
    let mut state = client.connection_state();
    let state = tokio::time::timeout(
        WAIT,
        state.wait_for(|state| matches!(state, ConnectionState::Disconnected(_))),
    )
    .await
    .expect("disconnected within the wait")
    .expect("watch open")
    .clone();
    match state {
        ConnectionState::Disconnected(reason) => reason,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn connect_sends_azure_credentials_with_clean_session_off() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, server) = connect(&mut hub, |options| options).await;
    let connect = &server.connect;
    assert_eq!(connect.protocol_level, 4);
    assert!(!connect.clean_session);
    assert_eq!(connect.keep_alive, 60);
    assert_eq!(connect.client_id, "dev1");
    let username = connect.username.as_deref().expect("username");
    assert!(
        username.starts_with(
            "localhost/dev1/?api-version=2021-04-12&DeviceClientType=fleethub-device%2F"
        ),
        "{username}"
    );
    let password =
        std::str::from_utf8(connect.password.as_deref().expect("password")).expect("UTF-8");
    assert!(
        password.starts_with("SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig="),
        "{password}"
    );
    assert!(client.is_connected());
}

#[tokio::test]
async fn twin_get_and_reported_patch_are_correlated_by_rid() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;

    let getting = tokio::spawn({
        let client = client.clone();
        async move { client.get_twin().await }
    });
    server.grant_subscription("$iothub/twin/res/#").await;
    let get = server.receive_publish().await;
    assert!(
        get.topic.starts_with("$iothub/twin/GET/?$rid="),
        "{}",
        get.topic
    );
    let twin = json!({"desired": {"fw": "1.0", "$version": 3}, "reported": {"$version": 1}});
    let topic = format!("$iothub/twin/res/200/?$rid={}", rid_of(&get.topic));
    server
        .publish(&topic, 10, twin.to_string().as_bytes())
        .await;
    server.expect_puback(10).await;
    assert_eq!(getting.await.expect("task").expect("twin"), twin);

    let patching = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .patch_reported(&json!({"firmwareStatus": "standBy"}))
                .await
        }
    });
    let patch = server.receive_publish().await;
    assert!(
        patch
            .topic
            .starts_with("$iothub/twin/PATCH/properties/reported/?$rid="),
        "{}",
        patch.topic
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&patch.payload).expect("JSON"),
        json!({"firmwareStatus": "standBy"})
    );
    let topic = format!(
        "$iothub/twin/res/204/?$rid={}&$version=7",
        rid_of(&patch.topic)
    );
    server.publish(&topic, 11, b"").await;
    server.expect_puback(11).await;
    assert_eq!(patching.await.expect("task").expect("version"), 7);

    let refused = tokio::spawn({
        let client = client.clone();
        async move { client.patch_reported(&json!({"bad": true})).await }
    });
    let patch = server.receive_publish().await;
    let topic = format!("$iothub/twin/res/400/?$rid={}", rid_of(&patch.topic));
    server
        .publish(&topic, 12, br#"{"errorCode":400004,"message":"bad patch"}"#)
        .await;
    match refused.await.expect("task") {
        Err(TwinError::Status {
            status: 400,
            message,
            ..
        }) => assert_eq!(message, "bad patch"),
        other => panic!("expected status 400, got {other:?}"),
    }
}

#[tokio::test]
async fn method_requests_are_answered_with_the_handlers_response() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .on_method(|request: MethodRequest| async move {
                    MethodResponse::ok(
                        json!({"method": request.method_name, "payload": request.payload}),
                    )
                })
                .await
        }
    });
    server.grant_subscription("$iothub/methods/POST/#").await;
    subscribing.await.expect("task").expect("subscribed");

    server
        .publish(
            "$iothub/methods/POST/firmwareUpdate/?$rid=42",
            5,
            br#"{"fwPackageUri":"https://x"}"#,
        )
        .await;
    server.expect_puback(5).await;
    let response = server.receive_publish().await;
    assert_eq!(response.topic, "$iothub/methods/res/200/?$rid=42");
    let payload: Value = serde_json::from_slice(&response.payload).expect("JSON");
    assert_eq!(
        payload,
        json!({"method": "firmwareUpdate", "payload": {"fwPackageUri": "https://x"}})
    );
}

#[tokio::test]
async fn desired_patches_arrive_in_order_on_the_stream() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move { client.desired_patches().await }
    });
    server
        .grant_subscription("$iothub/twin/PATCH/properties/desired/#")
        .await;
    let mut patches = subscribing.await.expect("task").expect("subscribed");

    server
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=4",
            1,
            br#"{"fw":"2.0","$version":4}"#,
        )
        .await;
    server
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=4",
            2,
            br#"{"fw":"2.0","$version":4}"#,
        )
        .await;
    server
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=5",
            3,
            br#"{"fw":null,"$version":5}"#,
        )
        .await;
    for packet_id in 1..=3 {
        server.expect_puback(packet_id).await;
    }
    let first = tokio::time::timeout(WAIT, patches.next())
        .await
        .expect("patch");
    assert_eq!(first, Some(json!({"fw": "2.0", "$version": 4})));
    let second = tokio::time::timeout(WAIT, patches.next())
        .await
        .expect("patch");
    assert_eq!(
        second,
        Some(json!({"fw": null, "$version": 5})),
        "the duplicate of version 4 is skipped"
    );

    let again = client.desired_patches().await;
    assert!(
        matches!(again, Err(fleethub_device::SubscribeError::AlreadyActive)),
        "{again:?}"
    );
}

#[tokio::test]
async fn application_that_falls_behind_gets_the_full_desired_section_instead_of_missed_patches() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move { client.desired_patches().await }
    });
    server
        .grant_subscription("$iothub/twin/PATCH/properties/desired/#")
        .await;
    let mut patches = subscribing.await.expect("task").expect("subscribed");

    // More patches than the stream buffers, none read yet. Each PUBACK means the client has handled it.
    for version in 2..=21u16 {
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        server
            .publish(
                &topic,
                version,
                json!({"step": version, "$version": version})
                    .to_string()
                    .as_bytes(),
            )
            .await;
        server.expect_puback(version).await;
    }

    // The stream catches up from the twin rather than yielding a gap.
    let reading = tokio::spawn(async move {
        let first = patches.next().await;
        (first, patches)
    });
    server.grant_subscription("$iothub/twin/res/#").await;
    let get = server.receive_publish().await;
    let twin = json!({"desired": {"step": 21, "$version": 21}, "reported": {"$version": 1}});
    let topic = format!("$iothub/twin/res/200/?$rid={}", rid_of(&get.topic));
    server
        .publish(&topic, 30, twin.to_string().as_bytes())
        .await;
    server.expect_puback(30).await;
    let (first, mut patches) = tokio::time::timeout(WAIT, reading)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!(first, Some(json!({"step": 21, "$version": 21})));

    server
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=21",
            31,
            br#"{"step":21,"$version":21}"#,
        )
        .await;
    server
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=22",
            32,
            br#"{"step":22,"$version":22}"#,
        )
        .await;
    let next = tokio::time::timeout(WAIT, patches.next())
        .await
        .expect("patch");
    assert_eq!(
        next,
        Some(json!({"step": 22, "$version": 22})),
        "version 21 is not repeated"
    );
}

#[tokio::test]
async fn disconnect_sends_disconnect_and_closes_every_clone() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;
    let other = client.clone();
    client.disconnect().await.expect("clean disconnect");
    assert_eq!(server.receive().await, Some(Packet::Disconnect));
    assert_eq!(server.receive().await, None);
    assert_eq!(
        wait_for_disconnect(&other).await,
        DisconnectReason::ClientRequested
    );
    assert!(matches!(
        other.get_twin().await,
        Err(TwinError::Disconnected)
    ));
    other
        .disconnect()
        .await
        .expect("disconnecting twice is not an error");
}

#[tokio::test]
async fn dropping_every_handle_disconnects_cleanly() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;
    drop(client);
    assert_eq!(server.receive().await, Some(Packet::Disconnect));
}

#[tokio::test]
async fn hub_closing_the_connection_fails_waiting_requests() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;
    let getting = tokio::spawn({
        let client = client.clone();
        async move { client.get_twin().await }
    });
    server.grant_subscription("$iothub/twin/res/#").await;
    server.receive_publish().await;
    drop(server);
    assert!(matches!(
        getting.await.expect("task"),
        Err(TwinError::Disconnected)
    ));
    assert_eq!(
        wait_for_disconnect(&client).await,
        DisconnectReason::HubClosed
    );
}

#[tokio::test]
async fn twin_request_without_response_times_out() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| {
        options.with_operation_timeout(Duration::from_millis(300))
    })
    .await;
    let getting = tokio::spawn({
        let client = client.clone();
        async move { client.get_twin().await }
    });
    server.grant_subscription("$iothub/twin/res/#").await;
    server.receive_publish().await;
    let result = getting.await.expect("task");
    assert!(
        matches!(result, Err(TwinError::Timeout(timeout)) if timeout == Duration::from_millis(300)),
        "{result:?}"
    );
    assert!(
        client.is_connected(),
        "a timeout does not close the connection"
    );
}

#[tokio::test]
async fn idle_client_sends_pingreq_after_the_keep_alive() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| {
        options.with_keep_alive(Duration::from_secs(1))
    })
    .await;
    assert_eq!(server.connect.keep_alive, 1);
    assert_eq!(server.receive().await, Some(Packet::PingReq));
    server.send(Packet::PingResp).await;
    assert_eq!(
        server.receive().await,
        Some(Packet::PingReq),
        "pings continue while idle"
    );
    assert!(client.is_connected());
}

#[tokio::test]
async fn websocket_transport_upgrades_to_the_azure_path_and_speaks_mqtt() {
    let mut hub = ScriptedHub::start(Transport::WebSocket).await;
    let (client, mut server) = connect(&mut hub, |options| {
        options.with_transport(Transport::WebSocket)
    })
    .await;
    assert_eq!(server.websocket_path.as_deref(), Some("/$iothub/websocket"));
    assert_eq!(server.connect.client_id, "dev1");

    let getting = tokio::spawn({
        let client = client.clone();
        async move { client.get_twin().await }
    });
    server.grant_subscription("$iothub/twin/res/#").await;
    let get = server.receive_publish().await;
    let topic = format!("$iothub/twin/res/200/?$rid={}", rid_of(&get.topic));
    server
        .publish(
            &topic,
            1,
            br#"{"desired":{"$version":1},"reported":{"$version":1}}"#,
        )
        .await;
    server.expect_puback(1).await;
    assert_eq!(
        getting.await.expect("task").expect("twin")["desired"]["$version"],
        json!(1)
    );
    client.disconnect().await.expect("clean disconnect");
    assert_eq!(server.receive().await, Some(Packet::Disconnect));
}

#[tokio::test]
async fn refused_connack_reports_its_return_code() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    for code in [
        ConnectReturnCode::BadUserNameOrPassword,
        ConnectReturnCode::NotAuthorized,
    ] {
        let connecting = tokio::spawn(DeviceClient::connect(
            &connection_string("dev1"),
            hub.options(),
        ));
        let mut server = hub.accept().await;
        server
            .send(Packet::ConnAck(ConnAck {
                session_present: false,
                code,
            }))
            .await;
        match connecting.await.expect("task") {
            Err(ConnectError::Refused { return_code }) => assert_eq!(return_code, code),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn hub_closing_before_connack_and_silent_hub_are_reported() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let connecting = tokio::spawn(DeviceClient::connect(
        &connection_string("dev1"),
        hub.options(),
    ));
    drop(hub.accept().await);
    assert!(matches!(
        connecting.await.expect("task"),
        Err(ConnectError::ClosedBeforeConnAck)
    ));

    let options = hub
        .options()
        .with_connect_timeout(Duration::from_millis(300));
    let connecting = tokio::spawn(DeviceClient::connect(&connection_string("dev1"), options));
    let _silent = hub.accept().await;
    let result = connecting.await.expect("task");
    assert!(
        matches!(
            result,
            Err(ConnectError::Timeout {
                stage: ConnectStage::ConnAck,
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn untrusted_server_certificate_is_told_apart_from_other_failures() {
    let hub = ScriptedHub::start(Transport::Mqtt).await;
    let (other_ca, _issuer) = certificate_authority();
    let options = hub.options().with_ca_pem(other_ca);
    let result = DeviceClient::connect(&connection_string("dev1"), options).await;
    match result {
        // Both test CAs have an empty subject, so rustls reports a bad signature rather than an unknown issuer.
        Err(ConnectError::ServerCertificateRejected { host, reason }) => {
            assert_eq!(host, "localhost");
            assert!(reason.starts_with("invalid peer certificate"), "{reason}");
        }
        other => panic!("expected a rejected certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn closed_port_missing_ca_and_bad_connection_string_are_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let hub = ScriptedHub::start(Transport::Mqtt).await;
    let options = hub.options().with_port(port);
    let result = DeviceClient::connect(
        &format!("HostName=127.0.0.1;DeviceId=dev1;SharedAccessKey={KEY}"),
        options,
    )
    .await;
    assert!(
        matches!(result, Err(ConnectError::TcpRefused { address }) if address.port() == port),
        "{result:?}"
    );

    let result =
        DeviceClient::connect(&connection_string("dev1"), DeviceClientOptions::default()).await;
    assert!(
        matches!(result, Err(ConnectError::MissingCaCertificate)),
        "{result:?}"
    );

    let result =
        DeviceClient::connect("HostName=localhost;SharedAccessKey=abcd", hub.options()).await;
    let error = result.expect_err("no DeviceId");
    assert_eq!(
        error.to_string(),
        "invalid connection string: connection string has no DeviceId"
    );
}

#[tokio::test]
async fn gateway_host_name_is_dialled_while_host_name_is_authenticated() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let port = hub.address.port();
    let text = format!(
        "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey={KEY};GatewayHostName=localhost:{port}"
    );
    let options = DeviceClientOptions::default().with_ca_pem(hub.ca_pem.clone());
    let connecting = tokio::spawn(DeviceClient::connect(&text, options));
    let mut server = hub.accept().await;
    server.accept_connect().await;
    connecting
        .await
        .expect("task")
        .expect("connects through the gateway's port");
    let username = server.connect.username.as_deref().expect("username");
    assert!(
        username.starts_with("myhub.azure-devices.net/dev1/?"),
        "{username}"
    );
    let password =
        std::str::from_utf8(server.connect.password.as_deref().expect("password")).expect("UTF-8");
    assert!(
        password.contains("sr=myhub.azure-devices.net%2Fdevices%2Fdev1"),
        "{password}"
    );
}
