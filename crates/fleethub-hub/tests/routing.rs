//! Message routing end to end on a real hub (MQTT/TLS devices through our device SDK, the REST API through
//! the service SDK) with a real HTTP webhook server in the test (axum on port 0) and file sinks on disk:
//! routes by application property, `$body`, `$twin` and system property; the fallback route; enrichments;
//! twin change events routed by source; retries, backoff and dead letters; a webhook catching up after
//! downtime; configuration and endpoint cursors across a restart; invalid configurations.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use fleethub_device::{DeviceClient, DeviceClientOptions, Message};
use fleethub_hub::HubConfig;
use fleethub_hub::routing::RoutingSettings;
use fleethub_protocol::events::EventMessage;
use fleethub_protocol::ids::{DeviceId, ETag};
use fleethub_protocol::routing::{
    EndpointHealthStatus, RoutingProperties, TestAllRoutesInput, TestResultStatus, TestRouteInput,
};
use fleethub_service::{
    DeadLetterQuery, EventReadOptions, EventStart, EventStream, ServiceClient, ServiceClientOptions,
};
use fleethub_store::DeviceRecord;
use fleethub_testkit::TestHub;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

// ---- a webhook receiver ----

const ACCEPT: u16 = 200;

/// One request the webhook received.
#[derive(Clone, Debug)]
struct Request {
    at: Instant,
    headers: HeaderMap,
    message: EventMessage,
    /// What it answered.
    status: u16,
}

#[derive(Default)]
struct Received {
    requests: Mutex<Vec<Request>>,
    changed: Notify,
    /// The status it answers with now.
    status: AtomicU16,
}

/// A real HTTP server on 127.0.0.1:0 recording every request to `/hook`.
struct Webhook {
    url: String,
    received: Arc<Received>,
}

impl Webhook {
    async fn start() -> Webhook {
        let received = Arc::new(Received::default());
        received.status.store(ACCEPT, Ordering::SeqCst);
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(Arc::clone(&received));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook server");
        let address = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Webhook {
            url: format!("http://{address}/hook"),
            received,
        }
    }

    fn answer(&self, status: u16) {
        self.received.status.store(status, Ordering::SeqCst);
    }

    fn requests(&self) -> Vec<Request> {
        self.received.requests.lock().unwrap().clone()
    }

    /// Accepted requests' message bodies, in arrival order.
    fn delivered(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|request| request.status == ACCEPT)
            .map(|request| request.message.body)
            .collect()
    }

    /// Waits until `done` holds for the requests so far.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        let wait = async {
            loop {
                let changed = self.received.changed.notified();
                let requests = self.requests();
                if done(&requests) {
                    return requests;
                }
                changed.await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("webhook: no {what} within {WAIT:?}: {:?}", self.requests()))
    }
}

async fn record(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let status = received.status.load(Ordering::SeqCst);
    let message: EventMessage =
        serde_json::from_slice(&body).expect("the webhook body is an event message");
    received.requests.lock().unwrap().push(Request {
        at: Instant::now(),
        headers,
        message,
        status,
    });
    received.changed.notify_waiters();
    StatusCode::from_u16(status).expect("a status")
}

// ---- the hub and its clients ----

fn fast_retries() -> RoutingSettings {
    RoutingSettings {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        webhook_timeout: Duration::from_secs(5),
        ..RoutingSettings::default()
    }
}

async fn start_hub(settings: RoutingSettings) -> TestHub {
    TestHub::start_with(|config| config.routing = settings).await
}

fn data_dir(hub: &TestHub) -> PathBuf {
    hub.directory.path().join("data")
}

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

async fn device(hub: &TestHub, record: &DeviceRecord) -> DeviceClient {
    let key = record
        .identity
        .authentication
        .primary_key
        .as_deref()
        .expect("SAS identity");
    let module = record
        .key
        .module_id
        .as_ref()
        .map(|module| format!(";ModuleId={module}"))
        .unwrap_or_default();
    let connection_string = format!(
        "HostName=localhost;DeviceId={}{module};SharedAccessKey={key}",
        record.key.device_id
    );
    let options = DeviceClientOptions::default()
        .with_ca_pem(hub.hub.ca_pem.clone())
        .with_port(hub.hub.mqtt_address.port());
    DeviceClient::connect(&connection_string, options)
        .await
        .expect("the device connects")
}

