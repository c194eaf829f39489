//! The MQTT topic grammar of IoT Hub: the only place in fleethub where topic strings are built or parsed
//! (PROTOCOL.md §2.4, §2.5, §2.7, §2.9; Azure docs "Communicate with an IoT hub using the MQTT protocol").
//!
//! Sources for the variants accepted, beyond PROTOCOL.md (which covers the Python SDK):
//! - Node `azure-iot-device-mqtt` 1.16.4 (`dist/mqtt.js`, `dist/mqtt_twin_client.js`): same twin, method,
//!   C2D and input filters; system properties in its own order; **module telemetry ends with an extra
//!   `/`** after the property bag; the twin error check reads `errorCode` from the response *body*.
//! - Java `azure-iot-sdk-java` (`MqttMessaging.java`): module clients subscribe
//!   `devices/{id}/modules/{mid}/messages/devicebound/#` (cloud-to-module messages) and also end module
//!   telemetry topics with `/`.
//! - Embedded C `azure-sdk-for-c` (`az_iot_hub_client.h`): subscribes C2D with the wildcard filter
//!   `devices/+/messages/devicebound/#`.
//! - C `azure-iot-sdk-c`, .NET: the same filters as Python.
//!
//! Ids are never percent-encoded in topics (all SDKs agree), so they are compared byte for byte.
//!
//! Request ids (`$rid`) are treated as opaque and echoed **verbatim**: every SDK correlates by comparing
//! the echoed string with the one it sent (Python after `unquote`, Node after `querystring.parse`, the C
//! SDKs raw), so decoding and re-encoding could break one of them. Only characters that cannot appear in
//! that position (`&`, `#`, `+`, control characters) and non-ASCII bytes (the `percent_encoding` crate
//! always escapes those) are escaped by the builders; so a non-ASCII `$rid` does not come back byte for
//! byte. Every SDK sends UUIDs or decimal integers.

use crate::ids::{ClientId, DeviceId, ModuleId};
use crate::percent::{REQUEST_ID_ESCAPES, TOPIC_SEGMENT_ESCAPES, encode_with, unquote_strict};
use crate::property_bag::{PropertyBag, PropertyBagError};

/// Filter for twin responses (`$iothub/twin/res/{status}/?$rid=...`).
pub const TWIN_RESPONSE_SUBSCRIPTION: &str = "$iothub/twin/res/#";
/// Filter for desired-property patches.
pub const DESIRED_PATCH_SUBSCRIPTION: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Filter for direct method requests.
pub const METHOD_REQUEST_SUBSCRIPTION: &str = "$iothub/methods/POST/#";

const TWIN_RESPONSE_PREFIX: &str = "$iothub/twin/res/";
const DESIRED_PATCH_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";
const METHOD_REQUEST_PREFIX: &str = "$iothub/methods/POST/";

/// Everything that can go wrong with a topic name or subscription filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error(
        "topic {topic:?} contains the MQTT wildcard {wildcard:?}, which a topic name must not contain"
    )]
    WildcardInTopicName { topic: String, wildcard: char },
    #[error("topic {topic:?} is not a topic a device may publish to")]
    UnknownDeviceTopic { topic: String },
    #[error("topic {topic:?} is not a topic the hub publishes")]
    UnknownHubTopic { topic: String },
    #[error("topic {topic:?} has no $rid request id")]
    MissingRequestId { topic: String },
    #[error("topic {topic:?} has a malformed query: {reason}")]
    MalformedQuery { topic: String, reason: String },
    #[error("topic {topic:?} has status {status:?}, which is not a valid status code")]
    InvalidStatus { topic: String, status: String },
    #[error("topic {topic:?} has $version {version:?}, which is not an unsigned integer")]
    InvalidVersion { topic: String, version: String },
    #[error("topic {topic:?} is for device {topic_device:?}, but the client is {client}")]
    ForeignDevice {
        topic: String,
        topic_device: String,
        client: ClientId,
    },
    #[error("topic {topic:?} is for module {topic_module:?}, but the client is {client}")]
    ForeignModule {
        topic: String,
        topic_module: String,
        client: ClientId,
    },
    #[error("topic {topic:?} is for {expected} clients, but {client} is not one")]
    WrongClientKind {
        topic: String,
        client: ClientId,
        expected: ClientKind,
    },
    #[error("topic {topic:?} has an invalid property bag: {source}")]
    InvalidPropertyBag {
        topic: String,
        source: PropertyBagError,
    },
    #[error("topic {topic:?} has an invalid {segment} segment: {reason}")]
    InvalidSegment {
        topic: String,
        segment: &'static str,
        reason: String,
    },
    #[error("subscription filter {filter:?} is not one IoT Hub supports")]
    UnsupportedFilter { filter: String },
}

/// Device or module connection, for [`TopicError::WrongClientKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Device,
    Module,
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            ClientKind::Device => "device",
            ClientKind::Module => "module",
        })
    }
}

/// A publish from a device or module to the hub, authorised for the connected client.
///
/// `request_id` is the `$rid` value exactly as it appeared in the topic (not percent-decoded); pass it
/// unchanged to [`twin_response_topic`] so the client finds its own string again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTopic {
    /// `$iothub/twin/GET/?$rid={rid}`
    TwinGet { request_id: String },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`
    TwinPatchReported { request_id: String },
    /// `$iothub/methods/res/{status}/?$rid={rid}`
    MethodResponse { status: i32, request_id: String },
    /// `devices/{id}[/modules/{mid}]/messages/events/{bag}`
    Telemetry {
        module_id: Option<ModuleId>,
        properties: PropertyBag,
    },
}

/// What a device subscribed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subscription {
    TwinResponses,
    DesiredPatches,
    Methods,
    /// Cloud-to-device messages: the device's queue for device clients, the module's queue for module
    /// clients (the Java SDK subscribes `devices/{id}/modules/{mid}/messages/devicebound/#`).
    CloudToDevice,
    ModuleInputs,
}

