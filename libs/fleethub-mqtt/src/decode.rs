//! Decoding bytes from the network into packets, refusing everything MQTT 3.1.1 calls malformed.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, PROTOCOL_LEVEL_3_1, PROTOCOL_LEVEL_3_1_1,
    PROTOCOL_NAME_MQISDP, PROTOCOL_NAME_MQTT, Packet, PacketId, Publish, QoS, SubAck, Subscribe,
    SubscribeReturnCode, Unsubscribe, connect_flag, packet_type, publish_flag,
};
use crate::topic::{validate_topic_filter, validate_topic_name};

/// The hub's default limit on a whole packet (fixed header included): Azure's 256 KiB message
/// limit plus room for the topic and headers.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024 + 1024;

/// Decodes one packet from the front of `buf`.
///
/// - `Ok(None)`: `buf` holds only the start of a packet; it is left untouched, so read more bytes
///   into it and call again.
/// - `Ok(Some(packet))`: exactly that packet's bytes were removed from `buf`. Payloads share
///   `buf`'s memory instead of being copied.
/// - `Err(_)`: a protocol violation; the connection should be closed. What is left in `buf` is
///   unspecified.
///
/// `max_packet_size` bounds the whole packet, fixed header included. A larger packet is refused
/// as soon as its fixed header has arrived, before any of its body is buffered. The fixed header
/// is checked as soon as its bytes are there; the body only once all of it is.
///
/// `decode` never reserves capacity in `buf` for a body that has not arrived: that would let a
/// peer make the server allocate `max_packet_size` per connection with a 5-byte header.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = parse_fixed_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.packet_size() {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.packet_size()).freeze();
    frame.advance(header.header_len);
    decode_body(&header, Reader::new(frame)).map(Some)
}

struct FixedHeader {
    packet_type: u8,
    flags: u8,
    header_len: usize,
    remaining_length: usize,
}

impl FixedHeader {
    fn packet_size(&self) -> usize {
        self.header_len + self.remaining_length
    }
}

fn parse_fixed_header(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    check_fixed_header_flags(packet_type, flags)?;

    // At most four bytes of seven bits each, least significant group first (§2.2.3).
    let mut remaining_length = 0usize;
    for index in 0..4 {
        let Some(&byte) = buf.get(1 + index) else {
            return Ok(None);
        };
        remaining_length |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 != 0 {
            continue;
        }
        // A multi-byte encoding whose last group is zero could have been shorter.
        if byte == 0 && index > 0 {
            return Err(DecodeError::NonMinimalRemainingLength);
        }
        let header = FixedHeader {
            packet_type,
            flags,
            header_len: 2 + index,
            remaining_length,
        };
        if header.packet_size() > max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size: header.packet_size(),
                max: max_packet_size,
            });
        }
        check_fixed_body_length(&header)?;
        return Ok(Some(header));
    }
    Err(DecodeError::MalformedRemainingLength)
}

fn check_fixed_header_flags(packet_type: u8, flags: u8) -> Result<(), DecodeError> {
    let required = match packet_type {
        packet_type::PUBLISH => {
            let qos = (flags & publish_flag::QOS) >> publish_flag::QOS_SHIFT;
            if QoS::from_u8(qos).is_none() {
                return Err(DecodeError::InvalidQoS(qos));
            }
            if qos == 0 && flags & publish_flag::DUP != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(());
        }
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => 0b0010,
        packet_type::CONNECT
        | packet_type::CONNACK
        | packet_type::PUBACK
        | packet_type::PUBREC
        | packet_type::PUBCOMP
        | packet_type::SUBACK
        | packet_type::UNSUBACK
        | packet_type::PINGREQ
        | packet_type::PINGRESP
        | packet_type::DISCONNECT => 0,
        _ => return Err(DecodeError::InvalidPacketType(packet_type)),
    };
    if flags != required {
        return Err(DecodeError::ReservedFlags { packet_type, flags });
    }
    Ok(())
}

