//! The MQTT gateway: one task per device connection (TLS or WebSocket underneath), speaking MQTT 3.1.1 with
//! our own codec, translating Azure's topics into service calls and pushes into publishes.
//!
//! Lifecycle of a connection: CONNECT within the connect timeout → authenticate → register in the session
//! table (taking over an older connection with the same client id) → restore persisted subscriptions
//! (clean-session 0) → record `Connected` → CONNACK → packet loop → unregister → record `Disconnected`
//! unless a newer connection took over.
//!
//! Cancellation: the loop may stop at any await point (peer gone, shutdown). Store writes it started run to
//! completion regardless (the store finishes every queued write), so a dropped connection never cuts a twin
//! write in half; the device just misses the acknowledgement and retries with DUP, which is harmless.
//!
//! Telemetry (`devices/{id}/messages/events/...`) is appended to the event log and, at QoS 1, acknowledged
//! only once it is durable. Publishes are not held up meanwhile: each queues its append (in arrival order,
//! so the device's messages stay in order) and its PUBACK waits in a per-connection queue of at most
//! `telemetry_in_flight` entries, sent in arrival order as the appends complete (MQTT 3.1.1 §4.6). Any
//! other QoS 1 publish first waits for the telemetry before it, so PUBACKs never overtake each other. A
//! message over IoT Hub's 256 KB closes the connection, as Azure does over MQTT. A Will message on the
//! telemetry topic becomes telemetry (`iothub-MessageType: Will`) when the connection ends without
//! DISCONNECT.
//!
//! Cloud-to-device messages are read from the device's queue by the connection's `c2d::Outbox` (woken by
//! enqueues, subscriptions and PUBACKs), published at QoS 1 and completed at the device's PUBACK.
//!
//! Desired patches go through the connection's `desired::DesiredPatches`: at QoS 1 where the subscription
//! grants it (packet ids reserved from the outbox, one id space per connection), and a persistent session
//! gets its catch-up patch right after the CONNACK, before anything else.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fleethub_core::identity::IdentityKey;
use fleethub_eventlog::AppendReceipt;
use fleethub_mqtt::{
    ConnAck, ConnectReturnCode, DecodeError, Packet, PacketId, Publish, QoS, SubAck,
    SubscribeReturnCode,
};
use fleethub_protocol::events::{AuthScope, MessageOrigin, model_id_from_username};
use fleethub_protocol::ids::{ClientId, IfMatch};
use fleethub_protocol::property_bag::PropertyBag;
use fleethub_protocol::rest::ConnectionState;
use fleethub_protocol::topics::{self, DeviceTopic};
use fleethub_store::{StoreError, StoredSession, StoredSubscription, TwinChange};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::authenticate_device;
use crate::events::telemetry_event;
use crate::methods::{MethodReply, ReplyOutcome};
use crate::services::{Services, record_connection_state};
use crate::sessions::{CloseReason, ConnectionShared, Outbound, SubscriptionSet};
use crate::throttle::OperationClass;

/// Azure caps the keep-alive at 1767 s and drops a client after 1.5 times it without traffic.
const MAX_KEEP_ALIVE_SECONDS: u64 = 1767;
/// Bytes reserved per read when no packet is partially buffered; small so idle connections stay small.
const READ_RESERVE: usize = 1024;
/// How long a connection that is closing waits for its last telemetry to become durable, to acknowledge it.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(2);
/// How long a connection that is closing tries to write what it still has queued.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Why a connection ended; logged.
enum Ending {
    PeerClosed,
    PeerDisconnected,
    KeepAliveExpired,
    TokenExpired,
    Closed(CloseReason),
    ProtocolViolation(String),
    /// The event log could not take a message (it failed or is closing); the device gets no PUBACK.
    EventLog(String),
    /// The device's telemetry went over a rate limit for too long (`throttle.rs`).
    Throttled(String),
    Io(std::io::Error),
    Shutdown,
}

impl Ending {
    /// Whether the Will message goes out: the connection ended without DISCONNECT, except when a newer
    /// connection of the same device took over, the identity was disabled or deleted, or the hub stops.
    fn publishes_will(&self) -> bool {
        match self {
            Ending::PeerDisconnected | Ending::Shutdown => false,
            Ending::Closed(reason) => matches!(reason, CloseReason::CredentialsChanged),
            Ending::PeerClosed
            | Ending::KeepAliveExpired
            | Ending::TokenExpired
            | Ending::ProtocolViolation(_)
            | Ending::EventLog(_)
            | Ending::Throttled(_)
            | Ending::Io(_) => true,
        }
    }

