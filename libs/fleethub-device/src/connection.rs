//! The I/O around a [`Session`]: establishing a connection (dial, CONNECT, CONNACK) and the one task per
//! client that owns the socket afterwards.
//!
//! The task waits on four things at once: bytes from the hub, room to write to the hub, commands from client
//! handles, and the session's next deadline. Reading and writing proceed independently (the stream is split),
//! so a hub that is slow to read never stops us from reading its responses. It never waits on the
//! application: method handlers run in their own tasks, desired patches go through a bounded channel that
//! drops (and later resynchronises) rather than blocks.
//!
//! Lifetime: the task ends when [`DeviceClient::disconnect`](crate::DeviceClient::disconnect) asks it to,
//! when every client handle is dropped (both send DISCONNECT first), when the hub closes the connection,
//! or on an I/O error, a protocol violation or a missed PINGRESP. Pending requests are then answered
//! `Disconnected` and the state watch turns to [`ConnectionState::Disconnected`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use fleethub_mqtt::{Connect, ConnectReturnCode, DEFAULT_MAX_PACKET_SIZE, Packet};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::credentials::{Identity, split_host_port};
use crate::error::{ConnectError, ConnectStage, DisconnectError};
use crate::methods::{MethodCall, run_method_call};
use crate::options::DeviceClientOptions;
use crate::session::{Command, DisconnectReply, Session};
use crate::transport::{DialTarget, HubStream, dial};

/// The largest packet accepted from the hub: Azure's 256 KiB message limit plus headers.
pub(crate) const MAX_PACKET_SIZE: usize = DEFAULT_MAX_PACKET_SIZE;
/// Bytes reserved per read. Small, so that idle clients stay small; a large packet grows the buffer.
const READ_RESERVE: usize = 1024;
/// Buffers that grew beyond this for a large packet are freed once empty.
const RETAINED_BUFFER: usize = 8 * 1024;

/// Whether the client is connected, as seen through [`DeviceClient::connection_state`](crate::DeviceClient::connection_state).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    Connected,
    Disconnected(DisconnectReason),
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// [`DeviceClient::disconnect`](crate::DeviceClient::disconnect) was called.
    ClientRequested,
    /// Every `DeviceClient` and `DesiredPatchStream` of the connection was dropped.
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
}

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
        }
    }
}

/// A connection the hub accepted, with whatever it sent right after CONNACK.
pub(crate) struct Established {
    pub stream: HubStream,
    pub read_buffer: BytesMut,
    /// CONNACK's session-present flag: whether the hub kept subscriptions from an earlier connection.
    pub session_present: bool,
}

