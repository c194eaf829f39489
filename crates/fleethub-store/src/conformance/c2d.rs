//! Conformance checks of cloud-to-device queues and their feedback.
//!
//! The feedback queue is shared by the whole hub, so every check that reads feedback drains it first and
//! settles every batch it receives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleethub_core::identity::IdentityKey;
use fleethub_protocol::c2d::{
    AZURE_FEEDBACK_LOCK_DURATION, AZURE_FEEDBACK_MAX_DELIVERY_COUNT, AZURE_FEEDBACK_TTL,
    AZURE_LOCK_DURATION, AZURE_MAX_QUEUE_DEPTH, C2dMessage, C2dProperties, DeliveryAcknowledgement,
    FeedbackRecord, FeedbackStatusCode, LockToken,
};
use fleethub_protocol::ids::{DeviceId, IfMatch};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::{StoreFactory, create};
use crate::{
    C2dAbandoned, C2dExpired, C2dReceipt, NewC2dMessage, QueuedC2dMessage, ReceiveFeedback, Store,
    StoreError,
};

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);
const GENERATION: &str = "638500000000000000";

pub(super) async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    a_queue_is_full_at_its_limit(&*store).await;
    unknown_devices_have_no_queue(&*store).await;
    messages_are_pending_in_order_with_their_properties(&*store).await;
    completing_writes_success_feedback_when_asked(&*store).await;
    https_receives_lock_and_settle_by_lock_token(&*store).await;
    abandoning_counts_deliveries_and_dead_letters_at_the_limit(&*store).await;
    expired_messages_leave_with_feedback(&*store).await;
    purging_empties_one_queue_with_purged_feedback(&*store).await;
    deleting_a_device_deletes_its_queue_and_feedback(&*store).await;
    feedback_batches_are_handed_out_once(&*store).await;
    old_or_overdelivered_feedback_is_dropped(&*store).await;
    concurrent_sends_never_exceed_the_limit(&store).await;
    drop(store);
    queues_and_feedback_survive_reopening(factory).await;
}

fn device_id(text: &str) -> DeviceId {
    text.parse().expect("test ids are valid")
}

async fn create_device(store: &dyn Store, name: &str) -> DeviceId {
    let id = device_id(name);
    store
        .create_identity(create(&IdentityKey::device(id.clone())))
        .await
        .expect("create device");
    id
}

fn message(id: &str, ack: DeliveryAcknowledgement) -> C2dMessage {
    C2dMessage {
        properties: C2dProperties {
            message_id: id.into(),
            ack,
            ..C2dProperties::default()
        },
        application_properties: BTreeMap::new(),
        body: id.as_bytes().to_vec(),
    }
}

fn new_message(device: &DeviceId, message: C2dMessage, expires: OffsetDateTime) -> NewC2dMessage {
    NewC2dMessage {
        device_id: device.clone(),
        message,
        enqueued_time: NOW,
        expires,
    }
}

async fn send(
    store: &dyn Store,
    device: &DeviceId,
    id: &str,
    ack: DeliveryAcknowledgement,
) -> QueuedC2dMessage {
    store
        .enqueue_c2d(
            new_message(device, message(id, ack), NOW + Duration::hours(1)),
            AZURE_MAX_QUEUE_DEPTH,
        )
        .await
        .expect("enqueue")
}

fn fresh_token() -> LockToken {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    LockToken::new(format!("lock-{}", NEXT.fetch_add(1, Ordering::Relaxed))).expect("valid token")
}

fn feedback_request(now: OffsetDateTime, max_records: usize) -> ReceiveFeedback {
    ReceiveFeedback {
        lock_token: fresh_token(),
        lock_duration: AZURE_FEEDBACK_LOCK_DURATION,
        max_records,
        max_delivery_count: AZURE_FEEDBACK_MAX_DELIVERY_COUNT,
        ttl: AZURE_FEEDBACK_TTL,
        now,
    }
}

/// Receives and completes every feedback batch there is at `now`; returns the records, oldest first.
async fn drain_feedback(store: &dyn Store, now: OffsetDateTime) -> Vec<FeedbackRecord> {
    let mut records = Vec::new();
    while let Some(batch) = store
        .receive_c2d_feedback(feedback_request(now, 1000))
        .await
        .expect("receive feedback")
    {
        store
            .complete_c2d_feedback(&batch.lock_token, now)
            .await
            .expect("complete feedback");
        records.extend(batch.records);
    }
    records
}

