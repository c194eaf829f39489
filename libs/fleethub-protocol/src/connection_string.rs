//! Azure IoT Hub connection strings (`HostName=...;DeviceId=...;SharedAccessKey=...`): the generic
//! key/value form and the typed device and service forms.
//!
//! Grammar, as in the Python SDK (`azure/iot/device/common/auth/connection_string.py`): split on `;`, then
//! each part on its first `=` (values such as keys and SAS tokens contain `=`). Keys are case-sensitive and
//! limited to Azure's set; duplicates are rejected. Credential rules follow the Node device SDK
//! (`azure-iot-device/dist/connection_string.js`): exactly one of `SharedAccessKey`, `SharedAccessSignature`
//! and `x509=true`.

use std::fmt;
use std::str::FromStr;

use crate::ids::{DeviceId, IdError, ModuleId};
use crate::sas::{KeyError, decode_key};

/// The keys Azure defines for connection strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionStringKey {
    HostName,
    SharedAccessKeyName,
    SharedAccessKey,
    SharedAccessSignature,
    DeviceId,
    ModuleId,
    GatewayHostName,
    X509,
}

impl ConnectionStringKey {
    pub const ALL: [ConnectionStringKey; 8] = [
        ConnectionStringKey::HostName,
        ConnectionStringKey::SharedAccessKeyName,
        ConnectionStringKey::SharedAccessKey,
        ConnectionStringKey::SharedAccessSignature,
        ConnectionStringKey::DeviceId,
        ConnectionStringKey::ModuleId,
        ConnectionStringKey::GatewayHostName,
        ConnectionStringKey::X509,
    ];

    /// The key as written in connection strings (note the lower-case `x509`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStringKey::HostName => "HostName",
            ConnectionStringKey::SharedAccessKeyName => "SharedAccessKeyName",
            ConnectionStringKey::SharedAccessKey => "SharedAccessKey",
            ConnectionStringKey::SharedAccessSignature => "SharedAccessSignature",
            ConnectionStringKey::DeviceId => "DeviceId",
            ConnectionStringKey::ModuleId => "ModuleId",
            ConnectionStringKey::GatewayHostName => "GatewayHostName",
            ConnectionStringKey::X509 => "x509",
        }
    }

    /// Exact, case-sensitive lookup, as the Python SDK does it.
    pub fn from_name(name: &str) -> Option<ConnectionStringKey> {
        Self::ALL.into_iter().find(|key| key.as_str() == name)
    }
}

impl fmt::Display for ConnectionStringKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why a connection string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string is empty")]
    Empty,
    #[error("connection string part {part:?} has no '='")]
    PartWithoutEquals { part: String },
    #[error(
        "connection string key {key:?} is unknown (known keys: HostName, SharedAccessKeyName, SharedAccessKey, SharedAccessSignature, DeviceId, ModuleId, GatewayHostName, x509)"
    )]
    UnknownKey { key: String },
    #[error("connection string key {key} appears more than once")]
    DuplicateKey { key: ConnectionStringKey },
    #[error("connection string value of {key} is empty")]
    EmptyValue { key: ConnectionStringKey },
    #[error("connection string has no {key}")]
    MissingKey { key: ConnectionStringKey },
    #[error("{key} is not allowed in a {kind} connection string")]
    KeyNotAllowed {
        key: ConnectionStringKey,
        kind: &'static str,
    },
    #[error("connection string has both {first} and {second}; use exactly one credential")]
    ConflictingCredentials {
        first: ConnectionStringKey,
        second: ConnectionStringKey,
    },
    #[error(
        "device connection string has no credential: add SharedAccessKey, SharedAccessSignature or x509=true"
    )]
    MissingCredential,
    #[error("x509 must be true or false, not {value:?}")]
    InvalidX509 { value: String },
    #[error("{key} is invalid: {source}")]
    InvalidKey {
        key: ConnectionStringKey,
        source: KeyError,
    },
    #[error("DeviceId is invalid: {0}")]
    InvalidDeviceId(IdError),
    #[error("ModuleId is invalid: {0}")]
    InvalidModuleId(IdError),
    #[error("{key} {value:?} is not a host name")]
    InvalidHostName {
        key: ConnectionStringKey,
        value: String,
    },
}

