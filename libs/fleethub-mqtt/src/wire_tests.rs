//! Byte-exact tables: every packet type both ways, and every malformed-input rule with its error.

use bytes::{Bytes, BytesMut};

use crate::{
    ConnAck, Connect, ConnectReturnCode, DEFAULT_MAX_PACKET_SIZE, DecodeError, EncodeError,
    LastWill, MAX_REMAINING_LENGTH, Packet, PacketId, Publish, QoS, SubAck, Subscribe,
    SubscribeReturnCode, TopicError, Unsubscribe, decode, encode,
};

fn id(value: u16) -> PacketId {
    PacketId::new(value).expect("test packet ids are not 0")
}

const AZURE_USERNAME: &str = "localhost/dev1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0%283.11.7%3BLinux%20%231%20SMP%20PREEMPT_DYNAMIC%20%400%3Bx86_64%29";
const AZURE_PASSWORD: &str = "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig=e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D&se=1795663402";

fn azure_connect(password: Option<&str>) -> Packet {
    Packet::Connect(Connect {
        protocol_level: 4,
        clean_session: false,
        keep_alive: 60,
        client_id: "dev1".to_owned(),
        will: None,
        username: Some(AZURE_USERNAME.to_owned()),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    })
}

/// The CONNECT `azure-iot-device` 2.14.0 sent (PROTOCOL.md §2.3), byte for byte: the variable
/// header and the start of the payload are the captured hex, the rest the captured strings.
fn azure_connect_bytes() -> Vec<u8> {
    let mut wire = vec![0x10, 0xAE, 0x02]; // remaining length 302
    wire.extend_from_slice(&[
        0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0xc0, 0x00, 0x3c, 0x00, 0x04, 0x64, 0x65, 0x76,
        0x31, 0x00, 0x9e, 0x6c, 0x6f, 0x63, 0x61, 0x6c, 0x68, 0x6f, 0x73, 0x74, 0x2f,
    ]);
    wire.extend_from_slice(&AZURE_USERNAME.as_bytes()["localhost/".len()..]);
    wire.extend_from_slice(&[0x00, 0x7c]);
    wire.extend_from_slice(AZURE_PASSWORD.as_bytes());
    wire
}

/// An X.509 device: username, no password (connect flags 0x80).
fn azure_x509_connect_bytes() -> Vec<u8> {
    let mut wire = vec![0x10, 0xB0, 0x01]; // remaining length 176
    wire.extend_from_slice(b"\x00\x04MQTT\x04\x80\x00\x3c\x00\x04dev1\x00\x9e");
    wire.extend_from_slice(AZURE_USERNAME.as_bytes());
    wire
}

