//! Dialling the hub: DNS, TCP, TLS (rustls with the ring provider, trusting only the given CA) and, for the
//! WebSocket transport, the HTTP upgrade to `/$iothub/websocket` with subprotocol `mqtt`. The result is one
//! byte stream type, [`HubStream`], so the MQTT connection code does not care which transport is underneath.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{ClientRequestBuilder, Message, http::Uri};

use crate::error::{ConnectError, ConnectStage};
use crate::options::{ClientCertificate, Transport};

/// The path Azure IoT Hub serves MQTT over WebSocket on.
pub(crate) const WEBSOCKET_PATH: &str = "/$iothub/websocket";
/// The WebSocket subprotocol for MQTT 3.1.1.
const WEBSOCKET_SUBPROTOCOL: &str = "mqtt";
/// tungstenite allocates its read buffer eagerly (128 KiB by default); 4 KiB keeps thousands of clients in
/// one process cheap, and larger messages still arrive whole.
const WEBSOCKET_READ_BUFFER: usize = 4 * 1024;

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A connected transport: MQTT bytes in both directions.
pub(crate) enum HubStream {
    Tls(Box<TlsStream>),
    WebSocket(Box<WebSocketBytes>),
}

/// Where and how to dial.
pub(crate) struct DialTarget<'a> {
    /// The host to dial and to verify the certificate against (no port).
    pub host: &'a str,
    pub port: u16,
    pub transport: Transport,
    pub tls: Arc<ClientConfig>,
    /// The largest MQTT packet accepted, which bounds WebSocket messages too.
    pub max_packet_size: usize,
    /// The local address to bind before connecting (`DeviceClientOptions::local_address`).
    pub local_address: Option<IpAddr>,
}

/// Runs DNS, TCP, TLS and (for WebSocket) the upgrade, all before `deadline`.
pub(crate) async fn dial(
    target: DialTarget<'_>,
    deadline: Instant,
    timeout: Duration,
) -> Result<HubStream, ConnectError> {
    let host = target.host;
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|_| ConnectError::InvalidHostName {
            host: host.to_owned(),
        })?;
    let within =
        |stage| move |_: tokio::time::error::Elapsed| ConnectError::Timeout { stage, timeout };

    let addresses: Vec<_> =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, target.port)))
            .await
            .map_err(within(ConnectStage::Resolve))?
            .map_err(|source| ConnectError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .collect();
    // A socket bound to a local address reaches only addresses of its family.
    let addresses: Vec<_> = addresses
        .into_iter()
        .filter(|address| {
            target
                .local_address
                .is_none_or(|local| local.is_ipv4() == address.is_ipv4())
        })
        .collect();
    if addresses.is_empty() {
        let reason = match target.local_address {
            Some(local) => format!("no address of the family of the local address {local}"),
            None => "no address found".to_owned(),
        };
        let source = io::Error::new(io::ErrorKind::NotFound, reason);
        return Err(ConnectError::Resolve {
            host: host.to_owned(),
            source,
        });
    }

    let mut last_error = None;
    let mut tcp = None;
    for address in addresses {
        match tokio::time::timeout_at(deadline, connect_tcp(address, target.local_address))
            .await
            .map_err(within(ConnectStage::Tcp))?
        {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(source) if source.kind() == io::ErrorKind::ConnectionRefused => {
                last_error = Some(ConnectError::TcpRefused { address });
            }
            Err(source) => last_error = Some(ConnectError::Tcp { address, source }),
        }
    }
    let Some(tcp) = tcp else {
        return Err(last_error.expect("at least one address was tried"));
    };
    // MQTT packets are small and latency matters more than coalescing.
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }

    let tls = tokio::time::timeout_at(
        deadline,
        TlsConnector::from(target.tls).connect(server_name, tcp),
    )
    .await
    .map_err(within(ConnectStage::Tls))?
    .map_err(|source| tls_error(host, source))?;

    match target.transport {
        Transport::Mqtt => Ok(HubStream::Tls(Box::new(tls))),
        Transport::WebSocket => {
            let uri = websocket_uri(host, target.port)?;
            let request = ClientRequestBuilder::new(uri).with_sub_protocol(WEBSOCKET_SUBPROTOCOL);
            let config = WebSocketConfig::default()
                .read_buffer_size(WEBSOCKET_READ_BUFFER)
                .max_message_size(Some(target.max_packet_size))
                .max_frame_size(Some(target.max_packet_size));
            let (socket, _response) = tokio::time::timeout_at(
                deadline,
                tokio_tungstenite::client_async_with_config(request, tls, Some(config)),
            )
            .await
            .map_err(within(ConnectStage::WebSocketUpgrade))?
            .map_err(|error| ConnectError::WebSocketUpgrade {
                reason: error.to_string(),
            })?;
            Ok(HubStream::WebSocket(Box::new(WebSocketBytes::new(socket))))
        }
    }
}

