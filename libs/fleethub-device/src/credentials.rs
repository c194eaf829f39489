//! Who the client is and how it proves it (PROTOCOL.md §2.2, §2.3): the MQTT client id, user name and
//! password, built from a device or module connection string. Pure: the caller passes the time.

use std::fmt;
use std::time::Duration;

use fleethub_protocol::ids::ClientId;
use fleethub_protocol::percent::quote;
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use fleethub_protocol::{
    ConnectionStringError, ConnectionStringKey, DeviceConnectionString, SasToken,
};

use crate::error::ConnectError;

/// The `api-version` in the MQTT user name. Azure accepts every version since 2016; this one is the one the
/// rest of fleethub speaks.
pub(crate) const API_VERSION: &str = "2021-04-12";
/// The product token in `DeviceClientType`, like `azure-iot-device-iothub-py/2.14.0`.
pub(crate) const CLIENT_TYPE: &str = concat!("fleethub-device/", env!("CARGO_PKG_VERSION"));

/// The identity a client connects as, taken from its connection string.
#[derive(Clone)]
pub(crate) struct Identity {
    /// `HostName`: goes into the user name and the token's resource, never dialled when a gateway is set.
    pub host_name: String,
    /// `GatewayHostName` when present, else `HostName`; may carry `:port`.
    pub dial_host: String,
    pub client_id: ClientId,
    credential: Credential,
}

#[derive(Clone)]
enum Credential {
    /// The decoded `SharedAccessKey`: a fresh token is signed for every connection.
    SharedAccessKey(Vec<u8>),
    /// A ready `SharedAccessSignature`: used as is until it expires; the client cannot renew it.
    SharedAccessSignature(String),
    /// `x509=true`: the TLS client certificate authenticates; CONNECT carries no password.
    X509,
}

impl fmt::Debug for Identity {
    /// Never prints key material.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match self.credential {
            Credential::SharedAccessKey(_) => "SharedAccessKey",
            Credential::SharedAccessSignature(_) => "SharedAccessSignature",
            Credential::X509 => "x509",
        };
        formatter
            .debug_struct("Identity")
            .field("host_name", &self.host_name)
            .field("dial_host", &self.dial_host)
            .field("client_id", &self.client_id)
            .field("credential", &credential)
            .finish()
    }
}

impl Identity {
    pub fn from_connection_string(text: &str) -> Result<Self, ConnectError> {
        let parsed: DeviceConnectionString = text.parse()?;
        let credential = match (&parsed.shared_access_key, &parsed.shared_access_signature) {
            _ if parsed.x509 => Credential::X509,
            (Some(key), _) => {
                let key = decode_key(key).map_err(|source| ConnectionStringError::InvalidKey {
                    key: ConnectionStringKey::SharedAccessKey,
                    source,
                })?;
                Credential::SharedAccessKey(key)
            }
            (None, Some(token)) => Credential::SharedAccessSignature(token.clone()),
            // The connection string parser requires exactly one credential.
            (None, None) => return Err(ConnectionStringError::MissingCredential.into()),
        };
        let client_id = match parsed.module_id {
            Some(module) => ClientId::module(parsed.device_id, module),
            None => ClientId::device(parsed.device_id),
        };
        Ok(Self {
            dial_host: parsed
                .gateway_host_name
                .unwrap_or_else(|| parsed.host_name.clone()),
            host_name: parsed.host_name,
            client_id,
            credential,
        })
    }

    /// `{HostName}/{clientId}/?api-version=...&DeviceClientType=fleethub-device%2F{version}`.
    pub fn username(&self) -> String {
        format!(
            "{}/{}/?api-version={API_VERSION}&DeviceClientType={}",
            self.host_name,
            self.client_id,
            quote(CLIENT_TYPE)
        )
    }

    /// The token resource, `{HostName}/devices/{id}[/modules/{mid}]`, unencoded.
    pub fn token_resource(&self) -> String {
        match &self.client_id.module {
            None => format!("{}/devices/{}", self.host_name, self.client_id.device),
            Some(module) => format!(
                "{}/devices/{}/modules/{module}",
                self.host_name, self.client_id.device
            ),
        }
    }

    /// Whether the identity authenticates with its TLS client certificate (`x509=true`).
    pub fn uses_x509(&self) -> bool {
        matches!(self.credential, Credential::X509)
    }

