//! What the job tests share: REST calls for jobs and `devices.jobs`, waiting for a job's state, and devices on
//! our SDK that answer methods and count the calls.
// Included by two test binaries (`jobs_api.rs`, `jobs_fleet.rs`); each uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleethub_device::{
    DeviceClient, DeviceClientOptions, MethodRequest, MethodResponse, ReconnectPolicy,
};
use fleethub_store::DeviceRecord;
use fleethub_testkit::{Reply, ServiceApi, TestHub};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long a test waits for a job to reach a state.
pub const JOB_WAIT: Duration = Duration::from_secs(30);

pub fn owner(hub: &TestHub) -> ServiceApi {
    ServiceApi::for_hub(hub, "iothubowner")
}

pub async fn put_job(api: &ServiceApi, job_id: &str, body: Value) -> Reply {
    api.send(Method::PUT, &format!("/jobs/v2/{job_id}"), &[], Some(body))
        .await
}

pub async fn get_job(api: &ServiceApi, job_id: &str) -> Reply {
    api.send(Method::GET, &format!("/jobs/v2/{job_id}"), &[], None)
        .await
}

pub async fn cancel_job(api: &ServiceApi, job_id: &str) -> Reply {
    api.send(
        Method::POST,
        &format!("/jobs/v2/{job_id}/cancel"),
        &[],
        None,
    )
    .await
}

/// Creates a job and expects 200 with the job `queued`.
pub async fn create_job(api: &ServiceApi, job_id: &str, body: Value) -> Value {
    let reply = put_job(api, job_id, body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "create {job_id}: {}",
        reply.body
    );
    assert_eq!(reply.body["jobId"], json!(job_id));
    assert_eq!(reply.body["status"], json!("queued"));
    reply.body
}

/// A `scheduleDeviceMethod` request over `condition`, starting now.
pub fn method_job(condition: &str, method: &str, max_execution_seconds: u64) -> Value {
    json!({
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": method, "payload": {"from": "job"}, "responseTimeoutInSeconds": 10},
        "queryCondition": condition,
        "maxExecutionTimeInSeconds": max_execution_seconds,
    })
}

/// `deviceId IN ['a', 'b']`.
pub fn devices_in(ids: &[&str]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    format!("deviceId IN [{}]", quoted.join(", "))
}

/// Polls the job until `done` holds (a job's state is only observable this way, as with Azure); returns it.
pub async fn wait_for_job(
    api: &ServiceApi,
    job_id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + JOB_WAIT;
    loop {
        let reply = get_job(api, job_id).await;
        assert_eq!(reply.status, StatusCode::OK, "get {job_id}: {}", reply.body);
        if done(&reply.body) {
            return reply.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} is not {what} after {JOB_WAIT:?}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn wait_for_status(api: &ServiceApi, job_id: &str, status: &str) -> Value {
    wait_for_job(api, job_id, status, |job| job["status"] == json!(status)).await
}

/// A page of `POST /devices/query`.
pub async fn query_page(
    api: &ServiceApi,
    query: &str,
    page_size: usize,
    continuation: Option<&str>,
) -> Reply {
    let size = page_size.to_string();
    let mut headers = vec![("x-ms-max-item-count", size.as_str())];
    if let Some(token) = continuation {
        headers.push(("x-ms-continuation", token));
    }
    api.send(
        Method::POST,
        "/devices/query",
        &headers,
        Some(json!({ "query": query })),
    )
    .await
}

/// Every row of a query, following continuation tokens; also returns how many pages it took.
pub async fn query_all(api: &ServiceApi, query: &str, page_size: usize) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let reply = query_page(api, query, page_size, token.as_deref()).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.body);
        pages += 1;
        let page = reply
            .body
            .as_array()
            .expect("query answers are arrays")
            .clone();
        assert!(page.len() <= page_size, "page larger than asked");
        rows.extend(page);
        token = reply
            .headers
            .get("x-ms-continuation")
            .map(|value| value.to_str().expect("ASCII token").to_owned());
        if token.is_none() {
            return (rows, pages);
        }
        assert!(pages < 10_000, "paging does not end");
    }
}

/// Method calls each device received, by device id.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<HashMap<String, Vec<Value>>>>);

impl Calls {
    pub fn of(&self, device_id: &str) -> Vec<Value> {
        self.0
            .lock()
            .expect("calls lock")
            .get(device_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.0
            .lock()
            .expect("calls lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn counts(&self) -> HashMap<String, usize> {
        self.0
            .lock()
            .expect("calls lock")
            .iter()
            .map(|(device, calls)| (device.clone(), calls.len()))
            .collect()
    }
}

pub fn connection_string(record: &DeviceRecord) -> String {
    let key = record
        .identity
        .authentication
        .primary_key
        .as_deref()
        .expect("SAS identity");
    format!(
        "HostName=localhost;DeviceId={};SharedAccessKey={key}",
        record.key.device_id
    )
}

pub fn device_options(ca_pem: &str, mqtt_port: u16) -> DeviceClientOptions {
    DeviceClientOptions::default()
        .with_ca_pem(ca_pem.to_owned())
        .with_port(mqtt_port)
        .with_reconnect(
            ReconnectPolicy::default()
                .with_initial_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(500)),
        )
}

/// Connects `record` with our SDK and answers every method with 200 `{"device": id}`, recording the call.
pub async fn answering_device(
    record: &DeviceRecord,
    ca_pem: &str,
    mqtt_port: u16,
    calls: &Calls,
) -> DeviceClient {
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        DeviceClient::connect(
            &connection_string(record),
            device_options(ca_pem, mqtt_port),
        ),
    )
    .await
    .expect("connected in time")
    .expect("the hub accepts the device");
    let device_id = record.key.device_id.to_string();
    let calls = calls.clone();
    client
        .on_method(move |request: MethodRequest| {
            let device_id = device_id.clone();
            let calls = calls.clone();
            async move {
                calls
                    .0
                    .lock()
                    .expect("calls lock")
                    .entry(device_id.clone())
                    .or_default()
                    .push(json!({"method": request.method_name, "payload": request.payload}));
                MethodResponse::ok(json!({ "device": device_id }))
            }
        })
        .await
        .expect("subscribed to methods");
    client
}
