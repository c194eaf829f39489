//! Conformance checks of the audit log: appends are durable and ordered, filters combine, pages walk
//! backwards without gaps or repeats, and trimming keeps what retention asks for.

use std::collections::BTreeSet;
use std::sync::Arc;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::StoreFactory;
use crate::{AuditFilter, NewAuditRecord, Store};

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

pub(super) async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    records_round_trip_with_increasing_sequences(&*store).await;
    filters_combine_and_pages_walk_backwards(&*store).await;
    concurrent_appends_get_distinct_sequences(&store).await;
    trimming_removes_old_and_surplus_records(&*store).await;
    drop(store);
    records_survive_reopening(factory).await;
}

fn record(operation: &str, target: &str, time: OffsetDateTime) -> NewAuditRecord {
    NewAuditRecord {
        time,
        policy: Some("registryReadWrite".into()),
        operation: operation.into(),
        target: Some(target.into()),
        status: 200,
        error_code: None,
        peer: Some("127.0.0.1:50000".into()),
    }
}

fn filter(limit: usize) -> AuditFilter {
    AuditFilter {
        limit,
        ..AuditFilter::default()
    }
}

async fn records_round_trip_with_increasing_sequences(store: &dyn Store) {
    let ok = record("conformance.roundTrip", "audit-a", NOW);
    let failed = NewAuditRecord {
        policy: None,
        status: 401,
        error_code: Some("IotHubUnauthorizedAccess".into()),
        peer: None,
        target: None,
        ..record("conformance.roundTrip", "", NOW + Duration::milliseconds(1))
    };
    let first = store.append_audit(ok.clone()).await.expect("append");
    let second = store.append_audit(failed.clone()).await.expect("append");
    assert!(second > first, "sequences increase: {first} then {second}");
    let page = store
        .list_audit(AuditFilter {
            operation: Some("conformance.roundTrip".into()),
            ..filter(10)
        })
        .await
        .expect("list");
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].sequence, second, "newest first");
    assert_eq!(page[0].record, failed);
    assert_eq!(page[1].sequence, first);
    assert_eq!(page[1].record, ok);
}

async fn filters_combine_and_pages_walk_backwards(store: &dyn Store) {
    let base = NOW + Duration::hours(1);
    for index in 0..25i64 {
        let target = if index % 2 == 0 {
            "audit-even"
        } else {
            "audit-odd"
        };
        let mut item = record(
            "conformance.paging",
            target,
            base + Duration::seconds(index),
        );
        if index % 5 == 0 {
            item.policy = Some("service".into());
        }
        store.append_audit(item).await.expect("append");
    }
    let only = |page: &[crate::AuditRecord]| -> Vec<i64> {
        page.iter()
            .map(|item| (item.record.time - base).whole_seconds())
            .collect()
    };
    // Paging: 25 records in pages of 10, no gaps, no repeats, newest first.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_audit(AuditFilter {
                operation: Some("conformance.paging".into()),
                before,
                ..filter(10)
            })
            .await
            .expect("list");
        seen.extend(only(&page));
        match page.last() {
            Some(last) if page.len() == 10 => before = Some(last.sequence),
            _ => break,
        }
    }
    assert_eq!(seen, (0..25).rev().collect::<Vec<_>>());
    // Target, policy and a time window together.
    let page = store
        .list_audit(AuditFilter {
            operation: Some("conformance.paging".into()),
            target: Some("audit-even".into()),
            policy: Some("service".into()),
            from: Some(base + Duration::seconds(5)),
            to: Some(base + Duration::seconds(20)),
            ..filter(100)
        })
        .await
        .expect("list");
    assert_eq!(only(&page), vec![10], "even, multiple of 5, in [5, 20)");
    let none = store
        .list_audit(AuditFilter {
            target: Some("audit-nobody".into()),
            ..filter(100)
        })
        .await
        .expect("list");
    assert!(none.is_empty());
}

async fn concurrent_appends_get_distinct_sequences(store: &Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for index in 0..50 {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(record(
                    "conformance.concurrent",
                    &format!("audit-{index}"),
                    NOW,
                ))
                .await
                .expect("append")
        }));
    }
    let mut sequences = BTreeSet::new();
    for task in tasks {
        sequences.insert(task.await.expect("task"));
    }
    assert_eq!(sequences.len(), 50);
    let page = store
        .list_audit(AuditFilter {
            operation: Some("conformance.concurrent".into()),
            ..filter(100)
        })
        .await
        .expect("list");
    assert_eq!(page.len(), 50);
}

async fn trimming_removes_old_and_surplus_records(store: &dyn Store) {
    // Everything written so far is at or after NOW; nothing is older than NOW and the count is generous.
    assert_eq!(store.trim_audit(NOW, 1_000_000).await.expect("trim"), 0);
    let old = NOW - Duration::days(100);
    for _ in 0..3 {
        store
            .append_audit(record("conformance.old", "audit-old", old))
            .await
            .expect("append");
    }
    let trimmed = store
        .trim_audit(NOW - Duration::days(90), 1_000_000)
        .await
        .expect("trim");
    assert_eq!(trimmed, 3, "the records older than the cut-off go");
    let left = store
        .list_audit(AuditFilter {
            operation: Some("conformance.old".into()),
            ..filter(10)
        })
        .await
        .expect("list");
    assert!(left.is_empty());
    // Count retention: keep the newest 5.
    let trimmed = store.trim_audit(old, 5).await.expect("trim");
    assert!(trimmed > 0);
    let all = store.list_audit(filter(100)).await.expect("list");
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(store.trim_audit(old, 5).await.expect("trim"), 0);
}

async fn records_survive_reopening(factory: &dyn StoreFactory) {
    let store = factory.open();
    let sequence = store
        .append_audit(record("conformance.reopen", "audit-reopen", NOW))
        .await
        .expect("append");
    drop(store);
    let store = factory.open();
    let page = store
        .list_audit(AuditFilter {
            operation: Some("conformance.reopen".into()),
            ..filter(10)
        })
        .await
        .expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].sequence, sequence);
    let next = store
        .append_audit(record("conformance.reopen", "audit-reopen", NOW))
        .await
        .expect("append");
    assert!(
        next > sequence,
        "sequences are never reused across restarts"
    );
}
