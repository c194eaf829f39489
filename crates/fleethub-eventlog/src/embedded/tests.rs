use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::conformance::{event, read_all};
use crate::{Append, EventLog, NewEvent};

const START: OffsetDateTime = datetime!(2026-11-27 10:00:00 UTC);

fn options(clock: &Arc<ManualClock>) -> EventLogOptions {
    EventLogOptions {
        partitions: 4,
        segment_bytes: 4096,
        index_interval_bytes: 512,
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        ..EventLogOptions::default()
    }
}

fn open(root: &Path, options: &EventLogOptions) -> EmbeddedEventLog {
    EmbeddedEventLog::open(root, options.clone()).expect("opens")
}

fn body_of(event: &StoredEvent) -> String {
    String::from_utf8(event.body.to_vec()).expect("utf-8 body")
}

fn segment_files(root: &Path, partition: u32) -> Vec<u64> {
    let directory = root.join("partitions").join(partition.to_string());
    let mut bases: Vec<u64> = fs::read_dir(directory)
        .unwrap()
        .filter_map(|entry| segment::parse_name(entry.ok()?.file_name().to_str()?, "log"))
        .collect();
    bases.sort_unstable();
    bases
}

fn active_segment(root: &Path, partition: u32) -> PathBuf {
    let base = *segment_files(root, partition).last().expect("a segment");
    segment::log_path(&root.join("partitions").join(partition.to_string()), base)
}

/// A key that lands in `partition` of 4.
fn key_in(partition: u32) -> String {
    (0..)
        .map(|index| format!("device-{index}"))
        .find(|key| partition_for_key(key, 4) == partition)
        .expect("some key lands there")
}

#[tokio::test]
async fn the_embedded_log_passes_the_conformance_checks() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let log = open(directory.path(), &options(&clock));
    crate::conformance::run_all(&log).await;
}

#[tokio::test]
async fn events_offsets_and_checkpoints_survive_a_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = options(&clock);
    let key = key_in(2);
    let group = ConsumerGroup::new("$Default").unwrap();
    {
        let log = open(directory.path(), &options);
        for index in 0..10 {
            log.append(Append::events(vec![event(&key, &format!("m{index}"))]))
                .await
                .unwrap();
        }
        log.save_checkpoints(&group, vec![(2, 4)]).await.unwrap();
        log.close().await;
        assert!(matches!(
            log.append(Append::events(vec![event(&key, "late")])).await,
            Err(AppendError::Closed)
        ));
    }
    let log = open(directory.path(), &options);
    let stored = read_all(&log, 2, 0).await;
    let bodies: Vec<String> = stored.iter().map(body_of).collect();
    assert_eq!(
        bodies,
        (0..10).map(|index| format!("m{index}")).collect::<Vec<_>>()
    );
    assert_eq!(
        log.checkpoints(&group).await.unwrap(),
        BTreeMap::from([(2, 4)])
    );
    let positions = log
        .append(Append::events(vec![event(&key, "m10")]))
        .await
        .unwrap();
    assert_eq!(positions[0].offset, 10, "offsets continue, never reused");
    assert_eq!(
        positions[0].enqueued_time, START,
        "the enqueued time is the clock's when the batch was written"
    );
}

#[tokio::test]
async fn segments_roll_and_reads_cross_them_from_any_offset() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = options(&clock);
    let key = key_in(1);
    let log = open(directory.path(), &options);
    let payload = "x".repeat(300);
    for index in 0..100 {
        log.append(Append::events(vec![event(
            &key,
            &format!("{index}:{payload}"),
        )]))
        .await
        .unwrap();
    }
    let segments = segment_files(directory.path(), 1);
    assert!(segments.len() >= 8, "small segments roll: {segments:?}");
    for from in [0, 1, 13, 14, 50, 98, 99] {
        let stored = read_all(&log, 1, from).await;
        assert_eq!(stored.len() as u64, 100 - from);
        for (index, event) in stored.iter().enumerate() {
            assert_eq!(event.offset, from + index as u64);
            assert!(body_of(event).starts_with(&format!("{}:", from + index as u64)));
        }
    }
    // One big read stops at the byte limit but always returns something.
    let batch = log
        .read(
            1,
            0,
            ReadLimits {
                max_events: 1000,
                max_bytes: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.next_offset, 1);

    // Sealed segments' index files are a cache: without them (or with damaged ones) the log still opens.
    drop(log);
    let partition_directory = directory.path().join("partitions/1");
    fs::remove_file(segment::index_path(&partition_directory, segments[0])).unwrap();
    fs::write(
        segment::index_path(&partition_directory, segments[1]),
        b"junk",
    )
    .unwrap();
    let log = open(directory.path(), &options);
    assert_eq!(read_all(&log, 1, 0).await.len(), 100);
    assert!(
        partition_directory
            .join(format!("{:020}.index", segments[0]))
            .exists(),
        "the index is rebuilt"
    );
}