/// Packets whose body has one possible length are refused from the header alone, so a peer
/// cannot make us buffer a "PINGREQ" of 200 KiB.
fn check_fixed_body_length(header: &FixedHeader) -> Result<(), DecodeError> {
    let expected = match header.packet_type {
        packet_type::CONNACK
        | packet_type::PUBACK
        | packet_type::PUBREC
        | packet_type::PUBREL
        | packet_type::PUBCOMP
        | packet_type::UNSUBACK => 2,
        packet_type::PINGREQ | packet_type::PINGRESP | packet_type::DISCONNECT => 0,
        _ => return Ok(()),
    };
    match header.remaining_length.cmp(&expected) {
        std::cmp::Ordering::Less => Err(DecodeError::Truncated),
        std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

fn decode_body(header: &FixedHeader, mut body: Reader) -> Result<Packet, DecodeError> {
    let packet = match header.packet_type {
        packet_type::CONNECT => Packet::Connect(decode_connect(&mut body)?),
        packet_type::CONNACK => Packet::ConnAck(decode_connack(&mut body)?),
        packet_type::PUBLISH => Packet::Publish(decode_publish(header.flags, &mut body)?),
        packet_type::PUBACK => Packet::PubAck(body.packet_id()?),
        packet_type::PUBREC => Packet::PubRec(body.packet_id()?),
        packet_type::PUBREL => Packet::PubRel(body.packet_id()?),
        packet_type::PUBCOMP => Packet::PubComp(body.packet_id()?),
        packet_type::SUBSCRIBE => Packet::Subscribe(decode_subscribe(&mut body)?),
        packet_type::SUBACK => Packet::SubAck(decode_suback(&mut body)?),
        packet_type::UNSUBSCRIBE => Packet::Unsubscribe(decode_unsubscribe(&mut body)?),
        packet_type::UNSUBACK => Packet::UnsubAck(body.packet_id()?),
        packet_type::PINGREQ => Packet::PingReq,
        packet_type::PINGRESP => Packet::PingResp,
        packet_type::DISCONNECT => Packet::Disconnect,
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    body.finish()?;
    Ok(packet)
}

enum ProtocolName {
    Mqtt,
    MqIsdp,
}

fn decode_connect(body: &mut Reader) -> Result<Connect, DecodeError> {
    let protocol_name = match body.length_prefixed()? {
        PROTOCOL_NAME_MQTT => ProtocolName::Mqtt,
        PROTOCOL_NAME_MQISDP => ProtocolName::MqIsdp,
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    // Checked before anything else in the variable header, because MQTT 3.1 and 5 lay out the
    // rest differently and the server owes such clients a CONNACK with return code 1.
    let protocol_level = body.u8()?;
    match (protocol_name, protocol_level) {
        (ProtocolName::Mqtt, PROTOCOL_LEVEL_3_1_1) => {}
        (ProtocolName::Mqtt, level) | (ProtocolName::MqIsdp, level @ PROTOCOL_LEVEL_3_1) => {
            return Err(DecodeError::UnsupportedProtocolLevel(level));
        }
        (ProtocolName::MqIsdp, _) => return Err(DecodeError::InvalidProtocolName),
    }

    let flags = body.u8()?;
    if flags & connect_flag::RESERVED != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let has_will = flags & connect_flag::WILL != 0;
    let will_qos_bits = (flags & connect_flag::WILL_QOS) >> connect_flag::WILL_QOS_SHIFT;
    let will_retain = flags & connect_flag::WILL_RETAIN != 0;
    if !has_will && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS(will_qos_bits))?;
    let has_username = flags & connect_flag::USERNAME != 0;
    let has_password = flags & connect_flag::PASSWORD != 0;
    if has_password && !has_username {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = body.u16()?;

    let client_id = body.string()?;
    let will = if has_will {
        let topic = body.string()?;
        validate_topic_name(&topic).map_err(DecodeError::InvalidTopic)?;
        Some(LastWill {
            topic,
            payload: body.binary()?,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(body.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(body.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol_level,
        clean_session: flags & connect_flag::CLEAN_SESSION != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_connack(body: &mut Reader) -> Result<ConnAck, DecodeError> {
    const SESSION_PRESENT: u8 = 0b0000_0001;
    let flags = body.u8()?;
    if flags & !SESSION_PRESENT != 0 {
        return Err(DecodeError::ReservedConnAckFlags(flags));
    }
    let code_byte = body.u8()?;
    let code = ConnectReturnCode::from_u8(code_byte)
        .ok_or(DecodeError::InvalidConnectReturnCode(code_byte))?;
    let session_present = flags & SESSION_PRESENT != 0;
    if session_present && code != ConnectReturnCode::Accepted {
        return Err(DecodeError::SessionPresentOnRejection);
    }
    Ok(ConnAck {
        session_present,
        code,
    })
}

fn decode_publish(flags: u8, body: &mut Reader) -> Result<Publish, DecodeError> {
    let qos_bits = (flags & publish_flag::QOS) >> publish_flag::QOS_SHIFT;
    // The fixed header was checked already; this only keeps the two checks from drifting apart.
    let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
    let topic = body.string()?;
    validate_topic_name(&topic).map_err(DecodeError::InvalidTopic)?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(body.packet_id()?),
    };
    Ok(Publish {
        dup: flags & publish_flag::DUP != 0,
        qos,
        retain: flags & publish_flag::RETAIN != 0,
        topic,
        packet_id,
        payload: body.rest(),
    })
}

fn decode_subscribe(body: &mut Reader) -> Result<Subscribe, DecodeError> {
    const RESERVED_OPTIONS: u8 = 0b1111_1100;
    let packet_id = body.packet_id()?;
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = body.string()?;
        validate_topic_filter(&filter).map_err(DecodeError::InvalidTopic)?;
        let options = body.u8()?;
        if options & RESERVED_OPTIONS != 0 {
            return Err(DecodeError::ReservedSubscriptionOptions(options));
        }
        let qos = QoS::from_u8(options).ok_or(DecodeError::InvalidQoS(options))?;
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Subscribe { packet_id, filters })
}

fn decode_suback(body: &mut Reader) -> Result<SubAck, DecodeError> {
    let packet_id = body.packet_id()?;
    let mut return_codes = Vec::with_capacity(body.remaining());
    while !body.is_empty() {
        let code = body.u8()?;
        return_codes.push(
            SubscribeReturnCode::from_u8(code)
                .ok_or(DecodeError::InvalidSubscribeReturnCode(code))?,
        );
    }
    if return_codes.is_empty() {
        return Err(DecodeError::EmptySubAck);
    }
    Ok(SubAck {
        packet_id,
        return_codes,
    })
}

fn decode_unsubscribe(body: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let packet_id = body.packet_id()?;
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = body.string()?;
        validate_topic_filter(&filter).map_err(DecodeError::InvalidTopic)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyUnsubscription);
    }
    Ok(Unsubscribe { packet_id, filters })
}

/// A cursor over one packet's body. Every read past the end is [`DecodeError::Truncated`]:
/// the remaining length said the packet ends here, so a field that goes on is malformed.
struct Reader {
    bytes: Bytes,
    position: usize,
}

impl Reader {
    fn new(bytes: Bytes) -> Self {
        Self { bytes, position: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self
            .bytes
            .get(self.position)
            .ok_or(DecodeError::Truncated)?;
        self.position += 1;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let high = self.u8()?;
        let low = self.u8()?;
        Ok(u16::from_be_bytes([high, low]))
    }

    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    /// Skips a two-byte length and that many bytes, and returns where they are.
    fn length_prefixed_range(&mut self) -> Result<std::ops::Range<usize>, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let start = self.position;
        self.position += len;
        Ok(start..self.position)
    }

    fn length_prefixed(&mut self) -> Result<&[u8], DecodeError> {
        let range = self.length_prefixed_range()?;
        Ok(&self.bytes[range])
    }

    /// Binary data (will payload, password), sharing the packet's memory.
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let range = self.length_prefixed_range()?;
        Ok(self.bytes.slice(range))
    }

    /// A UTF-8 string as §1.5.3 defines it: well-formed (so no surrogates) and without U+0000.
    fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.length_prefixed()?;
        let text = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(text.to_owned())
    }

    fn rest(&mut self) -> Bytes {
        let rest = self.bytes.slice(self.position..);
        self.position = self.bytes.len();
        rest
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}