    /// Whether the connection can still be written to.
    fn can_write(&self) -> bool {
        !matches!(self, Ending::PeerClosed | Ending::Io(_))
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::PeerClosed => f.write_str("the device closed the connection"),
            Ending::PeerDisconnected => f.write_str("the device sent DISCONNECT"),
            Ending::KeepAliveExpired => {
                f.write_str("nothing received within 1.5 times the keep-alive")
            }
            Ending::TokenExpired => f.write_str("the device's SAS token expired"),
            Ending::Closed(reason) => write!(f, "closed by the hub: {}", reason.describe()),
            Ending::ProtocolViolation(reason) => write!(f, "protocol violation: {reason}"),
            Ending::EventLog(reason) => write!(f, "the event log refused a message: {reason}"),
            Ending::Throttled(reason) => write!(f, "throttled: {reason}"),
            Ending::Io(error) => write!(f, "i/o error: {error}"),
            Ending::Shutdown => f.write_str("the hub is shutting down"),
        }
    }
}

struct Connection<S> {
    stream: S,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    max_packet_size: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads until one whole packet is buffered and decodes it. `Ok(None)` = the peer closed cleanly.
    async fn read_packet(&mut self) -> Result<Option<Packet>, ConnectionError> {
        loop {
            if let Some(packet) =
                fleethub_mqtt::decode(&mut self.read_buffer, self.max_packet_size)?
            {
                return Ok(Some(packet));
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        self.read_buffer.reserve(READ_RESERVE);
        self.stream.read_buf(&mut self.read_buffer).await
    }

    fn queue(&mut self, packet: &Packet) {
        // Encoding our own well-formed packets cannot fail except for sizes we never produce.
        if let Err(error) = fleethub_mqtt::encode(packet, &mut self.write_buffer) {
            tracing::error!(%error, "dropping an outgoing packet that does not encode");
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.write_buffer.is_empty() {
            self.stream.write_all(&self.write_buffer).await?;
            self.stream.flush().await?;
            self.write_buffer.clear();
        }
        if self.write_buffer.capacity() > 64 * 1024 {
            self.write_buffer = BytesMut::new();
        }
        Ok(())
    }

    /// Frees the read buffer once everything in it is consumed, so idle connections hold no buffer.
    fn release_idle_buffers(&mut self) {
        if self.read_buffer.is_empty() && self.read_buffer.capacity() > 0 {
            self.read_buffer = BytesMut::new();
        }
        if self.write_buffer.is_empty() && self.write_buffer.capacity() > 0 {
            self.write_buffer = BytesMut::new();
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves one device connection to its end. Never panics on input; every refusal is logged.
/// `client_certificates`: the chain the client presented in the TLS handshake, if any (X.509 devices
/// authenticate with it); dropped once CONNECT is decided.
pub async fn serve_connection<S>(
    stream: S,
    services: Arc<Services>,
    peer: SocketAddr,
    client_certificates: Option<crate::x509::PeerCertificates>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut connection = Connection {
        stream,
        read_buffer: BytesMut::new(),
        write_buffer: BytesMut::new(),
        max_packet_size: services.config.limits.max_packet_size,
    };
    // Boxed: the CONNECT phase holds large values (the identity record, the CONNECT packet) that must not
    // stay in every idle connection's task for its whole life.
    let established = tokio::select! {
        established = Box::pin(establish(&mut connection, &services, peer, client_certificates)) => established,
        () = shutdown.cancelled() => return,
    };
    let Some(Established {
        key,
        client_id,
        clean_session,
        keep_alive,
        token_deadline,
        mut filters,
        shared,
        origin,
        will,
    }) = established
    else {
        return;
    };
    let c2d = crate::c2d::Outbox::new(
        &key,
        crate::c2d::subscription_qos(&filters, &client_id),
        services.config.limits.c2d_in_flight,
        clean_session,
        &services.c2d,
    );
    let desired = crate::desired::DesiredPatches::new(
        clean_session,
        crate::desired::subscription_qos(&filters, &client_id),
    );
    let mut session = Session {
        services: &services,
        key: &key,
        client_id: &client_id,
        shared: &shared,
        clean_session,
        filters: &mut filters,
        origin: &origin,
        pending_acks: VecDeque::new(),
        c2d,
        throttle: services.throttle.connection(&key),
        desired,
    };
    // Before anything else the connection sends: the device's catch-up on missed desired patches.
    // Boxed, as the CONNECT phase: its store reads must not size every idle connection's task.
    if let Some(catch_up) =
        Box::pin(session.desired.resume(&services, &key, &mut session.c2d)).await
    {
        connection.queue(&catch_up);
    }
    let ending = run(
        &mut connection,
        &mut session,
        keep_alive,
        token_deadline,
        &shutdown,
    )
    .await;
    if ending.can_write() && !session.pending_acks.is_empty() {
        // Acknowledge what becomes durable shortly, so the device does not send it again.
        let _ =
            tokio::time::timeout(FINAL_ACK_WAIT, drain_acks(&mut connection, &mut session)).await;
    }
    // The last of what is queued, bounded so that a device that stopped reading does not hold up the
    // connection's end; it counts as sent only if it left (QoS 0 desired patches: `desired.rs`).
    let flushed = tokio::time::timeout(FINAL_FLUSH_WAIT, connection.flush()).await;
    if ending.can_write() && matches!(flushed, Ok(Ok(()))) {
        session.desired.flushed();
    }
    Box::pin(session.desired.finish(&services, &key)).await;
    drop(session);
    let _ = connection.stream.shutdown().await;
    if let Some(will) = will
        && ending.publishes_will()
    {
        publish_will(&services, &origin, will).await;
    }

    if services.sessions.unregister(&key, shared.generation) {
        record_connection_state(&services, &key, ConnectionState::Disconnected).await;
    }
    match &ending {
        Ending::ProtocolViolation(_)
        | Ending::Closed(_)
        | Ending::TokenExpired
        | Ending::Throttled(_) => {
            tracing::info!(%peer, device = %key, %ending, "connection closed")
        }
        ending => tracing::debug!(%peer, device = %key, %ending, "connection ended"),
    }
}

/// What a connection keeps after a successful CONNECT.
struct Established {
    key: IdentityKey,
    client_id: ClientId,
    clean_session: bool,
    keep_alive: Duration,
    token_deadline: Option<Instant>,
    filters: Vec<StoredSubscription>,
    shared: Arc<ConnectionShared>,
    /// Who sends this connection's messages, as their system properties say.
    origin: MessageOrigin,
    will: Option<Will>,
}

/// A Will message on the telemetry topic, kept until the connection ends.
struct Will {
    properties: PropertyBag,
    payload: Bytes,
    retain: bool,
}

/// A QoS 1 telemetry publish whose PUBACK waits for its append to be durable.
struct PendingAck {
    packet_id: PacketId,
    receipt: AppendReceipt,
}

/// Appends a Will message as telemetry and waits until it is durable (or failed; logged).
async fn publish_will(services: &Services, origin: &MessageOrigin, will: Will) {
    let event = match telemetry_event(origin, will.properties, will.payload, will.retain, true) {
        Ok(event) => event,
        Err(error) => {
            tracing::info!(device = %origin.device_id, %error, "Will message dropped");
            return;
        }
    };
    let appended = match crate::routing::enqueue_telemetry(services, event).await {
        Ok(receipt) => receipt.await,
        Err(error) => Err(error),
    };
    match appended {
        Ok(_) => tracing::debug!(device = %origin.device_id, "Will message delivered as telemetry"),
        Err(error) => tracing::warn!(device = %origin.device_id, %error, "Will message lost"),
    }
}

/// Reads CONNECT within the connect timeout, authenticates, restores the session, registers the connection
/// and queues the CONNACK. `None` when the connection is refused or gone (already answered and logged).
async fn establish<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    services: &Services,
    peer: SocketAddr,
    client_certificates: Option<crate::x509::PeerCertificates>,
) -> Option<Established> {
    let connect_deadline = Instant::now() + services.config.limits.connect_timeout;
    let mut connect =
        match tokio::time::timeout_at(connect_deadline, connection.read_packet()).await {
            Err(_) => {
                tracing::debug!(%peer, "no CONNECT within the connect timeout");
                return None;
            }
            Ok(Ok(Some(Packet::Connect(connect)))) => connect,
            Ok(Ok(Some(other))) => {
                tracing::debug!(%peer, packet = packet_name(&other), "first packet is not CONNECT");
                return None;
            }
            Ok(Ok(None)) => return None,
            Ok(Err(ConnectionError::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
                tracing::debug!(%peer, level, "refusing an unsupported MQTT protocol level");
                refuse(connection, ConnectReturnCode::UnacceptableProtocolVersion).await;
                return None;
            }
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "bad first packet");
                return None;
            }
        };

    let now = services.now();
    // The connect timeout bounds authentication too (it only reads, so it may be cut short): an
    // unauthenticated connection holds its slot under `max_connections` for at most that long.
    let authenticated = tokio::time::timeout_at(
        connect_deadline,
        authenticate_device(
            services,
            &connect.client_id,
            connect.username.as_deref(),
            connect.password.as_deref(),
            client_certificates.as_deref(),
            now.unix_timestamp().max(0) as u64,
        ),
    )
    .await;
    let record = match authenticated {
        Ok(Ok(record)) => record,
        Ok(Err(refusal)) => {
            tracing::info!(%peer, client_id = %connect.client_id, reason = %refusal.reason, "connection refused");
            refuse(connection, refusal.code).await;
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, client_id = %connect.client_id, "not authenticated within the connect timeout");
            return None;
        }
    };
    // Azure's new-connection throttle, charged only for CONNECTs that authenticated: bogus ones spend no
    // budget, so they cannot lock devices out.
    if let Err(throttled) = services.throttle.admit_connection() {
        tracing::debug!(%peer, device = %record.key, %throttled, "connection refused");
        refuse(connection, ConnectReturnCode::ServerUnavailable).await;
        return None;
    }
    let key = record.key;
    let client_id = key.client_id();
    let token = connect
        .password
        .as_deref()
        .and_then(|password| std::str::from_utf8(password).ok())
        .and_then(|password| password.parse::<fleethub_protocol::sas::SasToken>().ok());
    // Closed when the token expires (Azure disconnects then; the SDKs renew before it): a token is valid up to
    // and including its `se` second (`SasToken::is_expired`), so at the end of that second, to the
    // millisecond, when a reconnect with it would be refused.
    let token_deadline = token.as_ref().map(|token| {
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let expires_ms = token.expiry.saturating_add(1).saturating_mul(1000);
        let remaining_ms = expires_ms.saturating_sub(now_ms);
        Instant::now() + Duration::from_millis(remaining_ms)
    });
    let auth_scope = match token.as_ref().and_then(|token| token.key_name.as_ref()) {
        Some(_) => AuthScope::Hub,
        None if key.module_id.is_some() => AuthScope::Module,
        None => AuthScope::Device,
    };
    let origin = MessageOrigin {
        device_id: key.device_id.clone(),
        module_id: key.module_id.clone(),
        generation_id: record.identity.generation_id.clone(),
        auth_scope,
        model_id: connect.username.as_deref().and_then(model_id_from_username),
    };
    // IoT Hub takes a Will message on the device's own telemetry topic only.
    let will = connect
        .will
        .take()
        .and_then(
            |will| match topics::parse_device_publish(&will.topic, &client_id) {
                Ok(DeviceTopic::Telemetry { properties, .. }) => Some(Will {
                    properties,
                    payload: will.payload,
                    retain: will.retain,
                }),
                _ => {
                    tracing::debug!(device = %key, topic = %will.topic, "ignoring a Will message that is not telemetry");
                    None
                }
            },
        );

    // Restore or discard the persisted session.
    let (filters, session_present) = if connect.clean_session {
        if let Err(error) = services.store.delete_session(&key).await {
            tracing::warn!(device = %key, %error, "could not discard the persisted session");
        }
        (Vec::new(), false)
    } else {
        match services.store.load_session(&key).await {
            Ok(Some(session)) => (session.subscriptions, true),
            Ok(None) => (Vec::new(), false),
            Err(error) => {
                tracing::warn!(device = %key, %error, "could not load the persisted session");
                refuse(connection, ConnectReturnCode::ServerUnavailable).await;
                return None;
            }
        }
    };
    let shared = services.sessions.register_authenticated(
        &key,
        subscription_set(&filters, &client_id),
        token.clone(),
    );
    record_connection_state(services, &key, ConnectionState::Connected).await;
    connection.queue(&Packet::ConnAck(ConnAck {
        session_present,
        code: ConnectReturnCode::Accepted,
    }));
    tracing::debug!(%peer, device = %key, clean_session = connect.clean_session, "device connected");
    Some(Established {
        key,
        client_id,
        clean_session: connect.clean_session,
        keep_alive: effective_keep_alive(connect.keep_alive),
        token_deadline,
        filters,
        shared,
        origin,
        will,
    })
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    code: ConnectReturnCode,
) {
    connection.queue(&Packet::ConnAck(ConnAck {
        session_present: false,
        code,
    }));
    let _ = connection.flush().await;
    let _ = connection.stream.shutdown().await;
}

fn effective_keep_alive(requested_seconds: u16) -> Duration {
    // 0 means "no keep-alive" in MQTT; Azure still needs to notice dead devices, so it gets the maximum.
    let seconds = match u64::from(requested_seconds) {
        0 => MAX_KEEP_ALIVE_SECONDS,
        seconds => seconds.min(MAX_KEEP_ALIVE_SECONDS),
    };
    Duration::from_millis(seconds * 1500)
}

fn subscription_set(filters: &[StoredSubscription], client_id: &ClientId) -> SubscriptionSet {
    let mut set = SubscriptionSet::default();
    for stored in filters {
        if let Ok(kind) = topics::parse_device_subscription(&stored.filter, client_id) {
            set.insert(kind);
        }
    }
    set
}

struct Session<'a> {
    services: &'a Services,
    key: &'a IdentityKey,
    client_id: &'a ClientId,
    shared: &'a ConnectionShared,
    clean_session: bool,
    filters: &'a mut Vec<StoredSubscription>,
    origin: &'a MessageOrigin,
    /// QoS 1 telemetry waiting to be durable, in arrival order.
    pending_acks: VecDeque<PendingAck>,
    /// Delivery of the device's cloud-to-device queue.
    c2d: crate::c2d::Outbox,
    /// Delivery of desired patches, and what a persistent session's device has of them.
    desired: crate::desired::DesiredPatches,
    /// The device's own rate limits, shared with its other connections and service calls (`throttle.rs`).
    throttle: crate::throttle::DeviceThrottle,
}

/// Waits for the oldest pending telemetry to be durable and queues its PUBACK.
async fn acknowledge_oldest<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: &mut Session<'_>,
) -> Result<(), Ending> {
    let Some(pending) = session.pending_acks.pop_front() else {
        return Ok(());
    };
    match pending.receipt.await {
        Ok(_) => {
            connection.queue(&Packet::PubAck(pending.packet_id));
            Ok(())
        }
        Err(error) => Err(Ending::EventLog(error.to_string())),
    }
}

/// Acknowledges every pending telemetry publish, in order, as each becomes durable.
async fn drain_acks<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: &mut Session<'_>,
) -> Result<(), Ending> {
    while !session.pending_acks.is_empty() {
        acknowledge_oldest(connection, session).await?;
    }
    Ok(())
}

