//! The client against a scripted MQTT server over real TLS and WebSocket on loopback: each connect failure
//! the errors promise to tell apart, and twin, method and desired-patch exchanges checked packet by packet.
//! No fleethub hub is involved (the SDK must not depend on it); the hub's own tests drive this SDK end to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fleethub_device::{
    ConnectError, ConnectReturnCode, ConnectStage, ConnectionState, DesiredPatchStream,
    DeviceClient, DeviceClientOptions, DisconnectReason, MethodRequest, MethodResponse,
    ReconnectPolicy, Transport, TwinError,
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

    /// Expects a twin GET, acknowledges it and answers 200 with `desired` as the desired section, in a QoS 1
    /// PUBLISH with `packet_id` whose PUBACK it awaits.
    async fn answer_twin_get(&mut self, desired: &Value, packet_id: u16) {
        let get = self.receive_publish().await;
        assert!(
            get.topic.starts_with("$iothub/twin/GET/?$rid="),
            "{}",
            get.topic
        );
        let twin = json!({"desired": desired, "reported": {"$version": 1}});
        let topic = format!("$iothub/twin/res/200/?$rid={}", rid_of(&get.topic));
        self.publish(&topic, packet_id, twin.to_string().as_bytes())
            .await;
        self.expect_puback(packet_id).await;
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

/// Subscribes to desired patches and answers the stream's opening twin GET with `desired`; returns the
/// stream and its first item.
async fn desired_stream(
    client: &DeviceClient,
    server: &mut ServerConnection,
    desired: Value,
) -> (DesiredPatchStream, Option<Value>) {
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move { client.desired_patches().await }
    });
    server
        .grant_subscription("$iothub/twin/PATCH/properties/desired/#")
        .await;
    let mut patches = subscribing.await.expect("task").expect("subscribed");
    let reading = tokio::spawn(async move {
        let first = patches.next().await;
        (patches, first)
    });
    server.grant_subscription("$iothub/twin/res/#").await;
    server.answer_twin_get(&desired, 100).await;
    tokio::time::timeout(WAIT, reading)
        .await
        .expect("the first item in time")
        .expect("task")
}

async fn next_item(patches: &mut DesiredPatchStream) -> Option<Value> {
    tokio::time::timeout(WAIT, patches.next())
        .await
        .expect("an item within the wait")
}