/// `(original message id, status)` of each record.
fn outcomes(records: &[FeedbackRecord]) -> Vec<(String, FeedbackStatusCode)> {
    records
        .iter()
        .map(|record| (record.original_message_id.clone(), record.status_code))
        .collect()
}

fn feedback(
    id: &str,
    status: FeedbackStatusCode,
    device: &DeviceId,
    time: OffsetDateTime,
) -> FeedbackRecord {
    FeedbackRecord::new(id, status, device.clone(), GENERATION, time)
}

async fn pending_ids(store: &dyn Store, device: &DeviceId, now: OffsetDateTime) -> Vec<String> {
    store
        .pending_c2d_for_device(device, None, 1000, now)
        .await
        .expect("pending")
        .into_iter()
        .map(|queued| queued.message.properties.message_id)
        .collect()
}

async fn a_queue_is_full_at_its_limit(store: &dyn Store) {
    let full = create_device(store, "c2d-full").await;
    let mut first = None;
    for index in 0..AZURE_MAX_QUEUE_DEPTH {
        let queued = send(
            store,
            &full,
            &format!("m{index}"),
            DeliveryAcknowledgement::None,
        )
        .await;
        first.get_or_insert(queued);
    }
    let refused = store
        .enqueue_c2d(
            new_message(
                &full,
                message("one-too-many", DeliveryAcknowledgement::None),
                NOW + Duration::hours(1),
            ),
            AZURE_MAX_QUEUE_DEPTH,
        )
        .await;
    assert_eq!(
        refused,
        Err(StoreError::C2dQueueFull {
            device_id: full.clone(),
            max: AZURE_MAX_QUEUE_DEPTH
        })
    );
    // A completed message makes room.
    let first = first.expect("sent one");
    store
        .complete_c2d(&full, C2dReceipt::Sequence(first.sequence_number), NOW)
        .await
        .expect("complete");
    send(store, &full, "room-again", DeliveryAcknowledgement::None).await;
    assert_eq!(
        store.purge_c2d_queue(&full, NOW).await,
        Ok(AZURE_MAX_QUEUE_DEPTH as u64)
    );

    // The limit is the caller's, and messages past their expiry no longer count.
    let small = create_device(store, "c2d-small").await;
    for (id, expires) in [
        ("short", NOW + Duration::seconds(5)),
        ("long", NOW + Duration::hours(1)),
    ] {
        store
            .enqueue_c2d(
                new_message(&small, message(id, DeliveryAcknowledgement::None), expires),
                2,
            )
            .await
            .expect("within the limit");
    }
    let third = new_message(
        &small,
        message("third", DeliveryAcknowledgement::None),
        NOW + Duration::hours(1),
    );
    assert_eq!(
        store.enqueue_c2d(third.clone(), 2).await,
        Err(StoreError::C2dQueueFull {
            device_id: small.clone(),
            max: 2
        })
    );
    let later = NewC2dMessage {
        enqueued_time: NOW + Duration::seconds(5),
        ..third
    };
    store
        .enqueue_c2d(later, 2)
        .await
        .expect("the expired message does not count");
    store.purge_c2d_queue(&small, NOW).await.expect("clean up");
}

async fn unknown_devices_have_no_queue(store: &dyn Store) {
    let ghost = device_id("c2d-ghost");
    let expected = Err(StoreError::NotFound(IdentityKey::device(ghost.clone())));
    assert_eq!(
        store
            .enqueue_c2d(
                new_message(
                    &ghost,
                    message("m", DeliveryAcknowledgement::None),
                    NOW + Duration::hours(1)
                ),
                AZURE_MAX_QUEUE_DEPTH
            )
            .await
            .map(|_| ()),
        expected
    );
    assert_eq!(
        store.purge_c2d_queue(&ghost, NOW).await.map(|_| ()),
        expected
    );
    assert_eq!(
        store
            .pending_c2d_for_device(&ghost, None, 10, NOW)
            .await
            .expect("pending"),
        vec![]
    );
}