    /// The MQTT password for a connection made at `now_unix`: a token valid for `ttl`, the connection
    /// string's own token, or none for X.509 (as Azure's SDKs send it).
    pub fn mqtt_password(&self, now_unix: u64, ttl: Duration) -> Option<String> {
        (!self.uses_x509()).then(|| self.password(now_unix, ttl))
    }

    /// The SAS token for a connection made at `now_unix`: a token valid for `ttl`, or the connection
    /// string's own token. Empty for X.509, which sends none ([`Self::mqtt_password`]).
    pub fn password(&self, now_unix: u64, ttl: Duration) -> String {
        match &self.credential {
            Credential::X509 => String::new(),
            Credential::SharedAccessKey(key) => generate_sas_token(
                &self.token_resource(),
                key,
                signed_expiry(now_unix, ttl),
                None,
            ),
            Credential::SharedAccessSignature(token) => token.clone(),
        }
    }

    /// When the password of [`Identity::password`] for the same `now_unix` and `ttl` expires, and whether the
    /// client can sign a new one.
    pub fn token_expiry(&self, now_unix: u64, ttl: Duration) -> TokenExpiry {
        match &self.credential {
            Credential::X509 => TokenExpiry::NoToken,
            Credential::SharedAccessKey(_) => TokenExpiry::Renewable {
                expiry_unix: signed_expiry(now_unix, ttl),
            },
            Credential::SharedAccessSignature(token) => match token.parse::<SasToken>() {
                Ok(token) => TokenExpiry::Fixed {
                    expiry_unix: token.expiry,
                },
                // The hub will judge it; nothing for the client to watch.
                Err(_) => TokenExpiry::Unknown,
            },
        }
    }
}

/// `se` of a token signed at `now_unix` for `ttl` (at least one second).
fn signed_expiry(now_unix: u64, ttl: Duration) -> u64 {
    now_unix.saturating_add(ttl.as_secs().max(1))
}

