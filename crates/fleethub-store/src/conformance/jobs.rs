//! Conformance checks of jobs and the per-target records of their executions.

use fleethub_core::executor::{
    Execution, ExecutionPolicy, Outcome, Statistics, TargetError, TargetRecord, TargetStatus,
};
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::ids::{DeviceId, JobId, ModuleId};
use fleethub_protocol::jobs::{JobStatus, JobType};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::StoreFactory;
use crate::{ChangeFilter, ChangeOperation, ChangeRecord, JobFilter, JobRecord, Store, StoreError};

const NOW: OffsetDateTime = datetime!(2026-05-01 10:00 UTC);

/// Targets of the big job: enough for several chunks of `JOB_TARGET_CHUNK`.
const BIG_JOB_TARGETS: usize = 10_000;

pub(super) async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    jobs_are_created_read_updated_and_listed(&*store).await;
    unfinished_jobs_are_listed_for_resuming(&*store).await;
    many_target_records_are_saved_in_chunks_and_paged_in_device_order(&*store).await;
    target_records_are_updated_one_by_one_and_counted(&*store).await;
    records_of_a_missing_job_are_refused(&*store).await;
    deleting_a_job_deletes_its_records(&*store).await;
    purging_deletes_only_jobs_finished_before_the_cutoff(&*store).await;
    an_execution_restores_from_its_stored_records(&*store).await;
    job_progress_is_appended_to_the_change_feed(&*store).await;
    drop(store);
    jobs_and_records_survive_reopening(factory).await;
}

fn job_id(id: &str) -> JobId {
    id.parse().expect("test job ids are valid")
}

fn device(id: &str) -> IdentityKey {
    IdentityKey::device(id.parse::<DeviceId>().expect("test ids are valid"))
}

fn at(seconds: i64) -> OffsetDateTime {
    NOW + time::Duration::seconds(seconds)
}

fn job(id: &str, job_type: JobType, status: JobStatus) -> JobRecord {
    JobRecord {
        job_id: job_id(id),
        job_type,
        status,
        request: json!({
            "jobId": id,
            "type": job_type.as_str(),
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 1}},
            "queryCondition": "tags.site = 'a'",
            "maxExecutionTimeInSeconds": 3600
        }),
        created_time: NOW,
        start_time: None,
        end_time: None,
        failure_reason: None,
        status_message: None,
        statistics: Statistics::default(),
    }
}

fn pending(key: IdentityKey) -> TargetRecord {
    TargetRecord {
        target: key,
        status: TargetStatus::Pending,
        attempts: 0,
        created: NOW,
        started: None,
        finished: None,
        last_updated: NOW,
        outcome: None,
        error: None,
    }
}

async fn all_targets(store: &dyn Store, job: &JobId, page: usize) -> Vec<TargetRecord> {
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let batch = store
            .list_job_targets(job, after.clone(), page)
            .await
            .expect("list job targets");
        assert!(batch.len() <= page);
        let done = batch.len() < page;
        after = batch.last().map(|record| record.target.clone());
        records.extend(batch);
        if done {
            return records;
        }
    }
}

