//! Encoding packets into bytes, refusing any packet that `decode` would not read back unchanged.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, MAX_REMAINING_LENGTH, PROTOCOL_LEVEL_3_1,
    PROTOCOL_NAME_MQISDP, PROTOCOL_NAME_MQTT, Packet, PacketId, Publish, QoS, SubAck, Subscribe,
    Unsubscribe, connect_flag, packet_type, publish_flag,
};
use crate::topic::{validate_topic_filter, validate_topic_name};

const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// Appends `packet` to `buf`.
///
/// Every packet this accepts decodes back to an equal packet (for CONNECT: when
/// `protocol_level` is 4), and the bytes are the only encoding [`decode`](crate::decode) accepts
/// for it. On error nothing is written.
pub fn encode(packet: &Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
    // Measuring first validates the whole packet before the first byte is written.
    let remaining_length = body_len(packet)?;
    if remaining_length > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(remaining_length));
    }
    buf.reserve(1 + remaining_length_len(remaining_length) + remaining_length);
    buf.put_u8(first_byte(packet));
    put_remaining_length(buf, remaining_length);
    let body_start = buf.len();
    put_body(packet, buf);
    debug_assert_eq!(
        buf.len() - body_start,
        remaining_length,
        "body_len and put_body disagree on {}",
        packet.name()
    );
    Ok(())
}

fn first_byte(packet: &Packet) -> u8 {
    let (kind, flags) = match packet {
        Packet::Connect(_) => (packet_type::CONNECT, 0),
        Packet::ConnAck(_) => (packet_type::CONNACK, 0),
        Packet::Publish(publish) => {
            let mut flags = (publish.qos as u8) << publish_flag::QOS_SHIFT;
            if publish.dup {
                flags |= publish_flag::DUP;
            }
            if publish.retain {
                flags |= publish_flag::RETAIN;
            }
            (packet_type::PUBLISH, flags)
        }
        Packet::PubAck(_) => (packet_type::PUBACK, 0),
        Packet::PubRec(_) => (packet_type::PUBREC, 0),
        Packet::PubRel(_) => (packet_type::PUBREL, 0b0010),
        Packet::PubComp(_) => (packet_type::PUBCOMP, 0),
        Packet::Subscribe(_) => (packet_type::SUBSCRIBE, 0b0010),
        Packet::SubAck(_) => (packet_type::SUBACK, 0),
        Packet::Unsubscribe(_) => (packet_type::UNSUBSCRIBE, 0b0010),
        Packet::UnsubAck(_) => (packet_type::UNSUBACK, 0),
        Packet::PingReq => (packet_type::PINGREQ, 0),
        Packet::PingResp => (packet_type::PINGRESP, 0),
        Packet::Disconnect => (packet_type::DISCONNECT, 0),
    };
    kind << 4 | flags
}