fn valid_cases() -> Vec<(&'static str, Packet, Vec<u8>)> {
    let mut big_payload_wire = b"\x30\xcb\x01\x00\x01t".to_vec();
    big_payload_wire.extend_from_slice(&[0xA5; 200]);
    vec![
        (
            "connect with clean session and nothing else",
            Packet::Connect(Connect {
                protocol_level: 4,
                clean_session: true,
                keep_alive: 60,
                client_id: "a".to_owned(),
                will: None,
                username: None,
                password: None,
            }),
            b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a".to_vec(),
        ),
        (
            "connect with empty client id and keep-alive off",
            Packet::Connect(Connect {
                protocol_level: 4,
                clean_session: true,
                keep_alive: 0,
                client_id: String::new(),
                will: None,
                username: None,
                password: None,
            }),
            b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00".to_vec(),
        ),
        (
            "connect with will, username and binary password",
            Packet::Connect(Connect {
                protocol_level: 4,
                clean_session: true,
                keep_alive: 10,
                client_id: "c1".to_owned(),
                will: Some(LastWill {
                    topic: "w/t".to_owned(),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                }),
                username: Some("u".to_owned()),
                password: Some(Bytes::from_static(&[0x00, 0xFF])),
            }),
            b"\x10\x1f\x00\x04MQTT\x04\xee\x00\x0a\x00\x02c1\x00\x03w/t\x00\x03bye\x00\x01u\x00\x02\x00\xff"
                .to_vec(),
        ),
        (
            "connect with qos 2 will and empty will payload",
            Packet::Connect(Connect {
                protocol_level: 4,
                clean_session: false,
                keep_alive: 1740,
                client_id: "dev1/mod1".to_owned(),
                will: Some(LastWill {
                    topic: "$w".to_owned(),
                    payload: Bytes::new(),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                }),
                username: Some(String::new()),
                password: None,
            }),
            b"\x10\x1d\x00\x04MQTT\x04\x94\x06\xcc\x00\x09dev1/mod1\x00\x02$w\x00\x00\x00\x00"
                .to_vec(),
        ),
        (
            "azure sas connect",
            azure_connect(Some(AZURE_PASSWORD)),
            azure_connect_bytes(),
        ),
        (
            "azure x509 connect",
            azure_connect(None),
            azure_x509_connect_bytes(),
        ),
        (
            "connack accepted",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::Accepted,
            }),
            b"\x20\x02\x00\x00".to_vec(),
        ),
        (
            "connack accepted with session present",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::Accepted,
            }),
            b"\x20\x02\x01\x00".to_vec(),
        ),
        (
            "connack unacceptable protocol version",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::UnacceptableProtocolVersion,
            }),
            b"\x20\x02\x00\x01".to_vec(),
        ),
        (
            "connack identifier rejected",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::IdentifierRejected,
            }),
            b"\x20\x02\x00\x02".to_vec(),
        ),
        (
            "connack server unavailable",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::ServerUnavailable,
            }),
            b"\x20\x02\x00\x03".to_vec(),
        ),
        (
            "connack bad username or password",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::BadUserNameOrPassword,
            }),
            b"\x20\x02\x00\x04".to_vec(),
        ),
        (
            "connack not authorized",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
            }),
            b"\x20\x02\x00\x05".to_vec(),
        ),
        (
            "publish qos 0",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "a/b".to_owned(),
                packet_id: None,
                payload: Bytes::from_static(b"hi"),
            }),
            b"\x30\x07\x00\x03a/bhi".to_vec(),
        ),
        (
            "publish qos 0 retained with empty payload",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: "/".to_owned(),
                packet_id: None,
                payload: Bytes::new(),
            }),
            b"\x31\x03\x00\x01/".to_vec(),
        ),
        (
            "publish qos 1 dup retained",
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "a/b".to_owned(),
                packet_id: Some(id(10)),
                payload: Bytes::from_static(b"hi"),
            }),
            b"\x3b\x09\x00\x03a/b\x00\x0ahi".to_vec(),
        ),
        (
            "publish qos 2",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "a/b".to_owned(),
                packet_id: Some(id(0x1234)),
                payload: Bytes::new(),
            }),
            b"\x34\x07\x00\x03a/b\x12\x34".to_vec(),
        ),
        (
            "publish azure twin get",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "$iothub/twin/GET/?$rid=1".to_owned(),
                packet_id: Some(id(2)),
                payload: Bytes::from_static(b" "),
            }),
            b"\x32\x1d\x00\x18$iothub/twin/GET/?$rid=1\x00\x02 ".to_vec(),
        ),
        (
            "publish with two-byte remaining length",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "t".to_owned(),
                packet_id: None,
                payload: Bytes::from(vec![0xA5; 200]),
            }),
            big_payload_wire,
        ),
        ("puback", Packet::PubAck(id(1)), b"\x40\x02\x00\x01".to_vec()),
        ("pubrec", Packet::PubRec(id(0x0102)), b"\x50\x02\x01\x02".to_vec()),
        ("pubrel", Packet::PubRel(id(0xFFFF)), b"\x62\x02\xff\xff".to_vec()),
        ("pubcomp", Packet::PubComp(id(7)), b"\x70\x02\x00\x07".to_vec()),
        (
            "subscribe two filters",
            Packet::Subscribe(Subscribe {
                packet_id: id(1),
                filters: vec![
                    ("$iothub/twin/res/#".to_owned(), QoS::AtLeastOnce),
                    ("#".to_owned(), QoS::ExactlyOnce),
                ],
            }),
            b"\x82\x1b\x00\x01\x00\x12$iothub/twin/res/#\x01\x00\x01#\x02".to_vec(),
        ),
        (
            "subscribe qos 0",
            Packet::Subscribe(Subscribe {
                packet_id: id(3),
                filters: vec![("a/+/c".to_owned(), QoS::AtMostOnce)],
            }),
            b"\x82\x0a\x00\x03\x00\x05a/+/c\x00".to_vec(),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: id(1),
                return_codes: vec![
                    SubscribeReturnCode::Success(QoS::AtMostOnce),
                    SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    SubscribeReturnCode::Failure,
                    SubscribeReturnCode::Success(QoS::ExactlyOnce),
                ],
            }),
            b"\x90\x06\x00\x01\x00\x01\x80\x02".to_vec(),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(2),
                filters: vec!["a/+".to_owned(), "#".to_owned()],
            }),
            b"\xa2\x0a\x00\x02\x00\x03a/+\x00\x01#".to_vec(),
        ),
        ("unsuback", Packet::UnsubAck(id(2)), b"\xb0\x02\x00\x02".to_vec()),
        ("pingreq", Packet::PingReq, b"\xc0\x00".to_vec()),
        ("pingresp", Packet::PingResp, b"\xd0\x00".to_vec()),
        ("disconnect", Packet::Disconnect, b"\xe0\x00".to_vec()),
    ]
}

