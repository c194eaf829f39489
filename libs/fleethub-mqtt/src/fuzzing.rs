//! The decoder's oracle, shared by the fuzz target (`fuzz/`), the corpus replay test and proptest.
//!
//! Compiled only for tests and with the `fuzzing` feature, so that the fuzzer and CI check the
//! same properties with the same code.

use bytes::BytesMut;

use crate::{DEFAULT_MAX_PACKET_SIZE, decode, encode};

/// A limit small enough that ordinary inputs reach the `PacketTooLarge` path.
pub const SMALL_MAX_PACKET_SIZE: usize = 64;

/// Decodes `data` as a stream of packets, with a small and with the default size limit, and
/// panics if the codec breaks one of its promises:
/// - decoding never panics;
/// - `Ok(None)` leaves the buffer untouched;
/// - a decoded packet is within the limit, encodes without error to exactly the bytes it was
///   decoded from (the encoding is canonical: decode accepts one spelling per packet), and those
///   bytes decode to an equal packet.
pub fn check_decode(data: &[u8]) {
    for max_packet_size in [SMALL_MAX_PACKET_SIZE, DEFAULT_MAX_PACKET_SIZE] {
        check_decode_with_limit(data, max_packet_size);
    }
}

fn check_decode_with_limit(data: &[u8], max_packet_size: usize) {
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match decode(&mut buf, max_packet_size) {
            Ok(Some(packet)) => {
                let consumed = before - buf.len();
                assert!(
                    consumed <= max_packet_size,
                    "{consumed} bytes exceed the limit"
                );
                let original = &data[offset..offset + consumed];
                let mut encoded = BytesMut::new();
                if let Err(error) = encode(&packet, &mut encoded) {
                    panic!("decoded {packet:?} does not encode: {error}");
                }
                assert_eq!(
                    &encoded[..],
                    original,
                    "re-encoding {packet:?} changed its bytes"
                );
                assert_eq!(decode(&mut encoded, max_packet_size), Ok(Some(packet)));
                assert!(encoded.is_empty(), "decode left bytes of a whole packet");
                offset += consumed;
            }
            Ok(None) => {
                assert_eq!(&buf[..], &data[offset..], "Ok(None) changed the buffer");
                return;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::check_decode;

    /// CI runs on stable without libFuzzer, so it replays the committed corpus instead.
    #[test]
    fn fuzz_corpus_replays_without_breaking_a_promise() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mqtt_decode");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is committed") {
            let path = entry.expect("corpus entries are readable").path();
            let data = std::fs::read(&path).expect("corpus files are readable");
            // Shown only when the check panics, to name the offending file.
            eprintln!("replaying {}", path.display());
            check_decode(&data);
            replayed += 1;
        }
        assert!(replayed >= 30, "only {replayed} corpus files found");
    }
}
