//! Device-to-cloud messages and the hub's events as consumers read them: the system properties IoT Hub
//! stamps on telemetry, the non-telemetry events (twin changes, connection states, identity lifecycle) in
//! Azure's schema, and the JSON of fleethub's event stream (`GET /events`, Server-Sent Events).
//!
//! Sources: Azure's "Create and read IoT Hub messages" (`iot-hub-devguide-messages-construct.md`: system
//! property names on the Event Hubs-compatible endpoint, the anti-spoofing properties and the JSON of
//! `iothub-connection-auth-method`, how message size is counted), "IoT Hub non-telemetry event schemas"
//! (`iot-hub-non-telemetry-event-schema.md`: system and application properties, bodies, captured with
//! `az iot hub monitor-events`), "Communicate with an IoT hub using the MQTT protocol"
//! (`iot-mqtt-connect-to-iot-hub.md`: the `mqtt-retain` property for RETAIN publishes, Will messages
//! with `iothub-MessageType: Will`), and the C# SDK's `MessageSystemPropertyNames` (`iothub-outputname`,
//! `iothub-interface-id`).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::changes::{ChangeOperation, ChangeRecord};
use crate::ids::{DeviceId, ModuleId};
use crate::property_bag::{PropertyBag, system_property};
use crate::rest::format_time;

/// IoT Hub's limit on a device-to-cloud message, counted as [`message_size`] counts.
pub const MAX_D2C_MESSAGE_BYTES: usize = 256 * 1024;

/// System property names on the Event Hubs-compatible endpoint.
pub mod names {
    pub const MESSAGE_ID: &str = "message-id";
    pub const CORRELATION_ID: &str = "correlation-id";
    pub const USER_ID: &str = "user-id";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const CONTENT_ENCODING: &str = "content-encoding";
    pub const ABSOLUTE_EXPIRY_TIME: &str = "absolute-expiry-time";
    /// A module's output (`$.on`).
    pub const OUTPUT_NAME: &str = "iothub-outputname";
    /// `$.ifid`, e.g. security messages.
    pub const INTERFACE_ID: &str = "iothub-interface-id";
    /// The Plug and Play component (`$.sub`).
    pub const DT_SUBJECT: &str = "dt-subject";
    /// The Plug and Play model id the device named in its MQTT user name (`model-id=`).
    pub const DT_DATASCHEMA: &str = "dt-dataschema";
    pub const CONNECTION_DEVICE_ID: &str = "iothub-connection-device-id";
    pub const CONNECTION_MODULE_ID: &str = "iothub-connection-module-id";
    pub const CONNECTION_AUTH_METHOD: &str = "iothub-connection-auth-method";
    pub const CONNECTION_AUTH_GENERATION_ID: &str = "iothub-connection-auth-generation-id";
    pub const ENQUEUED_TIME: &str = "iothub-enqueuedtime";
    pub const MESSAGE_SOURCE: &str = "iothub-message-source";
    /// Application property added to a publish with the RETAIN flag (IoT Hub never retains).
    pub const MQTT_RETAIN: &str = "mqtt-retain";
    /// Application property `Will` on a Will message delivered as telemetry.
    pub const MESSAGE_TYPE: &str = "iothub-MessageType";
}

/// Values of `iothub-message-source`.
pub mod sources {
    pub const TELEMETRY: &str = "Telemetry";
    pub const TWIN_CHANGE_EVENTS: &str = "twinChangeEvents";
    pub const DEVICE_LIFECYCLE_EVENTS: &str = "deviceLifecycleEvents";
    pub const DEVICE_CONNECTION_STATE_EVENTS: &str = "deviceConnectionStateEvents";
}

/// Which key signed the connection's SAS token: the `scope` of `iothub-connection-auth-method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthScope {
    /// The device's own key.
    Device,
    /// The module's own key.
    Module,
    /// A shared access policy with DeviceConnect.
    Hub,
}

impl AuthScope {
    /// `iothub-connection-auth-method` as Azure writes it for SAS-authenticated connections.
    pub fn auth_method_json(self) -> String {
        let scope = match self {
            AuthScope::Device => "device",
            AuthScope::Module => "module",
            AuthScope::Hub => "hub",
        };
        format!(
            r#"{{"scope":"{scope}","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}}"#
        )
    }
}

