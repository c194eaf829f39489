//! Server-side TLS over rustls's unbuffered API, for both listeners: a stream that owns its TLS byte buffers
//! and frees each one as soon as it is empty, so an idle connection holds no buffer at all.
//!
//! Why not tokio-rustls: the buffered `rustls::ServerConnection` behind it keeps a 4 KiB input buffer for the
//! whole life of a connection once it has read anything, the largest single item of an idle device connection.
//!
//! Buffers (all `BytesMut`, replaced by an unallocated one whenever they empty):
//! - `incoming`: received TLS bytes rustls is not done with: a partial record, or the records of a handshake
//!   message that has not fully arrived. Never a complete unprocessed record: every call feeds rustls until it
//!   asks for more input, so a call made only to write cannot turn up application data. Socket reads land in a
//!   stack buffer first and only the leftover is copied here, so most reads allocate nothing.
//! - `outgoing`: encrypted bytes the socket has not taken yet. Nothing new is encrypted while it is not empty
//!   (`poll_write` returns `Pending`), so it holds at most one write's records or one handshake flight.
//!   `accept` returns only once the last flight is sent. Reads never write to the socket (a read and a write
//!   may be driven from different tasks, and tokio keeps one write waker per socket), so the little that
//!   reading can make rustls say after the handshake (a refusal of TLS 1.2 renegotiation) goes out with the
//!   next write or flush; a fatal alert goes out at once, as a last gasp, when the socket takes it.
//! - `plaintext`: decrypted bytes that did not fit the caller's read buffer. The socket is not read again until
//!   it is drained, so it holds at most one socket read's worth (or, for data that arrives while the end of
//!   the handshake waits for the socket, `MAX_PLAINTEXT_DURING_HANDSHAKE`).
//!
//! Closing: a peer's close_notify reads as a clean end of stream; a socket that ends without one is an
//! `UnexpectedEof` error, as with tokio-rustls. `poll_shutdown` sends our close_notify, then the TCP FIN.
//! Protocol errors are sticky (every later call fails the same way) and map to `InvalidData`.
//!
//! Cancellation: all state lives in the stream, so dropping a read or write future between polls loses
//! nothing.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One socket read: a whole maximum-size TLS record (16 KiB of payload plus framing and AEAD overhead).
const READ_CHUNK: usize = 17 * 1024;
/// Plaintext encrypted per `poll_write`: one full record.
const WRITE_CHUNK: usize = 16 * 1024;
/// Received bytes kept while waiting for the rest of a record or handshake message: rustls refuses handshake
/// messages over 64 KiB, plus room for the record framing around their fragments and one record beyond.
const MAX_INCOMING: usize = 0xffff + 2 * READ_CHUNK;
/// Application data taken in while the end of our last handshake flight waits for the socket.
const MAX_PLAINTEXT_DURING_HANDSHAKE: usize = 64 * 1024;

/// Performs the server side of a TLS handshake on `io` within `timeout`.
///
/// Errors: `TimedOut` when the handshake does not finish in time, `UnexpectedEof` when the peer leaves
/// mid-handshake, `InvalidData` for TLS protocol failures (garbage instead of a ClientHello, no common cipher
/// suite, ...), and whatever the socket reports.
pub async fn accept<IO>(
    io: IO,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<LeanTlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connection = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = LeanTlsStream {
        io,
        incoming: BytesMut::new(),
        engine: Engine::new(connection),
    };
    match tokio::time::timeout(timeout, poll_fn(|context| stream.poll_handshake(context))).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(error)) => Err(error),
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "tls handshake timed out",
        )),
    }
}

/// An established server-side TLS connection over `IO`; see the module documentation.
pub struct LeanTlsStream<IO = TcpStream> {
    io: IO,
    incoming: BytesMut,
    engine: Engine,
}

