//! `fleethub-load`: starts a real `fleethub serve` process on loopback, drives it with real device
//! connections (our device SDK over MQTT/TLS) and real service calls (our service SDK over HTTPS), and
//! reports what it measured. Every number in BENCHMARKS.md comes from here (see `bench/run.sh`).
//!
//! Hub and load generator share the machine, so numbers are for the pair on one box; the report records the
//! machine's cores and memory next to them.

mod broker;
mod raw_mqtt;
mod rollout;
mod telemetry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fleethub_device::{DeviceClient, DeviceClientOptions, MethodResponse};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::{CloudToDeviceMethod, Device};
use fleethub_service::{ServiceClient, ServiceClientOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    name = "fleethub-load",
    about = "Measure a real fleethub hub under load on this machine"
)]
struct Cli {
    /// The `fleethub` binary to start (default: next to this executable).
    #[arg(long, global = true)]
    hub_bin: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Also write the Markdown table (with the machine's facts) to this file.
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// Direct-method round trip REST -> hub -> device -> hub -> REST at several concurrency levels.
    Methods {
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Calls in flight, one run per value.
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        in_flight: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Durable reported-property patches: every device patches as fast as its previous patch is acknowledged.
    Patches {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Connect rate and resident memory per idle device connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Seconds to let the hub settle before reading its memory.
        #[arg(long, default_value_t = 3)]
        settle_seconds: u64,
    },
    /// Twin queries over a large fleet: seeding through the bulk registry API, a selective tag filter, a
    /// GROUP BY count over a reported property, and twin write throughput with the indexes on.
    Query {
        /// Twins in the fleet (e.g. 100000 or 1000000).
        #[arg(long, default_value_t = 100_000)]
        twins: usize,
        /// Seconds of twin writes for the write-throughput measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// A firmware rollout of one signed image to simulated devices (each a real MQTT/TLS connection that
    /// downloads and verifies the image): time to all committed, fan-out, download throughput, hub memory.
    Rollout {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Image size in KiB.
        #[arg(long, default_value_t = 1024)]
        image_kib: usize,
        /// Devices updating at once.
        #[arg(long, default_value_t = 1000)]
        max_concurrency: u64,
        #[arg(long, default_value = "100%")]
        waves: String,
    },
    /// Device-to-cloud messages at QoS 1, each acknowledged once durable in the event log: messages/s and
    /// publish-to-PUBACK latency.
    Telemetry {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Messages each device keeps in flight (pipelined on its one connection).
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        #[arg(long, default_value_t = 256)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The same QoS 1 telemetry (one raw MQTT client, identical bytes) to fleethub over TLS (authenticated,
    /// durable, one consumer reading the log) and to Eclipse Mosquitto over TLS and plain TCP (one QoS 1
    /// subscriber on `#`), in one run: messages/s and publish-to-PUBACK latency side by side.
    TelemetryVsMosquitto {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Messages each connection keeps in flight.
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        #[arg(long, default_value_t = 256)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The mosquitto binary (default: `mosquitto` on PATH or /usr/sbin/mosquitto).
        #[arg(long)]
        mosquitto: Option<PathBuf>,
        /// 1: each message timed to its PUBACK; 0: as fast as TCP takes them, counted at the reader.
        #[arg(long, default_value_t = 1)]
        qos: u8,
    },
    /// Every kind of benchmark BENCHMARKS.md reports, one after the other, each on a fresh hub: method round
    /// trips, durable reported patches, idle connections, telemetry QoS 1 and 0 side by side with Mosquitto,
    /// twin queries, a firmware rollout. The sizes default to BENCHMARKS.md's; smaller ones make a quick run.
    All {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        method_devices: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        method_in_flight: Vec<usize>,
        #[arg(long, default_value_t = 1000)]
        patch_devices: usize,
        /// Idle connection counts to measure, each on a fresh hub (those the open-file limit cannot hold are
        /// reported as skipped, with the limit).
        #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
        idle_devices: Vec<usize>,
        #[arg(long, default_value_t = 1000)]
        telemetry_devices: usize,
        #[arg(long, default_value_t = 100_000)]
        query_twins: usize,
        #[arg(long, default_value_t = 10_000)]
        rollout_devices: usize,
        #[arg(long, default_value_t = 1000)]
        rollout_concurrency: u64,
        /// The mosquitto binary (default: `mosquitto` on PATH or /usr/sbin/mosquitto).
        #[arg(long)]
        mosquitto: Option<PathBuf>,
    },
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    results: Vec<Measurement>,
}

#[derive(Serialize)]
struct Machine {
    cores: usize,
    cpu: String,
    memory_gib: f64,
    kernel: String,
    /// `fleethub --version` of the hub binary measured.
    hub: String,
    /// `rustc --version` on this machine, when rustc is on the PATH.
    rustc: Option<String>,
    /// `mosquitto -h`'s first line, when Mosquitto is installed.
    mosquitto: Option<String>,
    note: &'static str,
}

#[derive(Serialize, Clone)]
struct Measurement {
    scenario: String,
    parameters: String,
    operations: u64,
    seconds: f64,
    per_second: f64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    errors: u64,
    /// For the idle scenario: hub resident memory added per connection.
    bytes_per_connection: Option<f64>,
    /// The hub's peak resident memory during the scenario (`VmHWM`).
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_hub_memory_bytes: Option<u64>,
    /// Payload bytes moved per second (artifact downloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_second: Option<f64>,
    /// Messages a reader of the broker received (the log's consumer, Mosquitto's subscriber).
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered: Option<u64>,
    /// Why the scenario was not run on this machine (e.g. its open-file limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let hub_bin = match cli.hub_bin {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("fleethub"),
    };
    if !hub_bin.exists() {
        bail!(
            "no hub binary at {}: build it (cargo build --release -p fleethub) or pass --hub-bin",
            hub_bin.display()
        );
    }
    let mut results = Vec::new();
    match cli.scenario {
        Scenario::Methods {
            devices,
            in_flight,
            seconds,
        } => {
            results.extend(methods(&hub_bin, devices, &in_flight, seconds).await?);
        }
        Scenario::Patches { devices, seconds } => {
            results.push(patches(&hub_bin, devices, seconds).await?)
        }
        Scenario::Idle {
            devices,
            settle_seconds,
        } => results.push(idle(&hub_bin, devices, settle_seconds).await?),
        Scenario::Query { twins, seconds } => {
            results.extend(queries(&hub_bin, twins, seconds).await?)
        }
        Scenario::Rollout {
            devices,
            image_kib,
            max_concurrency,
            waves,
        } => results.extend(
            rollout::rollout(
                &hub_bin,
                rollout::RolloutParameters {
                    devices,
                    image_bytes: image_kib * 1024,
                    max_concurrency,
                    waves,
                },
            )
            .await?,
        ),
        Scenario::Telemetry {
            devices,
            in_flight,
            payload_bytes,
            seconds,
        } => results.push(
            telemetry::telemetry(
                &hub_bin,
                telemetry::TelemetryParameters {
                    devices,
                    in_flight,
                    payload_bytes,
                    seconds,
                },
            )
            .await?,
        ),
        Scenario::TelemetryVsMosquitto {
            devices,
            in_flight,
            payload_bytes,
            seconds,
            mosquitto,
            qos,
        } => results.extend(
            broker::compare(
                &hub_bin,
                broker::CompareParameters {
                    devices,
                    in_flight,
                    payload_bytes,
                    seconds,
                    mosquitto,
                    qos,
                },
            )
            .await?,
        ),
        Scenario::All {
            seconds,
            method_devices,
            method_in_flight,
            patch_devices,
            idle_devices,
            telemetry_devices,
            query_twins,
            rollout_devices,
            rollout_concurrency,
            mosquitto,
        } => {
            results.extend(methods(&hub_bin, method_devices, &method_in_flight, seconds).await?);
            results.push(patches(&hub_bin, patch_devices, seconds).await?);
            for devices in idle_devices {
                results.push(idle(&hub_bin, devices, 3).await?);
            }
            for (qos, in_flight) in [(1, 1), (1, 8), (0, 1)] {
                results.extend(
                    broker::compare(
                        &hub_bin,
                        broker::CompareParameters {
                            devices: telemetry_devices,
                            in_flight,
                            payload_bytes: 256,
                            seconds,
                            mosquitto: mosquitto.clone(),
                            qos,
                        },
                    )
                    .await?,
                );
            }
            results.extend(queries(&hub_bin, query_twins, seconds).await?);
            results.extend(
                rollout::rollout(
                    &hub_bin,
                    rollout::RolloutParameters {
                        devices: rollout_devices,
                        image_bytes: 1024 * 1024,
                        max_concurrency: rollout_concurrency,
                        waves: "100%".to_owned(),
                    },
                )
                .await?,
            );
        }
    }
    let report = Report {
        machine: machine(&hub_bin),
        results,
    };
    let table = markdown(&report);
    print!("{table}");
    if let Some(path) = cli.markdown {
        std::fs::write(&path, &table).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The hub under test

struct Hub {
    child: Child,
    directory: tempfile::TempDir,
    ca_pem: String,
    mqtt_port: u16,
    service: ServiceClient,
}

impl Hub {
    fn process_id(&self) -> u32 {
        self.child.id()
    }

    async fn start(hub_bin: &Path) -> anyhow::Result<Self> {
        let directory = tempfile::tempdir()?;
        let data_dir = directory.path().join("data");
        let (mqtt_port, https_port) = (free_port()?, free_port()?);
        let log = std::fs::File::create(directory.path().join("hub.log"))?;
        let child = Command::new(hub_bin)
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args([
                "--mqtt-listen",
                &format!("127.0.0.1:{mqtt_port}"),
                "--https-listen",
                &format!("127.0.0.1:{https_port}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", hub_bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let connection_string = loop {
            let output = Command::new(hub_bin)
                .args(["connection-string", "--data-dir"])
                .arg(&data_dir)
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if output.status.success() && text.contains(&format!(":{https_port};")) {
                break text;
            }
            if Instant::now() > deadline {
                bail!("the hub did not start; see its log");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let ca_pem = std::fs::read_to_string(data_dir.join("ca.pem"))?;
        let options = ServiceClientOptions {
            ca_pem: Some(ca_pem.clone()),
            ..ServiceClientOptions::default()
        };
        let service = ServiceClient::from_connection_string(&connection_string, options)?;
        service
            .registry_statistics()
            .await
            .context("the hub answers REST")?;
        Ok(Self {
            child,
            directory,
            ca_pem,
            mqtt_port,
            service,
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    /// The hub's peak resident memory so far (`VmHWM`).
    fn peak_resident_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmHWM in /proc/PID/status")?;
        Ok(kib * 1024)
    }

    fn resident_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS in /proc/PID/status")?;
        Ok(kib * 1024)
    }

    /// Registers `count` devices and returns their connection strings.
    async fn create_devices(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let progress = progress(count as u64, "creating devices");
        let limit = Arc::new(Semaphore::new(64));
        let mut tasks = JoinSet::new();
        for index in 0..count {
            let service = self.service.clone();
            let permit = Arc::clone(&limit).acquire_owned().await?;
            let progress = progress.clone();
            let id: DeviceId = format!("{prefix}-{index:06}").parse()?;
            tasks.spawn(async move {
                let _permit = permit;
                let device = service.create_device(&Device::new(id)).await?;
                progress.inc(1);
                let connection_string = service
                    .device_connection_string(&device)
                    .context("the hub generated SAS keys")?;
                anyhow::Ok((index, connection_string))
            });
        }
        let mut strings = vec![String::new(); count];
        while let Some(joined) = tasks.join_next().await {
            let (index, connection_string) = joined??;
            strings[index] = connection_string;
        }
        progress.finish_and_clear();
        Ok(strings)
    }

    fn device_options(&self) -> DeviceClientOptions {
        DeviceClientOptions::default()
            .with_ca_pem(self.ca_pem.clone())
            .with_port(self.mqtt_port)
    }

    /// Connects a device for every connection string, 100 handshakes at a time.
    async fn connect_devices(
        &self,
        strings: &[String],
        answer_methods: bool,
    ) -> anyhow::Result<(Vec<DeviceClient>, Duration)> {
        let progress = progress(strings.len() as u64, "connecting devices");
        let limit = Arc::new(Semaphore::new(100));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for (index, connection_string) in strings.iter().enumerate() {
            let permit = Arc::clone(&limit).acquire_owned().await?;
            let mut options = self.device_options();
            // One loopback address pair gives ~28k ephemeral ports: past that, spread the devices over
            // source addresses 127.0.0.1, .2, ... (all of 127/8 is loopback on Linux).
            if strings.len() > DEVICES_PER_SOURCE_ADDRESS {
                let octet = 1 + index / DEVICES_PER_SOURCE_ADDRESS;
                options =
                    options.with_local_address(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                        127,
                        0,
                        0,
                        u8::try_from(octet)
                            .context("too many devices for 127.0.0.x source addresses")?,
                    )));
            }
            let connect = DeviceClient::connect(connection_string, options);
            let progress = progress.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let client = connect.await?;
                if answer_methods {
                    client
                        .on_method(|_request| async { MethodResponse::ok(json!({"ok": true})) })
                        .await?;
                }
                progress.inc(1);
                anyhow::Ok((index, client))
            });
        }
        let mut clients = Vec::with_capacity(strings.len());
        while let Some(joined) = tasks.join_next().await {
            clients.push(joined??);
        }
        let elapsed = started.elapsed();
        progress.finish_and_clear();
        clients.sort_by_key(|(index, _)| *index);
        Ok((
            clients.into_iter().map(|(_, client)| client).collect(),
            elapsed,
        ))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Device connections per loopback source address (below the ~28k ephemeral ports of one address pair).
const DEVICES_PER_SOURCE_ADDRESS: usize = 25_000;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn progress(length: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg:20} [{bar:40}] {pos}/{len} {per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

// ---------------------------------------------------------------------------------------------------------
// Scenarios

async fn methods(
    hub_bin: &Path,
    devices: usize,
    in_flight: &[usize],
    seconds: u64,
) -> anyhow::Result<Vec<Measurement>> {
    let hub = Hub::start(hub_bin).await?;
    let strings = hub.create_devices("method", devices).await?;
    let (clients, _) = hub.connect_devices(&strings, true).await?;
    let ids: Arc<Vec<DeviceId>> = Arc::new(
        clients
            .iter()
            .map(|client| client.client_id().device.clone())
            .collect(),
    );
    let mut results = Vec::new();
    for &concurrency in in_flight {
        // Warm up connections (HTTPS pool, TLS sessions) before measuring.
        run_method_calls(&hub.service, &ids, concurrency, Duration::from_secs(1)).await;
        let (latencies, errors, elapsed) = run_method_calls(
            &hub.service,
            &ids,
            concurrency,
            Duration::from_secs(seconds),
        )
        .await;
        results.push(measurement(
            "direct method round trip",
            format!("{concurrency} in flight, {devices} devices"),
            latencies,
            errors,
            elapsed,
        ));
    }
    drop(clients);
    Ok(results)
}

async fn run_method_calls(
    service: &ServiceClient,
    ids: &Arc<Vec<DeviceId>>,
    concurrency: usize,
    length: Duration,
) -> (Vec<u32>, u64, Duration) {
    let started = Instant::now();
    let deadline = started + length;
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let service = service.clone();
        let ids = Arc::clone(ids);
        let errors = Arc::clone(&errors);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut call = worker;
            let request = CloudToDeviceMethod {
                method_name: "ping".into(),
                payload: json!({"n": 1}),
                response_timeout_in_seconds: Some(30),
                connect_timeout_in_seconds: Some(0),
            };
            while Instant::now() < deadline {
                let id = &ids[call % ids.len()];
                call += concurrency;
                let sent = Instant::now();
                match service.invoke_method(id, &request).await {
                    Ok(result) if result.status == 200 => {
                        latencies.push(sent.elapsed().as_micros() as u32)
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.unwrap_or_default());
    }
    (
        latencies,
        errors.load(Ordering::Relaxed) as u64,
        started.elapsed(),
    )
}

async fn patches(hub_bin: &Path, devices: usize, seconds: u64) -> anyhow::Result<Measurement> {
    let hub = Hub::start(hub_bin).await?;
    let strings = hub.create_devices("patch", devices).await?;
    let (clients, _) = hub.connect_devices(&strings, false).await?;
    // One patch each first: the SDK subscribes to twin responses on first use.
    for client in &clients {
        client.patch_reported(&json!({"warm": true})).await?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for client in clients {
        let errors = Arc::clone(&errors);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let patch = json!({"firmwareStatus": "downloading", "progress": sequence % 100, "sequence": sequence});
                let sent = Instant::now();
                match client.patch_reported(&patch).await {
                    Ok(_) => latencies.push(sent.elapsed().as_micros() as u32),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    Ok(measurement(
        "durable reported patches",
        format!("{devices} devices, each waits for its 204"),
        latencies,
        errors.load(Ordering::Relaxed) as u64,
        elapsed,
    ))
}

/// Sockets the hub and this process need beside one per device connection.
const SPARE_FILES: u64 = 512;

/// This process's open-file limit (the hub it starts inherits it), from /proc/self/limits.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

async fn idle(hub_bin: &Path, devices: usize, settle_seconds: u64) -> anyhow::Result<Measurement> {
    let parameters = format!("{devices} MQTT/TLS devices, connect rate");
    // Each connection is a socket in the hub and one in this process: both need the files.
    if let Some(limit) = open_file_limit()
        && devices as u64 + SPARE_FILES > limit
    {
        let mut skipped = measurement(
            "idle connections",
            parameters,
            Vec::new(),
            0,
            Duration::ZERO,
        );
        skipped.per_second = 0.0;
        skipped.skipped = Some(format!(
            "needs {} open files in the hub and in the load generator; the limit here is {limit} \
             (`ulimit -n`; bench/run.sh raises it to the hard limit)",
            devices as u64 + SPARE_FILES
        ));
        eprintln!(
            "idle connections, {devices} devices: skipped: {}",
            skipped.skipped.as_deref().unwrap_or_default()
        );
        return Ok(skipped);
    }
    let hub = Hub::start(hub_bin).await?;
    let strings = hub.create_devices("idle", devices).await?;
    // Let the hub's allocator settle after creating the devices, then take the baseline.
    tokio::time::sleep(Duration::from_secs(settle_seconds)).await;
    let baseline = hub.resident_bytes()?;
    let (clients, elapsed) = hub.connect_devices(&strings, false).await?;
    tokio::time::sleep(Duration::from_secs(settle_seconds)).await;
    let connected = hub.resident_bytes()?;
    let per_connection = connected.saturating_sub(baseline) as f64 / devices as f64;
    let mut result = measurement("idle connections", parameters, Vec::new(), 0, elapsed);
    result.operations = devices as u64;
    result.per_second = devices as f64 / elapsed.as_secs_f64();
    result.bytes_per_connection = Some(per_connection);
    drop(clients);
    Ok(result)
}

/// The key every seeded twin shares, so the write benchmark can connect any of them (benchmark data only).
const SEED_KEY: &str = "c2VlZGVkLWtleS1mb3ItYmVuY2htYXJrcy0wMDAwMDA=";
const STATUSES: [&str; 4] = ["standBy", "downloading", "applying", "completed"];

async fn queries(hub_bin: &Path, twins: usize, seconds: u64) -> anyhow::Result<Vec<Measurement>> {
    let hub = Hub::start(hub_bin).await?;
    let mut results = Vec::new();

    // Seed: 1000 twins per bulk request, two requests in flight.
    let progress = progress(twins as u64, "seeding twins");
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(2));
    let mut tasks = JoinSet::new();
    for batch_start in (0..twins).step_by(1000) {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let service = hub.service.clone();
        let progress = progress.clone();
        let batch_end = (batch_start + 1000).min(twins);
        tasks.spawn(async move {
            let _permit = permit;
            let items: Vec<serde_json::Value> = (batch_start..batch_end).map(seed_item).collect();
            let body = serde_json::to_vec(&items)?;
            let response = service
                .raw(fleethub_service::Method::POST, "/devices", &[], Some(body))
                .await?;
            anyhow::ensure!(
                response.status.is_success(),
                "bulk create failed: {}",
                String::from_utf8_lossy(&response.body)
            );
            progress.inc((batch_end - batch_start) as u64);
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    progress.finish_and_clear();
    let seeded = started.elapsed();
    let mut seeding = measurement(
        "bulk registry create",
        format!("{twins} twins with tags and reported, 1000 per request"),
        Vec::new(),
        0,
        seeded,
    );
    seeding.operations = twins as u64;
    seeding.per_second = twins as f64 / seeded.as_secs_f64();
    results.push(seeding);

    // A selective tag filter: one building of 1000 (0.1% of the fleet), first page of 100.
    let mut latencies = Vec::new();
    let mut errors = 0;
    let started = Instant::now();
    for round in 0..200 {
        let building = format!("b{:04}", (round * 37) % 1000);
        let text = format!("SELECT * FROM devices WHERE tags.building = '{building}'");
        let sent = Instant::now();
        match hub.service.query_page(&text, None, Some(100)).await {
            Ok(page) if !page.items.is_empty() => latencies.push(sent.elapsed().as_micros() as u32),
            _ => errors += 1,
        }
    }
    results.push(measurement(
        "query: selective tag filter",
        format!("{twins} twins, tags.building = one of 1000, first 100 twins"),
        latencies,
        errors,
        started.elapsed(),
    ));

    // GROUP BY count over a reported property.
    let mut latencies = Vec::new();
    let mut errors = 0;
    let started = Instant::now();
    let text = "SELECT properties.reported.firmwareStatus AS status, COUNT() AS n FROM devices \
                GROUP BY properties.reported.firmwareStatus";
    for _ in 0..10 {
        let sent = Instant::now();
        match hub.service.query_page(text, None, None).await {
            Ok(page) if page.items.len() == 4 => latencies.push(sent.elapsed().as_micros() as u32),
            _ => errors += 1,
        }
    }
    results.push(measurement(
        "query: GROUP BY count",
        format!("{twins} twins, 4 firmwareStatus values"),
        latencies,
        errors,
        started.elapsed(),
    ));

    // Twin writes with the indexes on: service tag patches (the tags are indexed) from 64 callers.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..64usize {
        let service = hub.service.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut index = worker;
            while Instant::now() < deadline {
                let id: DeviceId = format!("twin-{:07}", index % twins)
                    .parse()
                    .expect("valid id");
                index += 64;
                let patch = json!({"tags": {"floor": index % 20, "rack": index % 50}});
                let sent = Instant::now();
                match service.update_twin(&id, &patch, None).await {
                    Ok(_) => latencies.push(sent.elapsed().as_micros() as u32),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let (latencies, errors) = join_latencies(&mut tasks).await?;
    results.push(measurement(
        "twin tag writes, indexes on",
        format!("{twins} twins, 64 concurrent REST PATCH"),
        latencies,
        errors,
        started.elapsed(),
    ));

    // Durable reported patches from 1000 connected devices on the large fleet (firmwareStatus is indexed).
    let strings: Vec<String> = (0..1000.min(twins))
        .map(|index| {
            format!("HostName=localhost;DeviceId=twin-{index:07};SharedAccessKey={SEED_KEY}")
        })
        .collect();
    let (clients, _) = hub.connect_devices(&strings, false).await?;
    for client in &clients {
        client.patch_reported(&json!({"warm": true})).await?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for client in clients {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let patch = json!({"firmwareStatus": STATUSES[(sequence % 4) as usize], "sequence": sequence});
                let sent = Instant::now();
                match client.patch_reported(&patch).await {
                    Ok(_) => latencies.push(sent.elapsed().as_micros() as u32),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let (latencies, errors) = join_latencies(&mut tasks).await?;
    results.push(measurement(
        "durable reported patches, indexes on",
        format!("{twins} twins, 1000 devices"),
        latencies,
        errors,
        started.elapsed(),
    ));
    Ok(results)
}

fn seed_item(index: usize) -> serde_json::Value {
    json!({
        "id": format!("twin-{index:07}"),
        "importMode": "create",
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": SEED_KEY, "secondaryKey": SEED_KEY}},
        "tags": {
            "building": format!("b{:04}", index % 1000),
            "floor": index % 20,
            "region": if index.is_multiple_of(2) { "eu" } else { "us" },
        },
        "properties": {"reported": {
            "firmwareStatus": STATUSES[index % 4],
            "firmwareVersion": format!("1.{}", index % 7),
            "temperature": 20.5,
        }},
    })
}

async fn join_latencies(tasks: &mut JoinSet<(Vec<u32>, u64)>) -> anyhow::Result<(Vec<u32>, u64)> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (part, failed) = joined?;
        latencies.extend(part);
        errors += failed;
    }
    Ok((latencies, errors))
}

fn measurement(
    scenario: &str,
    parameters: String,
    mut latencies: Vec<u32>,
    errors: u64,
    elapsed: Duration,
) -> Measurement {
    latencies.sort_unstable();
    let percentile = |fraction: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        let index =
            ((latencies.len() as f64 * fraction).ceil() as usize).clamp(1, latencies.len()) - 1;
        Some(latencies[index] as f64 / 1000.0)
    };
    let seconds = elapsed.as_secs_f64();
    Measurement {
        scenario: scenario.into(),
        parameters,
        operations: latencies.len() as u64,
        seconds,
        per_second: latencies.len() as f64 / seconds,
        p50_ms: percentile(0.50),
        p95_ms: percentile(0.95),
        p99_ms: percentile(0.99),
        p999_ms: percentile(0.999),
        errors,
        bytes_per_connection: None,
        peak_hub_memory_bytes: None,
        bytes_per_second: None,
        delivered: None,
        skipped: None,
    }
}

fn machine(hub_bin: &Path) -> Machine {
    let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0.0);
    let first_line = |program: &Path, argument: &str| -> Option<String> {
        let output = Command::new(program).arg(argument).output().ok()?;
        // `mosquitto -h` prints its usage on stdout and exits 3; the version is on its first line.
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines()
            .next()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
    };
    let mosquitto = ["/usr/sbin/mosquitto", "mosquitto"]
        .iter()
        .find_map(|program| first_line(Path::new(program), "-h"));
    Machine {
        cores: std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1),
        cpu: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("model name"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, name)| name.trim().to_owned())
            })
            .unwrap_or_default(),
        memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        hub: first_line(hub_bin, "--version").unwrap_or_default(),
        rustc: first_line(Path::new("rustc"), "--version"),
        mosquitto,
        note: "hub and load generator on the same machine, over loopback",
    }
}

/// The machine's facts and one table row per measurement, in Markdown.
fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let machine = &report.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {} cores ({}), {} GiB, Linux {}; hub {}; {}; {} ({})",
        machine.cores,
        machine.cpu,
        machine.memory_gib,
        machine.kernel,
        machine.hub,
        machine.rustc.as_deref().unwrap_or("rustc unknown"),
        machine.mosquitto.as_deref().unwrap_or("no mosquitto"),
        machine.note
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| scenario | parameters | ops | ops/s | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | bytes/conn |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let show =
        |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |value| format!("{value:.2}"));
    for result in &report.results {
        if let Some(reason) = &result.skipped {
            let _ = writeln!(
                out,
                "| {} | {} | skipped: {reason} | | | | | | | |",
                result.scenario, result.parameters
            );
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            result.scenario,
            result.parameters,
            result.operations,
            result.per_second,
            show(result.p50_ms),
            show(result.p95_ms),
            show(result.p99_ms),
            show(result.p999_ms),
            result.errors,
            result
                .bytes_per_connection
                .map_or_else(|| "-".to_owned(), |bytes| format!("{bytes:.0}")),
        );
    }
    out
}