/// Who sent a telemetry message, as the hub knows from the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageOrigin {
    pub device_id: DeviceId,
    pub module_id: Option<ModuleId>,
    pub generation_id: String,
    pub auth_scope: AuthScope,
    /// From the MQTT user name's `model-id=`.
    pub model_id: Option<String>,
}

/// A device-to-cloud message with its properties as consumers see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct D2cMessage {
    pub system_properties: Vec<(String, String)>,
    pub application_properties: Vec<(String, Option<String>)>,
}

/// The `$.` keys of a property bag and the system property each becomes.
const BAG_SYSTEM_PROPERTIES: [(&str, &str); 8] = [
    (system_property::MESSAGE_ID, names::MESSAGE_ID),
    (system_property::CORRELATION_ID, names::CORRELATION_ID),
    (system_property::USER_ID, names::USER_ID),
    (system_property::CONTENT_TYPE, names::CONTENT_TYPE),
    (system_property::CONTENT_ENCODING, names::CONTENT_ENCODING),
    (
        system_property::EXPIRY_TIME_UTC,
        names::ABSOLUTE_EXPIRY_TIME,
    ),
    (system_property::OUTPUT_NAME, names::OUTPUT_NAME),
    (system_property::INTERFACE_ID, names::INTERFACE_ID),
];
/// The Plug and Play component name in a telemetry bag.
const COMPONENT_KEY: &str = "$.sub";

/// What the hub makes of a telemetry publish: the bag's `$.` keys become system properties (`$.mid` is
/// `message-id`, ...), every other key an application property, kept in the device's order; then the
/// hub's own stamps (device, module, authentication, generation, message source; the enqueued time is the
/// log's). `retain` adds `mqtt-retain: true`; `will` adds `iothub-MessageType: Will`.
pub fn telemetry_message(
    origin: &MessageOrigin,
    properties: PropertyBag,
    retain: bool,
    will: bool,
) -> D2cMessage {
    let mut system_properties = Vec::new();
    let mut application_properties = Vec::new();
    for (key, value) in properties.into_entries() {
        let mapped = BAG_SYSTEM_PROPERTIES
            .iter()
            .find(|(bag_key, _)| *bag_key == key)
            .map(|(_, name)| *name)
            .or((key == COMPONENT_KEY).then_some(names::DT_SUBJECT));
        match mapped {
            // A device cannot set what the hub stamps; `$.to` means nothing on telemetry.
            Some(name) => system_properties.push((name.to_owned(), value.unwrap_or_default())),
            None if key == system_property::TO => {}
            None => application_properties.push((key, value)),
        }
    }
    if let Some(model_id) = &origin.model_id {
        system_properties.push((names::DT_DATASCHEMA.to_owned(), model_id.clone()));
    }
    system_properties.push((
        names::CONNECTION_DEVICE_ID.to_owned(),
        origin.device_id.to_string(),
    ));
    if let Some(module_id) = &origin.module_id {
        system_properties.push((
            names::CONNECTION_MODULE_ID.to_owned(),
            module_id.to_string(),
        ));
    }
    system_properties.push((
        names::CONNECTION_AUTH_METHOD.to_owned(),
        origin.auth_scope.auth_method_json(),
    ));
    system_properties.push((
        names::CONNECTION_AUTH_GENERATION_ID.to_owned(),
        origin.generation_id.clone(),
    ));
    system_properties.push((
        names::MESSAGE_SOURCE.to_owned(),
        sources::TELEMETRY.to_owned(),
    ));
    if retain {
        application_properties.push((names::MQTT_RETAIN.to_owned(), Some("true".to_owned())));
    }
    if will {
        application_properties.push((names::MESSAGE_TYPE.to_owned(), Some("Will".to_owned())));
    }
    D2cMessage {
        system_properties,
        application_properties,
    }
}