#[tokio::test]
async fn retention_deletes_whole_old_segments_by_time() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = EventLogOptions {
        retention_time: Duration::from_secs(3600),
        ..options(&clock)
    };
    let key = key_in(0);
    let log = open(directory.path(), &options);
    let payload = "y".repeat(500);
    // Two hours of events, one every 2 minutes.
    for index in 0..60 {
        log.append(Append::events(vec![event(
            &key,
            &format!("{index}:{payload}"),
        )]))
        .await
        .unwrap();
        clock.advance(Duration::from_secs(120));
    }
    let before = segment_files(directory.path(), 0).len();
    let report = log.enforce_retention().await.unwrap();
    assert!(report.segments_deleted > 0);
    let info = log.partition_info(0).unwrap();
    assert_eq!(info.first_offset, report.events_deleted);
    assert_eq!(
        segment_files(directory.path(), 0).len(),
        before - report.segments_deleted
    );
    // What is left is the last hour (give or take the one segment that straddles the cut).
    let left = read_all(&log, 0, 0).await;
    assert_eq!(
        left[0].offset, info.first_offset,
        "a read from 0 starts at the oldest kept"
    );
    let cutoff = START + Duration::from_secs(120 * 60) - Duration::from_secs(3600);
    assert!(
        left.iter()
            .rev()
            .skip(1)
            .any(|event| event.enqueued_time < cutoff + Duration::from_secs(600))
    );
    assert!(left.last().unwrap().enqueued_time >= cutoff);
    assert!(
        log.offset_at_time(0, cutoff).await.unwrap() >= info.first_offset,
        "time lookups stay within what is kept"
    );
    // Nothing newer goes, and running it again deletes nothing more.
    assert_eq!(
        log.enforce_retention().await.unwrap(),
        RetentionReport::default()
    );
    // After a restart the offsets continue.
    drop(log);
    let log = open(directory.path(), &options);
    assert_eq!(
        log.partition_info(0).unwrap().first_offset,
        info.first_offset
    );
    let positions = log
        .append(Append::events(vec![event(&key, "after")]))
        .await
        .unwrap();
    assert_eq!(positions[0].offset, 60);
}

#[tokio::test]
async fn retention_keeps_the_log_within_its_size_and_never_deletes_the_active_segment() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = EventLogOptions {
        retention_bytes: 4 * 3 * 4096,
        ..options(&clock)
    };
    let log = open(directory.path(), &options);
    let key = key_in(3);
    let payload = "z".repeat(900);
    for index in 0..80 {
        log.append(Append::events(vec![event(
            &key,
            &format!("{index}:{payload}"),
        )]))
        .await
        .unwrap();
    }
    log.enforce_retention().await.unwrap();
    let partition_directory = directory.path().join("partitions/3");
    let size: u64 = segment_files(directory.path(), 3)
        .iter()
        .map(|base| {
            fs::metadata(segment::log_path(&partition_directory, *base))
                .unwrap()
                .len()
        })
        .sum();
    assert!(size <= 3 * 4096, "partition 3 holds {size} bytes");
    let info = log.partition_info(3).unwrap();
    assert_eq!(info.next_offset, 80);
    assert!(info.first_offset > 0);
    let left = read_all(&log, 3, 0).await;
    assert_eq!(left.len() as u64, 80 - info.first_offset);
    assert_eq!(left.last().unwrap().offset, 79);

    // A log whose every old segment expired keeps each active one (and the next offsets).
    let options = EventLogOptions {
        retention_time: Duration::from_secs(1),
        ..options
    };
    drop(log);
    clock.advance(Duration::from_secs(10));
    let log = open(directory.path(), &options);
    log.enforce_retention().await.unwrap();
    assert_eq!(segment_files(directory.path(), 3).len(), 1);
    assert_eq!(log.partition_info(3).unwrap().next_offset, 80);
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_at_open() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = options(&clock);
    let key = key_in(2);
    {
        let log = open(directory.path(), &options);
        for index in 0..5 {
            log.append(Append::events(vec![event(&key, &format!("m{index}"))]))
                .await
                .unwrap();
        }
    }
    // Half of a sixth record, as a crash in the middle of a write leaves it.
    let path = active_segment(directory.path(), 2);
    let length = fs::metadata(&path).unwrap().len();
    let mut half = Vec::new();
    let header = RecordHeader {
        offset: 5,
        enqueued_micros: 0,
        batch: 99,
        batch_records: 1,
        upstream_before: 0,
        upstream_sequence: None,
    };
    record::encode(&header, &[], &[], b"partial", &mut half).unwrap();
    half.truncate(half.len() / 2);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&half).unwrap();
    drop(file);

    let log = open(directory.path(), &options);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        length,
        "the partial record is gone"
    );
    let stored = read_all(&log, 2, 0).await;
    assert_eq!(stored.len(), 5);
    let positions = log
        .append(Append::events(vec![event(&key, "m5")]))
        .await
        .unwrap();
    assert_eq!(positions[0].offset, 5);
    assert_eq!(body_of(&read_all(&log, 2, 5).await[0]), "m5");
}