async fn jobs_are_created_read_updated_and_listed(store: &dyn Store) {
    let method = job(
        "conf-list-a",
        JobType::ScheduleDeviceMethod,
        JobStatus::Queued,
    );
    let twin = job(
        "conf-list-b",
        JobType::ScheduleUpdateTwin,
        JobStatus::Scheduled,
    );
    let done = job(
        "conf-list-c",
        JobType::ScheduleDeviceMethod,
        JobStatus::Completed,
    );
    for record in [&method, &twin, &done] {
        store.create_job(record.clone()).await.expect("create job");
    }
    assert_eq!(
        store.create_job(method.clone()).await,
        Err(StoreError::JobAlreadyExists(method.job_id.clone()))
    );
    assert_eq!(
        store.get_job(&method.job_id).await.expect("get job"),
        Some(method.clone()),
        "a read returns exactly what was stored"
    );
    assert_eq!(
        store.get_job(&job_id("conf-none")).await.expect("get job"),
        None
    );

    let mut running = twin.clone();
    running.status = JobStatus::Running;
    running.start_time = Some(at(1));
    running.status_message = Some("running".into());
    running.statistics = Statistics {
        device_count: 2,
        pending: 1,
        running: 1,
        ..Statistics::default()
    };
    store.update_job(running.clone()).await.expect("update job");
    assert_eq!(
        store.get_job(&twin.job_id).await.expect("get job"),
        Some(running.clone())
    );
    let mut finished = running.clone();
    finished.status = JobStatus::Failed;
    finished.end_time = Some(at(2));
    finished.failure_reason = Some("the query condition is invalid".into());
    store
        .update_job(finished.clone())
        .await
        .expect("update job");
    assert_eq!(
        store.get_job(&twin.job_id).await.expect("get job"),
        Some(finished.clone())
    );
    let ghost = job(
        "conf-ghost",
        JobType::ScheduleUpdateTwin,
        JobStatus::Running,
    );
    assert_eq!(
        store.update_job(ghost.clone()).await,
        Err(StoreError::JobNotFound(ghost.job_id.clone()))
    );

    let listed = |filter: JobFilter| async move {
        store
            .list_jobs(filter)
            .await
            .expect("list jobs")
            .into_iter()
            .filter(|job| job.job_id.as_str().starts_with("conf-list-"))
            .map(|job| job.job_id.into_string())
            .collect::<Vec<_>>()
    };
    let all = JobFilter {
        limit: usize::MAX,
        ..JobFilter::default()
    };
    assert_eq!(
        listed(all.clone()).await,
        ["conf-list-a", "conf-list-b", "conf-list-c"]
    );
    assert_eq!(
        listed(JobFilter {
            job_type: Some(JobType::ScheduleDeviceMethod),
            ..all.clone()
        })
        .await,
        ["conf-list-a", "conf-list-c"]
    );
    assert_eq!(
        listed(JobFilter {
            status: Some(JobStatus::Failed),
            ..all.clone()
        })
        .await,
        ["conf-list-b"]
    );
    assert_eq!(
        listed(JobFilter {
            job_type: Some(JobType::ScheduleDeviceMethod),
            status: Some(JobStatus::Completed),
            ..all.clone()
        })
        .await,
        ["conf-list-c"]
    );
    let first_page = store
        .list_jobs(JobFilter {
            after: Some(job_id("conf-list-")),
            limit: 2,
            ..JobFilter::default()
        })
        .await
        .expect("list jobs");
    assert_eq!(first_page.len(), 2);
    assert_eq!(first_page[0], method, "listed jobs are whole records");
    let second_page = store
        .list_jobs(JobFilter {
            after: Some(first_page[1].job_id.clone()),
            limit: 2,
            ..JobFilter::default()
        })
        .await
        .expect("list jobs");
    assert_eq!(
        second_page.first().map(|job| job.job_id.as_str()),
        Some("conf-list-c"),
        "paging continues strictly after the given id"
    );
}

async fn unfinished_jobs_are_listed_for_resuming(store: &dyn Store) {
    let statuses = [
        ("conf-resume-queued", JobStatus::Queued),
        ("conf-resume-scheduled", JobStatus::Scheduled),
        ("conf-resume-running", JobStatus::Running),
        ("conf-resume-enqueued", JobStatus::Enqueued),
        ("conf-resume-completed", JobStatus::Completed),
        ("conf-resume-failed", JobStatus::Failed),
        ("conf-resume-cancelled", JobStatus::Cancelled),
    ];
    for (id, status) in statuses {
        store
            .create_job(job(id, JobType::ScheduleUpdateTwin, status))
            .await
            .expect("create job");
    }
    let unfinished: Vec<String> = store
        .list_unfinished_jobs()
        .await
        .expect("unfinished jobs")
        .into_iter()
        .map(|job| job.job_id.into_string())
        .filter(|id| id.starts_with("conf-resume-"))
        .collect();
    assert_eq!(
        unfinished,
        [
            "conf-resume-enqueued",
            "conf-resume-queued",
            "conf-resume-running",
            "conf-resume-scheduled"
        ]
    );
}