/// The Plug and Play model id a device names in its MQTT user name
/// (`{host}/{clientId}/?api-version=2020-09-30&DeviceClientType=...&model-id=dtmi%3A...`), decoded.
pub fn model_id_from_username(username: &str) -> Option<String> {
    let (_, query) = username.split_once("/?")?;
    query
        .split('&')
        .find_map(|parameter| parameter.strip_prefix("model-id="))
        .and_then(|value| crate::percent::unquote_strict(value).ok())
        .filter(|value| !value.is_empty())
}

/// A message's size as IoT Hub counts it: the body, the values of the system properties the device set,
/// and the names and values of the application properties.
pub fn message_size(properties: &PropertyBag, body_bytes: usize) -> usize {
    properties
        .iter()
        .map(|(key, value)| {
            let value = value.map_or(0, str::len);
            if key.starts_with("$.") {
                value
            } else {
                key.len() + value
            }
        })
        .sum::<usize>()
        + body_bytes
}

/// A non-telemetry event made from a change-feed record.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub device_id: DeviceId,
    pub module_id: Option<ModuleId>,
    pub system_properties: Vec<(String, String)>,
    pub application_properties: Vec<(String, Option<String>)>,
    pub body: Value,
}

/// The event IoT Hub emits for a change, in Azure's schema, or `None` for changes Azure has no event for
/// (identity updates; fleethub's job and rollout records). `lifecycle_twin` is the twin to put in the body
/// of a `createDeviceIdentity` event (Azure sends the new twin); without it the body names the identity and
/// the twin version.
pub fn notification_from_change(
    record: &ChangeRecord,
    hub_name: &str,
    lifecycle_twin: Option<Value>,
) -> Option<Notification> {
    let device_id = record.device_id.clone()?;
    let (source, schema, body) = match record.operation {
        ChangeOperation::UpdateTwin | ChangeOperation::ReplaceTwin => (
            sources::TWIN_CHANGE_EVENTS,
            "twinChangeNotification",
            record.body.clone(),
        ),
        ChangeOperation::CreateDeviceIdentity | ChangeOperation::DeleteDeviceIdentity => {
            let body = lifecycle_twin.unwrap_or_else(|| {
                let mut body = Map::new();
                body.insert("deviceId".into(), json!(device_id));
                if let Some(module_id) = &record.module_id {
                    body.insert("moduleId".into(), json!(module_id));
                }
                if let Some(version) = record.twin_version {
                    body.insert("version".into(), json!(version));
                }
                Value::Object(body)
            });
            (
                sources::DEVICE_LIFECYCLE_EVENTS,
                "deviceLifecycleNotification",
                body,
            )
        }
        ChangeOperation::DeviceConnected | ChangeOperation::DeviceDisconnected => (
            sources::DEVICE_CONNECTION_STATE_EVENTS,
            "deviceConnectionStateNotification",
            // Azure: a 256-bit hexadecimal number as text, strictly increasing per hub.
            json!({ "sequenceNumber": format!("{:064X}", record.sequence) }),
        ),
        ChangeOperation::UpdateDeviceIdentity
        | ChangeOperation::DeviceJobUpdated
        | ChangeOperation::JobUpdated
        | ChangeOperation::DeviceRolloutUpdated
        | ChangeOperation::RolloutUpdated => return None,
    };
    let mut system_properties = vec![
        (names::CONTENT_ENCODING.to_owned(), "utf-8".to_owned()),
        (
            names::CONTENT_TYPE.to_owned(),
            "application/json".to_owned(),
        ),
        (
            names::CORRELATION_ID.to_owned(),
            format!("{:x}", record.sequence),
        ),
        (names::USER_ID.to_owned(), hub_name.to_owned()),
        (
            names::CONNECTION_DEVICE_ID.to_owned(),
            device_id.to_string(),
        ),
    ];
    if let Some(module_id) = &record.module_id {
        system_properties.push((
            names::CONNECTION_MODULE_ID.to_owned(),
            module_id.to_string(),
        ));
    }
    system_properties.push((names::MESSAGE_SOURCE.to_owned(), source.to_owned()));
    let mut application_properties = vec![
        ("hubName".to_owned(), Some(hub_name.to_owned())),
        ("deviceId".to_owned(), Some(device_id.to_string())),
    ];
    if let Some(module_id) = &record.module_id {
        application_properties.push(("moduleId".to_owned(), Some(module_id.to_string())));
    }
    application_properties.extend([
        (
            "operationTimestamp".to_owned(),
            Some(format_time(record.time)),
        ),
        ("iothub-message-schema".to_owned(), Some(schema.to_owned())),
        (
            "opType".to_owned(),
            Some(record.operation.as_str().to_owned()),
        ),
    ]);
    Some(Notification {
        device_id,
        module_id: record.module_id.clone(),
        system_properties,
        application_properties,
        body,
    })
}