impl Subscription {
    /// The filter our device SDK subscribes with, or `None` where the subscription does not exist for
    /// that kind of client (module inputs for a device client).
    pub fn filter_for(self, client: &ClientId) -> Option<String> {
        match self {
            Subscription::TwinResponses => Some(TWIN_RESPONSE_SUBSCRIPTION.to_owned()),
            Subscription::DesiredPatches => Some(DESIRED_PATCH_SUBSCRIPTION.to_owned()),
            Subscription::Methods => Some(METHOD_REQUEST_SUBSCRIPTION.to_owned()),
            Subscription::CloudToDevice => Some(match &client.module {
                None => cloud_to_device_subscription(&client.device),
                Some(module) => module_cloud_to_device_subscription(&client.device, module),
            }),
            Subscription::ModuleInputs => client
                .module
                .as_ref()
                .map(|module| module_inputs_subscription(&client.device, module)),
        }
    }
}

/// `devices/{id}/messages/devicebound/#`
pub fn cloud_to_device_subscription(device: &DeviceId) -> String {
    format!("devices/{device}/messages/devicebound/#")
}

/// `devices/{id}/modules/{mid}/messages/devicebound/#`
pub fn module_cloud_to_device_subscription(device: &DeviceId, module: &ModuleId) -> String {
    format!("devices/{device}/modules/{module}/messages/devicebound/#")
}

/// `devices/{id}/modules/{mid}/inputs/#`
pub fn module_inputs_subscription(device: &DeviceId, module: &ModuleId) -> String {
    format!("devices/{device}/modules/{module}/inputs/#")
}

/// A publish from the hub to a device, as our device SDK sees it. `request_id` is verbatim from the topic
/// (echo it unchanged with [`method_response_topic`]); `method_name` and `input` are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTopic {
    TwinResponse {
        status: u16,
        request_id: String,
        version: Option<u64>,
    },
    DesiredPatch {
        version: Option<u64>,
    },
    MethodRequest {
        method_name: String,
        request_id: String,
    },
    CloudToDevice {
        properties: PropertyBag,
    },
    ModuleInput {
        input: String,
        properties: PropertyBag,
    },
}

fn reject_invalid_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if let Some(wildcard) = topic
        .chars()
        .find(|character| *character == '+' || *character == '#')
    {
        return Err(TopicError::WildcardInTopicName {
            topic: topic.to_owned(),
            wildcard,
        });
    }
    Ok(())
}

/// Splits `path/?query` or `path?query` into the path without a trailing `/` and the query.
fn split_path_and_query(topic: &str) -> (&str, Option<&str>) {
    let (path, query) = match topic.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (topic, None),
    };
    (path.strip_suffix('/').unwrap_or(path), query)
}

/// The system parameters of a topic query. Unknown parameters are ignored: SDKs add their own
/// (Node documents `&$version=` on reported patches, method responses may carry extra properties).
#[derive(Debug, Default)]
struct TopicQuery<'a> {
    request_id: Option<&'a str>,
    version: Option<&'a str>,
}

fn parse_query<'a>(topic: &str, query: Option<&'a str>) -> Result<TopicQuery<'a>, TopicError> {
    let mut parsed = TopicQuery::default();
    let Some(query) = query else {
        return Ok(parsed);
    };
    for parameter in query.split('&').filter(|parameter| !parameter.is_empty()) {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let slot = match name {
            "$rid" => &mut parsed.request_id,
            "$version" => &mut parsed.version,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(TopicError::MalformedQuery {
                topic: topic.to_owned(),
                reason: format!("{name} appears more than once"),
            });
        }
    }
    Ok(parsed)
}

fn require_request_id(topic: &str, query: &TopicQuery<'_>) -> Result<String, TopicError> {
    match query.request_id {
        Some(request_id) if !request_id.is_empty() => Ok(request_id.to_owned()),
        _ => Err(TopicError::MissingRequestId {
            topic: topic.to_owned(),
        }),
    }
}

fn parse_version(topic: &str, version: Option<&str>) -> Result<Option<u64>, TopicError> {
    version
        .map(|text| {
            let digits_only = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
            digits_only
                .then(|| text.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| TopicError::InvalidVersion {
                    topic: topic.to_owned(),
                    version: text.to_owned(),
                })
        })
        .transpose()
}

fn decode_property_bag(topic: &str, encoded: &str) -> Result<PropertyBag, TopicError> {
    PropertyBag::decode(encoded).map_err(|source| TopicError::InvalidPropertyBag {
        topic: topic.to_owned(),
        source,
    })
}

/// The property bag after a fixed topic prefix: nothing, `/`, `/{bag}`, or `/{bag}/` (Node and Java end
/// module telemetry with a `/`). A raw `/` inside the bag is kept as part of it rather than rejected.
fn property_bag_after(topic: &str, rest: &str) -> Result<Option<PropertyBag>, TopicError> {
    if rest.is_empty() {
        return Ok(Some(PropertyBag::new()));
    }
    let Some(bag) = rest.strip_prefix('/') else {
        return Ok(None);
    };
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    decode_property_bag(topic, bag).map(Some)
}

/// Parses a PUBLISH topic sent by `client` and checks that the client may publish there: telemetry must
/// name exactly the client's own device (and module, for module clients). Tolerates the differences between
/// SDKs: `/?` or `?` before the query, parameters in any order, unknown parameters, a trailing `/` after
/// a telemetry property bag, and a missing `/` after `messages/events`.
pub fn parse_device_publish(topic: &str, client: &ClientId) -> Result<DeviceTopic, TopicError> {
    reject_invalid_topic_name(topic)?;
    let unknown = || TopicError::UnknownDeviceTopic {
        topic: topic.to_owned(),
    };

    if topic.starts_with("$iothub/") {
        let (path, query) = split_path_and_query(topic);
        let query = parse_query(topic, query)?;
        return match path {
            "$iothub/twin/GET" => Ok(DeviceTopic::TwinGet {
                request_id: require_request_id(topic, &query)?,
            }),
            "$iothub/twin/PATCH/properties/reported" => Ok(DeviceTopic::TwinPatchReported {
                request_id: require_request_id(topic, &query)?,
            }),
            _ => {
                let status_text = path
                    .strip_prefix("$iothub/methods/res/")
                    .filter(|status| !status.contains('/'))
                    .ok_or_else(unknown)?;
                let status = unquote_strict(status_text)
                    .ok()
                    .and_then(|status| status.parse::<i32>().ok())
                    .ok_or_else(|| TopicError::InvalidStatus {
                        topic: topic.to_owned(),
                        status: status_text.to_owned(),
                    })?;
                Ok(DeviceTopic::MethodResponse {
                    status,
                    request_id: require_request_id(topic, &query)?,
                })
            }
        };
    }

    let rest = topic.strip_prefix("devices/").ok_or_else(unknown)?;
    let (topic_device, rest) = rest.split_once('/').ok_or_else(unknown)?;
    let (topic_module, rest) = match rest.strip_prefix("modules/") {
        Some(module_rest) => {
            let (module, rest) = module_rest.split_once('/').ok_or_else(unknown)?;
            (Some(module), rest)
        }
        None => (None, rest),
    };
    let bag_text = rest.strip_prefix("messages/events").ok_or_else(unknown)?;
    let properties = property_bag_after(topic, bag_text)?.ok_or_else(unknown)?;

    authorize_identity(topic, client, topic_device, topic_module)?;
    Ok(DeviceTopic::Telemetry {
        module_id: client.module.clone(),
        properties,
    })
}