/// Resolves when the oldest pending telemetry is durable, with its packet id. Cancel-safe: the receipt stays
/// in the queue until it has resolved.
async fn oldest_durable(
    pending_acks: &mut VecDeque<PendingAck>,
) -> Result<PacketId, fleethub_eventlog::AppendError> {
    let Some(front) = pending_acks.front_mut() else {
        return std::future::pending().await;
    };
    (&mut front.receipt).await?;
    let packet_id = front.packet_id;
    pending_acks.pop_front();
    Ok(packet_id)
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: &mut Session<'_>,
    keep_alive: Duration,
    token_deadline: Option<Instant>,
    shutdown: &CancellationToken,
) -> Ending {
    let far_future = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let token_deadline = token_deadline.unwrap_or(far_future);
    let mut keep_alive_deadline = Instant::now() + keep_alive;
    let mut pushes = Vec::new();
    pump_cloud_to_device(connection, session).await;
    if let Err(error) = connection.flush().await {
        return Ending::Io(error);
    }
    session.desired.flushed();
    loop {
        connection.release_idle_buffers();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ending::Shutdown,
            () = session.shared.woken() => {
                let reason = session.shared.close_reason();
                if reason != CloseReason::None {
                    return Ending::Closed(reason);
                }
                session.shared.drain(&mut pushes);
                for push in pushes.drain(..) {
                    if let Some(packet) = push_packet(session, push).await {
                        connection.queue(&packet);
                    }
                }
                if session.shared.take_desired_resync_signal()
                    && let Some(packet) = session
                        .desired
                        .resynchronise_dropped(session.services, session.key, &mut session.c2d)
                        .await
                {
                    connection.queue(&packet);
                }
                if session.shared.take_cloud_to_device_signal() {
                    session.c2d.wake();
                }
            }
            read = connection.read_more() => {
                match read {
                    Ok(0) => return Ending::PeerClosed,
                    Ok(_) => {}
                    Err(error) => return Ending::Io(error),
                }
                keep_alive_deadline = Instant::now() + keep_alive;
                session.shared.touch(unix_millis());
                loop {
                    let packet = match fleethub_mqtt::decode(&mut connection.read_buffer, connection.max_packet_size) {
                        Ok(Some(packet)) => packet,
                        Ok(None) => break,
                        Err(error) => return Ending::ProtocolViolation(format!("malformed packet: {error}")),
                    };
                    // Boxed: handling a packet awaits service calls whose state is large, and an idle
                    // connection should not carry that space in its task between packets.
                    if let Some(ending) = Box::pin(handle_packet(connection, session, packet)).await {
                        return ending;
                    }
                }
            }
            durable = oldest_durable(&mut session.pending_acks), if !session.pending_acks.is_empty() => {
                match durable {
                    Ok(packet_id) => connection.queue(&Packet::PubAck(packet_id)),
                    Err(error) => return Ending::EventLog(error.to_string()),
                }
            }
            () = tokio::time::sleep_until(keep_alive_deadline) => return Ending::KeepAliveExpired,
            () = tokio::time::sleep_until(token_deadline) => return Ending::TokenExpired,
        }
        pump_cloud_to_device(connection, session).await;
        if let Err(error) = connection.flush().await {
            return Ending::Io(error);
        }
        // Only bytes that left count as sent (QoS 0 desired patches: `desired.rs`).
        session.desired.flushed();
    }
}