async fn configure(client: &ServiceClient, routing: Value) -> ETag {
    let routing: RoutingProperties = serde_json::from_value(routing).expect("a routing shape");
    client
        .set_routing(&routing, None)
        .await
        .expect("the hub takes the configuration")
        .etag
}

async fn events_of(client: &ServiceClient, device: &str) -> EventStream {
    client
        .read_events(EventReadOptions {
            device: Some(device.parse::<DeviceId>().unwrap()),
            start: EventStart::Latest,
            ..EventReadOptions::default()
        })
        .await
        .expect("the stream opens")
}

async fn next_event(stream: &mut EventStream) -> EventMessage {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event within the timeout")
        .expect("the stream goes on")
        .expect("no stream error")
}

/// The next telemetry message on the stream (connection events and the like are skipped).
async fn next_telemetry(stream: &mut EventStream) -> EventMessage {
    loop {
        let event = next_event(stream).await;
        if event.message_source() == Some("Telemetry") {
            return event;
        }
    }
}

/// Waits (polling: a file gives no notice) until `done` is true.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The messages in a file sink's file (none when it does not exist yet).
fn sink_lines(path: &Path) -> Vec<EventMessage> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is an event message"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until every endpoint has read the whole log, then returns a sink's messages' bodies.
async fn settled_sink(client: &ServiceClient, path: &Path) -> Vec<String> {
    eventually("every endpoint reading the whole log", || async {
        let health = client.routing_health().await.expect("health");
        health
            .endpoints
            .iter()
            .all(|endpoint| endpoint.unread_events == 0)
    })
    .await;
    sink_lines(path)
        .into_iter()
        .map(|message| message.body)
        .collect()
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_on_application_properties_body_system_properties_and_twin() {
    let hub = start_hub(fast_retries()).await;
    let webhook = Webhook::start().await;
    let client = service(&hub, "iothubowner");
    let plant = hub.create_device("plant-1").await;
    let lab = hub.create_device("lab-1").await;
    let module = hub.create_module("plant-1", "filter").await;
    client
        .update_twin(
            &"lab-1".parse().unwrap(),
            &json!({"tags": {"site": "lab"}}),
            None,
        )
        .await
        .unwrap();
    configure(
        &client,
        json!({
            "endpoints": {
                "webhooks": [{"name": "alerts", "url": webhook.url, "headers": {"Authorization": "Bearer secret"}}],
                "fileSinks": [{"name": "hot", "path": "telemetry/hot.jsonl"}, {"name": "lab", "path": "lab.jsonl"}]
            },
            "routes": [
                {"name": "critical", "source": "DeviceMessages", "condition": "level = 'critical'", "endpointNames": ["alerts"]},
                {"name": "hot", "source": "DeviceMessages", "condition": "$body.temperature > 40", "endpointNames": ["hot"]},
                {"name": "lab", "source": "DeviceMessages", "condition": "$twin.tags.site = 'lab'", "endpointNames": ["lab", "events"]},
                {"name": "modules", "source": "DeviceMessages", "condition": "$connectionModuleId = 'filter'", "endpointNames": ["alerts"]}
            ]
        }),
    )
    .await;
    let mut plant_events = events_of(&client, "plant-1").await;
    let mut lab_events = events_of(&client, "lab-1").await;
    let plant_device = device(&hub, &plant).await;
    let lab_device = device(&hub, &lab).await;
    let module_device = device(&hub, &module).await;

    // Property names are case-insensitive; values are not.
    plant_device
        .send_message(Message::new("critical-1").with_property("Level", "critical"))
        .await
        .unwrap();
    plant_device
        .send_message(Message::json(&json!({"temperature": 50})))
        .await
        .unwrap();
    // The same body without the JSON content type: `$body` is not evaluated, so it falls back to events.
    plant_device
        .send_message(Message::new(r#"{"temperature":50}"#))
        .await
        .unwrap();
    lab_device
        .send_message(Message::new("lab-reading"))
        .await
        .unwrap();
    module_device
        .send_message(Message::new("from-module"))
        .await
        .unwrap();
    plant_device
        .send_message(Message::new("marker"))
        .await
        .unwrap();

    // `events` shows what fell back or was routed there, nothing routed elsewhere only.
    assert_eq!(
        next_telemetry(&mut plant_events).await.body,
        r#"{"temperature":50}"#
    );
    let marker = next_telemetry(&mut plant_events).await;
    assert_eq!(marker.body, "marker");
    assert!(
        !marker.system_properties.contains_key("fleethub-routing"),
        "the routing stamp never shows"
    );
    assert_eq!(next_telemetry(&mut lab_events).await.body, "lab-reading");

    let requests = webhook
        .wait_for("two messages", |requests| requests.len() >= 2)
        .await;
    assert_eq!(webhook.delivered(), ["critical-1", "from-module"]);
    let first = &requests[0];
    assert_eq!(first.headers["authorization"], "Bearer secret");
    assert_eq!(first.headers["x-fleethub-endpoint"], "alerts");
    assert_eq!(first.headers["x-fleethub-delivery-attempt"], "1");
    assert_eq!(
        first.headers["x-fleethub-sequence-number"],
        first.message.sequence_number.to_string().as_str()
    );
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(first.message.property("Level"), Some("critical"));
    assert_eq!(first.message.device_id(), Some("plant-1"));
    assert!(
        !first
            .message
            .system_properties
            .contains_key("fleethub-routing")
    );
    assert_eq!(requests[1].message.module_id(), Some("filter"));

    let routes = data_dir(&hub).join("routes");
    let hot = settled_sink(&client, &routes.join("hot/telemetry/hot.jsonl")).await;
    assert_eq!(hot, [r#"{"temperature":50}"#]);
    let lab_sink = sink_lines(&routes.join("lab/lab.jsonl"));
    assert_eq!(lab_sink.len(), 1);
    assert_eq!(lab_sink[0].body, "lab-reading");
    assert_eq!(lab_sink[0].device_id(), Some("lab-1"));

    let health = client.routing_health().await.unwrap();
    let critical = health
        .routes
        .iter()
        .find(|route| route.name == "critical")
        .unwrap();
    assert_eq!(critical.matched, 1);
    assert!(
        critical.not_boolean >= 4,
        "messages without `level`: {critical:?}"
    );
    let alerts = health
        .endpoints
        .iter()
        .find(|endpoint| endpoint.endpoint_id == "alerts")
        .unwrap();
    assert_eq!(alerts.health_status, EndpointHealthStatus::Healthy);
    assert_eq!(alerts.delivered, 2);
    for client in [plant_device, lab_device, module_device] {
        client.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_route_takes_unmatched_messages_and_disabled_it_drops_them() {
    let hub = start_hub(fast_retries()).await;
    let client = service(&hub, "iothubowner");
    let record = hub.create_device("dev-fallback").await;
    let endpoints = json!({"fileSinks": [{"name": "critical", "path": "c.jsonl"}, {"name": "rest", "path": "r.jsonl"}]});
    let critical_route = json!({"name": "critical", "source": "DeviceMessages", "condition": "level = 'critical'", "endpointNames": ["critical"]});
    configure(
        &client,
        json!({
            "endpoints": endpoints,
            "routes": [critical_route],
            "fallbackRoute": {"name": "$fallback", "source": "DeviceMessages", "condition": "true", "endpointNames": ["rest"], "isEnabled": true}
        }),
    )
    .await;
    let mut events = events_of(&client, "dev-fallback").await;
    let device = device(&hub, &record).await;
    device
        .send_message(Message::new("m1").with_property("level", "critical"))
        .await
        .unwrap();
    device.send_message(Message::new("m2")).await.unwrap();

    configure(
        &client,
        json!({
            "endpoints": endpoints,
            "routes": [critical_route],
            "fallbackRoute": {"source": "DeviceMessages", "endpointNames": ["rest"], "isEnabled": false}
        }),
    )
    .await;
    device
        .send_message(Message::new("m3-dropped"))
        .await
        .unwrap();
    // Without a fallback route, unmatched device messages go to `events`.
    configure(
        &client,
        json!({"endpoints": endpoints, "routes": [critical_route]}),
    )
    .await;
    device.send_message(Message::new("m4")).await.unwrap();

    assert_eq!(next_telemetry(&mut events).await.body, "m4");
    let routes = data_dir(&hub).join("routes");
    assert_eq!(
        settled_sink(&client, &routes.join("rest/r.jsonl")).await,
        ["m2"]
    );
    assert_eq!(
        settled_sink(&client, &routes.join("critical/c.jsonl")).await,
        ["m1"]
    );
    device.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichments_are_stamped_on_the_messages_of_their_endpoints() {
    let hub = start_hub(fast_retries()).await;
    let webhook = Webhook::start().await;
    let client = service(&hub, "iothubowner");
    let tagged = hub.create_device("tagged").await;
    let untagged = hub.create_device("untagged").await;
    client
        .update_twin(
            &"tagged".parse().unwrap(),
            &json!({"tags": {"region": "EU"}}),
            None,
        )
        .await
        .unwrap();
    configure(
        &client,
        json!({
            "endpoints": {"webhooks": [{"name": "alerts", "url": webhook.url}]},
            "routes": [{"name": "all", "source": "DeviceMessages", "endpointNames": ["events", "alerts"]}],
            "enrichments": [
                {"key": "region", "value": "$twin.tags.region", "endpointNames": ["alerts"]},
                {"key": "hub", "value": "$iothubname", "endpointNames": ["events", "alerts"]},
                {"key": "tier", "value": "gold", "endpointNames": ["events"]}
            ]
        }),
    )
    .await;
    let mut events = events_of(&client, "tagged").await;
    let tagged_device = device(&hub, &tagged).await;
    tagged_device
        .send_message(Message::new("reading").with_property("tier", "bronze"))
        .await
        .unwrap();
    let untagged_device = device(&hub, &untagged).await;
    untagged_device
        .send_message(Message::new("untagged-reading"))
        .await
        .unwrap();

    let on_events = next_telemetry(&mut events).await;
    assert_eq!(on_events.property("hub"), Some("localhost"));
    assert_eq!(
        on_events.property("tier"),
        Some("gold"),
        "an enrichment replaces a property of the same name"
    );
    assert_eq!(
        on_events.property("region"),
        None,
        "not an events enrichment"
    );

    webhook
        .wait_for("both messages", |requests| requests.len() >= 2)
        .await;
    // The two devices' messages may be in different partitions: found by device, not by order.
    let requests = webhook.requests();
    let of = |device: &str| {
        requests
            .iter()
            .map(|request| &request.message)
            .find(|message| message.device_id() == Some(device))
            .unwrap_or_else(|| panic!("no message of {device}"))
    };
    let tagged_message = of("tagged");
    assert_eq!(tagged_message.property("region"), Some("EU"));
    assert_eq!(tagged_message.property("hub"), Some("localhost"));
    assert_eq!(tagged_message.property("tier"), Some("bronze"));
    // Azure stamps the path itself when the twin has no value there.
    assert_eq!(of("untagged").property("region"), Some("$twin.tags.region"));
    tagged_device.disconnect().await.unwrap();
    untagged_device.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_change_events_are_routed_by_their_own_routes_only() {
    let hub = start_hub(fast_retries()).await;
    let webhook = Webhook::start().await;
    let client = service(&hub, "iothubowner");
    let record = hub.create_device("dev-twin").await;
    // No route for connection-state or lifecycle events; twin updates to the webhook only.
    configure(
        &client,
        json!({
            "endpoints": {"webhooks": [{"name": "twins", "url": webhook.url}]},
            "routes": [{"name": "twin-updates", "source": "TwinChangeEvents", "condition": "opType = 'updateTwin' AND $body.properties.reported.firmware = '2.0'", "endpointNames": ["twins"]}]
        }),
    )
    .await;
    let mut events = events_of(&client, "dev-twin").await;
    let device = device(&hub, &record).await;
    device
        .patch_reported(&json!({"firmware": "1.0"}))
        .await
        .unwrap();
    device
        .patch_reported(&json!({"firmware": "2.0"}))
        .await
        .unwrap();
    device.send_message(Message::new("marker")).await.unwrap();

    // Neither the connection event nor the twin changes reach `events`: the telemetry comes first.
    let first = next_event(&mut events).await;
    assert_eq!(first.message_source(), Some("Telemetry"), "{first:?}");
    assert_eq!(first.body, "marker");

    let requests = webhook
        .wait_for("the twin change", |requests| !requests.is_empty())
        .await;
    let message = &requests[0].message;
    assert_eq!(message.message_source(), Some("twinChangeEvents"));
    assert_eq!(message.property("opType"), Some("updateTwin"));
    let body: Value = serde_json::from_str(&message.body).unwrap();
    assert_eq!(body["properties"]["reported"]["firmware"], json!("2.0"));
    device.disconnect().await.unwrap();
    // The 1.0 change did not match: only one was delivered once everything is read.
    eventually("the endpoint reading the whole log", || async {
        client.routing_health().await.unwrap().endpoints[0].unread_events == 0
    })
    .await;
    assert_eq!(webhook.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_with_growing_backoff_then_dead_lettered() {
    let settings = RoutingSettings {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
        ..fast_retries()
    };
    let hub = start_hub(settings).await;
    let webhook = Webhook::start().await;
    webhook.answer(500);
    let client = service(&hub, "iothubowner");
    let record = hub.create_device("dev-dead").await;
    configure(
        &client,
        json!({
            "endpoints": {"webhooks": [{"name": "flaky", "url": webhook.url}]},
            "routes": [{"name": "all", "source": "DeviceMessages", "endpointNames": ["flaky"]}]
        }),
    )
    .await;
    let device = device(&hub, &record).await;
    device.send_message(Message::new("doomed")).await.unwrap();

    let attempts = webhook
        .wait_for("four attempts", |requests| requests.len() >= 4)
        .await;
    let numbers: Vec<&str> = attempts
        .iter()
        .map(|request| {
            request.headers["x-fleethub-delivery-attempt"]
                .to_str()
                .unwrap()
        })
        .collect();
    assert_eq!(numbers, ["1", "2", "3", "4"]);
    let gaps: Vec<Duration> = attempts
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect();
    for (gap, backoff) in gaps.iter().zip([200u64, 400, 800]) {
        assert!(
            *gap >= Duration::from_millis(backoff),
            "gap {gap:?} shorter than the backoff of {backoff} ms: {gaps:?}"
        );
    }
    // The lower bounds double: the backoff grows. (Comparing the gaps with each other instead would fail
    // on a loaded machine, where one request's latency can exceed a backoff step.)

    eventually("a dead letter", || async {
        let page = client.dead_letters(&DeadLetterQuery::default()).await;
        !page.unwrap().dead_letters.is_empty()
    })
    .await;
    let letters = client
        .dead_letters(&DeadLetterQuery::default())
        .await
        .unwrap()
        .dead_letters;
    let letter = &letters[0];
    assert_eq!(letter.endpoint_name, "flaky");
    assert_eq!(letter.attempts, 4);
    assert!(letter.last_error.contains("500"), "{}", letter.last_error);
    assert_eq!(letter.message.body, "doomed");
    assert_eq!(letter.message.device_id(), Some("dev-dead"));
    // The health follows the dead letter's write.
    eventually("the endpoint marked dead", || async {
        let health = client.routing_health().await.unwrap();
        health.endpoints[0].health_status == EndpointHealthStatus::Dead
            && health.endpoints[0].dead_lettered == 1
    })
    .await;
    assert_eq!(webhook.requests().len(), 4, "no fifth attempt");

    // The endpoint moved on: the next message gets through once the webhook works.
    webhook.answer(ACCEPT);
    device.send_message(Message::new("lucky")).await.unwrap();
    webhook
        .wait_for("the next message", |requests| {
            requests.iter().any(|request| request.status == ACCEPT)
        })
        .await;
    assert_eq!(webhook.delivered(), ["lucky"]);
    // Filtering by endpoint, and paging.
    let other = client
        .dead_letters(&DeadLetterQuery {
            endpoint: Some("other".into()),
            ..DeadLetterQuery::default()
        })
        .await
        .unwrap();
    assert!(other.dead_letters.is_empty());
    device.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_back_from_downtime_gets_every_message_in_order() {
    let settings = RoutingSettings {
        max_attempts: 10_000,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..fast_retries()
    };
    let hub = start_hub(settings).await;
    let webhook = Webhook::start().await;
    webhook.answer(503);
    let client = service(&hub, "iothubowner");
    let record = hub.create_device("dev-order").await;
    configure(
        &client,
        json!({
            "endpoints": {"webhooks": [{"name": "orders", "url": webhook.url}]},
            "routes": [{"name": "all", "source": "DeviceMessages", "endpointNames": ["orders"]}]
        }),
    )
    .await;
    let device = device(&hub, &record).await;
    let expected: Vec<String> = (0..20).map(|index| format!("message-{index:02}")).collect();
    for body in &expected {
        device
            .send_message(Message::new(body.clone()))
            .await
            .unwrap();
    }
    webhook
        .wait_for("failed attempts", |requests| requests.len() >= 3)
        .await;
    assert_eq!(
        client.routing_health().await.unwrap().endpoints[0].health_status,
        EndpointHealthStatus::Unhealthy
    );
    webhook.answer(ACCEPT);
    webhook
        .wait_for("every message", |requests| {
            requests
                .iter()
                .filter(|request| request.status == ACCEPT)
                .count()
                >= expected.len()
        })
        .await;
    assert_eq!(webhook.delivered(), expected);
    let letters = client
        .dead_letters(&DeadLetterQuery::default())
        .await
        .unwrap();
    assert!(letters.dead_letters.is_empty());
    device.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_endpoint_cursors_survive_a_restart() {
    let webhook = Webhook::start().await;
    webhook.answer(503);
    let settings = RoutingSettings {
        max_attempts: 10_000,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..fast_retries()
    };
    let hub = start_hub(settings.clone()).await;
    let client = service(&hub, "iothubowner");
    let record = hub.create_device("dev-restart").await;
    let etag = configure(
        &client,
        json!({
            "endpoints": {
                "webhooks": [{"name": "hook", "url": webhook.url}],
                "fileSinks": [{"name": "archive", "path": "all.jsonl"}]
            },
            "routes": [{"name": "all", "source": "DeviceMessages", "endpointNames": ["hook", "archive"]}]
        }),
    )
    .await;
    let sink = data_dir(&hub).join("routes/archive/all.jsonl");
    let device_client = device(&hub, &record).await;
    for index in 0..5 {
        device_client
            .send_message(Message::new(format!("before-{index}")))
            .await
            .unwrap();
    }
    eventually("the file sink holding the first five", || async {
        sink_lines(&sink).len() == 5
    })
    .await;
    webhook
        .wait_for("a failed attempt", |requests| !requests.is_empty())
        .await;
    device_client.disconnect().await.unwrap();
    let TestHub {
        hub: running,
        directory,
    } = hub;
    running.shutdown(Duration::from_secs(5)).await;

    webhook.answer(ACCEPT);
    let mut config = HubConfig::for_loopback(directory.path().join("data"));
    config.routing = settings;
    let hub = TestHub {
        hub: fleethub_hub::start(config)
            .await
            .expect("the hub starts again"),
        directory,
    };
    let client = service(&hub, "iothubowner");
    let configuration = client.get_routing().await.unwrap();
    assert_eq!(configuration.etag, etag);
    assert_eq!(configuration.routing.routes[0].name, "all");

    let device_client = device(&hub, &record).await;
    for index in 0..3 {
        device_client
            .send_message(Message::new(format!("after-{index}")))
            .await
            .unwrap();
    }
    let expected = [
        "before-0", "before-1", "before-2", "before-3", "before-4", "after-0", "after-1", "after-2",
    ];
    webhook
        .wait_for("every message", |requests| {
            requests
                .iter()
                .filter(|request| request.status == ACCEPT)
                .count()
                >= expected.len()
        })
        .await;
    assert_eq!(webhook.delivered(), expected);
    // The file sink's cursor was saved at shutdown: nothing is written twice.
    let lines = settled_sink(&client, &sink).await;
    assert_eq!(lines, expected);
    device_client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_are_refused_with_the_reason_and_change_nothing() {
    let hub = start_hub(fast_retries()).await;
    let client = service(&hub, "iothubowner");
    let initial = client.get_routing().await.unwrap();
    assert_eq!(
        initial
            .routing
            .routes
            .iter()
            .map(|route| route.name.as_str())
            .collect::<Vec<_>>(),
        [
            "twin-change-events",
            "device-lifecycle-events",
            "device-connection-state-events"
        ],
        "the default configuration"
    );
    let cases = [
        (
            json!({"routes": [{"name": "r", "source": "DeviceMessages", "condition": "level = ", "endpointNames": ["events"]}]}),
            "route \"r\": condition \"level = \": syntax error at position 8",
        ),
        (
            json!({"routes": [{"name": "r", "source": "DeviceMessages", "endpointNames": ["nowhere"]}]}),
            "route \"r\" names endpoint \"nowhere\", which is neither \"events\" nor a custom endpoint",
        ),
        (
            json!({"endpoints": {"webhooks": [{"name": "w", "url": "ftp://x"}]}}),
            "webhook \"w\": url must start with http:// or https://",
        ),
        (
            json!({"endpoints": {"fileSinks": [{"name": "s", "path": "../escape"}]}}),
            "file sink \"s\": path \"../escape\" has an empty, '.' or '..' name",
        ),
        (
            json!({"enrichments": [{"key": "k", "value": "$twin.nope", "endpointNames": ["events"]}]}),
            "enrichment \"k\": enrichment value '$twin.nope' is not a supported variable",
        ),
    ];
    for (routing, expected) in cases {
        let routing: RoutingProperties = serde_json::from_value(routing).unwrap();
        let error = client
            .set_routing(&routing, None)
            .await
            .expect_err(expected);
        assert_eq!(error.status(), Some(400), "{error}");
        assert!(
            error.to_string().contains(expected),
            "{error} lacks {expected}"
        );
    }
    // Not even JSON of the right shape.
    let response = client
        .raw(
            fleethub_service::Method::PUT,
            "/routing",
            &[],
            Some(br#"{"routes": [{"name": "r", "source": "Elsewhere"}]}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 400);
    assert!(response.text().contains("unknown variant `Elsewhere`"));

    // A stale etag, and a policy without RegistryWrite.
    let first = configure(&client, json!({})).await;
    assert_ne!(first, initial.etag);
    let stale = client
        .set_routing(&RoutingProperties::default(), Some(&initial.etag))
        .await
        .expect_err("stale etag");
    assert_eq!(stale.status(), Some(412));
    let forbidden = service(&hub, "service")
        .set_routing(&RoutingProperties::default(), None)
        .await
        .expect_err("no RegistryWrite");
    assert_eq!(forbidden.status(), Some(403));
    let current = client.get_routing().await.unwrap();
    assert_eq!(current.etag, first);
    assert_eq!(current.routing, RoutingProperties::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_tests_evaluate_conditions_on_sample_messages() {
    let hub = start_hub(fast_retries()).await;
    let client = service(&hub, "iothubowner");
    let input = |condition: &str| -> TestRouteInput {
        serde_json::from_value(json!({
            "message": {
                "body": "{\"temperature\": 45}",
                "appProperties": {"level": "critical"},
                "systemProperties": {"contentType": "application/json", "contentEncoding": "UTF-8"}
            },
            "route": {"name": "t", "source": "DeviceMessages", "condition": condition, "endpointNames": ["events"]},
            "twin": {"tags": {"site": "lab"}}
        }))
        .unwrap()
    };
    let cases = [
        (
            "$body.temperature > 40 AND level = 'critical'",
            TestResultStatus::True,
        ),
        ("$twin.tags.site = 'plant'", TestResultStatus::False),
        ("missing = 'x'", TestResultStatus::Undefined),
        (
            "$iothub-message-source = 'Telemetry'",
            TestResultStatus::True,
        ),
    ];
    for (condition, expected) in cases {
        let result = client.test_route(&input(condition)).await.unwrap();
        assert_eq!(result.result, expected, "{condition}");
        assert!(result.details.compilation_errors.is_empty());
    }
    let broken = client.test_route(&input("level = ")).await.unwrap();
    assert_eq!(broken.result, TestResultStatus::Undefined);
    let error = &broken.details.compilation_errors[0];
    assert!(
        error.message.contains("syntax error at position 8"),
        "{error:?}"
    );
    let location = error.location.expect("a location");
    assert_eq!((location.start.line, location.start.column), (1, 9));

    configure(
        &client,
        json!({"routes": [
            {"name": "critical", "source": "DeviceMessages", "condition": "level = 'critical'", "endpointNames": ["events"]},
            {"name": "cold", "source": "DeviceMessages", "condition": "$body.temperature < 0", "endpointNames": ["events"]}
        ]}),
    )
    .await;
    let all: TestAllRoutesInput = serde_json::from_value(json!({
        "routingSource": "DeviceMessages",
        "message": input("true").message
    }))
    .unwrap();
    let matched = client.test_all_routes(&all).await.unwrap();
    let names: Vec<&str> = matched
        .routes
        .iter()
        .map(|route| route.properties.name.as_str())
        .collect();
    assert_eq!(names, ["critical"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_removed_and_added_again_does_not_deliver_what_its_predecessor_left() {
    let settings = RoutingSettings {
        max_attempts: 10_000,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..fast_retries()
    };
    let hub = start_hub(settings).await;
    let webhook = Webhook::start().await;
    webhook.answer(503);
    let client = service(&hub, "iothubowner");
    let record = hub.create_device("dev-again").await;
    let with_hook = json!({
        "endpoints": {"webhooks": [{"name": "hook", "url": webhook.url}]},
        "routes": [{"name": "all", "source": "DeviceMessages", "endpointNames": ["hook"]}]
    });
    configure(&client, with_hook.clone()).await;
    let device = device(&hub, &record).await;
    device.send_message(Message::new("stuck")).await.unwrap();
    webhook
        .wait_for("a failed attempt", |requests| !requests.is_empty())
        .await;

    // Removing the endpoint drops what it had not delivered (as Azure does); the same name again is a new
    // endpoint, starting at the log's end.
    configure(&client, json!({})).await;
    configure(&client, with_hook).await;
    webhook.answer(ACCEPT);
    device.send_message(Message::new("fresh")).await.unwrap();
    webhook
        .wait_for("the new message", |requests| {
            requests.iter().any(|request| request.status == ACCEPT)
        })
        .await;
    eventually("the endpoint reading the whole log", || async {
        client.routing_health().await.unwrap().endpoints[0].unread_events == 0
    })
    .await;
    assert_eq!(webhook.delivered(), ["fresh"]);
    device.disconnect().await.unwrap();
}