#[test]
fn every_packet_type_encodes_to_the_exact_bytes() {
    for (name, packet, wire) in valid_cases() {
        let mut buf = BytesMut::new();
        encode(&packet, &mut buf).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&buf[..], &wire[..], "{name}");
    }
}

#[test]
fn every_packet_type_decodes_from_the_exact_bytes() {
    for (name, packet, wire) in valid_cases() {
        let mut buf = BytesMut::from(&wire[..]);
        buf.extend_from_slice(b"\xc0\x00");
        let decoded = decode(&mut buf, DEFAULT_MAX_PACKET_SIZE);
        assert_eq!(decoded, Ok(Some(packet)), "{name}");
        assert_eq!(
            &buf[..],
            b"\xc0\x00",
            "{name}: must consume exactly one packet"
        );
    }
}

#[test]
fn every_strict_prefix_of_a_valid_packet_needs_more_bytes() {
    for (name, _, wire) in valid_cases() {
        for len in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..len]);
            assert_eq!(
                decode(&mut buf, DEFAULT_MAX_PACKET_SIZE),
                Ok(None),
                "{name}, first {len} bytes"
            );
            assert_eq!(&buf[..], &wire[..len], "{name}: buffer must stay untouched");
        }
    }
}

#[test]
fn a_stream_split_at_any_byte_yields_the_same_packets() {
    let cases = valid_cases();
    let expected: Vec<Packet> = cases.iter().map(|(_, packet, _)| packet.clone()).collect();
    let stream: Vec<u8> = cases.iter().flat_map(|(_, _, wire)| wire.clone()).collect();
    for split in 0..=stream.len() {
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            while let Some(packet) = decode(&mut buf, DEFAULT_MAX_PACKET_SIZE).expect("valid") {
                decoded.push(packet);
            }
        }
        assert_eq!(decoded, expected, "split at {split}");
        assert!(buf.is_empty());
    }
}

#[test]
fn publish_payload_shares_the_read_buffer() {
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
    let buffer_start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, DEFAULT_MAX_PACKET_SIZE) else {
        panic!("expected a publish");
    };
    assert_eq!(publish.payload.as_ptr() as usize, buffer_start + 7);
}

/// The MQTT 3.1 CONNECT mosquitto_pub -V mqttv31 sends.
const MQTT_3_1_CONNECT: &[u8] = b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x04dev1";
/// An MQTT 5 CONNECT: same header, then a property length (0) the 3.1.1 layout does not have.
const MQTT_5_CONNECT: &[u8] = b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x04dev1";

