//! The `telemetry-vs-mosquitto` scenario: the same load generator (`raw_mqtt`, our codec, identical bytes)
//! sends the same QoS 1 telemetry from the same number of connections to fleethub and to Eclipse Mosquitto,
//! one after the other in the same run.
//!
//! Fairness: fleethub authenticates every connection with its SAS token, acknowledges a message only once
//! it is fsynced in the event log, and one consumer reads the log over HTTPS while the load runs. Mosquitto
//! (no persistence, anonymous, which is how it runs by default) acknowledges on receipt and gets one QoS 1
//! subscriber on `#`, since it discards messages nobody subscribed to; its queue for that subscriber is
//! unbounded so that it drops nothing either. Both serve TLS with the same certificate (the one fleethub
//! issued itself); Mosquitto also runs plain TCP, which fleethub does not offer (Azure IoT Hub requires TLS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use fleethub_protocol::connection_string::DeviceConnectionString;
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use fleethub_service::{EventReadOptions, EventStart};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::raw_mqtt::{self, Credentials, Endpoint};
use super::{Hub, Measurement, free_port, measurement, progress};

pub(crate) struct CompareParameters {
    pub(crate) devices: usize,
    pub(crate) in_flight: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) seconds: u64,
    pub(crate) mosquitto: Option<PathBuf>,
    /// 1: every message timed to its PUBACK. 0: as fast as TCP takes them; the rate is what the reader got.
    pub(crate) qos: u8,
}

/// One device's connection and where it publishes.
struct Publisher {
    credentials: Credentials,
    topic: String,
}

