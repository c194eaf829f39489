//! Cloud-to-device (C2D) messages: fleethub's send endpoint, the message a device's queue holds, its
//! delivery on `devices/{id}/messages/devicebound/{property bag}`, and the feedback records the service
//! reads at `/messages/serviceBound/feedback`.
//!
//! Sources: Azure's "Understand cloud-to-device messaging" (`iot-hub-devguide-messages-c2d.md`: the queue
//! of at most 50 messages, the life cycle, `iothub-ack`, the feedback record and batch, the hub's
//! defaults), "Create and read IoT Hub messages" (`iot-hub-devguide-messages-construct.md`: the C2D system
//! properties, the message id format, the characters allowed in C2D property names and values),
//! "Communicate with an IoT hub using the MQTT protocol" (the devicebound topic; a property without a value
//! is a bare key), the REST reference of "Cloud To Device Messages" (purge, receive/complete/abandon
//! feedback with a lock token), the C# SDK's `FeedbackStatusCode` (a string enum, `Success` = 0 ...
//! `Purged` = 4), and captures of real deliveries (`%24.mid=…&%24.to=%2Fdevices%2F{id}%2Fmessages%2Fdevicebound
//! &%24.ce=utf-8&iothub-ack=none`): Azure always sends `iothub-ack`, and `$.exp` only for a message whose
//! sender set an expiry.
//!
//! The send endpoint is fleethub's own (Azure's service SDKs send C2D over AMQP, which fleethub does not
//! speak): `POST /devices/{id}/messages/deviceBound` with a JSON [`SendC2dRequest`]. Why JSON and not
//! Azure's HTTPS message headers (`iothub-messageid`, `iothub-app-{name}`, ...): header names are
//! case-insensitive, so application property names would reach the device lowercased, and a header cannot
//! say "this property has no value" (a bare key on the wire). A JSON body carries both exactly, is
//! validated in one place with field-named errors, and matches every other fleethub REST body. The cost is
//! base64 for binary payloads (`bodyBase64`); text payloads go as `body`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{Duration, OffsetDateTime};

use crate::ids::DeviceId;
use crate::property_bag::{PropertyBag, system_property};
use crate::rest::{azure_time, format_time};
use crate::topics::cloud_to_device_topic;

/// Azure's limit on a device's queue: sending more answers 403004 `DeviceMaximumQueueDepthExceeded`.
pub const AZURE_MAX_QUEUE_DEPTH: usize = 50;
/// Azure's limit on a C2D message, counted as [`C2dMessage::size`] counts.
pub const MAX_C2D_MESSAGE_BYTES: usize = 64 * 1024;
/// Azure's default time to live of a C2D message (`cloudToDevice.defaultTtlAsIso8601`).
pub const DEFAULT_TTL: Duration = Duration::hours(1);
/// Azure's longest time to live of a C2D message or a feedback record.
pub const MAX_TTL: Duration = Duration::days(2);
/// Azure's default `cloudToDevice.maxDeliveryCount`: abandoning a message this many times dead-letters it.
pub const AZURE_MAX_DELIVERY_COUNT: u32 = 10;
/// How long a message received over HTTPS stays locked (Azure: one minute, not configurable).
pub const AZURE_LOCK_DURATION: Duration = Duration::minutes(1);
/// Azure's default `cloudToDevice.feedback.ttlAsIso8601`: unread feedback is dropped after this.
pub const AZURE_FEEDBACK_TTL: Duration = Duration::hours(1);
/// Azure's default `cloudToDevice.feedback.maxDeliveryCount`.
pub const AZURE_FEEDBACK_MAX_DELIVERY_COUNT: u32 = 10;
/// Azure's default `cloudToDevice.feedback.lockDurationAsIso8601`.
pub const AZURE_FEEDBACK_LOCK_DURATION: Duration = Duration::seconds(60);
/// Azure batches at most this many records in one feedback message.
pub const FEEDBACK_BATCH_MAX: usize = 64;
/// Content type of a feedback batch.
pub const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";
/// Maximum length of a message id (and of the other string system properties).
pub const MAX_MESSAGE_ID_LENGTH: usize = 128;
/// Property-bag key of the acknowledgement a message asks for.
pub const ACK_PROPERTY: &str = "iothub-ack";

/// Characters Azure allows in a message id besides ASCII letters and digits.
const MESSAGE_ID_SPECIAL_CHARACTERS: &str = "-:.+%_#*?!(),=@;$'";
/// Characters Azure allows in C2D application property names and values besides ASCII letters and digits
/// (RFC 7230's `tchar`).
const PROPERTY_SPECIAL_CHARACTERS: &str = "!#$%&'*+-.^_`|~";

/// Which outcomes of a message produce a feedback record (`iothub-ack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeliveryAcknowledgement {
    /// No feedback (Azure's default).
    #[default]
    None,
    /// Feedback when the device completes the message.
    Positive,
    /// Feedback when the message is dead-lettered: expired, rejected, abandoned too often, or purged.
    Negative,
    /// Both.
    Full,
}

