//! The rollout REST API over real HTTPS: what a bad request is told, 404 and 409 answers, the rights each
//! endpoint needs, listing by status, and the change feed filtered to one rollout.

use std::time::Duration;

use fleethub_protocol::errors::ErrorCode;
use fleethub_service::{ArtifactUpload, ServiceClient, ServiceClientOptions};
use fleethub_testkit::{ServiceApi, TestHub};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MODEL: &str = "thermostat-x";
/// How long a rollout without devices may take to reach a status, however loaded the machine.
const WAIT: Duration = Duration::from_secs(30);

/// Waits (up to [`WAIT`]) until the change feed holds a `rolloutUpdated` record of `rollout` in `status`.
async fn wait_for_rollout_record(hub: &TestHub, rollout: &str, status: &str) -> Value {
    let store = &hub.hub.services.store;
    let mut notifier = store.change_notifier();
    let found = async {
        loop {
            notifier.borrow_and_update();
            let records = store
                .read_changes(
                    0,
                    1000,
                    fleethub_store::ChangeFilter::rollout(rollout.parse().expect("valid")),
                )
                .await
                .expect("read the change feed");
            if let Some(record) = records
                .into_iter()
                .find(|record| record.body["status"] == json!(status))
            {
                return record.body;
            }
            notifier.changed().await.expect("the store runs");
        }
    };
    tokio::time::timeout(WAIT, found)
        .await
        .unwrap_or_else(|_| panic!("no {status} record of rollout {rollout} within {WAIT:?}"))
}

async fn upload(hub: &TestHub, version: &str) {
    let owner = hub.policy("iothubowner");
    let client = ServiceClient::from_connection_string(
        &format!(
            "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
            hub.hub.https_address.port(),
            owner.primary_key
        ),
        ServiceClientOptions {
            ca_pem: Some(hub.hub.ca_pem.clone()),
            ..ServiceClientOptions::default()
        },
    )
    .expect("service client");
    let file = hub.directory.path().join(format!("image-{version}"));
    std::fs::write(&file, b"an image").expect("write the image");
    client
        .upload_artifact(&ArtifactUpload {
            model: MODEL.into(),
            version: version.into(),
            file,
            ..ArtifactUpload::default()
        })
        .await
        .expect("upload");
}

fn rollout_body(version: &str) -> Value {
    json!({
        "artifact": {"model": MODEL, "version": version},
        "targetCondition": "deviceId = 'nobody'",
        "waves": "10%,100%"
    })
}

