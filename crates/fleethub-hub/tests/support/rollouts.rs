//! What the rollout tests share: a real hub with a fleet of real firmware agents (the `fleethub-agent`
//! library, in-process, each with its own state directory), signed artifacts uploaded to the hub, and a
//! follower of a rollout's progress on the change feed that checks its counts at every step.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleethub_agent::{AgentConfig, DownloadPolicy};
use fleethub_hub::HubConfig;
use fleethub_protocol::firmware::{FirmwareManifest, SigningKey};
use fleethub_protocol::ids::RolloutId;
use fleethub_protocol::rollouts::{Rollout, RolloutRequest};
use fleethub_query::Source;
use fleethub_service::{
    ArtifactUpload, RolloutProgress, RolloutWatch, ServiceClient, ServiceClientOptions,
};
use fleethub_store::DeviceRecord;
use fleethub_testkit::TestHub;
use serde_json::Value;
use sha2::Digest as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const MODEL: &str = "thermostat-x";
pub const FACTORY: &str = "1.0.0";
pub const TARGET: &str = "2.0.0";
/// Every wait of these tests ends after this long.
pub const WAIT: Duration = Duration::from_secs(90);

/// A device of the fleet.
#[derive(Clone, Debug)]
pub struct FleetDevice {
    pub id: String,
    pub record: DeviceRecord,
    /// Its health check: `None` commits every update, `exit 1` rolls every update back, `sleep 2` makes
    /// its updates last.
    pub health_check: Option<String>,
}

/// A health check that fails: the device rolls back every update.
pub const UNHEALTHY: &str = "exit 1";
/// A health check that passes after a while: the device's updates last two seconds at least.
pub const SLOW: &str = "sleep 2";

struct AgentHandle {
    stop: CancellationToken,
    task: JoinHandle<Result<(), fleethub_agent::AgentError>>,
}

/// A hub with devices, their agents, and the firmware to roll out.
pub struct Fleet {
    /// Always `Some` but while the hub restarts.
    hub: Option<TestHub>,
    pub service: ServiceClient,
    pub key: SigningKey,
    pub devices: Vec<FleetDevice>,
    /// Agents' state directories and images.
    pub directory: tempfile::TempDir,
    agents: HashMap<String, AgentHandle>,
}

pub fn device_name(index: usize) -> String {
    format!("unit-{index:03}")
}

impl Fleet {
    /// A hub with `count` devices (not connected yet); `health_check(index)` gives each its health check.
    pub async fn new(count: usize, health_check: impl Fn(usize) -> Option<&'static str>) -> Fleet {
        let hub = TestHub::start().await;
        let mut devices = Vec::with_capacity(count);
        for index in 0..count {
            let id = device_name(index);
            let record = hub.create_device(&id).await;
            devices.push(FleetDevice {
                id,
                record,
                health_check: health_check(index).map(str::to_owned),
            });
        }
        let service = service_client(&hub);
        Fleet {
            hub: Some(hub),
            service,
            key: SigningKey::from_seed([7; 32]),
            devices,
            directory: tempfile::tempdir().expect("temporary directory"),
            agents: HashMap::new(),
        }
    }

    pub fn hub(&self) -> &TestHub {
        self.hub.as_ref().expect("a running hub")
    }

    pub fn device(&self, id: &str) -> &FleetDevice {
        self.devices
            .iter()
            .find(|device| device.id == id)
            .expect("a device of the fleet")
    }

    fn agent_config(&self, device: &FleetDevice) -> AgentConfig {
        let key = device
            .record
            .identity
            .authentication
            .primary_key
            .clone()
            .expect("SAS device");
        let connection_string = format!(
            "HostName=localhost;DeviceId={};SharedAccessKey={key};GatewayHostName=localhost:{}",
            device.id,
            self.hub().hub.mqtt_address.port()
        );
        let mut config = AgentConfig::new(
            connection_string,
            self.directory.path().join("agents").join(&device.id),
            MODEL,
        )
        .with_ca_pem(self.hub().hub.ca_pem.clone())
        .with_public_key(self.key.public_key())
        .with_initial_version(FACTORY)
        .with_health_check_timeout(Duration::from_secs(20))
        .with_download_policy(
            DownloadPolicy::default()
                .with_max_attempts(20)
                .with_backoff(Duration::from_millis(50), Duration::from_millis(500))
                .with_read_timeout(Duration::from_secs(20)),
        );
        if let Some(command) = &device.health_check {
            config = config.with_health_check(command.clone());
        }
        config
    }

