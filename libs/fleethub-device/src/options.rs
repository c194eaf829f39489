//! How a [`DeviceClient`](crate::DeviceClient) connects and reconnects: trust anchor, transport, port, timers,
//! and the [`ReconnectPolicy`].

use std::net::IpAddr;
use std::time::Duration;

/// Options for [`DeviceClient::connect`](crate::DeviceClient::connect).
///
/// The struct is `#[non_exhaustive]` so that later options (proxy, message handling) can be added without breaking callers: start from [`DeviceClientOptions::default`] and use the
/// `with_*` methods or assign the public fields.
///
/// ```
/// use std::time::Duration;
/// use fleethub_device::{DeviceClientOptions, Transport};
///
/// let options = DeviceClientOptions::default()
///     .with_ca_pem("-----BEGIN CERTIFICATE-----\n...")
///     .with_transport(Transport::WebSocket)
///     .with_operation_timeout(Duration::from_secs(10));
/// assert_eq!(options.keep_alive, Duration::from_secs(60));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeviceClientOptions {
    /// PEM text of the certificate authority (or authorities) the hub's server certificate must chain to.
    /// Only these are trusted. Required for now: the SDK ships no system or webpki roots, so connecting to
    /// Azure IoT Hub means passing Azure's root CA here (DigiCert Global Root G2).
    pub ca_pem: Option<String>,
    /// MQTT over TLS (port 8883) or MQTT over secure WebSocket (port 443).
    pub transport: Transport,
    /// Dial this port instead of the transport's default; tests use it because the hub binds ephemeral
    /// ports. A `:port` in the dialled host name (`GatewayHostName=localhost:9999`) is honoured too, as the
    /// Node SDK does; this option wins over both.
    pub port: Option<u16>,
    /// MQTT keep-alive: a PINGREQ goes out after this long without sending anything, and the connection
    /// counts as lost when the PINGRESP does not come within the same interval. Zero turns it off. Whole
    /// seconds on the wire (rounded up); Azure allows at most 1767 s. Default 60 s, as Azure's SDKs.
    pub keep_alive: Duration,
    /// Lifetime of the SAS tokens the client signs with the connection string's key. Default 1 h. The client
    /// renews its token before it expires, by disconnecting and connecting again with a fresh one, once
    /// between `1.5 * m` and `m` of the lifetime is left, `m = min(2 min, sas_ttl / 5)` (after 57 to 58 min
    /// by default; Azure's SDKs renew 2 min early). The spread keeps a fleet that connected together from
    /// renewing together. Whole seconds on the wire, at least 1 s.
    pub sas_ttl: Duration,
    /// MQTT clean-session flag. Default `false`, as Azure's SDKs: the hub keeps the subscriptions of this
    /// client id across connections.
    pub clean_session: bool,
    /// How long a twin request, a subscription or a disconnect may take, queueing included. Default 30 s.
    pub operation_timeout: Duration,
    /// How long DNS, TCP, TLS, the WebSocket upgrade and CONNACK may take together, for the first connection
    /// and for every reconnection attempt. Default 30 s.
    pub connect_timeout: Duration,
    /// What to do after the connection is lost. Default: reconnect forever, with exponential backoff from
    /// 100 ms to 30 s and full jitter.
    pub reconnect: ReconnectPolicy,
    /// Bind the client's TCP socket to this local address (any free port) before connecting; only the hub's
    /// addresses of the same family are dialled. A simulator spreads many connections over several
    /// loopback addresses this way, since one source and destination address pair has only ~28k ports.
    /// Default: the operating system chooses.
    pub local_address: Option<IpAddr>,
    /// The device's X.509 certificate and private key, presented in the TLS handshake. Required with a
    /// connection string that says `x509=true` (the hub then authenticates the device by the certificate's
    /// thumbprint or by its chain to a verified CA, and CONNECT carries no password); presented but not
    /// relied on with a SAS connection string. Default: none.
    pub client_certificate: Option<ClientCertificate>,
}

/// An X.509 client certificate (leaf first, then any intermediates) and its private key, PEM.
#[derive(Clone)]
pub struct ClientCertificate {
    pub(crate) certificate_pem: String,
    pub(crate) key_pem: String,
}

impl ClientCertificate {
    /// From PEM text: the certificate chain (leaf first) and the private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(certificate_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            certificate_pem: certificate_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// From PEM files, as Azure's SDKs take them (`X509(cert_file, key_file)`).
    pub fn from_files(
        certificate_path: impl AsRef<std::path::Path>,
        key_path: impl AsRef<std::path::Path>,
    ) -> std::io::Result<Self> {
        Ok(Self::from_pem(
            std::fs::read_to_string(certificate_path)?,
            std::fs::read_to_string(key_path)?,
        ))
    }
}