impl DeliveryAcknowledgement {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryAcknowledgement::None => "none",
            DeliveryAcknowledgement::Positive => "positive",
            DeliveryAcknowledgement::Negative => "negative",
            DeliveryAcknowledgement::Full => "full",
        }
    }

    /// Whether a message that ended with `status` produces a feedback record.
    pub fn wants_feedback(self, status: FeedbackStatusCode) -> bool {
        match self {
            DeliveryAcknowledgement::None => false,
            DeliveryAcknowledgement::Positive => status == FeedbackStatusCode::Success,
            DeliveryAcknowledgement::Negative => status != FeedbackStatusCode::Success,
            DeliveryAcknowledgement::Full => true,
        }
    }
}

impl fmt::Display for DeliveryAcknowledgement {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an acknowledgement: use none, positive, negative or full")]
pub struct InvalidAcknowledgement {
    pub value: String,
}

impl FromStr for DeliveryAcknowledgement {
    type Err = InvalidAcknowledgement;

    /// Case-insensitive: the C SDK's tests carry `iothub-ack=Full`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            DeliveryAcknowledgement::None,
            DeliveryAcknowledgement::Positive,
            DeliveryAcknowledgement::Negative,
            DeliveryAcknowledgement::Full,
        ]
        .into_iter()
        .find(|ack| ack.as_str().eq_ignore_ascii_case(text))
        .ok_or_else(|| InvalidAcknowledgement {
            value: text.to_owned(),
        })
    }
}

impl Serialize for DeliveryAcknowledgement {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeliveryAcknowledgement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a message ended, as a feedback record says (`statusCode`). Written as the name; read from the
/// name (any case) or from the C# SDK's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeedbackStatusCode {
    /// The device completed the message (MQTT: PUBACK).
    Success,
    /// The message expired before the device completed it.
    Expired,
    /// The device abandoned the message `maxDeliveryCount` times.
    DeliveryCountExceeded,
    /// The device rejected the message (HTTPS only).
    Rejected,
    /// The service purged the device's queue.
    Purged,
}

impl FeedbackStatusCode {
    const ALL: [FeedbackStatusCode; 5] = [
        FeedbackStatusCode::Success,
        FeedbackStatusCode::Expired,
        FeedbackStatusCode::DeliveryCountExceeded,
        FeedbackStatusCode::Rejected,
        FeedbackStatusCode::Purged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackStatusCode::Success => "Success",
            FeedbackStatusCode::Expired => "Expired",
            FeedbackStatusCode::DeliveryCountExceeded => "DeliveryCountExceeded",
            FeedbackStatusCode::Rejected => "Rejected",
            FeedbackStatusCode::Purged => "Purged",
        }
    }

    /// The C# SDK's enum value.
    pub fn number(self) -> u8 {
        match self {
            FeedbackStatusCode::Success => 0,
            FeedbackStatusCode::Expired => 1,
            FeedbackStatusCode::DeliveryCountExceeded => 2,
            FeedbackStatusCode::Rejected => 3,
            FeedbackStatusCode::Purged => 4,
        }
    }
}

impl fmt::Display for FeedbackStatusCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl Serialize for FeedbackStatusCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FeedbackStatusCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Number(u64),
        }
        let found = match Raw::deserialize(deserializer)? {
            Raw::Name(name) => Self::ALL
                .into_iter()
                .find(|status| status.as_str().eq_ignore_ascii_case(&name))
                .ok_or(name),
            Raw::Number(number) => Self::ALL
                .into_iter()
                .find(|status| u64::from(status.number()) == number)
                .ok_or_else(|| number.to_string()),
        };
        found.map_err(|value| {
            serde::de::Error::custom(format!("{value:?} is not a feedback status code"))
        })
    }
}

/// One record of a feedback batch, in Azure's JSON shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRecord {
    /// The message id of the C2D message this record is about.
    pub original_message_id: String,
    /// Text for `statusCode` (its name).
    pub description: String,
    pub device_generation_id: String,
    pub device_id: DeviceId,
    /// When the outcome happened (the completion, the expiry, ...).
    #[serde(with = "azure_time")]
    pub enqueued_time_utc: OffsetDateTime,
    pub status_code: FeedbackStatusCode,
}

impl FeedbackRecord {
    pub fn new(
        original_message_id: impl Into<String>,
        status_code: FeedbackStatusCode,
        device_id: DeviceId,
        device_generation_id: impl Into<String>,
        enqueued_time_utc: OffsetDateTime,
    ) -> Self {
        Self {
            original_message_id: original_message_id.into(),
            description: status_code.as_str().to_owned(),
            device_generation_id: device_generation_id.into(),
            device_id,
            enqueued_time_utc,
            status_code,
        }
    }
}

/// The body of `GET /messages/serviceBound/feedback` (200): a JSON array of records. Its lock token is
/// in the `ETag` header, quoted ([`LockToken::to_etag`]); 204 means no feedback.
pub type FeedbackBatch = Vec<FeedbackRecord>;

