//! The I/O around a [`Session`]: establishing connections (dial, CONNECT, CONNACK) and the one task per
//! client that owns the socket, reconnects when the connection is lost and renews the SAS token.
//!
//! The task is a loop over connections, driven by [`LinkEnd`]: serve a connection until it ends, then either
//! stop for good or reconnect, and serve the next one with the same [`Session`]. While a connection is up the
//! task waits on four things at once: bytes from the hub, room to write to the hub, commands from client
//! handles, and the next deadline (the session's twin deadlines and keep-alive, and the token's renewal or
//! expiry). Reading and writing proceed independently (the stream is split), so a hub that is slow to read
//! never stops us from reading its responses. While reconnecting it still takes commands and expires twin
//! deadlines, so callers see their own timeouts rather than a stalled client. It never waits on the
//! application: method handlers run in their own tasks, desired patches go through a bounded channel that
//! drops (and later resynchronises) rather than blocks. Reconnection is not another task: a client is one
//! task whatever happens to its connection.
//!
//! Reconnection: after an I/O error, the hub closing the connection, a missed PINGRESP or a protocol violation
//! by the hub, the task waits a jittered, exponentially growing delay ([`Backoff`]) and connects again with
//! a freshly signed token, until it succeeds, the error is permanent ([`ConnectError::is_permanent`]) or
//! the policy's attempts run out. Token renewal: from the token's renewal point the task waits until the
//! session is quiet (nothing awaiting the hub), then sends DISCONNECT and connects again at once; at a
//! later point it renews regardless, and what was waiting is re-sent on the new connection.
//!
//! Lifetime: the task ends when [`DeviceClient::disconnect`](crate::DeviceClient::disconnect) asks it to,
//! when every client handle is dropped (both send DISCONNECT first when connected), when a ready-made SAS
//! token expires, or when reconnecting fails for good. Pending requests are then answered `Disconnected`
//! and the state watch turns to [`ConnectionState::Disconnected`], the only final state.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use fleethub_mqtt::{Connect, ConnectReturnCode, DEFAULT_MAX_PACKET_SIZE, Packet};
use fleethub_protocol::ids::ClientId;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::credentials::{Identity, TokenExpiry, split_host_port};
use crate::error::{ConnectError, ConnectStage, DisconnectError};
use crate::methods::{MethodCall, run_method_call};
use crate::options::{DeviceClientOptions, Transport};
use crate::reconnect::{Backoff, Jitter, TokenClock};
use crate::session::{Command, DisconnectReply, Session};
use crate::transport::{DialTarget, HubStream, dial};

/// The largest packet accepted from the hub: Azure's 256 KiB message limit plus headers.
pub(crate) const MAX_PACKET_SIZE: usize = DEFAULT_MAX_PACKET_SIZE;
/// Bytes reserved per read. Small, so that idle clients stay small; a large packet grows the buffer.
const READ_RESERVE: usize = 1024;
/// Buffers that grew beyond this for a large packet are freed once empty.
const RETAINED_BUFFER: usize = 8 * 1024;

/// The client's connection, as seen through
/// [`DeviceClient::connection_state`](crate::DeviceClient::connection_state).
///
/// A client starts `Connected` (its first connection is made before
/// [`DeviceClient::connect`](crate::DeviceClient::connect) returns). A lost connection turns it
/// `Reconnecting`, a token renewal `Connecting`, and both return to `Connected`. `Disconnected` is final:
/// the client has stopped and every operation fails with a `Disconnected` error. Operations started while
/// the client is `Connecting` or `Reconnecting` wait for the connection (within their timeouts).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// A new connection is being opened with nothing wrong: the planned reconnection that renews the SAS
    /// token. It lasts a TLS handshake; if it fails, the state turns `Reconnecting`.
    Connecting,
    Connected,
    /// The connection was lost and the client is waiting for, or making, reconnection attempt `attempt`
    /// (from 1 in each outage).
    Reconnecting {
        attempt: u32,
        /// When the connection was lost.
        since: std::time::Instant,
        /// Why the connection was lost.
        reason: DisconnectReason,
    },
    /// The client has stopped for good, for `reason`.
    Disconnected(DisconnectReason),
}