impl std::fmt::Debug for ClientCertificate {
    /// Never prints the key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClientCertificate")
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

impl Default for DeviceClientOptions {
    fn default() -> Self {
        Self {
            ca_pem: None,
            transport: Transport::Mqtt,
            port: None,
            keep_alive: Duration::from_secs(60),
            sas_ttl: Duration::from_secs(3600),
            clean_session: false,
            operation_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            reconnect: ReconnectPolicy::default(),
            local_address: None,
            client_certificate: None,
        }
    }
}

impl DeviceClientOptions {
    pub fn with_ca_pem(mut self, ca_pem: impl Into<String>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        self
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    pub fn with_sas_ttl(mut self, sas_ttl: Duration) -> Self {
        self.sas_ttl = sas_ttl;
        self
    }

    pub fn with_clean_session(mut self, clean_session: bool) -> Self {
        self.clean_session = clean_session;
        self
    }

    pub fn with_operation_timeout(mut self, operation_timeout: Duration) -> Self {
        self.operation_timeout = operation_timeout;
        self
    }

    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    pub fn with_reconnect(mut self, reconnect: ReconnectPolicy) -> Self {
        self.reconnect = reconnect;
        self
    }

    pub fn with_local_address(mut self, local_address: IpAddr) -> Self {
        self.local_address = Some(local_address);
        self
    }

    pub fn with_client_certificate(mut self, client_certificate: ClientCertificate) -> Self {
        self.client_certificate = Some(client_certificate);
        self
    }

    /// The keep-alive as CONNECT carries it: whole seconds, rounded up, saturating at the field's maximum.
    pub(crate) fn keep_alive_seconds(&self) -> u16 {
        let seconds = self.keep_alive.as_secs() + u64::from(self.keep_alive.subsec_nanos() > 0);
        u16::try_from(seconds).unwrap_or(u16::MAX)
    }
}

/// When and how often a client reconnects after losing its connection.
///
/// The delay before reconnection attempt `n` (counting from 0 in each outage) is drawn uniformly from
/// `[0, min(max_delay, initial_delay * 2^n)]` ("full jitter"), so that thousands of devices cut off at the
/// same moment (a hub restart) do not come back at the same moment. A connection that then stays up for
/// at least `max_delay` resets the sequence. Attempts stop early, whatever `max_attempts` says, on an error
/// that retrying cannot fix ([`ConnectError::is_permanent`](crate::ConnectError::is_permanent): credentials
/// refused with CONNACK 4 or 5, an untrusted server certificate, ...).
///
/// The first connection ([`DeviceClient::connect`](crate::DeviceClient::connect)) is never retried: its
/// error goes straight to the caller. The planned reconnection that renews a SAS token is not a retry
/// either: it happens even with [`ReconnectPolicy::never`], and only counts against `max_attempts` when it
/// fails.
///
/// ```
/// use std::time::Duration;
/// use fleethub_device::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::default()
///     .with_initial_delay(Duration::from_millis(250))
///     .with_max_delay(Duration::from_secs(60))
///     .with_max_attempts(Some(20));
/// assert_eq!(policy.max_attempts, Some(20));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// The upper bound of the first delay. Default 100 ms. Values below 1 ms count as 1 ms.
    pub initial_delay: Duration,
    /// The largest upper bound any delay reaches. Default 30 s.
    pub max_delay: Duration,
    /// Reconnection attempts per outage before giving up; `None` (the default) never gives up on
    /// transient errors, `Some(0)` never reconnects.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect after a lost connection: the client ends in
    /// [`ConnectionState::Disconnected`](crate::ConnectionState::Disconnected) with the reason of the loss.
    /// SAS tokens are still renewed.
    pub fn never() -> Self {
        Self {
            max_attempts: Some(0),
            ..Self::default()
        }
    }

    pub fn with_initial_delay(mut self, initial_delay: Duration) -> Self {
        self.initial_delay = initial_delay;
        self
    }

    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    pub fn with_max_attempts(mut self, max_attempts: Option<u32>) -> Self {
        self.max_attempts = max_attempts;
        self
    }
}

/// The transport under MQTT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// MQTT 3.1.1 over TLS, port 8883.
    #[default]
    Mqtt,
    /// MQTT 3.1.1 over a secure WebSocket, port 443, path `/$iothub/websocket`, subprotocol `mqtt`: for
    /// networks that only let HTTPS out.
    WebSocket,
}

impl Transport {
    /// The port Azure IoT Hub serves this transport on.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Mqtt => 8883,
            Transport::WebSocket => 443,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_sent_in_whole_seconds_rounded_up() {
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_millis(1), 1),
            (Duration::from_secs(60), 60),
            (Duration::from_millis(60_001), 61),
            (Duration::from_secs(1_000_000), u16::MAX),
        ];
        for (keep_alive, expected) in cases {
            let options = DeviceClientOptions::default().with_keep_alive(keep_alive);
            assert_eq!(options.keep_alive_seconds(), expected, "{keep_alive:?}");
        }
    }
}
