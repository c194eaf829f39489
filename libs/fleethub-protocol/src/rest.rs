//! JSON shapes of the IoT Hub service REST API (PROTOCOL.md §3.4) and Azure's timestamp format.
//!
//! Field names are the exact camelCase names of the msrest models in `azure-iot-hub` 2.7.0
//! (`azure/iot/hub/protocol/models/*_py3.py`). Unknown fields are ignored on input. On output, optional
//! fields are omitted when unset (as msrest does for requests), except where Azure writes an explicit
//! `null` in its responses (`statusReason`, `deviceScope`, the key and thumbprint fields); those are always
//! written.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::{datetime, format_description};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::ids::{DeviceId, ETag, ModuleId};

/// How Azure writes "never" (a device that never connected, a status never changed).
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// [`NEVER`] as a time value.
pub const NEVER_TIME: OffsetDateTime = datetime!(0001-01-01 0:00 UTC);

/// Formats like Azure: UTC, seven fractional digits, `Z` (`2024-05-01T10:00:00.0000000Z`). [`NEVER_TIME`]
/// is written as [`NEVER`], without fraction, as Azure does.
pub fn format_time(time: OffsetDateTime) -> String {
    let utc = time.to_offset(UtcOffset::UTC);
    if utc == NEVER_TIME {
        return NEVER.to_owned();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.nanosecond() / 100
    )
}

/// Why a timestamp could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an ISO 8601 timestamp")]
pub struct TimeParseError {
    pub text: String,
}

/// Reads the timestamps the SDKs and Azure write: RFC 3339 with any number of fractional digits
/// (Azure: 7, msrest: 3) and any offset, and also without an offset (then UTC is assumed, as Azure does
/// for some job times). The result is in UTC.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, TimeParseError> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time.to_offset(UtcOffset::UTC));
    }
    let without_offset = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(text, without_offset)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| TimeParseError {
            text: text.to_owned(),
        })
}

/// Serde adapter for timestamps in Azure's format (`#[serde(with = "azure_time")]`).
pub mod azure_time {
    use super::{format_time, parse_time};
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(
        time: &OffsetDateTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_time(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_time(&text).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<OffsetDateTime>`; `null` reads as `None`.
    pub mod option {
        use super::{format_time, parse_time};
        use serde::{Deserialize, Deserializer, Serializer};
        use time::OffsetDateTime;

        pub fn serialize<S: Serializer>(
            time: &Option<OffsetDateTime>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => serializer.serialize_str(&format_time(*time)),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| parse_time(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// `enabled` or `disabled`. The capitalised forms from the docs are accepted on input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    #[default]
    #[serde(alias = "Enabled")]
    Enabled,
    #[serde(alias = "Disabled")]
    Disabled,
}

/// `Connected` or `Disconnected` (capitalised on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ConnectionState {
    Connected,
    #[default]
    Disconnected,
}

/// `sas`, `selfSigned`, `certificateAuthority` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthenticationType {
    #[default]
    Sas,
    SelfSigned,
    CertificateAuthority,
    None,
}

/// Primary and secondary base64 keys; `null` when the device does not use SAS (and in create requests
/// that ask the hub to generate keys, which the Python SDK sends as `"symmetricKey": {}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    #[serde(default)]
    pub primary_key: Option<String>,
    #[serde(default)]
    pub secondary_key: Option<String>,
}

/// SHA-1 or SHA-256 thumbprints (upper-case hex) of self-signed device certificates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

/// `authentication` of a device or module.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationMechanism {
    #[serde(default)]
    pub symmetric_key: SymmetricKey,
    #[serde(default)]
    pub x509_thumbprint: X509Thumbprint,
    #[serde(rename = "type", default)]
    pub type_: AuthenticationType,
}

/// `capabilities` of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    #[serde(default)]
    pub iot_edge: bool,
}

/// A device identity (`PUT/GET /devices/{id}`, `GET /devices`). Note `statusUpdatedTime` here versus
/// `statusUpdateTime` on [`Twin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub device_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<ETag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub connection_state_updated_time: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub status_updated_time: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub last_activity_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    #[serde(default)]
    pub device_scope: Option<String>,
    #[serde(default)]
    pub parent_scopes: Vec<String>,
}

impl Device {
    /// A device with only its id set (a minimal create request).
    pub fn new(device_id: DeviceId) -> Self {
        Device {
            device_id,
            generation_id: None,
            etag: None,
            connection_state: None,
            status: None,
            status_reason: None,
            connection_state_updated_time: None,
            status_updated_time: None,
            last_activity_time: None,
            cloud_to_device_message_count: None,
            authentication: None,
            capabilities: None,
            device_scope: None,
            parent_scopes: Vec::new(),
        }
    }
}

