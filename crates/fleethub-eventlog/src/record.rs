//! The record frame of segment files, pure: encoding, and decoding that says "need more bytes" or "corrupt"
//! instead of panicking, whatever the input.
//!
//! Layout (little-endian):
//!
//! ```text
//! u32  frame length: the bytes after this field (the CRC and everything after it)
//! u32  CRC-32C of the bytes after this field
//! u8   format version (1)
//! u8   flags: bit 0 = the upstream sequence below is set
//! u16  reserved, 0
//! u64  offset in the partition (the event's sequence number)
//! i64  enqueued time, microseconds since the Unix epoch
//! u64  batch: the writer's group-commit batch that wrote the record
//! u32  records in that batch, across every partition
//! u64  the log's upstream position before that batch
//! u64  upstream sequence of this record (the change-feed record it came from), when flagged
//! u16  system property count, then per property: u16 key length, key, u32 value length, value
//! u16  application property count, then per property: u16 key length, key, u32 value length
//!      (u32::MAX for a key without value), value
//! ...  body: the rest of the frame
//! ```
//!
//! The batch fields make recovery possible without a separate commit file: a batch is complete when as many
//! of its records are on disk as each says it has (see `embedded.rs`).

use bytes::Bytes;

use crate::crc;

/// Length and CRC fields before the CRC-covered part.
pub const FRAME_PREFIX_BYTES: usize = 8;
/// The fixed part of the CRC-covered bytes, up to the property lists.
pub const FIXED_HEADER_BYTES: usize = 48;
/// Largest frame accepted, CRC and header included. Far above what IoT Hub's 256 KB messages need; a length
/// beyond it is corruption, never an allocation.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
const FORMAT_VERSION: u8 = 1;
const FLAG_UPSTREAM: u8 = 1;
const NO_VALUE: u32 = u32::MAX;

/// The fixed fields of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub offset: u64,
    pub enqueued_micros: i64,
    pub batch: u64,
    pub batch_records: u32,
    pub upstream_before: u64,
    pub upstream_sequence: Option<u64>,
}

/// A whole record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub header: RecordHeader,
    pub system_properties: Vec<(String, String)>,
    pub application_properties: Vec<(String, Option<String>)>,
    pub body: Bytes,
}

/// Why a record cannot be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the record would be {bytes} bytes; the limit is {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("property name of {bytes} bytes; the limit is 65535")]
    PropertyNameTooLong { bytes: usize },
    #[error("more than 65535 properties")]
    TooManyProperties,
}

/// Why bytes are not a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("frame length {0} is out of range")]
    BadLength(u32),
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("property list runs past the end of the frame")]
    Truncated,
    #[error("a property is not UTF-8")]
    NotUtf8,
    #[error("reserved bits are set")]
    Reserved,
}

/// What the bytes at the start of a buffer hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole, intact frame of `length` bytes (prefix included).
    Complete { value: T, length: usize },
    /// The frame is not whole yet: at least `needed` bytes in all are required.
    Incomplete { needed: usize },
    /// Not a record.
    Corrupt(Corruption),
}

/// The bytes a record of these parts takes on disk.
pub fn encoded_len(
    system_properties: &[(String, String)],
    application_properties: &[(String, Option<String>)],
    body: &[u8],
) -> usize {
    let system: usize = system_properties
        .iter()
        .map(|(key, value)| 6 + key.len() + value.len())
        .sum();
    let application: usize = application_properties
        .iter()
        .map(|(key, value)| 6 + key.len() + value.as_ref().map_or(0, String::len))
        .sum();
    FRAME_PREFIX_BYTES + FIXED_HEADER_BYTES + 2 + system + 2 + application + body.len()
}