fn malformed_cases() -> Vec<(&'static str, &'static [u8], DecodeError)> {
    use DecodeError::*;
    vec![
        // Fixed header.
        ("packet type 0", b"\x00\x00", InvalidPacketType(0)),
        ("packet type 15", b"\xf0\x00", InvalidPacketType(15)),
        (
            "connect with flags",
            b"\x11\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a",
            ReservedFlags {
                packet_type: 1,
                flags: 1,
            },
        ),
        (
            "connack with flags",
            b"\x28\x02\x00\x00",
            ReservedFlags {
                packet_type: 2,
                flags: 8,
            },
        ),
        (
            "puback with flags 0b0010",
            b"\x42\x02\x00\x01",
            ReservedFlags {
                packet_type: 4,
                flags: 2,
            },
        ),
        (
            "pubrel with flags 0",
            b"\x60\x02\x00\x01",
            ReservedFlags {
                packet_type: 6,
                flags: 0,
            },
        ),
        (
            "subscribe with flags 0",
            b"\x80\x06\x00\x01\x00\x01a\x01",
            ReservedFlags {
                packet_type: 8,
                flags: 0,
            },
        ),
        (
            "unsubscribe with flags 0b0011",
            b"\xa3\x05\x00\x01\x00\x01a",
            ReservedFlags {
                packet_type: 10,
                flags: 3,
            },
        ),
        (
            "pingreq with flags",
            b"\xc1\x00",
            ReservedFlags {
                packet_type: 12,
                flags: 1,
            },
        ),
        (
            "disconnect with flags",
            b"\xe2\x00",
            ReservedFlags {
                packet_type: 14,
                flags: 2,
            },
        ),
        ("publish qos 3", b"\x36\x05\x00\x01a\x00\x01", InvalidQoS(3)),
        ("publish dup with qos 0", b"\x38\x03\x00\x01a", DupWithQoS0),
        (
            "remaining length of five bytes",
            b"\x30\xff\xff\xff\xff\x01",
            MalformedRemainingLength,
        ),
        (
            "remaining length 0 in two bytes",
            b"\xc0\x80\x00",
            NonMinimalRemainingLength,
        ),
        (
            "remaining length 1 in three bytes",
            b"\x30\x81\x80\x00",
            NonMinimalRemainingLength,
        ),
        // CONNECT.
        (
            "unknown protocol name",
            b"\x10\x0d\x00\x04MQTX\x04\x02\x00\x3c\x00\x01a",
            InvalidProtocolName,
        ),
        (
            "3.1 protocol name with level 4",
            b"\x10\x0f\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x01a",
            InvalidProtocolName,
        ),
        ("mqtt 3.1", MQTT_3_1_CONNECT, UnsupportedProtocolLevel(3)),
        ("mqtt 5", MQTT_5_CONNECT, UnsupportedProtocolLevel(5)),
        (
            "protocol level 0",
            b"\x10\x0d\x00\x04MQTT\x00\x02\x00\x3c\x00\x01a",
            UnsupportedProtocolLevel(0),
        ),
        (
            "reserved connect flag",
            b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01a",
            ReservedConnectFlag,
        ),
        (
            "will qos without will flag",
            b"\x10\x0d\x00\x04MQTT\x04\x0a\x00\x3c\x00\x01a",
            InvalidWillFlags,
        ),
        (
            "will retain without will flag",
            b"\x10\x0d\x00\x04MQTT\x04\x22\x00\x3c\x00\x01a",
            InvalidWillFlags,
        ),
        (
            "will qos 3",
            b"\x10\x12\x00\x04MQTT\x04\x1e\x00\x3c\x00\x01a\x00\x01w\x00\x00",
            InvalidQoS(3),
        ),
        (
            "password without username",
            b"\x10\x0f\x00\x04MQTT\x04\x42\x00\x3c\x00\x01a\x00\x00",
            PasswordWithoutUsername,
        ),
        (
            "client id not utf-8",
            b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xc3\x28",
            InvalidUtf8,
        ),
        (
            "client id with a utf-16 surrogate",
            b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03\xed\xa0\x80",
            InvalidUtf8,
        ),
        (
            "client id with an overlong null",
            b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xc0\x80",
            InvalidUtf8,
        ),
        (
            "client id with null",
            b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02a\x00",
            NullCharacter,
        ),
        (
            "username with null",
            b"\x10\x10\x00\x04MQTT\x04\x82\x00\x3c\x00\x01a\x00\x01\x00",
            NullCharacter,
        ),
        (
            "will topic with wildcard",
            b"\x10\x12\x00\x04MQTT\x04\x06\x00\x3c\x00\x01a\x00\x01#\x00\x00",
            InvalidTopic(TopicError::WildcardInTopicName),
        ),
        (
            "empty will topic",
            b"\x10\x11\x00\x04MQTT\x04\x06\x00\x3c\x00\x01a\x00\x00\x00\x00",
            InvalidTopic(TopicError::Empty),
        ),
        (
            "connect cut inside the protocol name",
            b"\x10\x05\x00\x04MQT",
            Truncated,
        ),
        (
            "connect without keep-alive",
            b"\x10\x08\x00\x04MQTT\x04\x02",
            Truncated,
        ),
        (
            "client id longer than the packet",
            b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x0aa",
            Truncated,
        ),
        (
            "will flag without will topic",
            b"\x10\x0d\x00\x04MQTT\x04\x06\x00\x3c\x00\x01a",
            Truncated,
        ),
        (
            "username flag without username",
            b"\x10\x0d\x00\x04MQTT\x04\x82\x00\x3c\x00\x01a",
            Truncated,
        ),
        (
            "password longer than the packet",
            b"\x10\x12\x00\x04MQTT\x04\xc2\x00\x3c\x00\x01a\x00\x00\x00\x05x",
            Truncated,
        ),
        (
            "connect with a byte after the payload",
            b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x01ax",
            TrailingBytes,
        ),
        // CONNACK.
        (
            "connack reserved flags",
            b"\x20\x02\x02\x00",
            ReservedConnAckFlags(2),
        ),
        (
            "connack return code 6",
            b"\x20\x02\x00\x06",
            InvalidConnectReturnCode(6),
        ),
        (
            "connack session present on rejection",
            b"\x20\x02\x01\x05",
            SessionPresentOnRejection,
        ),
        ("connack of one byte", b"\x20\x01\x00", Truncated),
        (
            "connack of three bytes",
            b"\x20\x03\x00\x00\x00",
            TrailingBytes,
        ),
        // PUBLISH.
        (
            "publish topic with +",
            b"\x30\x05\x00\x03a/+",
            InvalidTopic(TopicError::WildcardInTopicName),
        ),
        (
            "publish topic with #",
            b"\x30\x05\x00\x03a/#",
            InvalidTopic(TopicError::WildcardInTopicName),
        ),
        (
            "publish empty topic",
            b"\x30\x02\x00\x00",
            InvalidTopic(TopicError::Empty),
        ),
        (
            "publish topic with null",
            b"\x30\x04\x00\x02a\x00",
            NullCharacter,
        ),
        (
            "publish topic not utf-8",
            b"\x30\x03\x00\x01\xff",
            InvalidUtf8,
        ),
        (
            "publish qos 1 packet id 0",
            b"\x32\x07\x00\x03a/b\x00\x00",
            ZeroPacketId,
        ),
        (
            "publish qos 2 packet id 0",
            b"\x34\x07\x00\x03a/b\x00\x00",
            ZeroPacketId,
        ),
        (
            "publish qos 1 without packet id",
            b"\x32\x05\x00\x03a/b",
            Truncated,
        ),
        (
            "publish topic longer than the packet",
            b"\x30\x03\x00\x05a",
            Truncated,
        ),
        ("publish without topic length", b"\x30\x01\x00", Truncated),
        // Acknowledgements.
        ("puback packet id 0", b"\x40\x02\x00\x00", ZeroPacketId),
        ("pubrec packet id 0", b"\x50\x02\x00\x00", ZeroPacketId),
        ("pubrel packet id 0", b"\x62\x02\x00\x00", ZeroPacketId),
        ("pubcomp packet id 0", b"\x70\x02\x00\x00", ZeroPacketId),
        ("unsuback packet id 0", b"\xb0\x02\x00\x00", ZeroPacketId),
        ("puback of one byte", b"\x40\x01\x00", Truncated),
        (
            "puback of three bytes",
            b"\x40\x03\x00\x01\x00",
            TrailingBytes,
        ),
        ("pubrel of zero bytes", b"\x62\x00", Truncated),
        (
            "unsuback of three bytes",
            b"\xb0\x03\x00\x01\x00",
            TrailingBytes,
        ),
        // SUBSCRIBE and SUBACK.
        (
            "subscribe without filters",
            b"\x82\x02\x00\x01",
            EmptySubscription,
        ),
        ("subscribe without packet id", b"\x82\x01\x00", Truncated),
        (
            "subscribe packet id 0",
            b"\x82\x06\x00\x00\x00\x01a\x01",
            ZeroPacketId,
        ),
        (
            "subscribe options with upper bits",
            b"\x82\x06\x00\x01\x00\x01a\x04",
            ReservedSubscriptionOptions(4),
        ),
        (
            "subscribe options 0xff",
            b"\x82\x06\x00\x01\x00\x01a\xff",
            ReservedSubscriptionOptions(0xff),
        ),
        (
            "subscribe qos 3",
            b"\x82\x06\x00\x01\x00\x01a\x03",
            InvalidQoS(3),
        ),
        (
            "subscribe # not last",
            b"\x82\x0a\x00\x01\x00\x05a/#/b\x01",
            InvalidTopic(TopicError::MultiLevelWildcardNotLast),
        ),
        (
            "subscribe + not alone",
            b"\x82\x07\x00\x01\x00\x02a+\x01",
            InvalidTopic(TopicError::WildcardNotAlone),
        ),
        (
            "subscribe empty filter",
            b"\x82\x05\x00\x01\x00\x00\x01",
            InvalidTopic(TopicError::Empty),
        ),
        (
            "subscribe filter with null",
            b"\x82\x06\x00\x01\x00\x01\x00\x01",
            NullCharacter,
        ),
        (
            "subscribe filter without options",
            b"\x82\x05\x00\x01\x00\x01a",
            Truncated,
        ),
        (
            "subscribe second filter longer than the packet",
            b"\x82\x09\x00\x01\x00\x01a\x01\x00\x09b",
            Truncated,
        ),
        (
            "suback without return codes",
            b"\x90\x02\x00\x01",
            EmptySubAck,
        ),
        (
            "suback return code 3",
            b"\x90\x03\x00\x01\x03",
            InvalidSubscribeReturnCode(3),
        ),
        (
            "suback return code 0x81",
            b"\x90\x03\x00\x01\x81",
            InvalidSubscribeReturnCode(0x81),
        ),
        ("suback packet id 0", b"\x90\x03\x00\x00\x01", ZeroPacketId),
        // UNSUBSCRIBE.
        (
            "unsubscribe without filters",
            b"\xa2\x02\x00\x01",
            EmptyUnsubscription,
        ),
        (
            "unsubscribe packet id 0",
            b"\xa2\x05\x00\x00\x00\x01a",
            ZeroPacketId,
        ),
        (
            "unsubscribe # not last",
            b"\xa2\x07\x00\x01\x00\x03#/a",
            InvalidTopic(TopicError::MultiLevelWildcardNotLast),
        ),
        (
            "unsubscribe filter longer than the packet",
            b"\xa2\x05\x00\x01\x00\x02a",
            Truncated,
        ),
        (
            "unsubscribe filter not utf-8",
            b"\xa2\x05\x00\x01\x00\x01\x80",
            InvalidUtf8,
        ),
        // Packets without a body.
        ("pingreq with a body", b"\xc0\x01\x00", TrailingBytes),
        ("pingresp with a body", b"\xd0\x01\x00", TrailingBytes),
        ("disconnect with a body", b"\xe0\x01\x00", TrailingBytes),
    ]
}