/// When a connection's SAS token expires (`se`, Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenExpiry {
    /// Signed by the client from the connection string's key: it signs a new one before this.
    Renewable { expiry_unix: u64 },
    /// The connection string's own `SharedAccessSignature`: it cannot be replaced.
    Fixed { expiry_unix: u64 },
    /// A ready-made token whose `se` does not parse.
    Unknown,
    /// X.509: no token, nothing to renew.
    NoToken,
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`. A bare IPv6 address (several colons, no brackets) is
/// a host without a port.
pub(crate) fn split_host_port(text: &str) -> (&str, Option<u16>) {
    if let Some(rest) = text.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        let port = after.strip_prefix(':').and_then(|port| port.parse().ok());
        return (host, port);
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (text, None),
        },
        _ => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use fleethub_protocol::SasToken;

    use super::*;

    /// base64 of `0123456789abcdef0123456789abcdef`, the key of PROTOCOL.md's captured token.
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn identity(text: &str) -> Identity {
        Identity::from_connection_string(text).expect("valid connection string")
    }

    #[test]
    fn device_username_and_client_id_follow_azure() {
        let device = identity(&format!(
            "HostName=hub.example.net;DeviceId=dev1;SharedAccessKey={KEY}"
        ));
        assert_eq!(device.client_id.to_string(), "dev1");
        assert_eq!(
            device.username(),
            format!(
                "hub.example.net/dev1/?api-version=2021-04-12&DeviceClientType=fleethub-device%2F{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(device.dial_host, "hub.example.net");
    }

    #[test]
    fn module_username_token_and_client_id_name_the_module() {
        let module = identity(&format!(
            "HostName=hub.example.net;DeviceId=dev1;ModuleId=mod1;SharedAccessKey={KEY}"
        ));
        assert_eq!(module.client_id.to_string(), "dev1/mod1");
        assert!(
            module
                .username()
                .starts_with("hub.example.net/dev1/mod1/?api-version=2021-04-12&")
        );
        assert_eq!(
            module.token_resource(),
            "hub.example.net/devices/dev1/modules/mod1"
        );
        let token: SasToken = module
            .password(1_000, Duration::from_secs(60))
            .parse()
            .expect("token parses");
        assert_eq!(token.resource, "hub.example.net/devices/dev1/modules/mod1");
    }

    #[test]
    fn password_matches_the_token_python_captured() {
        // PROTOCOL.md §2.2: HostName=localhost, dev1, that key, se=1795663402.
        let device = identity(&format!(
            "HostName=localhost;DeviceId=dev1;SharedAccessKey={KEY}"
        ));
        let password = device.password(1_795_663_402 - 3600, Duration::from_secs(3600));
        assert_eq!(
            password,
            "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig=e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D&se=1795663402"
        );
        let token: SasToken = password.parse().expect("token parses");
        let key = decode_key(KEY).expect("key decodes");
        assert!(token.signature_matches(&key));
    }

    #[test]
    fn gateway_is_dialled_but_host_name_is_authenticated() {
        let device = identity(&format!(
            "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey={KEY};GatewayHostName=localhost:9999"
        ));
        assert_eq!(device.dial_host, "localhost:9999");
        assert!(
            device
                .username()
                .starts_with("myhub.azure-devices.net/dev1/?")
        );
        let token: SasToken = device
            .password(0, Duration::from_secs(10))
            .parse()
            .expect("token parses");
        assert_eq!(token.resource, "myhub.azure-devices.net/devices/dev1");
    }

    #[test]
    fn ready_made_token_is_passed_through_with_its_fixed_expiry() {
        let token = "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig=e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D&se=1";
        let device = identity(&format!(
            "HostName=localhost;DeviceId=dev1;SharedAccessSignature={token}"
        ));
        assert_eq!(device.password(5, Duration::from_secs(60)), token);
        assert_eq!(
            device.token_expiry(5, Duration::from_secs(60)),
            TokenExpiry::Fixed { expiry_unix: 1 }
        );
        let unreadable = identity("HostName=localhost;DeviceId=dev1;SharedAccessSignature=opaque");
        assert_eq!(
            unreadable.token_expiry(5, Duration::from_secs(60)),
            TokenExpiry::Unknown
        );
    }

    #[test]
    fn signed_token_expiry_matches_its_se() {
        let device = identity(&format!(
            "HostName=localhost;DeviceId=dev1;SharedAccessKey={KEY}"
        ));
        let ttl = Duration::from_millis(3500);
        let token: SasToken = device.password(1_000, ttl).parse().expect("token parses");
        assert_eq!(token.expiry, 1_003);
        assert_eq!(
            device.token_expiry(1_000, ttl),
            TokenExpiry::Renewable { expiry_unix: 1_003 }
        );
        assert_eq!(
            device.token_expiry(1_000, Duration::ZERO),
            TokenExpiry::Renewable { expiry_unix: 1_001 },
            "at least one second"
        );
    }

    #[test]
    fn x509_identities_send_no_password_and_renew_nothing() {
        let x509 = identity("HostName=h;DeviceId=d;x509=true");
        assert!(x509.uses_x509());
        assert_eq!(x509.mqtt_password(5, Duration::from_secs(60)), None);
        assert_eq!(
            x509.token_expiry(5, Duration::from_secs(60)),
            TokenExpiry::NoToken
        );
        assert_eq!(
            x509.username(),
            identity(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}")).username()
        );
        assert!(format!("{x509:?}").contains("x509"));
        let sas = identity(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}"));
        assert!(sas.mqtt_password(5, Duration::from_secs(60)).is_some());
    }

    #[test]
    fn malformed_strings_are_refused_with_the_reason() {
        let missing = Identity::from_connection_string("HostName=h;SharedAccessKey=abcd")
            .expect_err("no DeviceId");
        assert_eq!(
            missing.to_string(),
            "invalid connection string: connection string has no DeviceId"
        );
        let unknown = Identity::from_connection_string("HostName=h;DeviceId=d;Key=x")
            .expect_err("unknown key");
        assert!(
            unknown.to_string().contains("\"Key\" is unknown"),
            "{unknown}"
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let device = identity(&format!(
            "HostName=localhost;DeviceId=dev1;SharedAccessKey={KEY}"
        ));
        let debug = format!("{device:?}");
        assert!(!debug.contains(KEY) && !debug.contains("48, 49"), "{debug}");
    }

    #[test]
    fn host_and_port_split_like_node() {
        let cases = [
            ("localhost", ("localhost", None)),
            ("localhost:8883", ("localhost", Some(8883))),
            ("127.0.0.1:1", ("127.0.0.1", Some(1))),
            ("hub.example.net", ("hub.example.net", None)),
            ("[::1]:8883", ("::1", Some(8883))),
            ("[::1]", ("::1", None)),
            ("::1", ("::1", None)),
            ("host:notaport", ("host:notaport", None)),
            ("host:70000", ("host:70000", None)),
        ];
        for (text, expected) in cases {
            assert_eq!(split_host_port(text), expected, "{text}");
        }
    }
}