    /// Starts the agents of these devices (in-process, rebooting in-process after an update).
    pub fn start_agents<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            let device = self.device(id).clone();
            let config = self.agent_config(&device);
            let stop = CancellationToken::new();
            let stopped = stop.clone().cancelled_owned();
            let task = tokio::spawn(fleethub_agent::run_in_process(config, stopped));
            self.agents
                .insert(device.id.clone(), AgentHandle { stop, task });
        }
    }

    pub fn start_all_agents(&mut self) {
        let ids: Vec<String> = self
            .devices
            .iter()
            .map(|device| device.id.clone())
            .collect();
        self.start_agents(ids.iter().map(String::as_str));
    }

    /// Stops these devices' agents (they disconnect) and waits for them.
    pub async fn stop_agents(&mut self, ids: &[&str]) {
        for id in ids {
            let handle = self.agents.remove(*id).expect("a running agent");
            handle.stop.cancel();
            handle
                .task
                .await
                .expect("the agent task ends")
                .expect("the agent stops cleanly");
        }
    }

    pub async fn stop_all_agents(&mut self) {
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.stop_agents(&ids).await;
    }

    /// Waits until `count` devices match `condition` (re-checked at every change of the hub, never polled
    /// on a timer).
    pub async fn wait_for_devices(&self, condition: &str, count: usize) {
        let services = &self.hub().hub.services;
        let mut notifier = services.store.change_notifier();
        let waited = async {
            loop {
                notifier.borrow_and_update();
                let matching = services
                    .matching_keys(condition, Source::Devices)
                    .await
                    .expect("query");
                if matching.len() >= count {
                    return;
                }
                notifier.changed().await.expect("the store runs");
            }
        };
        tokio::time::timeout(WAIT, waited)
            .await
            .unwrap_or_else(|_| panic!("fewer than {count} devices match {condition:?}"));
    }

    /// Waits until every device of `ids` reported its model (its agent is up and known to the hub).
    pub async fn wait_for_reported_models(&self, count: usize) {
        self.wait_for_devices(
            &format!("properties.reported.firmware.model = '{MODEL}'"),
            count,
        )
        .await;
    }

    /// Uploads a signed artifact of `version` (a small image) and returns its manifest.
    pub async fn upload(&self, version: &str) -> String {
        let image: Vec<u8> = (0..16 * 1024)
            .map(|index: usize| {
                (index.wrapping_mul(31) as u8) ^ version.len() as u8 ^ version.as_bytes()[0]
            })
            .collect();
        let manifest = FirmwareManifest {
            model: MODEL.into(),
            version: version.into(),
            sha256: sha2::Sha256::digest(&image)
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
            size: image.len() as u64,
            created: time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .expect("valid"),
            health_check: None,
            description: Some("rollout test image".into()),
        };
        let jws = self.key.sign(&manifest).expect("signs");
        let file: PathBuf = self.directory.path().join(format!("image-{version}"));
        std::fs::write(&file, &image).expect("write the image");
        self.service
            .upload_artifact(&ArtifactUpload {
                model: MODEL.into(),
                version: version.into(),
                file,
                manifest: Some(jws.clone()),
                ..ArtifactUpload::default()
            })
            .await
            .expect("upload the artifact");
        jws
    }

    /// Shuts the hub down and starts it again on the same data directory and ports (agents reconnect by
    /// themselves); the service client is made again.
    pub async fn restart_hub(&mut self) {
        let hub = self.hub.take().expect("a running hub");
        let restarted = restart_hub(hub).await;
        self.service = service_client(&restarted);
        self.hub = Some(restarted);
    }

    /// The devices whose record in a rollout says its update was under way when the hub stopped.
    pub async fn reattached(&self, rollout_id: &RolloutId) -> std::collections::HashSet<String> {
        self.hub()
            .hub
            .services
            .store
            .read_changes(
                0,
                1_000_000,
                fleethub_store::ChangeFilter::rollout(rollout_id.clone()),
            )
            .await
            .expect("read the change feed")
            .into_iter()
            .filter(|record| {
                record.body.pointer("/error/code").and_then(Value::as_str)
                    == Some(fleethub_core::rollout::REATTACH)
            })
            .filter_map(|record| record.device_id.map(|id| id.to_string()))
            .collect()
    }

    /// Counts, per device, how many downloads it reported starting (`firmwareStatus` `downloading` without
    /// `downloadComplete`), from the change feed.
    pub async fn downloads_per_device(&self) -> HashMap<String, usize> {
        let records = self
            .hub()
            .hub
            .services
            .store
            .read_changes(0, 1_000_000, fleethub_store::ChangeFilter::all())
            .await
            .expect("read the change feed");
        let mut downloads = HashMap::new();
        for record in records {
            let Some(device_id) = record.device_id else {
                continue;
            };
            // The agent reports `downloading` when it starts, and again with `downloadComplete` at the end.
            let reported = record.body.pointer("/properties/reported");
            let downloading = reported
                .and_then(|reported| reported.get("firmwareStatus"))
                .and_then(Value::as_str)
                == Some("downloading")
                && reported.is_some_and(|reported| reported.get("downloadComplete").is_none());
            if downloading {
                *downloads.entry(device_id.to_string()).or_insert(0) += 1;
            }
        }
        downloads
    }
}