/// Why a connection ended (inside [`ConnectionState::Reconnecting`]) or why the client stopped (inside
/// [`ConnectionState::Disconnected`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// [`DeviceClient::disconnect`](crate::DeviceClient::disconnect) was called.
    ClientRequested,
    /// Every `DeviceClient`, `DesiredPatchStream` and `CloudToDeviceStream` of the connection was dropped.
    ClientDropped,
    /// The hub closed the connection (device disabled or deleted, credentials changed, token expired, another
    /// connection with the same client id, hub shutting down, ...).
    HubClosed,
    /// The hub did not answer a PINGREQ within the keep-alive interval.
    KeepAliveTimeout,
    /// The hub sent something MQTT or IoT Hub do not allow.
    ProtocolViolation(String),
    /// Reading or writing failed.
    Io(String),
    /// The client closed the connection to renew its SAS token (seen in `Reconnecting` when connecting with
    /// the new token failed).
    SasTokenRenewal,
    /// The `SharedAccessSignature` the connection string carried expired. The client cannot sign a new one,
    /// so it disconnected at the token's expiry: connect again with a new token (or with a
    /// `SharedAccessKey`, which the client renews itself).
    SasTokenExpired,
    /// Reconnecting failed for good after `attempts` attempts: `error` is permanent (see
    /// [`ConnectError::is_permanent`]; e.g. CONNACK 5 after the device was disabled or deleted, or its keys
    /// changed), or it is the last error when the policy's `max_attempts` ran out.
    ReconnectFailed {
        attempts: u32,
        error: Arc<ConnectError>,
    },
}

impl PartialEq for DisconnectReason {
    /// `ReconnectFailed` errors compare by their message (`ConnectError` holds I/O errors, which do not
    /// compare).
    fn eq(&self, other: &Self) -> bool {
        use DisconnectReason::*;
        match (self, other) {
            (ProtocolViolation(left), ProtocolViolation(right)) | (Io(left), Io(right)) => {
                left == right
            }
            (
                ReconnectFailed {
                    attempts: left_attempts,
                    error: left,
                },
                ReconnectFailed {
                    attempts: right_attempts,
                    error: right,
                },
            ) => {
                left_attempts == right_attempts
                    && (Arc::ptr_eq(left, right) || left.to_string() == right.to_string())
            }
            (ClientRequested, ClientRequested)
            | (ClientDropped, ClientDropped)
            | (HubClosed, HubClosed)
            | (KeepAliveTimeout, KeepAliveTimeout)
            | (SasTokenRenewal, SasTokenRenewal)
            | (SasTokenExpired, SasTokenExpired) => true,
            _ => false,
        }
    }
}

impl Eq for DisconnectReason {}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClientRequested => formatter.write_str("the client disconnected"),
            DisconnectReason::ClientDropped => {
                formatter.write_str("every client handle was dropped")
            }
            DisconnectReason::HubClosed => formatter.write_str("the hub closed the connection"),
            DisconnectReason::KeepAliveTimeout => {
                formatter.write_str("the hub did not answer a keep-alive ping")
            }
            DisconnectReason::ProtocolViolation(message) => {
                write!(formatter, "protocol violation: {message}")
            }
            DisconnectReason::Io(message) => write!(formatter, "i/o error: {message}"),
            DisconnectReason::SasTokenRenewal => {
                formatter.write_str("the client reconnected to renew its SAS token")
            }
            DisconnectReason::SasTokenExpired => formatter.write_str(
                "the connection string's SharedAccessSignature expired and cannot be renewed",
            ),
            DisconnectReason::ReconnectFailed { attempts, error } => {
                write!(
                    formatter,
                    "reconnecting failed after {attempts} attempt(s): {error}"
                )
            }
        }
    }
}

