//! Device-to-cloud messages: [`Message`], its system and application properties, and the topic it is
//! published on (`devices/{id}[/modules/{mid}]/messages/events/{property bag}`, PROTOCOL.md §2.4–2.5).

use bytes::Bytes;
use fleethub_protocol::events::{MAX_D2C_MESSAGE_BYTES, message_size};
use fleethub_protocol::ids::ClientId;
use fleethub_protocol::property_bag::{PropertyBag, system_property};
use fleethub_protocol::topics;
use tokio::sync::oneshot;

use crate::error::SendError;

/// QoS 1 messages of one client waiting for their PUBACK; more wait in `send_message`.
pub(crate) const MAX_MESSAGES_IN_FLIGHT: usize = 64;

pub(crate) type SendReply = oneshot::Sender<Result<(), SendError>>;

/// A telemetry message: a body and its properties. System properties (`message_id`, `content_type`, ...)
/// travel as the `$.`-keys of the topic's property bag and reach consumers under their Event Hubs names
/// (`message-id`, `content-type`, ...); application properties travel as they are.
///
/// ```
/// use fleethub_device::Message;
/// use serde_json::json;
///
/// let message = Message::json(&json!({"temperature": 21.5}))
///     .with_message_id("m-1")
///     .with_property("alert", "high temperature");
/// assert_eq!(message.properties().content_type(), Some("application/json"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    body: Bytes,
    properties: PropertyBag,
}

impl Message {
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            properties: PropertyBag::new(),
        }
    }

    /// A JSON body, with content type `application/json` and encoding `utf-8` (what IoT Hub's routing needs
    /// to query the body).
    pub fn json(value: &serde_json::Value) -> Self {
        Self::new(serde_json::to_vec(value).expect("a JSON value always serialises"))
            .with_content_type("application/json")
            .with_content_encoding("utf-8")
    }

    pub fn with_message_id(self, message_id: impl Into<String>) -> Self {
        self.with_system(system_property::MESSAGE_ID, message_id)
    }

    pub fn with_correlation_id(self, correlation_id: impl Into<String>) -> Self {
        self.with_system(system_property::CORRELATION_ID, correlation_id)
    }

    pub fn with_user_id(self, user_id: impl Into<String>) -> Self {
        self.with_system(system_property::USER_ID, user_id)
    }

    pub fn with_content_type(self, content_type: impl Into<String>) -> Self {
        self.with_system(system_property::CONTENT_TYPE, content_type)
    }

    pub fn with_content_encoding(self, content_encoding: impl Into<String>) -> Self {
        self.with_system(system_property::CONTENT_ENCODING, content_encoding)
    }

    /// Absolute expiry time, ISO 8601 text (passed as is, like the Python SDK's `expiry_time_utc`).
    pub fn with_expiry_time_utc(self, expiry: impl Into<String>) -> Self {
        self.with_system(system_property::EXPIRY_TIME_UTC, expiry)
    }

    /// A module's output (`$.on`); only module clients send it.
    pub fn with_output_name(self, output: impl Into<String>) -> Self {
        self.with_system(system_property::OUTPUT_NAME, output)
    }

    /// An application property (a key `$.`-prefixed would be read as a system property).
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key, value);
        self
    }

    fn with_system(mut self, key: &str, value: impl Into<String>) -> Self {
        self.properties.insert(key, value);
        self
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn properties(&self) -> &PropertyBag {
        &self.properties
    }

    /// The topic and payload to publish for `client`, or why it cannot go.
    pub(crate) fn into_publish(self, client: &ClientId) -> Result<(String, Bytes), SendError> {
        let bytes = message_size(&self.properties, self.body.len());
        if bytes > MAX_D2C_MESSAGE_BYTES {
            return Err(SendError::TooLarge {
                bytes,
                max: MAX_D2C_MESSAGE_BYTES,
            });
        }
        Ok((topics::telemetry_topic(client, &self.properties), self.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_land_in_the_topic_as_the_python_sdk_writes_them() {
        let client = ClientId::parse("dev1").unwrap();
        let message = Message::new("payload")
            .with_property("alert", "high temp")
            .with_content_encoding("utf-8")
            .with_content_type("application/json")
            .with_correlation_id("corr-1")
            .with_message_id("mid-1");
        let (topic, body) = message.into_publish(&client).unwrap();
        assert_eq!(
            topic,
            "devices/dev1/messages/events/%24.mid=mid-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.ce=utf-8&alert=high%20temp"
        );
        assert_eq!(body, Bytes::from("payload"));
        let module = ClientId::parse("dev1/mod1").unwrap();
        let (topic, _) = Message::new("x")
            .with_output_name("out1")
            .into_publish(&module)
            .unwrap();
        assert_eq!(
            topic,
            "devices/dev1/modules/mod1/messages/events/%24.on=out1"
        );
    }

    #[test]
    fn a_message_over_256_kb_is_refused_before_it_is_sent() {
        let client = ClientId::parse("dev1").unwrap();
        let fits = Message::new(vec![0u8; MAX_D2C_MESSAGE_BYTES]);
        assert!(fits.into_publish(&client).is_ok());
        let over = Message::new(vec![0u8; MAX_D2C_MESSAGE_BYTES]).with_property("k", "v");
        assert!(matches!(
            over.into_publish(&client),
            Err(SendError::TooLarge { bytes, .. }) if bytes == MAX_D2C_MESSAGE_BYTES + 2
        ));
    }
}