#[tokio::test]
async fn a_record_with_a_bad_checksum_ends_the_partition_and_takes_its_batch_with_it() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = options(&clock);
    let (key0, key1) = (key_in(0), key_in(1));
    let length_after_first_batch;
    {
        let log = open(directory.path(), &options);
        log.append(Append::events(vec![event(&key0, "a0"), event(&key1, "b0")]))
            .await
            .unwrap();
        length_after_first_batch = fs::metadata(active_segment(directory.path(), 1))
            .unwrap()
            .len();
        // One batch over two partitions.
        log.append(Append::events(vec![event(&key0, "a1"), event(&key1, "b1")]))
            .await
            .unwrap();
    }
    // Flip one bit in partition 1's last record.
    let path = active_segment(directory.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let log = open(directory.path(), &options);
    let bodies = |events: Vec<StoredEvent>| events.iter().map(body_of).collect::<Vec<_>>();
    assert_eq!(bodies(read_all(&log, 1, 0).await), vec!["b0"]);
    assert_eq!(
        bodies(read_all(&log, 0, 0).await),
        vec!["a0"],
        "the second batch lost a record, so none of it stays"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), length_after_first_batch);
}

/// Writes a pumped batch, then cuts one partition's part of it, as a crash between two partitions' writes
/// would: the whole batch goes, and the upstream position is the one before it.
#[tokio::test]
async fn an_interrupted_pumped_batch_is_removed_everywhere_so_the_pump_neither_skips_nor_repeats() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = options(&clock);
    let (key0, key3) = (key_in(0), key_in(3));
    let pumped = |key: &str, sequence: u64| NewEvent {
        upstream_sequence: Some(sequence),
        ..event(key, &format!("change {sequence}"))
    };
    let cut_at;
    {
        let log = open(directory.path(), &options);
        log.append(Append {
            events: vec![pumped(&key0, 1), pumped(&key3, 2)],
            upstream_through: Some(4),
        })
        .await
        .unwrap();
        assert_eq!(log.upstream_position(), 4);
        cut_at = fs::metadata(active_segment(directory.path(), 3))
            .unwrap()
            .len();
        // Telemetry in between is its own batch and stays.
        log.append(Append::events(vec![event(&key3, "telemetry")]))
            .await
            .unwrap();
        log.append(Append {
            events: vec![pumped(&key0, 5), pumped(&key3, 6), pumped(&key3, 7)],
            upstream_through: Some(7),
        })
        .await
        .unwrap();
        assert_eq!(log.upstream_position(), 7);
    }
    {
        // A complete log reopens at 7.
        let log = open(directory.path(), &options);
        assert_eq!(log.upstream_position(), 7);
    }
    // Cut partition 3 just after the telemetry record: its part of the last batch is gone.
    let path = active_segment(directory.path(), 3);
    let telemetry_length = record::encoded_len(
        &event(&key3, "telemetry").system_properties,
        &event(&key3, "telemetry").application_properties,
        b"telemetry",
    ) as u64;
    truncate(&path, cut_at + telemetry_length).unwrap();

    let log = open(directory.path(), &options);
    assert_eq!(
        log.upstream_position(),
        4,
        "the pump resumes after change 4"
    );
    let bodies = |events: Vec<StoredEvent>| events.iter().map(body_of).collect::<Vec<_>>();
    assert_eq!(bodies(read_all(&log, 0, 0).await), vec!["change 1"]);
    assert_eq!(
        bodies(read_all(&log, 3, 0).await),
        vec!["change 2", "telemetry"]
    );
    // The pump appends 5..7 again, once.
    log.append(Append {
        events: vec![pumped(&key0, 5), pumped(&key3, 6), pumped(&key3, 7)],
        upstream_through: Some(7),
    })
    .await
    .unwrap();
    drop(log);
    let log = open(directory.path(), &options);
    assert_eq!(log.upstream_position(), 7);
    assert_eq!(
        bodies(read_all(&log, 3, 0).await),
        vec!["change 2", "telemetry", "change 6", "change 7"]
    );
}

