//! Segment files on disk: their names, the sparse offset index kept for each (in memory, and in an
//! `.index` file once the segment is sealed), and the scan that checks every record of a segment and finds
//! where its intact part ends.
//!
//! A partition directory holds `{base offset:020}.log` files, each the records from its base offset up to
//! the next file's base, and `{base offset:020}.index` files for the sealed ones (all but the last). An index
//! file is a cache: it is checked (CRC, and the segment length it was made for) and rebuilt by a scan when
//! anything is off, so it is never fsynced.

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::crc;
use crate::record::{self, Decoded, RecordHeader};

const INDEX_MAGIC: &[u8; 4] = b"FHIX";
const INDEX_VERSION: u32 = 1;
const INDEX_HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 4;
const INDEX_ENTRY_BYTES: usize = 24;
/// Bytes read per step when scanning or reading a segment.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// One sparse index entry: where a record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub micros: i64,
}

/// What is known of one segment without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base: u64,
    /// One past its last record's offset (`base` when empty).
    pub next: u64,
    /// Length of its intact, committed part.
    pub bytes: u64,
    pub first_micros: Option<i64>,
    pub last_micros: Option<i64>,
    /// Entries in offset order; the first record always has one.
    pub index: Vec<IndexEntry>,
}

impl SegmentInfo {
    pub fn empty(base: u64) -> Self {
        Self {
            base,
            next: base,
            bytes: 0,
            first_micros: None,
            last_micros: None,
            index: Vec::new(),
        }
    }

    /// Where to start reading for `offset`: the last indexed record at or before it.
    pub fn seek(&self, offset: u64) -> u64 {
        match self.index.partition_point(|entry| entry.offset <= offset) {
            0 => 0,
            after => self.index[after - 1].position,
        }
    }

    /// Records `header` (at `position`, `length` bytes long) as appended, indexing it when `interval` bytes
    /// passed since the last indexed record.
    pub fn note_appended(
        &mut self,
        header: &RecordHeader,
        position: u64,
        length: u64,
        interval: u64,
    ) {
        let due = self
            .index
            .last()
            .is_none_or(|last| position - last.position >= interval);
        if due {
            self.index.push(IndexEntry {
                offset: header.offset,
                position,
                micros: header.enqueued_micros,
            });
        }
        self.first_micros.get_or_insert(header.enqueued_micros);
        self.last_micros = Some(header.enqueued_micros);
        self.next = header.offset + 1;
        self.bytes = position + length;
    }
}

pub fn log_path(directory: &Path, base: u64) -> PathBuf {
    directory.join(format!("{base:020}.log"))
}

pub fn index_path(directory: &Path, base: u64) -> PathBuf {
    directory.join(format!("{base:020}.index"))
}

/// The base offset a segment or index file name stands for.
pub fn parse_name(name: &str, extension: &str) -> Option<u64> {
    let digits = name.strip_suffix(extension)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The run of records of one batch at the end of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailRun {
    pub batch: u64,
    pub batch_records: u32,
    /// Records of the batch found here.
    pub count: u32,
    pub start_position: u64,
    pub upstream_before: u64,
    pub max_upstream_sequence: Option<u64>,
}

/// The outcome of checking a segment from its start.
#[derive(Debug)]
pub struct Scan {
    pub info: SegmentInfo,
    /// Bytes after the intact part: a torn or corrupt tail.
    pub damaged_bytes: u64,
    pub tail: Option<TailRun>,
}

/// Reads every record of the segment at `path` (base offset `base`), checking each frame's CRC and that
/// offsets follow one another. Stops at the first record that is partial or corrupt.
pub fn scan(path: &Path, base: u64, index_interval: u64) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_length = file.metadata()?.len();
    let mut info = SegmentInfo::empty(base);
    let mut tail: Option<TailRun> = None;
    let mut buffer: Vec<u8> = Vec::new();
    let mut buffer_start = 0u64; // file position of buffer[0]
    let mut consumed = 0usize; // bytes of buffer already decoded
    let mut eof = false;
    loop {
        match record::decode_header(&buffer[consumed..]) {
            Decoded::Complete {
                value: header,
                length,
            } => {
                if header.offset != info.next {
                    break;
                }
                let position = buffer_start + consumed as u64;
                info.note_appended(&header, position, length as u64, index_interval);
                match &mut tail {
                    Some(run) if run.batch == header.batch => {
                        run.count += 1;
                        run.max_upstream_sequence =
                            run.max_upstream_sequence.max(header.upstream_sequence);
                    }
                    _ => {
                        tail = Some(TailRun {
                            batch: header.batch,
                            batch_records: header.batch_records,
                            count: 1,
                            start_position: position,
                            upstream_before: header.upstream_before,
                            max_upstream_sequence: header.upstream_sequence,
                        })
                    }
                }
                consumed += length;
            }
            Decoded::Incomplete { needed } => {
                if eof {
                    break;
                }
                // Keep the undecoded rest and read at least what the frame needs.
                buffer.drain(..consumed);
                buffer_start += consumed as u64;
                consumed = 0;
                let want = needed.max(CHUNK_BYTES);
                let have = buffer.len();
                let available = (file_length - buffer_start) as usize;
                let target = want.min(available);
                if target <= have {
                    eof = true;
                    continue;
                }
                buffer.resize(target, 0);
                file.read_exact_at(&mut buffer[have..], buffer_start + have as u64)?;
                if target == available {
                    eof = true;
                }
            }
            Decoded::Corrupt(_) => break,
        }
    }
    let damaged_bytes = file_length - info.bytes;
    Ok(Scan {
        info,
        damaged_bytes,
        tail,
    })
}