/// A module identity (`PUT/GET /devices/{id}/modules/{mid}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Module {
    pub module_id: ModuleId,
    #[serde(default)]
    pub managed_by: Option<String>,
    pub device_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<ETag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub connection_state_updated_time: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub last_activity_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
}

impl Module {
    pub fn new(device_id: DeviceId, module_id: ModuleId) -> Self {
        Module {
            module_id,
            managed_by: None,
            device_id,
            generation_id: None,
            etag: None,
            connection_state: None,
            connection_state_updated_time: None,
            last_activity_time: None,
            cloud_to_device_message_count: None,
            authentication: None,
        }
    }
}

/// `properties` of a twin. Empty sections are omitted so that a service-side PATCH carrying only
/// `desired` does not also send `"reported": {}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TwinProperties {
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub desired: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub reported: Map<String, Value>,
}

/// The service view of a device or module twin (`GET/PATCH/PUT /twins/{id}[/modules/{mid}]`, items of
/// `/devices/query`). Every field is optional so the same type reads partial PATCH bodies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<ModuleId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<ETag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_etag: Option<ETag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub status_update_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub last_activity_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_type: Option<AuthenticationType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
    /// Automatic device management: the configurations targeting this twin, `{"<id>": {"status":
    /// "applied" | "targeted"}}` (see [`crate::configurations::TwinConfigurationInfo`]); kept as JSON so any
    /// spelling of the status reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configurations: Option<Map<String, Value>>,
}

/// Body of `POST /twins/{id}[/modules/{mid}]/methods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudToDeviceMethod {
    pub method_name: String,
    /// Any JSON; `null` when absent. The Python SDK sends `""` for "no payload".
    #[serde(default)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout_in_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_in_seconds: Option<u64>,
}

/// Response of a successful method invocation: the device's status and payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudToDeviceMethodResult {
    pub status: i32,
    #[serde(default)]
    pub payload: Value,
}

/// `GET /statistics/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatistics {
    #[serde(default)]
    pub total_device_count: u64,
    #[serde(default)]
    pub enabled_device_count: u64,
    #[serde(default)]
    pub disabled_device_count: u64,
}

/// `GET /statistics/service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatistics {
    #[serde(default)]
    pub connected_device_count: u64,
}

/// Body of `POST /devices/query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpecification {
    pub query: String,
}