/// A connection the hub accepted, with whatever it sent right after CONNACK.
pub(crate) struct Established {
    pub stream: HubStream,
    pub read_buffer: BytesMut,
    /// CONNACK's session-present flag: whether the hub kept subscriptions from an earlier connection.
    pub session_present: bool,
    /// When this connection's token must be renewed, or expires.
    pub token: TokenClock,
}

/// Everything needed to open a connection, kept by the task for reconnecting. The CA PEM is not kept, only
/// the (shared) TLS configuration built from it.
pub(crate) struct Dialer {
    identity: Identity,
    tls: Arc<ClientConfig>,
    transport: Transport,
    port: Option<u16>,
    keep_alive_seconds: u16,
    sas_ttl: Duration,
    clean_session: bool,
    connect_timeout: Duration,
    local_address: Option<std::net::IpAddr>,
}

impl Dialer {
    pub fn new(identity: Identity, options: &DeviceClientOptions, tls: Arc<ClientConfig>) -> Self {
        Self {
            identity,
            tls,
            transport: options.transport,
            port: options.port,
            keep_alive_seconds: options.keep_alive_seconds(),
            sas_ttl: options.sas_ttl,
            clean_session: options.clean_session,
            connect_timeout: options.connect_timeout,
            local_address: options.local_address,
        }
    }

    pub fn client_id(&self) -> &ClientId {
        &self.identity.client_id
    }

    /// Dials the hub and runs CONNECT/CONNACK, all within `connect_timeout`. The password is signed after
    /// the transport is up, so each call carries a fresh token: reconnection and renewal rely on that.
    /// `renewal_jitter` (uniformly random) spreads the renewal point of clients connected together.
    pub async fn establish(&self, renewal_jitter: u64) -> Result<Established, ConnectError> {
        // No handshake for a token the hub would refuse anyway.
        let now_unix = unix_now().as_secs();
        if let TokenExpiry::Fixed { expiry_unix } =
            self.identity.token_expiry(now_unix, self.sas_ttl)
            && expiry_unix <= now_unix
        {
            return Err(ConnectError::SasTokenExpired { expiry_unix });
        }
        let timeout = self.connect_timeout;
        let deadline = Instant::now() + timeout;
        let (host, port_in_name) = split_host_port(&self.identity.dial_host);
        let port = self
            .port
            .or(port_in_name)
            .unwrap_or_else(|| self.transport.default_port());
        let target = DialTarget {
            host,
            port,
            transport: self.transport,
            tls: Arc::clone(&self.tls),
            max_packet_size: MAX_PACKET_SIZE,
            local_address: self.local_address,
        };
        let mut stream = dial(target, deadline, timeout).await?;

        let signed_at = Instant::now();
        let since_epoch = unix_now();
        let now_unix = since_epoch.as_secs();
        let valid_for =
            |expiry_unix: u64| Duration::from_secs(expiry_unix).saturating_sub(since_epoch);
        let token = match self.identity.token_expiry(now_unix, self.sas_ttl) {
            TokenExpiry::Renewable { expiry_unix } => TokenClock::renewable(
                signed_at,
                valid_for(expiry_unix),
                self.sas_ttl,
                renewal_jitter,
            ),
            TokenExpiry::Fixed { expiry_unix } if expiry_unix <= now_unix => {
                return Err(ConnectError::SasTokenExpired { expiry_unix });
            }
            TokenExpiry::Fixed { expiry_unix } => {
                TokenClock::fixed(signed_at, valid_for(expiry_unix))
            }
            TokenExpiry::Unknown | TokenExpiry::NoToken => TokenClock::Unwatched,
        };
        let connect = Connect {
            protocol_level: 4,
            clean_session: self.clean_session,
            keep_alive: self.keep_alive_seconds,
            client_id: self.identity.client_id.to_string(),
            will: None,
            username: Some(self.identity.username()),
            password: self
                .identity
                .mqtt_password(now_unix, self.sas_ttl)
                .map(Bytes::from),
        };
        let mut write_buffer = BytesMut::new();
        fleethub_mqtt::encode(&Packet::Connect(connect), &mut write_buffer)
            .map_err(|error| ConnectError::Protocol(format!("cannot encode CONNECT: {error}")))?;
        let elapsed = |_: tokio::time::error::Elapsed| ConnectError::Timeout {
            stage: ConnectStage::ConnAck,
            timeout,
        };
        tokio::time::timeout_at(deadline, async {
            stream.write_all(&write_buffer).await?;
            stream.flush().await
        })
        .await
        .map_err(elapsed)?
        .map_err(ConnectError::Io)?;

        let mut read_buffer = BytesMut::new();
        loop {
            match fleethub_mqtt::decode(&mut read_buffer, MAX_PACKET_SIZE) {
                Ok(Some(Packet::ConnAck(connack))) => {
                    return match connack.code {
                        ConnectReturnCode::Accepted => Ok(Established {
                            stream,
                            read_buffer,
                            session_present: connack.session_present,
                            token,
                        }),
                        return_code => Err(ConnectError::Refused { return_code }),
                    };
                }
                Ok(Some(other)) => {
                    return Err(ConnectError::Protocol(format!(
                        "expected CONNACK, received {}",
                        other.name()
                    )));
                }
                Ok(None) => {
                    read_buffer.reserve(READ_RESERVE);
                    let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut read_buffer))
                        .await
                        .map_err(elapsed)?
                        .map_err(|error| {
                            if is_closed(&error) {
                                ConnectError::ClosedBeforeConnAck
                            } else {
                                ConnectError::Io(error)
                            }
                        })?;
                    if read == 0 {
                        return Err(ConnectError::ClosedBeforeConnAck);
                    }
                }
                Err(error) => return Err(ConnectError::Protocol(error.to_string())),
            }
        }
    }
}

