//! Telemetry acknowledged by a real `fleethub serve` process survives a SIGKILL: every message a device got a
//! PUBACK for is in the event log after the restart, and what is there is exactly a prefix of what each device
//! sent (nothing torn, nothing twice).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleethub_mqtt::Packet;
use fleethub_service::{EventReadOptions, EventStart, ServiceClient, ServiceClientOptions};
use fleethub_testkit::{RawClient, ServiceApi, connect_with_key, publish_qos1, tls_connector};
use reqwest::{Method, StatusCode};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const DEVICES: usize = 6;
/// QoS 1 publishes each device keeps in flight.
const WINDOW: u64 = 16;

struct HubProcess {
    child: Child,
    data_dir: PathBuf,
}

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

impl HubProcess {
    async fn start(data_dir: &Path, mqtt: SocketAddr, https: SocketAddr) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_fleethub"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--mqtt-listen", &mqtt.to_string()])
            .args(["--https-listen", &https.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fleethub serve");
        let hub = Self {
            child,
            data_dir: data_dir.to_owned(),
        };
        support::wait_until_healthy(data_dir, https, "start").await;
        hub
    }

    fn ca(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("ca.pem")).unwrap()
    }

    fn owner_connection_string(&self) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_fleethub"))
            .args(["connection-string", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .expect("run fleethub connection-string");
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
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

fn service(hub: &HubProcess) -> ServiceClient {
    let options = ServiceClientOptions {
        ca_pem: Some(hub.ca()),
        ..ServiceClientOptions::default()
    };
    ServiceClient::from_connection_string(&hub.owner_connection_string(), options)
        .expect("service client")
}

/// Publishes `{device}:{n}` for n = 1, 2, ... in windows of QoS 1 publishes, recording the highest n
/// acknowledged (PUBACKs come in order), until the hub goes away.
async fn publish_until_killed(mut client: RawClient, device: String, acknowledged: Arc<AtomicU64>) {
    let mut next = 1u64;
    loop {
        for sequence in next..next + WINDOW {
            let packet_id = (sequence % 60_000 + 1) as u16;
            client
                .send(&publish_qos1(
                    &format!("devices/{device}/messages/events/seq={sequence}"),
                    packet_id,
                    format!("{device}:{sequence}").as_bytes(),
                ))
                .await;
        }
        for sequence in next..next + WINDOW {
            match client.receive_or_closed().await {
                Some(Packet::PubAck(_)) => acknowledged.store(sequence, Ordering::SeqCst),
                Some(other) => panic!("unexpected {other:?}"),
                None => return,
            }
        }
        next += WINDOW;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_acknowledged_before_a_sigkill_is_in_the_log_after_the_restart() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let (mqtt, https) = (free_address(), free_address());
    let hub = HubProcess::start(&data_dir, mqtt, https).await;
    let ca = hub.ca();
    let owner = hub.owner_connection_string();
    let owner_key = owner.rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
    let api = ServiceApi::new(https, &ca, "iothubowner", &owner_key);

    let mut writers = Vec::new();
    let mut counters = BTreeMap::new();
    for index in 0..DEVICES {
        let id = format!("sensor{index}");
        let created = api
            .send(
                Method::PUT,
                &format!("/devices/{id}"),
                &[],
                Some(json!({"deviceId": id})),
            )
            .await;
        assert_eq!(created.status, StatusCode::OK);
        let key = created.body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut client = RawClient::connect(mqtt, tls_connector(&ca)).await;
        client
            .connect_accepted(connect_with_key(&id, &key, 60))
            .await;
        let acknowledged = Arc::new(AtomicU64::new(0));
        counters.insert(id.clone(), Arc::clone(&acknowledged));
        writers.push(tokio::spawn(publish_until_killed(client, id, acknowledged)));
    }
    // Kill the hub in the middle of the flow, once every device has had messages acknowledged.
    let until = tokio::time::Instant::now() + WAIT;
    while counters
        .values()
        .any(|acknowledged| acknowledged.load(Ordering::SeqCst) < 100)
    {
        assert!(
            tokio::time::Instant::now() < until,
            "telemetry is acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged: BTreeMap<String, u64> = counters
        .iter()
        .map(|(id, counter)| (id.clone(), counter.load(Ordering::SeqCst)))
        .collect();

    let hub = HubProcess::start(&data_dir, mqtt, https).await;
    let client = service(&hub);
    let partitions = client.event_partitions().await.unwrap();
    let mut events = client
        .read_events(EventReadOptions {
            start: EventStart::Earliest,
            no_reconnect: true,
            ..EventReadOptions::default()
        })
        .await
        .unwrap();
    let mut remaining: BTreeMap<u32, u64> = partitions
        .partitions
        .iter()
        .filter(|partition| !partition.is_empty)
        .map(|partition| (partition.partition, partition.next_sequence_number))
        .collect();
    let mut stored: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while !remaining.is_empty() {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("events within the timeout")
            .expect("the stream goes on")
            .expect("no stream error");
        if remaining.get(&event.partition) == Some(&(event.sequence_number + 1)) {
            remaining.remove(&event.partition);
        }
        if event.message_source() != Some("Telemetry") {
            continue;
        }
        let (device, sequence) = event.body.split_once(':').expect("device:sequence");
        assert_eq!(event.device_id(), Some(device));
        assert_eq!(event.property("seq"), Some(sequence));
        stored
            .entry(device.to_owned())
            .or_default()
            .push(sequence.parse().unwrap());
    }
    for (device, last_acknowledged) in &acknowledged {
        let sequences = stored.get(device).cloned().unwrap_or_default();
        let count = sequences.len() as u64;
        assert_eq!(
            sequences,
            (1..=count).collect::<Vec<_>>(),
            "{device}: a prefix of what it sent, once each"
        );
        assert!(
            count >= *last_acknowledged,
            "{device}: acknowledged up to {last_acknowledged}, stored {count}"
        );
        // At most what was in flight at the kill is there beyond the last PUBACK.
        assert!(count <= last_acknowledged + WINDOW, "{device}: {count}");
    }
}