/// Dials the hub and runs CONNECT/CONNACK, all within `options.connect_timeout`. The password is signed
/// now, so each call carries a fresh token (what SAS renewal will rely on).
pub(crate) async fn establish(
    identity: &Identity,
    options: &DeviceClientOptions,
    tls: Arc<ClientConfig>,
) -> Result<Established, ConnectError> {
    let timeout = options.connect_timeout;
    let deadline = Instant::now() + timeout;
    let (host, port_in_name) = split_host_port(&identity.dial_host);
    let port = options
        .port
        .or(port_in_name)
        .unwrap_or_else(|| options.transport.default_port());
    let target = DialTarget {
        host,
        port,
        transport: options.transport,
        tls,
        max_packet_size: MAX_PACKET_SIZE,
    };
    let mut stream = dial(target, deadline, timeout).await?;

    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let connect = Connect {
        protocol_level: 4,
        clean_session: options.clean_session,
        keep_alive: options.keep_alive_seconds(),
        client_id: identity.client_id.to_string(),
        will: None,
        username: Some(identity.username()),
        password: Some(Bytes::from(identity.password(now_unix, options.sas_ttl))),
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

/// The task that owns one connection.
pub(crate) struct Connection {
    reader: ReadHalf<HubStream>,
    writer: WriteHalf<HubStream>,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    /// Bytes were written since the last flush.
    flush_pending: bool,
    session: Session,
    commands: mpsc::Receiver<Command>,
    /// For method handler tasks. Weak, so that the task notices when every client handle is gone.
    command_sender: mpsc::WeakSender<Command>,
    state: watch::Sender<ConnectionState>,
    /// Bound on sending DISCONNECT and closing the stream.
    close_timeout: Duration,
}

impl Connection {
    pub fn new(
        established: Established,
        session: Session,
        commands: mpsc::Receiver<Command>,
        command_sender: mpsc::WeakSender<Command>,
        state: watch::Sender<ConnectionState>,
        close_timeout: Duration,
    ) -> Self {
        let (reader, writer) = tokio::io::split(established.stream);
        Self {
            reader,
            writer,
            read_buffer: established.read_buffer,
            write_buffer: BytesMut::new(),
            flush_pending: false,
            session,
            commands,
            command_sender,
            state,
            close_timeout,
        }
    }

    pub async fn run(mut self) {
        let (reason, disconnect_reply) = self.serve().await;
        self.session.fail_all();
        let closed = match reason {
            DisconnectReason::ClientRequested | DisconnectReason::ClientDropped => {
                self.close().await
            }
            _ => Ok(()),
        };
        match &closed {
            Ok(()) => tracing::debug!(%reason, "connection closed"),
            Err(error) => {
                tracing::debug!(%reason, %error, "connection closed without a clean DISCONNECT")
            }
        }
        self.state
            .send_replace(ConnectionState::Disconnected(reason));
        if let Some(reply) = disconnect_reply {
            let _ = reply.send(closed);
        }
    }

    async fn serve(&mut self) -> (DisconnectReason, Option<DisconnectReply>) {
        // Bytes the hub sent right behind CONNACK.
        if let Err(reason) = self.process_inbound() {
            return (reason, None);
        }
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            self.encode_outgoing();
            let next_deadline = self.session.next_deadline();
            if next_deadline != armed {
                if let Some(deadline) = next_deadline {
                    sleep.as_mut().reset(deadline);
                }
                armed = next_deadline;
            }
            self.read_buffer.reserve(READ_RESERVE);
            let writing = !self.write_buffer.is_empty() || self.flush_pending;

            tokio::select! {
                read = self.reader.read_buf(&mut self.read_buffer) => match read {
                    Ok(0) => return (DisconnectReason::HubClosed, None),
                    Ok(_) => {
                        if let Err(reason) = self.process_inbound() {
                            return (reason, None);
                        }
                    }
                    Err(error) if is_closed(&error) => return (DisconnectReason::HubClosed, None),
                    Err(error) => return (DisconnectReason::Io(error.to_string()), None),
                },
                written = write_some(&mut self.writer, &mut self.write_buffer, &mut self.flush_pending), if writing => {
                    if let Err(error) = written {
                        return (DisconnectReason::Io(error.to_string()), None);
                    }
                }
                command = self.commands.recv() => match command {
                    None => return (DisconnectReason::ClientDropped, None),
                    Some(Command::Disconnect(reply)) => return (DisconnectReason::ClientRequested, Some(reply)),
                    Some(Command::Request(request)) => self.session.handle_request(request),
                },
                () = &mut sleep, if armed.is_some() => {
                    // Forces a reset even when the next deadline is the same instant.
                    armed = None;
                    if let Err(reason) = self.session.on_timer(Instant::now()) {
                        return (reason, None);
                    }
                }
            }
            self.release_idle_buffers();
        }
    }

    /// Decodes every whole packet buffered and hands it to the session.
    fn process_inbound(&mut self) -> Result<(), DisconnectReason> {
        loop {
            let packet = match fleethub_mqtt::decode(&mut self.read_buffer, MAX_PACKET_SIZE) {
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

    fn encode_outgoing(&mut self) {
        let now = Instant::now();
        while let Some(packet) = self.session.poll_transmit(now) {
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
    async fn close(&mut self) -> Result<(), DisconnectError> {
        self.encode_outgoing();
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
        match tokio::time::timeout(self.close_timeout, closing).await {
            Ok(result) => result.map_err(DisconnectError::Io),
            Err(_) => Err(DisconnectError::Timeout(self.close_timeout)),
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