/// The lock on a message received over HTTPS or on a feedback batch: `ETag` of the receive, path segment
/// of complete (`DELETE .../{lockToken}`) and abandon (`POST .../{lockToken}/abandon`). The hub makes
/// them (UUIDs); what comes back is checked to be something the hub could have made.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockToken(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockTokenError {
    #[error("the lock token is empty")]
    Empty,
    #[error("the lock token is {length} characters long, the maximum is {MAX_MESSAGE_ID_LENGTH}")]
    TooLong { length: usize },
    #[error("the lock token contains {character:?}, which a lock token never does")]
    InvalidCharacter { character: char },
}

impl LockToken {
    pub fn new(text: impl Into<String>) -> Result<Self, LockTokenError> {
        let text = text.into();
        if text.is_empty() {
            return Err(LockTokenError::Empty);
        }
        if let Some(character) = text
            .chars()
            .find(|character| !(character.is_ascii_alphanumeric() || "-_.:".contains(*character)))
        {
            return Err(LockTokenError::InvalidCharacter { character });
        }
        if text.len() > MAX_MESSAGE_ID_LENGTH {
            return Err(LockTokenError::TooLong { length: text.len() });
        }
        Ok(Self(text))
    }

    /// Reads an `ETag` header: quoted as the hub sends it (clients strip the quotes, as Node's
    /// `http.toMessage` does) or bare.
    pub fn from_etag(header: &str) -> Result<Self, LockTokenError> {
        let trimmed = header.trim();
        let unquoted = trimmed
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or(trimmed);
        Self::new(unquoted)
    }

    /// The `ETag` header value: the token in double quotes.
    pub fn to_etag(&self) -> String {
        format!("\"{}\"", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl Serialize for LockToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LockToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// The system properties a sender sets on a C2D message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct C2dProperties {
    /// Feedback records name the message by it; the hub makes one when the sender gives none.
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default)]
    pub ack: DeliveryAcknowledgement,
    /// The expiry the sender asked for (absolute, or from a TTL); `None` when the hub's default TTL
    /// applies, and then the device is not told (`$.exp` is absent).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub expiry_time_utc: Option<OffsetDateTime>,
}

/// A C2D message as its device's queue holds it: system properties, application properties and payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct C2dMessage {
    pub properties: C2dProperties,
    /// Application properties; `None` is a property without a value (a bare key on the wire).
    #[serde(default)]
    pub application_properties: BTreeMap<String, Option<String>>,
    /// Kept outside this JSON by stores (as bytes); carried here for convenience.
    #[serde(skip)]
    pub body: Vec<u8>,
}

impl C2dMessage {
    /// Size as Azure counts it: the body, the values of the system properties, and the names and values of
    /// the application properties.
    pub fn size(&self) -> usize {
        let properties = &self.properties;
        let system: usize = [
            Some(properties.message_id.as_str()),
            properties.correlation_id.as_deref(),
            properties.user_id.as_deref(),
            properties.content_type.as_deref(),
            properties.content_encoding.as_deref(),
        ]
        .into_iter()
        .flatten()
        .map(str::len)
        .sum();
        let application: usize = self
            .application_properties
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, String::len))
            .sum();
        self.body.len() + system + application
    }

    /// `$.to`: the message's destination as Azure sets it.
    pub fn destination(device_id: &DeviceId) -> String {
        format!("/devices/{device_id}/messages/devicebound")
    }

    /// The property bag of the devicebound topic: `$.mid`, `$.to`, `$.cid`, `$.uid`, `$.ct`, `$.ce`, `$.exp`
    /// (only when the sender set an expiry), `iothub-ack` (always, as Azure sends it), then the application
    /// properties. Every device SDK reads these keys (PROTOCOL.md §2.5).
    pub fn devicebound_properties(&self, device_id: &DeviceId) -> PropertyBag {
        let properties = &self.properties;
        let mut bag = PropertyBag::new()
            .with(system_property::MESSAGE_ID, &properties.message_id)
            .with(system_property::TO, Self::destination(device_id));
        let optional = [
            (
                system_property::CORRELATION_ID,
                properties.correlation_id.clone(),
            ),
            (system_property::USER_ID, properties.user_id.clone()),
            (
                system_property::CONTENT_TYPE,
                properties.content_type.clone(),
            ),
            (
                system_property::CONTENT_ENCODING,
                properties.content_encoding.clone(),
            ),
            (
                system_property::EXPIRY_TIME_UTC,
                properties.expiry_time_utc.map(format_time),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                bag.insert(key, value);
            }
        }
        bag.insert(ACK_PROPERTY, properties.ack.as_str());
        for (name, value) in &self.application_properties {
            match value {
                Some(value) => bag.insert(name.as_str(), value.as_str()),
                None => bag.insert_without_value(name.as_str()),
            }
        }
        bag
    }

    /// `devices/{id}/messages/devicebound/{bag}`: the topic the hub publishes the message on (QoS 1).
    pub fn devicebound_topic(&self, device_id: &DeviceId) -> String {
        cloud_to_device_topic(device_id, &self.devicebound_properties(device_id))
    }
}