/// Publishes what the device's cloud-to-device queue holds beyond what this connection already published, as
/// far as the window of unacknowledged messages allows.
async fn pump_cloud_to_device<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: &mut Session<'_>,
) {
    while session.c2d.wants_fill() {
        for packet in session.c2d.fill(session.services).await {
            connection.queue(&packet);
        }
    }
}

fn unix_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The PUBLISH for a push, if it is to go out (a desired patch the device already has is not).
async fn push_packet(session: &mut Session<'_>, push: Outbound) -> Option<Packet> {
    match push {
        Outbound::DesiredPatch { version, payload } => {
            session
                .desired
                .publish(
                    session.services,
                    session.key,
                    &mut session.c2d,
                    version,
                    payload,
                )
                .await
        }
        Outbound::MethodRequest {
            method_name,
            request_id,
            payload,
        } => Some(publish(
            topics::method_request_topic(&method_name, &request_id),
            payload,
        )),
    }
}

/// Twin responses and method requests go at QoS 0, as Azure's do (desired patches: `desired.rs`).
fn publish(topic: String, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic,
        packet_id: None,
        payload,
    })
}

/// Handles one packet; `Some` ends the connection.
async fn handle_packet<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: &mut Session<'_>,
    packet: Packet,
) -> Option<Ending> {
    match packet {
        Packet::Publish(publish) => handle_publish(connection, session, publish).await,
        Packet::Subscribe(subscribe) => {
            let mut return_codes = Vec::with_capacity(subscribe.filters.len());
            let mut set = session.shared.subscriptions();
            let mut desired_granted = None;
            for (filter, requested) in subscribe.filters {
                let kind = match topics::parse_device_subscription(&filter, session.client_id) {
                    Ok(kind) => kind,
                    Err(error) => {
                        return Some(Ending::ProtocolViolation(format!(
                            "subscription to {filter:?} refused: {error}"
                        )));
                    }
                };
                // QoS 2 is not supported; MQTT lets the server grant less than asked.
                let granted = requested.min(QoS::AtLeastOnce);
                if kind == topics::Subscription::CloudToDevice {
                    session.c2d.subscribed(granted);
                }
                if kind == topics::Subscription::DesiredPatches {
                    desired_granted = Some(granted);
                }
                set.insert(kind);
                session.filters.retain(|stored| stored.filter != filter);
                session.filters.push(StoredSubscription {
                    filter,
                    qos: granted as u8,
                });
                return_codes.push(SubscribeReturnCode::Success(granted));
            }
            if let Err(error) = persist_subscriptions(session).await {
                return Some(Ending::ProtocolViolation(format!(
                    "could not persist subscriptions: {error}"
                )));
            }
            session
                .services
                .sessions
                .update_subscriptions(session.key, session.shared, set);
            connection.queue(&Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                return_codes,
            }));
            // Registered first, so that the baseline read below is older than every later push.
            if let Some(granted) = desired_granted
                && let Some(catch_up) = session
                    .desired
                    .subscribed(session.services, session.key, &mut session.c2d, granted)
                    .await
            {
                connection.queue(&catch_up);
            }
            None
        }
        Packet::Unsubscribe(unsubscribe) => {
            session
                .filters
                .retain(|stored| !unsubscribe.filters.contains(&stored.filter));
            if let Err(error) = persist_subscriptions(session).await {
                return Some(Ending::ProtocolViolation(format!(
                    "could not persist subscriptions: {error}"
                )));
            }
            let set = subscription_set(session.filters, session.client_id);
            if !set.contains(topics::Subscription::CloudToDevice) {
                session.c2d.unsubscribed();
            }
            if !set.contains(topics::Subscription::DesiredPatches)
                && session.desired.is_subscribed()
            {
                session
                    .desired
                    .unsubscribed(session.services, session.key)
                    .await;
            }
            session
                .services
                .sessions
                .update_subscriptions(session.key, session.shared, set);
            connection.queue(&Packet::UnsubAck(unsubscribe.packet_id));
            None
        }
        Packet::PingReq => {
            connection.queue(&Packet::PingResp);
            // The keep-alive doubles as the tick that writes a desired checkpoint left unsaved.
            session
                .desired
                .save_if_due(session.services, session.key)
                .await;
            None
        }
        Packet::Disconnect => Some(Ending::PeerDisconnected),
        // Only desired patches and cloud-to-device messages go out at QoS 1.
        Packet::PubAck(packet_id) => {
            if !session
                .desired
                .acknowledged(session.services, session.key, &mut session.c2d, packet_id)
                .await
            {
                session.c2d.acknowledged(session.services, packet_id).await;
            }
            None
        }
        other => Some(Ending::ProtocolViolation(format!(
            "unexpected packet from a device: {}",
            packet_name(&other)
        ))),
    }
}

