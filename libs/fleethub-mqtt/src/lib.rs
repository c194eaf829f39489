//! A strict MQTT 3.1.1 codec: bytes to packets and back, with no I/O, clock or runtime.
//!
//! This crate is the hub's security boundary, since every byte a device sends goes through
//! [`decode`], so it refuses everything the specification calls malformed, each rule with its own
//! [`DecodeError`] variant. [`encode`] refuses to write what [`decode`] would refuse, so a packet
//! that encodes also decodes back to itself. The device SDK and the load tools use the same code.
//!
//! ```
//! use bytes::BytesMut;
//! use fleethub_mqtt::{DEFAULT_MAX_PACKET_SIZE, Packet, decode, encode};
//!
//! let mut wire = BytesMut::new();
//! encode(&Packet::PingReq, &mut wire)?;
//! assert_eq!(&wire[..], [0xC0, 0x00]);
//! assert_eq!(decode(&mut wire, DEFAULT_MAX_PACKET_SIZE)?, Some(Packet::PingReq));
//! assert!(wire.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod decode;
mod encode;
mod error;
mod packet;
mod topic;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod wire_tests;

pub use crate::decode::{DEFAULT_MAX_PACKET_SIZE, decode};
pub use crate::encode::encode;
pub use crate::error::{DecodeError, EncodeError, TopicError};
pub use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, MAX_REMAINING_LENGTH, Packet, PacketId, Publish,
    QoS, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe,
};
pub use crate::topic::{topic_matches, validate_topic_filter, validate_topic_name};