#[test]
fn every_malformed_input_is_refused_with_its_own_error() {
    for (name, wire, expected) in malformed_cases() {
        let mut buf = BytesMut::from(wire);
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_PACKET_SIZE),
            Err(expected),
            "{name}"
        );
    }
}

#[test]
fn errors_in_the_fixed_header_are_reported_before_the_body_arrives() {
    let cases: [(&[u8], DecodeError); 5] = [
        (b"\x00", DecodeError::InvalidPacketType(0)),
        (
            b"\x61",
            DecodeError::ReservedFlags {
                packet_type: 6,
                flags: 1,
            },
        ),
        (
            b"\x30\xff\xff\xff\xff",
            DecodeError::MalformedRemainingLength,
        ),
        (b"\x30\x80\x00", DecodeError::NonMinimalRemainingLength),
        (b"\xc0\x05", DecodeError::TrailingBytes),
    ];
    for (wire, expected) in cases {
        let mut buf = BytesMut::from(wire);
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_PACKET_SIZE),
            Err(expected),
            "{wire:02x?}"
        );
    }
}

#[test]
fn an_oversize_packet_is_refused_from_its_header_alone() {
    // Remaining length 128: a 131-byte packet.
    let mut buf = BytesMut::from(&b"\x30\x80\x01"[..]);
    assert_eq!(
        decode(&mut buf, 130),
        Err(DecodeError::PacketTooLarge {
            size: 131,
            max: 130
        })
    );

    let mut buf = BytesMut::from(&b"\x30\xff\xff\xff\x7f"[..]);
    assert_eq!(
        decode(&mut buf, DEFAULT_MAX_PACKET_SIZE),
        Err(DecodeError::PacketTooLarge {
            size: MAX_REMAINING_LENGTH + 5,
            max: DEFAULT_MAX_PACKET_SIZE
        })
    );
}