/// Body of `POST /devices/{id}/messages/deviceBound`: one C2D message for the device's queue.
///
/// ```json
/// {"body": "{\"led\":\"on\"}", "messageId": "m-1", "contentType": "application/json",
///  "contentEncoding": "utf-8", "ack": "full", "ttlSeconds": 600, "properties": {"priority": "high", "flag": null}}
/// ```
/// Every field is optional. The payload is `body` (UTF-8 text) or `bodyBase64` (bytes), never both; none
/// is an empty payload. The expiry is `expiryTimeUtc` (absolute) or `ttlSeconds` (from now), never both;
/// neither means the hub's default TTL. Unknown fields are refused, so a misspelt one is not ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendC2dRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<DeliveryAcknowledgement>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub expiry_time_utc: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, Option<String>>,
}

/// Why a send request is refused. Suggested Azure codes: `TooLarge` → 413001 `MessageTooLarge`, the
/// expiry variants → 403009 `InvalidMessageExpiryTime`, the rest → 400004 `ArgumentInvalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2dRequestError {
    #[error("give the payload as body (text) or as bodyBase64, not both")]
    BodyTwice,
    #[error("bodyBase64 is not valid base64: {reason}")]
    InvalidBase64 { reason: String },
    #[error(
        "the message is {size} bytes (payload and properties), the limit for a cloud-to-device message is {MAX_C2D_MESSAGE_BYTES}"
    )]
    TooLarge { size: usize },
    #[error("{field} {reason}")]
    InvalidSystemProperty { field: &'static str, reason: String },
    #[error("application property name {name:?} {reason}")]
    InvalidPropertyName { name: String, reason: String },
    #[error("the value of application property {name:?} {reason}")]
    InvalidPropertyValue { name: String, reason: String },
    #[error("give the expiry as expiryTimeUtc or as ttlSeconds, not both")]
    ExpiryTwice,
    #[error("the expiry time {expiry} is not in the future")]
    ExpiryNotInFuture { expiry: String },
    #[error("the expiry time {expiry} is more than 2 days ahead, the longest a message may live")]
    ExpiryTooFar { expiry: String },
}

/// A validated send: the message for the queue and when it expires (the sender's expiry, or `now` plus the
/// hub's default TTL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedC2dMessage {
    pub message: C2dMessage,
    pub expires: OffsetDateTime,
}

impl SendC2dRequest {
    /// A request carrying `payload`: as `body` when it is UTF-8 text, as `bodyBase64` otherwise.
    pub fn with_payload(payload: Vec<u8>) -> Self {
        match String::from_utf8(payload) {
            Ok(text) => Self {
                body: Some(text),
                ..Self::default()
            },
            Err(error) => Self {
                body_base64: Some(
                    base64::engine::general_purpose::STANDARD.encode(error.into_bytes()),
                ),
                ..Self::default()
            },
        }
    }

    /// Checks the request against Azure's rules and builds the message. `generated_message_id` is used
    /// when the request has no `messageId` (the hub passes a fresh UUID, as the SDKs do); `default_ttl` is
    /// the hub's (Azure: [`DEFAULT_TTL`]).
    pub fn validate(
        self,
        now: OffsetDateTime,
        default_ttl: Duration,
        generated_message_id: String,
    ) -> Result<ValidatedC2dMessage, C2dRequestError> {
        let body = match (self.body, self.body_base64) {
            (Some(_), Some(_)) => return Err(C2dRequestError::BodyTwice),
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|error| C2dRequestError::InvalidBase64 {
                    reason: error.to_string(),
                })?,
            (None, None) => Vec::new(),
        };
        let message_id = self.message_id.unwrap_or(generated_message_id);
        validate_message_id("messageId", &message_id)?;
        if let Some(correlation_id) = &self.correlation_id {
            validate_message_id("correlationId", correlation_id)?;
        }
        for (field, value) in [
            ("userId", &self.user_id),
            ("contentType", &self.content_type),
            ("contentEncoding", &self.content_encoding),
        ] {
            if let Some(value) = value {
                validate_printable(field, value)?;
            }
        }
        for (name, value) in &self.properties {
            validate_property_name(name)?;
            if let Some(value) = value {
                validate_property_value(name, value)?;
            }
        }
        let expiry_time_utc = match (self.expiry_time_utc, self.ttl_seconds) {
            (Some(_), Some(_)) => return Err(C2dRequestError::ExpiryTwice),
            (Some(expiry), None) => Some(expiry),
            (None, Some(seconds)) => Some(
                i64::try_from(seconds)
                    .ok()
                    .and_then(|seconds| now.checked_add(Duration::seconds(seconds)))
                    .ok_or_else(|| C2dRequestError::ExpiryTooFar {
                        expiry: format!("{seconds} seconds from now"),
                    })?,
            ),
            (None, None) => None,
        };
        let expires = expiry_time_utc.unwrap_or(now + default_ttl);
        if expires <= now {
            return Err(C2dRequestError::ExpiryNotInFuture {
                expiry: format_time(expires),
            });
        }
        if expires > now + MAX_TTL {
            return Err(C2dRequestError::ExpiryTooFar {
                expiry: format_time(expires),
            });
        }
        let message = C2dMessage {
            properties: C2dProperties {
                message_id,
                correlation_id: self.correlation_id,
                user_id: self.user_id,
                content_type: self.content_type,
                content_encoding: self.content_encoding,
                ack: self.ack.unwrap_or_default(),
                expiry_time_utc,
            },
            application_properties: self.properties,
            body,
        };
        let size = message.size();
        if size > MAX_C2D_MESSAGE_BYTES {
            return Err(C2dRequestError::TooLarge { size });
        }
        Ok(ValidatedC2dMessage { message, expires })
    }
}

