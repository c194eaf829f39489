//! `GET /metrics` and the statistics endpoints against a real hub: after telemetry, twin writes, direct
//! methods and C2D traffic from a real device, the scrape parses as Prometheus text, every sample belongs to a
//! declared metric, counters moved by what was done and never go back, and histograms are consistent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleethub_device::{DeviceClient, DeviceClientOptions, Message, MethodResponse};
use fleethub_testkit::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// One scrape: TYPE per metric family, and every sample by its name with labels.
struct Scrape {
    types: HashMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series}: {:?}", self.samples.keys()))
    }
}

fn parse(text: &str) -> Scrape {
    let mut types = HashMap::new();
    let mut helped = HashMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helped.contains_key(name), "HELP comes before TYPE: {line}");
            types.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty());
            helped.insert(name.to_owned(), ());
        } else {
            let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
            let name = series.split('{').next().expect("a name");
            assert!(
                name.chars()
                    .all(|character| character.is_ascii_alphanumeric() || character == '_'),
                "{name}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| types.get(*family).is_some_and(|kind| kind == "histogram"))
                .unwrap_or(name);
            let kind = types
                .get(family)
                .unwrap_or_else(|| panic!("{name} has no TYPE before it"));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counters end in _total: {name}");
            }
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
    }
    Scrape { types, samples }
}

