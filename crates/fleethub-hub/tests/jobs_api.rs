//! Jobs v2 against a real hub over HTTPS with devices on our SDK: method and twin jobs, scheduled starts,
//! cancel, the maximum execution time with offline devices, `devices.jobs` queries and their paging, the
//! jobs query, every refusal with its exact status and `iothub-errorcode`, and jobs across a hub restart.

#[path = "support/jobs.rs"]
mod support;

use std::time::Duration;

use fleethub_protocol::sas::{decode_key, generate_sas_token};
use fleethub_testkit::{ServiceApi, TestHub, unix_now};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn iso(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).expect("formats")
}

fn statistics(job: &Value) -> (u64, u64, u64, u64, u64) {
    let stats = &job["deviceJobStatistics"];
    let count = |name: &str| {
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {job}"))
    };
    (
        count("deviceCount"),
        count("succeededCount"),
        count("failedCount"),
        count("runningCount"),
        count("pendingCount"),
    )
}

async fn set_tags(hub: &TestHub, device_id: &str, tags: Value) {
    let api = owner(hub);
    let reply = api
        .send(
            Method::PATCH,
            &format!("/twins/{device_id}"),
            &[],
            Some(json!({ "tags": tags })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_job_calls_every_matching_device_and_records_each_answer() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let calls = Calls::default();
    let port = hub.hub.mqtt_address.port();
    let mut clients = Vec::new();
    for (device, site) in [("m1", "a"), ("m2", "a"), ("m3", "b")] {
        let record = hub.create_device(device).await;
        set_tags(&hub, device, json!({ "site": site })).await;
        clients.push(answering_device(&record, &hub.hub.ca_pem, port, &calls).await);
    }

    let created = create_job(
        &api,
        "reboot-a",
        method_job("tags.site = 'a'", "reboot", 60),
    )
    .await;
    assert_eq!(created["type"], json!("scheduleDeviceMethod"));
    assert_eq!(created["queryCondition"], json!("tags.site = 'a'"));
    assert_eq!(created["maxExecutionTimeInSeconds"], json!(60));
    assert_eq!(
        created["cloudToDeviceMethod"]["methodName"],
        json!("reboot")
    );
    for field in ["createdTime", "startTime"] {
        assert!(created[field].is_string(), "{field} in {created}");
    }

    let job = wait_for_status(&api, "reboot-a", "completed").await;
    assert_eq!(statistics(&job), (2, 2, 0, 0, 0));
    assert!(job["endTime"].is_string(), "{job}");
    assert_eq!(
        job["statusMessage"],
        json!("2 of 2 devices succeeded, 0 failed")
    );
    assert!(job.get("failureReason").is_none(), "{job}");
    assert_eq!(
        calls.of("m1"),
        vec![json!({"method": "reboot", "payload": {"from": "job"}})]
    );
    assert_eq!(calls.of("m2").len(), 1);
    assert!(calls.of("m3").is_empty(), "m3 is not a target");

    let reply = query_page(
        &api,
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'reboot-a'",
        100,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply
            .headers
            .get("x-ms-item-type")
            .map(|value| value.to_str().unwrap()),
        Some("deviceJob")
    );
    let items = reply.body.as_array().expect("an array").clone();
    let devices: Vec<&str> = items
        .iter()
        .map(|item| item["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(devices, vec!["m1", "m2"]);
    for item in &items {
        assert_eq!(item["jobId"], json!("reboot-a"));
        assert_eq!(item["jobType"], json!("scheduleDeviceMethod"));
        assert_eq!(item["status"], json!("completed"));
        for field in [
            "startTimeUtc",
            "endTimeUtc",
            "createdDateTimeUtc",
            "lastUpdatedDateTimeUtc",
        ] {
            let text = item[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} in {item}"));
            assert!(text.ends_with('Z') && text.len() == 28, "{field} = {text}");
        }
        assert_eq!(
            item["outcome"]["deviceMethodResponse"],
            json!({"status": 200, "payload": {"device": item["deviceId"]}})
        );
        assert!(item.get("error").is_none(), "{item}");
    }
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_job_updates_twins_and_pushes_desired_properties_to_a_connected_device() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let online = hub.create_device("t1").await;
    hub.create_device("t2").await;
    let client = fleethub_device::DeviceClient::connect(
        &connection_string(&online),
        device_options(&hub.hub.ca_pem, hub.hub.mqtt_address.port()),
    )
    .await
    .expect("connects");
    let mut desired = client.desired_patches().await.expect("subscribed");
    let initial = desired.next().await.expect("the desired section first");
    assert_eq!(initial["$version"], json!(1));

    create_job(
        &api,
        "twin-1",
        json!({
            "jobId": "twin-1",
            "type": "scheduleUpdateTwin",
            "updateTwin": {"tags": {"ring": "canary"}, "properties": {"desired": {"interval": 30}}, "etag": "*"},
            "queryCondition": devices_in(&["t1", "t2"]),
            "startTime": iso(OffsetDateTime::now_utc() - time::Duration::hours(1)),
            "maxExecutionTimeInSeconds": 600,
        }),
    )
    .await;
    let job = wait_for_status(&api, "twin-1", "completed").await;
    assert_eq!(statistics(&job), (2, 2, 0, 0, 0));
    assert_eq!(
        job["updateTwin"]["properties"]["desired"],
        json!({"interval": 30})
    );

    let patch = tokio::time::timeout(Duration::from_secs(10), desired.next())
        .await
        .expect("the patch arrives")
        .expect("the stream goes on");
    assert_eq!(patch["interval"], json!(30));
    assert_eq!(patch["$version"], json!(2));
    for device in ["t1", "t2"] {
        let twin = api
            .send(Method::GET, &format!("/twins/{device}"), &[], None)
            .await
            .body;
        assert_eq!(twin["tags"], json!({"ring": "canary"}), "{device}");
        assert_eq!(
            twin["properties"]["desired"]["interval"],
            json!(30),
            "{device}"
        );
    }
    let (items, _) = query_all(
        &api,
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'twin-1' AND devices.jobs.status = 'completed'",
        10,
    )
    .await;
    assert_eq!(items.len(), 2);
    for item in items {
        assert_eq!(item["jobType"], json!("scheduleUpdateTwin"));
        assert_eq!(item["outcome"], json!({"deviceMethodResponse": null}));
    }
    client.disconnect().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_future_start_time_is_scheduled_until_then() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let calls = Calls::default();
    let record = hub.create_device("s1").await;
    let _client = answering_device(
        &record,
        &hub.hub.ca_pem,
        hub.hub.mqtt_address.port(),
        &calls,
    )
    .await;

    let start = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let mut body = method_job("deviceId = 's1'", "wake", 60);
    body["startTime"] = json!(iso(start));
    create_job(&api, "later", body).await;
    let scheduled = wait_for_status(&api, "later", "scheduled").await;
    assert_eq!(statistics(&scheduled), (0, 0, 0, 0, 0));
    assert!(
        calls.of("s1").is_empty(),
        "nothing runs before the start time"
    );

    let job = wait_for_status(&api, "later", "completed").await;
    assert!(OffsetDateTime::now_utc() >= start);
    assert_eq!(statistics(&job), (1, 1, 0, 0, 0));
    let (items, _) = query_all(&api, "SELECT * FROM devices.jobs WHERE jobId = 'later'", 10).await;
    let started =
        OffsetDateTime::parse(items[0]["startTimeUtc"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(started >= start, "started {started}, due {start}");
    assert_eq!(calls.of("s1").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_cancels_its_pending_devices() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let calls = Calls::default();
    let record = hub.create_device("c1").await;
    hub.create_device("c2").await;
    hub.create_device("c3").await;
    let _client = answering_device(
        &record,
        &hub.hub.ca_pem,
        hub.hub.mqtt_address.port(),
        &calls,
    )
    .await;

    // c2 and c3 are offline: they wait, pending, until the job is cancelled.
    create_job(
        &api,
        "to-cancel",
        method_job(&devices_in(&["c1", "c2", "c3"]), "ping", 600),
    )
    .await;
    wait_for_job(
        &api,
        "to-cancel",
        "done with c1, waiting for the others",
        |job| job["status"] == json!("running") && statistics(job) == (3, 1, 0, 0, 2),
    )
    .await;

    let reply = cancel_job(&api, "to-cancel").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], json!("cancelled"));
    // Azure's counts have no cancelled one: deviceCount minus the others.
    assert_eq!(statistics(&reply.body), (3, 1, 0, 0, 0));
    assert!(
        reply.body["endTime"].is_string(),
        "nothing was running: the job ended"
    );
    let (items, _) = query_all(
        &api,
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'to-cancel' AND status = 'canceled'",
        10,
    )
    .await;
    let cancelled: Vec<&str> = items
        .iter()
        .map(|item| item["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(cancelled, vec!["c2", "c3"]);

    // Cancelling again changes nothing; a scheduled job is cancelled before it starts.
    let again = cancel_job(&api, "to-cancel").await;
    assert_eq!(
        (again.status, again.body["status"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let mut body = method_job("deviceId = 'c1'", "ping", 60);
    body["startTime"] = json!(iso(OffsetDateTime::now_utc() + time::Duration::hours(1)));
    create_job(&api, "never", body).await;
    wait_for_status(&api, "never", "scheduled").await;
    let reply = cancel_job(&api, "never").await;
    assert_eq!(reply.body["status"], json!("cancelled"), "{}", reply.body);
    assert!(reply.body["endTime"].is_string());
    assert_eq!(statistics(&reply.body), (0, 0, 0, 0, 0));
    assert_eq!(
        calls.of("c1").len(),
        1,
        "the cancelled jobs called nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_fail_with_device_not_online_when_the_time_runs_out() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let calls = Calls::default();
    let record = hub.create_device("o1").await;
    hub.create_device("o2").await;
    hub.create_device("o3").await;
    let _client = answering_device(
        &record,
        &hub.hub.ca_pem,
        hub.hub.mqtt_address.port(),
        &calls,
    )
    .await;

    create_job(
        &api,
        "short",
        method_job(&devices_in(&["o1", "o2", "o3"]), "ping", 2),
    )
    .await;
    let job = wait_for_status(&api, "short", "completed").await;
    assert_eq!(statistics(&job), (3, 1, 2, 0, 0));
    assert_eq!(
        job["statusMessage"],
        json!("1 of 3 devices succeeded, 2 failed; the maximum execution time of 2 s ran out")
    );
    let (failed, _) = query_all(
        &api,
        "SELECT * FROM devices.jobs WHERE jobId = 'short' AND status = 'failed'",
        10,
    )
    .await;
    assert_eq!(failed.len(), 2);
    for item in failed {
        assert_eq!(item["error"]["code"], json!("DeviceNotOnline"), "{item}");
        assert!(item["endTimeUtc"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_connects_while_the_job_waits_for_it_is_called() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let calls = Calls::default();
    let record = hub.create_device("late").await;
    create_job(&api, "waits", method_job("deviceId = 'late'", "hello", 120)).await;
    wait_for_job(&api, "waits", "waiting for the device", |job| {
        job["status"] == json!("running") && statistics(job) == (1, 0, 0, 0, 1)
    })
    .await;
    let (pending, _) =
        query_all(&api, "SELECT * FROM devices.jobs WHERE jobId = 'waits'", 10).await;
    assert_eq!(pending[0]["status"], json!("pending"));
    assert_eq!(pending[0]["error"]["code"], json!("DeviceNotOnline"));

    let _client = answering_device(
        &record,
        &hub.hub.ca_pem,
        hub.hub.mqtt_address.port(),
        &calls,
    )
    .await;
    let job = wait_for_status(&api, "waits", "completed").await;
    assert_eq!(statistics(&job), (1, 1, 0, 0, 0));
    assert_eq!(calls.of("late").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_job_takes_devices_that_match_later() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    hub.create_device("d1").await;
    set_tags(&hub, "d1", json!({"fleet": "x"})).await;
    create_job(
        &api,
        "dynamic",
        json!({
            "type": "scheduleUpdateTwin",
            "updateTwin": {"properties": {"desired": {"mode": "eco"}}},
            "queryCondition": "tags.fleet = 'x'",
            "maxExecutionTimeInSeconds": 6,
            "dynamicTargets": true,
        }),
    )
    .await;
    wait_for_job(&api, "dynamic", "done with d1", |job| {
        statistics(job).1 == 1
    })
    .await;
    hub.create_device("d2").await;
    set_tags(&hub, "d2", json!({"fleet": "x"})).await;
    let job = wait_for_job(&api, "dynamic", "done with d2", |job| {
        statistics(job).1 == 2
    })
    .await;
    assert_eq!(
        job["status"],
        json!("running"),
        "a dynamic job runs until its deadline"
    );
    let job = wait_for_status(&api, "dynamic", "completed").await;
    assert_eq!(statistics(&job), (2, 2, 0, 0, 0));
    let twin = api.send(Method::GET, "/twins/d2", &[], None).await.body;
    assert_eq!(twin["properties"]["desired"]["mode"], json!("eco"));
}

/// One refusal: the request, the status and the `iothub-errorcode` it must get, and a fragment of the message.
struct Refusal {
    case: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    status: StatusCode,
    code: &'static str,
    says: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_requests_are_refused_with_the_exact_error() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    create_job(&api, "exists", method_job("deviceId = 'nobody'", "m", 60)).await;
    let valid = method_job("deviceId = 'd'", "m", 60);
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        Some(body)
    };
    let put = |case, body, code: &'static str, says| Refusal {
        case,
        method: Method::PUT,
        path: "/jobs/v2/new".into(),
        body,
        status: if code == "JobAlreadyExists" {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        },
        code,
        says,
    };
    let twin_job = |update_twin: Value| {
        Some(
            json!({"type": "scheduleUpdateTwin", "updateTwin": update_twin, "queryCondition": "deviceId = 'd'"}),
        )
    };
    let refusals = vec![
        put(
            "unknown type",
            with("type", json!("scheduleDirectMethod")),
            "ArgumentInvalid",
            "unknown variant",
        ),
        put(
            "not a jobs v2 type",
            with("type", json!("export")),
            "ArgumentInvalid",
            "not a Jobs v2 type",
        ),
        put(
            "no type",
            Some(json!({"queryCondition": "deviceId = 'd'"})),
            "ArgumentInvalid",
            "missing field `type`",
        ),
        put(
            "method job without a method",
            Some(json!({"type": "scheduleDeviceMethod", "queryCondition": "deviceId = 'd'"})),
            "ArgumentInvalid",
            "needs cloudToDeviceMethod",
        ),
        put(
            "twin job without a twin",
            Some(json!({"type": "scheduleUpdateTwin", "queryCondition": "deviceId = 'd'"})),
            "ArgumentInvalid",
            "needs updateTwin",
        ),
        put(
            "twin job with a method",
            with("type", json!("scheduleUpdateTwin")),
            "ArgumentInvalid",
            "takes updateTwin, not cloudToDeviceMethod",
        ),
        put(
            "both actions",
            with("updateTwin", json!({"tags": {"a": 1}})),
            "ArgumentInvalid",
            "takes cloudToDeviceMethod, not updateTwin",
        ),
        put(
            "bad method name",
            with("cloudToDeviceMethod", json!({"methodName": "a/b"})),
            "ArgumentInvalid",
            "methodName",
        ),
        put(
            "response timeout out of range",
            with(
                "cloudToDeviceMethod",
                json!({"methodName": "m", "responseTimeoutInSeconds": 301}),
            ),
            "ArgumentInvalid",
            "responseTimeoutInSeconds must be from 5 to 300",
        ),
        put(
            "no condition",
            with("queryCondition", Value::Null),
            "ArgumentInvalid",
            "queryCondition is required",
        ),
        put(
            "bad condition",
            with("queryCondition", json!("tags.site = ")),
            "ArgumentInvalid",
            "queryCondition: syntax error at position",
        ),
        put(
            "execution time zero",
            with("maxExecutionTimeInSeconds", json!(0)),
            "ArgumentInvalid",
            "maxExecutionTimeInSeconds must be from 1 to 2592000, got 0",
        ),
        put(
            "execution time too long",
            with("maxExecutionTimeInSeconds", json!(2_592_001)),
            "ArgumentInvalid",
            "got 2592001",
        ),
        put(
            "negative execution time",
            with("maxExecutionTimeInSeconds", json!(-5)),
            "ArgumentInvalid",
            "not a valid JobRequest",
        ),
        put(
            "unreadable start time",
            with("startTime", json!("tomorrow")),
            "ArgumentInvalid",
            "not a valid JobRequest",
        ),
        put(
            "another job id in the body",
            with("jobId", json!("other")),
            "ArgumentInvalid",
            "differs from the job id in the path",
        ),
        put(
            "reported properties",
            twin_job(json!({"properties": {"reported": {"x": 1}}})),
            "ArgumentInvalid",
            "cannot change reported properties",
        ),
        put(
            "empty twin",
            twin_job(json!({"tags": {}})),
            "ArgumentInvalid",
            "changes nothing",
        ),
        put(
            "an etag",
            twin_job(json!({"tags": {"a": 1}, "etag": "AAAAAAAAAAE="})),
            "ArgumentInvalid",
            "etag must be",
        ),
        put(
            "a twin rule broken",
            twin_job(json!({"properties": {"desired": {"a b": 1}}})),
            "ArgumentInvalid",
            "updateTwin:",
        ),
        put(
            "dynamicTargets not a boolean",
            with("dynamicTargets", json!("yes")),
            "ArgumentInvalid",
            "dynamicTargets must be",
        ),
        put(
            "an empty body",
            None,
            "ArgumentInvalid",
            "the request body is empty",
        ),
        Refusal {
            case: "an existing id",
            path: "/jobs/v2/exists".into(),
            ..put(
                "",
                Some(valid.clone()),
                "JobAlreadyExists",
                "already exists",
            )
        },
        Refusal {
            case: "a bad job id",
            path: "/jobs/v2/a%20b".into(),
            ..put("", Some(valid.clone()), "ArgumentInvalid", "job id \"a b\"")
        },
        Refusal {
            case: "an unknown job",
            method: Method::GET,
            path: "/jobs/v2/missing".into(),
            body: None,
            status: StatusCode::NOT_FOUND,
            code: "JobNotFound",
            says: "job missing not found",
        },
        Refusal {
            case: "cancelling an unknown job",
            method: Method::POST,
            path: "/jobs/v2/missing/cancel".into(),
            body: None,
            status: StatusCode::NOT_FOUND,
            code: "JobNotFound",
            says: "not found",
        },
        Refusal {
            case: "an unknown job type in the query",
            method: Method::GET,
            path: "/jobs/v2/query?jobType=reboot".into(),
            body: None,
            status: StatusCode::BAD_REQUEST,
            code: "ArgumentInvalid",
            says: "jobType \"reboot\" is not a job type",
        },
        Refusal {
            case: "an unknown job status in the query",
            method: Method::GET,
            path: "/jobs/v2/query?jobStatus=done".into(),
            body: None,
            status: StatusCode::BAD_REQUEST,
            code: "ArgumentInvalid",
            says: "jobStatus \"done\"",
        },
        Refusal {
            case: "DELETE is not a jobs operation",
            method: Method::DELETE,
            path: "/jobs/v2/exists".into(),
            body: None,
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "GenericMethodNotAllowed",
            says: "not supported",
        },
    ];
    for refusal in refusals {
        let reply = api
            .send(refusal.method, &refusal.path, &[], refusal.body)
            .await;
        assert_eq!(
            reply.status, refusal.status,
            "{}: {}",
            refusal.case, reply.body
        );
        assert_eq!(
            reply.error_code.as_deref(),
            Some(refusal.code),
            "{}: {}",
            refusal.case,
            reply.body
        );
        let message = reply.body["Message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("ErrorCode:{};", refusal.code))
                && message.contains(refusal.says),
            "{}: {message}",
            refusal.case
        );
    }

    // Paging headers out of range, and a token from elsewhere.
    for (headers, says) in [
        (
            vec![("x-ms-max-item-count", "0")],
            "x-ms-max-item-count must be",
        ),
        (
            vec![("x-ms-continuation", "bm90IG91cnM=")],
            "continuation token is not one this hub issued",
        ),
    ] {
        let reply = api
            .send(Method::GET, "/jobs/v2/query", &headers, None)
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.error_code.as_deref(), Some("ArgumentInvalid"));
        assert!(
            reply.body["Message"].as_str().unwrap().contains(says),
            "{}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_need_the_right_policy() {
    let hub = TestHub::start().await;
    let body = method_job("deviceId = 'nobody'", "m", 60);
    for (policy, job_id, create, read) in [
        ("iothubowner", "by-owner", StatusCode::OK, StatusCode::OK),
        ("service", "by-service", StatusCode::OK, StatusCode::OK),
        (
            "registryReadWrite",
            "by-registry",
            StatusCode::OK,
            StatusCode::OK,
        ),
        (
            "registryRead",
            "by-reader",
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
        ),
        (
            "device",
            "by-device",
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN,
        ),
    ] {
        let api = ServiceApi::for_hub(&hub, policy);
        let created = put_job(&api, job_id, body.clone()).await;
        assert_eq!(created.status, create, "{policy} creates: {}", created.body);
        let read_back = get_job(&api, job_id).await;
        assert_eq!(read_back.status, read, "{policy} reads: {}", read_back.body);
        let cancelled = cancel_job(&api, "by-owner").await;
        let may_write = create == StatusCode::OK;
        assert_eq!(
            cancelled.status.is_success(),
            may_write,
            "{policy} cancels: {}",
            cancelled.body
        );
        let listed = api.send(Method::GET, "/jobs/v2/query", &[], None).await;
        assert_eq!(
            listed.status.is_success(),
            read != StatusCode::FORBIDDEN,
            "{policy} lists"
        );
        if !may_write {
            assert_eq!(created.error_code.as_deref(), Some("GenericForbidden"));
        }
    }
    let api = owner(&hub);
    let unsigned = api
        .call(None, Method::GET, "/jobs/v2/by-owner", &[], None)
        .await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unsigned.error_code.as_deref(),
        Some("IotHubUnauthorizedAccess")
    );
    // A token scoped to a device cannot reach jobs.
    let key = decode_key(&hub.policy("iothubowner").primary_key).unwrap();
    let scoped = generate_sas_token(
        &format!("{}/devices/d1", api.host),
        &key,
        unix_now() + 600,
        Some("iothubowner"),
    );
    let reply = api
        .call(Some(&scoped), Method::GET, "/jobs/v2/by-owner", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_query_filters_by_type_and_status_and_pages() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    for index in 0..5 {
        create_job(
            &api,
            &format!("method-{index}"),
            method_job("deviceId = 'nobody'", "m", 60),
        )
        .await;
    }
    for index in 0..2 {
        create_job(
            &api,
            &format!("twin-{index}"),
            json!({"type": "scheduleUpdateTwin", "updateTwin": {"tags": {"a": 1}}, "queryCondition": "deviceId = 'nobody'"}),
        )
        .await;
    }
    let mut scheduled = method_job("deviceId = 'nobody'", "m", 60);
    scheduled["startTime"] = json!(iso(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    create_job(&api, "method-later", scheduled).await;
    for index in 0..5 {
        wait_for_status(&api, &format!("method-{index}"), "completed").await;
    }
    wait_for_status(&api, "method-later", "scheduled").await;

    let list = |query: &'static str, headers: Vec<(&'static str, String)>| {
        let api = &api;
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            api.send(
                Method::GET,
                &format!("/jobs/v2/query{query}"),
                &headers,
                None,
            )
            .await
        }
    };
    let ids = |reply: &fleethub_testkit::Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|job| job["jobId"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = list("", vec![]).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body["type"], json!("jobResponse"));
    assert_eq!(all.body["continuationToken"], Value::Null);
    assert_eq!(all.headers.get("x-ms-item-type").unwrap(), "jobResponse");
    assert_eq!(ids(&all).len(), 8);

    let twins = list("?jobType=scheduleUpdateTwin", vec![]).await;
    assert_eq!(ids(&twins), vec!["twin-0", "twin-1"]);
    let completed = list("?jobType=scheduleDeviceMethod&jobStatus=completed", vec![]).await;
    assert_eq!(
        ids(&completed),
        (0..5)
            .map(|index| format!("method-{index}"))
            .collect::<Vec<_>>()
    );
    let later = list("?jobStatus=scheduled", vec![]).await;
    assert_eq!(ids(&later), vec!["method-later"]);
    assert_eq!(later.body["items"][0]["status"], json!("scheduled"));

    // Pages of two, following the token in the body and the header alike.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "2".to_owned())];
        if let Some(token) = &token {
            headers.push(("x-ms-continuation", token.clone()));
        }
        let page = list("?jobType=scheduleDeviceMethod", headers).await;
        pages += 1;
        seen.extend(ids(&page));
        let body_token = page.body["continuationToken"].as_str().map(str::to_owned);
        let header_token = page
            .headers
            .get("x-ms-continuation")
            .map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(body_token, header_token);
        token = body_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        vec![
            "method-0",
            "method-1",
            "method-2",
            "method-3",
            "method-4",
            "method-later"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_jobs_queries_filter_and_page() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let ids: Vec<String> = (0..5).map(|index| format!("q{index}")).collect();
    for id in &ids {
        hub.create_device(id).await;
    }
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    let twin = |tags: Value, condition: String| json!({"type": "scheduleUpdateTwin", "updateTwin": {"tags": tags}, "queryCondition": condition});
    create_job(&api, "jq-a", twin(json!({"n": 1}), devices_in(&all))).await;
    create_job(&api, "jq-b", twin(json!({"n": 2}), devices_in(&all[..2]))).await;
    wait_for_status(&api, "jq-a", "completed").await;
    wait_for_status(&api, "jq-b", "completed").await;

    let device_ids = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|row| {
                format!(
                    "{}/{}",
                    row["jobId"].as_str().unwrap(),
                    row["deviceId"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (rows, pages) = query_all(
        &api,
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'jq-a'",
        2,
    )
    .await;
    assert_eq!(pages, 3);
    assert_eq!(
        device_ids(&rows),
        ["jq-a/q0", "jq-a/q1", "jq-a/q2", "jq-a/q3", "jq-a/q4"]
    );

    let (rows, _) = query_all(&api, "SELECT * FROM devices.jobs", 3).await;
    assert_eq!(
        rows.len(),
        7,
        "every record of every job, by job then device"
    );
    assert_eq!(device_ids(&rows)[5..], ["jq-b/q0", "jq-b/q1"]);

    let (rows, pages) =
        query_all(&api, "SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'q1' AND jobType = 'scheduleUpdateTwin'", 1).await;
    assert_eq!(device_ids(&rows), ["jq-a/q1", "jq-b/q1"]);
    assert_eq!(pages, 2);

    let (rows, _) = query_all(
        &api,
        "SELECT * FROM devices.jobs WHERE jobId IN ['jq-b', 'nope'] AND status = 'completed'",
        10,
    )
    .await;
    assert_eq!(device_ids(&rows), ["jq-b/q0", "jq-b/q1"]);

    let (rows, _) = query_all(
        &api,
        "SELECT TOP 3 * FROM devices.jobs WHERE jobType = 'scheduleUpdateTwin'",
        2,
    )
    .await;
    assert_eq!(rows.len(), 3, "TOP holds across pages");

    let (rows, pages) = query_all(
        &api,
        "SELECT * FROM devices.jobs WHERE jobId = 'jq-b' ORDER BY deviceId DESC",
        1,
    )
    .await;
    assert_eq!(device_ids(&rows), ["jq-b/q1", "jq-b/q0"]);
    assert_eq!(pages, 2);

    let (rows, _) = query_all(&api, "SELECT * FROM devices.jobs WHERE jobId = 'nope'", 10).await;
    assert!(rows.is_empty());

    // A token only continues its own query; projections are refused as Azure refuses them.
    let first = query_page(&api, "SELECT * FROM devices.jobs", 1, None).await;
    let token = first
        .headers
        .get("x-ms-continuation")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let reply = query_page(
        &api,
        "SELECT * FROM devices.jobs WHERE jobId = 'jq-a'",
        1,
        Some(&token),
    )
    .await;
    assert_eq!(
        (reply.status, reply.error_code.as_deref()),
        (StatusCode::BAD_REQUEST, Some("ArgumentInvalid"))
    );
    let reply = query_page(&api, "SELECT deviceId FROM devices.jobs", 10, None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_hub_restart() {
    let hub = TestHub::start().await;
    let (mqtt, https) = (hub.hub.mqtt_address, hub.hub.https_address);
    let data_dir = hub.directory.path().join("data");
    let api = owner(&hub);
    hub.create_device("r1").await;
    // Waiting for an offline device; scheduled for later; cancelled.
    create_job(&api, "waiting", method_job("deviceId = 'r1'", "m", 600)).await;
    wait_for_job(&api, "waiting", "waiting for r1", |job| {
        statistics(job) == (1, 0, 0, 0, 1)
    })
    .await;
    let mut later = method_job("deviceId = 'r1'", "m", 600);
    let start = OffsetDateTime::now_utc() + time::Duration::seconds(4);
    later["startTime"] = json!(iso(start));
    create_job(&api, "scheduled", later).await;
    wait_for_status(&api, "scheduled", "scheduled").await;
    create_job(&api, "cancelled", method_job("deviceId = 'r1'", "m", 600)).await;
    wait_for_job(&api, "cancelled", "waiting for r1", |job| {
        statistics(job).4 == 1
    })
    .await;
    assert_eq!(
        cancel_job(&api, "cancelled").await.body["status"],
        json!("cancelled")
    );

    let TestHub {
        hub: running,
        directory,
    } = hub;
    running.shutdown(Duration::from_secs(5)).await;
    let mut config = fleethub_hub::HubConfig::for_loopback(data_dir);
    config.mqtt_listen = mqtt;
    config.https_listen = https;
    let restarted = fleethub_hub::start(config)
        .await
        .expect("restarts on the same directory");
    let hub = TestHub {
        hub: restarted,
        directory,
    };
    let api = owner(&hub);

    let job = get_job(&api, "waiting").await.body;
    assert_eq!(
        (job["status"].clone(), statistics(&job)),
        (json!("running"), (1, 0, 0, 0, 1))
    );
    assert_eq!(
        get_job(&api, "scheduled").await.body["status"],
        json!("scheduled")
    );
    assert_eq!(
        get_job(&api, "cancelled").await.body["status"],
        json!("cancelled")
    );

    let calls = Calls::default();
    let record = hub
        .hub
        .services
        .get_identity(&fleethub_core::identity::IdentityKey::device(
            "r1".parse().unwrap(),
        ))
        .await
        .unwrap();
    let _client = answering_device(&record, &hub.hub.ca_pem, mqtt.port(), &calls).await;
    let job = wait_for_status(&api, "waiting", "completed").await;
    assert_eq!(statistics(&job), (1, 1, 0, 0, 0));
    let job = wait_for_status(&api, "scheduled", "completed").await;
    assert_eq!(statistics(&job), (1, 1, 0, 0, 0));
    assert!(OffsetDateTime::now_utc() >= start);
    assert_eq!(
        calls.of("r1").len(),
        2,
        "the resumed and the scheduled job, not the cancelled one"
    );
    let cancelled = get_job(&api, "cancelled").await.body;
    assert_eq!(cancelled["status"], json!("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_jobs_run_at_once() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    hub.create_device("away").await;
    // Azure's tiers allow 1, 5 or 10 active jobs; the default limit here is 100.
    for index in 0..12 {
        create_job(
            &api,
            &format!("many-{index:02}"),
            method_job("deviceId = 'away'", "m", 600),
        )
        .await;
    }
    for index in 0..12 {
        wait_for_job(
            &api,
            &format!("many-{index:02}"),
            "running, waiting for the device",
            |job| job["status"] == json!("running") && statistics(job) == (1, 0, 0, 0, 1),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_the_running_limit_wait_queued_for_a_slot() {
    let hub = TestHub::start_with(|config| config.limits.max_running_jobs = 2).await;
    let api = owner(&hub);
    hub.create_device("away").await;
    for job_id in ["first", "second", "third"] {
        create_job(&api, job_id, method_job("deviceId = 'away'", "m", 600)).await;
        if job_id != "third" {
            wait_for_status(&api, job_id, "running").await;
        }
    }
    let queued = get_job(&api, "third").await.body;
    assert_eq!(queued["status"], json!("queued"), "{queued}");
    assert_eq!(
        statistics(&queued),
        (0, 0, 0, 0, 0),
        "its targets are not resolved yet"
    );

    assert_eq!(
        cancel_job(&api, "first").await.body["status"],
        json!("cancelled")
    );
    // Running, and its one attempt found the device offline: it waits for it (the job can be seen running
    // a moment before that, with the attempt still in flight).
    wait_for_job(&api, "third", "running, waiting for the device", |job| {
        job["status"] == json!("running") && statistics(job) == (1, 0, 0, 0, 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_lets_running_attempts_finish() {
    let hub = TestHub::start().await;
    let api = owner(&hub);
    let slow = hub.create_device("slow").await;
    hub.create_device("gone").await;
    let client = fleethub_device::DeviceClient::connect(
        &connection_string(&slow),
        device_options(&hub.hub.ca_pem, hub.hub.mqtt_address.port()),
    )
    .await
    .expect("connects");
    let (answer, answered) = tokio::sync::oneshot::channel::<()>();
    let answer = std::sync::Mutex::new(Some(answer));
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let released = std::sync::Arc::clone(&release);
    client
        .on_method(move |_request: fleethub_device::MethodRequest| {
            let released = std::sync::Arc::clone(&released);
            let answer = answer.lock().unwrap().take();
            async move {
                // Answers only when the test says so: the attempt is running while the job is cancelled.
                released.notified().await;
                if let Some(answer) = answer {
                    let _ = answer.send(());
                }
                fleethub_device::MethodResponse::ok(json!({"late": true}))
            }
        })
        .await
        .expect("subscribed");

    create_job(
        &api,
        "cancel-running",
        method_job(&devices_in(&["gone", "slow"]), "work", 600),
    )
    .await;
    wait_for_job(
        &api,
        "cancel-running",
        "one attempt out, one device waiting",
        |job| statistics(job) == (2, 0, 0, 1, 1),
    )
    .await;
    let reply = cancel_job(&api, "cancel-running").await;
    assert_eq!(reply.body["status"], json!("cancelled"));
    assert_eq!(
        statistics(&reply.body),
        (2, 0, 0, 1, 0),
        "the running attempt goes on"
    );
    assert!(
        reply.body.get("endTime").is_none(),
        "not over while an attempt runs: {}",
        reply.body
    );

    release.notify_one();
    answered.await.expect("the device answered");
    let job = wait_for_job(&api, "cancel-running", "over", |job| {
        job["endTime"].is_string()
    })
    .await;
    assert_eq!(job["status"], json!("cancelled"));
    assert_eq!(statistics(&job), (2, 1, 0, 0, 0));
    let (items, _) = query_all(
        &api,
        "SELECT * FROM devices.jobs WHERE jobId = 'cancel-running'",
        10,
    )
    .await;
    let statuses: Vec<(&str, &str)> = items
        .iter()
        .map(|item| {
            (
                item["deviceId"].as_str().unwrap(),
                item["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses, vec![("gone", "canceled"), ("slow", "completed")]);
    client.disconnect().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_beyond_a_lowered_limit_queue_after_a_restart() {
    let hub = TestHub::start().await;
    let (mqtt, https) = (hub.hub.mqtt_address, hub.hub.https_address);
    let data_dir = hub.directory.path().join("data");
    let api = owner(&hub);
    hub.create_device("away").await;
    for job_id in ["one", "two"] {
        create_job(&api, job_id, method_job("deviceId = 'away'", "m", 600)).await;
        wait_for_job(&api, job_id, "waiting for the device", |job| {
            job["status"] == json!("running") && statistics(job) == (1, 0, 0, 0, 1)
        })
        .await;
    }
    let TestHub {
        hub: running,
        directory,
    } = hub;
    running.shutdown(Duration::from_secs(5)).await;
    let mut config = fleethub_hub::HubConfig::for_loopback(data_dir);
    config.mqtt_listen = mqtt;
    config.https_listen = https;
    config.limits.max_running_jobs = 1;
    let hub = TestHub {
        hub: fleethub_hub::start(config).await.expect("restarts"),
        directory,
    };
    let api = owner(&hub);

    // One of them takes the only slot; the other keeps its targets and waits.
    let deadline = tokio::time::Instant::now() + JOB_WAIT;
    let (running, queued) = loop {
        let one = get_job(&api, "one").await.body;
        let two = get_job(&api, "two").await.body;
        match (one["status"].as_str(), two["status"].as_str()) {
            (Some("running"), Some("queued")) => break ("one", "two"),
            (Some("queued"), Some("running")) => break ("two", "one"),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "{one} {two}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        statistics(&get_job(&api, queued).await.body),
        (1, 0, 0, 0, 1)
    );
    cancel_job(&api, running).await;
    // Running again, its attempt back to waiting for the offline device (it may be seen running a moment
    // before, with the attempt in flight).
    wait_for_job(&api, queued, "running, waiting for the device", |job| {
        job["status"] == json!("running") && statistics(job) == (1, 0, 0, 0, 1)
    })
    .await;
    let cancelled = cancel_job(&api, queued).await.body;
    assert_eq!(
        (cancelled["status"].clone(), statistics(&cancelled)),
        (json!("cancelled"), (1, 0, 0, 0, 0))
    );
}