async fn persist_subscriptions(session: &Session<'_>) -> Result<(), StoreError> {
    if session.clean_session {
        return Ok(());
    }
    session
        .services
        .store
        .save_session(
            session.key,
            StoredSession {
                subscriptions: session.filters.clone(),
            },
        )
        .await
}

async fn handle_publish<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: &mut Session<'_>,
    publish: Publish,
) -> Option<Ending> {
    if publish.qos == QoS::ExactlyOnce {
        return Some(Ending::ProtocolViolation(
            "QoS 2 publishes are not supported".into(),
        ));
    }
    let topic = match topics::parse_device_publish(&publish.topic, session.client_id) {
        Ok(topic) => topic,
        Err(error) => {
            return Some(Ending::ProtocolViolation(format!(
                "publish to {:?} refused: {error}",
                publish.topic
            )));
        }
    };
    let puback = |connection: &mut Connection<S>, packet_id: Option<PacketId>| {
        if let Some(packet_id) = packet_id {
            connection.queue(&Packet::PubAck(packet_id));
        }
    };
    // A PUBACK of anything else must not overtake the telemetry before it.
    if publish.packet_id.is_some()
        && !matches!(topic, DeviceTopic::Telemetry { .. })
        && let Err(ending) = drain_acks(connection, session).await
    {
        return Some(ending);
    }
    match topic {
        DeviceTopic::TwinGet { request_id } => {
            puback(connection, publish.packet_id);
            if let Err(throttled) = session
                .services
                .throttle
                .admit_device_twin(&session.throttle, OperationClass::TwinRead)
            {
                connection.queue(&twin_throttled(&request_id, &throttled));
                return None;
            }
            let response = match session.services.store.get(session.key).await {
                Ok(Some(record)) => {
                    let body = serde_json::to_vec(&record.twin.properties_json())
                        .expect("JSON always serialises");
                    publish_response(
                        topics::twin_response_topic(200, &request_id, None),
                        body.into(),
                    )
                }
                Ok(None) => twin_error(&request_id, 404, 404001, "the identity no longer exists"),
                Err(error) => twin_error(&request_id, 500, 500001, &error.to_string()),
            };
            connection.queue(&response);
        }
        DeviceTopic::TwinPatchReported { request_id } => {
            if let Err(throttled) = session
                .services
                .throttle
                .admit_device_twin(&session.throttle, OperationClass::TwinUpdate)
            {
                puback(connection, publish.packet_id);
                connection.queue(&twin_throttled(&request_id, &throttled));
                return None;
            }
            let patch: Value = match serde_json::from_slice(&publish.payload) {
                Ok(patch) => patch,
                Err(error) => {
                    puback(connection, publish.packet_id);
                    let message = format!("the reported patch is not valid JSON: {error}");
                    connection.queue(&twin_error(&request_id, 400, 400004, &message));
                    return None;
                }
            };
            let result = session
                .services
                .update_twin(session.key, TwinChange::ReportedPatch(patch), IfMatch::Any)
                .await;
            // Acknowledged only now: the write is durable, or refused and nothing was kept.
            puback(connection, publish.packet_id);
            let response = match result {
                Ok(updated) => publish_response(
                    topics::twin_response_topic(
                        204,
                        &request_id,
                        Some(updated.record.twin.reported_version()),
                    ),
                    Bytes::new(),
                ),
                Err(StoreError::Twin(error)) => {
                    twin_error(&request_id, 400, 400004, &error.to_string())
                }
                Err(StoreError::NotFound(_)) => {
                    twin_error(&request_id, 404, 404001, "the identity no longer exists")
                }
                Err(error) => twin_error(&request_id, 500, 500001, &error.to_string()),
            };
            connection.queue(&response);
        }
        DeviceTopic::MethodResponse { status, request_id } => {
            let reply = MethodReply {
                status,
                payload: publish.payload,
            };
            match session
                .services
                .methods
                .complete(session.key, &request_id, reply)
            {
                ReplyOutcome::Delivered => {}
                outcome => {
                    tracing::debug!(device = %session.key, %request_id, ?outcome, "method response dropped")
                }
            }
            puback(connection, publish.packet_id);
        }
        DeviceTopic::Telemetry { properties, .. } => {
            let event = match telemetry_event(
                session.origin,
                properties,
                publish.payload,
                publish.retain,
                false,
            ) {
                Ok(event) => event,
                // Azure closes an MQTT connection that sends an oversized message.
                Err(error) => {
                    return Some(Ending::ProtocolViolation(format!(
                        "telemetry refused: {error}"
                    )));
                }
            };
            // Traffic shaping: over a rate, the connection waits here and reads nothing more meanwhile.
            if let Err(refused) = session
                .services
                .throttle
                .shape_telemetry(&session.throttle)
                .await
            {
                return Some(Ending::Throttled(refused.to_string()));
            }
            if session.pending_acks.len() >= session.services.config.limits.telemetry_in_flight
                && let Err(ending) = acknowledge_oldest(connection, session).await
            {
                return Some(ending);
            }
            // Routed before it is appended: the log keeps where it goes (`routing`).
            let receipt = match crate::routing::enqueue_telemetry(session.services, event).await {
                Ok(receipt) => receipt,
                Err(error) => return Some(Ending::EventLog(error.to_string())),
            };
            session
                .services
                .metrics
                .telemetry_received(publish.packet_id.is_some());
            match publish.packet_id {
                Some(packet_id) => session
                    .pending_acks
                    .push_back(PendingAck { packet_id, receipt }),
                // QoS 0: nothing to acknowledge; the append goes on without anyone waiting for it.
                None => drop(receipt),
            }
        }
    }
    None
}

fn publish_response(topic: String, payload: Bytes) -> Packet {
    publish(topic, payload)
}

/// A twin error response: Azure's status in the topic and a JSON body saying what was wrong.
fn twin_error(request_id: &str, status: u16, error_code: u32, message: &str) -> Packet {
    let body = json!({ "errorCode": error_code, "message": message });
    publish_response(
        topics::twin_response_topic(status, request_id, None),
        Bytes::from(serde_json::to_vec(&body).expect("JSON always serialises")),
    )
}

/// A twin request over a rate limit: status 429 with Azure's `ThrottlingException` code.
fn twin_throttled(request_id: &str, throttled: &crate::throttle::Throttled) -> Packet {
    twin_error(request_id, 429, 429001, &throttled.to_string())
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}