pub(crate) async fn compare(
    hub_bin: &Path,
    parameters: CompareParameters,
) -> anyhow::Result<Vec<Measurement>> {
    let mosquitto = match &parameters.mosquitto {
        Some(path) => path.clone(),
        None => find_mosquitto()?,
    };
    let payload = Bytes::from(
        (0..parameters.payload_bytes)
            .map(|index| b'a' + (index % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    anyhow::ensure!(parameters.qos <= 1, "--qos is 0 or 1");
    let described = if parameters.qos == 1 {
        format!(
            "{} connections x {} in flight, {}-byte payloads, QoS 1",
            parameters.devices, parameters.in_flight, parameters.payload_bytes
        )
    } else {
        format!(
            "{} connections, {}-byte payloads, QoS 0 as fast as TCP takes them (rate and count at the reader)",
            parameters.devices, parameters.payload_bytes
        )
    };
    let qos = parameters.qos;
    let mut results = Vec::new();

    // fleethub: TLS, SAS-authenticated devices, durable log, one consumer reading it.
    let hub = Hub::start(hub_bin).await?;
    let strings = hub.create_devices("compare", parameters.devices).await?;
    let publishers = strings
        .iter()
        .map(|text| sas_publisher(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let certificates = tempfile::tempdir()?;
    for file in ["server.pem", "server-key.pem", "ca.pem"] {
        std::fs::copy(hub.data_dir().join(file), certificates.path().join(file))?;
    }
    let hub_endpoint = Endpoint::tls(
        SocketAddr::from(([127, 0, 0, 1], hub.mqtt_port)),
        &hub.ca_pem,
    )?;
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut events = hub
        .service
        .read_events(EventReadOptions {
            start: EventStart::Latest,
            ..EventReadOptions::default()
        })
        .await?;
    let consumer = {
        let consumed = Arc::clone(&consumed);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                    Ok(Some(Ok(event))) => {
                        if event.message_source() == Some("Telemetry") {
                            consumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(Err(error))) => return Err(anyhow::Error::from(error)),
                    Ok(None) => bail!("the event stream ended"),
                    Err(_) => {}
                }
            }
            anyhow::Ok(())
        })
    };
    let run = publish(
        &hub_endpoint,
        &publishers,
        &payload,
        &parameters,
        hub.process_id(),
    )
    .await?;
    let delivered = wait_for(&consumed, run.expected()).await;
    stop.store(true, Ordering::Release);
    consumer.await??;
    results.push(run.into_measurement(
        &format!("telemetry QoS {qos}: fleethub over TLS (SAS auth, fsynced log, 1 consumer)"),
        &described,
        delivered,
    ));
    drop(hub);

    // Mosquitto: TLS and plain listeners, one QoS 1 subscriber on `#`.
    let broker = Mosquitto::start(&mosquitto, certificates.path())?;
    for (name, endpoint) in [
        (
            format!(
                "telemetry QoS {qos}: Mosquitto over TLS (anonymous, in memory, 1 subscriber on #)"
            ),
            Endpoint::tls(
                broker.tls,
                &std::fs::read_to_string(certificates.path().join("ca.pem"))?,
            )?,
        ),
        (
            format!(
                "telemetry QoS {qos}: Mosquitto over plain TCP (anonymous, in memory, 1 subscriber on #)"
            ),
            Endpoint::plain(broker.plain),
        ),
    ] {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let subscriber = raw_mqtt::connect(
            &endpoint,
            &Credentials {
                client_id: "fleethub-load-subscriber".to_owned(),
                username: None,
                password: None,
            },
        )
        .await
        .context("connect the subscriber to Mosquitto")?;
        let subscription = tokio::spawn(subscriber.subscribe_and_count(
            "#",
            Arc::clone(&received),
            Arc::clone(&stop),
        ));
        // Give the SUBACK time to arrive before the first publish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let run = publish(
            &endpoint,
            &publishers,
            &payload,
            &parameters,
            broker.child.id(),
        )
        .await?;
        let delivered = wait_for(&received, run.expected()).await;
        stop.store(true, Ordering::Release);
        subscription.await??;
        results.push(run.into_measurement(&name, &described, delivered));
    }
    drop(broker);
    Ok(results)
}

/// The raw-client credentials of a device connection string: the same user name and SAS token our SDK and
/// Azure's send.
fn sas_publisher(connection_string: &str) -> anyhow::Result<Publisher> {
    let parsed: DeviceConnectionString = connection_string.parse()?;
    let key = decode_key(
        parsed
            .shared_access_key
            .as_deref()
            .context("the connection string has no key")?,
    )?;
    let device = parsed.device_id.as_str().to_owned();
    let expiry = time::OffsetDateTime::now_utc().unix_timestamp() as u64 + 3600;
    let token = generate_sas_token(
        &format!("{}/devices/{device}", parsed.host_name),
        &key,
        expiry,
        None,
    );
    Ok(Publisher {
        credentials: Credentials {
            client_id: device.clone(),
            username: Some(format!(
                "{}/{device}/?api-version=2021-04-12",
                parsed.host_name
            )),
            password: Some(token),
        },
        topic: format!("devices/{device}/messages/events/"),
    })
}

struct Run {
    /// QoS 1: publish-to-PUBACK per acknowledged message, in µs. QoS 0: empty.
    latencies: Vec<u32>,
    unacknowledged: u64,
    /// QoS 0: messages written to the sockets.
    sent: u64,
    started: Instant,
    elapsed: Duration,
    /// CPU used during the publishing window; `None` where /proc cannot tell.
    cpu: Option<CpuTimes>,
}

/// What a reader got, and when its count last grew.
struct Delivered {
    count: u64,
    last_at: Option<Instant>,
}

impl Run {
    /// What the reader should see: every acknowledged message (QoS 1) or every one sent (QoS 0).
    fn expected(&self) -> u64 {
        if self.sent > 0 {
            self.sent
        } else {
            self.latencies.len() as u64
        }
    }

    fn into_measurement(
        self,
        scenario: &str,
        described: &str,
        delivered: Delivered,
    ) -> Measurement {
        if self.sent == 0 {
            let acknowledged = self.latencies.len() as u64;
            let cpu = self.cpu.map_or(String::new(), |cpu| {
                format!(
                    "; {}",
                    cpu.describe(acknowledged, self.elapsed.as_secs_f64())
                )
            });
            let mut measured = measurement(
                scenario,
                format!(
                    "{described}; {} of {acknowledged} acknowledged messages reached the reader{cpu}",
                    delivered.count
                ),
                self.latencies,
                self.unacknowledged,
                self.elapsed,
            );
            measured.delivered = Some(delivered.count);
            return measured;
        }
        // QoS 0: nothing is acknowledged, so the rate is the reader's: the messages it got over the time
        // from the first publish to the last message it got. Messages sent and never read count as errors.
        let window = delivered.last_at.map_or(self.elapsed, |last| {
            last.saturating_duration_since(self.started)
        });
        let cpu = self.cpu.map_or(String::new(), |cpu| {
            format!("; {}", cpu.describe(self.sent, self.elapsed.as_secs_f64()))
        });
        let mut measured = measurement(
            scenario,
            format!(
                "{described}; {} of {} sent messages reached the reader{cpu}",
                delivered.count, self.sent
            ),
            Vec::new(),
            self.sent.saturating_sub(delivered.count),
            window,
        );
        measured.operations = delivered.count;
        measured.per_second = delivered.count as f64 / window.as_secs_f64().max(f64::MIN_POSITIVE);
        measured.delivered = Some(delivered.count);
        measured
    }
}

/// Connects every publisher (100 handshakes at a time), then all publish until the same deadline.
async fn publish(
    endpoint: &Endpoint,
    publishers: &[Publisher],
    payload: &Bytes,
    parameters: &CompareParameters,
    broker_pid: u32,
) -> anyhow::Result<Run> {
    let bar = progress(publishers.len() as u64, "connecting");
    let limit = Arc::new(Semaphore::new(100));
    let mut connecting = JoinSet::new();
    for (index, publisher) in publishers.iter().enumerate() {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let endpoint = endpoint.clone();
        let credentials = Credentials {
            client_id: publisher.credentials.client_id.clone(),
            username: publisher.credentials.username.clone(),
            password: publisher.credentials.password.clone(),
        };
        connecting.spawn(async move {
            let _permit = permit;
            let connection = raw_mqtt::connect(&endpoint, &credentials).await;
            (index, connection)
        });
    }
    let mut connections = Vec::with_capacity(publishers.len());
    while let Some(joined) = connecting.join_next().await {
        let (index, connection) = joined?;
        connections.push((
            index,
            connection.with_context(|| format!("connect publisher {index}"))?,
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let cpu_before = CpuTimes::now(broker_pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(parameters.seconds);
    let mut running = JoinSet::new();
    for (index, connection) in connections {
        let topic = publishers[index].topic.clone();
        let payload = payload.clone();
        let in_flight = parameters.in_flight;
        let qos = parameters.qos;
        running.spawn(async move {
            if qos == 0 {
                let sent = connection
                    .publish_qos0_until(&topic, payload, deadline)
                    .await?;
                anyhow::Ok((Vec::new(), 0, sent))
            } else {
                let (latencies, lost) = connection
                    .publish_until(&topic, payload, in_flight, deadline)
                    .await?;
                anyhow::Ok((latencies, lost, 0))
            }
        });
    }
    let mut latencies = Vec::new();
    let mut unacknowledged = 0;
    let mut sent = 0;
    while let Some(joined) = running.join_next().await {
        let (mine, lost, written) = joined??;
        latencies.extend(mine);
        unacknowledged += lost;
        sent += written;
    }
    let elapsed = started.elapsed();
    let cpu = CpuTimes::now(broker_pid)
        .zip(cpu_before)
        .map(|(after, before)| after.since(before));
    Ok(Run {
        latencies,
        unacknowledged,
        sent,
        started,
        elapsed,
        cpu,
    })
}

/// CPU time (user + system, seconds) used so far by the broker and by this load generator.
#[derive(Clone, Copy, Default)]
struct CpuTimes {
    broker: f64,
    generator: f64,
}

impl CpuTimes {
    fn now(broker_pid: u32) -> Option<Self> {
        Some(Self {
            broker: process_cpu_seconds(&broker_pid.to_string())?,
            generator: process_cpu_seconds("self")?,
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            broker: self.broker - before.broker,
            generator: self.generator - before.generator,
        }
    }

    /// "broker CPU 27.1 µs per message (1.16 cores), load generator 16.0 µs".
    fn describe(&self, messages: u64, seconds: f64) -> String {
        let per_message = |cpu: f64| cpu * 1e6 / messages.max(1) as f64;
        format!(
            "broker CPU {:.1} µs per message ({:.2} cores), load generator {:.1} µs",
            per_message(self.broker),
            self.broker / seconds.max(f64::MIN_POSITIVE),
            per_message(self.generator)
        )
    }
}

/// User plus system CPU seconds of a process (`self` or a pid) from /proc/PID/stat (fields 14 and 15, in
/// clock ticks of 1/100 s, the USER_HZ of every Linux this runs on).
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count fields after it.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Waits until the reader has seen `expected` messages, or its count has not grown for 5 s (30 s at most);
/// returns what it saw and when its count last grew.
async fn wait_for(counter: &AtomicU64, expected: u64) -> Delivered {
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut count = counter.load(Ordering::Relaxed);
    let mut last_at = None;
    let mut changed = Instant::now();
    while count < expected && Instant::now() < give_up && changed.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = counter.load(Ordering::Relaxed);
        if now != count {
            count = now;
            changed = Instant::now();
            last_at = Some(changed);
        }
    }
    if last_at.is_none() {
        last_at = Some(Instant::now());
    }
    Delivered { count, last_at }
}

fn find_mosquitto() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("mosquitto"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/sbin/mosquitto"));
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .context("no mosquitto binary (apt-get install mosquitto, or pass --mosquitto PATH)")
}

/// A Mosquitto process on two free loopback ports, killed on drop.
struct Mosquitto {
    child: Child,
    _directory: tempfile::TempDir,
    tls: SocketAddr,
    plain: SocketAddr,
}

impl Mosquitto {
    fn start(binary: &Path, certificates: &Path) -> anyhow::Result<Self> {
        let directory = tempfile::tempdir()?;
        let (tls_port, plain_port) = (free_port()?, free_port()?);
        let config = directory.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "# Written by fleethub-load for the telemetry comparison.\n\
                 # As root Mosquitto would switch to the mosquitto user, who cannot read these files.\n\
                 user root\n\
                 persistence false\n\
                 log_dest stderr\n\
                 log_type error\n\
                 allow_anonymous true\n\
                 # Deliver everything to the one subscriber: no queue limit, so no message is dropped.\n\
                 max_queued_messages 0\n\
                 max_inflight_messages 100\n\
                 listener {plain_port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\n\
                 certfile {}\n\
                 keyfile {}\n",
                certificates.join("server.pem").display(),
                certificates.join("server-key.pem").display(),
            ),
        )?;
        let log = std::fs::File::create(directory.path().join("mosquitto.log"))?;
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
        let plain = SocketAddr::from(([127, 0, 0, 1], plain_port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(tls).is_err()
            || std::net::TcpStream::connect(plain).is_err()
        {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(directory.path().join("mosquitto.log"))
                    .unwrap_or_default();
                bail!("mosquitto exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("mosquitto did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            _directory: directory,
            tls,
            plain,
        })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