/// Checks that a topic's `devices/{id}[/modules/{mid}]` names exactly `client`. A `+` in the device
/// position is accepted for subscription filters only (callers pass `"+"` through as the device text).
fn authorize_identity(
    topic: &str,
    client: &ClientId,
    topic_device: &str,
    topic_module: Option<&str>,
) -> Result<(), TopicError> {
    if topic_device != client.device.as_str() {
        return Err(TopicError::ForeignDevice {
            topic: topic.to_owned(),
            topic_device: topic_device.to_owned(),
            client: client.clone(),
        });
    }
    match (topic_module, &client.module) {
        (None, None) => Ok(()),
        (Some(topic_module), Some(module)) if topic_module == module.as_str() => Ok(()),
        (Some(topic_module), Some(_)) => Err(TopicError::ForeignModule {
            topic: topic.to_owned(),
            topic_module: topic_module.to_owned(),
            client: client.clone(),
        }),
        (Some(_), None) => Err(TopicError::WrongClientKind {
            topic: topic.to_owned(),
            client: client.clone(),
            expected: ClientKind::Module,
        }),
        (None, Some(_)) => Err(TopicError::WrongClientKind {
            topic: topic.to_owned(),
            client: client.clone(),
            expected: ClientKind::Device,
        }),
    }
}

/// Parses a SUBSCRIBE filter from `client`. Accepts the filters of the official SDKs (see the module docs):
/// the three `$iothub/...` filters, `devices/{id}/messages/devicebound/#` (also with `+` for the id, as the
/// embedded C SDK sends), `devices/{id}/modules/{mid}/messages/devicebound/#` and
/// `devices/{id}/modules/{mid}/inputs/#`. Filters naming another device or module are rejected, and so are
/// device-queue filters from module clients and module filters from device clients.
pub fn parse_device_subscription(
    filter: &str,
    client: &ClientId,
) -> Result<Subscription, TopicError> {
    let unsupported = || TopicError::UnsupportedFilter {
        filter: filter.to_owned(),
    };
    match filter {
        TWIN_RESPONSE_SUBSCRIPTION => return Ok(Subscription::TwinResponses),
        DESIRED_PATCH_SUBSCRIPTION => return Ok(Subscription::DesiredPatches),
        METHOD_REQUEST_SUBSCRIPTION => return Ok(Subscription::Methods),
        _ => {}
    }
    let rest = filter.strip_prefix("devices/").ok_or_else(unsupported)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let (topic_device, topic_module, subscription) = match segments.as_slice() {
        [device, "messages", "devicebound", "#"] => (*device, None, Subscription::CloudToDevice),
        [device, "modules", module, "messages", "devicebound", "#"] => {
            (*device, Some(*module), Subscription::CloudToDevice)
        }
        [device, "modules", module, "inputs", "#"] => {
            (*device, Some(*module), Subscription::ModuleInputs)
        }
        _ => return Err(unsupported()),
    };
    if topic_module.is_some_and(|module| module.contains(['+', '#'])) {
        return Err(unsupported());
    }
    // The embedded C SDK's `devices/+/messages/devicebound/#`: the hub only ever delivers the client's
    // own messages, so the wildcard means "mine".
    let topic_device = if topic_device == "+" && topic_module.is_none() {
        client.device.as_str()
    } else {
        topic_device
    };
    if topic_device.contains(['+', '#']) {
        return Err(unsupported());
    }
    authorize_identity(filter, client, topic_device, topic_module)?;
    Ok(subscription)
}

// ---- hub -> device builders -------------------------------------------------------------------------

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]`
pub fn twin_response_topic(status: u16, request_id: &str, version: Option<u64>) -> String {
    let mut topic = format!(
        "{TWIN_RESPONSE_PREFIX}{status}/?$rid={}",
        encode_with(request_id, REQUEST_ID_ESCAPES)
    );
    if let Some(version) = version {
        topic.push_str(&format!("&$version={version}"));
    }
    topic
}

/// `$iothub/twin/PATCH/properties/desired/?$version={version}`. The payload must also carry
/// `"$version"`: the Python SDK reads it from the body, not from the topic (PROTOCOL.md §2.4).
pub fn desired_patch_topic(version: u64) -> String {
    format!("{DESIRED_PATCH_PREFIX}?$version={version}")
}

/// `$iothub/methods/POST/{method_name}/?$rid={rid}`. The method name is escaped where it must be
/// (`%`, `/`, `?`, `#`, `+`, control characters; see [`crate::ids::validate_method_name`] for the names
/// Azure allows): Python percent-decodes the segment, Node takes it raw, so plain names reach both intact.
pub fn method_request_topic(method_name: &str, request_id: &str) -> String {
    format!(
        "{METHOD_REQUEST_PREFIX}{}/?$rid={}",
        encode_with(method_name, TOPIC_SEGMENT_ESCAPES),
        encode_with(request_id, REQUEST_ID_ESCAPES)
    )
}

/// `devices/{id}/messages/devicebound/{bag}`
pub fn cloud_to_device_topic(device: &DeviceId, properties: &PropertyBag) -> String {
    format!(
        "devices/{device}/messages/devicebound/{}",
        properties.encode()
    )
}

/// `devices/{id}/modules/{mid}/messages/devicebound/{bag}`: a cloud-to-module message.
pub fn module_cloud_to_device_topic(
    device: &DeviceId,
    module: &ModuleId,
    properties: &PropertyBag,
) -> String {
    format!(
        "devices/{device}/modules/{module}/messages/devicebound/{}",
        properties.encode()
    )
}