/// Azure's message id rule: 1 to 128 ASCII letters, digits and `- : . + % _ # * ? ! ( ) , = @ ; $ '`.
fn validate_message_id(field: &'static str, value: &str) -> Result<(), C2dRequestError> {
    let invalid = |reason: String| C2dRequestError::InvalidSystemProperty { field, reason };
    if value.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if value.len() > MAX_MESSAGE_ID_LENGTH {
        return Err(invalid(format!(
            "is {} characters long, the maximum is {MAX_MESSAGE_ID_LENGTH}",
            value.chars().count()
        )));
    }
    if let Some(character) = value.chars().find(|character| {
        !(character.is_ascii_alphanumeric() || MESSAGE_ID_SPECIAL_CHARACTERS.contains(*character))
    }) {
        return Err(invalid(format!(
            "contains {character:?}; allowed are ASCII letters, digits and {MESSAGE_ID_SPECIAL_CHARACTERS}"
        )));
    }
    Ok(())
}

/// Free-text system properties: 1 to 128 printable ASCII characters.
fn validate_printable(field: &'static str, value: &str) -> Result<(), C2dRequestError> {
    let invalid = |reason: String| C2dRequestError::InvalidSystemProperty { field, reason };
    if value.is_empty() {
        return Err(invalid("is empty; leave it out instead".into()));
    }
    if let Some(character) = value
        .chars()
        .find(|character| !(' '..='~').contains(character))
    {
        return Err(invalid(format!(
            "contains {character:?}; only printable ASCII is allowed"
        )));
    }
    if value.len() > MAX_MESSAGE_ID_LENGTH {
        return Err(invalid(format!(
            "is {} characters long, the maximum is {MAX_MESSAGE_ID_LENGTH}",
            value.len()
        )));
    }
    Ok(())
}

fn property_character_allowed(character: char) -> bool {
    character.is_ascii_alphanumeric() || PROPERTY_SPECIAL_CHARACTERS.contains(character)
}

/// Azure's rule for C2D application property names (ASCII letters, digits and ``!#$%&'*+-.^_`|~``), and
/// fleethub's: no `$` or `iothub-` prefix, which name system properties in the devicebound property bag.
fn validate_property_name(name: &str) -> Result<(), C2dRequestError> {
    let invalid = |reason: String| C2dRequestError::InvalidPropertyName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if let Some(character) = name
        .chars()
        .find(|character| !property_character_allowed(*character))
    {
        return Err(invalid(format!(
            "contains {character:?}; allowed are ASCII letters, digits and {PROPERTY_SPECIAL_CHARACTERS}"
        )));
    }
    let lowercase = name.to_ascii_lowercase();
    if name.starts_with('$') || lowercase.starts_with("iothub-") {
        return Err(invalid(
            "is reserved: names starting with $ or iothub- are system properties".into(),
        ));
    }
    Ok(())
}

/// Azure's rule for C2D application property values: ASCII letters, digits and ``!#$%&'*+-.^_`|~``.
fn validate_property_value(name: &str, value: &str) -> Result<(), C2dRequestError> {
    if let Some(character) = value
        .chars()
        .find(|character| !property_character_allowed(*character))
    {
        return Err(C2dRequestError::InvalidPropertyValue {
            name: name.to_owned(),
            reason: format!(
                "contains {character:?}; Azure allows ASCII letters, digits and {PROPERTY_SPECIAL_CHARACTERS} in cloud-to-device properties"
            ),
        });
    }
    Ok(())
}