async fn messages_are_pending_in_order_with_their_properties(store: &dyn Store) {
    let device = create_device(store, "c2d-order").await;
    let other = create_device(store, "c2d-order-other").await;
    let rich = C2dMessage {
        properties: C2dProperties {
            message_id: "rich".into(),
            correlation_id: Some("corr".into()),
            user_id: Some("ops".into()),
            content_type: Some("application/octet-stream".into()),
            content_encoding: Some("binary".into()),
            ack: DeliveryAcknowledgement::Full,
            expiry_time_utc: Some(NOW + Duration::minutes(30)),
        },
        application_properties: BTreeMap::from([
            ("Priority".to_owned(), Some("high".to_owned())),
            ("flag".to_owned(), None),
        ]),
        body: vec![0, 159, 146, 150, 255],
    };
    let first = store
        .enqueue_c2d(
            new_message(&device, rich.clone(), NOW + Duration::minutes(30)),
            AZURE_MAX_QUEUE_DEPTH,
        )
        .await
        .expect("enqueue");
    assert_eq!(first.message, rich);
    assert_eq!(first.delivery_count, 0);
    assert_eq!(first.lock, None);
    send(store, &other, "elsewhere", DeliveryAcknowledgement::None).await;
    let second = send(store, &device, "second", DeliveryAcknowledgement::None).await;
    let third = send(store, &device, "third", DeliveryAcknowledgement::None).await;
    assert!(first.sequence_number < second.sequence_number);
    assert!(second.sequence_number < third.sequence_number);

    let pending = store
        .pending_c2d_for_device(&device, None, 10, NOW)
        .await
        .expect("pending");
    assert_eq!(pending, vec![first.clone(), second.clone(), third.clone()]);
    // Keyset paging: a connection asks for what came after the last message it delivered.
    assert_eq!(
        store
            .pending_c2d_for_device(&device, Some(first.sequence_number), 1, NOW)
            .await
            .expect("pending"),
        vec![second.clone()]
    );
    assert_eq!(
        store
            .pending_c2d_for_device(&device, Some(third.sequence_number), 10, NOW)
            .await
            .expect("pending"),
        vec![]
    );
    // Past its expiry a message is no longer pending, even before the sweep removes it.
    assert_eq!(
        pending_ids(store, &device, NOW + Duration::minutes(30)).await,
        ["second", "third"]
    );
    for device in [&device, &other] {
        store.purge_c2d_queue(device, NOW).await.expect("clean up");
    }
    drain_feedback(store, NOW).await;
}

async fn completing_writes_success_feedback_when_asked(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    let device = create_device(store, "c2d-complete").await;
    let other = create_device(store, "c2d-complete-other").await;
    let mut sent = Vec::new();
    for (id, ack) in [
        ("ack-none", DeliveryAcknowledgement::None),
        ("ack-positive", DeliveryAcknowledgement::Positive),
        ("ack-negative", DeliveryAcknowledgement::Negative),
        ("ack-full", DeliveryAcknowledgement::Full),
    ] {
        sent.push(send(store, &device, id, ack).await);
    }
    let completed_at = NOW + Duration::seconds(3);
    for queued in &sent {
        let receipt = C2dReceipt::Sequence(queued.sequence_number);
        // Another device cannot complete it.
        assert_eq!(
            store
                .complete_c2d(&other, receipt.clone(), completed_at)
                .await,
            Err(StoreError::C2dMessageLockLost {
                device_id: other.clone()
            })
        );
        store
            .complete_c2d(&device, receipt.clone(), completed_at)
            .await
            .expect("complete");
        assert_eq!(
            store.complete_c2d(&device, receipt, completed_at).await,
            Err(StoreError::C2dMessageLockLost {
                device_id: device.clone()
            }),
            "a second PUBACK finds nothing"
        );
    }
    assert_eq!(
        pending_ids(store, &device, completed_at).await,
        Vec::<String>::new()
    );
    assert_eq!(
        drain_feedback(store, completed_at).await,
        vec![
            feedback(
                "ack-positive",
                FeedbackStatusCode::Success,
                &device,
                completed_at
            ),
            feedback(
                "ack-full",
                FeedbackStatusCode::Success,
                &device,
                completed_at
            ),
        ]
    );
}

