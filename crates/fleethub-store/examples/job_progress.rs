//! Measures what a job's progress costs the SQLite store: a job's targets saved pending (no change records),
//! then every target started and finished in write-ahead batches as the jobs runner saves them, each status
//! change appending its `deviceJobUpdated` record with the job's counts in the same transaction; then, for
//! comparison, the same number of batches saving records whose status does not change (no change records).
//! `cargo run --release -p fleethub-store --example job_progress -- 20000 50`
use std::time::Instant;

use fleethub_core::executor::{Statistics, TargetRecord, TargetStatus};
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::jobs::{JobStatus, JobType};
use fleethub_store::{ChangeFilter, JobRecord, SqliteStore, SqliteStoreOptions, Store};
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let targets: usize = args
        .next()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20_000);
    let batch: usize = args.next().and_then(|text| text.parse().ok()).unwrap_or(50);
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(
        &directory.path().join("bench.db"),
        SqliteStoreOptions::default(),
    )
    .expect("open");
    let now = time::OffsetDateTime::now_utc();
    let job_id: fleethub_protocol::ids::JobId = "bench".parse().expect("valid");
    store
        .create_job(JobRecord {
            job_id: job_id.clone(),
            job_type: JobType::ScheduleDeviceMethod,
            status: JobStatus::Running,
            request: json!({"type": "scheduleDeviceMethod"}),
            created_time: now,
            start_time: Some(now),
            end_time: None,
            failure_reason: None,
            status_message: None,
            statistics: Statistics::default(),
        })
        .await
        .expect("create job");
    let pending: Vec<TargetRecord> = (0..targets)
        .map(|index| TargetRecord {
            target: IdentityKey::device(format!("dev{index:06}").parse().expect("valid")),
            status: TargetStatus::Pending,
            attempts: 0,
            created: now,
            started: None,
            finished: None,
            last_updated: now,
            outcome: None,
            error: None,
        })
        .collect();
    let started = Instant::now();
    store
        .save_job_targets(&job_id, pending.clone())
        .await
        .expect("save pending");
    println!(
        "{targets} pending targets saved in {:?} (no change records)",
        started.elapsed()
    );

    let before = *store.change_notifier().borrow();
    let started = Instant::now();
    for chunk in pending.chunks(batch) {
        let running: Vec<TargetRecord> = chunk
            .iter()
            .map(|record| TargetRecord {
                status: TargetStatus::Running,
                attempts: 1,
                started: Some(now),
                ..record.clone()
            })
            .collect();
        store
            .save_job_targets(&job_id, running.clone())
            .await
            .expect("save running");
        let finished: Vec<TargetRecord> = running
            .into_iter()
            .map(|record| TargetRecord {
                status: TargetStatus::Succeeded,
                finished: Some(now),
                outcome: Some(json!({"status": 200, "payload": {"ok": true}})),
                ..record
            })
            .collect();
        store
            .save_job_targets(&job_id, finished)
            .await
            .expect("save finished");
    }
    let elapsed = started.elapsed();
    let records = store
        .read_changes(before, usize::MAX, ChangeFilter::job(job_id.clone()))
        .await
        .expect("read")
        .len();
    println!(
        "{records} status changes in batches of {batch} in {elapsed:?}: {:.0} changes/s, {:.0} batches/s",
        records as f64 / elapsed.as_secs_f64(),
        (2 * targets).div_ceil(batch) as f64 / elapsed.as_secs_f64()
    );

    let finished = store
        .list_job_targets(&job_id, None, usize::MAX)
        .await
        .expect("list");
    let started = Instant::now();
    for chunk in finished.chunks(batch) {
        for _ in 0..2 {
            store
                .save_job_targets(&job_id, chunk.to_vec())
                .await
                .expect("save again");
        }
    }
    let unchanged = started.elapsed();
    println!(
        "{} records saved unchanged in batches of {batch} in {unchanged:?}: {:.0} records/s",
        2 * targets,
        (2 * targets) as f64 / unchanged.as_secs_f64()
    );
}