/// Writes the index of a sealed segment (via a temporary file and a rename, so a reader of the directory
/// never sees half of one).
pub fn write_index(directory: &Path, info: &SegmentInfo) -> io::Result<()> {
    let mut bytes =
        Vec::with_capacity(INDEX_HEADER_BYTES + info.index.len() * INDEX_ENTRY_BYTES + 4);
    bytes.extend_from_slice(INDEX_MAGIC);
    bytes.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    bytes.extend_from_slice(&info.base.to_le_bytes());
    bytes.extend_from_slice(&info.next.to_le_bytes());
    bytes.extend_from_slice(&info.bytes.to_le_bytes());
    bytes.extend_from_slice(&info.first_micros.unwrap_or(i64::MIN).to_le_bytes());
    bytes.extend_from_slice(&info.last_micros.unwrap_or(i64::MIN).to_le_bytes());
    bytes.extend_from_slice(&(info.index.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    for entry in &info.index {
        bytes.extend_from_slice(&entry.offset.to_le_bytes());
        bytes.extend_from_slice(&entry.position.to_le_bytes());
        bytes.extend_from_slice(&entry.micros.to_le_bytes());
    }
    let checksum = crc::crc32c(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    let path = index_path(directory, info.base);
    let temporary = path.with_extension("index.tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(&bytes)?;
    drop(file);
    fs::rename(&temporary, &path)
}

/// Reads a sealed segment's index file; `None` if it is missing, damaged, or not for a segment of
/// `segment_length` bytes (then the caller scans the segment instead).
pub fn read_index(directory: &Path, base: u64, segment_length: u64) -> Option<SegmentInfo> {
    let mut bytes = Vec::new();
    File::open(index_path(directory, base))
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() < INDEX_HEADER_BYTES + 4 {
        return None;
    }
    let (content, checksum) = bytes.split_at(bytes.len() - 4);
    if crc::crc32c(content) != u32::from_le_bytes(checksum.try_into().ok()?) {
        return None;
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            content.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    if &content[..4] != INDEX_MAGIC
        || u32::from_le_bytes(content[4..8].try_into().ok()?) != INDEX_VERSION
    {
        return None;
    }
    let stored_base = u64_at(8)?;
    let next = u64_at(16)?;
    let length = u64_at(24)?;
    let first = u64_at(32)? as i64;
    let last = u64_at(40)? as i64;
    let count = usize::try_from(u64_at(48)?).ok()?;
    if stored_base != base
        || length != segment_length
        || next < base
        || content.len() != INDEX_HEADER_BYTES + count.checked_mul(INDEX_ENTRY_BYTES)?
    {
        return None;
    }
    let mut index = Vec::with_capacity(count);
    for entry in content[INDEX_HEADER_BYTES..].chunks_exact(INDEX_ENTRY_BYTES) {
        index.push(IndexEntry {
            offset: u64::from_le_bytes(entry[0..8].try_into().ok()?),
            position: u64::from_le_bytes(entry[8..16].try_into().ok()?),
            micros: i64::from_le_bytes(entry[16..24].try_into().ok()?),
        });
    }
    let known = |micros: i64| (micros != i64::MIN).then_some(micros);
    Some(SegmentInfo {
        base,
        next,
        bytes: length,
        first_micros: known(first),
        last_micros: known(last),
        index,
    })
}

/// fsyncs a directory, so that files created or renamed in it survive a crash.
pub fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_only_when_well_formed() {
        let directory = Path::new("/d");
        let path = log_path(directory, 42);
        let name = path.file_name().and_then(|name| name.to_str()).unwrap();
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_name(name, "log"), Some(42));
        assert_eq!(parse_name("00000000000000000042.index", "index"), Some(42));
        assert_eq!(parse_name("00000000000000000042.index", "log"), None);
        assert_eq!(parse_name("42.log", "log"), None);
        assert_eq!(parse_name("0000000000000000004x.log", "log"), None);
        assert_eq!(parse_name("99999999999999999999.log", "log"), None);
    }

    #[test]
    fn seek_finds_the_last_indexed_record_at_or_before() {
        let mut info = SegmentInfo::empty(10);
        for (offset, position) in [(10, 0), (14, 100), (20, 250)] {
            info.index.push(IndexEntry {
                offset,
                position,
                micros: 0,
            });
        }
        assert_eq!(info.seek(10), 0);
        assert_eq!(info.seek(13), 0);
        assert_eq!(info.seek(14), 100);
        assert_eq!(info.seek(19), 100);
        assert_eq!(info.seek(500), 250);
        assert_eq!(SegmentInfo::empty(0).seek(3), 0);
    }

    #[test]
    fn an_index_file_round_trips_and_a_stale_or_damaged_one_is_ignored() {
        let directory = tempfile::tempdir().unwrap();
        let info = SegmentInfo {
            base: 5,
            next: 9,
            bytes: 400,
            first_micros: Some(1),
            last_micros: Some(4),
            index: vec![
                IndexEntry {
                    offset: 5,
                    position: 0,
                    micros: 1,
                },
                IndexEntry {
                    offset: 8,
                    position: 300,
                    micros: 4,
                },
            ],
        };
        write_index(directory.path(), &info).unwrap();
        assert_eq!(read_index(directory.path(), 5, 400), Some(info.clone()));
        assert_eq!(read_index(directory.path(), 5, 401), None, "another length");
        assert_eq!(read_index(directory.path(), 6, 400), None, "another base");
        let path = index_path(directory.path(), 5);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_index(directory.path(), 5, 400), None, "damaged");
    }
}