async fn https_receives_lock_and_settle_by_lock_token(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    let device = create_device(store, "c2d-https").await;
    send(store, &device, "h1", DeliveryAcknowledgement::Negative).await;
    send(store, &device, "h2", DeliveryAcknowledgement::Full).await;

    let first_token = fresh_token();
    let first = store
        .receive_c2d(&device, first_token.clone(), AZURE_LOCK_DURATION, NOW)
        .await
        .expect("receive")
        .expect("a message");
    assert_eq!(first.message.properties.message_id, "h1");
    let lock = first.lock.clone().expect("locked");
    assert_eq!(lock.token, first_token);
    assert_eq!(lock.locked_until, NOW + AZURE_LOCK_DURATION);
    // Invisible while locked: neither pending for MQTT nor received twice.
    assert_eq!(pending_ids(store, &device, NOW).await, ["h2"]);
    let second_token = fresh_token();
    let second = store
        .receive_c2d(&device, second_token.clone(), AZURE_LOCK_DURATION, NOW)
        .await
        .expect("receive")
        .expect("a message");
    assert_eq!(second.message.properties.message_id, "h2");
    assert_eq!(
        store
            .receive_c2d(&device, fresh_token(), AZURE_LOCK_DURATION, NOW)
            .await
            .expect("receive"),
        None
    );

    // Settling needs the lock's own token.
    let lock_lost = Err(StoreError::C2dMessageLockLost {
        device_id: device.clone(),
    });
    assert_eq!(
        store
            .reject_c2d(&device, C2dReceipt::Lock(fresh_token()), NOW)
            .await,
        lock_lost
    );
    store
        .reject_c2d(&device, C2dReceipt::Lock(first_token.clone()), NOW)
        .await
        .expect("reject");
    assert_eq!(
        store
            .complete_c2d(&device, C2dReceipt::Lock(first_token), NOW)
            .await,
        lock_lost
    );

    // A lock that ran out is lost, and the message is delivered again under a new one.
    let after_lock = NOW + AZURE_LOCK_DURATION + Duration::seconds(1);
    assert_eq!(pending_ids(store, &device, after_lock).await, ["h2"]);
    assert_eq!(
        store
            .complete_c2d(&device, C2dReceipt::Lock(second_token.clone()), after_lock)
            .await,
        lock_lost
    );
    let third_token = fresh_token();
    let again = store
        .receive_c2d(
            &device,
            third_token.clone(),
            AZURE_LOCK_DURATION,
            after_lock,
        )
        .await
        .expect("receive")
        .expect("delivered again");
    assert_eq!(again.sequence_number, second.sequence_number);
    assert_eq!(again.delivery_count, 0, "a lock running out is no abandon");
    store
        .complete_c2d(&device, C2dReceipt::Lock(third_token), after_lock)
        .await
        .expect("complete");
    assert_eq!(
        drain_feedback(store, after_lock).await,
        vec![
            feedback("h1", FeedbackStatusCode::Rejected, &device, NOW),
            feedback("h2", FeedbackStatusCode::Success, &device, after_lock),
        ]
    );
}

async fn abandoning_counts_deliveries_and_dead_letters_at_the_limit(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    let device = create_device(store, "c2d-abandon").await;
    let queued = send(store, &device, "a1", DeliveryAcknowledgement::Negative).await;
    for expected in 1..=2 {
        let token = fresh_token();
        store
            .receive_c2d(&device, token.clone(), AZURE_LOCK_DURATION, NOW)
            .await
            .expect("receive")
            .expect("a message");
        assert_eq!(
            store
                .abandon_c2d(&device, C2dReceipt::Lock(token), 3, NOW)
                .await,
            Ok(C2dAbandoned::Requeued {
                delivery_count: expected
            })
        );
        let pending = store
            .pending_c2d_for_device(&device, None, 10, NOW)
            .await
            .expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].delivery_count, expected);
        assert_eq!(pending[0].lock, None);
    }
    assert_eq!(
        store
            .abandon_c2d(
                &device,
                C2dReceipt::Sequence(queued.sequence_number),
                3,
                NOW
            )
            .await,
        Ok(C2dAbandoned::DeadLettered)
    );
    assert_eq!(pending_ids(store, &device, NOW).await, Vec::<String>::new());
    assert_eq!(
        drain_feedback(store, NOW).await,
        vec![feedback(
            "a1",
            FeedbackStatusCode::DeliveryCountExceeded,
            &device,
            NOW
        )]
    );
}