impl<IO> LeanTlsStream<IO> {
    /// The protocol agreed through ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.engine.connection.alpn_protocol()
    }

    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.engine.connection.protocol_version()
    }

    /// The certificate chain the client presented (leaf first), if it sent one.
    pub fn peer_certificates(&self) -> Option<crate::x509::PeerCertificates> {
        self.engine
            .connection
            .peer_certificates()
            .filter(|chain| !chain.is_empty())
            .map(|chain| chain.iter().map(|der| der.clone().into_owned()).collect())
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Bytes of buffer capacity the stream holds beyond rustls's own state (zero when idle).
    pub fn buffer_capacity(&self) -> usize {
        self.incoming.capacity()
            + self.engine.outgoing.capacity()
            + self.engine.plaintext.capacity()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTlsStream<IO> {
    fn poll_handshake(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Send and receive side by side: a peer may not read our flight before we take its next bytes.
            let sent = self.poll_send(context)?;
            if let Some(failure) = &self.engine.failure {
                return Poll::Ready(Err(tls_error(rustls::Error::clone(failure))));
            }
            if !self.engine.connection.is_handshaking() {
                // Done once our last flight (with any session tickets) is on its way; the caller's reads never
                // send it. Until then, what arrives is application data kept for the caller, up to a limit.
                if sent.is_ready() || self.engine.peer_closed || self.engine.socket_ended {
                    return Poll::Ready(Ok(()));
                }
                if self.engine.plaintext.len() >= MAX_PLAINTEXT_DURING_HANDSHAKE {
                    return Poll::Pending;
                }
            } else if self.engine.peer_closed || self.engine.socket_ended {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
            if let Err(error) = ready!(self.poll_receive(context, None)) {
                self.send_last_gasp(context);
                return Poll::Ready(Err(error));
            }
        }
    }

    /// Reads once from the socket and runs rustls over what is buffered. Decrypted bytes go to `sink` while it
    /// has room, the rest to `engine.plaintext`. A socket end is recorded in `engine.socket_ended`.
    fn poll_receive(
        &mut self,
        context: &mut Context<'_>,
        sink: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        let room = MAX_INCOMING - self.incoming.len();
        if room == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tls input exceeds the buffer limit",
            )));
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk[..room.min(READ_CHUNK)]);
        ready!(Pin::new(&mut self.io).poll_read(context, &mut read))?;
        if read.filled().is_empty() {
            self.engine.socket_ended = true;
            return Poll::Ready(Ok(()));
        }
        let result = if self.incoming.is_empty() {
            // The common case: whole records in one read. Only a trailing partial record is kept.
            let input = read.filled_mut();
            let result = self.engine.process(input, sink, Request::Nothing);
            if let Ok((consumed, _)) = result {
                self.incoming.extend_from_slice(&input[consumed..]);
            }
            result
        } else {
            self.incoming.extend_from_slice(read.filled());
            let result = self
                .engine
                .process(&mut self.incoming[..], sink, Request::Nothing);
            if let Ok((consumed, _)) = result {
                self.consume_incoming(consumed);
            }
            result
        };
        Poll::Ready(result.map(|_| ()).map_err(tls_error))
    }

    fn consume_incoming(&mut self, consumed: usize) {
        self.incoming.advance(consumed);
        if self.incoming.is_empty() {
            self.incoming = BytesMut::new();
        }
    }

    /// Writes `outgoing` to the socket until it is empty (then frees it) or the socket is full.
    fn poll_send(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.engine.write_failure {
            return Poll::Ready(Err(io::Error::new(kind, "an earlier tls write failed")));
        }
        let outgoing = &mut self.engine.outgoing;
        while !outgoing.is_empty() {
            let result = match ready!(Pin::new(&mut self.io).poll_write(context, outgoing)) {
                Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                result => result,
            };
            match result {
                Ok(written) => outgoing.advance(written),
                Err(error) => {
                    self.engine.write_failure = Some(error.kind());
                    *outgoing = BytesMut::new();
                    return Poll::Ready(Err(error));
                }
            }
        }
        *outgoing = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// After a protocol failure: hands rustls's alert to the socket if it takes it right away.
    fn send_last_gasp(&mut self, context: &mut Context<'_>) {
        let _ = self.poll_send(context);
    }

    /// Runs `request` through rustls (after anything it still has to say) and queues the result.
    fn queue(&mut self, context: &mut Context<'_>, request: Request<'_>) -> io::Result<Outcome> {
        let had_plaintext = !self.engine.plaintext.is_empty();
        let was_closed = self.engine.peer_closed;
        match self.engine.process(&mut self.incoming[..], None, request) {
            Ok((consumed, outcome)) => {
                self.consume_incoming(consumed);
                // Unreachable by the `incoming` invariant, but if rustls ever surfaced input here, the reader
                // (possibly parked on the socket) must look again.
                if (!had_plaintext && !self.engine.plaintext.is_empty())
                    || (!was_closed && self.engine.peer_closed)
                {
                    context.waker().wake_by_ref();
                }
                Ok(outcome)
            }
            Err(error) => {
                self.send_last_gasp(context);
                Err(tls_error(error))
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for LeanTlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buffer.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let plaintext = &mut this.engine.plaintext;
            if !plaintext.is_empty() {
                let take = plaintext.len().min(buffer.remaining());
                buffer.put_slice(&plaintext[..take]);
                plaintext.advance(take);
                if plaintext.is_empty() {
                    *plaintext = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.engine.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if let Some(failure) = &this.engine.failure {
                return Poll::Ready(Err(tls_error(rustls::Error::clone(failure))));
            }
            if this.engine.socket_ended {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            let filled = buffer.filled().len();
            if let Err(error) = ready!(this.poll_receive(context, Some(buffer))) {
                this.send_last_gasp(context);
                return Poll::Ready(Err(error));
            }
            if buffer.filled().len() > filled {
                return Poll::Ready(Ok(()));
            }
            // Nothing for the caller yet (a partial record, a handshake message, the end): look again.
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LeanTlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(failure) = &this.engine.failure {
            return Poll::Ready(Err(tls_error(rustls::Error::clone(failure))));
        }
        if this.engine.close_notify_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after tls shutdown",
            )));
        }
        // Backpressure: earlier records must be on their way before more plaintext is taken.
        ready!(this.poll_send(context))?;
        let chunk = &data[..data.len().min(WRITE_CHUNK)];
        match this.queue(context, Request::Encrypt(chunk))? {
            Outcome::Queued => {}
            Outcome::Closed => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "tls connection closed",
                )));
            }
            Outcome::NeedInput => {
                return Poll::Ready(Err(io::Error::other("tls handshake not complete")));
            }
        }
        // Start sending at once; what the socket does not take now goes with the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_send(context) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(context))?;
        Pin::new(&mut this.io).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.engine.close_notify_queued && this.engine.failure.is_none() {
            this.engine.close_notify_queued = true;
            // Already closed both ways, or failing now: there is nothing left to say, only the FIN to send.
            let _ = this.queue(context, Request::CloseNotify);
        }
        ready!(this.poll_send(context))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(context)) {
            // Like tokio-rustls: shutting down a socket the peer already dropped is not an error.
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            result => Poll::Ready(result),
        }
    }
}