/// Response of `DELETE /devices/{id}/commands` (purge the cloud-to-device queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeMessageQueueResult {
    pub total_messages_purged: u64,
    pub device_id: DeviceId,
    #[serde(default)]
    pub module_id: Option<ModuleId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn time(text: &str) -> OffsetDateTime {
        parse_time(text).expect("test timestamps are valid")
    }

    #[test]
    fn format_time_table() {
        let cases = [
            (
                datetime!(2024-05-01 10:00:00 UTC),
                "2024-05-01T10:00:00.0000000Z",
            ),
            (
                datetime!(2024-05-01 10:00:00.123456789 UTC),
                "2024-05-01T10:00:00.1234567Z",
            ),
            (
                datetime!(2024-05-01 12:00:00 +02:00),
                "2024-05-01T10:00:00.0000000Z",
            ),
            (NEVER_TIME, "0001-01-01T00:00:00Z"),
            (
                datetime!(0001-01-01 0:00:00.1 UTC),
                "0001-01-01T00:00:00.1000000Z",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(format_time(input), expected, "{input}");
        }
    }

    #[test]
    fn parse_time_table() {
        let cases: Vec<(&str, Result<OffsetDateTime, TimeParseError>)> = vec![
            (
                "2024-05-01T10:00:00.0000000Z",
                Ok(datetime!(2024-05-01 10:00:00 UTC)),
            ),
            (
                "2024-05-01T10:00:00.1234567Z",
                Ok(datetime!(2024-05-01 10:00:00.1234567 UTC)),
            ),
            (
                "2024-05-01T10:00:00.000Z",
                Ok(datetime!(2024-05-01 10:00:00 UTC)),
            ),
            (
                "2024-05-01T10:00:00Z",
                Ok(datetime!(2024-05-01 10:00:00 UTC)),
            ),
            (
                "2024-05-01T12:00:00+02:00",
                Ok(datetime!(2024-05-01 10:00:00 UTC)),
            ),
            (
                "2024-05-01T10:00:00.5",
                Ok(datetime!(2024-05-01 10:00:00.5 UTC)),
            ),
            (
                "2024-05-01T10:00:00",
                Ok(datetime!(2024-05-01 10:00:00 UTC)),
            ),
            (NEVER, Ok(NEVER_TIME)),
            (
                "yesterday",
                Err(TimeParseError {
                    text: "yesterday".to_owned(),
                }),
            ),
            (
                "2024-13-01T00:00:00Z",
                Err(TimeParseError {
                    text: "2024-13-01T00:00:00Z".to_owned(),
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_time(input), expected, "{input:?}");
        }
    }

    #[test]
    fn device_json_round_trips_the_protocol_example() {
        // PROTOCOL.md §3.4 Device example.
        let wire = json!({
            "deviceId": "dev1",
            "generationId": "638500000000000000",
            "etag": "MTIzNDU2Nzg=",
            "connectionState": "Disconnected",
            "status": "enabled",
            "statusReason": null,
            "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
            "statusUpdatedTime": "0001-01-01T00:00:00Z",
            "lastActivityTime": "0001-01-01T00:00:00Z",
            "cloudToDeviceMessageCount": 0,
            "authentication": {
                "symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"},
                "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
                "type": "sas"
            },
            "capabilities": {"iotEdge": false},
            "deviceScope": null,
            "parentScopes": []
        });
        let device: Device = serde_json::from_value(wire.clone()).expect("example parses");
        assert_eq!(device.device_id.as_str(), "dev1");
        assert_eq!(device.status_updated_time, Some(NEVER_TIME));
        assert_eq!(
            device.authentication.as_ref().map(|auth| auth.type_),
            Some(AuthenticationType::Sas)
        );
        assert_eq!(serde_json::to_value(&device).ok(), Some(wire));
    }

    #[test]
    fn device_create_request_from_the_python_sdk_parses() {
        // PROTOCOL.md §3.3 create_device_with_sas body, plus the keyless variant and unknown fields.
        let body = r#"{"deviceId": "dev1", "status": "enabled", "authentication": {"symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"}, "type": "sas"}, "capabilities": {"iotEdge": false}}"#;
        let device: Device = serde_json::from_str(body).expect("parses");
        assert_eq!(device.status, Some(DeviceStatus::Enabled));
        assert_eq!(
            device
                .authentication
                .map(|auth| auth.symmetric_key.primary_key),
            Some(Some("cHJpbWFyeQ==".to_owned()))
        );
        let keyless = r#"{"deviceId": "dev1", "authentication": {"symmetricKey": {}, "type": "sas"}, "someFutureField": 1}"#;
        let device: Device = serde_json::from_str(keyless).expect("parses");
        assert_eq!(
            device.authentication.map(|auth| auth.symmetric_key),
            Some(SymmetricKey::default())
        );
        assert!(serde_json::from_str::<Device>(r#"{"deviceId": "dev 1"}"#).is_err());
        assert!(
            serde_json::from_str::<Device>(r#"{"deviceId": "d", "status": "paused"}"#).is_err()
        );
    }

    #[test]
    fn minimal_device_serializes_with_azure_nulls() {
        let device = Device::new(DeviceId::new("d").expect("valid"));
        assert_eq!(
            serde_json::to_value(&device).ok(),
            Some(
                json!({"deviceId": "d", "statusReason": null, "deviceScope": null, "parentScopes": []})
            )
        );
    }

    #[test]
    fn module_json_round_trips() {
        let wire = json!({
            "moduleId": "mod1",
            "managedBy": "",
            "deviceId": "dev1",
            "generationId": "1",
            "etag": "MQ==",
            "connectionState": "Connected",
            "connectionStateUpdatedTime": "2024-05-01T10:00:00.0000000Z",
            "lastActivityTime": "2024-05-01T10:00:00.1000000Z",
            "cloudToDeviceMessageCount": 2,
            "authentication": {"symmetricKey": {"primaryKey": null, "secondaryKey": null},
                               "x509Thumbprint": {"primaryThumbprint": "AB", "secondaryThumbprint": null},
                               "type": "selfSigned"}
        });
        let module: Module = serde_json::from_value(wire.clone()).expect("parses");
        assert_eq!(module.connection_state, Some(ConnectionState::Connected));
        assert_eq!(serde_json::to_value(&module).ok(), Some(wire));
        let create = r#"{"moduleId": "mod1", "managedBy": "", "deviceId": "dev1", "authentication": {"symmetricKey": {}, "type": "sas"}}"#;
        assert!(serde_json::from_str::<Module>(create).is_ok());
    }

    #[test]
    fn twin_json_round_trips_the_protocol_example() {
        let wire = json!({
            "deviceId": "dev1",
            "moduleId": "mod1",
            "etag": "AAAAAAAAAAE=",
            "deviceEtag": "NzA5NDc0MjQ4",
            "status": "enabled",
            "statusReason": null,
            "statusUpdateTime": "0001-01-01T00:00:00Z",
            "connectionState": "Disconnected",
            "lastActivityTime": "0001-01-01T00:00:00Z",
            "cloudToDeviceMessageCount": 0,
            "authenticationType": "sas",
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
            "modelId": "",
            "version": 3,
            "tags": {"site": "a"},
            "properties": {
                "desired": {"foo": 1,
                            "$metadata": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z", "$lastUpdatedVersion": 2,
                                          "foo": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z", "$lastUpdatedVersion": 2}},
                            "$version": 2},
                "reported": {"$metadata": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z"}, "$version": 1}
            },
            "capabilities": {"iotEdge": false}
        });
        let twin: Twin = serde_json::from_value(wire.clone()).expect("parses");
        assert_eq!(twin.version, Some(3));
        assert_eq!(twin.last_activity_time, Some(time(NEVER)));
        assert_eq!(serde_json::to_value(&twin).ok(), Some(wire));
    }

    #[test]
    fn twin_patch_body_stays_minimal() {
        // PROTOCOL.md §3.3 update_twin body.
        let body = r#"{"tags": {"site": "b"}, "properties": {"desired": {"foo": 2, "bar": null}}}"#;
        let patch: Twin = serde_json::from_str(body).expect("parses");
        assert_eq!(patch.device_id, None);
        assert_eq!(
            serde_json::to_value(&patch).ok(),
            Some(
                json!({"statusReason": null, "tags": {"site": "b"}, "properties": {"desired": {"foo": 2, "bar": null}}})
            )
        );
    }

    #[test]
    fn method_shapes() {
        let body = r#"{"methodName": "reboot", "payload": {"delay": 5}, "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 5}"#;
        let method: CloudToDeviceMethod = serde_json::from_str(body).expect("parses");
        assert_eq!(method.response_timeout_in_seconds, Some(30));
        assert_eq!(
            serde_json::to_value(&method).ok(),
            serde_json::from_str::<Value>(body).ok()
        );
        let without_payload: CloudToDeviceMethod =
            serde_json::from_str(r#"{"methodName": "ping"}"#).expect("parses");
        assert_eq!(without_payload.payload, Value::Null);
        assert_eq!(
            serde_json::to_string(&without_payload).ok(),
            Some(r#"{"methodName":"ping","payload":null}"#.to_owned())
        );
        let result = CloudToDeviceMethodResult {
            status: 200,
            payload: json!({"result": "rebooted"}),
        };
        assert_eq!(
            serde_json::to_string(&result).ok(),
            Some(r#"{"status":200,"payload":{"result":"rebooted"}}"#.to_owned())
        );
        let null_payload: CloudToDeviceMethodResult =
            serde_json::from_str(r#"{"status": 404}"#).expect("parses");
        assert_eq!(null_payload.payload, Value::Null);
    }

    #[test]
    fn statistics_shapes() {
        let registry = RegistryStatistics {
            total_device_count: 3,
            enabled_device_count: 2,
            disabled_device_count: 1,
        };
        assert_eq!(
            serde_json::to_string(&registry).ok(),
            Some(
                r#"{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}"#
                    .to_owned()
            )
        );
        assert_eq!(
            serde_json::to_string(&ServiceStatistics {
                connected_device_count: 7
            })
            .ok(),
            Some(r#"{"connectedDeviceCount":7}"#.to_owned())
        );
        let purge: PurgeMessageQueueResult = serde_json::from_str(
            r#"{"totalMessagesPurged": 2, "deviceId": "d", "moduleId": null}"#,
        )
        .expect("parses");
        assert_eq!(purge.total_messages_purged, 2);
    }

    #[test]
    fn enum_spellings() {
        assert_eq!(
            serde_json::from_str::<DeviceStatus>("\"Disabled\"").ok(),
            Some(DeviceStatus::Disabled)
        );
        assert_eq!(
            serde_json::to_string(&DeviceStatus::Disabled).ok(),
            Some("\"disabled\"".to_owned())
        );
        assert_eq!(
            serde_json::to_string(&ConnectionState::Connected).ok(),
            Some("\"Connected\"".to_owned())
        );
        for (value, wire) in [
            (AuthenticationType::Sas, "\"sas\""),
            (AuthenticationType::SelfSigned, "\"selfSigned\""),
            (
                AuthenticationType::CertificateAuthority,
                "\"certificateAuthority\"",
            ),
            (AuthenticationType::None, "\"none\""),
        ] {
            assert_eq!(serde_json::to_string(&value).ok().as_deref(), Some(wire));
            assert_eq!(
                serde_json::from_str::<AuthenticationType>(wire).ok(),
                Some(value)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_keeps_100ns_precision(seconds in 0i64..253_402_300_799, hundreds_of_nanos in 0u32..10_000_000) {
            let original = OffsetDateTime::from_unix_timestamp(seconds).expect("in range") + time::Duration::nanoseconds(i64::from(hundreds_of_nanos) * 100);
            proptest::prop_assert_eq!(parse_time(&format_time(original)).ok(), Some(original));
        }
    }
}