async fn expired_messages_leave_with_feedback(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    let device = create_device(store, "c2d-expiry").await;
    let expiry = NOW + Duration::seconds(10);
    for (id, ack) in [
        ("x-none", DeliveryAcknowledgement::None),
        ("x-positive", DeliveryAcknowledgement::Positive),
        ("x-negative", DeliveryAcknowledgement::Negative),
        ("x-full", DeliveryAcknowledgement::Full),
    ] {
        store
            .enqueue_c2d(new_message(&device, message(id, ack), expiry), 10)
            .await
            .expect("enqueue");
    }
    send(store, &device, "x-lives", DeliveryAcknowledgement::Full).await;
    assert_eq!(
        store
            .expire_due_c2d(NOW + Duration::seconds(5), AZURE_FEEDBACK_TTL)
            .await,
        Ok(C2dExpired::default())
    );
    let swept_at = NOW + Duration::seconds(12);
    let expired = store
        .expire_due_c2d(swept_at, AZURE_FEEDBACK_TTL)
        .await
        .expect("expire");
    assert_eq!(expired.messages, 4);
    assert_eq!(
        store.expire_due_c2d(swept_at, AZURE_FEEDBACK_TTL).await,
        Ok(C2dExpired::default())
    );
    assert_eq!(pending_ids(store, &device, NOW).await, ["x-lives"]);
    // Timed at the expiry, not at the sweep.
    assert_eq!(
        drain_feedback(store, swept_at).await,
        vec![
            feedback("x-negative", FeedbackStatusCode::Expired, &device, expiry),
            feedback("x-full", FeedbackStatusCode::Expired, &device, expiry),
        ]
    );
    store.purge_c2d_queue(&device, NOW).await.expect("clean up");
    drain_feedback(store, NOW).await;
}

async fn purging_empties_one_queue_with_purged_feedback(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    let device = create_device(store, "c2d-purge").await;
    let other = create_device(store, "c2d-purge-other").await;
    send(store, &device, "p-none", DeliveryAcknowledgement::None).await;
    send(
        store,
        &device,
        "p-positive",
        DeliveryAcknowledgement::Positive,
    )
    .await;
    send(
        store,
        &device,
        "p-negative",
        DeliveryAcknowledgement::Negative,
    )
    .await;
    send(store, &other, "p-kept", DeliveryAcknowledgement::Full).await;
    assert_eq!(store.purge_c2d_queue(&device, NOW).await, Ok(3));
    assert_eq!(store.purge_c2d_queue(&device, NOW).await, Ok(0));
    assert_eq!(pending_ids(store, &device, NOW).await, Vec::<String>::new());
    assert_eq!(pending_ids(store, &other, NOW).await, ["p-kept"]);
    assert_eq!(
        drain_feedback(store, NOW).await,
        vec![feedback(
            "p-negative",
            FeedbackStatusCode::Purged,
            &device,
            NOW
        )]
    );
    store.purge_c2d_queue(&other, NOW).await.expect("clean up");
    drain_feedback(store, NOW).await;
}

async fn deleting_a_device_deletes_its_queue_and_feedback(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    let device = create_device(store, "c2d-deleted").await;
    let survivor = create_device(store, "c2d-survivor").await;
    let done = send(store, &device, "d-done", DeliveryAcknowledgement::Full).await;
    let last = send(store, &device, "d-waiting", DeliveryAcknowledgement::Full).await;
    let kept = send(store, &survivor, "s-done", DeliveryAcknowledgement::Full).await;
    for (owner, queued) in [(&device, &done), (&survivor, &kept)] {
        store
            .complete_c2d(owner, C2dReceipt::Sequence(queued.sequence_number), NOW)
            .await
            .expect("complete");
    }
    store
        .delete_identity(&IdentityKey::device(device.clone()), IfMatch::Any)
        .await
        .expect("delete device");
    assert_eq!(
        outcomes(&drain_feedback(store, NOW).await),
        vec![("s-done".to_owned(), FeedbackStatusCode::Success)],
        "the deleted device's pending feedback went with it"
    );
    // A device created again under the same id starts with an empty queue, and sequence numbers are never
    // reused.
    create_device(store, "c2d-deleted").await;
    assert_eq!(pending_ids(store, &device, NOW).await, Vec::<String>::new());
    let fresh = send(store, &device, "d-new", DeliveryAcknowledgement::None).await;
    assert!(fresh.sequence_number > last.sequence_number.max(kept.sequence_number));
    assert_eq!(
        store
            .complete_c2d(&device, C2dReceipt::Sequence(last.sequence_number), NOW)
            .await,
        Err(StoreError::C2dMessageLockLost {
            device_id: device.clone()
        })
    );
    store.purge_c2d_queue(&device, NOW).await.expect("clean up");
}

