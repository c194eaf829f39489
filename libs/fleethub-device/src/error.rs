//! One error enum per operation: connecting, twin requests, sending messages, subscriptions, disconnecting.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use fleethub_mqtt::ConnectReturnCode;
use fleethub_protocol::ConnectionStringError;
use fleethub_protocol::errors::ReportedErrorCode;

/// Why [`DeviceClient::connect`](crate::DeviceClient::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string does not parse; the source names the offending key or value.
    #[error("invalid connection string: {0}")]
    InvalidConnectionString(#[from] ConnectionStringError),
    /// The connection string is valid but uses a credential this SDK cannot use yet.
    #[error("{0} is not supported by this client yet")]
    UnsupportedCredential(&'static str),
    /// The connection string's `SharedAccessSignature` expired (its `se` is not in the future). The client
    /// cannot sign a token it was handed ready-made: pass a new one, or a `SharedAccessKey` instead.
    #[error("the connection string's SharedAccessSignature expired (se={expiry_unix})")]
    SasTokenExpired { expiry_unix: u64 },
    /// `DeviceClientOptions::ca_pem` is `None`: the SDK carries no root certificates of its own.
    #[error(
        "no CA certificate given: set DeviceClientOptions::ca_pem to the PEM the hub's certificate chains to"
    )]
    MissingCaCertificate,
    /// `ca_pem` holds no usable certificate.
    #[error("invalid CA certificate: {0}")]
    InvalidCaCertificate(String),
    /// The connection string says `x509=true` and `DeviceClientOptions::client_certificate` is `None`.
    #[error(
        "the connection string says x509=true: set DeviceClientOptions::client_certificate to the device's certificate and key"
    )]
    MissingClientCertificate,
    /// `client_certificate` does not hold a usable certificate chain and private key.
    #[error("invalid client certificate: {0}")]
    InvalidClientCertificate(String),
    /// The host to dial is not a valid DNS name or IP address for TLS.
    #[error("{host:?} is not a valid host name for TLS")]
    InvalidHostName { host: String },
    /// DNS resolution failed or returned no address.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// Nothing listens on the hub's port (TCP RST): wrong port, or the hub is not running.
    #[error("connection refused by {address}")]
    TcpRefused { address: SocketAddr },
    /// Another TCP failure (unreachable network, reset, ...).
    #[error("cannot connect to {address}: {source}")]
    Tcp {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The hub's certificate did not verify against `ca_pem` (wrong CA, expired, or not issued for the
    /// dialled host name).
    #[error("the certificate of {host} was rejected: {reason}")]
    ServerCertificateRejected { host: String, reason: String },
    /// Another TLS failure (no common protocol version or cipher suite, alert from the server, ...).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP upgrade to a WebSocket (or the `mqtt` subprotocol) was refused.
    #[error("WebSocket upgrade failed: {reason}")]
    WebSocketUpgrade { reason: String },
    /// The hub answered CONNECT with a refusal. fleethub answers `NotAuthorized` (5) for a wrong key, an
    /// expired token, or an unknown or disabled device, and `BadUserNameOrPassword` (4) for a user name or
    /// token that does not parse; Azure's SDKs treat both as credential errors. `ServerUnavailable` (3) is
    /// worth retrying.
    #[error("the hub refused the connection: {} (CONNACK return code {})", describe_return_code(*.return_code), *.return_code as u8)]
    Refused { return_code: ConnectReturnCode },
    /// A stage did not finish before `connect_timeout` ran out.
    #[error("{stage} did not complete within {timeout:?}")]
    Timeout {
        stage: ConnectStage,
        timeout: Duration,
    },
    /// The hub closed the connection before answering CONNECT.
    #[error("the hub closed the connection before CONNACK")]
    ClosedBeforeConnAck,
    /// The hub sent something other than a well-formed CONNACK.
    #[error("MQTT protocol error while connecting: {0}")]
    Protocol(String),
    /// Reading or writing failed after the handshakes.
    #[error("i/o error while connecting: {0}")]
    Io(#[source] std::io::Error),
}

impl ConnectError {
    /// Whether retrying with the same credentials cannot help: bad configuration or a refusal of the
    /// credentials themselves. The reconnect logic uses this to stop retrying, as Azure's SDKs do.
    pub fn is_permanent(&self) -> bool {
        match self {
            ConnectError::InvalidConnectionString(_)
            | ConnectError::UnsupportedCredential(_)
            | ConnectError::SasTokenExpired { .. }
            | ConnectError::MissingCaCertificate
            | ConnectError::InvalidCaCertificate(_)
            | ConnectError::MissingClientCertificate
            | ConnectError::InvalidClientCertificate(_)
            | ConnectError::InvalidHostName { .. }
            | ConnectError::ServerCertificateRejected { .. } => true,
            ConnectError::Refused { return_code } => {
                !matches!(return_code, ConnectReturnCode::ServerUnavailable)
            }
            _ => false,
        }
    }
}

fn describe_return_code(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Accepted => "accepted",
        ConnectReturnCode::UnacceptableProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::IdentifierRejected => "client identifier rejected",
        ConnectReturnCode::ServerUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNameOrPassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

/// The step of connecting that a [`ConnectError::Timeout`] interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectStage {
    Resolve,
    Tcp,
    Tls,
    WebSocketUpgrade,
    ConnAck,
}

impl fmt::Display for ConnectStage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ConnectStage::Resolve => "DNS resolution",
            ConnectStage::Tcp => "TCP connect",
            ConnectStage::Tls => "TLS handshake",
            ConnectStage::WebSocketUpgrade => "WebSocket upgrade",
            ConnectStage::ConnAck => "MQTT CONNECT/CONNACK",
        })
    }
}