/// The wall clock as Unix time (SAS tokens carry Unix seconds). A clock before 1970 reads as 1970.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// How one connection ended.
enum LinkEnd {
    /// The client stops: the application asked or dropped every handle, or a ready-made token expired.
    /// DISCONNECT is sent first.
    Stop {
        reason: DisconnectReason,
        reply: Option<DisconnectReply>,
    },
    /// The connection broke: reconnect with backoff.
    Lost(DisconnectReason),
    /// The token is due for renewal: DISCONNECT, then connect again at once.
    Renew,
}

/// Why the client stops while it has no connection, and whom to tell.
type Stopped = (DisconnectReason, Option<DisconnectReply>);

/// One established connection's socket and buffers. Dropped between connections.
struct Link {
    reader: ReadHalf<HubStream>,
    writer: WriteHalf<HubStream>,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    /// Bytes were written since the last flush.
    flush_pending: bool,
}

impl Link {
    fn new(established: Established) -> Self {
        let (reader, writer) = tokio::io::split(established.stream);
        Self {
            reader,
            writer,
            read_buffer: established.read_buffer,
            write_buffer: BytesMut::new(),
            flush_pending: false,
        }
    }

    fn encode_outgoing(&mut self, session: &mut Session) {
        let now = Instant::now();
        while let Some(packet) = session.poll_transmit(now) {
            // Our packets encode unless a caller passed something oversized (a payload beyond 256 MiB); the
            // request then times out instead of taking the connection down.
            if let Err(error) = fleethub_mqtt::encode(&packet, &mut self.write_buffer) {
                tracing::error!(%error, packet = packet.name(), "dropping an outgoing packet that does not encode");
            }
        }
    }

    fn release_idle_buffers(&mut self) {
        if self.read_buffer.is_empty() && self.read_buffer.capacity() > RETAINED_BUFFER {
            self.read_buffer = BytesMut::new();
        }
        if self.write_buffer.is_empty()
            && !self.flush_pending
            && self.write_buffer.capacity() > RETAINED_BUFFER
        {
            self.write_buffer = BytesMut::new();
        }
    }

