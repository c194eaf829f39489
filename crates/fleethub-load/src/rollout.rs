//! The rollout scenario: a firmware rollout of one signed image to N simulated devices, timed from the
//! `PUT /firmware/rollouts/{id}` to the last device committed.
//!
//! Each simulated device is a real MQTT/TLS connection with its own identity (registered in bulk with its
//! reported `firmware.model`) that implements `firmwareUpdate` the way `fleethub-agent` does on the wire:
//! it answers 200 at once, downloads the image from the signed URL over HTTPS (the agent's HTTP client),
//! checks the manifest's Ed25519 signature and the image's SHA-256 and size as the bytes stream in, and
//! reports `downloading`, `applying` and `completed` with the `firmware` object the hub follows. What it
//! leaves out is the agent's disk work (the resumable partial file, the A/B slot, the reboot), which would
//! measure this machine's disk ten thousand times over rather than the hub.
//!
//! Reported: end-to-end time and devices per second, the fan-out (rollout start to the last device called),
//! download throughput (image bytes over the time from the first download's start to the last one's end),
//! and the hub's peak resident memory (`VmHWM`).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context as _, bail};
use fleethub_agent::DownloadPolicy;
use fleethub_device::{DeviceClient, MethodResponse};
use fleethub_protocol::firmware::{FirmwareManifest, PublicKey, SigningKey};
use fleethub_protocol::ids::RolloutId;
use fleethub_protocol::rollouts::{ArtifactRef, NumberOrText, RolloutRequest, WavesRequest};
use fleethub_service::ArtifactUpload;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{Hub, Measurement, SEED_KEY, measurement, progress};

const MODEL: &str = "bench-board";
const FROM_VERSION: &str = "1.0.0";
const TO_VERSION: &str = "2.0.0";

/// What the simulated devices saw, in instants relative to the rollout's start.
#[derive(Default)]
struct Timeline {
    /// When each device's method call arrived.
    called: Vec<Instant>,
    download_started: Vec<Instant>,
    download_ended: Vec<Instant>,
    committed: Vec<Instant>,
    bytes: u64,
    failures: Vec<String>,
}

struct Simulation {
    http: reqwest::Client,
    public_key: PublicKey,
    timeline: Mutex<Timeline>,
}

pub(crate) struct RolloutParameters {
    pub(crate) devices: usize,
    pub(crate) image_bytes: usize,
    pub(crate) max_concurrency: u64,
    pub(crate) waves: String,
}