/// Buckets never decrease with their bound, `+Inf` equals the count, and the sum is not negative.
fn check_histogram(scrape: &Scrape, name: &str) -> f64 {
    assert_eq!(
        scrape.types.get(name).map(String::as_str),
        Some("histogram")
    );
    let mut buckets: Vec<(f64, f64)> = scrape
        .samples
        .iter()
        .filter_map(|(series, value)| {
            let bound = series.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let bound = bound.strip_suffix("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().expect("a numeric bound")
            };
            Some((bound, *value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name} has buckets");
    assert!(
        buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "{name} buckets are cumulative: {buckets:?}"
    );
    let count = scrape.value(&format!("{name}_count"));
    assert_eq!(buckets.last().expect("+Inf").0, f64::INFINITY);
    assert_eq!(buckets.last().expect("+Inf").1, count, "{name}");
    assert!(scrape.value(&format!("{name}_sum")) >= 0.0);
    count
}

async fn scrape(api: &ServiceApi, authorization: &str) -> Scrape {
    let response = api
        .client
        .get(format!("{}/metrics", api.base))
        .header("authorization", authorization)
        .send()
        .await
        .expect("the hub answers");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(&response.text().await.expect("a body"))
}

/// Scrapes until `ready` holds (counters that move after the answer, such as a PUBACK's), up to [`WAIT`].
async fn scrape_until(api: &ServiceApi, token: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scraped = scrape(api, token).await;
        if ready(&scraped) {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never got there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new SAS device, connected with our device SDK.
async fn connected_device(hub: &TestHub, device_id: &str) -> DeviceClient {
    let record = hub.create_device(device_id).await;
    let key = record
        .identity
        .authentication
        .primary_key
        .clone()
        .expect("a SAS device");
    DeviceClient::connect(
        &format!("HostName=localhost;DeviceId={device_id};SharedAccessKey={key}"),
        DeviceClientOptions::default()
            .with_ca_pem(hub.hub.ca_pem.clone())
            .with_port(hub.hub.mqtt_address.port()),
    )
    .await
    .expect("the device connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_devices_and_services_did() {
    let hub = TestHub::start().await;
    let service = ServiceApi::for_hub(&hub, "service");
    let token = service.token(unix_now() + 3600);
    let bearer = format!("Bearer {token}");

    let before = scrape(&service, &bearer).await;
    assert_eq!(before.value("fleethub_connected_devices"), 0.0);
    assert_eq!(
        before.value("fleethub_telemetry_messages_received_total{qos=\"1\"}"),
        0.0
    );

    let device = connected_device(&hub, "metered").await;
    device
        .on_method(|_| async { MethodResponse::ok(json!({"done": true})) })
        .await
        .expect("methods subscribed");
    let mut c2d = device
        .cloud_to_device_messages()
        .await
        .expect("C2D subscribed");

    for index in 0..3 {
        device
            .send_message(Message::new(format!("qos1-{index}")))
            .await
            .expect("QoS 1 telemetry is acknowledged");
    }
    device
        .send_message_at_most_once(Message::new("qos0"))
        .await
        .expect("QoS 0 telemetry is sent");
    device
        .patch_reported(&json!({"temperature": 21}))
        .await
        .expect("reported patch");
    let patched = service
        .send(
            Method::PATCH,
            "/twins/metered",
            &[],
            Some(json!({"properties": {"desired": {"mode": "eco"}}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let called = service
        .send(
            Method::POST,
            "/twins/metered/methods",
            &[],
            Some(json!({"methodName": "reboot", "responseTimeoutInSeconds": 10})),
        )
        .await;
    assert_eq!(called.status, StatusCode::OK, "{}", called.body);
    let offline = service
        .send(
            Method::POST,
            "/twins/nobody/methods",
            &[],
            Some(json!({"methodName": "reboot"})),
        )
        .await;
    assert_eq!(offline.status, StatusCode::NOT_FOUND);
    for text in ["first", "second"] {
        let sent = service
            .send(
                Method::POST,
                "/devices/metered/messages/deviceBound",
                &[],
                Some(json!({ "body": text })),
            )
            .await;
        assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
    }
    // Taking the second message acknowledges the first.
    for _ in 0..2 {
        tokio::time::timeout(WAIT, c2d.next())
            .await
            .expect("a C2D message in time")
            .expect("the stream is open");
    }

    // A raw SAS token works as well as a bearer token, and so does a RegistryRead policy.
    let reader = ServiceApi::for_hub(&hub, "registryRead");
    let after = scrape_until(&reader, &reader.token(unix_now() + 3600), |scrape| {
        scrape.value("fleethub_c2d_messages_acknowledged_total") >= 1.0
    })
    .await;
    let grew = |series: &str| after.value(series) - before.value(series);
    assert_eq!(after.value("fleethub_connected_devices"), 1.0);
    assert_eq!(
        grew("fleethub_telemetry_messages_received_total{qos=\"1\"}"),
        3.0
    );
    assert_eq!(
        grew("fleethub_telemetry_messages_received_total{qos=\"0\"}"),
        1.0
    );
    assert_eq!(grew("fleethub_twin_writes_total{source=\"device\"}"), 1.0);
    assert_eq!(grew("fleethub_twin_writes_total{source=\"service\"}"), 1.0);
    assert_eq!(
        grew("fleethub_method_calls_total{result=\"answered\"}"),
        1.0
    );
    assert_eq!(grew("fleethub_method_calls_total{result=\"failed\"}"), 1.0);
    assert!(grew("fleethub_c2d_messages_sent_total") >= 2.0);
    assert!(grew("fleethub_store_commits_total") >= 1.0);
    assert!(
        after.value("fleethub_store_writes_total") >= after.value("fleethub_store_commits_total")
    );
    assert_eq!(after.types["fleethub_store_write_queue_depth"], "gauge");

    assert_eq!(
        check_histogram(&after, "fleethub_method_call_duration_seconds"),
        2.0
    );
    let commits = check_histogram(&after, "fleethub_store_commit_duration_seconds");
    assert_eq!(
        commits,
        after.value("fleethub_store_commits_total")
            + after.value("fleethub_store_commit_failures_total")
    );
    // Counters never go back.
    for (series, value) in &before.samples {
        if before
            .types
            .get(series.split('{').next().unwrap_or_default())
            == Some(&"counter".to_owned())
        {
            assert!(after.value(series) >= *value, "{series} went back");
        }
    }
    drop(c2d);
    drop(device);
}

#[tokio::test]
async fn metrics_need_a_valid_token_with_a_service_or_read_right() {
    let hub = TestHub::start().await;
    let device_policy = ServiceApi::for_hub(&hub, "device");
    let response = device_policy
        .client
        .get(format!("{}/metrics", device_policy.base))
        .header(
            "authorization",
            format!("Bearer {}", device_policy.token(unix_now() + 3600)),
        )
        .send()
        .await
        .expect("the hub answers");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    for authorization in [None, Some("Bearer nonsense")] {
        let mut request = device_policy
            .client
            .get(format!("{}/metrics", device_policy.base));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.expect("the hub answers");
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
    }
}

#[tokio::test]
async fn statistics_count_devices_and_connections() {
    let hub = TestHub::start().await;
    let service = ServiceApi::for_hub(&hub, "service");
    let record = hub.create_device("counted").await;
    hub.create_device("idle").await;
    let _client = hub.connected(&record).await;
    let statistics = service
        .send(Method::GET, "/statistics/service", &[], None)
        .await;
    assert_eq!(statistics.status, StatusCode::OK);
    assert_eq!(statistics.body, json!({"connectedDeviceCount": 1}));
    let reader = ServiceApi::for_hub(&hub, "registryRead");
    let devices = reader
        .send(Method::GET, "/statistics/devices", &[], None)
        .await;
    assert_eq!(devices.status, StatusCode::OK);
    assert_eq!(devices.body["totalDeviceCount"], 2, "{}", devices.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_running_jobs_and_routing_endpoints() {
    let hub = TestHub::start().await;
    let owner = ServiceApi::for_hub(&hub, "iothubowner");
    let token = owner.token(unix_now() + 3600);
    let before = scrape(&owner, &token).await;
    assert_eq!(before.value("fleethub_jobs_active"), 0.0);
    assert_eq!(before.value("fleethub_rollouts_active"), 0.0);
    assert_eq!(
        before.value("fleethub_job_devices{status=\"running\"}"),
        0.0
    );

    // A job over one offline device waits for it: active, its device not finished.
    hub.create_device("asleep").await;
    let job = owner
        .send(
            Method::PUT,
            "/jobs/v2/wake",
            &[],
            Some(json!({
                "type": "scheduleDeviceMethod",
                "cloudToDeviceMethod": {"methodName": "wake", "responseTimeoutInSeconds": 10},
                "queryCondition": "deviceId = 'asleep'",
                "maxExecutionTimeInSeconds": 600,
            })),
        )
        .await;
    assert_eq!(job.status, StatusCode::OK, "{}", job.body);
    let waiting = scrape_until(&owner, &token, |scrape| {
        scrape.value("fleethub_job_devices{status=\"pending\"}")
            + scrape.value("fleethub_job_devices{status=\"running\"}")
            == 1.0
    })
    .await;
    assert_eq!(waiting.value("fleethub_jobs_active"), 1.0);
    assert_eq!(
        waiting.value("fleethub_job_devices{status=\"succeeded\"}"),
        0.0
    );

    // A file-sink endpoint: what a device sends is delivered and counted, and nothing is left unread.
    let routing = owner
        .send(
            Method::PUT,
            "/routing",
            &[],
            Some(json!({
                "endpoints": {"fileSinks": [{"name": "archive", "path": "archive.jsonl"}]},
                "routes": [{"name": "all", "source": "DeviceMessages", "condition": "true", "endpointNames": ["archive"]}],
            })),
        )
        .await;
    assert_eq!(routing.status, StatusCode::OK, "{}", routing.body);
    let device = connected_device(&hub, "sender").await;
    for index in 0..5 {
        device
            .send_message(Message::new(format!("archived-{index}")))
            .await
            .expect("acknowledged");
    }
    let delivered = scrape_until(&owner, &token, |scrape| {
        scrape
            .samples
            .get("fleethub_routing_endpoint_delivered_total{endpoint=\"archive\"}")
            .is_some_and(|delivered| *delivered >= 5.0)
    })
    .await;
    assert_eq!(
        delivered.types["fleethub_routing_endpoint_unread_events"],
        "gauge"
    );
    assert_eq!(
        delivered.value("fleethub_routing_endpoint_dead_lettered_total{endpoint=\"archive\"}"),
        0.0
    );
    assert_eq!(
        delivered
            .value("fleethub_routing_endpoint_healthy{endpoint=\"archive\",status=\"healthy\"}"),
        1.0
    );
    let drained = scrape_until(&owner, &token, |scrape| {
        scrape.value("fleethub_routing_endpoint_unread_events{endpoint=\"archive\"}") == 0.0
    })
    .await;
    assert!(
        drained.value("fleethub_routing_endpoint_delivered_total{endpoint=\"archive\"}") >= 5.0
    );

    // Cancelled, the job is no longer active.
    let cancelled = owner
        .send(Method::POST, "/jobs/v2/wake/cancel", &[], None)
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    scrape_until(&owner, &token, |scrape| {
        scrape.value("fleethub_jobs_active") == 0.0
    })
    .await;
    drop(device);
}