/// `devices/{id}/modules/{mid}/inputs/{input}/{bag}`
pub fn module_input_topic(
    device: &DeviceId,
    module: &ModuleId,
    input_name: &str,
    properties: &PropertyBag,
) -> String {
    format!(
        "devices/{device}/modules/{module}/inputs/{}/{}",
        encode_with(input_name, TOPIC_SEGMENT_ESCAPES),
        properties.encode()
    )
}

/// Parses a PUBLISH topic received from the hub (device-side mirror of the builders above).
pub fn parse_hub_publish(topic: &str) -> Result<HubTopic, TopicError> {
    reject_invalid_topic_name(topic)?;
    let unknown = || TopicError::UnknownHubTopic {
        topic: topic.to_owned(),
    };

    if topic.starts_with("$iothub/") {
        let (path, query) = split_path_and_query(topic);
        let query = parse_query(topic, query)?;
        if let Some(status_text) = path.strip_prefix(TWIN_RESPONSE_PREFIX) {
            let status = (!status_text.contains('/'))
                .then(|| status_text.parse::<u16>().ok())
                .flatten()
                .ok_or_else(|| TopicError::InvalidStatus {
                    topic: topic.to_owned(),
                    status: status_text.to_owned(),
                })?;
            return Ok(HubTopic::TwinResponse {
                status,
                request_id: require_request_id(topic, &query)?,
                version: parse_version(topic, query.version)?,
            });
        }
        if path == DESIRED_PATCH_PREFIX.trim_end_matches('/') {
            return Ok(HubTopic::DesiredPatch {
                version: parse_version(topic, query.version)?,
            });
        }
        let encoded_name = path
            .strip_prefix(METHOD_REQUEST_PREFIX)
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .ok_or_else(unknown)?;
        let method_name =
            unquote_strict(encoded_name).map_err(|error| TopicError::InvalidSegment {
                topic: topic.to_owned(),
                segment: "method name",
                reason: error.to_string(),
            })?;
        return Ok(HubTopic::MethodRequest {
            method_name,
            request_id: require_request_id(topic, &query)?,
        });
    }

    let rest = topic.strip_prefix("devices/").ok_or_else(unknown)?;
    let (_device, rest) = rest.split_once('/').ok_or_else(unknown)?;
    if let Some(bag_text) = rest.strip_prefix("messages/devicebound") {
        let properties = property_bag_after(topic, bag_text)?.ok_or_else(unknown)?;
        return Ok(HubTopic::CloudToDevice { properties });
    }
    let module_rest = rest.strip_prefix("modules/").ok_or_else(unknown)?;
    let (_module, rest) = module_rest.split_once('/').ok_or_else(unknown)?;
    if let Some(bag_text) = rest.strip_prefix("messages/devicebound") {
        let properties = property_bag_after(topic, bag_text)?.ok_or_else(unknown)?;
        return Ok(HubTopic::CloudToDevice { properties });
    }
    let input_rest = rest.strip_prefix("inputs/").ok_or_else(unknown)?;
    let (encoded_input, bag_text) = match input_rest.split_once('/') {
        Some((input, bag)) => (input, Some(bag)),
        None => (input_rest, None),
    };
    if encoded_input.is_empty() {
        return Err(unknown());
    }
    let input = unquote_strict(encoded_input).map_err(|error| TopicError::InvalidSegment {
        topic: topic.to_owned(),
        segment: "input name",
        reason: error.to_string(),
    })?;
    let properties = match bag_text {
        None => PropertyBag::new(),
        Some(bag) => decode_property_bag(topic, bag.strip_suffix('/').unwrap_or(bag))?,
    };
    Ok(HubTopic::ModuleInput { input, properties })
}

// ---- device -> hub builders -------------------------------------------------------------------------