/// What a call into rustls should do besides consuming input.
#[derive(Clone, Copy)]
enum Request<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

enum Outcome {
    /// rustls wants more input: mid-handshake, a partial record, or simply idle.
    NeedInput,
    /// The request's records are in `outgoing`.
    Queued,
    /// Both sides sent close_notify; nothing more can be written.
    Closed,
}

/// The rustls connection and the buffers that belong to it (all but `incoming`, which callers pass in so that
/// a read can feed rustls from the stack).
struct Engine {
    connection: UnbufferedServerConnection,
    outgoing: BytesMut,
    plaintext: BytesMut,
    /// The peer's close_notify arrived: reads end cleanly once `plaintext` is drained.
    peer_closed: bool,
    /// The socket reported end of stream.
    socket_ended: bool,
    close_notify_queued: bool,
    /// A protocol failure; rustls must not be called again. Boxed: every connection carries the field, few
    /// ever fill it, and `rustls::Error` is 64 bytes.
    failure: Option<Box<rustls::Error>>,
    /// A socket write failed; the kind is reported to later writes.
    write_failure: Option<io::ErrorKind>,
}

impl Engine {
    fn new(connection: UnbufferedServerConnection) -> Self {
        Self {
            connection,
            outgoing: BytesMut::new(),
            plaintext: BytesMut::new(),
            peer_closed: false,
            socket_ended: false,
            close_notify_queued: false,
            failure: None,
            write_failure: None,
        }
    }

