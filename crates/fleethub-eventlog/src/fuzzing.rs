//! The record decoder's oracle, shared by the fuzz target (`fuzz/fuzz_targets/eventlog_record.rs`) and the
//! corpus replay test. Compiled only for tests and with the `fuzzing` feature.

use bytes::Bytes;

use crate::record::{self, Decoded};

/// Decodes `data` as a segment (records back to back) and panics if the decoder breaks a promise:
/// - decoding never panics, whatever the bytes;
/// - "incomplete" asks for more bytes than there are;
/// - a whole record re-encodes to exactly the bytes it was decoded from (one spelling per record), and the
///   header-only decoder agrees with the full one on its header and length.
///
/// Returns how many whole records it decoded.
pub fn check_decode(data: &[u8]) -> usize {
    let segment = Bytes::copy_from_slice(data);
    let mut position = 0;
    let mut records = 0;
    while position < segment.len() {
        let rest = segment.slice(position..);
        let header_only = record::decode_header(&rest);
        match record::decode(&rest) {
            Decoded::Complete { value, length } => {
                assert!(length <= rest.len());
                assert_eq!(
                    header_only,
                    Decoded::Complete {
                        value: value.header,
                        length
                    },
                    "the header decoder disagrees"
                );
                let mut encoded = Vec::new();
                let written = record::encode(
                    &value.header,
                    &value.system_properties,
                    &value.application_properties,
                    &value.body,
                    &mut encoded,
                )
                .expect("a decoded record encodes");
                assert_eq!(written, length);
                assert_eq!(&encoded[..], &rest[..length], "re-encoding differs");
                position += length;
                records += 1;
            }
            Decoded::Incomplete { needed } => {
                assert!(needed > rest.len(), "incomplete yet {needed} bytes suffice");
                assert!(matches!(header_only, Decoded::Incomplete { .. }));
                return records;
            }
            Decoded::Corrupt(_) => return records,
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// CI runs on stable without libFuzzer, so it replays the committed corpus instead.
    #[test]
    fn fuzz_corpus_replays_without_breaking_a_promise() {
        let corpus =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/eventlog_record");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is committed") {
            let path = entry.expect("corpus entries are readable").path();
            let data = std::fs::read(&path).expect("corpus files are readable");
            let records = check_decode(&data);
            // The hand-written seeds say what they hold: valid ones decode, bad ones do not.
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or("");
            if name.starts_with("valid-") {
                assert_eq!(records, 1, "{name}");
            } else if name == "stream-batch" {
                assert_eq!(records, 2, "{name}");
            } else if name == "stream-partial-tail" {
                assert_eq!(records, 1, "{name}");
            } else if name.starts_with("bad-") {
                assert_eq!(records, 0, "{name}");
            }
            replayed += 1;
        }
        assert!(replayed >= 8, "only {replayed} corpus files found");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_break_a_promise(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = check_decode(&data);
        }
    }
}