/// How [`EventMessage::body`] is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// The body bytes are UTF-8 text and written as is.
    #[default]
    Utf8,
    /// The body bytes are not UTF-8; `body` is their standard base64.
    Base64,
}

impl BodyEncoding {
    fn is_utf8(&self) -> bool {
        *self == BodyEncoding::Utf8
    }
}

/// One event of the event stream (`GET /events`, a fleethub extension): what an Event Hubs consumer of IoT
/// Hub's built-in endpoint gets, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMessage {
    pub partition: u32,
    /// The event's sequence number in its partition (Event Hubs' `x-opt-sequence-number`).
    pub sequence_number: u64,
    /// Event Hubs' `x-opt-offset`; in fleethub the sequence number as text.
    pub offset: String,
    #[serde(with = "time::serde::rfc3339")]
    pub enqueued_time: OffsetDateTime,
    /// Event Hubs names: `message-id`, `content-type`, `iothub-connection-device-id`,
    /// `iothub-enqueuedtime`, `iothub-message-source`, ...; every value a string.
    pub system_properties: Map<String, Value>,
    /// Application properties; `null` for a property without value.
    pub properties: Map<String, Value>,
    pub body: String,
    #[serde(default, skip_serializing_if = "BodyEncoding::is_utf8")]
    pub body_encoding: BodyEncoding,
}

impl EventMessage {
    /// Builds the JSON form of a stored event (`iothub-enqueuedtime` is added from `enqueued_time`).
    pub fn new(
        partition: u32,
        sequence_number: u64,
        enqueued_time: OffsetDateTime,
        system_properties: &[(String, String)],
        application_properties: &[(String, Option<String>)],
        body: &[u8],
    ) -> Self {
        let mut system = Map::new();
        for (key, value) in system_properties {
            system.insert(key.clone(), Value::String(value.clone()));
        }
        system.insert(
            names::ENQUEUED_TIME.to_owned(),
            Value::String(format_time(enqueued_time)),
        );
        let mut properties = Map::new();
        for (key, value) in application_properties {
            properties.insert(
                key.clone(),
                value.clone().map_or(Value::Null, Value::String),
            );
        }
        let (body, body_encoding) = body_text(body);
        let body = body.into_owned();
        Self {
            partition,
            sequence_number,
            offset: sequence_number.to_string(),
            enqueued_time,
            system_properties: system,
            properties,
            body,
            body_encoding,
        }
    }

    pub fn system_property(&self, name: &str) -> Option<&str> {
        self.system_properties.get(name).and_then(Value::as_str)
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).and_then(Value::as_str)
    }

    pub fn device_id(&self) -> Option<&str> {
        self.system_property(names::CONNECTION_DEVICE_ID)
    }

    pub fn module_id(&self) -> Option<&str> {
        self.system_property(names::CONNECTION_MODULE_ID)
    }

    /// `Telemetry`, `twinChangeEvents`, `deviceLifecycleEvents` or `deviceConnectionStateEvents`.
    pub fn message_source(&self) -> Option<&str> {
        self.system_property(names::MESSAGE_SOURCE)
    }

    /// The body's bytes.
    pub fn body_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.body_encoding {
            BodyEncoding::Utf8 => Ok(self.body.clone().into_bytes()),
            BodyEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(&self.body),
        }
    }
}

/// The JSON of [`EventMessage::new`] with the same arguments, byte for byte (see
/// [`write_event_message_json`]).
pub fn event_message_json(
    partition: u32,
    sequence_number: u64,
    enqueued_time: OffsetDateTime,
    system_properties: &[(String, String)],
    application_properties: &[(String, Option<String>)],
    body: &[u8],
) -> String {
    let mut json = Vec::new();
    write_event_message_json(
        &mut json,
        partition,
        sequence_number,
        enqueued_time,
        system_properties,
        application_properties,
        body,
    )
    .expect("writing to a Vec cannot fail");
    String::from_utf8(json).expect("serde_json writes UTF-8")
}