#[tokio::test]
async fn desired_stream_starts_with_the_twin_then_yields_newer_patches_in_order() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| options).await;
    let (mut patches, first) =
        desired_stream(&client, &mut server, json!({"fw": "1.0", "$version": 3})).await;
    assert_eq!(first, Some(json!({"fw": "1.0", "$version": 3})));

    for (packet_id, version, payload) in [
        (1, 3, r#"{"fw":"1.0","$version":3}"#),
        (2, 4, r#"{"fw":"2.0","$version":4}"#),
        (3, 4, r#"{"fw":"2.0","$version":4}"#),
        (4, 5, r#"{"fw":null,"$version":5}"#),
    ] {
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        server.publish(&topic, packet_id, payload.as_bytes()).await;
        server.expect_puback(packet_id).await;
    }
    assert_eq!(
        next_item(&mut patches).await,
        Some(json!({"fw": "2.0", "$version": 4})),
        "version 3 is covered by the twin"
    );
    assert_eq!(
        next_item(&mut patches).await,
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
    let (mut patches, first) =
        desired_stream(&client, &mut server, json!({"step": 1, "$version": 1})).await;
    assert_eq!(first, Some(json!({"step": 1, "$version": 1})));

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
    server
        .answer_twin_get(&json!({"step": 21, "$version": 21}), 30)
        .await;
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
    assert_eq!(
        next_item(&mut patches).await,
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
async fn without_reconnection_a_closed_connection_fails_waiting_requests() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| {
        options.with_reconnect(ReconnectPolicy::never())
    })
    .await;
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

// ---- reconnection and token renewal ----

/// Reconnects within milliseconds, so tests do not wait on the backoff.
fn fast_reconnect(options: DeviceClientOptions) -> DeviceClientOptions {
    options.with_reconnect(
        ReconnectPolicy::default()
            .with_initial_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(50)),
    )
}

async fn wait_for_state(
    client: &DeviceClient,
    what: &str,
    mut predicate: impl FnMut(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut state = client.connection_state();
    tokio::time::timeout(WAIT, state.wait_for(|state| predicate(state)))
        .await
        .unwrap_or_else(|_| panic!("{what} within the wait"))
        .expect("watch open")
        .clone()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The `se` of the SAS token a CONNECT carries.
fn token_expiry(connect: &Connect) -> u64 {
    let password =
        std::str::from_utf8(connect.password.as_deref().expect("password")).expect("UTF-8");
    password
        .parse::<fleethub_protocol::SasToken>()
        .expect("a SAS token")
        .expiry
}

async fn answer_methods(client: &DeviceClient, server: &mut ServerConnection) {
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .on_method(|request: MethodRequest| async move {
                    MethodResponse::ok(json!({"method": request.method_name}))
                })
                .await
        }
    });
    server.grant_subscription("$iothub/methods/POST/#").await;
    subscribing.await.expect("task").expect("subscribed");
}

/// Invokes `method` and expects the handler of `answer_methods` to answer it.
async fn expect_method_answered(server: &mut ServerConnection, method: &str, packet_id: u16) {
    let topic = format!("$iothub/methods/POST/{method}/?$rid=r{packet_id}");
    server.publish(&topic, packet_id, b"{}").await;
    server.expect_puback(packet_id).await;
    let response = server.receive_publish().await;
    assert_eq!(
        response.topic,
        format!("$iothub/methods/res/200/?$rid=r{packet_id}")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&response.payload).expect("JSON"),
        json!({"method": method})
    );
}

#[tokio::test]
async fn dropped_connection_is_reestablished_with_subscriptions_dup_resends_and_a_twin_resync() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, fast_reconnect).await;
    answer_methods(&client, &mut server).await;
    let (mut patches, first) =
        desired_stream(&client, &mut server, json!({"x": 1, "$version": 1})).await;
    assert_eq!(first, Some(json!({"x": 1, "$version": 1})));

    // A reported patch reaches the hub, which drops the connection before acknowledging it.
    let patching = tokio::spawn({
        let client = client.clone();
        async move { client.patch_reported(&json!({"temp": 21})).await }
    });
    let patch = match server.receive().await {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("expected the reported patch, got {other:?}"),
    };
    assert!(!patch.dup);
    // The application waits for the next desired item meanwhile.
    let reading = tokio::spawn(async move {
        let item = patches.next().await;
        (patches, item)
    });
    drop(server);

    let state = wait_for_state(&client, "reconnecting", |state| {
        matches!(state, ConnectionState::Reconnecting { .. })
    })
    .await;
    assert!(
        matches!(
            state,
            ConnectionState::Reconnecting {
                attempt: 1,
                reason: DisconnectReason::HubClosed,
                ..
            }
        ),
        "{state:?}"
    );
    let mut server = hub.accept().await;
    assert!(!server.connect.clean_session);
    assert_eq!(server.connect.client_id, "dev1");
    server.accept_connect().await;

    // Every subscription again, twin responses first; then the patch, same packet id, DUP set; then the
    // stream's twin GET.
    server.grant_subscription("$iothub/twin/res/#").await;
    server
        .grant_subscription("$iothub/twin/PATCH/properties/desired/#")
        .await;
    server.grant_subscription("$iothub/methods/POST/#").await;
    let resent = server.receive_publish().await;
    assert!(resent.dup, "a re-sent publish carries DUP");
    assert_eq!(
        (&resent.packet_id, &resent.topic, &resent.payload),
        (&patch.packet_id, &patch.topic, &patch.payload)
    );
    server
        .answer_twin_get(&json!({"x": 2, "$version": 2}), 41)
        .await;
    let (mut patches, item) = tokio::time::timeout(WAIT, reading)
        .await
        .expect("an item within the wait")
        .expect("task");
    assert_eq!(
        item,
        Some(json!({"x": 2, "$version": 2})),
        "the change made while the device was offline"
    );
    let topic = format!(
        "$iothub/twin/res/204/?$rid={}&$version=7",
        rid_of(&resent.topic)
    );
    server.publish(&topic, 40, b"").await;
    server.expect_puback(40).await;
    assert_eq!(patching.await.expect("task").expect("patch answered"), 7);
    assert!(client.is_connected());

    // The hub's patch for the version the twin already showed is not heard twice.
    server
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=2",
            42,
            br#"{"x":2,"$version":2}"#,
        )
        .await;
    server
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=3",
            43,
            br#"{"x":3,"$version":3}"#,
        )
        .await;
    server.expect_puback(42).await;
    server.expect_puback(43).await;
    assert_eq!(
        next_item(&mut patches).await,
        Some(json!({"x": 3, "$version": 3}))
    );
    expect_method_answered(&mut server, "reboot", 44).await;
}