/// `$iothub/twin/GET/?$rid={rid}` (payload: anything; the SDKs send a single space).
pub fn twin_get_topic(request_id: &str) -> String {
    format!(
        "$iothub/twin/GET/?$rid={}",
        encode_with(request_id, REQUEST_ID_ESCAPES)
    )
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`
pub fn twin_patch_reported_topic(request_id: &str) -> String {
    format!(
        "$iothub/twin/PATCH/properties/reported/?$rid={}",
        encode_with(request_id, REQUEST_ID_ESCAPES)
    )
}

/// `$iothub/methods/res/{status}/?$rid={rid}`
pub fn method_response_topic(status: i32, request_id: &str) -> String {
    format!(
        "$iothub/methods/res/{status}/?$rid={}",
        encode_with(request_id, REQUEST_ID_ESCAPES)
    )
}

/// `devices/{id}/messages/events/{bag}` or `devices/{id}/modules/{mid}/messages/events/{bag}`
/// (no trailing `/`, like the Python SDK). A module output name goes into the bag as `$.on`.
pub fn telemetry_topic(client: &ClientId, properties: &PropertyBag) -> String {
    match &client.module {
        None => format!(
            "devices/{}/messages/events/{}",
            client.device,
            properties.encode()
        ),
        Some(module) => format!(
            "devices/{}/modules/{module}/messages/events/{}",
            client.device,
            properties.encode()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_client() -> ClientId {
        ClientId::parse("dev1").expect("valid")
    }

    fn module_client() -> ClientId {
        ClientId::parse("dev1/mod1").expect("valid")
    }

    fn module(text: &str) -> ModuleId {
        ModuleId::new(text).expect("valid")
    }

    fn owned(topic: &str) -> String {
        topic.to_owned()
    }

    #[test]
    fn device_publish_table_for_a_device_client() {
        let client = device_client();
        let telemetry = |entries: &[(&str, &str)]| {
            Ok(DeviceTopic::Telemetry {
                module_id: None,
                properties: entries.iter().map(|(key, value)| (*key, *value)).collect(),
            })
        };
        let cases: Vec<(&str, Result<DeviceTopic, TopicError>)> = vec![
            // PROTOCOL.md §2.11 captures (Python) and Node's forms.
            (
                "$iothub/twin/GET/?$rid=977c2ee4-648c-4f91-81dd-0480c65a67ca",
                Ok(DeviceTopic::TwinGet {
                    request_id: owned("977c2ee4-648c-4f91-81dd-0480c65a67ca"),
                }),
            ),
            (
                "$iothub/twin/GET?$rid=1",
                Ok(DeviceTopic::TwinGet {
                    request_id: owned("1"),
                }),
            ),
            (
                "$iothub/twin/GET/?foo=bar&$rid=a%20b",
                Ok(DeviceTopic::TwinGet {
                    request_id: owned("a%20b"),
                }),
            ),
            (
                "$iothub/twin/PATCH/properties/reported/?$rid=8e6e2f9e",
                Ok(DeviceTopic::TwinPatchReported {
                    request_id: owned("8e6e2f9e"),
                }),
            ),
            (
                "$iothub/twin/PATCH/properties/reported/?$rid=7&$version=4",
                Ok(DeviceTopic::TwinPatchReported {
                    request_id: owned("7"),
                }),
            ),
            (
                "$iothub/methods/res/200/?$rid=1",
                Ok(DeviceTopic::MethodResponse {
                    status: 200,
                    request_id: owned("1"),
                }),
            ),
            (
                "$iothub/methods/res/-1/?$rid=ab",
                Ok(DeviceTopic::MethodResponse {
                    status: -1,
                    request_id: owned("ab"),
                }),
            ),
            (
                "devices/dev1/messages/events/%24.mid=mid-1&%24.cid=corr-1&alert=high%20temp",
                telemetry(&[
                    ("$.mid", "mid-1"),
                    ("$.cid", "corr-1"),
                    ("alert", "high temp"),
                ]),
            ),
            ("devices/dev1/messages/events/", telemetry(&[])),
            ("devices/dev1/messages/events", telemetry(&[])),
            (
                "devices/dev1/messages/events/a=1/",
                telemetry(&[("a", "1")]),
            ),
            (
                "devices/dev1/messages/events/k=a/b",
                telemetry(&[("k", "a/b")]),
            ),
            // malformed
            ("", Err(TopicError::Empty)),
            (
                "$iothub/twin/GET/?$rid=1#",
                Err(TopicError::WildcardInTopicName {
                    topic: owned("$iothub/twin/GET/?$rid=1#"),
                    wildcard: '#',
                }),
            ),
            (
                "devices/+/messages/events/",
                Err(TopicError::WildcardInTopicName {
                    topic: owned("devices/+/messages/events/"),
                    wildcard: '+',
                }),
            ),
            (
                "$iothub/twin/GET/",
                Err(TopicError::MissingRequestId {
                    topic: owned("$iothub/twin/GET/"),
                }),
            ),
            (
                "$iothub/twin/GET/?$rid=",
                Err(TopicError::MissingRequestId {
                    topic: owned("$iothub/twin/GET/?$rid="),
                }),
            ),
            (
                "$iothub/twin/GET/?rid=1",
                Err(TopicError::MissingRequestId {
                    topic: owned("$iothub/twin/GET/?rid=1"),
                }),
            ),
            (
                "$iothub/twin/GET/?$rid=1&$rid=2",
                Err(TopicError::MalformedQuery {
                    topic: owned("$iothub/twin/GET/?$rid=1&$rid=2"),
                    reason: owned("$rid appears more than once"),
                }),
            ),
            (
                "$iothub/twin/get/?$rid=1",
                Err(TopicError::UnknownDeviceTopic {
                    topic: owned("$iothub/twin/get/?$rid=1"),
                }),
            ),
            (
                "$iothub/twin/PATCH/properties/desired/?$rid=1",
                Err(TopicError::UnknownDeviceTopic {
                    topic: owned("$iothub/twin/PATCH/properties/desired/?$rid=1"),
                }),
            ),
            (
                "$iothub/methods/res/ok/?$rid=1",
                Err(TopicError::InvalidStatus {
                    topic: owned("$iothub/methods/res/ok/?$rid=1"),
                    status: owned("ok"),
                }),
            ),
            (
                "$iothub/methods/res/99999999999/?$rid=1",
                Err(TopicError::InvalidStatus {
                    topic: owned("$iothub/methods/res/99999999999/?$rid=1"),
                    status: owned("99999999999"),
                }),
            ),
            (
                "$iothub/methods/res/200/?x=1",
                Err(TopicError::MissingRequestId {
                    topic: owned("$iothub/methods/res/200/?x=1"),
                }),
            ),
            (
                "$iothub/methods/res/200/x/?$rid=1",
                Err(TopicError::UnknownDeviceTopic {
                    topic: owned("$iothub/methods/res/200/x/?$rid=1"),
                }),
            ),
            (
                "devices/dev2/messages/events/",
                Err(TopicError::ForeignDevice {
                    topic: owned("devices/dev2/messages/events/"),
                    topic_device: owned("dev2"),
                    client: device_client(),
                }),
            ),
            (
                "devices/DEV1/messages/events/",
                Err(TopicError::ForeignDevice {
                    topic: owned("devices/DEV1/messages/events/"),
                    topic_device: owned("DEV1"),
                    client: device_client(),
                }),
            ),
            (
                "devices/dev1/modules/mod1/messages/events/",
                Err(TopicError::WrongClientKind {
                    topic: owned("devices/dev1/modules/mod1/messages/events/"),
                    client: device_client(),
                    expected: ClientKind::Module,
                }),
            ),
            (
                "devices/dev1/messages/eventsx",
                Err(TopicError::UnknownDeviceTopic {
                    topic: owned("devices/dev1/messages/eventsx"),
                }),
            ),
            (
                "devices/dev1/messages/devicebound/",
                Err(TopicError::UnknownDeviceTopic {
                    topic: owned("devices/dev1/messages/devicebound/"),
                }),
            ),
            (
                "devices/dev1",
                Err(TopicError::UnknownDeviceTopic {
                    topic: owned("devices/dev1"),
                }),
            ),
            (
                "telemetry",
                Err(TopicError::UnknownDeviceTopic {
                    topic: owned("telemetry"),
                }),
            ),
            (
                "devices/dev1/messages/events/a=%zz",
                Err(TopicError::InvalidPropertyBag {
                    topic: owned("devices/dev1/messages/events/a=%zz"),
                    source: PropertyBagError::MalformedEscape { position: 2 },
                }),
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(parse_device_publish(topic, &client), expected, "{topic:?}");
        }
    }

    #[test]
    fn device_publish_table_for_a_module_client() {
        let client = module_client();
        let cases: Vec<(&str, Result<DeviceTopic, TopicError>)> = vec![
            (
                "devices/dev1/modules/mod1/messages/events/%24.on=out1&%24.mid=m-1",
                Ok(DeviceTopic::Telemetry {
                    module_id: Some(module("mod1")),
                    properties: PropertyBag::new().with("$.on", "out1").with("$.mid", "m-1"),
                }),
            ),
            // Node and Java end module telemetry with '/'.
            (
                "devices/dev1/modules/mod1/messages/events/%24.on=out1/",
                Ok(DeviceTopic::Telemetry {
                    module_id: Some(module("mod1")),
                    properties: PropertyBag::new().with("$.on", "out1"),
                }),
            ),
            (
                "$iothub/twin/GET/?$rid=1",
                Ok(DeviceTopic::TwinGet {
                    request_id: owned("1"),
                }),
            ),
            (
                "devices/dev1/modules/mod2/messages/events/",
                Err(TopicError::ForeignModule {
                    topic: owned("devices/dev1/modules/mod2/messages/events/"),
                    topic_module: owned("mod2"),
                    client: module_client(),
                }),
            ),
            (
                "devices/dev1/messages/events/",
                Err(TopicError::WrongClientKind {
                    topic: owned("devices/dev1/messages/events/"),
                    client: module_client(),
                    expected: ClientKind::Device,
                }),
            ),
            (
                "devices/dev2/modules/mod1/messages/events/",
                Err(TopicError::ForeignDevice {
                    topic: owned("devices/dev2/modules/mod1/messages/events/"),
                    topic_device: owned("dev2"),
                    client: module_client(),
                }),
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(parse_device_publish(topic, &client), expected, "{topic:?}");
        }
    }

    #[test]
    fn subscription_table() {
        let device = device_client();
        let module = module_client();
        let unsupported = |filter: &str| {
            Err(TopicError::UnsupportedFilter {
                filter: owned(filter),
            })
        };
        let cases: Vec<(&str, &ClientId, Result<Subscription, TopicError>)> = vec![
            (
                "$iothub/twin/res/#",
                &device,
                Ok(Subscription::TwinResponses),
            ),
            (
                "$iothub/twin/PATCH/properties/desired/#",
                &device,
                Ok(Subscription::DesiredPatches),
            ),
            ("$iothub/methods/POST/#", &device, Ok(Subscription::Methods)),
            ("$iothub/methods/POST/#", &module, Ok(Subscription::Methods)),
            (
                "$iothub/twin/res/#",
                &module,
                Ok(Subscription::TwinResponses),
            ),
            (
                "devices/dev1/messages/devicebound/#",
                &device,
                Ok(Subscription::CloudToDevice),
            ),
            (
                "devices/+/messages/devicebound/#",
                &device,
                Ok(Subscription::CloudToDevice),
            ),
            (
                "devices/dev1/modules/mod1/messages/devicebound/#",
                &module,
                Ok(Subscription::CloudToDevice),
            ),
            (
                "devices/dev1/modules/mod1/inputs/#",
                &module,
                Ok(Subscription::ModuleInputs),
            ),
            (
                "devices/dev2/messages/devicebound/#",
                &device,
                Err(TopicError::ForeignDevice {
                    topic: owned("devices/dev2/messages/devicebound/#"),
                    topic_device: owned("dev2"),
                    client: device.clone(),
                }),
            ),
            (
                "devices/dev1/messages/devicebound/#",
                &module,
                Err(TopicError::WrongClientKind {
                    topic: owned("devices/dev1/messages/devicebound/#"),
                    client: module.clone(),
                    expected: ClientKind::Device,
                }),
            ),
            (
                "devices/+/messages/devicebound/#",
                &module,
                Err(TopicError::WrongClientKind {
                    topic: owned("devices/+/messages/devicebound/#"),
                    client: module.clone(),
                    expected: ClientKind::Device,
                }),
            ),
            (
                "devices/dev1/modules/mod1/inputs/#",
                &device,
                Err(TopicError::WrongClientKind {
                    topic: owned("devices/dev1/modules/mod1/inputs/#"),
                    client: device.clone(),
                    expected: ClientKind::Module,
                }),
            ),
            (
                "devices/dev1/modules/mod2/inputs/#",
                &module,
                Err(TopicError::ForeignModule {
                    topic: owned("devices/dev1/modules/mod2/inputs/#"),
                    topic_module: owned("mod2"),
                    client: module.clone(),
                }),
            ),
            (
                "devices/dev1/modules/+/inputs/#",
                &module,
                unsupported("devices/dev1/modules/+/inputs/#"),
            ),
            ("devices/#", &device, unsupported("devices/#")),
            ("#", &device, unsupported("#")),
            ("$iothub/#", &device, unsupported("$iothub/#")),
            (
                "$iothub/twin/res/+",
                &device,
                unsupported("$iothub/twin/res/+"),
            ),
            (
                "$iothub/methods/POST/reboot/#",
                &device,
                unsupported("$iothub/methods/POST/reboot/#"),
            ),
            (
                "devices/dev1/messages/devicebound",
                &device,
                unsupported("devices/dev1/messages/devicebound"),
            ),
            (
                "devices/dev1/messages/events/#",
                &device,
                unsupported("devices/dev1/messages/events/#"),
            ),
            ("", &device, unsupported("")),
        ];
        for (filter, client, expected) in cases {
            assert_eq!(
                parse_device_subscription(filter, client),
                expected,
                "{filter:?} from {client}"
            );
        }
    }

    #[test]
    fn subscription_filters_our_sdk_uses_are_accepted() {
        for client in [device_client(), module_client()] {
            for subscription in [
                Subscription::TwinResponses,
                Subscription::DesiredPatches,
                Subscription::Methods,
                Subscription::CloudToDevice,
                Subscription::ModuleInputs,
            ] {
                if let Some(filter) = subscription.filter_for(&client) {
                    assert_eq!(
                        parse_device_subscription(&filter, &client),
                        Ok(subscription),
                        "{filter}"
                    );
                }
            }
        }
        assert_eq!(
            Subscription::ModuleInputs.filter_for(&device_client()),
            None
        );
    }

    #[test]
    fn hub_to_device_builders_produce_the_captured_topics() {
        let device = DeviceId::new("dev1").expect("valid");
        assert_eq!(
            twin_response_topic(200, "977c2ee4", None),
            "$iothub/twin/res/200/?$rid=977c2ee4"
        );
        assert_eq!(
            twin_response_topic(204, "8e6e2f9e", Some(5)),
            "$iothub/twin/res/204/?$rid=8e6e2f9e&$version=5"
        );
        assert_eq!(
            twin_response_topic(200, "a%20b", None),
            "$iothub/twin/res/200/?$rid=a%20b"
        );
        assert_eq!(
            twin_response_topic(200, "a&b#c+d", None),
            "$iothub/twin/res/200/?$rid=a%26b%23c%2Bd"
        );
        assert_eq!(
            desired_patch_topic(3),
            "$iothub/twin/PATCH/properties/desired/?$version=3"
        );
        assert_eq!(
            method_request_topic("reboot", "1"),
            "$iothub/methods/POST/reboot/?$rid=1"
        );
        assert_eq!(
            method_request_topic("a#b+c%d", "1"),
            "$iothub/methods/POST/a%23b%2Bc%25d/?$rid=1"
        );
        assert_eq!(
            method_request_topic("thermostat1*getMaxMinReport", "7"),
            "$iothub/methods/POST/thermostat1*getMaxMinReport/?$rid=7"
        );
        let c2d = PropertyBag::new()
            .with("$.mid", "msg-1")
            .with("$.to", "/devices/dev1/messages/devicebound")
            .with("$.ct", "application/json")
            .with("$.ce", "utf-8")
            .with("prop1", "val 1");
        assert_eq!(
            cloud_to_device_topic(&device, &c2d),
            "devices/dev1/messages/devicebound/%24.mid=msg-1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2Fdevicebound&%24.ct=application%2Fjson&%24.ce=utf-8&prop1=val%201"
        );
        assert_eq!(
            cloud_to_device_topic(&device, &PropertyBag::new()),
            "devices/dev1/messages/devicebound/"
        );
        assert_eq!(
            module_cloud_to_device_topic(
                &device,
                &module("mod1"),
                &PropertyBag::new().with("a", "1")
            ),
            "devices/dev1/modules/mod1/messages/devicebound/a=1"
        );
        assert_eq!(
            module_input_topic(
                &device,
                &module("mod1"),
                "input 1/x",
                &PropertyBag::new().with("$.mid", "m")
            ),
            "devices/dev1/modules/mod1/inputs/input 1%2Fx/%24.mid=m"
        );
    }

    #[test]
    fn device_to_hub_builders() {
        assert_eq!(twin_get_topic("r1"), "$iothub/twin/GET/?$rid=r1");
        assert_eq!(
            twin_patch_reported_topic("r2"),
            "$iothub/twin/PATCH/properties/reported/?$rid=r2"
        );
        assert_eq!(
            method_response_topic(200, "1"),
            "$iothub/methods/res/200/?$rid=1"
        );
        assert_eq!(
            method_response_topic(-3, "1"),
            "$iothub/methods/res/-3/?$rid=1"
        );
        let properties = PropertyBag::new().with("$.mid", "m-1").with("$.on", "out1");
        assert_eq!(
            telemetry_topic(&device_client(), &PropertyBag::new()),
            "devices/dev1/messages/events/"
        );
        assert_eq!(
            telemetry_topic(&module_client(), &properties),
            "devices/dev1/modules/mod1/messages/events/%24.on=out1&%24.mid=m-1"
        );
    }

    #[test]
    fn hub_publish_table() {
        let cases: Vec<(&str, Result<HubTopic, TopicError>)> = vec![
            (
                "$iothub/twin/res/200/?$rid=1",
                Ok(HubTopic::TwinResponse {
                    status: 200,
                    request_id: owned("1"),
                    version: None,
                }),
            ),
            (
                "$iothub/twin/res/204/?$rid=8e&$version=5",
                Ok(HubTopic::TwinResponse {
                    status: 204,
                    request_id: owned("8e"),
                    version: Some(5),
                }),
            ),
            (
                "$iothub/twin/res/204/?$version=5&$rid=8e",
                Ok(HubTopic::TwinResponse {
                    status: 204,
                    request_id: owned("8e"),
                    version: Some(5),
                }),
            ),
            (
                "$iothub/twin/PATCH/properties/desired/?$version=3",
                Ok(HubTopic::DesiredPatch { version: Some(3) }),
            ),
            (
                "$iothub/twin/PATCH/properties/desired/",
                Ok(HubTopic::DesiredPatch { version: None }),
            ),
            (
                "$iothub/methods/POST/reboot/?$rid=1",
                Ok(HubTopic::MethodRequest {
                    method_name: owned("reboot"),
                    request_id: owned("1"),
                }),
            ),
            (
                "$iothub/methods/POST/reboot?$rid=1",
                Ok(HubTopic::MethodRequest {
                    method_name: owned("reboot"),
                    request_id: owned("1"),
                }),
            ),
            (
                "$iothub/methods/POST/a%23b/?$rid=1",
                Ok(HubTopic::MethodRequest {
                    method_name: owned("a#b"),
                    request_id: owned("1"),
                }),
            ),
            (
                "devices/dev1/messages/devicebound/%24.mid=msg-1&prop1=val%201",
                Ok(HubTopic::CloudToDevice {
                    properties: PropertyBag::new()
                        .with("$.mid", "msg-1")
                        .with("prop1", "val 1"),
                }),
            ),
            (
                "devices/dev1/messages/devicebound/",
                Ok(HubTopic::CloudToDevice {
                    properties: PropertyBag::new(),
                }),
            ),
            (
                "devices/dev1/modules/m/messages/devicebound/a=1",
                Ok(HubTopic::CloudToDevice {
                    properties: PropertyBag::new().with("a", "1"),
                }),
            ),
            (
                "devices/dev1/modules/mod1/inputs/input1/%24.mid=m",
                Ok(HubTopic::ModuleInput {
                    input: owned("input1"),
                    properties: PropertyBag::new().with("$.mid", "m"),
                }),
            ),
            (
                "devices/dev1/modules/mod1/inputs/in%201",
                Ok(HubTopic::ModuleInput {
                    input: owned("in 1"),
                    properties: PropertyBag::new(),
                }),
            ),
            (
                "$iothub/twin/res/abc/?$rid=1",
                Err(TopicError::InvalidStatus {
                    topic: owned("$iothub/twin/res/abc/?$rid=1"),
                    status: owned("abc"),
                }),
            ),
            (
                "$iothub/twin/res/200/",
                Err(TopicError::MissingRequestId {
                    topic: owned("$iothub/twin/res/200/"),
                }),
            ),
            (
                "$iothub/twin/res/200/?$rid=1&$version=x",
                Err(TopicError::InvalidVersion {
                    topic: owned("$iothub/twin/res/200/?$rid=1&$version=x"),
                    version: owned("x"),
                }),
            ),
            (
                "$iothub/methods/POST//?$rid=1",
                Err(TopicError::UnknownHubTopic {
                    topic: owned("$iothub/methods/POST//?$rid=1"),
                }),
            ),
            (
                "$iothub/methods/POST/a%2/?$rid=1",
                Err(TopicError::InvalidSegment {
                    topic: owned("$iothub/methods/POST/a%2/?$rid=1"),
                    segment: "method name",
                    reason: owned("malformed percent-escape at byte 1"),
                }),
            ),
            (
                "$iothub/methods/POST/reboot/?x=1",
                Err(TopicError::MissingRequestId {
                    topic: owned("$iothub/methods/POST/reboot/?x=1"),
                }),
            ),
            (
                "devices/dev1/modules/mod1/inputs/",
                Err(TopicError::UnknownHubTopic {
                    topic: owned("devices/dev1/modules/mod1/inputs/"),
                }),
            ),
            (
                "devices/dev1/messages/events/",
                Err(TopicError::UnknownHubTopic {
                    topic: owned("devices/dev1/messages/events/"),
                }),
            ),
            (
                "something/else",
                Err(TopicError::UnknownHubTopic {
                    topic: owned("something/else"),
                }),
            ),
            ("", Err(TopicError::Empty)),
        ];
        for (topic, expected) in cases {
            assert_eq!(parse_hub_publish(topic), expected, "{topic:?}");
        }
    }

    #[test]
    fn error_messages_say_why() {
        let error = parse_device_publish("devices/dev2/messages/events/", &device_client())
            .map(|_| ())
            .map_err(|error| error.to_string());
        assert_eq!(error, Err("topic \"devices/dev2/messages/events/\" is for device \"dev2\", but the client is dev1".to_owned()));
        let error = parse_device_publish("$iothub/twin/GET/", &device_client())
            .map(|_| ())
            .map_err(|error| error.to_string());
        assert_eq!(
            error,
            Err("topic \"$iothub/twin/GET/\" has no $rid request id".to_owned())
        );
    }

    mod round_trips {
        use super::*;
        use proptest::prelude::*;

        /// Request ids as SDKs generate them (uuids, counters, Python-quoted text).
        fn request_id() -> impl Strategy<Value = String> {
            "[A-Za-z0-9%._~-]{1,40}"
        }

        fn properties() -> impl Strategy<Value = PropertyBag> {
            proptest::collection::vec(("\\PC{1,8}", proptest::option::of("\\PC{0,8}")), 0..5)
                .prop_map(PropertyBag::from)
        }

        fn client() -> impl Strategy<Value = ClientId> {
            (
                crate::ids::tests::id_strategy(),
                proptest::option::of(crate::ids::tests::id_strategy()),
            )
                .prop_map(|(device, module)| ClientId {
                    device: DeviceId::new(device).expect("valid"),
                    module: module.map(|module| ModuleId::new(module).expect("valid")),
                })
        }

        proptest! {
            #[test]
            fn device_topics_round_trip(client in client(), request_id in request_id(), status in any::<i32>(), bag in properties()) {
                prop_assert_eq!(parse_device_publish(&twin_get_topic(&request_id), &client), Ok(DeviceTopic::TwinGet { request_id: request_id.clone() }));
                prop_assert_eq!(
                    parse_device_publish(&twin_patch_reported_topic(&request_id), &client),
                    Ok(DeviceTopic::TwinPatchReported { request_id: request_id.clone() })
                );
                prop_assert_eq!(
                    parse_device_publish(&method_response_topic(status, &request_id), &client),
                    Ok(DeviceTopic::MethodResponse { status, request_id: request_id.clone() })
                );
                prop_assert_eq!(
                    parse_device_publish(&telemetry_topic(&client, &bag), &client),
                    Ok(DeviceTopic::Telemetry { module_id: client.module.clone(), properties: bag.normalized() })
                );
            }

            #[test]
            fn hub_topics_round_trip(
                client in client(),
                request_id in request_id(),
                status in any::<u16>(),
                version in proptest::option::of(any::<u64>()),
                method_name in "[!-~]{1,20}",
                input in "\\PC{1,12}",
                bag in properties(),
            ) {
                prop_assert_eq!(
                    parse_hub_publish(&twin_response_topic(status, &request_id, version)),
                    Ok(HubTopic::TwinResponse { status, request_id: request_id.clone(), version })
                );
                prop_assert_eq!(parse_hub_publish(&desired_patch_topic(version.unwrap_or(1))), Ok(HubTopic::DesiredPatch { version: Some(version.unwrap_or(1)) }));
                prop_assert_eq!(
                    parse_hub_publish(&method_request_topic(&method_name, &request_id)),
                    Ok(HubTopic::MethodRequest { method_name: method_name.clone(), request_id: request_id.clone() })
                );
                prop_assert_eq!(
                    parse_hub_publish(&cloud_to_device_topic(&client.device, &bag)),
                    Ok(HubTopic::CloudToDevice { properties: bag.normalized() })
                );
                if let Some(module) = &client.module {
                    prop_assert_eq!(
                        parse_hub_publish(&module_input_topic(&client.device, module, &input, &bag)),
                        Ok(HubTopic::ModuleInput { input: input.clone(), properties: bag.normalized() })
                    );
                    prop_assert_eq!(
                        parse_hub_publish(&module_cloud_to_device_topic(&client.device, module, &bag)),
                        Ok(HubTopic::CloudToDevice { properties: bag.normalized() })
                    );
                }
            }

            #[test]
            fn built_topics_contain_no_wildcards(method_name in "\\PC{1,20}", request_id in "\\PC{1,20}", input in "\\PC{1,12}", bag in properties()) {
                let device = DeviceId::new("d").expect("valid");
                let module = ModuleId::new("m").expect("valid");
                for topic in [
                    method_request_topic(&method_name, &request_id),
                    twin_response_topic(200, &request_id, None),
                    module_input_topic(&device, &module, &input, &bag),
                    cloud_to_device_topic(&device, &bag),
                ] {
                    prop_assert!(!topic.contains(['#', '+']), "{}", topic);
                }
            }

            #[test]
            fn parsers_never_panic(topic in "\\PC{0,80}", client in client()) {
                let _ = parse_device_publish(&topic, &client);
                let _ = parse_device_subscription(&topic, &client);
                let _ = parse_hub_publish(&topic);
            }
        }
    }
}
