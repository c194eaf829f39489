//! The MQTT 3.1.1 control packets as plain values, shared by the decoder and the encoder.

use std::fmt;
use std::num::NonZeroU16;

use bytes::Bytes;

/// Quality of service of a publish, a will or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this wire value, or `None` for 3 and above.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier. MQTT forbids 0, so the type does too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// `None` for 0, which is not a valid packet identifier.
    pub fn new(value: u16) -> Option<Self> {
        NonZeroU16::new(value).map(Self)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<PacketId> for u16 {
    fn from(id: PacketId) -> Self {
        id.get()
    }
}

/// One MQTT 3.1.1 control packet, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PacketId),
    PubRec(PacketId),
    PubRel(PacketId),
    PubComp(PacketId),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(PacketId),
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// The packet's name as the specification spells it, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck(_) => "PUBACK",
            Self::PubRec(_) => "PUBREC",
            Self::PubRel(_) => "PUBREL",
            Self::PubComp(_) => "PUBCOMP",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::SubAck(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::UnsubAck(_) => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

/// CONNECT. `decode` only ever yields `protocol_level == 4`; other levels are reported as
/// [`DecodeError::UnsupportedProtocolLevel`](crate::DecodeError::UnsupportedProtocolLevel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 4 for MQTT 3.1.1. `encode` writes any level so that tests and load tools can send what
    /// other clients send: level 3 goes out with the MQTT 3.1 protocol name `MQIsdp`, every
    /// other level with `MQTT`, always in the 3.1.1 layout.
    pub protocol_level: u8,
    pub clean_session: bool,
    /// Seconds; 0 turns the keep-alive mechanism off.
    pub keep_alive: u16,
    /// May be empty; whether that is acceptable is the server's decision, not the codec's.
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    /// Binary data: MQTT 3.1.1 does not require a password to be UTF-8.
    pub password: Option<Bytes>,
}

/// The message a server publishes on the client's behalf when the connection is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Must be false unless `code` is `Accepted` (MQTT-3.2.2-4).
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

/// The CONNACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The return code with this wire value, or `None` for the reserved values 6 to 255.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Accepted),
            1 => Some(Self::UnacceptableProtocolVersion),
            2 => Some(Self::IdentifierRejected),
            3 => Some(Self::ServerUnavailable),
            4 => Some(Self::BadUserNameOrPassword),
            5 => Some(Self::NotAuthorized),
            _ => None,
        }
    }
}

/// PUBLISH. `packet_id` is present exactly when `qos` is above `AtMostOnce`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Only allowed with QoS 1 and 2 (MQTT-3.3.1-2).
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
}

/// SUBSCRIBE: at least one topic filter with its requested QoS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub filters: Vec<(String, QoS)>,
}

/// SUBACK: one return code per filter of the SUBSCRIBE it answers, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub return_codes: Vec<SubscribeReturnCode>,
}

/// The outcome of one subscription in a SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    /// The subscription was accepted with this maximum QoS.
    Success(QoS),
    /// Wire value 0x80.
    Failure,
}

impl SubscribeReturnCode {
    pub(crate) const FAILURE: u8 = 0x80;

    /// The return code with this wire value, or `None` for values other than 0, 1, 2 and 0x80.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            Self::FAILURE => Some(Self::Failure),
            _ => QoS::from_u8(value).map(Self::Success),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Success(qos) => qos as u8,
            Self::Failure => Self::FAILURE,
        }
    }
}

/// UNSUBSCRIBE: at least one topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub filters: Vec<String>,
}

/// The packet type numbers of the fixed header's upper four bits.
pub(crate) mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// Bits of the CONNECT flags byte (MQTT 3.1.1 §3.1.2.3).
pub(crate) mod connect_flag {
    pub const RESERVED: u8 = 0b0000_0001;
    pub const CLEAN_SESSION: u8 = 0b0000_0010;
    pub const WILL: u8 = 0b0000_0100;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_QOS: u8 = 0b0001_1000;
    pub const WILL_RETAIN: u8 = 0b0010_0000;
    pub const PASSWORD: u8 = 0b0100_0000;
    pub const USERNAME: u8 = 0b1000_0000;
}

/// Bits of the PUBLISH fixed-header flags (MQTT 3.1.1 §3.3.1).
pub(crate) mod publish_flag {
    pub const RETAIN: u8 = 0b0001;
    pub const QOS_SHIFT: u8 = 1;
    pub const QOS: u8 = 0b0110;
    pub const DUP: u8 = 0b1000;
}

/// Largest value the four-byte remaining-length field can carry.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Protocol names of MQTT 3.1.1 and of its predecessor 3.1.
pub(crate) const PROTOCOL_NAME_MQTT: &[u8] = b"MQTT";
pub(crate) const PROTOCOL_NAME_MQISDP: &[u8] = b"MQIsdp";
pub(crate) const PROTOCOL_LEVEL_3_1: u8 = 3;
pub(crate) const PROTOCOL_LEVEL_3_1_1: u8 = 4;