#[tokio::test]
async fn twin_requests_during_an_outage_wait_for_the_next_connection_or_fail_disconnected() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, server) = connect(&mut hub, |options| {
        fast_reconnect(options).with_operation_timeout(Duration::from_secs(1))
    })
    .await;
    drop(server);
    let mut server = hub.accept().await;
    // CONNACK withheld: the client stays offline past this request's deadline.
    wait_for_state(&client, "reconnecting", |state| {
        matches!(state, ConnectionState::Reconnecting { .. })
    })
    .await;
    let result = client.get_twin().await;
    assert!(
        matches!(result, Err(TwinError::Disconnected)),
        "offline until the deadline: {result:?}"
    );

    let getting = tokio::spawn({
        let client = client.clone();
        async move { client.get_twin().await }
    });
    tokio::task::yield_now().await;
    server.accept_connect().await;
    server.grant_subscription("$iothub/twin/res/#").await;
    server.answer_twin_get(&json!({"$version": 1}), 1).await;
    let twin = getting.await.expect("task").expect("twin");
    assert_eq!(twin["desired"]["$version"], json!(1));
}

#[tokio::test]
async fn connack_5_on_reconnection_stops_the_client_for_good() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, fast_reconnect).await;
    answer_methods(&client, &mut server).await;
    // What the hub does to a device that was disabled or deleted: close, then refuse it.
    drop(server);
    let mut server = hub.accept().await;
    server
        .send(Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        }))
        .await;
    match wait_for_disconnect(&client).await {
        DisconnectReason::ReconnectFailed { attempts, error } => {
            assert_eq!(attempts, 1);
            assert!(
                matches!(
                    *error,
                    ConnectError::Refused {
                        return_code: ConnectReturnCode::NotAuthorized
                    }
                ),
                "{error}"
            );
            assert!(error.is_permanent());
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    assert!(matches!(
        client.get_twin().await,
        Err(TwinError::Disconnected)
    ));
    assert!(!client.is_connected());
    // And it stays stopped: no further attempt within many initial delays.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), hub.accepted.recv())
            .await
            .is_err(),
        "no reconnection after a permanent refusal"
    );
}

#[tokio::test]
async fn transient_refusals_are_retried_until_max_attempts() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, server) = connect(&mut hub, |options| {
        fast_reconnect(options).with_reconnect(
            ReconnectPolicy::default()
                .with_initial_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_millis(50))
                .with_max_attempts(Some(3)),
        )
    })
    .await;
    drop(server);
    for attempt in 1..=3u32 {
        let mut server = hub.accept().await;
        let state = client.connection_state().borrow().clone();
        assert!(
            matches!(state, ConnectionState::Reconnecting { attempt: seen, .. } if seen == attempt),
            "{state:?}"
        );
        server
            .send(Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::ServerUnavailable,
            }))
            .await;
    }
    match wait_for_disconnect(&client).await {
        DisconnectReason::ReconnectFailed { attempts: 3, error } => assert!(
            matches!(
                *error,
                ConnectError::Refused {
                    return_code: ConnectReturnCode::ServerUnavailable
                }
            ),
            "{error}"
        ),
        other => panic!("expected the attempts to run out, got {other:?}"),
    }
}

#[tokio::test]
async fn disconnect_while_reconnecting_stops_at_once() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, server) = connect(&mut hub, fast_reconnect).await;
    drop(server);
    // The hub never answers the new CONNECT.
    let _silent = hub.accept().await;
    wait_for_state(&client, "reconnecting", |state| {
        matches!(state, ConnectionState::Reconnecting { .. })
    })
    .await;
    client
        .clone()
        .disconnect()
        .await
        .expect("stopping while reconnecting is clean");
    assert_eq!(
        wait_for_disconnect(&client).await,
        DisconnectReason::ClientRequested
    );
}