async fn put(api: &ServiceApi, id: &str, body: Value) -> fleethub_testkit::Reply {
    api.send(
        Method::PUT,
        &format!("/firmware/rollouts/{id}"),
        &[],
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rollout_requests_are_told_what_is_wrong() {
    let hub = TestHub::start().await;
    upload(&hub, "2.0.0").await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let cases = [
        (
            json!({"targetCondition": "x"}),
            StatusCode::BAD_REQUEST,
            "artifact is required",
        ),
        (
            json!({"artifact": {"model": MODEL, "version": "2.0.0"}}),
            StatusCode::BAD_REQUEST,
            "targetCondition is required",
        ),
        (
            json!({"artifact": {"model": MODEL, "version": "2.0.0"}, "targetCondition": "deviceId = ", "waves": "100%"}),
            StatusCode::BAD_REQUEST,
            "targetCondition:",
        ),
        (
            json!({"artifact": {"model": MODEL, "version": "2.0.0"}, "targetCondition": "x = 1", "waves": "50%,10%"}),
            StatusCode::BAD_REQUEST,
            "waves: wave sizes are cumulative and must grow: 10% is not more than 50%",
        ),
        (
            json!({"artifact": {"model": MODEL, "version": "2.0.0"}, "targetCondition": "x = 1", "errorThreshold": "0"}),
            StatusCode::BAD_REQUEST,
            "would abort before any device failed",
        ),
        (
            json!({"artifact": {"model": MODEL, "version": "2.0.0"}, "targetCondition": "x = 1", "maxConcurrency": "ten"}),
            StatusCode::BAD_REQUEST,
            "not a valid rollout request",
        ),
        (
            json!({"rolloutId": "other", "artifact": {"model": MODEL, "version": "2.0.0"}, "targetCondition": "x = 1"}),
            StatusCode::BAD_REQUEST,
            "differs from the rollout id in the path",
        ),
        (
            rollout_body("9.9.9"),
            StatusCode::NOT_FOUND,
            "firmware artifact thermostat-x 9.9.9 not found",
        ),
        (
            json!([1]),
            StatusCode::BAD_REQUEST,
            "the body must be a rollout request",
        ),
    ];
    for (body, status, expected) in cases {
        let reply = put(&api, "bad", body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert!(
            reply.body.to_string().contains(expected),
            "{body}: {} lacks {expected:?}",
            reply.body
        );
    }
    let reply = put(&api, "no%20spaces", rollout_body("2.0.0")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let reply = api
        .send(Method::GET, "/changes?rolloutId=no%20spaces", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_read_listed_and_refused_once_over() {
    let hub = TestHub::start().await;
    upload(&hub, "2.0.0").await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let created = put(&api, "empty", rollout_body("2.0.0")).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.body["rolloutId"], json!("empty"));
    assert_eq!(created.body["status"], json!("running"));
    assert_eq!(created.body["currentWave"], json!(0));
    assert_eq!(
        created.body["waves"][0],
        json!({"wave": 1, "size": "10%", "successThreshold": "100%", "errorThreshold": "10%",
               "errorMinimumDevices": 10, "approval": false, "status": "pending",
               "statistics": {"deviceCount": 0, "pending": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}})
    );
    assert!(
        created.body["seed"].as_u64().is_some(),
        "the hub drew a seed"
    );

    // No device matches: the rollout completes at once; its feed says so.
    let mut events = hub.hub.services.store.change_notifier();
    let mut last = Value::Null;
    let completion = async {
        loop {
            events.borrow_and_update();
            let reply = api
                .send(Method::GET, "/firmware/rollouts/empty", &[], None)
                .await;
            assert_eq!(reply.status, StatusCode::OK);
            if reply.body["status"] == json!("completed") {
                return reply.body;
            }
            last = reply.body;
            events.changed().await.expect("the store runs");
        }
    };
    let completed = tokio::time::timeout(WAIT, completion)
        .await
        .unwrap_or_else(|_| {
            panic!("the rollout did not complete within {WAIT:?}; GET said {last}")
        });
    assert_eq!(completed["statistics"]["deviceCount"], json!(0));
    assert!(completed["endTime"].is_string());
    let records = hub
        .hub
        .services
        .store
        .read_changes(
            0,
            100,
            fleethub_store::ChangeFilter::rollout("empty".parse().expect("valid")),
        )
        .await
        .expect("read");
    assert_eq!(
        records.last().map(|record| record.body["status"].clone()),
        Some(json!("completed"))
    );

    let again = put(&api, "empty", rollout_body("2.0.0")).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    for action in ["pause", "resume", "approve", "abort"] {
        let reply = api
            .send(
                Method::POST,
                &format!("/firmware/rollouts/empty/{action}"),
                &[],
                None,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{action}: {}",
            reply.body
        );
        assert_eq!(
            reply.error_code.as_deref(),
            Some(ErrorCode::GenericConflict.name())
        );
        assert!(
            reply.body.to_string().contains(&format!(
                "cannot {action} rollout empty: the rollout is completed and will not change again"
            )),
            "{}",
            reply.body
        );
    }
    let reply = api
        .send(Method::POST, "/firmware/rollouts/empty/restart", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply
            .body
            .to_string()
            .contains("pause, resume, approve or abort")
    );
    let reply = api
        .send(Method::GET, "/firmware/rollouts/ghost", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.to_string().contains("rollout ghost not found"));
    let reply = api
        .send(Method::POST, "/firmware/rollouts/ghost/pause", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let list = api.send(Method::GET, "/firmware/rollouts", &[], None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body.as_array().map(Vec::len), Some(1));
    let none = api
        .send(Method::GET, "/firmware/rollouts?status=running", &[], None)
        .await;
    assert_eq!(none.body, json!([]));
    let bad = api
        .send(Method::GET, "/firmware/rollouts?status=done", &[], None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.to_string().contains("not a rollout status"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reads_as_its_latest_change_record_says() {
    // No device matches and the first wave needs approval: the rollout waits for it at once, and nothing
    // happens in it until someone approves. GET and the list must say so as soon as the feed does.
    let hub = TestHub::start().await;
    upload(&hub, "2.0.0").await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let mut body = rollout_body("2.0.0");
    body["waves"] = json!([{"size": "10%", "approval": true}, "100%"]);
    let created = put(&api, "gated", body).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);

    let waiting = wait_for_rollout_record(&hub, "gated", "waitingForApproval").await;
    let reply = api
        .send(Method::GET, "/firmware/rollouts/gated", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        (&reply.body["status"], &reply.body["waves"][0]["status"]),
        (&waiting["status"], &waiting["waves"][0]["status"]),
        "GET: {}\nthe change record: {waiting}",
        reply.body
    );
    let listed = api
        .send(
            Method::GET,
            "/firmware/rollouts?status=waitingForApproval",
            &[],
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.body[0]["status"],
        json!("waitingForApproval"),
        "{}",
        listed.body
    );

    let approved = api
        .send(Method::POST, "/firmware/rollouts/gated/approve", &[], None)
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    wait_for_rollout_record(&hub, "gated", "completed").await;
    let reply = api
        .send(Method::GET, "/firmware/rollouts/gated", &[], None)
        .await;
    assert_eq!(reply.body["status"], json!("completed"), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_need_the_rights_jobs_need() {
    let hub = TestHub::start().await;
    upload(&hub, "2.0.0").await;
    let read_only = ServiceApi::for_hub(&hub, "registryRead");
    let refused = put(&read_only, "by-reader", rollout_body("2.0.0")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let service = ServiceApi::for_hub(&hub, "service");
    let created = put(&service, "by-service", rollout_body("2.0.0")).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let writer = ServiceApi::for_hub(&hub, "registryReadWrite");
    let created = put(&writer, "by-writer", rollout_body("2.0.0")).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let read = read_only
        .send(Method::GET, "/firmware/rollouts/by-service", &[], None)
        .await;
    assert_eq!(read.status, StatusCode::OK);
    let refused = read_only
        .send(
            Method::POST,
            "/firmware/rollouts/by-service/abort",
            &[],
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let device_only = ServiceApi::for_hub(&hub, "device");
    let refused = device_only
        .send(Method::GET, "/firmware/rollouts", &[], None)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}