#[tokio::test]
async fn the_upstream_position_survives_retention_emptying_every_partition() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = EventLogOptions {
        retention_time: Duration::from_secs(60),
        ..options(&clock)
    };
    let key = key_in(0);
    {
        let log = open(directory.path(), &options);
        let payload = "p".repeat(1500);
        for sequence in 1..=10 {
            log.append(Append {
                events: vec![NewEvent {
                    upstream_sequence: Some(sequence),
                    ..event(&key, &payload)
                }],
                upstream_through: Some(sequence),
            })
            .await
            .unwrap();
        }
        clock.advance(Duration::from_secs(3600));
        log.enforce_retention().await.unwrap();
    }
    // Leave partition 0 with only an empty active segment, as a roll followed by retention can.
    let directory_0 = directory.path().join("partitions/0");
    let bases = segment_files(directory.path(), 0);
    for base in &bases {
        fs::remove_file(segment::log_path(&directory_0, *base)).unwrap();
    }
    File::create(segment::log_path(&directory_0, 10)).unwrap();
    let log = open(directory.path(), &options);
    assert_eq!(log.upstream_position(), 10);
    assert_eq!(log.partition_info(0).unwrap().next_offset, 10);
}

#[tokio::test]
async fn offsets_are_found_by_enqueued_time() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let log = open(directory.path(), &options(&clock));
    let key = key_in(1);
    for index in 0..40 {
        log.append(Append::events(vec![event(&key, &"t".repeat(200 + index))]))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(10));
    }
    for (seconds, offset) in [(0, 0), (5, 1), (10, 1), (11, 2), (395, 40), (10_000, 40)] {
        let time = START + Duration::from_secs(seconds);
        assert_eq!(
            log.offset_at_time(1, time).await.unwrap(),
            offset,
            "{seconds} s after the start"
        );
    }
    assert_eq!(
        log.offset_at_time(1, START - Duration::from_secs(1))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_consumer_group_resumes_from_its_checkpoint_without_gaps_or_duplicates() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = options(&clock);
    let group = ConsumerGroup::new("processor").unwrap();
    let mut processed: Vec<(u32, u64, String)> = Vec::new();
    let mut written = 0;
    for round in 0..3 {
        let log = open(directory.path(), &options);
        for _ in 0..25 {
            let key = format!("device-{}", written % 7);
            log.append(Append::events(vec![event(&key, &format!("e{written}"))]))
                .await
                .unwrap();
            written += 1;
        }
        // A consumer that processes part of what is there, checkpoints, and stops (the log is reopened).
        let checkpoints = log.checkpoints(&group).await.unwrap();
        for partition in 0..4 {
            let from = checkpoints.get(&partition).map_or(0, |last| last + 1);
            let batch = log
                .read(
                    partition,
                    from,
                    ReadLimits {
                        max_events: 3 + round,
                        max_bytes: 1 << 20,
                    },
                )
                .await
                .unwrap();
            let Some(last) = batch.events.last() else {
                continue;
            };
            log.save_checkpoints(&group, vec![(partition, last.offset)])
                .await
                .unwrap();
            processed.extend(
                batch
                    .events
                    .iter()
                    .map(|event| (partition, event.offset, body_of(event))),
            );
        }
    }
    // The rest, after a last reopen.
    let log = open(directory.path(), &options);
    let checkpoints = log.checkpoints(&group).await.unwrap();
    for partition in 0..4 {
        let from = checkpoints.get(&partition).map_or(0, |last| last + 1);
        for event in read_all(&log, partition, from).await {
            processed.push((partition, event.offset, body_of(&event)));
        }
    }
    let mut all: Vec<(u32, u64, String)> = Vec::new();
    for partition in 0..4 {
        for event in read_all(&log, partition, 0).await {
            all.push((partition, event.offset, body_of(&event)));
        }
    }
    processed.sort();
    all.sort();
    assert_eq!(all.len(), 75);
    assert_eq!(processed, all, "every event once");
}