/// Completes `ids` on a fresh device with `positive` acks: one `Success` record each, in this order.
async fn make_feedback(store: &dyn Store, name: &str, ids: &[&str]) -> DeviceId {
    let device = create_device(store, name).await;
    for id in ids {
        let queued = send(store, &device, id, DeliveryAcknowledgement::Positive).await;
        store
            .complete_c2d(&device, C2dReceipt::Sequence(queued.sequence_number), NOW)
            .await
            .expect("complete");
    }
    device
}

fn ids(records: &[FeedbackRecord]) -> Vec<&str> {
    records
        .iter()
        .map(|record| record.original_message_id.as_str())
        .collect()
}

async fn feedback_batches_are_handed_out_once(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    make_feedback(store, "c2d-feedback", &["f1", "f2", "f3", "f4", "f5"]).await;
    let mut batches = Vec::new();
    while let Some(batch) = store
        .receive_c2d_feedback(feedback_request(NOW, 2))
        .await
        .expect("receive")
    {
        assert_eq!(batch.locked_until, NOW + AZURE_FEEDBACK_LOCK_DURATION);
        batches.push(batch);
    }
    let handed_out: Vec<Vec<&str>> = batches.iter().map(|batch| ids(&batch.records)).collect();
    assert_eq!(handed_out, [vec!["f1", "f2"], vec!["f3", "f4"], vec!["f5"]]);
    let [first, second, third] = batches.as_slice() else {
        panic!("three batches");
    };

    // Completed once; a second completion or an abandon finds no lock.
    store
        .complete_c2d_feedback(&first.lock_token, NOW)
        .await
        .expect("complete");
    let lost = Err(StoreError::FeedbackLockLost(first.lock_token.clone()));
    assert_eq!(
        store.complete_c2d_feedback(&first.lock_token, NOW).await,
        lost
    );
    assert_eq!(
        store.abandon_c2d_feedback(&first.lock_token, NOW).await,
        lost
    );

    // Abandoned: handed out again, under a new lock.
    store
        .abandon_c2d_feedback(&second.lock_token, NOW)
        .await
        .expect("abandon");
    let again = store
        .receive_c2d_feedback(feedback_request(NOW, 10))
        .await
        .expect("receive")
        .expect("the abandoned batch");
    assert_eq!(ids(&again.records), ["f3", "f4"]);
    assert_eq!(
        store.complete_c2d_feedback(&second.lock_token, NOW).await,
        Err(StoreError::FeedbackLockLost(second.lock_token.clone()))
    );
    store
        .complete_c2d_feedback(&again.lock_token, NOW)
        .await
        .expect("complete");

    // A lock that ran out is lost, and its records are handed out again.
    let after_lock = NOW + AZURE_FEEDBACK_LOCK_DURATION;
    assert_eq!(
        store
            .complete_c2d_feedback(&third.lock_token, after_lock)
            .await,
        Err(StoreError::FeedbackLockLost(third.lock_token.clone()))
    );
    assert_eq!(ids(&drain_feedback(store, after_lock).await), ["f5"]);
    assert_eq!(
        store
            .receive_c2d_feedback(feedback_request(after_lock, 10))
            .await,
        Ok(None)
    );
}