async fn many_target_records_are_saved_in_chunks_and_paged_in_device_order(store: &dyn Store) {
    let big = job_id("conf-big");
    store
        .create_job(job(
            big.as_str(),
            JobType::ScheduleUpdateTwin,
            JobStatus::Running,
        ))
        .await
        .expect("create job");
    // Saved in reverse order: the listing orders by device id, then module id (a device before its modules).
    let mut records: Vec<TargetRecord> = (0..BIG_JOB_TARGETS)
        .rev()
        .map(|number| pending(device(&format!("big-{number:05}"))))
        .collect();
    records.push(pending(IdentityKey::module(
        "big-00000".parse::<DeviceId>().expect("valid"),
        "m".parse::<ModuleId>().expect("valid"),
    )));
    let started = std::time::Instant::now();
    store
        .save_job_targets(&big, records.clone())
        .await
        .expect("save job targets");
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(30),
        "{BIG_JOB_TARGETS} records took {elapsed:?}"
    );
    let listed = all_targets(store, &big, 999).await;
    assert_eq!(listed.len(), BIG_JOB_TARGETS + 1);
    let mut expected = records;
    expected.sort_by(|left, right| left.target.cmp(&right.target));
    assert_eq!(listed[1].target.to_string(), "big-00000/m");
    assert_eq!(listed, expected, "every record, in device order, unchanged");
    assert_eq!(
        store.job_target_statistics(&big).await.expect("statistics"),
        Statistics {
            device_count: BIG_JOB_TARGETS as u64 + 1,
            pending: BIG_JOB_TARGETS as u64 + 1,
            ..Statistics::default()
        }
    );
    // Saving the same records again (a resumed job re-inserting its targets) changes nothing.
    store
        .save_job_targets(&big, listed[..3].to_vec())
        .await
        .expect("save again");
    assert_eq!(
        store
            .job_target_statistics(&big)
            .await
            .expect("statistics")
            .device_count,
        BIG_JOB_TARGETS as u64 + 1
    );
    assert_eq!(
        store
            .list_job_targets(&big, Some(device("big-99999")), 10)
            .await
            .expect("list"),
        [],
        "nothing after the last device"
    );
}

async fn target_records_are_updated_one_by_one_and_counted(store: &dyn Store) {
    let id = job_id("conf-updates");
    store
        .create_job(job(
            id.as_str(),
            JobType::ScheduleDeviceMethod,
            JobStatus::Running,
        ))
        .await
        .expect("create job");
    let names = ["upd-a", "upd-b", "upd-c", "upd-d", "upd-e"];
    store
        .save_job_targets(
            &id,
            names.iter().map(|name| pending(device(name))).collect(),
        )
        .await
        .expect("save job targets");
    let succeeded = TargetRecord {
        status: TargetStatus::Succeeded,
        attempts: 1,
        started: Some(at(1)),
        finished: Some(at(2)),
        last_updated: at(2),
        outcome: Some(json!({"status": 200, "payload": {"result": "rebooted"}})),
        ..pending(device("upd-a"))
    };
    let failed = TargetRecord {
        status: TargetStatus::Failed,
        attempts: 3,
        started: Some(at(1)),
        finished: Some(at(9)),
        last_updated: at(9),
        error: Some(TargetError::new(
            "GatewayTimeout",
            "the device did not answer",
        )),
        ..pending(device("upd-b"))
    };
    let running = TargetRecord {
        status: TargetStatus::Running,
        attempts: 1,
        started: Some(at(3)),
        last_updated: at(3),
        ..pending(device("upd-c"))
    };
    let cancelled = TargetRecord {
        status: TargetStatus::Cancelled,
        finished: Some(at(4)),
        last_updated: at(4),
        ..pending(device("upd-d"))
    };
    for record in [&succeeded, &failed, &running, &cancelled] {
        store
            .save_job_targets(&id, vec![record.clone()])
            .await
            .expect("update one record");
    }
    let listed = all_targets(store, &id, 2).await;
    assert_eq!(
        listed,
        [
            succeeded.clone(),
            failed,
            running,
            cancelled,
            pending(device("upd-e"))
        ]
    );
    assert_eq!(
        store.job_target_statistics(&id).await.expect("statistics"),
        Statistics {
            device_count: 5,
            pending: 1,
            running: 1,
            succeeded: 1,
            failed: 1,
            cancelled: 1,
        }
    );

    // A device's records across jobs.
    let other = job_id("conf-updates-2");
    store
        .create_job(job(
            other.as_str(),
            JobType::ScheduleUpdateTwin,
            JobStatus::Running,
        ))
        .await
        .expect("create job");
    store
        .save_job_targets(&other, vec![pending(device("upd-a"))])
        .await
        .expect("save");
    let of_device = store
        .list_device_job_targets(&"upd-a".parse().expect("valid"))
        .await
        .expect("device job targets");
    assert_eq!(
        of_device,
        [(id, succeeded), (other, pending(device("upd-a")))]
    );
}