    /// Sends what is queued plus DISCONNECT, then closes the stream (TLS close_notify, WebSocket close).
    async fn close(
        &mut self,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), DisconnectError> {
        self.encode_outgoing(session);
        if let Err(error) = fleethub_mqtt::encode(&Packet::Disconnect, &mut self.write_buffer) {
            tracing::error!(%error, "DISCONNECT does not encode");
        }
        let writer = &mut self.writer;
        let buffer = &self.write_buffer;
        let closing = async {
            writer.write_all(buffer).await?;
            writer.flush().await?;
            writer.shutdown().await
        };
        match tokio::time::timeout(timeout, closing).await {
            Ok(result) => result.map_err(DisconnectError::Io),
            Err(_) => Err(DisconnectError::Timeout(timeout)),
        }
    }
}

/// The task that owns a client's connections, one after the other.
pub(crate) struct ConnectionTask {
    dialer: Dialer,
    session: Session,
    commands: mpsc::Receiver<Command>,
    /// For method handler tasks. Weak, so that the task notices when every client handle is gone.
    command_sender: mpsc::WeakSender<Command>,
    state: watch::Sender<ConnectionState>,
    max_attempts: Option<u32>,
    backoff: Backoff,
    jitter: Jitter,
    /// Bound on sending DISCONNECT and closing the stream.
    close_timeout: Duration,
}

impl ConnectionTask {
    pub fn new(
        dialer: Dialer,
        session: Session,
        commands: mpsc::Receiver<Command>,
        command_sender: mpsc::WeakSender<Command>,
        state: watch::Sender<ConnectionState>,
        jitter: Jitter,
        options: &DeviceClientOptions,
    ) -> Self {
        Self {
            dialer,
            session,
            commands,
            command_sender,
            state,
            max_attempts: options.reconnect.max_attempts,
            backoff: Backoff::new(&options.reconnect),
            jitter,
            close_timeout: options.operation_timeout,
        }
    }

    /// Serves `established`, then every connection after it, until the client stops.
    pub async fn run(mut self, established: Established) {
        let mut token = established.token;
        let mut link = Link::new(established);
        loop {
            let connected_at = Instant::now();
            let (cause, planned) = match self.serve(&mut link, token).await {
                LinkEnd::Stop { reason, reply } => {
                    let closed = Box::pin(link.close(&mut self.session, self.close_timeout)).await;
                    if let Err(error) = &closed {
                        tracing::debug!(%error, "connection closed without a clean DISCONNECT");
                    }
                    drop(link);
                    self.stop(reason, reply, closed);
                    return;
                }
                LinkEnd::Lost(reason) => {
                    tracing::debug!(client_id = %self.dialer.client_id(), %reason, "connection lost; reconnecting");
                    (reason, false)
                }
                LinkEnd::Renew => {
                    tracing::debug!(client_id = %self.dialer.client_id(), "renewing the SAS token");
                    if let Err(error) =
                        Box::pin(link.close(&mut self.session, self.close_timeout)).await
                    {
                        tracing::debug!(%error, "closing for renewal without a clean DISCONNECT");
                    }
                    (DisconnectReason::SasTokenRenewal, true)
                }
            };
            drop(link);
            self.session.connection_lost();
            if connected_at.elapsed() >= self.backoff.stable_after() {
                self.backoff.reset();
            }
            match Box::pin(self.reconnect(cause, planned)).await {
                Ok(next) => {
                    tracing::debug!(
                        client_id = %self.dialer.client_id(),
                        session_present = next.session_present,
                        "reconnected"
                    );
                    token = next.token;
                    link = Link::new(next);
                    self.session.connected(Instant::now());
                    self.state.send_replace(ConnectionState::Connected);
                }
                Err((reason, reply)) => {
                    self.stop(reason, reply, Ok(()));
                    return;
                }
            }
        }
    }

    /// The final step: fail what waits, publish the final state, answer `disconnect`.
    fn stop(
        &mut self,
        reason: DisconnectReason,
        reply: Option<DisconnectReply>,
        closed: Result<(), DisconnectError>,
    ) {
        self.session.fail_all();
        match &reason {
            DisconnectReason::ClientRequested | DisconnectReason::ClientDropped => {
                tracing::debug!(client_id = %self.dialer.client_id(), %reason, "client closed")
            }
            _ => tracing::warn!(client_id = %self.dialer.client_id(), %reason, "client stopped"),
        }
        self.state
            .send_replace(ConnectionState::Disconnected(reason));
        if let Some(reply) = reply {
            let _ = reply.send(closed);
        }
    }