/// A syntactically valid connection string: known keys, each at most once, in their original order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    entries: Vec<(ConnectionStringKey, String)>,
}

impl ConnectionString {
    pub fn get(&self, key: ConnectionStringKey) -> Option<&str> {
        self.entries
            .iter()
            .find(|(entry_key, _)| *entry_key == key)
            .map(|(_, value)| value.as_str())
    }

    pub fn entries(&self) -> &[(ConnectionStringKey, String)] {
        &self.entries
    }

    fn require(&self, key: ConnectionStringKey) -> Result<&str, ConnectionStringError> {
        self.get(key)
            .ok_or(ConnectionStringError::MissingKey { key })
    }

    fn reject_keys(
        &self,
        keys: &[ConnectionStringKey],
        kind: &'static str,
    ) -> Result<(), ConnectionStringError> {
        match self.entries.iter().find(|(key, _)| keys.contains(key)) {
            Some((key, _)) => Err(ConnectionStringError::KeyNotAllowed { key: *key, kind }),
            None => Ok(()),
        }
    }
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    /// Whitespace around the string and around each value is ignored and empty parts are skipped (Node
    /// tolerates a trailing `;`, which copy-pasted strings often have); everything else is strict.
    fn from_str(text: &str) -> Result<Self, ConnectionStringError> {
        let mut entries: Vec<(ConnectionStringKey, String)> = Vec::new();
        for part in text.trim().split(';').filter(|part| !part.is_empty()) {
            let (name, value) =
                part.split_once('=')
                    .ok_or_else(|| ConnectionStringError::PartWithoutEquals {
                        part: part.to_owned(),
                    })?;
            let key = ConnectionStringKey::from_name(name).ok_or_else(|| {
                ConnectionStringError::UnknownKey {
                    key: name.to_owned(),
                }
            })?;
            if entries.iter().any(|(existing, _)| *existing == key) {
                return Err(ConnectionStringError::DuplicateKey { key });
            }
            // Spaces around a value mean nothing, as around the whole string: kept, they would vanish once
            // the value is printed last (found by fuzzing).
            let value = value.trim();
            if value.is_empty() {
                return Err(ConnectionStringError::EmptyValue { key });
            }
            entries.push((key, value.to_owned()));
        }
        if entries.is_empty() {
            return Err(ConnectionStringError::Empty);
        }
        Ok(ConnectionString { entries })
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (key, value)) in self.entries.iter().enumerate() {
            if index > 0 {
                formatter.write_str(";")?;
            }
            write!(formatter, "{key}={value}")?;
        }
        Ok(())
    }
}

/// A host name as it may appear in `HostName`/`GatewayHostName`: non-empty, optionally with `:port`,
/// no whitespace and no path.
fn validate_host_name(key: ConnectionStringKey, value: &str) -> Result<(), ConnectionStringError> {
    let looks_like_host = !value.is_empty()
        && !value.contains(|character: char| character.is_whitespace() || character == '/');
    if looks_like_host {
        Ok(())
    } else {
        Err(ConnectionStringError::InvalidHostName {
            key,
            value: value.to_owned(),
        })
    }
}

/// A device or module connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConnectionString {
    /// The hub's host name, possibly with `:port`; goes into the SAS resource and MQTT user name.
    pub host_name: String,
    pub device_id: DeviceId,
    pub module_id: Option<ModuleId>,
    /// Base64 device or module key.
    pub shared_access_key: Option<String>,
    /// The host to dial when it differs from `host_name` (a gateway, or a local hub in tests).
    pub gateway_host_name: Option<String>,
    pub x509: bool,
    /// A ready-made `SharedAccessSignature sr=...` token.
    pub shared_access_signature: Option<String>,
}

impl FromStr for DeviceConnectionString {
    type Err = ConnectionStringError;

    fn from_str(text: &str) -> Result<Self, ConnectionStringError> {
        text.parse::<ConnectionString>()?.try_into()
    }
}

