//! Properties over generated packets: round trips, arbitrary and mutated input, split streams.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::fuzzing::check_decode;
use crate::{
    ConnAck, Connect, ConnectReturnCode, DEFAULT_MAX_PACKET_SIZE, LastWill, Packet, PacketId,
    Publish, QoS, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe, decode, encode,
};

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|value| PacketId::new(value).expect("range excludes 0"))
}

/// Any string the codec can carry: no U+0000. Mostly ASCII, with some of everything else.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9/$?&=% -]{0,12}",
        1 => "[^\\x00]{0,8}",
    ]
}

fn binary(max_len: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max_len).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9/$?&=%.-]{1,24}",
        1 => "[^\\x00+#]{1,8}",
    ]
}

fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("+".to_owned()), "[^\\x00+#/]{0,5}"];
    (vec(level, 0..4), any::<bool>()).prop_map(|(mut levels, multi_level)| {
        if multi_level || levels.is_empty() {
            levels.push("#".to_owned());
        }
        let filter = levels.join("/");
        // A single empty level would be an empty filter, which is invalid.
        if filter.is_empty() {
            "+".to_owned()
        } else {
            filter
        }
    })
}

fn connect() -> impl Strategy<Value = Connect> {
    let will = (topic_name(), binary(16), qos(), any::<bool>()).prop_map(
        |(topic, payload, qos, retain)| LastWill {
            topic,
            payload,
            qos,
            retain,
        },
    );
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        proptest::option::of(will),
        proptest::option::of(text()),
        proptest::option::of(binary(16)),
    )
        .prop_map(
            |(clean_session, keep_alive, client_id, will, username, password)| Connect {
                protocol_level: 4,
                clean_session,
                keep_alive,
                client_id,
                will,
                // A password needs a username.
                password: username.as_ref().and(password),
                username,
            },
        )
}

fn connack() -> impl Strategy<Value = ConnAck> {
    let code = prop_oneof![
        Just(ConnectReturnCode::Accepted),
        Just(ConnectReturnCode::UnacceptableProtocolVersion),
        Just(ConnectReturnCode::IdentifierRejected),
        Just(ConnectReturnCode::ServerUnavailable),
        Just(ConnectReturnCode::BadUserNameOrPassword),
        Just(ConnectReturnCode::NotAuthorized),
    ];
    (any::<bool>(), code).prop_map(|(session_present, code)| ConnAck {
        session_present: session_present && code == ConnectReturnCode::Accepted,
        code,
    })
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        // Sometimes long enough for a multi-byte remaining length.
        prop_oneof![3 => binary(32), 1 => binary(20_000)],
    )
        .prop_map(|(qos, dup, retain, topic, packet_id, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: (!at_most_once).then_some(packet_id),
                payload,
            }
        })
}

fn subscribe_return_code() -> impl Strategy<Value = SubscribeReturnCode> {
    prop_oneof![
        qos().prop_map(SubscribeReturnCode::Success),
        Just(SubscribeReturnCode::Failure)
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(Packet::Connect),
        connack().prop_map(Packet::ConnAck),
        publish().prop_map(Packet::Publish),
        packet_id().prop_map(Packet::PubAck),
        packet_id().prop_map(Packet::PubRec),
        packet_id().prop_map(Packet::PubRel),
        packet_id().prop_map(Packet::PubComp),
        (packet_id(), vec((topic_filter(), qos()), 1..4))
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe { packet_id, filters })),
        (packet_id(), vec(subscribe_return_code(), 1..6)).prop_map(|(packet_id, return_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                return_codes,
            })
        }),
        (packet_id(), vec(topic_filter(), 1..4)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, filters })
        }),
        packet_id().prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

fn encoded(packet: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, &mut buf).expect("generated packets are valid");
    buf
}

proptest! {
    #[test]
    fn valid_packets_round_trip(packet in packet()) {
        let mut buf = encoded(&packet);
        prop_assert_eq!(decode(&mut buf, DEFAULT_MAX_PACKET_SIZE), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn strict_prefixes_of_valid_packets_need_more_bytes(packet in packet()) {
        let wire = encoded(&packet);
        // Every prefix of a long payload would be slow and adds nothing past the header.
        for len in (0..wire.len()).take(300) {
            let mut buf = BytesMut::from(&wire[..len]);
            prop_assert_eq!(decode(&mut buf, DEFAULT_MAX_PACKET_SIZE), Ok(None));
            prop_assert_eq!(buf.len(), len);
        }
    }

    #[test]
    fn arbitrary_bytes_never_break_the_decoder(data in vec(any::<u8>(), 0..512)) {
        check_decode(&data);
    }

    #[test]
    fn mutated_packets_never_break_the_decoder(
        packets in vec(packet(), 1..4),
        mutations in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = BytesMut::new();
        for packet in &packets {
            wire.extend_from_slice(&encoded(packet));
        }
        for (index, value) in mutations {
            let position = index.index(wire.len());
            wire[position] = value;
        }
        check_decode(&wire);
    }

    #[test]
    fn a_stream_cut_anywhere_yields_the_same_packets(
        packets in vec(packet(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let mut stream = Vec::new();
        for packet in &packets {
            stream.extend_from_slice(&encoded(packet));
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[start..cut]);
            start = cut;
            while let Some(packet) = decode(&mut buf, DEFAULT_MAX_PACKET_SIZE).expect("valid stream") {
                decoded.push(packet);
            }
        }
        prop_assert_eq!(decoded, packets);
        prop_assert!(buf.is_empty());
    }
}