    async fn serve(&mut self, link: &mut Link, token: TokenClock) -> LinkEnd {
        // Bytes the hub sent right behind CONNACK.
        if let Err(reason) = self.process_inbound(link) {
            return LinkEnd::Lost(reason);
        }
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut renewal_due = false;
        loop {
            if renewal_due && self.session.is_quiet() {
                return LinkEnd::Renew;
            }
            link.encode_outgoing(&mut self.session);
            let next_deadline = self
                .session
                .next_deadline()
                .into_iter()
                .chain(token.deadline(renewal_due))
                .min();
            if next_deadline != armed {
                if let Some(deadline) = next_deadline {
                    sleep.as_mut().reset(deadline);
                }
                armed = next_deadline;
            }
            link.read_buffer.reserve(READ_RESERVE);
            let writing = !link.write_buffer.is_empty() || link.flush_pending;

            tokio::select! {
                read = link.reader.read_buf(&mut link.read_buffer) => match read {
                    Ok(0) => return LinkEnd::Lost(DisconnectReason::HubClosed),
                    Ok(_) => {
                        if let Err(reason) = self.process_inbound(link) {
                            return LinkEnd::Lost(reason);
                        }
                    }
                    Err(error) if is_closed(&error) => return LinkEnd::Lost(DisconnectReason::HubClosed),
                    Err(error) => return LinkEnd::Lost(DisconnectReason::Io(error.to_string())),
                },
                written = write_some(&mut link.writer, &mut link.write_buffer, &mut link.flush_pending), if writing => {
                    if let Err(error) = written {
                        return LinkEnd::Lost(DisconnectReason::Io(error.to_string()));
                    }
                }
                command = self.commands.recv() => match command {
                    None => return LinkEnd::Stop { reason: DisconnectReason::ClientDropped, reply: None },
                    Some(Command::Disconnect(reply)) => {
                        return LinkEnd::Stop { reason: DisconnectReason::ClientRequested, reply: Some(reply) };
                    }
                    Some(Command::Request(request)) => self.session.handle_request(request),
                },
                () = &mut sleep, if armed.is_some() => {
                    // Forces a reset even when the next deadline is the same instant.
                    armed = None;
                    let now = Instant::now();
                    match token {
                        TokenClock::Fixed { expires_at } if now >= expires_at => {
                            return LinkEnd::Stop { reason: DisconnectReason::SasTokenExpired, reply: None };
                        }
                        // Past the last moment to wait for quiet: what waits is re-sent after reconnecting.
                        TokenClock::Renewable { renew_by, .. } if now >= renew_by => return LinkEnd::Renew,
                        TokenClock::Renewable { renew_at, .. } if now >= renew_at => renewal_due = true,
                        _ => {}
                    }
                    if let Err(reason) = self.session.on_timer(now) {
                        return LinkEnd::Lost(reason);
                    }
                }
            }
            link.release_idle_buffers();
        }
    }

    /// Decodes every whole packet buffered and hands it to the session.
    fn process_inbound(&mut self, link: &mut Link) -> Result<(), DisconnectReason> {
        loop {
            let packet = match fleethub_mqtt::decode(&mut link.read_buffer, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(error) => return Err(DisconnectReason::ProtocolViolation(error.to_string())),
            };
            if let Some(call) = self.session.handle_packet(packet)? {
                self.spawn_method_call(call);
            }
        }
    }

    fn spawn_method_call(&self, call: MethodCall) {
        match self.command_sender.upgrade() {
            Some(commands) => {
                tokio::spawn(run_method_call(call, commands));
            }
            // Every handle is gone and the loop is about to see the closed channel; the hub times the call out.
            None => {
                tracing::debug!(method = %call.method_name, "not running a method handler: the client is closing")
            }
        }
    }