#[test]
fn a_packet_of_exactly_the_maximum_size_is_accepted() {
    let mut wire = b"\x30\x80\x01\x00\x01t".to_vec();
    wire.resize(131, b'x');
    let mut buf = BytesMut::from(&wire[..3]);
    assert_eq!(decode(&mut buf, 131), Ok(None));
    buf.extend_from_slice(&wire[3..]);
    assert!(matches!(
        decode(&mut buf, 131),
        Ok(Some(Packet::Publish(_)))
    ));
}

#[test]
fn remaining_length_boundaries_decode_to_their_values() {
    let cases: [(&[u8], usize); 8] = [
        (b"\x00", 0),
        (b"\x7f", 127),
        (b"\x80\x01", 128),
        (b"\xff\x7f", 16_383),
        (b"\x80\x80\x01", 16_384),
        (b"\xff\xff\x7f", 2_097_151),
        (b"\x80\x80\x80\x01", 2_097_152),
        (b"\xff\xff\xff\x7f", 268_435_455),
    ];
    for (encoded, value) in cases {
        // A max of 0 makes decode report the size it read from the header.
        let mut buf = BytesMut::from(&b"\x30"[..]);
        buf.extend_from_slice(encoded);
        assert_eq!(
            decode(&mut buf, 0),
            Err(DecodeError::PacketTooLarge {
                size: 1 + encoded.len() + value,
                max: 0
            })
        );
    }
}