async fn records_of_a_missing_job_are_refused(store: &dyn Store) {
    let missing = job_id("conf-missing");
    assert_eq!(
        store
            .save_job_targets(&missing, vec![pending(device("m-a"))])
            .await,
        Err(StoreError::JobNotFound(missing.clone()))
    );
    assert_eq!(
        store
            .list_job_targets(&missing, None, 10)
            .await
            .expect("list"),
        []
    );
    assert_eq!(
        store.delete_job(&missing).await,
        Err(StoreError::JobNotFound(missing.clone()))
    );
}

async fn deleting_a_job_deletes_its_records(store: &dyn Store) {
    let doomed = job_id("conf-delete");
    let kept = job_id("conf-delete-kept");
    for id in [&doomed, &kept] {
        store
            .create_job(job(
                id.as_str(),
                JobType::ScheduleUpdateTwin,
                JobStatus::Completed,
            ))
            .await
            .expect("create job");
    }
    // More than one deletion chunk.
    let records: Vec<TargetRecord> = (0..crate::JOB_TARGET_CHUNK + 5)
        .map(|number| pending(device(&format!("del-{number:05}"))))
        .collect();
    store
        .save_job_targets(&doomed, records.clone())
        .await
        .expect("save");
    store
        .save_job_targets(&kept, records[..3].to_vec())
        .await
        .expect("save");
    store.delete_job(&doomed).await.expect("delete job");
    assert_eq!(store.get_job(&doomed).await.expect("get"), None);
    assert_eq!(
        store
            .list_job_targets(&doomed, None, 10)
            .await
            .expect("list"),
        []
    );
    assert_eq!(
        store
            .job_target_statistics(&doomed)
            .await
            .expect("statistics"),
        Statistics::default()
    );
    assert_eq!(
        store
            .job_target_statistics(&kept)
            .await
            .expect("statistics")
            .device_count,
        3,
        "other jobs keep their records"
    );
    assert_eq!(
        store.delete_job(&doomed).await,
        Err(StoreError::JobNotFound(doomed.clone()))
    );
    assert_eq!(
        store.save_job_targets(&doomed, records[..1].to_vec()).await,
        Err(StoreError::JobNotFound(doomed.clone())),
        "a runner still writing for a deleted job is refused"
    );
}

async fn purging_deletes_only_jobs_finished_before_the_cutoff(store: &dyn Store) {
    let ended = |id: &str, status: JobStatus, end: Option<i64>| JobRecord {
        end_time: end.map(at),
        ..job(id, JobType::ScheduleDeviceMethod, status)
    };
    // Every other job of the suite ends (or was created) at NOW or later, so this cutoff spares them.
    let old_completed = ended("conf-purge-old", JobStatus::Completed, Some(-2000));
    let old_cancelled = ended(
        "conf-purge-old-cancelled",
        JobStatus::Cancelled,
        Some(-1500),
    );
    let recent = ended("conf-purge-recent", JobStatus::Failed, Some(-500));
    let old_but_running = ended("conf-purge-running", JobStatus::Running, None);
    for record in [&old_completed, &old_cancelled, &recent, &old_but_running] {
        store.create_job(record.clone()).await.expect("create job");
        store
            .save_job_targets(&record.job_id, vec![pending(device("purge-a"))])
            .await
            .expect("save");
    }
    let purged = store.purge_jobs(at(-1000)).await.expect("purge");
    assert_eq!(purged, 2);
    for gone in [&old_completed, &old_cancelled] {
        assert_eq!(store.get_job(&gone.job_id).await.expect("get"), None);
        assert_eq!(
            store
                .list_job_targets(&gone.job_id, None, 10)
                .await
                .expect("list"),
            []
        );
    }
    for kept in [&recent, &old_but_running] {
        assert!(store.get_job(&kept.job_id).await.expect("get").is_some());
        assert_eq!(
            store
                .list_job_targets(&kept.job_id, None, 10)
                .await
                .expect("list")
                .len(),
            1
        );
    }
    assert_eq!(
        store.purge_jobs(at(-1000)).await.expect("purge again"),
        0,
        "nothing left to purge"
    );
}