    /// Connects again after `cause`: at once for a renewal (`planned`), otherwise after a backoff delay, and
    /// again after each transient failure. Commands and twin deadlines are served meanwhile.
    async fn reconnect(
        &mut self,
        cause: DisconnectReason,
        planned: bool,
    ) -> Result<Established, Stopped> {
        let since = std::time::Instant::now();
        // The renewal's own attempt is not a retry.
        let limit = self
            .max_attempts
            .map(|max| max.saturating_add(u32::from(planned)));
        let mut attempts = 0u32;
        let mut last_error: Option<ConnectError> = None;
        loop {
            if limit.is_some_and(|limit| attempts >= limit) {
                let reason = match last_error {
                    Some(error) => DisconnectReason::ReconnectFailed {
                        attempts,
                        error: Arc::new(error),
                    },
                    None => cause,
                };
                return Err((reason, None));
            }
            attempts += 1;
            if planned && attempts == 1 {
                self.state.send_replace(ConnectionState::Connecting);
            } else {
                self.state.send_replace(ConnectionState::Reconnecting {
                    attempt: attempts,
                    since,
                    reason: cause.clone(),
                });
                let delay = self.backoff.next_delay(self.jitter.next_u64());
                tracing::debug!(client_id = %self.dialer.client_id(), attempt = attempts, ?delay, "reconnecting after a delay");
                serve_offline(
                    &mut self.session,
                    &mut self.commands,
                    tokio::time::sleep(delay),
                )
                .await?;
            }
            // Boxed: the handshake future is large, and only clients that are reconnecting should pay for it
            // (a task's future is as large as its largest state).
            let establishing = Box::pin(self.dialer.establish(self.jitter.next_u64()));
            let attempt =
                serve_offline(&mut self.session, &mut self.commands, establishing).await?;
            match attempt {
                Ok(established) => return Ok(established),
                Err(ConnectError::SasTokenExpired { .. }) => {
                    return Err((DisconnectReason::SasTokenExpired, None));
                }
                Err(error) if error.is_permanent() => {
                    return Err((
                        DisconnectReason::ReconnectFailed {
                            attempts,
                            error: Arc::new(error),
                        },
                        None,
                    ));
                }
                Err(error) => {
                    tracing::debug!(client_id = %self.dialer.client_id(), attempt = attempts, %error, "reconnection attempt failed");
                    last_error = Some(error);
                }
            }
        }
    }
}

/// Runs `work` while there is no connection, taking commands (the session queues what they ask for) and
/// expiring twin deadlines meanwhile. Ends early when the application closes or drops the client.
async fn serve_offline<T>(
    session: &mut Session,
    commands: &mut mpsc::Receiver<Command>,
    work: impl Future<Output = T>,
) -> Result<T, Stopped> {
    tokio::pin!(work);
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let next_deadline = session.next_deadline();
        if next_deadline != armed {
            if let Some(deadline) = next_deadline {
                sleep.as_mut().reset(deadline);
            }
            armed = next_deadline;
        }
        tokio::select! {
            output = &mut work => return Ok(output),
            command = commands.recv() => match command {
                None => return Err((DisconnectReason::ClientDropped, None)),
                Some(Command::Disconnect(reply)) => {
                    return Err((DisconnectReason::ClientRequested, Some(reply)));
                }
                Some(Command::Request(request)) => session.handle_request(request),
            },
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                // Without a connection there is no keep-alive to fail.
                let _ = session.on_timer(Instant::now());
            }
        }
    }
}

/// Whether a read error just means the peer went away: a TCP reset, or the end of the stream without a TLS
/// close_notify (servers commonly skip it).
fn is_closed(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
    )
}

/// Writes some of `buffer`, or flushes once it is empty. Cancellation-safe: bytes leave `buffer` only when
/// the transport took them.
async fn write_some<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buffer: &mut BytesMut,
    flush_pending: &mut bool,
) -> std::io::Result<()> {
    if buffer.is_empty() {
        writer.flush().await?;
        *flush_pending = false;
        return Ok(());
    }
    if writer.write_buf(buffer).await? == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    *flush_pending = true;
    Ok(())
}