fn remaining_length_len(remaining_length: usize) -> usize {
    match remaining_length {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_remaining_length(buf: &mut BytesMut, mut remaining_length: usize) {
    loop {
        let mut byte = (remaining_length % 128) as u8;
        remaining_length /= 128;
        if remaining_length > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if remaining_length == 0 {
            return;
        }
    }
}

/// The remaining length, after checking every rule `decode` checks.
fn body_len(packet: &Packet) -> Result<usize, EncodeError> {
    Ok(match packet {
        Packet::Connect(connect) => connect_len(connect)?,
        Packet::ConnAck(connack) => {
            if connack.session_present && connack.code != ConnectReturnCode::Accepted {
                return Err(EncodeError::SessionPresentOnRejection);
            }
            2
        }
        Packet::Publish(publish) => publish_len(publish)?,
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::Subscribe(subscribe) => {
            if subscribe.filters.is_empty() {
                return Err(EncodeError::EmptySubscription);
            }
            let mut len = 2;
            for (filter, _) in &subscribe.filters {
                len += topic_filter_len(filter)? + 1;
            }
            len
        }
        Packet::SubAck(suback) => {
            if suback.return_codes.is_empty() {
                return Err(EncodeError::EmptySubAck);
            }
            2 + suback.return_codes.len()
        }
        Packet::Unsubscribe(unsubscribe) => {
            if unsubscribe.filters.is_empty() {
                return Err(EncodeError::EmptyUnsubscription);
            }
            let mut len = 2;
            for filter in &unsubscribe.filters {
                len += topic_filter_len(filter)?;
            }
            len
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    })
}

fn protocol_name(protocol_level: u8) -> &'static [u8] {
    if protocol_level == PROTOCOL_LEVEL_3_1 {
        PROTOCOL_NAME_MQISDP
    } else {
        PROTOCOL_NAME_MQTT
    }
}

fn connect_len(connect: &Connect) -> Result<usize, EncodeError> {
    if connect.password.is_some() && connect.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    // Protocol name, level, flags and keep-alive.
    let mut len = 2 + protocol_name(connect.protocol_level).len() + 1 + 1 + 2;
    len += string_len(&connect.client_id)?;
    if let Some(will) = &connect.will {
        len += topic_name_len(&will.topic)? + binary_len(&will.payload)?;
    }
    if let Some(username) = &connect.username {
        len += string_len(username)?;
    }
    if let Some(password) = &connect.password {
        len += binary_len(password)?;
    }
    Ok(len)
}

fn publish_len(publish: &Publish) -> Result<usize, EncodeError> {
    match (publish.qos, publish.packet_id) {
        (QoS::AtMostOnce, Some(_)) => return Err(EncodeError::UnexpectedPacketId),
        (QoS::AtMostOnce, None) if publish.dup => return Err(EncodeError::DupWithQoS0),
        (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => return Err(EncodeError::MissingPacketId),
        _ => {}
    }
    let packet_id_len = if publish.packet_id.is_some() { 2 } else { 0 };
    Ok(topic_name_len(&publish.topic)? + packet_id_len + publish.payload.len())
}

/// Length on the wire of a UTF-8 string field, which `decode` requires to be free of U+0000.
fn string_len(s: &str) -> Result<usize, EncodeError> {
    if s.len() > MAX_FIELD_LEN {
        return Err(EncodeError::StringTooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(EncodeError::NullCharacter);
    }
    Ok(2 + s.len())
}

fn binary_len(data: &[u8]) -> Result<usize, EncodeError> {
    if data.len() > MAX_FIELD_LEN {
        return Err(EncodeError::BinaryTooLong(data.len()));
    }
    Ok(2 + data.len())
}

fn topic_name_len(topic: &str) -> Result<usize, EncodeError> {
    let len = string_len(topic)?;
    validate_topic_name(topic).map_err(EncodeError::InvalidTopic)?;
    Ok(len)
}

fn topic_filter_len(filter: &str) -> Result<usize, EncodeError> {
    let len = string_len(filter)?;
    validate_topic_filter(filter).map_err(EncodeError::InvalidTopic)?;
    Ok(len)
}

/// Writes the variable header and payload; `body_len` has validated the packet already.
fn put_body(packet: &Packet, buf: &mut BytesMut) {
    match packet {
        Packet::Connect(connect) => put_connect(connect, buf),
        Packet::ConnAck(ConnAck {
            session_present,
            code,
        }) => {
            buf.put_u8(u8::from(*session_present));
            buf.put_u8(*code as u8);
        }
        Packet::Publish(publish) => {
            put_length_prefixed(buf, publish.topic.as_bytes());
            if let Some(packet_id) = publish.packet_id {
                put_packet_id(buf, packet_id);
            }
            buf.put_slice(&publish.payload);
        }
        Packet::PubAck(packet_id)
        | Packet::PubRec(packet_id)
        | Packet::PubRel(packet_id)
        | Packet::PubComp(packet_id)
        | Packet::UnsubAck(packet_id) => put_packet_id(buf, *packet_id),
        Packet::Subscribe(Subscribe { packet_id, filters }) => {
            put_packet_id(buf, *packet_id);
            for (filter, qos) in filters {
                put_length_prefixed(buf, filter.as_bytes());
                buf.put_u8(*qos as u8);
            }
        }
        Packet::SubAck(SubAck {
            packet_id,
            return_codes,
        }) => {
            put_packet_id(buf, *packet_id);
            for code in return_codes {
                buf.put_u8(code.to_u8());
            }
        }
        Packet::Unsubscribe(Unsubscribe { packet_id, filters }) => {
            put_packet_id(buf, *packet_id);
            for filter in filters {
                put_length_prefixed(buf, filter.as_bytes());
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
}

fn put_connect(connect: &Connect, buf: &mut BytesMut) {
    put_length_prefixed(buf, protocol_name(connect.protocol_level));
    buf.put_u8(connect.protocol_level);
    let mut flags = 0;
    if connect.clean_session {
        flags |= connect_flag::CLEAN_SESSION;
    }
    if let Some(will) = &connect.will {
        flags |= connect_flag::WILL | (will.qos as u8) << connect_flag::WILL_QOS_SHIFT;
        if will.retain {
            flags |= connect_flag::WILL_RETAIN;
        }
    }
    if connect.username.is_some() {
        flags |= connect_flag::USERNAME;
    }
    if connect.password.is_some() {
        flags |= connect_flag::PASSWORD;
    }
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    put_length_prefixed(buf, connect.client_id.as_bytes());
    if let Some(will) = &connect.will {
        put_length_prefixed(buf, will.topic.as_bytes());
        put_length_prefixed(buf, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_length_prefixed(buf, username.as_bytes());
    }
    if let Some(password) = &connect.password {
        put_length_prefixed(buf, password);
    }
}

fn put_packet_id(buf: &mut BytesMut, packet_id: PacketId) {
    buf.put_u16(packet_id.get());
}

/// Callers have checked that `data` fits a two-byte length.
fn put_length_prefixed(buf: &mut BytesMut, data: &[u8]) {
    let len = u16::try_from(data.len()).expect("field lengths are checked by body_len");
    buf.put_u16(len);
    buf.put_slice(data);
}
