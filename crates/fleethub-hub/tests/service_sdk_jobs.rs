//! The service SDK's jobs and configurations against a real hub over HTTPS: creating, reading, cancelling and
//! querying jobs, following a job to its end from the change feed (`watch_job`, no polling), the job records
//! of `GET /changes?jobId=`, and the configuration calls with their effect on a twin.

#[path = "support/jobs.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::configurations::{
    ConfigurationContent, ConfigurationQueriesTestInput, ConfigurationRequest, MetricQueries,
};
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::ids::{ETag, JobId};
use fleethub_protocol::jobs::{DeviceJobStatus, JobRequest, JobStatus, JobType};
use fleethub_protocol::rest::{CloudToDeviceMethod, Twin, TwinProperties};
use fleethub_service::{
    ChangeStream, JobProgress, JobWatch, ServiceClient, ServiceClientOptions, WatchOptions,
};
use fleethub_testkit::TestHub;
use serde_json::{Map, Value, json};
use support::{Calls, answering_device};
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(30);

fn service(hub: &TestHub, policy: &str) -> ServiceClient {
    let key = hub.policy(policy).primary_key;
    let connection_string = format!(
        "HostName=localhost:{};SharedAccessKeyName={policy};SharedAccessKey={key}",
        hub.hub.https_address.port()
    );
    let options = ServiceClientOptions {
        ca_pem: Some(hub.hub.ca_pem.clone()),
        ..ServiceClientOptions::default()
    };
    ServiceClient::from_connection_string(&connection_string, options).expect("service client")
}

fn job_id(text: &str) -> JobId {
    text.parse().expect("valid job id")
}