fn publish_qos0(topic: &str, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.to_owned(),
        packet_id: None,
        payload,
    })
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    let connect = Connect {
        protocol_level: 4,
        clean_session: true,
        keep_alive: 0,
        client_id: "a".to_owned(),
        will: None,
        username: None,
        password: None,
    };
    let long = "a".repeat(65_536);
    let cases: Vec<(&str, Packet, EncodeError)> = vec![
        (
            "client id too long",
            Packet::Connect(Connect {
                client_id: long.clone(),
                ..connect.clone()
            }),
            EncodeError::StringTooLong(65_536),
        ),
        (
            "username too long",
            Packet::Connect(Connect {
                username: Some(long.clone()),
                ..connect.clone()
            }),
            EncodeError::StringTooLong(65_536),
        ),
        (
            "password too long",
            Packet::Connect(Connect {
                username: Some("u".to_owned()),
                password: Some(Bytes::from(vec![0; 65_536])),
                ..connect.clone()
            }),
            EncodeError::BinaryTooLong(65_536),
        ),
        (
            "will payload too long",
            Packet::Connect(Connect {
                will: Some(LastWill {
                    topic: "w".to_owned(),
                    payload: Bytes::from(vec![0; 65_536]),
                    qos: QoS::AtMostOnce,
                    retain: false,
                }),
                ..connect.clone()
            }),
            EncodeError::BinaryTooLong(65_536),
        ),
        (
            "will topic with wildcard",
            Packet::Connect(Connect {
                will: Some(LastWill {
                    topic: "w/#".to_owned(),
                    payload: Bytes::new(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                }),
                ..connect.clone()
            }),
            EncodeError::InvalidTopic(TopicError::WildcardInTopicName),
        ),
        (
            "client id with null",
            Packet::Connect(Connect {
                client_id: "a\0".to_owned(),
                ..connect.clone()
            }),
            EncodeError::NullCharacter,
        ),
        (
            "password without username",
            Packet::Connect(Connect {
                password: Some(Bytes::new()),
                ..connect.clone()
            }),
            EncodeError::PasswordWithoutUsername,
        ),
        (
            "publish topic too long",
            publish_qos0(&long, Bytes::new()),
            EncodeError::StringTooLong(65_536),
        ),
        (
            "publish topic with wildcard",
            publish_qos0("a/+", Bytes::new()),
            EncodeError::InvalidTopic(TopicError::WildcardInTopicName),
        ),
        (
            "publish empty topic",
            publish_qos0("", Bytes::new()),
            EncodeError::InvalidTopic(TopicError::Empty),
        ),
        (
            "publish topic with null",
            publish_qos0("a\0", Bytes::new()),
            EncodeError::NullCharacter,
        ),
        (
            // vec! of zeroes is calloc'd and never touched, since encode measures first.
            "publish larger than mqtt allows",
            publish_qos0("t", Bytes::from(vec![0; MAX_REMAINING_LENGTH - 2])),
            EncodeError::PacketTooLarge(MAX_REMAINING_LENGTH + 1),
        ),
        (
            "publish qos 1 without packet id",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "t".to_owned(),
                packet_id: None,
                payload: Bytes::new(),
            }),
            EncodeError::MissingPacketId,
        ),
        (
            "publish qos 0 with packet id",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "t".to_owned(),
                packet_id: Some(id(1)),
                payload: Bytes::new(),
            }),
            EncodeError::UnexpectedPacketId,
        ),
        (
            "publish dup with qos 0",
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "t".to_owned(),
                packet_id: None,
                payload: Bytes::new(),
            }),
            EncodeError::DupWithQoS0,
        ),
        (
            "connack session present on rejection",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::NotAuthorized,
            }),
            EncodeError::SessionPresentOnRejection,
        ),
        (
            "subscribe without filters",
            Packet::Subscribe(Subscribe {
                packet_id: id(1),
                filters: Vec::new(),
            }),
            EncodeError::EmptySubscription,
        ),
        (
            "subscribe invalid filter",
            Packet::Subscribe(Subscribe {
                packet_id: id(1),
                filters: vec![("a#".to_owned(), QoS::AtMostOnce)],
            }),
            EncodeError::InvalidTopic(TopicError::WildcardNotAlone),
        ),
        (
            "suback without return codes",
            Packet::SubAck(SubAck {
                packet_id: id(1),
                return_codes: Vec::new(),
            }),
            EncodeError::EmptySubAck,
        ),
        (
            "unsubscribe without filters",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(1),
                filters: Vec::new(),
            }),
            EncodeError::EmptyUnsubscription,
        ),
        (
            "unsubscribe invalid filter",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(1),
                filters: vec!["#/a".to_owned()],
            }),
            EncodeError::InvalidTopic(TopicError::MultiLevelWildcardNotLast),
        ),
    ];
    for (name, packet, expected) in cases {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        assert_eq!(encode(&packet, &mut buf), Err(expected), "{name}");
        assert_eq!(
            &buf[..],
            b"prefix",
            "{name}: nothing may be written on error"
        );
    }
}