async fn an_execution_restores_from_its_stored_records(store: &dyn Store) {
    let id = job_id("conf-run");
    store
        .create_job(job(
            id.as_str(),
            JobType::ScheduleDeviceMethod,
            JobStatus::Running,
        ))
        .await
        .expect("create job");
    let targets: Vec<IdentityKey> = ["run-a", "run-b", "run-c", "run-d"]
        .into_iter()
        .map(device)
        .collect();
    let policy = ExecutionPolicy {
        max_concurrency: 2,
        max_attempts: 2,
        ..ExecutionPolicy::default()
    };
    let mut execution = Execution::new(targets, policy.clone(), NOW);
    store
        .save_job_targets(&id, execution.records().collect())
        .await
        .expect("insert pending records");
    let step = execution.poll(NOW);
    store
        .save_job_targets(&id, step.records)
        .await
        .expect("write the starts ahead");
    let first = &step.start[0];
    let record = execution
        .on_outcome(
            &first.target,
            first.number,
            Outcome::Succeeded(json!({"status": 200})),
            at(1),
        )
        .expect("running");
    store
        .save_job_targets(&id, vec![record])
        .await
        .expect("save outcome");
    // The hub stops here, with run-b's attempt out.
    let stored = all_targets(store, &id, 100).await;
    assert_eq!(Statistics::of(&stored), execution.statistics());
    assert_eq!(
        store.job_target_statistics(&id).await.expect("statistics"),
        execution.statistics()
    );
    let mut restored = Execution::restore(stored, policy, at(10));
    let statistics = restored.statistics();
    assert_eq!(
        (statistics.succeeded, statistics.pending, statistics.running),
        (1, 3, 0),
        "the interrupted attempt waits for its retry"
    );
    let step = restored.poll(at(10));
    store
        .save_job_targets(&id, step.records)
        .await
        .expect("save");
    let interrupted = store
        .list_job_targets(&id, Some(device("run-a")), 1)
        .await
        .expect("list");
    assert_eq!(interrupted[0].target, device("run-b"));
    assert_eq!(
        interrupted[0].status,
        TargetStatus::Running,
        "retried at once"
    );
    assert_eq!(interrupted[0].attempts, 2);
    assert_eq!(
        store.job_target_statistics(&id).await.expect("statistics"),
        restored.statistics()
    );
}

/// The job's records after `after`, and the newest sequence number.
async fn job_changes(store: &dyn Store, job: &JobId, after: u64) -> Vec<ChangeRecord> {
    store
        .read_changes(after, 1000, ChangeFilter::job(job.clone()))
        .await
        .expect("read the job's changes")
}