#[tokio::test]
async fn missing_pingresp_counts_as_a_lost_connection() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| {
        fast_reconnect(options).with_keep_alive(Duration::from_secs(1))
    })
    .await;
    assert_eq!(server.receive().await, Some(Packet::PingReq));
    let state = wait_for_state(&client, "reconnecting", |state| {
        matches!(state, ConnectionState::Reconnecting { .. })
    })
    .await;
    assert!(
        matches!(
            state,
            ConnectionState::Reconnecting {
                reason: DisconnectReason::KeepAliveTimeout,
                ..
            }
        ),
        "{state:?}"
    );
    assert_eq!(hub.accept().await.connect.client_id, "dev1");
}

#[tokio::test]
async fn sas_token_is_renewed_before_it_expires_and_methods_still_arrive() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| {
        fast_reconnect(options).with_sas_ttl(Duration::from_secs(3))
    })
    .await;
    let first_expiry = token_expiry(&server.connect);
    answer_methods(&client, &mut server).await;

    // Before the token runs out: DISCONNECT, then a new connection with a later token.
    assert_eq!(server.receive().await, Some(Packet::Disconnect));
    assert!(
        unix_now() < first_expiry,
        "renewed before the token expired"
    );
    let mut server = hub.accept().await;
    assert!(token_expiry(&server.connect) > first_expiry);
    assert!(!server.connect.clean_session);
    server.accept_connect().await;
    server.grant_subscription("$iothub/methods/POST/#").await;
    wait_for_state(&client, "connected again", |state| {
        *state == ConnectionState::Connected
    })
    .await;
    expect_method_answered(&mut server, "afterRenewal", 1).await;
}

#[tokio::test]
async fn twin_request_unanswered_at_renewal_is_sent_again_on_the_new_connection() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let (client, mut server) = connect(&mut hub, |options| {
        fast_reconnect(options).with_sas_ttl(Duration::from_secs(3))
    })
    .await;
    let getting = tokio::spawn({
        let client = client.clone();
        async move { client.get_twin().await }
    });
    server.grant_subscription("$iothub/twin/res/#").await;
    let unanswered = server.receive_publish().await;

    // Renewal waits for the response, and goes ahead without it before the token expires.
    assert_eq!(server.receive().await, Some(Packet::Disconnect));
    let mut server = hub.accept().await;
    server.accept_connect().await;
    server.grant_subscription("$iothub/twin/res/#").await;
    let again = server.receive_publish().await;
    assert_eq!(again.topic, unanswered.topic, "the same request, same $rid");
    let topic = format!("$iothub/twin/res/200/?$rid={}", rid_of(&again.topic));
    server
        .publish(
            &topic,
            1,
            br#"{"desired":{"$version":4},"reported":{"$version":1}}"#,
        )
        .await;
    server.expect_puback(1).await;
    let twin = getting
        .await
        .expect("task")
        .expect("answered after the renewal");
    assert_eq!(twin["desired"]["$version"], json!(4));
}

/// A valid-looking token (the signature is not checked by the scripted hub) expiring at `expiry_unix`.
fn ready_made_token_connection_string(expiry_unix: u64) -> String {
    format!(
        "HostName=localhost;DeviceId=dev1;SharedAccessSignature=SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig=e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D&se={expiry_unix}"
    )
}

#[tokio::test]
async fn ready_made_token_cannot_be_renewed_so_the_client_stops_when_it_expires() {
    let mut hub = ScriptedHub::start(Transport::Mqtt).await;
    let text = ready_made_token_connection_string(unix_now() + 2);
    let connecting = tokio::spawn(DeviceClient::connect(&text, fast_reconnect(hub.options())));
    let mut server = hub.accept().await;
    server.accept_connect().await;
    let client = connecting.await.expect("task").expect("connects");
    assert_eq!(server.receive().await, Some(Packet::Disconnect));
    assert_eq!(
        wait_for_disconnect(&client).await,
        DisconnectReason::SasTokenExpired
    );

    let expired = ready_made_token_connection_string(unix_now() - 1);
    let result = DeviceClient::connect(&expired, hub.options()).await;
    match result {
        Err(error @ ConnectError::SasTokenExpired { .. }) => assert!(error.is_permanent()),
        other => panic!("expected an expired token, got {other:?}"),
    }
}