#[test]
fn longest_strings_and_binaries_still_encode_and_decode() {
    let max = "a".repeat(65_535);
    let packet = Packet::Connect(Connect {
        protocol_level: 4,
        clean_session: true,
        keep_alive: 0,
        client_id: max.clone(),
        will: None,
        username: Some(max.clone()),
        password: Some(Bytes::from(vec![7; 65_535])),
    });
    let mut buf = BytesMut::new();
    encode(&packet, &mut buf).expect("65535-byte fields fit");
    assert_eq!(decode(&mut buf, usize::MAX), Ok(Some(packet)));
}

#[test]
fn encode_writes_other_protocol_levels_for_testing_servers() {
    let connect = |protocol_level| {
        Packet::Connect(Connect {
            protocol_level,
            clean_session: true,
            keep_alive: 60,
            client_id: "dev1".to_owned(),
            will: None,
            username: None,
            password: None,
        })
    };
    let mut buf = BytesMut::new();
    encode(&connect(3), &mut buf).expect("level 3 encodes");
    assert_eq!(&buf[..], MQTT_3_1_CONNECT);
    assert_eq!(
        decode(&mut buf, DEFAULT_MAX_PACKET_SIZE),
        Err(DecodeError::UnsupportedProtocolLevel(3))
    );

    let mut buf = BytesMut::new();
    encode(&connect(5), &mut buf).expect("level 5 encodes");
    assert_eq!(
        decode(&mut buf, DEFAULT_MAX_PACKET_SIZE),
        Err(DecodeError::UnsupportedProtocolLevel(5))
    );
}

#[test]
fn error_messages_are_lowercase_without_trailing_period() {
    let errors: Vec<String> = malformed_cases()
        .into_iter()
        .map(|(_, _, error)| error.to_string())
        .chain([
            DecodeError::PacketTooLarge { size: 2, max: 1 }.to_string(),
            EncodeError::MissingPacketId.to_string(),
            TopicError::TooLong(70_000).to_string(),
        ])
        .collect();
    for message in errors {
        let first = message.chars().next().expect("messages are not empty");
        assert!(!first.is_uppercase(), "{message}");
        assert!(!message.ends_with('.'), "{message}");
    }
}