impl TryFrom<ConnectionString> for DeviceConnectionString {
    type Error = ConnectionStringError;

    fn try_from(connection_string: ConnectionString) -> Result<Self, ConnectionStringError> {
        use ConnectionStringKey as Key;
        // Device strings that authenticate with a policy (SharedAccessKeyName) are legal in Azure but
        // a device would then hold a hub-wide key; we do not support them.
        connection_string.reject_keys(&[Key::SharedAccessKeyName], "device")?;

        let host_name = connection_string.require(Key::HostName)?;
        validate_host_name(Key::HostName, host_name)?;
        let device_id = DeviceId::new(connection_string.require(Key::DeviceId)?)
            .map_err(ConnectionStringError::InvalidDeviceId)?;
        let module_id = connection_string
            .get(Key::ModuleId)
            .map(ModuleId::new)
            .transpose()
            .map_err(ConnectionStringError::InvalidModuleId)?;
        let gateway_host_name = connection_string.get(Key::GatewayHostName);
        if let Some(gateway) = gateway_host_name {
            validate_host_name(Key::GatewayHostName, gateway)?;
        }
        let x509 = match connection_string.get(Key::X509) {
            None => false,
            Some(value) if value.eq_ignore_ascii_case("true") => true,
            Some(value) if value.eq_ignore_ascii_case("false") => false,
            Some(value) => {
                return Err(ConnectionStringError::InvalidX509 {
                    value: value.to_owned(),
                });
            }
        };
        let shared_access_key = connection_string.get(Key::SharedAccessKey);
        if let Some(key) = shared_access_key {
            decode_key(key).map_err(|source| ConnectionStringError::InvalidKey {
                key: Key::SharedAccessKey,
                source,
            })?;
        }
        let shared_access_signature = connection_string.get(Key::SharedAccessSignature);

        let credentials: Vec<ConnectionStringKey> = [
            shared_access_key.map(|_| Key::SharedAccessKey),
            shared_access_signature.map(|_| Key::SharedAccessSignature),
            x509.then_some(Key::X509),
        ]
        .into_iter()
        .flatten()
        .collect();
        match credentials.as_slice() {
            [] => return Err(ConnectionStringError::MissingCredential),
            [_] => {}
            [first, second, ..] => {
                return Err(ConnectionStringError::ConflictingCredentials {
                    first: *first,
                    second: *second,
                });
            }
        }

        Ok(DeviceConnectionString {
            host_name: host_name.to_owned(),
            device_id,
            module_id,
            shared_access_key: shared_access_key.map(str::to_owned),
            gateway_host_name: gateway_host_name.map(str::to_owned),
            x509,
            shared_access_signature: shared_access_signature.map(str::to_owned),
        })
    }
}

impl fmt::Display for DeviceConnectionString {
    /// Azure portal order: `HostName;DeviceId;ModuleId;SharedAccessKey`, then the rest.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "HostName={};DeviceId={}",
            self.host_name, self.device_id
        )?;
        if let Some(module_id) = &self.module_id {
            write!(formatter, ";ModuleId={module_id}")?;
        }
        if let Some(key) = &self.shared_access_key {
            write!(formatter, ";SharedAccessKey={key}")?;
        }
        if let Some(signature) = &self.shared_access_signature {
            write!(formatter, ";SharedAccessSignature={signature}")?;
        }
        if self.x509 {
            formatter.write_str(";x509=true")?;
        }
        if let Some(gateway) = &self.gateway_host_name {
            write!(formatter, ";GatewayHostName={gateway}")?;
        }
        Ok(())
    }
}

/// A service (shared access policy) connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConnectionString {
    /// Host name, possibly with `:port` (the Python service SDK dials `https://{HostName}`).
    pub host_name: String,
    pub shared_access_key_name: String,
    /// Base64 policy key.
    pub shared_access_key: String,
}

impl FromStr for ServiceConnectionString {
    type Err = ConnectionStringError;

    fn from_str(text: &str) -> Result<Self, ConnectionStringError> {
        text.parse::<ConnectionString>()?.try_into()
    }
}