/// Writes the JSON of [`EventMessage::new`] with the same arguments to `out`, without building the message:
/// no map, no copy of a key, value or UTF-8 body. The event stream (`GET /events`) writes one per event
/// straight into its frame, so this is its hot path.
pub fn write_event_message_json(
    out: impl std::io::Write,
    partition: u32,
    sequence_number: u64,
    enqueued_time: OffsetDateTime,
    system_properties: &[(String, String)],
    application_properties: &[(String, Option<String>)],
    body: &[u8],
) -> std::io::Result<()> {
    let enqueued = format_time(enqueued_time);
    // `Map` keeps insertion order (serde_json's `preserve_order` is on in this workspace), a later duplicate
    // replacing the value where the key first came; `iothub-enqueuedtime` is inserted last.
    let system = insertion_ordered(
        system_properties
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .chain(std::iter::once((names::ENQUEUED_TIME, enqueued.as_str()))),
    );
    let application = insertion_ordered(
        application_properties
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref())),
    );
    let (body, body_encoding) = body_text(body);
    let message = EventMessageRef {
        partition,
        sequence_number,
        offset: sequence_number,
        enqueued_time,
        system_properties: Object(&system),
        properties: Object(&application),
        body: &body,
        body_encoding,
    };
    serde_json::to_writer(out, &message).map_err(std::io::Error::from)
}

/// A body as the event's JSON carries it: UTF-8 text as is, anything else in standard base64.
fn body_text(body: &[u8]) -> (std::borrow::Cow<'_, str>, BodyEncoding) {
    match std::str::from_utf8(body) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), BodyEncoding::Utf8),
        Err(_) => (
            std::borrow::Cow::Owned(base64::engine::general_purpose::STANDARD.encode(body)),
            BodyEncoding::Base64,
        ),
    }
}

/// Entries as inserting them into a `Map` leaves them: each key where it first came, with its last value.
/// Property lists are short, so a linear search beats hashing.
fn insertion_ordered<'a, V>(entries: impl Iterator<Item = (&'a str, V)>) -> Vec<(&'a str, V)> {
    let mut ordered: Vec<(&'a str, V)> = Vec::with_capacity(entries.size_hint().0);
    for (key, value) in entries {
        match ordered.iter_mut().find(|(seen, _)| *seen == key) {
            Some(entry) => entry.1 = value,
            None => ordered.push((key, value)),
        }
    }
    ordered
}

/// [`EventMessage`]'s serialized form over borrowed parts (same field names and order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventMessageRef<'a, S: Serialize, P: Serialize> {
    partition: u32,
    sequence_number: u64,
    #[serde(serialize_with = "as_text")]
    offset: u64,
    #[serde(with = "time::serde::rfc3339")]
    enqueued_time: OffsetDateTime,
    system_properties: S,
    properties: P,
    body: &'a str,
    #[serde(skip_serializing_if = "BodyEncoding::is_utf8")]
    body_encoding: BodyEncoding,
}

fn as_text<S: serde::Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Key-value pairs with unique keys, serialized as a JSON object in their order.
struct Object<'a, V>(&'a [(&'a str, V)]);

impl<V: Serialize> Serialize for Object<'_, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

/// Where a stream over several partitions is: per partition, the next sequence number to read. Written
/// `0:43,1:17` as the `id:` of each Server-Sent Event, so `Last-Event-ID` resumes exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPosition(pub BTreeMap<u32, u64>);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a stream position (partition:sequence pairs separated by commas)")]
pub struct StreamPositionError {
    pub text: String,
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (partition, next)) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{partition}:{next}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for StreamPosition {
    type Err = StreamPositionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || StreamPositionError {
            text: text.to_owned(),
        };
        let mut position = BTreeMap::new();
        for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
            let (partition, next) = pair.trim().split_once(':').ok_or_else(error)?;
            let partition = partition.parse().map_err(|_| error())?;
            let next = next.parse().map_err(|_| error())?;
            if position.insert(partition, next).is_some() {
                return Err(error());
            }
        }
        Ok(StreamPosition(position))
    }
}