/// Starts a hub on `data_dir` listening where the previous one did.
async fn restart(
    data_dir: PathBuf,
    mqtt: SocketAddr,
    https: SocketAddr,
) -> fleethub_hub::RunningHub {
    let mut config = HubConfig::for_loopback(data_dir);
    config.mqtt_listen = mqtt;
    config.https_listen = https;
    fleethub_hub::start(config)
        .await
        .expect("restarts on the same directory")
}

/// Shuts `hub` down and starts a hub on its data directory and ports.
pub async fn restart_hub(hub: TestHub) -> TestHub {
    let (mqtt, https) = (hub.hub.mqtt_address, hub.hub.https_address);
    let data_dir = hub.directory.path().join("data");
    let TestHub {
        hub: running,
        directory,
    } = hub;
    running.shutdown(Duration::from_secs(5)).await;
    let restarted = restart(data_dir, mqtt, https).await;
    TestHub {
        hub: restarted,
        directory,
    }
}

pub fn service_client(hub: &TestHub) -> ServiceClient {
    let owner = hub.policy("iothubowner");
    ServiceClient::from_connection_string(
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
    .expect("service client")
}

pub fn rollout_id(text: &str) -> RolloutId {
    text.parse().expect("a valid rollout id")
}

/// A request for `TARGET` over every device of the model, with `adjust` applied.
pub fn request(adjust: impl FnOnce(&mut RolloutRequest)) -> RolloutRequest {
    let mut request: RolloutRequest = serde_json::from_value(serde_json::json!({
        "artifact": {"model": MODEL, "version": TARGET},
        "targetCondition": "IS_DEFINED(deviceId)",
        "maxConcurrency": 10,
        "deviceTimeoutInSeconds": 60,
    }))
    .expect("a request");
    adjust(&mut request);
    request
}

/// A rollout's progress as its watcher sees it, with the counts checked at every step.
pub struct Follower {
    watch: RolloutWatch,
    pub history: Vec<RolloutProgress>,
}

impl Follower {
    pub async fn open(service: &ServiceClient, rollout_id: &RolloutId) -> Follower {
        let watch = service
            .watch_rollout(rollout_id)
            .await
            .expect("watch the rollout");
        Follower {
            watch,
            history: Vec::new(),
        }
    }

    pub fn last(&self) -> &Rollout {
        &self.history.last().expect("a first read").rollout
    }

    /// Reads progress until `condition` holds for the rollout; returns it.
    pub async fn until(&mut self, what: &str, condition: impl Fn(&Rollout) -> bool) -> Rollout {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(progress) = self.history.last()
                && condition(&progress.rollout)
            {
                return progress.rollout.clone();
            }
            let next = tokio::time::timeout_at(deadline, self.watch.next()).await;
            let progress = match next {
                Ok(Some(Ok(progress))) => progress,
                Ok(Some(Err(error))) => {
                    panic!("the watch failed while waiting for {what}: {error}")
                }
                Ok(None) => panic!(
                    "the watch ended before {what}: {:?}",
                    self.history.last().map(|progress| &progress.rollout)
                ),
                Err(_) => panic!(
                    "waited {WAIT:?} for {what}; last: {:?}",
                    self.history.last().map(|progress| &progress.rollout)
                ),
            };
            check_counts(&progress.rollout);
            self.history.push(progress);
        }
    }
}

/// Counts add up: per status to the devices, per wave to the total.
pub fn check_counts(rollout: &Rollout) {
    let total = rollout.statistics;
    assert_eq!(
        total.pending + total.running + total.succeeded + total.failed + total.cancelled,
        total.device_count,
        "{total:?}"
    );
    if total.device_count > 0 {
        let waves: u64 = rollout
            .waves
            .iter()
            .map(|wave| wave.statistics.device_count)
            .sum();
        assert_eq!(waves, total.device_count, "{:?}", rollout.waves);
        let succeeded: u64 = rollout
            .waves
            .iter()
            .map(|wave| wave.statistics.succeeded)
            .sum();
        assert_eq!(succeeded, total.succeeded);
    }
    if let Some(rollback) = rollout.rollback_statistics {
        assert_eq!(
            rollback.pending
                + rollback.running
                + rollback.succeeded
                + rollback.failed
                + rollback.cancelled,
            rollback.device_count
        );
    }
}