pub(crate) async fn rollout(
    hub_bin: &std::path::Path,
    parameters: RolloutParameters,
) -> anyhow::Result<Vec<Measurement>> {
    let RolloutParameters {
        devices,
        image_bytes,
        max_concurrency,
        waves,
    } = parameters;
    let hub = Hub::start(hub_bin).await?;

    // Register the fleet in bulk, each device already reporting its model and factory version.
    let bar = progress(devices as u64, "registering");
    for batch_start in (0..devices).step_by(1000) {
        let batch_end = (batch_start + 1000).min(devices);
        let items: Vec<Value> = (batch_start..batch_end)
            .map(|index| {
                json!({
                    "id": device_id(index),
                    "importMode": "create",
                    "authentication": {"type": "sas", "symmetricKey": {"primaryKey": SEED_KEY, "secondaryKey": SEED_KEY}},
                    "properties": {"reported": {"firmware": {"model": MODEL, "currentVersion": FROM_VERSION}}},
                })
            })
            .collect();
        let response = hub
            .service
            .raw(
                fleethub_service::Method::POST,
                "/devices",
                &[],
                Some(serde_json::to_vec(&items)?),
            )
            .await?;
        anyhow::ensure!(
            response.status.is_success(),
            "bulk create failed: {}",
            String::from_utf8_lossy(&response.body)
        );
        bar.inc((batch_end - batch_start) as u64);
    }
    bar.finish_and_clear();

    // Sign and upload the image.
    let key = SigningKey::from_seed(*b"fleethub-load rollout bench key!");
    let image: Vec<u8> = (0..image_bytes)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let directory = tempfile::tempdir()?;
    let image_path = directory.path().join("image.bin");
    std::fs::write(&image_path, &image)?;
    let manifest = FirmwareManifest {
        model: MODEL.to_owned(),
        version: TO_VERSION.to_owned(),
        sha256: hex(&Sha256::digest(&image)),
        size: image_bytes as u64,
        created: time::OffsetDateTime::now_utc(),
        health_check: None,
        description: Some("fleethub-load rollout image".to_owned()),
    };
    hub.service
        .upload_artifact(&ArtifactUpload {
            model: MODEL.to_owned(),
            version: TO_VERSION.to_owned(),
            file: image_path,
            manifest: Some(key.sign(&manifest)?),
            health_check: None,
            description: None,
            progress: None,
        })
        .await
        .context("upload the image")?;

    let simulation = Arc::new(Simulation {
        http: fleethub_agent::download::http_client(Some(&hub.ca_pem), &DownloadPolicy::default())
            .context("the download client")?,
        public_key: key.public_key(),
        timeline: Mutex::new(Timeline::default()),
    });

    // Connect every device with its firmwareUpdate handler.
    let host = hub.service.host_name().to_owned();
    let bar = progress(devices as u64, "connecting");
    let limit = Arc::new(Semaphore::new(100));
    let mut connecting = JoinSet::new();
    for index in 0..devices {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let connection_string = format!(
            "HostName={host};DeviceId={};SharedAccessKey={SEED_KEY}",
            device_id(index)
        );
        let options = hub.device_options();
        let simulation = Arc::clone(&simulation);
        let bar = bar.clone();
        connecting.spawn(async move {
            let _permit = permit;
            let client = DeviceClient::connect(&connection_string, options).await?;
            let reporter = client.clone();
            client
                .on_method(move |request| {
                    let simulation = Arc::clone(&simulation);
                    let reporter = reporter.clone();
                    async move { simulation.on_method(reporter, request) }
                })
                .await?;
            bar.inc(1);
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::with_capacity(devices);
    while let Some(joined) = connecting.join_next().await {
        clients.push(joined??);
    }
    bar.finish_and_clear();

    // The rollout.
    let rollout_id: RolloutId = "bench".parse()?;
    let request = RolloutRequest {
        artifact: Some(ArtifactRef {
            model: MODEL.to_owned(),
            version: TO_VERSION.to_owned(),
        }),
        target_condition: Some(format!(
            "properties.reported.firmware.currentVersion = '{FROM_VERSION}'"
        )),
        waves: Some(WavesRequest::Text(waves.clone())),
        success_threshold: Some(NumberOrText::Text("100%".to_owned())),
        error_threshold: Some(NumberOrText::Text("none".to_owned())),
        max_concurrency: Some(max_concurrency),
        device_timeout_in_seconds: Some(600),
        ..RolloutRequest::default()
    };
    let started = Instant::now();
    hub.service
        .create_rollout(&rollout_id, &request)
        .await
        .context("create the rollout")?;
    let bar = progress(devices as u64, "committed");
    let mut follow = hub.service.watch_rollout(&rollout_id).await?;
    let mut final_status = None;
    while let Some(progress) = follow.next().await {
        let progress = progress?;
        bar.set_position(progress.rollout.statistics.succeeded);
        if progress.is_over() {
            final_status = Some(progress.rollout.clone());
            break;
        }
    }
    let ended = Instant::now();
    bar.finish_and_clear();
    let rollout = final_status.context("the rollout watch ended before the rollout")?;
    let peak_bytes = hub.peak_resident_bytes()?;
    drop(clients);

    let timeline = simulation.timeline.lock().expect("timeline lock");
    if !timeline.failures.is_empty() {
        bail!(
            "{} simulated devices failed, first: {}",
            timeline.failures.len(),
            timeline.failures[0]
        );
    }
    let statistics = rollout.statistics;
    anyhow::ensure!(
        statistics.succeeded == devices as u64,
        "the rollout ended {} with {} of {devices} devices succeeded: {:?}",
        rollout.status.as_str(),
        statistics.succeeded,
        rollout.status_message
    );
    let last = |instants: &[Instant]| instants.iter().max().copied();
    let first = |instants: &[Instant]| instants.iter().min().copied();
    let fan_out = last(&timeline.called).context("no device was called")? - started;
    let download_window = last(&timeline.download_ended).context("no download")?
        - first(&timeline.download_started).context("no download")?;
    let end_to_end = ended - started;
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    println!(
        "rollout of {} KiB to {devices} devices (waves {waves}, max concurrency {max_concurrency}): \
         {:.1} s end to end, fan-out {:.1} s, {:.0} MiB/s of artifact downloads ({:.0} MiB), hub peak RSS {:.0} MiB",
        image_bytes / 1024,
        end_to_end.as_secs_f64(),
        fan_out.as_secs_f64(),
        mib(timeline.bytes as f64) / download_window.as_secs_f64(),
        mib(timeline.bytes as f64),
        mib(peak_bytes as f64),
    );
    let parameters = format!(
        "{devices} devices, {} KiB signed image, waves {waves}, max concurrency {max_concurrency}",
        image_bytes / 1024
    );
    // Per-device latencies: rollout start to the device's committed report.
    let latencies: Vec<u32> = timeline
        .committed
        .iter()
        .map(|instant| (*instant - started).as_micros() as u32)
        .collect();
    let mut end = measurement(
        "rollout: start to all committed",
        parameters.clone(),
        latencies,
        0,
        end_to_end,
    );
    end.peak_hub_memory_bytes = Some(peak_bytes);
    let mut fan = measurement(
        "rollout: fan-out (start to last device called)",
        parameters.clone(),
        Vec::new(),
        0,
        fan_out,
    );
    fan.operations = devices as u64;
    fan.per_second = devices as f64 / fan_out.as_secs_f64();
    let mut download = measurement(
        "rollout: artifact downloads",
        parameters,
        Vec::new(),
        0,
        download_window,
    );
    download.operations = devices as u64;
    download.per_second = devices as f64 / download_window.as_secs_f64();
    download.bytes_per_second = Some(timeline.bytes as f64 / download_window.as_secs_f64());
    Ok(vec![end, fan, download])
}

fn device_id(index: usize) -> String {
    format!("fw-{index:06}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl Simulation {
    fn on_method(
        self: Arc<Self>,
        reporter: DeviceClient,
        request: fleethub_device::MethodRequest,
    ) -> MethodResponse {
        if request.method_name != fleethub_agent::METHOD_NAME {
            return MethodResponse::new(404, json!({"Response": "no such method"}));
        }
        let update = match fleethub_agent::parse_update_request(&request.payload) {
            Ok(update) => update,
            Err(reason) => return MethodResponse::new(400, json!({"Response": reason})),
        };
        self.timeline
            .lock()
            .expect("timeline lock")
            .called
            .push(Instant::now());
        tokio::spawn(async move {
            if let Err(error) = self.update(&reporter, update).await {
                self.timeline
                    .lock()
                    .expect("timeline lock")
                    .failures
                    .push(format!("{error:#}"));
                let _ = reporter
                    .patch_reported(&json!({"firmwareStatus": "failed", "firmware": {
                        "status": "failed", "targetVersion": TO_VERSION,
                        "error": {"code": "simulation", "reason": format!("{error:#}")},
                    }}))
                    .await;
            }
        });
        MethodResponse::ok(json!({"Response": fleethub_agent::STARTED_RESPONSE}))
    }

    async fn update(
        &self,
        reporter: &DeviceClient,
        update: fleethub_agent::UpdateRequest,
    ) -> anyhow::Result<()> {
        let (jws, _) = update.manifest.context("the payload names no manifest")?;
        let manifest = self.public_key.verify(&jws)?;
        let version = manifest.version.clone();
        reporter
            .patch_reported(&json!({"firmwareStatus": "downloading", "firmware": {
                "model": MODEL, "currentVersion": FROM_VERSION, "targetVersion": version,
                "status": "downloading", "progress": 0, "error": null,
            }}))
            .await?;
        let download_started = Instant::now();
        let mut response = self.http.get(update.url).send().await?.error_for_status()?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = response.chunk().await? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        let download_ended = Instant::now();
        anyhow::ensure!(
            size == manifest.size && hex(&hasher.finalize()) == manifest.sha256,
            "the image does not match its manifest"
        );
        {
            let mut timeline = self.timeline.lock().expect("timeline lock");
            timeline.download_started.push(download_started);
            timeline.download_ended.push(download_ended);
            timeline.bytes += size;
        }
        reporter
            .patch_reported(&json!({"firmwareStatus": "applying", "firmware": {
                "status": "applying", "progress": 100,
            }}))
            .await?;
        reporter
            .patch_reported(&json!({"firmwareStatus": "completed", "firmware": {
                "status": "completed", "currentVersion": version,
            }}))
            .await?;
        self.timeline
            .lock()
            .expect("timeline lock")
            .committed
            .push(Instant::now());
        Ok(())
    }
}