/// Connects, from `local_address` (any free port) when given.
async fn connect_tcp(address: SocketAddr, local_address: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(local_address) = local_address else {
        return TcpStream::connect(address).await;
    };
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local_address, 0))?;
    socket.connect(address).await
}

/// `wss://{host}:{port}/$iothub/websocket`, with IPv6 addresses in brackets.
fn websocket_uri(host: &str, port: u16) -> Result<Uri, ConnectError> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    format!("wss://{authority}{WEBSOCKET_PATH}")
        .parse()
        .map_err(|_| ConnectError::InvalidHostName {
            host: host.to_owned(),
        })
}

/// Tells a rejected server certificate (the usual mistake: wrong `ca_pem`) from other TLS failures.
fn tls_error(host: &str, source: io::Error) -> ConnectError {
    let rustls_error = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(
            error @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) => ConnectError::ServerCertificateRejected {
            host: host.to_owned(),
            reason: error.to_string(),
        },
        _ => ConnectError::Tls {
            host: host.to_owned(),
            source,
        },
    }
}

/// The TLS client configuration trusting exactly the certificates in `ca_pem`: TLS 1.2 and 1.3, ring.
///
/// The last configuration built is reused while `ca_pem` stays the same, so that thousands of clients in one
/// process (the load tool) share one root store and one session-resumption cache instead of parsing the CA
/// thousands of times.
pub(crate) fn tls_config(ca_pem: &str) -> Result<Arc<ClientConfig>, ConnectError> {
    static LAST: Mutex<Option<(String, Arc<ClientConfig>)>> = Mutex::new(None);
    // A poisoned cache only means another thread panicked mid-update; the value is still a valid Option.
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((pem, config)) = last.as_ref()
        && pem == ca_pem
    {
        return Ok(Arc::clone(config));
    }
    let config = Arc::new(build_tls_config(ca_pem, None)?);
    *last = Some((ca_pem.to_owned(), Arc::clone(&config)));
    Ok(config)
}

/// [`tls_config`] that also presents a client certificate (X.509 authentication); never shared, as the key
/// is the device's own.
pub(crate) fn tls_config_with_client_certificate(
    ca_pem: &str,
    client_certificate: &ClientCertificate,
) -> Result<Arc<ClientConfig>, ConnectError> {
    Ok(Arc::new(build_tls_config(
        ca_pem,
        Some(client_certificate),
    )?))
}