async fn old_or_overdelivered_feedback_is_dropped(store: &dyn Store) {
    drain_feedback(store, NOW).await;
    make_feedback(store, "c2d-feedback-limits", &["o1", "o2"]).await;
    // Handed out twice with a limit of two: dropped instead of a third time.
    for _ in 0..2 {
        let batch = store
            .receive_c2d_feedback(ReceiveFeedback {
                max_delivery_count: 2,
                ..feedback_request(NOW, 1)
            })
            .await
            .expect("receive")
            .expect("o1");
        assert_eq!(ids(&batch.records), ["o1"]);
        store
            .abandon_c2d_feedback(&batch.lock_token, NOW)
            .await
            .expect("abandon");
    }
    let next = store
        .receive_c2d_feedback(ReceiveFeedback {
            max_delivery_count: 2,
            ..feedback_request(NOW, 10)
        })
        .await
        .expect("receive")
        .expect("o2");
    assert_eq!(ids(&next.records), ["o2"]);
    store
        .abandon_c2d_feedback(&next.lock_token, NOW)
        .await
        .expect("abandon");
    // Older than the TTL: the sweep drops it (and a receive would not hand it out).
    let late = NOW + AZURE_FEEDBACK_TTL;
    assert_eq!(
        store
            .receive_c2d_feedback(ReceiveFeedback {
                ttl: AZURE_FEEDBACK_TTL + Duration::seconds(1),
                ..feedback_request(late, 10)
            })
            .await
            .map(|batch| batch.map(|batch| ids(&batch.records).join(","))),
        Ok(Some("o2".to_owned())),
        "younger than a longer TTL"
    );
    let expired = store
        .expire_due_c2d(late, AZURE_FEEDBACK_TTL)
        .await
        .expect("expire");
    assert_eq!(expired.feedback_records, 1);
    assert_eq!(drain_feedback(store, late).await, vec![]);
}

async fn concurrent_sends_never_exceed_the_limit(store: &Arc<dyn Store>) {
    let device = create_device(&**store, "c2d-race").await;
    let mut tasks = Vec::new();
    for index in 0..80 {
        let store = Arc::clone(store);
        let device = device.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue_c2d(
                    new_message(
                        &device,
                        message(&format!("r{index}"), DeliveryAcknowledgement::None),
                        NOW + Duration::hours(1),
                    ),
                    AZURE_MAX_QUEUE_DEPTH,
                )
                .await
        }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("task ran") {
            Ok(_) => accepted += 1,
            Err(StoreError::C2dQueueFull { .. }) => refused += 1,
            Err(error) => panic!("unexpected {error}"),
        }
    }
    assert_eq!((accepted, refused), (AZURE_MAX_QUEUE_DEPTH, 30));
    assert_eq!(
        pending_ids(&**store, &device, NOW).await.len(),
        AZURE_MAX_QUEUE_DEPTH
    );
    store.purge_c2d_queue(&device, NOW).await.expect("clean up");
}

async fn queues_and_feedback_survive_reopening(factory: &dyn StoreFactory) {
    let (device, queued) = {
        let store = factory.open();
        drain_feedback(&*store, NOW).await;
        let device = make_feedback(&*store, "c2d-persist", &["done"]).await;
        let mut waiting = message("waiting", DeliveryAcknowledgement::Full);
        waiting.body = vec![0, 1, 2, 254, 255];
        waiting.application_properties.insert("bare".into(), None);
        let queued = store
            .enqueue_c2d(
                new_message(&device, waiting, NOW + Duration::minutes(5)),
                AZURE_MAX_QUEUE_DEPTH,
            )
            .await
            .expect("enqueue");
        (device, queued)
    };
    let store = factory.open();
    assert_eq!(
        store
            .pending_c2d_for_device(&device, None, 10, NOW)
            .await
            .expect("pending"),
        vec![queued.clone()]
    );
    assert_eq!(
        drain_feedback(&*store, NOW).await,
        vec![feedback("done", FeedbackStatusCode::Success, &device, NOW)]
    );
    // A message delivered before a restart but never acknowledged is still there to be completed.
    store
        .complete_c2d(&device, C2dReceipt::Sequence(queued.sequence_number), NOW)
        .await
        .expect("complete after reopening");
    assert_eq!(
        outcomes(&drain_feedback(&*store, NOW).await),
        vec![("waiting".to_owned(), FeedbackStatusCode::Success)]
    );
}
