//! Cloud-to-device messages: [`CloudToDeviceMessage`] (a body and the property bag of
//! `devices/{id}/messages/devicebound/{bag}`, PROTOCOL.md §2.5), and the [`CloudToDeviceStream`] that hands
//! them to the application.
//!
//! Acknowledgement: the hub publishes at QoS 1 and removes a message from the device's queue at its PUBACK,
//! so the PUBACK is the device saying "done". The client sends it when the application asks for the next
//! message (or drops the stream), that is once the application has had the message, not when the bytes
//! arrived. A message the application never took, or took on a connection that has since been lost, is
//! not acknowledged and the hub delivers it again on the next connection: delivery is at least once, and a
//! message can arrive twice (tell duplicates by their message id).
//!
//! Backpressure: the connection task never waits for the application. Messages wait in a bounded channel of
//! [`C2D_QUEUE`] (more than a hub keeps unacknowledged per connection: fleethub's window is 16, Azure's whole
//! queue 50); one that finds it full is left unacknowledged, for the hub to deliver again.

use bytes::Bytes;
use fleethub_mqtt::PacketId;
use fleethub_protocol::c2d::ACK_PROPERTY;
use fleethub_protocol::property_bag::PropertyBag;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::client::DeviceClient;

/// Messages buffered between the connection task and the application.
pub(crate) const C2D_QUEUE: usize = 64;

/// A cloud-to-device message as the device received it: the body and every property the hub sent.
///
/// System properties have accessors ([`message_id`](Self::message_id), [`content_type`](Self::content_type),
/// ...); the sender's application properties are [`application_properties`](Self::application_properties) (a
/// property sent without a value is `None`); [`properties`](Self::properties) is the whole bag as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudToDeviceMessage {
    body: Bytes,
    properties: PropertyBag,
}

impl CloudToDeviceMessage {
    pub(crate) fn new(body: Bytes, properties: PropertyBag) -> Self {
        Self { body, properties }
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body as UTF-8 text, if it is.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// Every property of the devicebound topic, system ones (`$.mid`, ...) included.
    pub fn properties(&self) -> &PropertyBag {
        &self.properties
    }

    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id()
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.properties.correlation_id()
    }

    pub fn user_id(&self) -> Option<&str> {
        self.properties.user_id()
    }

    pub fn content_type(&self) -> Option<&str> {
        self.properties.content_type()
    }

    pub fn content_encoding(&self) -> Option<&str> {
        self.properties.content_encoding()
    }

    /// The expiry the sender set (`$.exp`, ISO 8601 text); absent when the hub's default applies.
    pub fn expiry_time_utc(&self) -> Option<&str> {
        self.properties.expiry_time_utc()
    }

    /// `$.to`: `/devices/{id}/messages/devicebound`.
    pub fn to(&self) -> Option<&str> {
        self.properties.to()
    }

    /// The feedback the sender asked for (`iothub-ack`: `none`, `positive`, `negative` or `full`).
    pub fn ack(&self) -> Option<&str> {
        self.properties.get(ACK_PROPERTY)
    }

    /// The sender's application properties, in the order received (a fleethub hub sorts them by name):
    /// neither `$.` system properties nor the hub's `iothub-` ones.
    pub fn application_properties(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.properties.custom_properties().filter(|(name, _)| {
            !name.starts_with("$.") && !name.to_ascii_lowercase().starts_with("iothub-")
        })
    }

    /// One application property's value; `None` when it is absent or was sent without a value.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.application_properties()
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value)
    }
}

/// Which connection a QoS 1 delivery came on, and its packet id: the PUBACK to send once the application has
/// the message. A PUBACK is only meaningful on the connection the publish came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingAck {
    pub connection: u64,
    pub packet_id: PacketId,
}

/// A message on its way to the application.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub message: CloudToDeviceMessage,
    /// `None` for a QoS 0 delivery.
    pub ack: Option<PendingAck>,
}

/// The connection task's end of a [`CloudToDeviceStream`].
#[derive(Debug)]
pub(crate) struct C2dSink {
    sender: mpsc::Sender<Delivered>,
}

