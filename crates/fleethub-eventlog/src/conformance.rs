//! What every [`EventLog`] backend must do, as checks a backend's tests run against a fresh, empty log with
//! 4 partitions (the embedded log's tests run them; a Kafka or JetStream backend would too). Each check
//! panics with a message on failure.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::{Append, ConsumerGroup, EventLog, NewEvent, ReadLimits, StoredEvent};

/// A telemetry-like event for `key` with `body`.
pub fn event(key: &str, body: &str) -> NewEvent {
    NewEvent {
        partition_key: key.to_owned(),
        system_properties: vec![("iothub-connection-device-id".into(), key.to_owned())],
        application_properties: vec![("k".into(), Some(body.to_owned())), ("bare".into(), None)],
        body: Bytes::from(body.to_owned()),
        upstream_sequence: None,
    }
}

/// Every event of a partition from `from`, following `next_offset` until the end.
pub async fn read_all(log: &dyn EventLog, partition: u32, from: u64) -> Vec<StoredEvent> {
    let mut events = Vec::new();
    let mut next = from;
    loop {
        let batch = log
            .read(
                partition,
                next,
                ReadLimits {
                    max_events: 7,
                    max_bytes: 1 << 20,
                },
            )
            .await
            .expect("reads succeed");
        if batch.events.is_empty() {
            return events;
        }
        next = batch.next_offset;
        events.extend(batch.events);
    }
}

pub async fn run_all(log: &dyn EventLog) {
    appends_land_in_their_key_partition_in_order(log).await;
    pipelined_appends_keep_their_order(log).await;
    checkpoints_are_kept_per_group(log).await;
    upstream_position_follows_pumped_appends(log).await;
}

/// Appended events come back whole, in each key's partition, with consecutive offsets from 0.
pub async fn appends_land_in_their_key_partition_in_order(log: &dyn EventLog) {
    assert_eq!(log.partition_count(), 4);
    let keys = ["a", "b", "c", "d", "e", "f"];
    let mut expected: BTreeMap<u32, Vec<NewEvent>> = BTreeMap::new();
    for round in 0..5 {
        let events: Vec<NewEvent> = keys
            .iter()
            .map(|key| event(key, &format!("{key}-{round}")))
            .collect();
        let positions = log
            .append(Append::events(events.clone()))
            .await
            .expect("append succeeds");
        assert_eq!(positions.len(), events.len());
        for (event, position) in events.into_iter().zip(positions) {
            assert_eq!(position.partition, log.partition_of(&event.partition_key));
            let partition_events = expected.entry(position.partition).or_default();
            assert_eq!(position.offset, partition_events.len() as u64);
            partition_events.push(event);
        }
    }
    for partition in 0..4 {
        let stored = read_all(log, partition, 0).await;
        let wanted = expected.remove(&partition).unwrap_or_default();
        assert_eq!(stored.len(), wanted.len(), "partition {partition}");
        for (index, (stored, wanted)) in stored.iter().zip(&wanted).enumerate() {
            assert_eq!(stored.offset, index as u64);
            assert_eq!(stored.partition, partition);
            assert_eq!(stored.system_properties, wanted.system_properties);
            assert_eq!(stored.application_properties, wanted.application_properties);
            assert_eq!(stored.body, wanted.body);
        }
        let info = log.partition_info(partition).expect("partition exists");
        assert_eq!(info.next_offset, wanted.len() as u64);
        assert_eq!(
            *log.watch_partition(partition)
                .expect("partition exists")
                .borrow(),
            info.next_offset
        );
        // From the middle, and from beyond the end.
        if wanted.len() > 2 {
            let tail = read_all(log, partition, 2).await;
            assert_eq!(tail.len(), wanted.len() - 2);
            assert_eq!(tail[0].offset, 2);
        }
        assert!(
            read_all(log, partition, info.next_offset + 5)
                .await
                .is_empty()
        );
    }
    assert!(log.read(99, 0, ReadLimits::default()).await.is_err());
}

/// Appends enqueued one after another without waiting are written in that order.
pub async fn pipelined_appends_keep_their_order(log: &dyn EventLog) {
    let partition = log.partition_of("pipelined");
    let before = log.partition_info(partition).expect("exists").next_offset;
    let mut receipts = Vec::new();
    for index in 0..50 {
        let receipt = log
            .enqueue(Append::events(vec![event("pipelined", &index.to_string())]))
            .await
            .expect("enqueued");
        receipts.push(receipt);
    }
    for (index, receipt) in receipts.into_iter().enumerate() {
        let positions = receipt.await.expect("durable");
        assert_eq!(positions[0].offset, before + index as u64);
    }
    let stored = read_all(log, partition, before).await;
    let bodies: Vec<&[u8]> = stored.iter().map(|event| &event.body[..]).collect();
    let expected: Vec<String> = (0..50).map(|index| index.to_string()).collect();
    let expected: Vec<&[u8]> = expected.iter().map(|body| body.as_bytes()).collect();
    assert_eq!(bodies, expected);
}

/// Checkpoints are per group, merged per partition, and refused beyond a partition's end.
pub async fn checkpoints_are_kept_per_group(log: &dyn EventLog) {
    let first = ConsumerGroup::new("first").expect("valid");
    let second = ConsumerGroup::new("second").expect("valid");
    let partition = log.partition_of("a");
    let next = log.partition_info(partition).expect("exists").next_offset;
    assert!(next > 1, "the earlier checks appended to this partition");
    assert!(log.checkpoints(&first).await.expect("reads").is_empty());
    log.save_checkpoints(&first, vec![(partition, 0)])
        .await
        .expect("saves");
    let saved = log
        .save_checkpoints(&first, vec![(partition, next - 1)])
        .await
        .expect("saves");
    assert_eq!(saved, BTreeMap::from([(partition, next - 1)]));
    assert!(log.checkpoints(&second).await.expect("reads").is_empty());
    assert!(
        log.save_checkpoints(&first, vec![(partition, next)])
            .await
            .is_err(),
        "a checkpoint names an event that exists"
    );
    assert!(log.save_checkpoints(&first, vec![(77, 0)]).await.is_err());
    assert!(log.consumer_groups().await.expect("lists").contains(&first));
    assert!(log.delete_consumer_group(&first).await.expect("deletes"));
    assert!(log.checkpoints(&first).await.expect("reads").is_empty());
}

/// The upstream position follows the pump's appends, including ones that made no event.
pub async fn upstream_position_follows_pumped_appends(log: &dyn EventLog) {
    let start = log.upstream_position();
    let mut pumped = event("pumped", "twin change");
    pumped.upstream_sequence = Some(start + 3);
    let stored = log
        .append(Append {
            events: vec![pumped],
            upstream_through: Some(start + 3),
        })
        .await
        .expect("append");
    assert_eq!(log.upstream_position(), start + 3);
    let read = read_all(log, stored[0].partition, stored[0].offset).await;
    assert_eq!(read[0].upstream_sequence, Some(start + 3));
    log.append(Append {
        events: Vec::new(),
        upstream_through: Some(start + 5),
    })
    .await
    .expect("append of nothing");
    assert_eq!(log.upstream_position(), start + 5);
}