    /// Feeds `input` to rustls until it needs more, carrying out `request` when it can, and returns how many
    /// bytes from the front of `input` rustls is done with. The caller must drop exactly those and pass the
    /// rest, unchanged, at the front of the next call's input (rustls keeps offsets into it for handshake
    /// messages split across records).
    fn process(
        &mut self,
        input: &mut [u8],
        mut sink: Option<&mut ReadBuf<'_>>,
        request: Request<'_>,
    ) -> Result<(usize, Outcome), rustls::Error> {
        if let Some(failure) = &self.failure {
            return Err(rustls::Error::clone(failure));
        }
        let mut consumed = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.connection.process_tls_records(&mut input[consumed..]);
            let step = match state {
                Err(error) => Err(error),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => loop {
                    match traffic.next_record() {
                        None => break Ok(None),
                        Some(Ok(AppDataRecord {
                            discard: more,
                            payload,
                        })) => {
                            discard += more;
                            deliver(payload, &mut sink, &mut self.plaintext);
                        }
                        Some(Err(error)) => break Err(error),
                    }
                },
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    // Handshake messages: rustls says how much room each needs.
                    append_encoded(&mut self.outgoing, 0, |buffer| {
                        from_encode(encode.encode(buffer))
                    })
                    .map(|()| None)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // Everything encoded is in `outgoing`, which we own and send in order: as far as rustls is
                    // concerned it has been transmitted.
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Outcome::NeedInput)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match request {
                    Request::Nothing => Ok(Some(Outcome::NeedInput)),
                    Request::Encrypt(data) => {
                        append_encoded(&mut self.outgoing, data.len() + 128, |buffer| {
                            from_encrypt(traffic.encrypt(data, buffer))
                        })
                        .map(|()| Some(Outcome::Queued))
                    }
                    Request::CloseNotify => append_encoded(&mut self.outgoing, 64, |buffer| {
                        from_encrypt(traffic.queue_close_notify(buffer))
                    })
                    .map(|()| Some(Outcome::Queued)),
                },
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Outcome::Closed))
                }
                // Early data is off in our configuration (`max_early_data_size` is 0), and rustls may add states.
                Ok(other) => Err(rustls::Error::General(format!(
                    "unexpected tls state {other:?}"
                ))),
            };
            consumed += discard;
            match step {
                Ok(Some(outcome)) => {
                    if self.peer_closed {
                        // "Any data received after a closure alert has been received MUST be ignored."
                        consumed = input.len();
                    }
                    return Ok((consumed, outcome));
                }
                Ok(None) => {}
                Err(error) => {
                    self.fail(&mut input[consumed..], error.clone());
                    return Err(error);
                }
            }
        }
    }

    /// Makes `error` sticky and encodes the alert rustls queued for it (if any) into `outgoing`.
    fn fail(&mut self, input: &mut [u8], error: rustls::Error) {
        self.failure = Some(Box::new(error));
        let mut consumed = 0;
        // While rustls has records queued, `process_tls_records` hands them out before touching the input.
        while self.connection.wants_write() {
            let UnbufferedStatus { discard, state } =
                self.connection.process_tls_records(&mut input[consumed..]);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if append_encoded(&mut self.outgoing, 0, |buffer| {
                        from_encode(encode.encode(buffer))
                    })
                    .is_err()
                    {
                        break;
                    }
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while traffic.next_record().is_some() {}
                }
                _ => break,
            }
            consumed += discard;
        }
    }
}