#[tokio::test]
async fn the_partition_count_is_fixed_at_creation() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    drop(open(directory.path(), &options(&clock)));
    let error = EmbeddedEventLog::open(
        directory.path(),
        EventLogOptions {
            partitions: 8,
            ..options(&clock)
        },
    )
    .err()
    .expect("refused");
    assert!(matches!(
        error,
        OpenError::PartitionCountMismatch {
            existing: 4,
            configured: 8
        }
    ));
    assert!(error.to_string().contains("cannot be changed"));
}

#[tokio::test]
async fn damaged_meta_and_state_files_are_refused_with_their_path() {
    let clock = ManualClock::new(START);
    for (file, contents, reason) in [
        ("log.json", &b""[..], "EOF while parsing"),
        (
            "log.json",
            b"{\"format\": 2, \"partitions\": 4}",
            "format 2 is not 1",
        ),
        ("log.json", b"{\"format\": 1}", "missing field `partitions`"),
        ("log.json", b"\x00\x01garbage", "expected value"),
        ("state.json", b"{\"upstream\": \"x\"}", "invalid type"),
        (
            "state.json",
            b"{\"upstream\": 1, \"nextBatch\": -3}",
            "invalid value",
        ),
    ] {
        let directory = tempfile::tempdir().unwrap();
        drop(open(directory.path(), &options(&clock)));
        fs::write(directory.path().join(file), contents).unwrap();
        let error = EmbeddedEventLog::open(directory.path(), options(&clock))
            .err()
            .expect("refused");
        assert!(matches!(error, OpenError::Format { .. }), "{file}: {error}");
        let message = error.to_string();
        assert!(
            message.contains(file)
                && message.contains("is not an event log file")
                && message.contains(reason),
            "{message}"
        );
    }
}

#[tokio::test]
async fn an_event_over_the_record_limit_is_refused_before_it_is_queued() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let log = open(directory.path(), &options(&clock));
    let mut big = event("k", "");
    big.body = Bytes::from(vec![0u8; record::MAX_FRAME_BYTES]);
    assert!(matches!(
        log.append(Append::events(vec![big])).await,
        Err(AppendError::TooLarge { .. })
    ));
    assert!(
        log.append(Append::events(vec![event("k", "fine")]))
            .await
            .is_ok()
    );
}

// ---- a property test over random appends, reads, reopens and torn tails ----

#[derive(Clone, Debug)]
enum Operation {
    /// One batch: events for these keys (indexes into KEYS), with body sizes.
    Append(Vec<(usize, usize)>),
    Reopen,
    /// Reopen after cutting this fraction (in 1/16ths) of the last batch's bytes off one of its partitions.
    Tear(u8),
    Read {
        partition: u32,
        from: u64,
    },
}

const KEYS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn operations() -> impl proptest::strategy::Strategy<Value = Vec<Operation>> {
    use proptest::prelude::*;
    let append =
        proptest::collection::vec((0..KEYS.len(), 0usize..700), 1..6).prop_map(Operation::Append);
    let operation = prop_oneof![
        6 => append,
        1 => Just(Operation::Reopen),
        1 => (1u8..16).prop_map(Operation::Tear),
        2 => (0u32..4, 0u64..40).prop_map(|(partition, from)| Operation::Read { partition, from }),
    ];
    proptest::collection::vec(operation, 1..40)
}

struct Model {
    /// Per partition: (batch number, body) of each event, by offset.
    partitions: Vec<Vec<(usize, String)>>,
    batches: usize,
}

