//! Kill cycles: a real `fleethub serve` process is SIGKILLed at random moments under mixed load (reported
//! patches, service desired patches, direct methods, jobs, firmware rollouts, QoS 1 telemetry, C2D sends) and
//! restarted on the same data directory, again and again. After every restart nothing acknowledged is
//! missing, every job created before a kill reaches a terminal state, and every rollout created before a kill
//! completes on every device without asking any device twice for the same version.
//!
//! `FLEETHUB_KILL_CYCLES` sets the number of cycles (default 5); `FLEETHUB_KILL_SEED` replays a run (the seed
//! is printed at the start and in every failure).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use fleethub_mqtt::{Packet, QoS};
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use fleethub_service::{EventReadOptions, EventStart, ServiceClient, ServiceClientOptions};
use fleethub_testkit::{
    RawClient, ServiceApi, connect_with_key, publish_qos1, subscribe, tls_connector, unix_now,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const REPORTERS: usize = 3;
const SENSORS: usize = 2;
/// QoS 1 telemetry publishes each sensor keeps in flight.
const WINDOW: u64 = 8;
/// C2D sends per cycle: below the queue's depth of 50 even with the one in flight at the kill.
const C2D_PER_CYCLE: u64 = 40;
const C2D_DEVICE: &str = "inbox";
/// Devices that take firmware updates (as the agent reports them, without writing slots).
const FLASHERS: usize = 2;
const FIRMWARE_MODEL: &str = "kill-board";

/// What a flasher device keeps across hub restarts: its firmware, and every update it was asked for.
#[derive(Default)]
struct Flashed {
    current: Mutex<String>,
    /// `firmwareUpdate` requests per version.
    requests: Mutex<BTreeMap<String, u32>>,
}

/// A device taking firmware updates until the hub goes away: on connecting it reports its firmware (as the
/// agent does at start); asked `firmwareUpdate` for a version, it answers 200, takes the version (it is
/// "applied" at once) and reports `downloading`, then `completed`.
async fn flash_until_killed(mut client: RawClient, flashed: Arc<Flashed>) {
    let mut packet_id = 1u16;
    let mut next_id = || {
        packet_id = packet_id % 60_000 + 1;
        packet_id
    };
    let mut rid = 0u64;
    let mut report = |client_id: u16, firmware: Value| {
        rid += 1;
        publish_qos1(
            &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            client_id,
            json!({ "firmware": firmware }).to_string().as_bytes(),
        )
    };
    let current = flashed.current.lock().unwrap().clone();
    client
        .send(&report(
            next_id(),
            json!({"model": FIRMWARE_MODEL, "currentVersion": current, "targetVersion": current,
                   "status": "completed", "error": null}),
        ))
        .await;
    while let Some(packet) = client.receive_or_closed().await {
        let Packet::Publish(publish) = packet else {
            continue;
        };
        let Some(rest) = publish
            .topic
            .strip_prefix("$iothub/methods/POST/firmwareUpdate/")
        else {
            continue;
        };
        let request_id = rest.rsplit("$rid=").next().unwrap_or_default().to_owned();
        let payload: Value = serde_json::from_slice(&publish.payload).expect("a JSON payload");
        let version = payload["version"]
            .as_str()
            .expect("a rollout sends the version")
            .to_owned();
        *flashed
            .requests
            .lock()
            .unwrap()
            .entry(version.clone())
            .or_default() += 1;
        client
            .send(&publish_qos1(
                &format!("$iothub/methods/res/200/?$rid={request_id}"),
                next_id(),
                br#"{"Response":"Firmware update started"}"#,
            ))
            .await;
        let previous = std::mem::replace(&mut *flashed.current.lock().unwrap(), version.clone());
        client
            .send(&report(
                next_id(),
                json!({"model": FIRMWARE_MODEL, "currentVersion": previous, "targetVersion": version,
                       "status": "downloading", "error": null}),
            ))
            .await;
        client
            .send(&report(
                next_id(),
                json!({"model": FIRMWARE_MODEL, "currentVersion": version, "targetVersion": version,
                       "status": "completed", "error": null}),
            ))
            .await;
    }
}

/// Runs `fleethub ARGS --data-dir DATA` to its end, off the runtime's threads.
async fn fleethub_cli(data_dir: &Path, args: Vec<String>, context: &str) {
    let data_dir = data_dir.to_owned();
    let shown = args.join(" ");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fleethub"))
            .args(&args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("FLEETHUB_CONNECTION_STRING")
            .env_remove("FLEETHUB_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run fleethub")
    })
    .await
    .expect("the command ran");
    assert!(
        output.status.success(),
        "{context}: fleethub {shown}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A splitmix64 generator: the whole run follows from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct HubProcess {
    child: Child,
}

impl HubProcess {
    async fn start(data_dir: &Path, mqtt: SocketAddr, https: SocketAddr, context: &str) -> Self {
        let hub = Self {
            child: support::spawn_serve(data_dir, mqtt, https, &[]),
        };
        support::wait_until_healthy(data_dir, https, context).await;
        hub
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the hub");
        self.child.wait().expect("reap the hub");
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service request that reports a lost connection instead of panicking: the hub dies under these.
async fn try_send(api: &ServiceApi, method: Method, path: &str, body: Value) -> Option<StatusCode> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let response = api
        .client
        .request(
            method,
            format!("{}{path}{separator}api-version=2021-04-12", api.base),
        )
        .header("authorization", api.token(unix_now() + 3600))
        .header("content-type", "application/json; charset=utf-8")
        .timeout(Duration::from_secs(20))
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    let status = response.status();
    // The answer counts only once its body arrived whole.
    response.bytes().await.ok()?;
    Some(status)
}

/// What the load acknowledged, across all cycles.
#[derive(Default)]
struct Acknowledged {
    /// Per reporter, the last reported `seq` answered 204.
    reported: Vec<AtomicU64>,
    /// Per reporter, the last desired `svcSeq` a service PATCH got 200 for.
    desired: Vec<AtomicU64>,
    /// Per sensor, the last telemetry sequence number PUBACKed (PUBACKs come in order).
    telemetry: Vec<AtomicU64>,
    /// C2D bodies whose send got 200.
    c2d: Mutex<BTreeSet<u64>>,
    /// How many of each were acknowledged.
    reported_count: AtomicU64,
    desired_count: AtomicU64,
    telemetry_count: AtomicU64,
    /// Methods answered 200 (load only: a method is not a durable write).
    methods: AtomicU64,
}

/// Acknowledged writes made before a kill and checked after the restart, for the report.
#[derive(Default)]
struct Checked {
    reported: u64,
    desired: u64,
    telemetry: u64,
    c2d: u64,
    jobs: u64,
    rollouts: u64,
}

/// A device on MQTT that reports `{"seq": n}` one after another from `first` and answers every method.
async fn report_until_killed(
    mut client: RawClient,
    index: usize,
    first: u64,
    acknowledged: Arc<Acknowledged>,
) {
    let mut method_packet_id = 60_001u16;
    for sequence in first.. {
        let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={sequence}");
        let packet_id = (sequence % 60_000 + 1) as u16;
        client
            .send(&publish_qos1(
                &topic,
                packet_id,
                json!({ "seq": sequence }).to_string().as_bytes(),
            ))
            .await;
        let expected = format!("$iothub/twin/res/204/?$rid={sequence}");
        loop {
            match client.receive_or_closed().await {
                None => return,
                Some(Packet::Publish(publish)) if publish.topic.starts_with(&expected) => {
                    acknowledged.reported[index].store(sequence, Ordering::SeqCst);
                    acknowledged.reported_count.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Some(Packet::Publish(publish))
                    if publish.topic.starts_with("$iothub/methods/POST/") =>
                {
                    let rid = publish.topic.rsplit("$rid=").next().unwrap_or_default();
                    client
                        .send(&publish_qos1(
                            &format!("$iothub/methods/res/200/?$rid={rid}"),
                            method_packet_id,
                            br#"{"ok":true}"#,
                        ))
                        .await;
                    method_packet_id = if method_packet_id == 65_535 {
                        60_001
                    } else {
                        method_packet_id + 1
                    };
                }
                Some(_) => continue,
            }
        }
    }
}

/// Publishes `{device}:{n}` from `first` in windows of QoS 1 publishes, recording the highest n PUBACKed.
async fn publish_until_killed(
    mut client: RawClient,
    index: usize,
    first: u64,
    acknowledged: Arc<Acknowledged>,
) {
    let device = format!("sensor{index}");
    let mut next = first;
    loop {
        for sequence in next..next + WINDOW {
            client
                .send(&publish_qos1(
                    &format!("devices/{device}/messages/events/seq={sequence}"),
                    (sequence % 60_000 + 1) as u16,
                    format!("{device}:{sequence}").as_bytes(),
                ))
                .await;
        }
        for sequence in next..next + WINDOW {
            match client.receive_or_closed().await {
                Some(Packet::PubAck(_)) => {
                    acknowledged.telemetry[index].store(sequence, Ordering::SeqCst);
                    acknowledged.telemetry_count.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => {}
                None => return,
            }
        }
        next += WINDOW;
        // Paced, so the event log grows by a few hundred messages per cycle and the checks stay fast.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Service desired patches `{"svcSeq": n}` from `first`, one after another, until the hub goes away.
async fn patch_desired_until_killed(
    api: Arc<ServiceApi>,
    index: usize,
    first: u64,
    acknowledged: Arc<Acknowledged>,
) {
    for sequence in first.. {
        let body = json!({"properties": {"desired": {"svcSeq": sequence}}});
        match try_send(&api, Method::PATCH, &format!("/twins/rep{index}"), body).await {
            Some(StatusCode::OK) => {
                acknowledged.desired[index].store(sequence, Ordering::SeqCst);
                acknowledged.desired_count.fetch_add(1, Ordering::SeqCst);
            }
            Some(other) => panic!("service PATCH rep{index} {sequence}: {other}"),
            None => return,
        }
    }
}

async fn invoke_methods_until_killed(api: Arc<ServiceApi>, acknowledged: Arc<Acknowledged>) {
    for call in 0u64.. {
        let device = format!("rep{}", call % REPORTERS as u64);
        let body = json!({"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 0});
        match try_send(
            &api,
            Method::POST,
            &format!("/twins/{device}/methods"),
            body,
        )
        .await
        {
            Some(StatusCode::OK) => {
                acknowledged.methods.fetch_add(1, Ordering::SeqCst);
            }
            // A device between connections answers 404 (not online) or 504; both are fine under kills.
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            None => return,
        }
    }
}

async fn send_c2d_until_killed(api: Arc<ServiceApi>, first: u64, acknowledged: Arc<Acknowledged>) {
    for number in first..first + C2D_PER_CYCLE {
        let body = json!({ "body": format!("c2d:{number}") });
        match try_send(
            &api,
            Method::POST,
            &format!("/devices/{C2D_DEVICE}/messages/deviceBound"),
            body,
        )
        .await
        {
            Some(StatusCode::OK) => {
                acknowledged.c2d.lock().unwrap().insert(number);
            }
            Some(other) => panic!("C2D send {number}: {other}"),
            None => return,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn create_device(api: &ServiceApi, id: &str) -> String {
    let created = api
        .send(
            Method::PUT,
            &format!("/devices/{id}"),
            &[],
            Some(json!({ "deviceId": id })),
        )
        .await;
    assert_eq!(
        created.status,
        StatusCode::OK,
        "create {id}: {}",
        created.body
    );
    created.body["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("a SAS device")
        .to_owned()
}

async fn connected(mqtt: SocketAddr, ca: &str, id: &str, key: &str) -> RawClient {
    let mut client = RawClient::connect(mqtt, tls_connector(ca)).await;
    client.connect_accepted(connect_with_key(id, key, 60)).await;
    client
}

/// Drains the C2D device's queue over HTTPS, completing each message; returns the numbers received.
async fn drain_c2d(api: &ServiceApi, key: &str, context: &str) -> Vec<u64> {
    let token = generate_sas_token(
        &format!("localhost/devices/{C2D_DEVICE}"),
        &decode_key(key).expect("keys are base64"),
        unix_now() + 3600,
        None,
    );
    let path = format!("/devices/{C2D_DEVICE}/messages/deviceBound");
    let mut received = Vec::new();
    loop {
        let reply = api.call(Some(&token), Method::GET, &path, &[], None).await;
        if reply.status == StatusCode::NO_CONTENT {
            return received;
        }
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{context}: C2D receive: {}",
            reply.body
        );
        let text = match &reply.body {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let number = text
            .trim_matches('"')
            .strip_prefix("c2d:")
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("{context}: unexpected C2D body {text:?}"));
        received.push(number);
        let lock = reply.headers["etag"]
            .to_str()
            .expect("ASCII ETag")
            .trim_matches('"')
            .to_owned();
        let settled = api
            .call(
                Some(&token),
                Method::DELETE,
                &format!("{path}/{lock}"),
                &[],
                None,
            )
            .await;
        assert_eq!(
            settled.status,
            StatusCode::NO_CONTENT,
            "{context}: complete C2D {number}"
        );
    }
}

/// Telemetry per sensor read back from the event log, partition by partition from where the last check
/// stopped; every check runs right after a restart, so what it reads was recovered from disk.
struct TelemetryLedger {
    next_unread: BTreeMap<u32, u64>,
    stored: Vec<Vec<u64>>,
}

impl TelemetryLedger {
    async fn read_new(&mut self, client: &ServiceClient, context: &str) {
        let partitions = client.event_partitions().await.expect("event partitions");
        for partition in partitions
            .partitions
            .iter()
            .filter(|partition| !partition.is_empty)
        {
            let from = self
                .next_unread
                .get(&partition.partition)
                .copied()
                .unwrap_or(partition.beginning_sequence_number)
                .max(partition.beginning_sequence_number);
            let end = partition.next_sequence_number;
            if from >= end {
                continue;
            }
            let mut events = client
                .read_events(EventReadOptions {
                    partitions: Some(vec![partition.partition]),
                    start: EventStart::SequenceNumber(from),
                    no_reconnect: true,
                    ..EventReadOptions::default()
                })
                .await
                .expect("read events");
            loop {
                let event = tokio::time::timeout(WAIT, events.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{context}: partition {} stalled", partition.partition)
                    })
                    .expect("the stream goes on")
                    .expect("no stream error");
                if event.message_source() == Some("Telemetry") {
                    let body = event.body.clone();
                    let (device, sequence) = body.split_once(':').expect("device:sequence");
                    let index: usize = device
                        .strip_prefix("sensor")
                        .and_then(|index| index.parse().ok())
                        .expect("a sensor");
                    self.stored[index].push(sequence.parse().expect("a sequence number"));
                }
                if event.sequence_number + 1 >= end {
                    break;
                }
            }
            self.next_unread.insert(partition.partition, end);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_and_no_job_is_stuck_across_sigkills() {
    let cycles: u64 = std::env::var("FLEETHUB_KILL_CYCLES")
        .ok()
        .map(|text| text.parse().expect("FLEETHUB_KILL_CYCLES is a number"))
        .unwrap_or(5);
    let seed: u64 = std::env::var("FLEETHUB_KILL_SEED")
        .ok()
        .map(|text| text.parse().expect("FLEETHUB_KILL_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as u64
        });
    eprintln!("kill cycles: {cycles}, seed {seed} (replay with FLEETHUB_KILL_SEED={seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let directory = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = directory.path().join("data");
    let (mqtt, https) = (free_address(), free_address());
    let hub = HubProcess::start(&data_dir, mqtt, https, "first start").await;
    let ca = std::fs::read_to_string(data_dir.join("ca.pem")).unwrap();
    let owner = support::owner_connection_string(&data_dir);
    let owner_key = owner.rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
    let api = Arc::new(ServiceApi::new(https, &ca, "iothubowner", &owner_key));
    let service = ServiceClient::from_connection_string(
        &owner,
        ServiceClientOptions {
            ca_pem: Some(ca.clone()),
            ..ServiceClientOptions::default()
        },
    )
    .expect("service client");

    let mut reporter_keys = Vec::new();
    for index in 0..REPORTERS {
        let id = format!("rep{index}");
        let key = create_device(&api, &id).await;
        // Methods at QoS 0, as Azure sends them; twin responses on their own topic.
        let mut client = connected(mqtt, &ca, &id, &key).await;
        client
            .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtMostOnce))
            .await;
        assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
        client
            .send(&subscribe(2, "$iothub/twin/res/#", QoS::AtMostOnce))
            .await;
        assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
        reporter_keys.push(key);
    }
    let mut sensor_keys = Vec::new();
    for index in 0..SENSORS {
        sensor_keys.push(create_device(&api, &format!("sensor{index}")).await);
    }
    let inbox_key = create_device(&api, C2D_DEVICE).await;
    let mut flasher_keys = Vec::new();
    let flashers: Vec<Arc<Flashed>> = (0..FLASHERS)
        .map(|_| {
            let flashed = Flashed::default();
            *flashed.current.lock().unwrap() = "1.0.0".into();
            Arc::new(flashed)
        })
        .collect();
    for index in 0..FLASHERS {
        flasher_keys.push(create_device(&api, &format!("fw{index}")).await);
    }
    let signing = directory.path().join("release");
    fleethub_cli(
        &data_dir,
        vec![
            "firmware".into(),
            "keygen".into(),
            "--out".into(),
            signing.display().to_string(),
        ],
        "keygen",
    )
    .await;
    let image = directory.path().join("image.bin");
    std::fs::write(&image, vec![0x5Au8; 4096]).unwrap();

    let acknowledged = Arc::new(Acknowledged {
        reported: (0..REPORTERS).map(|_| AtomicU64::new(0)).collect(),
        desired: (0..REPORTERS).map(|_| AtomicU64::new(0)).collect(),
        telemetry: (0..SENSORS).map(|_| AtomicU64::new(0)).collect(),
        ..Acknowledged::default()
    });
    let mut checked = Checked::default();
    let mut ledger = TelemetryLedger {
        next_unread: BTreeMap::new(),
        stored: vec![Vec::new(); SENSORS],
    };
    let mut next_reported = [1u64; REPORTERS];
    let mut next_desired = [1u64; REPORTERS];
    let mut next_telemetry = [1u64; SENSORS];
    let mut next_c2d = 1u64;
    let mut c2d_received: BTreeSet<u64> = BTreeSet::new();
    let mut jobs: Vec<String> = Vec::new();
    let mut rollouts: Vec<(String, String)> = Vec::new();
    let mut hub = Some(hub);

    for cycle in 1..=cycles + 1 {
        let last = cycle == cycles + 1;
        let context = format!("seed {seed}, cycle {cycle}");
        if cycle > 1 {
            hub = Some(HubProcess::start(&data_dir, mqtt, https, &context).await);
            // Reported and desired: the last acknowledged value, or the one write in flight at the kill.
            for index in 0..REPORTERS {
                let twin = api
                    .send(Method::GET, &format!("/twins/rep{index}"), &[], None)
                    .await;
                assert_eq!(twin.status, StatusCode::OK, "{context}: {}", twin.body);
                let reported = twin.body["properties"]["reported"]["seq"]
                    .as_u64()
                    .unwrap_or(0);
                let acked = acknowledged.reported[index].load(Ordering::SeqCst);
                assert!(
                    reported == acked || reported == acked + 1,
                    "{context}: rep{index} reported seq {acked} was acknowledged, the twin has {reported}"
                );
                next_reported[index] = reported + 1;
                let desired = twin.body["properties"]["desired"]["svcSeq"]
                    .as_u64()
                    .unwrap_or(0);
                let acked_desired = acknowledged.desired[index].load(Ordering::SeqCst);
                assert!(
                    desired == acked_desired || desired == acked_desired + 1,
                    "{context}: rep{index} desired svcSeq {acked_desired} got 200, the twin has {desired}"
                );
                next_desired[index] = desired + 1;
            }
            checked.reported = acknowledged.reported_count.load(Ordering::SeqCst);
            checked.desired = acknowledged.desired_count.load(Ordering::SeqCst);
            // Telemetry: per sensor exactly 1..=n, once each, with n at least the last PUBACKed.
            ledger.read_new(&service, &context).await;
            for (index, (stored, next)) in ledger
                .stored
                .iter()
                .zip(next_telemetry.iter_mut())
                .enumerate()
            {
                let count = stored.len() as u64;
                if let Some(position) = stored
                    .iter()
                    .zip(1u64..)
                    .position(|(sequence, expected)| *sequence != expected)
                {
                    panic!(
                        "{context}: sensor{index} telemetry is not 1..=n once each: at {position} found {}",
                        stored[position]
                    );
                }
                let acked = acknowledged.telemetry[index].load(Ordering::SeqCst);
                assert!(
                    count >= acked,
                    "{context}: sensor{index} PUBACKed up to {acked}, the log holds 1..={count}"
                );
                *next = count + 1;
            }
            checked.telemetry = acknowledged.telemetry_count.load(Ordering::SeqCst);
            // C2D: every message whose send got 200 is queued (drained now) or was drained before.
            c2d_received.extend(drain_c2d(&api, &inbox_key, &context).await);
            let acked_c2d = acknowledged.c2d.lock().unwrap().clone();
            let lost: Vec<u64> = acked_c2d.difference(&c2d_received).copied().collect();
            assert!(
                lost.is_empty(),
                "{context}: C2D sends answered 200 and never delivered: {lost:?}"
            );
            checked.c2d = acked_c2d.len() as u64;
        }

        // Load, until the kill.
        let mut tasks = Vec::new();
        for (index, key) in reporter_keys.iter().enumerate() {
            let client = connected(mqtt, &ca, &format!("rep{index}"), key).await;
            tasks.push(tokio::spawn(report_until_killed(
                client,
                index,
                next_reported[index],
                Arc::clone(&acknowledged),
            )));
            tasks.push(tokio::spawn(patch_desired_until_killed(
                Arc::clone(&api),
                index,
                next_desired[index],
                Arc::clone(&acknowledged),
            )));
        }
        for (index, key) in sensor_keys.iter().enumerate() {
            let client = connected(mqtt, &ca, &format!("sensor{index}"), key).await;
            tasks.push(tokio::spawn(publish_until_killed(
                client,
                index,
                next_telemetry[index],
                Arc::clone(&acknowledged),
            )));
        }
        for (index, key) in flasher_keys.iter().enumerate() {
            let id = format!("fw{index}");
            let mut client = connected(mqtt, &ca, &id, key).await;
            client
                .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtMostOnce))
                .await;
            assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
            tasks.push(tokio::spawn(flash_until_killed(
                client,
                Arc::clone(&flashers[index]),
            )));
        }
        tasks.push(tokio::spawn(invoke_methods_until_killed(
            Arc::clone(&api),
            Arc::clone(&acknowledged),
        )));
        tasks.push(tokio::spawn(send_c2d_until_killed(
            Arc::clone(&api),
            next_c2d,
            Arc::clone(&acknowledged),
        )));
        next_c2d += C2D_PER_CYCLE;

        // Every job created before a kill ends: resumed after the restart, it reaches a terminal state.
        let deadline = Instant::now() + WAIT;
        for job in &jobs {
            loop {
                let reply = api
                    .send(Method::GET, &format!("/jobs/v2/{job}"), &[], None)
                    .await;
                assert_eq!(
                    reply.status,
                    StatusCode::OK,
                    "{context}: get job {job}: {}",
                    reply.body
                );
                let status = reply.body["status"].as_str().unwrap_or_default().to_owned();
                if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{context}: job {job} is still {status} after {WAIT:?}: {}",
                    reply.body
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        checked.jobs = jobs.len() as u64;
        // Every rollout created before a kill completes on every device (resumed after the restart), and no
        // device was asked twice for a version.
        for (rollout, version) in &rollouts {
            loop {
                let reply = api
                    .send(
                        Method::GET,
                        &format!("/firmware/rollouts/{rollout}"),
                        &[],
                        None,
                    )
                    .await;
                assert_eq!(
                    reply.status,
                    StatusCode::OK,
                    "{context}: get rollout {rollout}: {}",
                    reply.body
                );
                let status = reply.body["status"].as_str().unwrap_or_default().to_owned();
                if status != "running" {
                    assert_eq!(
                        (status.as_str(), &reply.body["statistics"]["succeeded"]),
                        ("completed", &json!(FLASHERS)),
                        "{context}: rollout {rollout}: {}",
                        reply.body
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{context}: rollout {rollout} is still {status} after {WAIT:?}: {}",
                    reply.body
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for (index, flashed) in flashers.iter().enumerate() {
                let asked = flashed.requests.lock().unwrap().get(version).copied();
                assert!(
                    asked.unwrap_or(0) <= 1,
                    "{context}: fw{index} was asked {asked:?} times for {version}"
                );
            }
        }
        checked.rollouts = rollouts.len() as u64;
        if last {
            if let Some((_, version)) = rollouts.last() {
                for (index, flashed) in flashers.iter().enumerate() {
                    assert_eq!(
                        &*flashed.current.lock().unwrap(),
                        version,
                        "{context}: fw{index} runs the last rollout's version"
                    );
                }
            }
            break;
        }
        let job = format!("kill-cycle-{cycle}");
        let condition = format!(
            "deviceId IN [{}]",
            (0..REPORTERS)
                .map(|index| format!("'rep{index}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let body = if cycle % 2 == 0 {
            json!({"type": "scheduleUpdateTwin", "queryCondition": condition,
                   "updateTwin": {"tags": {"killCycle": cycle}}, "maxExecutionTimeInSeconds": 60})
        } else {
            json!({"type": "scheduleDeviceMethod", "queryCondition": condition,
                   "cloudToDeviceMethod": {"methodName": "job", "payload": {}, "responseTimeoutInSeconds": 5},
                   "maxExecutionTimeInSeconds": 60})
        };
        let created = api
            .send(Method::PUT, &format!("/jobs/v2/{job}"), &[], Some(body))
            .await;
        assert_eq!(
            created.status,
            StatusCode::OK,
            "{context}: create {job}: {}",
            created.body
        );
        jobs.push(job);
        // A firmware rollout of a new version to the flashers, every other cycle.
        if cycle % 2 == 1 {
            let version = format!("1.{cycle}.0");
            fleethub_cli(
                &data_dir,
                vec![
                    "firmware".into(),
                    "upload".into(),
                    image.display().to_string(),
                    "--model".into(),
                    FIRMWARE_MODEL.into(),
                    "--version".into(),
                    version.clone(),
                    "--sign-key".into(),
                    format!("{}.key.pem", signing.display()),
                ],
                &context,
            )
            .await;
            let rollout = format!("kill-rollout-{cycle}");
            let created = api
                .send(
                    Method::PUT,
                    &format!("/firmware/rollouts/{rollout}"),
                    &[],
                    Some(json!({
                        "artifact": {"model": FIRMWARE_MODEL, "version": version},
                        "targetCondition": format!(
                            "deviceId IN [{}]",
                            (0..FLASHERS).map(|index| format!("'fw{index}'")).collect::<Vec<_>>().join(", ")
                        ),
                        "deviceTimeoutInSeconds": 30,
                    })),
                )
                .await;
            assert_eq!(
                created.status,
                StatusCode::OK,
                "{context}: create {rollout}: {}",
                created.body
            );
            rollouts.push((rollout, version));
        }

        // Kill at a random moment once the load flows: every reporter has had a write acknowledged this cycle.
        let flowing = Instant::now() + WAIT;
        while (0..REPORTERS)
            .any(|index| acknowledged.reported[index].load(Ordering::SeqCst) < next_reported[index])
        {
            assert!(
                Instant::now() < flowing,
                "{context}: reported patches are not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(1_000))).await;
        hub.take().expect("a running hub").kill();
        for task in tasks {
            task.await
                .unwrap_or_else(|error| panic!("{context}: a load task failed: {error}"));
        }
    }
    drop(hub);
    let stored: usize = ledger.stored.iter().map(Vec::len).sum();
    eprintln!(
        "kill cycles: {cycles} in {:.0?}, seed {seed}; acknowledged before a kill and found after the \
         restart: reported patches {}, service desired patches {}, telemetry messages {} (event log holds \
         {stored}), C2D sends {}; jobs created before a kill and terminal after it: {}; rollouts created \
         before a kill and completed after it: {}; methods answered {}",
        started.elapsed(),
        checked.reported,
        checked.desired,
        checked.telemetry,
        checked.c2d,
        checked.jobs,
        checked.rollouts,
        acknowledged.methods.load(Ordering::SeqCst),
    );
}