fn build_tls_config(
    ca_pem: &str,
    client_certificate: Option<&ClientCertificate>,
) -> Result<ClientConfig, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidCaCertificate(reason);
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let certificate =
            certificate.map_err(|error| invalid(format!("cannot read PEM: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| invalid(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("ca_pem contains no CERTIFICATE block".into()));
    }
    // Explicitly ring: rustls' process-wide default provider may be unset or aws-lc in the host program.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| invalid(format!("TLS setup: {error}")))?
        .with_root_certificates(roots);
    let Some(client_certificate) = client_certificate else {
        return Ok(config.with_no_client_auth());
    };
    let invalid = |reason: String| ConnectError::InvalidClientCertificate(reason);
    let chain = CertificateDer::pem_slice_iter(client_certificate.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("cannot read the certificate PEM: {error}")))?;
    if chain.is_empty() {
        return Err(invalid(
            "the certificate PEM contains no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(client_certificate.key_pem.as_bytes())
        .map_err(|error| invalid(format!("cannot read the private key PEM: {error}")))?;
    config
        .with_client_auth_cert(chain, key)
        .map_err(|error| invalid(format!("the key does not fit the certificate: {error}")))
}

impl AsyncRead for HubStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HubStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
            HubStream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for HubStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            HubStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, data),
            HubStream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_write(context, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HubStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
            HubStream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HubStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
            HubStream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

/// A client WebSocket as a byte stream: reads yield the bytes of binary messages in order (MQTT packets may
/// span or share messages), each write becomes one binary message.
pub(crate) struct WebSocketBytes {
    socket: WebSocketStream<TlsStream>,
    pending: Bytes,
    closed: bool,
}

impl WebSocketBytes {
    fn new(socket: WebSocketStream<TlsStream>) -> Self {
        Self {
            socket,
            pending: Bytes::new(),
            closed: false,
        }
    }
}

fn websocket_io_error(error: tokio_tungstenite::tungstenite::Error) -> io::Error {
    match error {
        tokio_tungstenite::tungstenite::Error::Io(error) => error,
        other => io::Error::other(other),
    }
}

impl AsyncRead for WebSocketBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let take = self.pending.len().min(buffer.remaining());
                buffer.put_slice(&self.pending[..take]);
                self.pending.advance(take);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.socket).poll_next(context)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // tungstenite answers pings itself; pongs and raw frames carry nothing for MQTT.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary messages",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => self.closed = true,
                Some(Err(error)) => return Poll::Ready(Err(websocket_io_error(error))),
            }
        }
    }
}

impl AsyncWrite for WebSocketBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.socket).poll_ready(context)).map_err(websocket_io_error)?;
        Pin::new(&mut self.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(websocket_io_error)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_flush(context)
            .map_err(websocket_io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_close(context)
            .map_err(websocket_io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_uri_uses_the_azure_path_and_brackets_ipv6() {
        assert_eq!(
            websocket_uri("localhost", 443).expect("valid").to_string(),
            "wss://localhost:443/$iothub/websocket"
        );
        assert_eq!(
            websocket_uri("::1", 8443).expect("valid").to_string(),
            "wss://[::1]:8443/$iothub/websocket"
        );
    }

    #[tokio::test]
    async fn a_local_address_is_the_source_of_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("bound");
        let local: IpAddr = "127.0.0.2".parse().expect("an address");
        let (connected, accepted) =
            tokio::join!(connect_tcp(address, Some(local)), listener.accept());
        let connected = connected.expect("connected from 127.0.0.2");
        assert_eq!(connected.local_addr().expect("bound").ip(), local);
        assert_eq!(accepted.expect("accepted").1.ip(), local);
    }

    #[test]
    fn ca_pem_without_certificates_is_refused() {
        for pem in [
            "",
            "not a pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let error = build_tls_config(pem, None).expect_err("no certificate");
            assert!(
                matches!(error, ConnectError::InvalidCaCertificate(_)),
                "{pem:?}: {error}"
            );
        }
    }
    #[test]
    fn a_client_certificate_must_read_and_fit_its_key() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&ca_key)
            .expect("certificate");
        let device_key = rcgen::KeyPair::generate().expect("key");
        let device = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&device_key)
            .expect("certificate");
        let fits = ClientCertificate::from_pem(device.pem(), device_key.serialize_pem());
        assert!(build_tls_config(&ca.pem(), Some(&fits)).is_ok());
        let cases = [
            (
                "no certificate",
                ClientCertificate::from_pem("", device_key.serialize_pem()),
            ),
            ("no key", ClientCertificate::from_pem(device.pem(), "")),
            (
                "another key",
                ClientCertificate::from_pem(device.pem(), ca_key.serialize_pem()),
            ),
        ];
        for (case, certificate) in cases {
            let error = build_tls_config(&ca.pem(), Some(&certificate)).expect_err(case);
            assert!(
                matches!(error, ConnectError::InvalidClientCertificate(_)),
                "{case}: {error}"
            );
        }
        assert!(
            !format!("{fits:?}").contains("PRIVATE KEY"),
            "the key stays out of Debug"
        );
    }
}