fn run_operations(operations: Vec<Operation>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let directory = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START);
        let options = EventLogOptions {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            ..options(&clock)
        };
        let mut log = Some(open(directory.path(), &options));
        let mut model = Model {
            partitions: vec![Vec::new(); 4],
            batches: 0,
        };
        for operation in operations {
            match operation {
                Operation::Append(events) => {
                    let batch = model.batches;
                    model.batches += 1;
                    let new: Vec<NewEvent> = events
                        .iter()
                        .enumerate()
                        .map(|(index, (key, size))| {
                            event(
                                KEYS[*key],
                                &format!("{batch}.{index}.{}", "b".repeat(*size)),
                            )
                        })
                        .collect();
                    for event in &new {
                        let partition = partition_for_key(&event.partition_key, 4) as usize;
                        model.partitions[partition]
                            .push((batch, String::from_utf8(event.body.to_vec()).unwrap()));
                    }
                    let current = log.as_ref().expect("open");
                    current.append(Append::events(new)).await.expect("append");
                }
                Operation::Reopen => {
                    drop(log.take());
                    log = Some(open(directory.path(), &options));
                }
                Operation::Tear(sixteenths) => {
                    drop(log.take());
                    let last_batch = model
                        .partitions
                        .iter()
                        .flat_map(|events| events.iter().map(|(batch, _)| *batch))
                        .max();
                    let Some(last_batch) = last_batch else {
                        log = Some(open(directory.path(), &options));
                        continue;
                    };
                    // The partition of the last batch's first event, and its records of that batch.
                    let (partition, records) = model
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(partition, events)| {
                            let bytes: u64 = events
                                .iter()
                                .filter(|(batch, _)| *batch == last_batch)
                                .map(|(_, body)| {
                                    let sample = event("a", body);
                                    record::encoded_len(
                                        &sample.system_properties,
                                        &sample.application_properties,
                                        body.as_bytes(),
                                    ) as u64
                                })
                                .sum();
                            (partition, bytes)
                        })
                        .find(|(_, bytes)| *bytes > 0)
                        .expect("the last batch wrote somewhere");
                    let cut = (records * u64::from(sixteenths) / 16).max(1);
                    let path = active_segment(directory.path(), partition as u32);
                    let length = fs::metadata(&path).unwrap().len();
                    truncate(&path, length - cut).unwrap();
                    for events in &mut model.partitions {
                        events.retain(|(batch, _)| *batch != last_batch);
                    }
                    log = Some(open(directory.path(), &options));
                }
                Operation::Read { partition, from } => {
                    let current = log.as_ref().expect("open");
                    let stored = read_all(current, partition, from).await;
                    let expected: Vec<&str> = model.partitions[partition as usize]
                        .iter()
                        .skip(from as usize)
                        .map(|(_, body)| body.as_str())
                        .collect();
                    let got: Vec<String> = stored.iter().map(body_of).collect();
                    assert_eq!(got, expected, "partition {partition} from {from}");
                    for (index, event) in stored.iter().enumerate() {
                        assert_eq!(event.offset, from + index as u64);
                    }
                }
            }
        }
        // Everything, at the end.
        let current = log.as_ref().expect("open");
        for partition in 0..4u32 {
            let got: Vec<String> = read_all(current, partition, 0)
                .await
                .iter()
                .map(body_of)
                .collect();
            let expected: Vec<String> = model.partitions[partition as usize]
                .iter()
                .map(|(_, body)| body.clone())
                .collect();
            assert_eq!(got, expected, "partition {partition}");
        }
    });
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]
    #[test]
    fn random_appends_reads_reopens_and_torn_tails_agree_with_a_model(operations in operations()) {
        run_operations(operations);
    }
}

#[tokio::test]
async fn a_new_log_starts_at_its_initial_upstream_and_keeps_advances_without_events() {
    let directory = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let options = EventLogOptions {
        initial_upstream: 41,
        ..options(&clock)
    };
    {
        let log = open(directory.path(), &options);
        assert_eq!(log.upstream_position(), 41);
        // Records 42..=50 made no event (jobs' progress, say).
        log.append(Append {
            events: Vec::new(),
            upstream_through: Some(50),
        })
        .await
        .unwrap();
    }
    // Reopened with another initial position: the log exists, so it is ignored.
    let log = open(
        directory.path(),
        &EventLogOptions {
            initial_upstream: 7,
            ..options
        },
    );
    assert_eq!(log.upstream_position(), 50);
}
