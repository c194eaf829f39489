//! The device-to-cloud packet path without I/O, step by step, with allocations counted (divan's
//! `AllocProfiler`): decode a 256-byte QoS 1 telemetry PUBLISH with an application property bag, parse its
//! topic, build the event (system properties as IoT Hub stamps them), encode the event-log record; and
//! the PUBACK going back. `cargo bench -p fleethub-hub --bench packet_path`; figures in BENCHMARKS.md.

use bytes::{Bytes, BytesMut};
use fleethub_eventlog::record::{self, RecordHeader};
use fleethub_hub::events::telemetry_event;
use fleethub_mqtt::{Packet, PacketId, Publish, QoS};
use fleethub_protocol::events::{AuthScope, MessageOrigin};
use fleethub_protocol::ids::{ClientId, DeviceId};
use fleethub_protocol::topics::{self, DeviceTopic};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

const TOPIC: &str =
    "devices/sensor-0042/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&site=lab&seq=17";
const MAX_PACKET: usize = 256 * 1024 + 1024;

fn client() -> ClientId {
    ClientId::device("sensor-0042".parse::<DeviceId>().expect("a device id"))
}

fn origin() -> MessageOrigin {
    MessageOrigin {
        device_id: "sensor-0042".parse().expect("a device id"),
        module_id: None,
        generation_id: "638990000000000042".into(),
        auth_scope: AuthScope::Device,
        model_id: None,
    }
}

fn publish_bytes() -> BytesMut {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TOPIC.into(),
        packet_id: Some(PacketId::new(17).expect("non-zero")),
        payload: Bytes::from(vec![b'x'; 256]),
    });
    let mut bytes = BytesMut::new();
    fleethub_mqtt::encode(&packet, &mut bytes).expect("encodes");
    bytes
}

fn decoded() -> Publish {
    match fleethub_mqtt::decode(&mut publish_bytes(), MAX_PACKET) {
        Ok(Some(Packet::Publish(publish))) => publish,
        other => panic!("a publish: {other:?}"),
    }
}

#[divan::bench]
fn decode_publish(bencher: divan::Bencher<'_, '_>) {
    bencher
        .with_inputs(publish_bytes)
        .bench_local_refs(|bytes| fleethub_mqtt::decode(bytes, MAX_PACKET));
}

#[divan::bench]
fn parse_topic(bencher: divan::Bencher<'_, '_>) {
    let client = client();
    bencher.bench_local(|| topics::parse_device_publish(divan::black_box(TOPIC), &client));
}

#[divan::bench]
fn build_event(bencher: divan::Bencher<'_, '_>) {
    let origin = origin();
    let client = client();
    bencher
        .with_inputs(|| {
            let publish = decoded();
            match topics::parse_device_publish(&publish.topic, &client) {
                Ok(DeviceTopic::Telemetry { properties, .. }) => (properties, publish.payload),
                other => panic!("telemetry: {other:?}"),
            }
        })
        .bench_local_values(|(properties, body)| {
            telemetry_event(&origin, properties, body, false, false)
        });
}

#[divan::bench]
fn encode_record(bencher: divan::Bencher<'_, '_>) {
    let client = client();
    let publish = decoded();
    let properties = match topics::parse_device_publish(&publish.topic, &client) {
        Ok(DeviceTopic::Telemetry { properties, .. }) => properties,
        other => panic!("telemetry: {other:?}"),
    };
    let event =
        telemetry_event(&origin(), properties, publish.payload, false, false).expect("fits");
    let header = RecordHeader {
        offset: 1,
        enqueued_micros: 1_764_000_000_000_000,
        batch: 1,
        batch_records: 1,
        upstream_before: 0,
        upstream_sequence: None,
    };
    let mut out = Vec::with_capacity(4096);
    bencher.bench_local(|| {
        out.clear();
        record::encode(
            &header,
            &event.system_properties,
            &event.application_properties,
            &event.body,
            &mut out,
        )
    });
}

/// Everything above for one message, as the connection task and the log's writer do it, and the PUBACK.
#[divan::bench]
fn whole_path(bencher: divan::Bencher<'_, '_>) {
    let origin = origin();
    let client = client();
    let header = RecordHeader {
        offset: 1,
        enqueued_micros: 1_764_000_000_000_000,
        batch: 1,
        batch_records: 1,
        upstream_before: 0,
        upstream_sequence: None,
    };
    let mut out = Vec::with_capacity(4096);
    let mut acks = BytesMut::with_capacity(64);
    bencher
        .with_inputs(publish_bytes)
        .bench_local_refs(|bytes| {
            let Ok(Some(Packet::Publish(publish))) = fleethub_mqtt::decode(bytes, MAX_PACKET)
            else {
                panic!("a publish");
            };
            let Ok(DeviceTopic::Telemetry { properties, .. }) =
                topics::parse_device_publish(&publish.topic, &client)
            else {
                panic!("telemetry");
            };
            let event =
                telemetry_event(&origin, properties, publish.payload, false, false).expect("fits");
            out.clear();
            record::encode(
                &header,
                &event.system_properties,
                &event.application_properties,
                &event.body,
                &mut out,
            )
            .expect("encodes");
            acks.clear();
            fleethub_mqtt::encode(
                &Packet::PubAck(publish.packet_id.expect("QoS 1")),
                &mut acks,
            )
            .expect("encodes");
        });
}

/// A telemetry event as the event stream (`GET /events`) reads it back: stored properties and body.
fn stored_event() -> fleethub_eventlog::NewEvent {
    let client = client();
    let publish = decoded();
    let properties = match topics::parse_device_publish(&publish.topic, &client) {
        Ok(DeviceTopic::Telemetry { properties, .. }) => properties,
        other => panic!("telemetry: {other:?}"),
    };
    telemetry_event(&origin(), properties, publish.payload, false, false).expect("fits")
}

/// The JSON of one Server-Sent Event as the stream writes it (`event_message_json`, borrowed parts).
#[divan::bench]
fn stream_event_json(bencher: divan::Bencher<'_, '_>) {
    let event = stored_event();
    let time = time::OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("a time");
    bencher.bench_local(|| {
        fleethub_protocol::events::event_message_json(
            3,
            123_456,
            time,
            &event.system_properties,
            &event.application_properties,
            &event.body,
        )
    });
}

/// The same JSON the way the stream made it before: an `EventMessage` (maps of copied strings), then
/// `serde_json::to_string`. Kept to show the difference.
#[divan::bench]
fn stream_event_via_message(bencher: divan::Bencher<'_, '_>) {
    let event = stored_event();
    let time = time::OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("a time");
    bencher.bench_local(|| {
        let message = fleethub_protocol::events::EventMessage::new(
            3,
            123_456,
            time,
            &event.system_properties,
            &event.application_properties,
            &event.body,
        );
        serde_json::to_string(&message).expect("serialises")
    });
}
