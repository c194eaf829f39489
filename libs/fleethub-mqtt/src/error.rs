//! Why a packet could not be decoded or encoded, or a topic was refused: one variant per rule.

use thiserror::Error;

/// A topic name or topic filter breaks a rule of MQTT 3.1.1 §4.7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {0} bytes long, more than the 65535 that fit in a packet")]
    TooLong(usize),
    #[error("topic contains the null character U+0000")]
    NullCharacter,
    #[error("topic name contains a wildcard character")]
    WildcardInTopicName,
    #[error("multi-level wildcard is not the last level of the topic filter")]
    MultiLevelWildcardNotLast,
    #[error("wildcard shares a topic level with other characters")]
    WildcardNotAlone,
}

/// Input that is not a well-formed MQTT 3.1.1 packet. Every variant is a protocol violation after
/// which the connection should be closed; the only one a server answers first is
/// [`DecodeError::UnsupportedProtocolLevel`] (with CONNACK return code 1).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    #[error("reserved fixed-header flags {flags:#06b} set on packet type {packet_type}")]
    ReservedFlags { packet_type: u8, flags: u8 },
    #[error("remaining length is longer than 4 bytes")]
    MalformedRemainingLength,
    #[error("remaining length is not encoded in the fewest bytes")]
    NonMinimalRemainingLength,
    #[error("packet of {size} bytes is larger than the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("invalid protocol name")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    #[error("reserved connect flag is set")]
    ReservedConnectFlag,
    #[error("will qos or will retain set without the will flag")]
    InvalidWillFlags,
    #[error("password flag set without the username flag")]
    PasswordWithoutUsername,
    #[error("string is not valid utf-8")]
    InvalidUtf8,
    #[error("string contains the null character U+0000")]
    NullCharacter,
    #[error("invalid qos {0}")]
    InvalidQoS(u8),
    #[error("dup flag set on a qos 0 publish")]
    DupWithQoS0,
    #[error("packet identifier is 0")]
    ZeroPacketId,
    #[error("reserved bits set in subscription options {0:#010b}")]
    ReservedSubscriptionOptions(u8),
    #[error("subscribe carries no topic filter")]
    EmptySubscription,
    #[error("unsubscribe carries no topic filter")]
    EmptyUnsubscription,
    #[error("suback carries no return code")]
    EmptySubAck,
    #[error("invalid suback return code {0:#04x}")]
    InvalidSubscribeReturnCode(u8),
    #[error("reserved connack flags set {0:#010b}")]
    ReservedConnAckFlags(u8),
    #[error("invalid connack return code {0}")]
    InvalidConnectReturnCode(u8),
    #[error("connack sets session present with a non-zero return code")]
    SessionPresentOnRejection,
    #[error("invalid topic: {0}")]
    InvalidTopic(TopicError),
    #[error("a length inside the packet runs past its remaining length")]
    Truncated,
    #[error("bytes left over after the end of the packet's contents")]
    TrailingBytes,
}

/// A [`Packet`](crate::Packet) that cannot be put on the wire, or that [`decode`](crate::decode)
/// would refuse. Nothing is written to the buffer when encoding fails.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("string of {0} bytes is longer than 65535")]
    StringTooLong(usize),
    #[error("binary field of {0} bytes is longer than 65535")]
    BinaryTooLong(usize),
    #[error("string contains the null character U+0000")]
    NullCharacter,
    #[error("remaining length {0} is larger than the maximum of 268435455")]
    PacketTooLarge(usize),
    #[error("publish with qos above 0 has no packet identifier")]
    MissingPacketId,
    #[error("publish with qos 0 has a packet identifier")]
    UnexpectedPacketId,
    #[error("dup flag set on a qos 0 publish")]
    DupWithQoS0,
    #[error("password without username")]
    PasswordWithoutUsername,
    #[error("subscribe carries no topic filter")]
    EmptySubscription,
    #[error("unsubscribe carries no topic filter")]
    EmptyUnsubscription,
    #[error("suback carries no return code")]
    EmptySubAck,
    #[error("connack sets session present with a non-zero return code")]
    SessionPresentOnRejection,
    #[error("invalid topic: {0}")]
    InvalidTopic(TopicError),
}