/// Appends one record to `out`; returns its length. On error `out` is unchanged.
pub fn encode(
    header: &RecordHeader,
    system_properties: &[(String, String)],
    application_properties: &[(String, Option<String>)],
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let length = encoded_len(system_properties, application_properties, body);
    if length > MAX_FRAME_BYTES {
        return Err(EncodeError::TooLarge {
            bytes: length,
            max: MAX_FRAME_BYTES,
        });
    }
    if system_properties.len() > usize::from(u16::MAX)
        || application_properties.len() > usize::from(u16::MAX)
    {
        return Err(EncodeError::TooManyProperties);
    }
    let longest_key = system_properties
        .iter()
        .map(|(key, _)| key.len())
        .chain(application_properties.iter().map(|(key, _)| key.len()))
        .max()
        .unwrap_or(0);
    if longest_key > usize::from(u16::MAX) {
        return Err(EncodeError::PropertyNameTooLong { bytes: longest_key });
    }
    let start = out.len();
    out.reserve(length);
    // Lengths fit: the frame is at most MAX_FRAME_BYTES, far below u32::MAX.
    out.extend_from_slice(&((length - 4) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(FORMAT_VERSION);
    out.push(if header.upstream_sequence.is_some() {
        FLAG_UPSTREAM
    } else {
        0
    });
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&header.offset.to_le_bytes());
    out.extend_from_slice(&header.enqueued_micros.to_le_bytes());
    out.extend_from_slice(&header.batch.to_le_bytes());
    out.extend_from_slice(&header.batch_records.to_le_bytes());
    out.extend_from_slice(&header.upstream_before.to_le_bytes());
    out.extend_from_slice(&header.upstream_sequence.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(system_properties.len() as u16).to_le_bytes());
    for (key, value) in system_properties {
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&(application_properties.len() as u16).to_le_bytes());
    for (key, value) in application_properties {
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        match value {
            Some(value) => {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value.as_bytes());
            }
            None => out.extend_from_slice(&NO_VALUE.to_le_bytes()),
        }
    }
    out.extend_from_slice(body);
    debug_assert_eq!(out.len() - start, length);
    let checksum = crc::crc32c(&out[start + FRAME_PREFIX_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    Ok(length)
}

/// Checks the frame at the start of `buf` (length and CRC) and reads its fixed header. What recovery and
/// skipping readers use: no allocation.
pub fn decode_header(buf: &[u8]) -> Decoded<RecordHeader> {
    match frame(buf) {
        Decoded::Complete {
            value: body,
            length,
        } => match fixed_header(body) {
            Ok(header) => Decoded::Complete {
                value: header,
                length,
            },
            Err(corruption) => Decoded::Corrupt(corruption),
        },
        Decoded::Incomplete { needed } => Decoded::Incomplete { needed },
        Decoded::Corrupt(corruption) => Decoded::Corrupt(corruption),
    }
}

/// Decodes the whole record at the start of `buf`; the body shares `buf`'s memory.
pub fn decode(buf: &Bytes) -> Decoded<Record> {
    let (covered, length) = match frame(buf) {
        Decoded::Complete { value, length } => (value, length),
        Decoded::Incomplete { needed } => return Decoded::Incomplete { needed },
        Decoded::Corrupt(corruption) => return Decoded::Corrupt(corruption),
    };
    let header = match fixed_header(covered) {
        Ok(header) => header,
        Err(corruption) => return Decoded::Corrupt(corruption),
    };
    let mut reader = Reader {
        bytes: covered,
        position: FIXED_HEADER_BYTES,
    };
    let parsed = (|| {
        let system_count = reader.u16()?;
        let mut system_properties = Vec::with_capacity(usize::from(system_count).min(64));
        for _ in 0..system_count {
            let key = reader.text16()?;
            let value_length = reader.u32()?;
            let value = reader.text(value_length as usize)?;
            system_properties.push((key, value));
        }
        let application_count = reader.u16()?;
        let mut application_properties = Vec::with_capacity(usize::from(application_count).min(64));
        for _ in 0..application_count {
            let key = reader.text16()?;
            let value = match reader.u32()? {
                NO_VALUE => None,
                value_length => Some(reader.text(value_length as usize)?),
            };
            application_properties.push((key, value));
        }
        Ok((system_properties, application_properties))
    })();
    match parsed {
        Ok((system_properties, application_properties)) => {
            let body_start = FRAME_PREFIX_BYTES + reader.position;
            Decoded::Complete {
                value: Record {
                    header,
                    system_properties,
                    application_properties,
                    body: buf.slice(body_start..length),
                },
                length,
            }
        }
        Err(corruption) => Decoded::Corrupt(corruption),
    }
}

/// The CRC-covered bytes of the frame at the start of `buf`, checked.
fn frame(buf: &[u8]) -> Decoded<&[u8]> {
    if buf.len() < FRAME_PREFIX_BYTES {
        return Decoded::Incomplete {
            needed: FRAME_PREFIX_BYTES,
        };
    }
    let declared = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let length = declared as usize + 4;
    if !(FRAME_PREFIX_BYTES + FIXED_HEADER_BYTES + 4..=MAX_FRAME_BYTES).contains(&length) {
        return Decoded::Corrupt(Corruption::BadLength(declared));
    }
    if buf.len() < length {
        return Decoded::Incomplete { needed: length };
    }
    let expected = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let covered = &buf[FRAME_PREFIX_BYTES..length];
    if crc::crc32c(covered) != expected {
        return Decoded::Corrupt(Corruption::Checksum);
    }
    Decoded::Complete {
        value: covered,
        length,
    }
}

fn fixed_header(covered: &[u8]) -> Result<RecordHeader, Corruption> {
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&covered[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    if covered[0] != FORMAT_VERSION {
        return Err(Corruption::Version(covered[0]));
    }
    let flags = covered[1];
    // Reserved bits must be zero, and so must an unflagged upstream sequence: one spelling per record.
    if flags & !FLAG_UPSTREAM != 0
        || covered[2] != 0
        || covered[3] != 0
        || (flags & FLAG_UPSTREAM == 0 && u64_at(40) != 0)
    {
        return Err(Corruption::Reserved);
    }
    let mut batch_records = [0u8; 4];
    batch_records.copy_from_slice(&covered[28..32]);
    Ok(RecordHeader {
        offset: u64_at(4),
        enqueued_micros: u64_at(12) as i64,
        batch: u64_at(20),
        batch_records: u32::from_le_bytes(batch_records),
        upstream_before: u64_at(32),
        upstream_sequence: (flags & FLAG_UPSTREAM != 0).then(|| u64_at(40)),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], Corruption> {
        let end = self
            .position
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(Corruption::Truncated)?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, Corruption> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, Corruption> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn text(&mut self, length: usize) -> Result<String, Corruption> {
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Corruption::NotUtf8)
    }

    fn text16(&mut self) -> Result<String, Corruption> {
        let length = self.u16()?;
        self.text(usize::from(length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            header: RecordHeader {
                offset: 42,
                enqueued_micros: 1_767_225_600_123_456,
                batch: 7,
                batch_records: 3,
                upstream_before: 99,
                upstream_sequence: Some(100),
            },
            system_properties: vec![
                ("iothub-connection-device-id".into(), "dev1".into()),
                ("message-id".into(), "".into()),
            ],
            application_properties: vec![
                ("alert".into(), Some("high temp".into())),
                ("flag".into(), None),
            ],
            body: Bytes::from_static(b"{\"t\": 1}"),
        }
    }

    fn encode_record(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &record.header,
            &record.system_properties,
            &record.application_properties,
            &record.body,
            &mut out,
        )
        .expect("encodes");
        out
    }

    #[test]
    fn a_record_round_trips_and_its_length_is_known_up_front() {
        let record = sample();
        let encoded = encode_record(&record);
        assert_eq!(
            encoded.len(),
            encoded_len(
                &record.system_properties,
                &record.application_properties,
                &record.body
            )
        );
        let bytes = Bytes::from(encoded.clone());
        assert_eq!(
            decode(&bytes),
            Decoded::Complete {
                value: record.clone(),
                length: encoded.len()
            }
        );
        assert_eq!(
            decode_header(&encoded),
            Decoded::Complete {
                value: record.header,
                length: encoded.len()
            }
        );
        let mut without_upstream = record;
        without_upstream.header.upstream_sequence = None;
        let bytes = Bytes::from(encode_record(&without_upstream));
        assert!(
            matches!(decode(&bytes), Decoded::Complete { value, .. } if value == without_upstream)
        );
    }

    #[test]
    fn every_prefix_asks_for_more_and_every_flipped_bit_is_caught() {
        let encoded = encode_record(&sample());
        for cut in 0..encoded.len() {
            assert!(
                matches!(decode_header(&encoded[..cut]), Decoded::Incomplete { needed } if needed > cut),
                "prefix of {cut} bytes"
            );
        }
        for bit in 0..encoded.len() * 8 {
            let mut damaged = encoded.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let outcome = decode(&Bytes::from(damaged));
            assert!(
                !matches!(outcome, Decoded::Complete { .. }),
                "flipping bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn corrupt_frames_are_named() {
        let mut zero_length = vec![0u8; 64];
        zero_length[0] = 0;
        assert_eq!(
            decode_header(&zero_length),
            Decoded::Corrupt(Corruption::BadLength(0))
        );
        let huge = (MAX_FRAME_BYTES as u32).to_le_bytes();
        assert_eq!(
            decode_header(&[huge[0], huge[1], huge[2], huge[3], 0, 0, 0, 0]),
            Decoded::Corrupt(Corruption::BadLength(MAX_FRAME_BYTES as u32))
        );
        // A valid CRC over a frame whose property list claims more than the frame holds.
        let mut encoded = encode_record(&sample());
        encoded[FRAME_PREFIX_BYTES + FIXED_HEADER_BYTES] = 0xff;
        let checksum = crc::crc32c(&encoded[FRAME_PREFIX_BYTES..]);
        encoded[4..8].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(
            decode(&Bytes::from(encoded)),
            Decoded::Corrupt(Corruption::Truncated)
        );
    }

    #[test]
    fn oversized_records_and_names_are_refused() {
        let record = sample();
        let mut out = Vec::new();
        let big = vec![0u8; MAX_FRAME_BYTES];
        assert!(matches!(
            encode(&record.header, &[], &[], &big, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        let long_name = vec![("k".repeat(70_000), "v".to_owned())];
        assert_eq!(
            encode(&record.header, &long_name, &[], b"", &mut out),
            Err(EncodeError::PropertyNameTooLong { bytes: 70_000 })
        );
        assert!(out.is_empty());
    }
}