fn method_request(id: &str, condition: &str) -> JobRequest {
    let method = CloudToDeviceMethod {
        method_name: "reboot".to_owned(),
        payload: json!({"delay": 0}),
        response_timeout_in_seconds: Some(10),
        connect_timeout_in_seconds: None,
    };
    let mut request = JobRequest::device_method(job_id(id), method, condition);
    request.max_execution_time_in_seconds = Some(600);
    request
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

/// Every update of a watch until it ends (it must, within [`WAIT`]).
async fn follow(mut watch: JobWatch) -> Vec<JobProgress> {
    let mut updates = Vec::new();
    let all = async {
        while let Some(update) = watch.next().await {
            updates.push(update.expect("the watch goes on"));
        }
    };
    tokio::time::timeout(WAIT, all)
        .await
        .expect("the watch ends when the job does");
    updates
}

async fn next_change(stream: &mut ChangeStream) -> ChangeRecord {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a change in time")
        .expect("the stream goes on")
        .expect("no stream error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_job_follows_a_method_job_to_its_end_from_the_change_feed() {
    let hub = TestHub::start().await;
    let client = service(&hub, "iothubowner");
    let calls = Calls::default();
    let port = hub.hub.mqtt_address.port();
    let mut devices = Vec::new();
    for id in ["w1", "w2", "w3"] {
        let record = hub.create_device(id).await;
        devices.push(answering_device(&record, &hub.hub.ca_pem, port, &calls).await);
    }
    let mut job_feed = client
        .watch_changes(WatchOptions {
            job: Some(job_id("watched")),
            after: Some(0),
            ..WatchOptions::default()
        })
        .await
        .expect("watch the job's records");

    // Scheduled a little ahead, so the watch surely starts before the job does.
    let mut request = method_request("watched", "deviceId IN ['w1', 'w2', 'w3']");
    request.start_time = Some(OffsetDateTime::now_utc() + time::Duration::seconds(1));
    let created = client.create_job(&request).await.expect("create");
    assert_eq!(created.status, JobStatus::Queued);
    assert_eq!(created.job_type, JobType::ScheduleDeviceMethod);
    let updates = follow(client.watch_job(&job_id("watched")).await.expect("watch")).await;

    let first = &updates[0];
    assert_eq!(first.sequence, None, "the job as read comes first");
    assert!(
        matches!(first.status(), JobStatus::Queued | JobStatus::Scheduled),
        "{first:?}"
    );
    let last = updates.last().expect("updates");
    assert!(last.is_over());
    assert_eq!(last.status(), JobStatus::Completed);
    assert!(last.job.end_time.is_some());
    let statistics = last.statistics();
    assert_eq!(
        (
            statistics.device_count,
            statistics.succeeded_count,
            statistics.failed_count
        ),
        (3, 3, 0)
    );
    assert!(
        updates[..updates.len() - 1]
            .iter()
            .all(|update| !update.is_over()),
        "only the last update ends the watch"
    );
    // Each device's run and answer came by, with the counts after it.
    let completed: Vec<(String, Value)> = updates
        .iter()
        .filter_map(|update| update.device.as_ref())
        .filter(|device| device.status == DeviceJobStatus::Completed)
        .map(|device| {
            (
                device.device_id.to_string(),
                serde_json::to_value(&device.outcome).expect("serialises"),
            )
        })
        .collect();
    let mut completed_devices: Vec<&str> = completed.iter().map(|(id, _)| id.as_str()).collect();
    completed_devices.sort_unstable();
    assert_eq!(completed_devices, ["w1", "w2", "w3"]);
    assert_eq!(completed[0].1["deviceMethodResponse"]["status"], json!(200));
    assert!(updates.iter().any(|update| {
        update
            .device
            .as_ref()
            .is_some_and(|device| device.status == DeviceJobStatus::Running)
    }));
    let finished: Vec<u64> = updates[1..]
        .iter()
        .map(|update| update.statistics().finished_count())
        .collect();
    assert!(
        finished.windows(2).all(|pair| pair[0] <= pair[1]),
        "records carry durable counts, in order: {finished:?}"
    );
    assert_eq!(calls.total(), 3);

    // The same records through the raw feed: the job's own (no device) and its devices'.
    let mut operations = Vec::new();
    loop {
        let record = next_change(&mut job_feed).await;
        assert_eq!(record.job_id, Some(job_id("watched")));
        let over = record.operation == ChangeOperation::JobUpdated
            && record.body["status"] == json!("completed");
        match record.operation {
            ChangeOperation::JobUpdated => assert_eq!(record.device_id, None),
            other => {
                assert_eq!(other, ChangeOperation::DeviceJobUpdated);
                assert!(record.device_id.is_some());
            }
        }
        operations.push((record.operation, record.body["status"].clone()));
        if over {
            break;
        }
    }
    assert_eq!(
        operations.first(),
        Some(&(ChangeOperation::JobUpdated, json!("queued")))
    );
    let device_records = operations
        .iter()
        .filter(|(operation, _)| *operation == ChangeOperation::DeviceJobUpdated)
        .count();
    assert_eq!(device_records, 6, "running then completed, per device");

    // Watching a job that is over yields it once; an unknown job is refused at once.
    let again = follow(client.watch_job(&job_id("watched")).await.expect("watch")).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].status(), JobStatus::Completed);
    let unknown = client.watch_job(&job_id("nope")).await;
    assert_eq!(
        unknown.err().and_then(|error| error.error_code()),
        Some(ErrorCode::JobNotFound)
    );
    for device in devices {
        device.disconnect().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_twin_job_and_a_job_without_devices_end_the_watch() {
    let hub = TestHub::start().await;
    let client = service(&hub, "iothubowner");
    hub.create_device("t1").await;
    hub.create_device("t2").await;
    let twin = Twin {
        tags: Some(object(json!({"ring": "canary"}))),
        properties: Some(TwinProperties {
            desired: object(json!({"interval": 5})),
            reported: Map::new(),
        }),
        ..Twin::default()
    };
    let mut request = JobRequest::update_twin(job_id("tag-all"), twin, "deviceId IN ['t1', 't2']");
    request.start_time = Some(OffsetDateTime::now_utc() + time::Duration::seconds(1));
    client.create_job(&request).await.expect("create");
    let updates = follow(client.watch_job(&job_id("tag-all")).await.expect("watch")).await;
    let last = updates.last().expect("updates");
    assert_eq!(last.status(), JobStatus::Completed);
    assert_eq!(last.statistics().succeeded_count, 2);
    let twin = client
        .get_twin(&"t2".parse().expect("valid"))
        .await
        .expect("twin");
    assert_eq!(twin.tags, Some(object(json!({"ring": "canary"}))));

    // No device matches: the job completes with no device record; the job's own ends the watch.
    let mut nobody = method_request("nobody", "deviceId = 'ghost'");
    nobody.start_time = Some(OffsetDateTime::now_utc() + time::Duration::seconds(1));
    client.create_job(&nobody).await.expect("create");
    let updates = follow(client.watch_job(&job_id("nobody")).await.expect("watch")).await;
    assert!(updates.iter().all(|update| update.device.is_none()));
    let last = updates.last().expect("updates");
    assert_eq!(last.status(), JobStatus::Completed);
    assert_eq!(last.statistics().device_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_watched_job_ends_the_watch_and_jobs_are_queried_page_by_page() {
    let hub = TestHub::start().await;
    let client = service(&hub, "iothubowner");
    hub.create_device("offline").await;
    // The device is offline: the job waits for it until cancelled.
    client
        .create_job(&method_request("waits", "deviceId = 'offline'"))
        .await
        .expect("create");
    let mut watch = client.watch_job(&job_id("waits")).await.expect("watch");
    let mut seen = Vec::new();
    let running = async {
        loop {
            let update = watch
                .next()
                .await
                .expect("the watch goes on")
                .expect("no error");
            let pending = update.statistics().pending_count;
            seen.push(update.status());
            if update.status() == JobStatus::Running && pending == 1 {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap_or_else(|_| panic!("the job runs, waiting for its device: {seen:?}"));
    let cancelled = client.cancel_job(&job_id("waits")).await.expect("cancel");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let rest = follow(watch).await;
    let last = rest.last().expect("the cancellation arrives");
    assert!(last.is_over());
    assert_eq!(last.statistics().cancelled_count(), 1);
    assert!(rest.iter().any(|update| {
        update
            .device
            .as_ref()
            .is_some_and(|device| device.status == DeviceJobStatus::Canceled)
    }));

    let bad_filter = client
        .raw(
            fleethub_service::Method::GET,
            "/changes?jobId=a%20b",
            &[],
            None,
        )
        .await
        .expect("an answer");
    assert_eq!(bad_filter.status.as_u16(), 400, "{}", bad_filter.text());
    assert!(bad_filter.text().contains("jobId"), "{}", bad_filter.text());

    // Queries: by type and status, page by page, and all pages at once.
    for id in ["q-a", "q-b", "q-c"] {
        let mut request = method_request(id, "deviceId = 'offline'");
        request.start_time = Some(OffsetDateTime::now_utc() + time::Duration::hours(1));
        client.create_job(&request).await.expect("create");
    }
    let first = client
        .query_jobs_page(Some(JobType::ScheduleDeviceMethod), None, None, Some(2))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 2);
    let token = first.continuation_token.expect("more pages");
    let second = client
        .query_jobs_page(
            Some(JobType::ScheduleDeviceMethod),
            None,
            Some(&token),
            Some(2),
        )
        .await
        .expect("page 2");
    let ids: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|job| job.job_id.to_string())
        .collect();
    assert_eq!(ids, ["q-a", "q-b", "q-c", "waits"]);
    assert_eq!(second.continuation_token, None);
    let cancelled: Vec<String> = client
        .query_jobs(None, Some(JobStatus::Cancelled))
        .await
        .expect("query")
        .into_iter()
        .map(|job| job.job_id.to_string())
        .collect();
    assert_eq!(cancelled, ["waits"]);
    assert_eq!(
        client
            .query_jobs(Some(JobType::ScheduleUpdateTwin), None)
            .await
            .expect("query"),
        []
    );
    let read = client.get_job(&job_id("q-b")).await.expect("get");
    assert_eq!(read.status, JobStatus::Scheduled);

    // A job needs ServiceConnect or RegistryWrite; a request without an id never leaves the client.
    let refused = service(&hub, "registryRead")
        .create_job(&method_request("denied", "deviceId = 'offline'"))
        .await
        .expect_err("refused");
    assert_eq!(refused.status(), Some(403));
    let mut anonymous = method_request("x", "deviceId = 'offline'");
    anonymous.job_id = None;
    assert!(client.create_job(&anonymous).await.is_err());
    let taken = client
        .create_job(&method_request("q-a", "deviceId = 'offline'"))
        .await
        .expect_err("taken");
    assert_eq!(taken.error_code(), Some(ErrorCode::JobAlreadyExists));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_are_created_read_updated_and_deleted_and_reach_twins() {
    let hub = TestHub::start().await;
    let client = service(&hub, "iothubowner");
    hub.create_device("lab-1").await;
    client
        .update_twin(
            &"lab-1".parse().expect("valid"),
            &json!({"tags": {"site": "lab"}}),
            None,
        )
        .await
        .expect("tag");
    let mut twin_changes = client
        .watch_changes(WatchOptions {
            device: Some("lab-1".parse().expect("valid")),
            ..WatchOptions::default()
        })
        .await
        .expect("watch");

    let request = ConfigurationRequest {
        id: Some("fw-2".to_owned()),
        labels: Some(BTreeMap::from([("team".to_owned(), "ops".to_owned())])),
        content: Some(ConfigurationContent {
            device_content: Some(object(
                json!({"properties.desired.firmware": {"version": "2.0"}}),
            )),
            ..ConfigurationContent::default()
        }),
        target_condition: Some("tags.site = 'lab'".to_owned()),
        priority: Some(10),
        metrics: Some(MetricQueries {
            queries: Some(BTreeMap::from([(
                "lab".to_owned(),
                "SELECT deviceId FROM devices WHERE tags.site = 'lab'".to_owned(),
            )])),
        }),
        ..ConfigurationRequest::default()
    };
    let created = client.create_configuration(&request).await.expect("create");
    assert_eq!(created.id, "fw-2");
    assert_eq!(created.priority, 10);
    assert_eq!(created.schema_version, "1.0");
    let duplicate = client.create_configuration(&request).await.err();
    assert_eq!(
        duplicate.and_then(|error| error.error_code()),
        Some(ErrorCode::ConfigurationAlreadyExists)
    );

    // The content reaches the targeted twin.
    let applied = async {
        loop {
            let change = next_change(&mut twin_changes).await;
            if change.body["properties"]["desired"]["firmware"] == json!({"version": "2.0"}) {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, applied)
        .await
        .expect("the configuration is applied");

    let read = client.get_configuration("fw-2").await.expect("get");
    assert_eq!(read.labels, created.labels);
    let listed = client.list_configurations(Some(10)).await.expect("list");
    assert_eq!(listed.len(), 1);

    // A read-modify-write with the etag read; a stale etag is refused.
    let mut change = read.to_request();
    change.priority = Some(20);
    change.content = None;
    let updated = client
        .update_configuration(&change, Some(&read.etag))
        .await
        .expect("update");
    assert_eq!(updated.priority, 20);
    assert_eq!(updated.content, created.content, "the content stays");
    assert_ne!(updated.etag, read.etag);
    let stale = client
        .update_configuration(&change, Some(&read.etag))
        .await
        .expect_err("stale");
    assert_eq!(stale.status(), Some(412));
    let mut rewrite = read.to_request();
    rewrite.content = Some(ConfigurationContent {
        device_content: Some(object(
            json!({"properties.desired.firmware": {"version": "3.0"}}),
        )),
        ..ConfigurationContent::default()
    });
    let immutable = client
        .update_configuration(&rewrite, None)
        .await
        .expect_err("immutable");
    assert_eq!(
        immutable.error_code(),
        Some(ErrorCode::CannotModifyImmutableConfigurationContent)
    );

    let tested = client
        .test_configuration_queries(&ConfigurationQueriesTestInput {
            target_condition: Some("tags.site = ".to_owned()),
            custom_metric_queries: Some(BTreeMap::from([(
                "ok".to_owned(),
                "SELECT deviceId FROM devices".to_owned(),
            )])),
        })
        .await
        .expect("test queries");
    assert!(!tested.target_condition_error.is_empty());
    assert!(tested.custom_metric_query_errors.is_empty());

    let refused = client
        .delete_configuration("fw-2", Some(&ETag::new("bm9wZQ==")))
        .await
        .expect_err("stale");
    assert_eq!(refused.status(), Some(412));
    client
        .delete_configuration("fw-2", Some(&updated.etag))
        .await
        .expect("delete");
    let gone = client.get_configuration("fw-2").await.err();
    assert_eq!(
        gone.and_then(|error| error.error_code()),
        Some(ErrorCode::ConfigurationNotFound)
    );
    let registry_read = service(&hub, "registryRead");
    assert_eq!(
        registry_read
            .create_configuration(&request)
            .await
            .err()
            .and_then(|error| error.status()),
        Some(403)
    );
    assert_eq!(
        registry_read
            .list_configurations(None)
            .await
            .expect("RegistryRead may read"),
        []
    );
}