impl TryFrom<ConnectionString> for ServiceConnectionString {
    type Error = ConnectionStringError;

    fn try_from(connection_string: ConnectionString) -> Result<Self, ConnectionStringError> {
        use ConnectionStringKey as Key;
        connection_string.reject_keys(
            &[
                Key::DeviceId,
                Key::ModuleId,
                Key::SharedAccessSignature,
                Key::GatewayHostName,
                Key::X509,
            ],
            "service",
        )?;
        let host_name = connection_string.require(Key::HostName)?;
        validate_host_name(Key::HostName, host_name)?;
        let shared_access_key_name = connection_string.require(Key::SharedAccessKeyName)?;
        let shared_access_key = connection_string.require(Key::SharedAccessKey)?;
        decode_key(shared_access_key).map_err(|source| ConnectionStringError::InvalidKey {
            key: Key::SharedAccessKey,
            source,
        })?;
        Ok(ServiceConnectionString {
            host_name: host_name.to_owned(),
            shared_access_key_name: shared_access_key_name.to_owned(),
            shared_access_key: shared_access_key.to_owned(),
        })
    }
}

impl fmt::Display for ServiceConnectionString {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name, self.shared_access_key_name, self.shared_access_key
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdKind;
    use ConnectionStringKey as Key;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn generic_parse_table() {
        type Entries = Vec<(Key, &'static str)>;
        let cases: Vec<(&str, Result<Entries, ConnectionStringError>)> = vec![
            (
                "HostName=h;DeviceId=d",
                Ok(vec![(Key::HostName, "h"), (Key::DeviceId, "d")]),
            ),
            (
                "SharedAccessKey=a==;x509=true",
                Ok(vec![(Key::SharedAccessKey, "a=="), (Key::X509, "true")]),
            ),
            ("HostName=h;", Ok(vec![(Key::HostName, "h")])),
            (" HostName=h\n", Ok(vec![(Key::HostName, "h")])),
            ("", Err(ConnectionStringError::Empty)),
            (";;", Err(ConnectionStringError::Empty)),
            (
                "HostName",
                Err(ConnectionStringError::PartWithoutEquals {
                    part: "HostName".to_owned(),
                }),
            ),
            (
                "hostname=h",
                Err(ConnectionStringError::UnknownKey {
                    key: "hostname".to_owned(),
                }),
            ),
            (
                "HostName=h;Foo=bar",
                Err(ConnectionStringError::UnknownKey {
                    key: "Foo".to_owned(),
                }),
            ),
            (
                "HostName=h;HostName=i",
                Err(ConnectionStringError::DuplicateKey { key: Key::HostName }),
            ),
            (
                "HostName=",
                Err(ConnectionStringError::EmptyValue { key: Key::HostName }),
            ),
            (
                "SharedAccessSignature= ;HostName=h",
                Err(ConnectionStringError::EmptyValue {
                    key: Key::SharedAccessSignature,
                }),
            ),
        ];
        for (input, expected) in cases {
            let actual = input.parse::<ConnectionString>().map(|parsed| {
                parsed
                    .entries()
                    .iter()
                    .map(|(key, value)| (*key, value.clone()))
                    .collect::<Vec<_>>()
            });
            let expected = expected.map(|entries| {
                entries
                    .into_iter()
                    .map(|(key, value)| (key, value.to_owned()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(actual, expected, "{input:?}");
        }
    }

    #[test]
    fn error_messages_name_the_offending_key() {
        let message = |input: &str| {
            input
                .parse::<DeviceConnectionString>()
                .map(|_| ())
                .map_err(|error| error.to_string())
        };
        assert_eq!(
            message("HostName=h;Foo=bar"),
            Err("connection string key \"Foo\" is unknown (known keys: HostName, SharedAccessKeyName, SharedAccessKey, SharedAccessSignature, DeviceId, ModuleId, GatewayHostName, x509)".to_owned())
        );
        assert_eq!(
            message("HostName=h;DeviceId=d;DeviceId=e"),
            Err("connection string key DeviceId appears more than once".to_owned())
        );
        assert_eq!(
            message("HostName=h"),
            Err("connection string has no DeviceId".to_owned())
        );
    }

    #[test]
    fn device_connection_string_table() {
        let device = |text: &str| DeviceId::new(text).expect("valid");
        let base = DeviceConnectionString {
            host_name: "myhub.azure-devices.net".to_owned(),
            device_id: device("dev1"),
            module_id: None,
            shared_access_key: Some(KEY.to_owned()),
            gateway_host_name: None,
            x509: false,
            shared_access_signature: None,
        };
        let sas = "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig=abc%3D&se=1";
        let cases: Vec<(
            String,
            Result<DeviceConnectionString, ConnectionStringError>,
        )> = vec![
            (
                format!("HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey={KEY}"),
                Ok(base.clone()),
            ),
            (
                format!(
                    "HostName=localhost:8883;DeviceId=dev1;ModuleId=mod1;SharedAccessKey={KEY};GatewayHostName=127.0.0.1"
                ),
                Ok(DeviceConnectionString {
                    host_name: "localhost:8883".to_owned(),
                    module_id: Some(ModuleId::new("mod1").expect("valid")),
                    gateway_host_name: Some("127.0.0.1".to_owned()),
                    ..base.clone()
                }),
            ),
            (
                "HostName=myhub.azure-devices.net;DeviceId=dev1;x509=true".to_owned(),
                Ok(DeviceConnectionString {
                    shared_access_key: None,
                    x509: true,
                    ..base.clone()
                }),
            ),
            (
                format!(
                    "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessSignature={sas}"
                ),
                Ok(DeviceConnectionString {
                    shared_access_key: None,
                    shared_access_signature: Some(sas.to_owned()),
                    ..base.clone()
                }),
            ),
            (
                "DeviceId=dev1;x509=true".to_owned(),
                Err(ConnectionStringError::MissingKey { key: Key::HostName }),
            ),
            (
                "HostName=h;x509=true".to_owned(),
                Err(ConnectionStringError::MissingKey { key: Key::DeviceId }),
            ),
            (
                "HostName=h;DeviceId=dev1".to_owned(),
                Err(ConnectionStringError::MissingCredential),
            ),
            (
                "HostName=h;DeviceId=dev1;x509=false".to_owned(),
                Err(ConnectionStringError::MissingCredential),
            ),
            (
                "HostName=h;DeviceId=dev1;x509=yes".to_owned(),
                Err(ConnectionStringError::InvalidX509 {
                    value: "yes".to_owned(),
                }),
            ),
            (
                format!("HostName=h;DeviceId=dev1;SharedAccessKey={KEY};x509=true"),
                Err(ConnectionStringError::ConflictingCredentials {
                    first: Key::SharedAccessKey,
                    second: Key::X509,
                }),
            ),
            (
                format!(
                    "HostName=h;DeviceId=dev1;SharedAccessKey={KEY};SharedAccessSignature={sas}"
                ),
                Err(ConnectionStringError::ConflictingCredentials {
                    first: Key::SharedAccessKey,
                    second: Key::SharedAccessSignature,
                }),
            ),
            (
                "HostName=h;DeviceId=dev 1;x509=true".to_owned(),
                Err(ConnectionStringError::InvalidDeviceId(
                    IdError::InvalidCharacter {
                        kind: IdKind::DeviceId,
                        character: ' ',
                        position: 3,
                    },
                )),
            ),
            (
                "HostName=h;DeviceId=d;ModuleId=m#;x509=true".to_owned(),
                Err(ConnectionStringError::InvalidModuleId(
                    IdError::InvalidCharacter {
                        kind: IdKind::ModuleId,
                        character: '#',
                        position: 1,
                    },
                )),
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=!!".to_owned(),
                Err(ConnectionStringError::InvalidKey {
                    key: Key::SharedAccessKey,
                    source: KeyError::InvalidBase64 {
                        reason: "Invalid symbol 33, offset 0.".to_owned(),
                    },
                }),
            ),
            (
                format!("HostName=h;DeviceId=d;SharedAccessKeyName=owner;SharedAccessKey={KEY}"),
                Err(ConnectionStringError::KeyNotAllowed {
                    key: Key::SharedAccessKeyName,
                    kind: "device",
                }),
            ),
            (
                "HostName=h/x;DeviceId=d;x509=true".to_owned(),
                Err(ConnectionStringError::InvalidHostName {
                    key: Key::HostName,
                    value: "h/x".to_owned(),
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                input.parse::<DeviceConnectionString>(),
                expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn service_connection_string_table() {
        let cases: Vec<(
            String,
            Result<ServiceConnectionString, ConnectionStringError>,
        )> = vec![
            (
                format!(
                    "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
                ),
                Ok(ServiceConnectionString {
                    host_name: "localhost:8443".to_owned(),
                    shared_access_key_name: "iothubowner".to_owned(),
                    shared_access_key: KEY.to_owned(),
                }),
            ),
            (
                format!("HostName=h;SharedAccessKey={KEY}"),
                Err(ConnectionStringError::MissingKey {
                    key: Key::SharedAccessKeyName,
                }),
            ),
            (
                "HostName=h;SharedAccessKeyName=o".to_owned(),
                Err(ConnectionStringError::MissingKey {
                    key: Key::SharedAccessKey,
                }),
            ),
            (
                format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}"),
                Err(ConnectionStringError::KeyNotAllowed {
                    key: Key::DeviceId,
                    kind: "service",
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                input.parse::<ServiceConnectionString>(),
                expected,
                "{input:?}"
            );
        }
    }

    fn device_connection_string_strategy()
    -> impl proptest::strategy::Strategy<Value = DeviceConnectionString> {
        use proptest::prelude::*;
        let host = "[a-z0-9.-]{1,30}(:[0-9]{1,5})?";
        let key = proptest::collection::vec(any::<u8>(), 1..48).prop_map(|bytes| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(bytes)
        });
        let credential = prop_oneof![
            key.prop_map(|key| (Some(key), None, false)),
            "SharedAccessSignature [a-z0-9%=&]{1,40}".prop_map(|token| (None, Some(token), false)),
            Just((None, None, true)),
        ];
        (
            host,
            crate::ids::tests::id_strategy(),
            proptest::option::of(crate::ids::tests::id_strategy()),
            proptest::option::of("[a-z0-9.-]{1,30}"),
            credential,
        )
            .prop_map(
                |(
                    host_name,
                    device,
                    module,
                    gateway_host_name,
                    (shared_access_key, shared_access_signature, x509),
                )| {
                    DeviceConnectionString {
                        host_name,
                        device_id: DeviceId::new(device).expect("strategy yields valid ids"),
                        module_id: module.map(|module| {
                            ModuleId::new(module).expect("strategy yields valid ids")
                        }),
                        shared_access_key,
                        gateway_host_name,
                        x509,
                        shared_access_signature,
                    }
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn device_connection_string_display_parse_round_trip(original in device_connection_string_strategy()) {
            let reparsed = original.to_string().parse::<DeviceConnectionString>();
            proptest::prop_assert_eq!(reparsed, Ok(original));
        }

        #[test]
        fn service_connection_string_display_parse_round_trip(
            host_name in "[a-z0-9.-]{1,30}(:[0-9]{1,5})?",
            shared_access_key_name in "[A-Za-z0-9]{1,20}",
            key_bytes in proptest::collection::vec(proptest::num::u8::ANY, 1..48),
        ) {
            use base64::Engine;
            let original = ServiceConnectionString {
                host_name,
                shared_access_key_name,
                shared_access_key: base64::engine::general_purpose::STANDARD.encode(key_bytes),
            };
            proptest::prop_assert_eq!(original.to_string().parse::<ServiceConnectionString>(), Ok(original));
        }

        #[test]
        fn generic_display_parse_round_trip(text in "(HostName|DeviceId|x509)=[a-z=]{1,10}") {
            let parsed: ConnectionString = text.parse().expect("strategy yields valid strings");
            proptest::prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,120}") {
            let _ = text.parse::<DeviceConnectionString>();
            let _ = text.parse::<ServiceConnectionString>();
        }
    }
}