/// Response of `POST /devices/{id}/messages/deviceBound` (200): what the queue holds now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendC2dResponse {
    pub message_id: String,
    /// Azure's `sequence-number`: the message's position, unique in its device's queue.
    pub sequence_number: u64,
    #[serde(with = "azure_time")]
    pub enqueued_time_utc: OffsetDateTime,
    /// When the message expires (the sender's expiry or the hub's default TTL).
    #[serde(with = "azure_time")]
    pub expiry_time_utc: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::{HubTopic, parse_hub_publish};
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

    fn device() -> DeviceId {
        "dev1".parse().expect("valid id")
    }

    fn request(value: serde_json::Value) -> Result<SendC2dRequest, serde_json::Error> {
        serde_json::from_value(value)
    }

    fn validate(value: serde_json::Value) -> Result<ValidatedC2dMessage, C2dRequestError> {
        request(value)
            .expect("request parses")
            .validate(NOW, DEFAULT_TTL, "generated-id".into())
    }

    #[test]
    fn a_full_request_becomes_a_message_with_its_expiry() {
        let validated = validate(json!({
            "body": "{\"led\":\"on\"}",
            "messageId": "m-1",
            "correlationId": "c-1",
            "userId": "ops",
            "contentType": "application/json",
            "contentEncoding": "utf-8",
            "ack": "Full",
            "ttlSeconds": 600,
            "properties": {"Priority": "high", "flag": null, "empty": ""}
        }))
        .expect("valid");
        let expiry = datetime!(2026-05-01 10:10 UTC);
        assert_eq!(validated.expires, expiry);
        assert_eq!(
            validated.message,
            C2dMessage {
                properties: C2dProperties {
                    message_id: "m-1".into(),
                    correlation_id: Some("c-1".into()),
                    user_id: Some("ops".into()),
                    content_type: Some("application/json".into()),
                    content_encoding: Some("utf-8".into()),
                    ack: DeliveryAcknowledgement::Full,
                    expiry_time_utc: Some(expiry),
                },
                application_properties: BTreeMap::from([
                    ("Priority".to_owned(), Some("high".to_owned())),
                    ("empty".to_owned(), Some(String::new())),
                    ("flag".to_owned(), None),
                ]),
                body: b"{\"led\":\"on\"}".to_vec(),
            }
        );
    }

    #[test]
    fn payloads_go_as_text_when_they_are_utf8_and_as_base64_otherwise() {
        let text = SendC2dRequest::with_payload(b"{\"led\":\"on\"}".to_vec());
        assert_eq!(text.body.as_deref(), Some("{\"led\":\"on\"}"));
        assert_eq!(text.body_base64, None);
        let binary = SendC2dRequest::with_payload(vec![0, 159, 146, 150]);
        assert_eq!(binary.body, None);
        assert_eq!(binary.body_base64.as_deref(), Some("AJ+Slg=="));
        let validated = binary
            .validate(NOW, DEFAULT_TTL, "g".into())
            .expect("valid");
        assert_eq!(validated.message.body, vec![0, 159, 146, 150]);
    }

    #[test]
    fn an_empty_request_gets_the_generated_id_and_the_default_ttl() {
        let validated = validate(json!({})).expect("valid");
        assert_eq!(validated.message.properties.message_id, "generated-id");
        assert_eq!(
            validated.message.properties.ack,
            DeliveryAcknowledgement::None
        );
        assert_eq!(validated.message.properties.expiry_time_utc, None);
        assert_eq!(validated.expires, NOW + DEFAULT_TTL);
        assert!(validated.message.body.is_empty());
    }

    #[test]
    fn binary_payloads_come_as_base64_and_count_toward_the_limit() {
        let validated = validate(json!({"bodyBase64": "AAH/"})).expect("valid");
        assert_eq!(validated.message.body, vec![0, 1, 255]);
        let at_limit = "a".repeat(MAX_C2D_MESSAGE_BYTES - "generated-id".len());
        assert!(validate(json!({ "body": at_limit })).is_ok());
        let over = "a".repeat(MAX_C2D_MESSAGE_BYTES - "generated-id".len() - 1);
        assert_eq!(
            validate(json!({"body": over, "properties": {"ab": null}})),
            Err(C2dRequestError::TooLarge {
                size: MAX_C2D_MESSAGE_BYTES + 1
            })
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_the_field_named() {
        let far = format_time(NOW + MAX_TTL + Duration::seconds(1));
        let past = format_time(NOW - Duration::seconds(1));
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"body": "a", "bodyBase64": "YQ=="}), "not both"),
            (json!({"bodyBase64": "***"}), "not valid base64"),
            (json!({"messageId": ""}), "messageId is empty"),
            (json!({"messageId": "a b"}), "messageId contains ' '"),
            (
                json!({"messageId": "x".repeat(129)}),
                "messageId is 129 characters long",
            ),
            (
                json!({"correlationId": "c/1"}),
                "correlationId contains '/'",
            ),
            (json!({"contentType": "t\u{7}"}), "contentType contains"),
            (json!({"userId": ""}), "userId is empty"),
            (
                json!({"properties": {"": "x"}}),
                "application property name \"\" is empty",
            ),
            (json!({"properties": {"a/b": "x"}}), "contains '/'"),
            (json!({"properties": {"$.mid": "x"}}), "is reserved"),
            (json!({"properties": {"IoTHub-Ack": "full"}}), "is reserved"),
            (
                json!({"properties": {"k": "high temp"}}),
                "the value of application property \"k\" contains ' '",
            ),
            (
                json!({"expiryTimeUtc": far.clone(), "ttlSeconds": 5}),
                "not both",
            ),
            (json!({ "expiryTimeUtc": past }), "is not in the future"),
            (json!({"ttlSeconds": 0}), "is not in the future"),
            (json!({ "expiryTimeUtc": far }), "more than 2 days ahead"),
            (json!({"ttlSeconds": u64::MAX}), "more than 2 days ahead"),
        ];
        for (input, expected) in cases {
            let error = validate(input.clone()).expect_err("refused");
            assert!(
                error.to_string().contains(expected),
                "{input}: {error} does not say {expected:?}"
            );
        }
    }

    #[test]
    fn malformed_json_is_refused_when_parsed() {
        let cases = [
            json!({"ack": "sometimes"}),
            json!({"ack": 1}),
            json!({"propeties": {}}),
            json!({"ttlSeconds": -1}),
            json!({"expiryTimeUtc": "tomorrow"}),
            json!({"properties": {"k": 1}}),
            json!({"body": ["a"]}),
            json!("just a string"),
        ];
        for input in cases {
            assert!(request(input.clone()).is_err(), "{input} parsed");
        }
    }

    #[test]
    fn devicebound_topic_carries_what_the_python_sdk_reads() {
        let message = C2dMessage {
            properties: C2dProperties {
                message_id: "msg-1".into(),
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                ..C2dProperties::default()
            },
            application_properties: BTreeMap::from([("prop1".to_owned(), Some("val1".to_owned()))]),
            body: b"{}".to_vec(),
        };
        // Same order as the capture in PROTOCOL.md §2.5, plus the `iothub-ack` Azure always sends.
        assert_eq!(
            message.devicebound_topic(&device()),
            "devices/dev1/messages/devicebound/%24.mid=msg-1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2Fdevicebound&%24.ct=application%2Fjson&%24.ce=utf-8&iothub-ack=none&prop1=val1"
        );
    }

    #[test]
    fn devicebound_properties_round_trip_through_the_device_side_parser() {
        let expiry = datetime!(2026-05-01 11:00 UTC);
        let message = C2dMessage {
            properties: C2dProperties {
                message_id: "m:1+2".into(),
                correlation_id: Some("c=1".into()),
                user_id: Some("ops team".into()),
                content_type: Some("text/plain; charset=utf-8".into()),
                content_encoding: Some("utf-8".into()),
                ack: DeliveryAcknowledgement::Negative,
                expiry_time_utc: Some(expiry),
            },
            application_properties: BTreeMap::from([
                ("a&b".to_owned(), Some("x=y%z".to_owned())),
                ("bare".to_owned(), None),
                ("empty".to_owned(), Some(String::new())),
            ]),
            body: Vec::new(),
        };
        let topic = message.devicebound_topic(&device());
        let HubTopic::CloudToDevice { properties } = parse_hub_publish(&topic).expect("parses")
        else {
            panic!("{topic} is not a C2D topic");
        };
        assert_eq!(properties.message_id(), Some("m:1+2"));
        assert_eq!(properties.to(), Some("/devices/dev1/messages/devicebound"));
        assert_eq!(properties.correlation_id(), Some("c=1"));
        assert_eq!(properties.user_id(), Some("ops team"));
        assert_eq!(properties.content_type(), Some("text/plain; charset=utf-8"));
        assert_eq!(properties.content_encoding(), Some("utf-8"));
        assert_eq!(
            properties.expiry_time_utc(),
            Some("2026-05-01T11:00:00.0000000Z")
        );
        assert_eq!(properties.get(ACK_PROPERTY), Some("negative"));
        assert_eq!(
            properties.custom_properties().collect::<Vec<_>>(),
            // Application properties and `iothub-ack` are sorted together, as the Python SDK sorts.
            vec![
                ("a&b", Some("x=y%z")),
                ("bare", None),
                ("empty", Some("")),
                ("iothub-ack", Some("negative")),
            ]
        );
        // The Python SDK splits the topic on '/' and the bag on '&' and '=' without decoding first.
        let bag = topic.rsplit('/').next().expect("bag segment");
        assert_eq!(topic.split('/').count(), 5);
        for entry in bag.split('&') {
            assert!(entry.matches('=').count() <= 1, "{entry}");
        }
    }

    #[test]
    fn no_expiry_means_no_exp_on_the_wire() {
        let message = C2dMessage::default();
        let bag = message.devicebound_properties(&device());
        assert!(!bag.contains_key(system_property::EXPIRY_TIME_UTC));
        assert_eq!(bag.get(ACK_PROPERTY), Some("none"));
    }

    #[test]
    fn acknowledgements_choose_feedback() {
        use DeliveryAcknowledgement as Ack;
        use FeedbackStatusCode as Status;
        for status in FeedbackStatusCode::ALL {
            assert!(!Ack::None.wants_feedback(status));
            assert!(Ack::Full.wants_feedback(status));
            assert_eq!(
                Ack::Positive.wants_feedback(status),
                status == Status::Success
            );
            assert_eq!(
                Ack::Negative.wants_feedback(status),
                status != Status::Success
            );
        }
        assert_eq!("FULL".parse::<Ack>(), Ok(Ack::Full));
        assert!("".parse::<Ack>().is_err());
        assert!("fulll".parse::<Ack>().is_err());
    }

    #[test]
    fn feedback_records_are_azures_shape() {
        let record = FeedbackRecord::new(
            "0987654321",
            FeedbackStatusCode::Success,
            "123".parse().expect("valid id"),
            "abcdefghijklmnopqrstuvwxyz",
            datetime!(2015-07-28 16:24:48.789 UTC),
        );
        assert_eq!(
            serde_json::to_value(&record).expect("serialises"),
            json!({
                "originalMessageId": "0987654321",
                "enqueuedTimeUtc": "2015-07-28T16:24:48.7890000Z",
                "statusCode": "Success",
                "description": "Success",
                "deviceId": "123",
                "deviceGenerationId": "abcdefghijklmnopqrstuvwxyz"
            })
        );
        // Azure's documented sample, and the C# SDK's numeric form of the status.
        let batch: FeedbackBatch = serde_json::from_value(json!([
            {"originalMessageId": "0987654321", "enqueuedTimeUtc": "2015-07-28T16:24:48.789Z",
             "statusCode": "Success", "description": "Success", "deviceId": "123",
             "deviceGenerationId": "abcdefghijklmnopqrstuvwxyz"},
            {"originalMessageId": "1", "enqueuedTimeUtc": "2015-07-28T16:24:48Z", "statusCode": 2,
             "description": "DeliveryCountExceeded", "deviceId": "123", "deviceGenerationId": "g"}
        ]))
        .expect("parses");
        assert_eq!(batch[0], record);
        assert_eq!(
            batch[1].status_code,
            FeedbackStatusCode::DeliveryCountExceeded
        );
    }

    #[test]
    fn malformed_feedback_is_refused() {
        let good = json!({"originalMessageId": "1", "enqueuedTimeUtc": "2015-07-28T16:24:48Z",
            "statusCode": "Expired", "description": "Expired", "deviceId": "d", "deviceGenerationId": "g"});
        assert!(serde_json::from_value::<FeedbackRecord>(good.clone()).is_ok());
        let mutations: Vec<(&str, serde_json::Value)> = vec![
            ("statusCode", json!("Lost")),
            ("statusCode", json!(5)),
            ("statusCode", json!(null)),
            ("enqueuedTimeUtc", json!("yesterday")),
            ("deviceId", json!("a b")),
            ("originalMessageId", json!(7)),
        ];
        for (field, value) in mutations {
            let mut record = good.clone();
            record[field] = value.clone();
            assert!(
                serde_json::from_value::<FeedbackRecord>(record).is_err(),
                "{field} = {value} parsed"
            );
        }
        assert!(serde_json::from_value::<FeedbackBatch>(good).is_err());
    }

    #[test]
    fn lock_tokens_round_trip_through_etags_and_refuse_junk() {
        let token = LockToken::new("0a1b2c3d-4e5f-6789-abcd-ef0123456789").expect("valid");
        assert_eq!(token.to_etag(), "\"0a1b2c3d-4e5f-6789-abcd-ef0123456789\"");
        assert_eq!(LockToken::from_etag(&token.to_etag()), Ok(token.clone()));
        assert_eq!(LockToken::from_etag(token.as_str()), Ok(token));
        assert_eq!(LockToken::new(""), Err(LockTokenError::Empty));
        assert_eq!(LockToken::from_etag("\"\""), Err(LockTokenError::Empty));
        assert_eq!(
            LockToken::new("a/b"),
            Err(LockTokenError::InvalidCharacter { character: '/' })
        );
        assert_eq!(
            LockToken::from_etag("\"abc"),
            Err(LockTokenError::InvalidCharacter { character: '"' })
        );
        assert_eq!(
            LockToken::new("a".repeat(129)),
            Err(LockTokenError::TooLong { length: 129 })
        );
    }

    #[test]
    fn send_responses_and_requests_serialise_in_camel_case() {
        let response = SendC2dResponse {
            message_id: "m".into(),
            sequence_number: 7,
            enqueued_time_utc: NOW,
            expiry_time_utc: NOW + DEFAULT_TTL,
        };
        assert_eq!(
            serde_json::to_value(&response).expect("serialises"),
            json!({"messageId": "m", "sequenceNumber": 7,
                   "enqueuedTimeUtc": "2026-05-01T10:00:00.0000000Z",
                   "expiryTimeUtc": "2026-05-01T11:00:00.0000000Z"})
        );
        let request = SendC2dRequest {
            body: Some("hi".into()),
            ack: Some(DeliveryAcknowledgement::Positive),
            ..SendC2dRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&request).expect("serialises"),
            json!({"body": "hi", "ack": "positive"})
        );
    }

    proptest::proptest! {
        #[test]
        fn validating_arbitrary_requests_never_panics(
            body in proptest::option::of("\\PC{0,20}"),
            message_id in proptest::option::of("\\PC{0,20}"),
            name in "\\PC{0,10}",
            value in proptest::option::of("\\PC{0,10}"),
            ttl in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let request = SendC2dRequest {
                body,
                message_id,
                ttl_seconds: ttl,
                properties: BTreeMap::from([(name, value)]),
                ..SendC2dRequest::default()
            };
            if let Ok(validated) = request.validate(NOW, DEFAULT_TTL, "g".into()) {
                // Whatever is accepted encodes into a topic the device side parses back.
                let topic = validated.message.devicebound_topic(&device());
                proptest::prop_assert!(parse_hub_publish(&topic).is_ok());
            }
        }
    }
}