/// Response header of `GET /events`: the stream position where the stream starts.
pub const STREAM_START_HEADER: &str = "x-fleethub-stream-position";

/// `GET /events/partitions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPartitions {
    pub partition_count: u32,
    pub partitions: Vec<EventPartition>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPartition {
    pub partition: u32,
    /// The oldest retained event's sequence number.
    pub beginning_sequence_number: u64,
    /// The sequence number the next event will get.
    pub next_sequence_number: u64,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_enqueued_time: Option<OffsetDateTime>,
    pub is_empty: bool,
}

/// One checkpoint: the last event a consumer group processed in a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub partition: u32,
    pub sequence_number: u64,
}

/// `PUT /events/consumerGroups/{group}/checkpoints` (body) and `GET /events/consumerGroups/{group}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    pub checkpoints: Vec<Checkpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    proptest::proptest! {
        /// The borrowed writer is the message's JSON, byte for byte: key order, a duplicate key's last value
        /// winning, `iothub-enqueuedtime` replacing one given, `null` values, escapes, base64 bodies.
        #[test]
        fn event_json_is_the_messages_json(
            partition in 0u32..32,
            sequence in proptest::prelude::any::<u64>(),
            nanos in 0i64..4_000_000_000_000_000_000,
            system in proptest::collection::vec(
                ("(iothub-[a-z-]{0,12}|[a-z\"\\\\]{0,6})", "[ -~é\n\"]{0,12}"), 0..8),
            application in proptest::collection::vec(
                ("[a-z$.\"]{0,6}", proptest::option::of("[ -~😀]{0,10}")), 0..8),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            text_body in "[ -~é]{0,40}",
            use_text in proptest::prelude::any::<bool>(),
        ) {
            let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).unwrap();
            let body = if use_text { text_body.into_bytes() } else { body };
            let expected = serde_json::to_string(&EventMessage::new(
                partition, sequence, time, &system, &application, &body,
            ))
            .unwrap();
            let written =
                event_message_json(partition, sequence, time, &system, &application, &body);
            proptest::prop_assert_eq!(written, expected);
        }
    }

    fn origin(module: Option<&str>, scope: AuthScope) -> MessageOrigin {
        MessageOrigin {
            device_id: DeviceId::new("dev1").unwrap(),
            module_id: module.map(|module| ModuleId::new(module).unwrap()),
            generation_id: "638000000000000000".into(),
            auth_scope: scope,
            model_id: None,
        }
    }

    #[test]
    fn telemetry_properties_follow_the_event_hubs_names() {
        // The Python SDK's capture of PROTOCOL.md §2.5.
        let bag = PropertyBag::decode(
            "%24.mid=mid-1&%24.cid=corr-1&%24.uid=user-1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-02T03%3A04%3A05%2B00%3A00&alert=high%20temp&zz=a%26b%3Dc%2Fd",
        )
        .unwrap();
        let message = telemetry_message(&origin(None, AuthScope::Device), bag, false, false);
        let system: Vec<(&str, &str)> = message
            .system_properties
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            system,
            vec![
                ("message-id", "mid-1"),
                ("correlation-id", "corr-1"),
                ("user-id", "user-1"),
                ("content-type", "application/json"),
                ("content-encoding", "utf-8"),
                ("absolute-expiry-time", "2030-01-02T03:04:05+00:00"),
                ("iothub-connection-device-id", "dev1"),
                (
                    "iothub-connection-auth-method",
                    r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
                ),
                ("iothub-connection-auth-generation-id", "638000000000000000"),
                ("iothub-message-source", "Telemetry"),
            ]
        );
        assert_eq!(
            message.application_properties,
            vec![
                ("alert".to_owned(), Some("high temp".to_owned())),
                ("zz".to_owned(), Some("a&b=c/d".to_owned())),
            ]
        );
    }

    #[test]
    fn module_outputs_retain_and_will_are_stamped() {
        let bag = PropertyBag::decode("%24.on=out1&%24.sub=thermostat1&%24.to=x&flag").unwrap();
        let mut module_origin = origin(Some("mod1"), AuthScope::Module);
        module_origin.model_id = Some("dtmi:com:example:Thermostat;1".into());
        let message = telemetry_message(&module_origin, bag, true, true);
        let system: BTreeMap<&str, &str> = message
            .system_properties
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(system["iothub-outputname"], "out1");
        assert_eq!(system["dt-subject"], "thermostat1");
        assert_eq!(system["dt-dataschema"], "dtmi:com:example:Thermostat;1");
        assert_eq!(system["iothub-connection-module-id"], "mod1");
        assert!(system["iothub-connection-auth-method"].contains(r#""scope":"module""#));
        assert!(!system.contains_key("$.to"));
        assert_eq!(
            message.application_properties,
            vec![
                ("flag".to_owned(), None),
                ("mqtt-retain".to_owned(), Some("true".to_owned())),
                ("iothub-MessageType".to_owned(), Some("Will".to_owned())),
            ]
        );
    }

    proptest::proptest! {
        /// Whatever a device puts in its telemetry topic: the topic parser and the message builder never
        /// panic, and the hub's own stamps cannot be spoofed or repeated.
        #[test]
        fn any_property_bag_is_parsed_or_refused_and_never_spoofs_the_hubs_stamps(
            bag in "([a-z$.%&=]|%24|%2[0-9A-Fa-f]|%[C-F][0-9A-F]|iothub-connection-device-id|\\$\\.mid|é){0,40}",
            retain in proptest::bool::ANY,
        ) {
            let client = crate::ids::ClientId::parse("dev1").unwrap();
            let topic = format!("devices/dev1/messages/events/{bag}");
            let Ok(crate::topics::DeviceTopic::Telemetry { properties, .. }) =
                crate::topics::parse_device_publish(&topic, &client)
            else {
                return Ok(());
            };
            let size = message_size(&properties, 0);
            proptest::prop_assert!(size <= bag.len());
            let message = telemetry_message(&origin(None, AuthScope::Device), properties, retain, false);
            for stamp in [
                names::CONNECTION_DEVICE_ID,
                names::CONNECTION_AUTH_METHOD,
                names::CONNECTION_AUTH_GENERATION_ID,
                names::MESSAGE_SOURCE,
            ] {
                let found: Vec<&str> = message
                    .system_properties
                    .iter()
                    .filter(|(key, _)| key == stamp)
                    .map(|(_, value)| value.as_str())
                    .collect();
                proptest::prop_assert_eq!(found.len(), 1, "{}", stamp);
            }
            proptest::prop_assert!(message
                .system_properties
                .contains(&(names::CONNECTION_DEVICE_ID.to_owned(), "dev1".to_owned())));
            proptest::prop_assert!(message.system_properties.iter().all(|(key, _)| !key.starts_with("$.")));
        }
    }

    #[test]
    fn the_model_id_comes_from_the_user_name() {
        assert_eq!(
            model_id_from_username(
                "hub/dev1/?api-version=2020-09-30&DeviceClientType=x&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1"
            ),
            Some("dtmi:com:example:Thermostat;1".to_owned())
        );
        assert_eq!(
            model_id_from_username("hub/dev1/?api-version=2019-10-01"),
            None
        );
        assert_eq!(model_id_from_username("hub/dev1"), None);
        assert_eq!(model_id_from_username("hub/dev1/?model-id=%zz"), None);
    }

    #[test]
    fn size_counts_body_system_values_and_application_names_and_values() {
        let bag = PropertyBag::decode("%24.mid=12345&ab=cd&flag").unwrap();
        assert_eq!(message_size(&bag, 100), 100 + 5 + 4 + 4);
    }

    fn change(operation: ChangeOperation, module: Option<&str>) -> ChangeRecord {
        ChangeRecord {
            sequence: 7,
            time: datetime!(2026-06-01 18:43:04.5561024 UTC),
            device_id: Some(DeviceId::new("contoso-device-1").unwrap()),
            module_id: module.map(|module| ModuleId::new(module).unwrap()),
            job_id: None,
            rollout_id: None,
            operation,
            twin_version: Some(3),
            body: json!({"version": 3, "properties": {"desired": {"a": 1}}}),
        }
    }

    #[test]
    fn changes_become_azures_non_telemetry_events() {
        let connected = notification_from_change(
            &change(ChangeOperation::DeviceDisconnected, None),
            "hub",
            None,
        )
        .unwrap();
        assert_eq!(
            connected.application_properties,
            vec![
                ("hubName".to_owned(), Some("hub".to_owned())),
                ("deviceId".to_owned(), Some("contoso-device-1".to_owned())),
                (
                    "operationTimestamp".to_owned(),
                    Some("2026-06-01T18:43:04.5561024Z".to_owned())
                ),
                (
                    "iothub-message-schema".to_owned(),
                    Some("deviceConnectionStateNotification".to_owned())
                ),
                ("opType".to_owned(), Some("deviceDisconnected".to_owned())),
            ]
        );
        assert_eq!(
            connected.body,
            json!({"sequenceNumber": "0000000000000000000000000000000000000000000000000000000000000007"})
        );
        assert!(connected.system_properties.contains(&(
            "iothub-message-source".to_owned(),
            "deviceConnectionStateEvents".to_owned()
        )));

        let twin = notification_from_change(
            &change(ChangeOperation::UpdateTwin, Some("m1")),
            "hub",
            None,
        )
        .unwrap();
        assert_eq!(
            twin.body,
            json!({"version": 3, "properties": {"desired": {"a": 1}}})
        );
        assert!(
            twin.system_properties
                .contains(&("iothub-connection-module-id".to_owned(), "m1".to_owned()))
        );
        assert!(
            twin.application_properties
                .contains(&("moduleId".to_owned(), Some("m1".to_owned())))
        );

        let created = notification_from_change(
            &change(ChangeOperation::CreateDeviceIdentity, None),
            "hub",
            None,
        )
        .unwrap();
        assert_eq!(
            created.body,
            json!({"deviceId": "contoso-device-1", "version": 3})
        );
        assert!(created.application_properties.contains(&(
            "iothub-message-schema".to_owned(),
            Some("deviceLifecycleNotification".to_owned())
        )));
        for skipped in [
            ChangeOperation::UpdateDeviceIdentity,
            ChangeOperation::DeviceJobUpdated,
            ChangeOperation::RolloutUpdated,
        ] {
            assert_eq!(
                notification_from_change(&change(skipped, None), "hub", None),
                None
            );
        }
    }

    #[test]
    fn event_messages_carry_text_or_base64_and_round_trip() {
        let time = datetime!(2026-11-27 10:00:00.5 UTC);
        let text = EventMessage::new(
            1,
            42,
            time,
            &[("message-id".into(), "m".into())],
            &[("k".into(), Some("v".into())), ("bare".into(), None)],
            b"{\"t\":1}",
        );
        let json = serde_json::to_value(&text).unwrap();
        assert_eq!(
            json,
            json!({
                "partition": 1,
                "sequenceNumber": 42,
                "offset": "42",
                "enqueuedTime": "2026-11-27T10:00:00.5Z",
                "systemProperties": {"message-id": "m", "iothub-enqueuedtime": "2026-11-27T10:00:00.5000000Z"},
                "properties": {"k": "v", "bare": null},
                "body": "{\"t\":1}"
            })
        );
        assert_eq!(serde_json::from_value::<EventMessage>(json).unwrap(), text);
        let binary = EventMessage::new(0, 0, time, &[], &[], &[0xff, 0x00]);
        assert_eq!(binary.body_encoding, BodyEncoding::Base64);
        assert_eq!(binary.body_bytes().unwrap(), vec![0xff, 0x00]);
    }

    #[test]
    fn stream_positions_print_and_parse() {
        let position: StreamPosition = "0:43,1:17, 3:0".parse().unwrap();
        assert_eq!(position.0, BTreeMap::from([(0, 43), (1, 17), (3, 0)]));
        assert_eq!(position.to_string(), "0:43,1:17,3:0");
        assert_eq!(
            "".parse::<StreamPosition>().unwrap(),
            StreamPosition::default()
        );
        for bad in ["0", "a:1", "0:x", "0:1,0:2", "0:-1"] {
            assert!(bad.parse::<StreamPosition>().is_err(), "{bad}");
        }
    }
}