async fn job_progress_is_appended_to_the_change_feed(store: &dyn Store) {
    let id = job_id("conf-feed");
    let before = *store.change_notifier().borrow();
    let mut record = job(
        id.as_str(),
        JobType::ScheduleDeviceMethod,
        JobStatus::Queued,
    );
    store.create_job(record.clone()).await.expect("create job");
    let created = job_changes(store, &id, before).await;
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(created[0].operation, ChangeOperation::JobUpdated);
    assert_eq!(
        (created[0].device_id.as_ref(), created[0].module_id.as_ref()),
        (None, None)
    );
    assert_eq!(created[0].job_id.as_ref(), Some(&id));
    assert_eq!(created[0].twin_version, None);
    assert_eq!(created[0].body["jobId"], json!("conf-feed"));
    assert_eq!(created[0].body["type"], json!("scheduleDeviceMethod"));
    assert_eq!(created[0].body["status"], json!("queued"));
    assert_eq!(created[0].body["queryCondition"], json!("tags.site = 'a'"));
    assert_eq!(
        created[0].body["deviceJobStatistics"]["deviceCount"],
        json!(0)
    );
    let mut cursor = created[0].sequence;

    // Frozen targets are pending: nothing to report until the job runs, whose record counts them.
    let module_key = IdentityKey::module(
        "feed-a".parse::<DeviceId>().expect("valid"),
        "m".parse::<ModuleId>().expect("valid"),
    );
    let targets = [device("feed-a"), module_key.clone(), device("feed-b")];
    store
        .save_job_targets(&id, targets.iter().cloned().map(pending).collect())
        .await
        .expect("save targets");
    assert_eq!(job_changes(store, &id, cursor).await, []);
    record.status = JobStatus::Running;
    record.start_time = Some(at(1));
    store.update_job(record.clone()).await.expect("running");
    let running = job_changes(store, &id, cursor).await;
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].body["status"], json!("running"));
    assert_eq!(
        running[0].body["deviceJobStatistics"],
        json!({"deviceCount": 3, "failedCount": 0, "succeededCount": 0, "runningCount": 0, "pendingCount": 3}),
        "the counts of the stored records"
    );
    cursor = running[0].sequence;
    // A write of the runner's statistics alone changes nothing a watcher needs.
    record.statistics.device_count = 3;
    record.statistics.pending = 3;
    store.update_job(record.clone()).await.expect("statistics");
    assert_eq!(job_changes(store, &id, cursor).await, []);

    // Each status change of a target, with the job's counts after it, in one save.
    let started = |key: &IdentityKey| TargetRecord {
        status: TargetStatus::Running,
        attempts: 1,
        started: Some(at(2)),
        last_updated: at(2),
        ..pending(key.clone())
    };
    let succeeded = TargetRecord {
        status: TargetStatus::Succeeded,
        finished: Some(at(3)),
        last_updated: at(3),
        outcome: Some(json!({"status": 200, "payload": {"ok": true}})),
        ..started(&device("feed-a"))
    };
    store
        .save_job_targets(
            &id,
            vec![
                started(&device("feed-a")),
                started(&module_key),
                succeeded.clone(),
            ],
        )
        .await
        .expect("save progress");
    let progress = job_changes(store, &id, cursor).await;
    // `who status pending/running/succeeded` after each record.
    let summary: Vec<String> = progress
        .iter()
        .map(|change| {
            let stats = &change.body["deviceJobStatistics"];
            let who = match (&change.device_id, &change.module_id) {
                (Some(device), Some(module)) => format!("{device}/{module}"),
                (Some(device), None) => device.to_string(),
                (None, _) => "-".to_owned(),
            };
            format!(
                "{who} {} {}/{}/{}",
                change.body["status"].as_str().expect("a status"),
                stats["pendingCount"],
                stats["runningCount"],
                stats["succeededCount"],
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "feed-a running 2/1/0",
            "feed-a/m running 1/2/0",
            "feed-a completed 1/1/1",
        ]
    );
    for change in &progress {
        assert_eq!(change.operation, ChangeOperation::DeviceJobUpdated);
        assert_eq!(change.job_id.as_ref(), Some(&id));
        assert_eq!(change.body["jobId"], json!("conf-feed"));
        assert_eq!(change.body["jobType"], json!("scheduleDeviceMethod"));
        assert_eq!(change.body["deviceJobStatistics"]["deviceCount"], json!(3));
    }
    assert_eq!(progress[2].time, at(3), "the time of the target's change");
    assert_eq!(
        progress[2].body["outcome"],
        json!({"deviceMethodResponse": {"status": 200, "payload": {"ok": true}}})
    );
    assert_eq!(progress[1].body["moduleId"], json!("m"));
    cursor = progress[2].sequence;

    // Saving the same state again (a retried batch) appends nothing.
    store
        .save_job_targets(&id, vec![succeeded.clone()])
        .await
        .expect("save again");
    assert_eq!(job_changes(store, &id, cursor).await, []);

    // The device filter shows the device's records in jobs too; both filters together, one job's.
    let of_device = store
        .read_changes(
            before,
            1000,
            ChangeFilter::device("feed-a".parse().expect("valid")),
        )
        .await
        .expect("read device");
    assert_eq!(of_device.len(), 3);
    assert!(
        of_device
            .iter()
            .all(|change| change.operation == ChangeOperation::DeviceJobUpdated)
    );
    let of_b = store
        .read_changes(
            before,
            1000,
            ChangeFilter {
                device: Some("feed-b".parse().expect("valid")),
                job: Some(id.clone()),
                rollout: None,
            },
        )
        .await
        .expect("read device in job");
    assert_eq!(of_b, [], "feed-b is still pending");
    let everything = store
        .read_changes(before, 1000, ChangeFilter::all())
        .await
        .expect("read all");
    assert!(
        everything
            .iter()
            .all(|change| change.job_id.is_none() || change.job_id.as_ref() == Some(&id)),
        "nothing else wrote jobs meanwhile"
    );
    assert_eq!(everything.len(), 5);

    // Cancelled, then over (its running targets settled): both the status and the end are reported.
    record.status = JobStatus::Cancelled;
    store.update_job(record.clone()).await.expect("cancelled");
    let cancelled_pending = TargetRecord {
        status: TargetStatus::Cancelled,
        finished: Some(at(4)),
        last_updated: at(4),
        ..pending(device("feed-b"))
    };
    let failed = TargetRecord {
        status: TargetStatus::Failed,
        finished: Some(at(5)),
        last_updated: at(5),
        error: Some(TargetError::new("GatewayTimeout", "no answer")),
        ..started(&module_key)
    };
    store
        .save_job_targets(&id, vec![cancelled_pending, failed])
        .await
        .expect("settle");
    record.end_time = Some(at(6));
    store.update_job(record.clone()).await.expect("ended");
    let ending = job_changes(store, &id, cursor).await;
    let operations: Vec<(ChangeOperation, &str)> = ending
        .iter()
        .map(|change| {
            (
                change.operation,
                change.body["status"].as_str().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        operations,
        [
            (ChangeOperation::JobUpdated, "cancelled"),
            (ChangeOperation::DeviceJobUpdated, "canceled"),
            (ChangeOperation::DeviceJobUpdated, "failed"),
            (ChangeOperation::JobUpdated, "cancelled"),
        ]
    );
    assert!(ending[0].body.get("endTime").is_none());
    assert!(ending[3].body["endTime"].is_string());
    assert_eq!(
        ending[3].body["deviceJobStatistics"],
        json!({"deviceCount": 3, "failedCount": 1, "succeededCount": 1, "runningCount": 0, "pendingCount": 0})
    );
    assert_eq!(
        store.job_target_statistics(&id).await.expect("statistics"),
        Statistics {
            device_count: 3,
            succeeded: 1,
            failed: 1,
            cancelled: 1,
            ..Statistics::default()
        },
        "the kept counts are the counted ones"
    );
}

async fn jobs_and_records_survive_reopening(factory: &dyn StoreFactory) {
    let store = factory.open();
    let running = store
        .get_job(&job_id("conf-list-b"))
        .await
        .expect("get")
        .expect("the job survived");
    assert_eq!(running.status, JobStatus::Failed);
    assert_eq!(running.end_time, Some(at(2)));
    let records = all_targets(&*store, &job_id("conf-updates"), 100).await;
    assert_eq!(records.len(), 5);
    assert_eq!(
        records[0].outcome,
        Some(json!({"status": 200, "payload": {"result": "rebooted"}}))
    );
    assert_eq!(
        store
            .job_target_statistics(&job_id("conf-big"))
            .await
            .expect("statistics")
            .device_count,
        BIG_JOB_TARGETS as u64 + 1
    );
    assert!(
        store
            .list_unfinished_jobs()
            .await
            .expect("unfinished")
            .iter()
            .any(|job| job.job_id.as_str() == "conf-run"),
        "a running job is found again to resume"
    );
    store
        .create_job(job(
            "conf-after-reopen",
            JobType::ScheduleUpdateTwin,
            JobStatus::Queued,
        ))
        .await
        .expect("writes work after reopening");
}