impl C2dSink {
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Hands a message over without waiting; gives it back when the application is behind or gone.
    pub fn deliver(&self, delivered: Delivered) -> Result<(), Delivered> {
        self.sender
            .try_send(delivered)
            .map_err(|error| match error {
                TrySendError::Full(delivered) | TrySendError::Closed(delivered) => delivered,
            })
    }
}

/// Cloud-to-device messages in the order the hub sent them, from
/// [`DeviceClient::cloud_to_device_messages`].
///
/// Each message is acknowledged to the hub when the application asks for the next one (or drops the stream),
/// so a message the program crashed on comes again; across a lost connection, the messages not yet
/// acknowledged are delivered again, possibly after their first copy was yielded (see the module docs:
/// at least once). The subscription survives reconnections; the stream ends (`None`) when the client
/// closes for good. It keeps the connection open while it lives, like a [`DeviceClient`] clone.
pub struct CloudToDeviceStream {
    receiver: mpsc::Receiver<Delivered>,
    client: DeviceClient,
    /// The acknowledgement of the message yielded last, sent when the next one is asked for.
    unacknowledged: Option<PendingAck>,
}

impl std::fmt::Debug for CloudToDeviceStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CloudToDeviceStream")
            .finish_non_exhaustive()
    }
}

impl CloudToDeviceStream {
    /// Acknowledges the message yielded before (the application is done with it), then waits for the next
    /// one; `None` once the client has stopped. Cancellation-safe: a call dropped while waiting loses nothing.
    pub async fn next(&mut self) -> Option<CloudToDeviceMessage> {
        if let Some(ack) = self.unacknowledged {
            self.client.acknowledge_cloud_to_device(ack).await;
            self.unacknowledged = None;
        }
        let delivered = self.receiver.recv().await?;
        self.unacknowledged = delivered.ack;
        Some(delivered.message)
    }
}

impl Drop for CloudToDeviceStream {
    fn drop(&mut self) {
        if let Some(ack) = self.unacknowledged.take() {
            self.client.try_acknowledge_cloud_to_device(ack);
        }
    }
}

/// A connected pair: the sink goes to the connection task, the stream to the application.
pub(crate) fn c2d_channel(client: DeviceClient) -> (C2dSink, CloudToDeviceStream) {
    let (sender, receiver) = mpsc::channel(C2D_QUEUE);
    (
        C2dSink { sender },
        CloudToDeviceStream {
            receiver,
            client,
            unacknowledged: None,
        },
    )
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn sink(sender: mpsc::Sender<Delivered>) -> C2dSink {
        C2dSink { sender }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_split_into_system_and_application_ones() {
        let bag = PropertyBag::decode(
            "%24.mid=msg-1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2Fdevicebound&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00.0000000Z&%24.cid=c-1&%24.uid=ops&iothub-ack=full&bare&prop1=val%201",
        )
        .expect("a valid bag");
        let message = CloudToDeviceMessage::new(Bytes::from_static(b"{}"), bag);
        assert_eq!(message.message_id(), Some("msg-1"));
        assert_eq!(message.to(), Some("/devices/dev1/messages/devicebound"));
        assert_eq!(message.content_type(), Some("application/json"));
        assert_eq!(message.content_encoding(), Some("utf-8"));
        assert_eq!(message.correlation_id(), Some("c-1"));
        assert_eq!(message.user_id(), Some("ops"));
        assert_eq!(
            message.expiry_time_utc(),
            Some("2030-01-01T00:00:00.0000000Z")
        );
        assert_eq!(message.ack(), Some("full"));
        assert_eq!(
            message.application_properties().collect::<Vec<_>>(),
            vec![("bare", None), ("prop1", Some("val 1"))]
        );
        assert_eq!(message.property("prop1"), Some("val 1"));
        assert_eq!(message.property("bare"), None);
        assert_eq!(message.property("iothub-ack"), None);
        assert_eq!(message.body_text(), Some("{}"));
    }
}