/// Copies decrypted bytes to the caller's buffer while it has room and nothing is waiting ahead of them.
fn deliver(payload: &[u8], sink: &mut Option<&mut ReadBuf<'_>>, plaintext: &mut BytesMut) {
    let mut rest = payload;
    if plaintext.is_empty()
        && let Some(buffer) = sink
    {
        let take = rest.len().min(buffer.remaining());
        buffer.put_slice(&rest[..take]);
        rest = &rest[take..];
    }
    plaintext.extend_from_slice(rest);
}

enum Encoded {
    Written(usize),
    NeedsRoom(usize),
}

fn from_encode(result: Result<usize, EncodeError>) -> Result<Encoded, rustls::Error> {
    match result {
        Ok(written) => Ok(Encoded::Written(written)),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            Ok(Encoded::NeedsRoom(required_size))
        }
        Err(error) => Err(rustls::Error::General(error.to_string())),
    }
}

fn from_encrypt(result: Result<usize, EncryptError>) -> Result<Encoded, rustls::Error> {
    match result {
        Ok(written) => Ok(Encoded::Written(written)),
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            Ok(Encoded::NeedsRoom(required_size))
        }
        Err(EncryptError::EncryptExhausted) => Err(rustls::Error::EncryptError),
    }
}

/// Lets `encode` write at the end of `buffer`, first into `guess` bytes, then into as many as it asks for.
fn append_encoded(
    buffer: &mut BytesMut,
    guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<Encoded, rustls::Error>,
) -> Result<(), rustls::Error> {
    let start = buffer.len();
    buffer.resize(start + guess, 0);
    let mut result = encode(&mut buffer[start..]);
    if let Ok(Encoded::NeedsRoom(required)) = result {
        buffer.resize(start + required, 0);
        result = encode(&mut buffer[start..]);
    }
    match result {
        Ok(Encoded::Written(written)) => {
            buffer.truncate(start + written);
            Ok(())
        }
        Ok(Encoded::NeedsRoom(required)) => {
            buffer.truncate(start);
            Err(rustls::Error::General(format!(
                "rustls asked for {required} bytes of room twice"
            )))
        }
        Err(error) => {
            buffer.truncate(start);
            Err(error)
        }
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::task::Waker;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream as ClientTlsStream;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);
    const BOTH_VERSIONS: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    /// The hub's own server configuration (ALPN `http/1.1` offered) and a CA to trust it by.
    struct Certificates {
        _directory: tempfile::TempDir,
        server: Arc<ServerConfig>,
        roots: RootCertStore,
    }

    fn certificates() -> Certificates {
        let directory = tempfile::tempdir().unwrap();
        let names = BTreeSet::from(["localhost".to_owned()]);
        let issued = crate::tls::load_or_create(directory.path(), &names).unwrap();
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(issued.ca_pem.as_bytes()) {
            roots.add(certificate.unwrap()).unwrap();
        }
        Certificates {
            _directory: directory,
            server: issued.server_config,
            roots,
        }
    }

    impl Certificates {
        fn client(&self, version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
            Arc::new(config)
        }
    }

    async fn handshake<IO>(
        server_io: IO,
        client_io: IO,
        server: &Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (LeanTlsStream<IO>, ClientTlsStream<IO>)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            accept(server_io, Arc::clone(server), WAIT),
            TlsConnector::from(client).connect(name, client_io),
        );
        (server.unwrap(), client.unwrap())
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, server) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept(),
        );
        (server.unwrap().0, client.unwrap())
    }

    async fn over_tcp(
        certificates: &Certificates,
        version: &'static SupportedProtocolVersion,
    ) -> (LeanTlsStream, ClientTlsStream<TcpStream>) {
        let (server_tcp, client_tcp) = tcp_pair().await;
        handshake(
            server_tcp,
            client_tcp,
            &certificates.server,
            certificates.client(version),
        )
        .await
    }

    fn pattern(length: usize) -> Vec<u8> {
        pattern_from(0, length)
    }

    /// Bytes `start..start + length` of one endless, recognisable stream.
    fn pattern_from(start: usize, length: usize) -> Vec<u8> {
        (start..start + length)
            .map(|index| (index % 251) as u8)
            .collect()
    }

    /// Sends `message` each way and checks it arrives whole.
    async fn exchange<IO, C>(server: &mut LeanTlsStream<IO>, client: &mut C, message: &[u8])
    where
        IO: AsyncRead + AsyncWrite + Unpin,
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let mut received = vec![0; message.len()];
        let (written, read) = tokio::join!(
            async {
                client.write_all(message).await?;
                client.flush().await
            },
            server.read_exact(&mut received),
        );
        written.unwrap();
        read.unwrap();
        assert!(received == message, "client to server");
        let (written, read) = tokio::join!(
            async {
                server.write_all(message).await?;
                server.flush().await
            },
            client.read_exact(&mut received),
        );
        written.unwrap();
        read.unwrap();
        assert!(received == message, "server to client");
    }

    #[tokio::test]
    async fn tls13_agrees_alpn_and_an_idle_stream_holds_no_buffer() {
        let certificates = certificates();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(certificates.roots.clone())
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (server_tcp, client_tcp) = tcp_pair().await;
        let (mut server, mut client) = handshake(
            server_tcp,
            client_tcp,
            &certificates.server,
            Arc::new(client),
        )
        .await;
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(server.buffer_capacity(), 0, "after the handshake");
        exchange(&mut server, &mut client, b"hello").await;
        assert_eq!(server.buffer_capacity(), 0, "after traffic");
    }

    #[tokio::test]
    async fn tls12_clients_are_served_without_alpn() {
        let certificates = certificates();
        let (mut server, mut client) = over_tcp(&certificates, &rustls::version::TLS12).await;
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(server.alpn_protocol(), None);
        assert_eq!(server.buffer_capacity(), 0, "after the handshake");
        exchange(&mut server, &mut client, b"hello").await;
        assert_eq!(server.buffer_capacity(), 0, "after traffic");
    }

    #[tokio::test]
    async fn a_mebibyte_passes_each_way_and_ends_with_close_notify() {
        let certificates = certificates();
        let data = pattern(1 << 20);
        for version in BOTH_VERSIONS {
            let (server, client) = over_tcp(&certificates, version).await;
            let (mut server_read, mut server_write) = tokio::io::split(server);
            let (mut client_read, mut client_write) = tokio::io::split(client);
            let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
            let (server_sent, client_sent, server_got, client_got) = tokio::join!(
                async {
                    server_write.write_all(&data).await?;
                    server_write.shutdown().await
                },
                async {
                    client_write.write_all(&data).await?;
                    client_write.shutdown().await
                },
                server_read.read_to_end(&mut at_server),
                client_read.read_to_end(&mut at_client),
            );
            server_sent.unwrap();
            client_sent.unwrap();
            assert_eq!(server_got.unwrap(), data.len(), "{version:?}");
            assert_eq!(client_got.unwrap(), data.len(), "{version:?}");
            assert!(at_server == data && at_client == data, "{version:?}");
            let server = server_read.unsplit(server_write);
            assert_eq!(server.buffer_capacity(), 0, "{version:?}");
        }
    }

    #[tokio::test]
    async fn many_small_records_in_one_read_all_arrive_in_order() {
        let certificates = certificates();
        for version in BOTH_VERSIONS {
            let (server_io, client_io) = tokio::io::duplex(1 << 20);
            let (mut server, mut client) = handshake(
                server_io,
                client_io,
                &certificates.server,
                certificates.client(version),
            )
            .await;
            // Each write is its own record; all of them sit in the pipe before the server reads.
            let mut sent = Vec::new();
            for index in 0..2000 {
                let record = pattern(1 + index % 20);
                client.write_all(&record).await.unwrap();
                sent.extend_from_slice(&record);
            }
            client.flush().await.unwrap();
            let mut received = vec![0; sent.len()];
            let first = server.read(&mut received).await.unwrap();
            assert!(
                first > 20,
                "one read spans many records ({version:?}): {first}"
            );
            server.read_exact(&mut received[first..]).await.unwrap();
            assert!(received == sent, "{version:?}");
        }
    }

    #[tokio::test]
    async fn handshake_and_traffic_survive_one_byte_at_a_time() {
        let certificates = certificates();
        let message = pattern(3000);
        for version in BOTH_VERSIONS {
            // A one-byte pipe: every read on either side ends at every byte boundary. The client reads on at
            // once, as the server's handshake ends only when the pipe has taken its session tickets.
            let (server_io, client_io) = tokio::io::duplex(1);
            let name = ServerName::try_from("localhost").unwrap();
            let connector = TlsConnector::from(certificates.client(version));
            let (server, client) = tokio::join!(
                async {
                    let mut server =
                        accept(server_io, Arc::clone(&certificates.server), WAIT).await?;
                    let mut received = vec![0; message.len()];
                    server.read_exact(&mut received).await?;
                    server.write_all(&received).await?;
                    server.flush().await?;
                    io::Result::Ok((server, received))
                },
                async {
                    let mut client = connector.connect(name, client_io).await?;
                    client.write_all(&message).await?;
                    client.flush().await?;
                    let mut echoed = vec![0; message.len()];
                    client.read_exact(&mut echoed).await?;
                    io::Result::Ok((client, echoed))
                },
            );
            let ((mut server, received), (mut client, echoed)) = (server.unwrap(), client.unwrap());
            assert!(received == message && echoed == message, "{version:?}");
            exchange(&mut server, &mut client, b"x").await;
            assert_eq!(server.buffer_capacity(), 0, "{version:?}");
        }
    }

    #[tokio::test]
    async fn close_notify_is_a_clean_end_and_the_server_can_still_answer() {
        let certificates = certificates();
        for version in BOTH_VERSIONS {
            let (mut server, mut client) = over_tcp(&certificates, version).await;
            client.write_all(b"bye").await.unwrap();
            client.shutdown().await.unwrap();
            let mut received = Vec::new();
            server.read_to_end(&mut received).await.unwrap();
            assert_eq!(received, b"bye", "{version:?}");
            server.write_all(b"ack").await.unwrap();
            server.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"ack", "{version:?}");
            assert!(
                server.write_all(b"late").await.is_err(),
                "no writes after our close_notify"
            );
        }
    }

    #[tokio::test]
    async fn a_peer_that_vanishes_without_close_notify_is_an_unexpected_eof() {
        let certificates = certificates();
        for version in BOTH_VERSIONS {
            let (mut server, mut client) = over_tcp(&certificates, version).await;
            // The exchange also drains the session tickets: unread bytes would make the drop a reset.
            exchange(&mut server, &mut client, b"hello").await;
            let (tcp, _) = client.into_inner();
            drop(tcp);
            let mut received = Vec::new();
            let error = server.read_to_end(&mut received).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{version:?}");
            let again = server.read(&mut [0; 8]).await.unwrap_err();
            assert_eq!(again.kind(), io::ErrorKind::UnexpectedEof, "the end stays");
        }
    }

    #[tokio::test]
    async fn a_peer_that_vanishes_mid_handshake_fails_the_accept() {
        let certificates = certificates();
        let (server_tcp, mut client_tcp) = tcp_pair().await;
        // The first bytes of a handshake record announcing more than is ever sent.
        client_tcp
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        drop(client_tcp);
        let error = accept(server_tcp, Arc::clone(&certificates.server), WAIT)
            .await
            .err()
            .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_gets_an_alert_and_an_error() {
        let certificates = certificates();
        let (server_tcp, mut client_tcp) = tcp_pair().await;
        client_tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage")
            .await
            .unwrap();
        let error = accept(server_tcp, Arc::clone(&certificates.server), WAIT)
            .await
            .err()
            .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let mut answer = Vec::new();
        client_tcp.read_to_end(&mut answer).await.unwrap();
        // One plain-text alert record: fatal (2), decode_error (50).
        assert_eq!(answer.len(), 7, "{answer:?}");
        assert_eq!((answer[0], answer[5], answer[6]), (0x15, 2, 50));
    }

    #[tokio::test]
    async fn a_silent_client_times_the_handshake_out() {
        let certificates = certificates();
        let (server_tcp, _client_tcp) = tcp_pair().await;
        let error = accept(
            server_tcp,
            Arc::clone(&certificates.server),
            Duration::from_millis(50),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_client_that_never_reads_stalls_server_writes_without_buffering() {
        let certificates = certificates();
        for version in BOTH_VERSIONS {
            let (mut server, mut client) = over_tcp(&certificates, version).await;
            let mut context = Context::from_waker(Waker::noop());
            let mut accepted = 0;
            loop {
                let chunk = pattern_from(accepted, 64 * 1024);
                match Pin::new(&mut server).poll_write(&mut context, &chunk) {
                    Poll::Ready(Ok(written)) => accepted += written,
                    Poll::Ready(Err(error)) => panic!("{error}"),
                    Poll::Pending => break,
                }
                assert!(
                    server.buffer_capacity() <= 2 * WRITE_CHUNK,
                    "the stream buffers only the records the socket has not taken yet"
                );
                assert!(accepted < 256 << 20, "writes never stalled ({version:?})");
            }
            assert!(server.buffer_capacity() <= 2 * WRITE_CHUNK);
            // Once the client reads, the stalled bytes and the rest arrive intact.
            let rest = pattern_from(accepted, 100_000);
            let mut received = Vec::new();
            let (sent, got) = tokio::join!(
                async {
                    server.write_all(&rest).await?;
                    server.shutdown().await
                },
                client.read_to_end(&mut received),
            );
            sent.unwrap();
            assert_eq!(got.unwrap(), accepted + rest.len(), "{version:?}");
            assert!(received == pattern(accepted + rest.len()), "{version:?}");
        }
    }

    #[tokio::test]
    async fn a_client_key_update_is_followed_and_answered() {
        let certificates = certificates();
        let (mut server, mut client) = over_tcp(&certificates, &rustls::version::TLS13).await;
        exchange(&mut server, &mut client, b"before").await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        // The client asked us to update too: our next records are under new keys, which it must accept.
        exchange(&mut server, &mut client, b"after the update").await;
        exchange(&mut server, &mut client, b"and again").await;
    }

    #[tokio::test]
    async fn a_returning_client_resumes_its_session() {
        let certificates = certificates();
        for version in BOTH_VERSIONS {
            let client_config = certificates.client(version);
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let (server_tcp, client_tcp) = tcp_pair().await;
                let (mut server, mut client) = handshake(
                    server_tcp,
                    client_tcp,
                    &certificates.server,
                    Arc::clone(&client_config),
                )
                .await;
                // Reading lets the client take in the session tickets that follow the handshake.
                exchange(&mut server, &mut client, b"hello").await;
                kinds.push(server.engine.connection.handshake_kind());
                client.shutdown().await.unwrap();
            }
            assert_eq!(
                kinds,
                [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)],
                "{version:?}"
            );
        }
    }
}