/// Why a twin request ([`get_twin`](crate::DeviceClient::get_twin),
/// [`patch_reported`](crate::DeviceClient::patch_reported)) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TwinError {
    /// The hub answered with a status of 300 or more, e.g. 400 for an invalid patch or 429 when throttled.
    #[error("the hub answered the twin request with status {status}: {message}")]
    Status {
        status: u16,
        /// The error code from the response body (`{"errorCode": 400004, ...}`), when there is one.
        code: ReportedErrorCode,
        /// The body's message, or the raw body when it has no recognised shape.
        message: String,
    },
    /// No response within `operation_timeout`. A reported patch may still have been applied.
    #[error("no twin response within {0:?}")]
    Timeout(Duration),
    /// The connection was lost and the request could not complete: the client was still reconnecting when
    /// its deadline passed, the hub had acknowledged a reported patch whose response went down with the
    /// connection, or the client is closed for good. A reported patch may still have been applied.
    #[error("the connection to the hub is closed")]
    Disconnected,
    /// The hub refused the subscription to `$iothub/twin/res/#`, so responses cannot arrive.
    #[error("the hub refused the subscription to twin responses")]
    SubscriptionRefused,
    /// A success status with a body or topic that does not have the expected shape.
    #[error("invalid twin response: {0}")]
    InvalidResponse(String),
}

/// Why [`send_message`](crate::DeviceClient::send_message) (or
/// [`send_message_at_most_once`](crate::DeviceClient::send_message_at_most_once)) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Over IoT Hub's 256 KB limit, counted as the hub counts it (body, system property values, application
    /// property names and values). The hub would close the connection, so it is not sent.
    #[error("the message is {bytes} bytes; IoT Hub accepts at most {max}")]
    TooLarge { bytes: usize, max: usize },
    /// No PUBACK within `operation_timeout`. The message stays queued and may still be delivered (it is
    /// re-sent after a reconnection until acknowledged).
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The client is closed for good, or (at most once) not connected right now.
    #[error("the connection to the hub is closed")]
    Disconnected,
}

/// Why [`desired_patches`](crate::DeviceClient::desired_patches) or
/// [`on_method`](crate::DeviceClient::on_method) failed to subscribe.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The hub answered SUBSCRIBE with the failure return code.
    #[error("the hub refused the subscription to {filter}")]
    Refused { filter: String },
    /// No SUBACK within `operation_timeout`. The subscription may still become active.
    #[error("no SUBACK within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the hub is closed")]
    Disconnected,
    /// A [`DesiredPatchStream`](crate::DesiredPatchStream) of this client is still alive; drop it first.
    #[error("this client already has a desired patch stream")]
    AlreadyActive,
}

/// Why [`disconnect`](crate::DeviceClient::disconnect) could not close the connection cleanly. The
/// connection is closed either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DisconnectError {
    #[error("sending DISCONNECT failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("the connection did not close within {0:?}")]
    Timeout(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_message_names_the_return_code() {
        let error = ConnectError::Refused {
            return_code: ConnectReturnCode::NotAuthorized,
        };
        assert_eq!(
            error.to_string(),
            "the hub refused the connection: not authorized (CONNACK return code 5)"
        );
        assert!(error.is_permanent());
        let unavailable = ConnectError::Refused {
            return_code: ConnectReturnCode::ServerUnavailable,
        };
        assert!(!unavailable.is_permanent());
    }
}
