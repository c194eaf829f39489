//! How a [`DeviceClient`](crate::DeviceClient) connects: trust anchor, transport, port, timers.

use std::time::Duration;

/// Options for [`DeviceClient::connect`](crate::DeviceClient::connect).
///
/// The struct is `#[non_exhaustive]` so that later options (reconnect policy, X.509 client certificate,
/// proxy) can be added without breaking callers: start from [`DeviceClientOptions::default`] and use the
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
    /// Lifetime of the SAS tokens the client signs with the connection string's key. Default 1 h.
    pub sas_ttl: Duration,
    /// MQTT clean-session flag. Default `false`, as Azure's SDKs: the hub keeps the subscriptions of this
    /// client id across connections.
    pub clean_session: bool,
    /// How long a twin request, a subscription or a disconnect may take, queueing included. Default 30 s.
    pub operation_timeout: Duration,
    /// How long DNS, TCP, TLS, the WebSocket upgrade and CONNACK may take together. Default 30 s.
    pub connect_timeout: Duration,
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

    /// The keep-alive as CONNECT carries it: whole seconds, rounded up, saturating at the field's maximum.
    pub(crate) fn keep_alive_seconds(&self) -> u16 {
        let seconds = self.keep_alive.as_secs() + u64::from(self.keep_alive.subsec_nanos() > 0);
        u16::try_from(seconds).unwrap_or(u16::MAX)
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
