//! `fleethub serve`: runs the hub in this process until SIGTERM or SIGINT, then shuts it down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use fleethub_eventlog::EventLogOptions;
use fleethub_hub::audit::AuditSettings;
use fleethub_hub::{HubConfig, HubLimits, RunningHub, ServerCertificateFiles};

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Where the hub keeps its database, CA and certificates (created if missing).
    #[arg(long, default_value = "./fleethub-data", env = "FLEETHUB_DATA_DIR")]
    data_dir: PathBuf,
    /// A name devices and services use to reach the hub; repeat for several. The server certificate covers
    /// each, plus localhost and 127.0.0.1.
    #[arg(long = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,
    /// Address of the MQTT/TLS listener.
    #[arg(long, default_value = "0.0.0.0:8883", value_name = "ADDR:PORT")]
    mqtt_listen: SocketAddr,
    /// Address of the HTTPS listener (REST API and MQTT over WebSocket).
    #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR:PORT")]
    https_listen: SocketAddr,
    /// Largest MQTT packet accepted, in bytes.
    #[arg(long, default_value_t = HubLimits::default().max_packet_size, value_name = "BYTES")]
    max_packet_size: usize,
    /// Jobs (Jobs v2) running at once; more wait, queued, for a slot.
    #[arg(long, default_value_t = HubLimits::default().max_running_jobs, value_name = "JOBS")]
    max_running_jobs: usize,
    /// Devices one job works on at once.
    #[arg(long, default_value_t = HubLimits::default().job_device_concurrency, value_name = "DEVICES")]
    job_device_concurrency: usize,
    /// Devices one job starts per second at most (0: no limit).
    #[arg(long, default_value_t = HubLimits::default().job_start_rate_per_second, value_name = "PER_SECOND")]
    job_start_rate: u32,
    /// Largest firmware image an upload may carry, in bytes (uploads stream to disk; larger ones get 413).
    #[arg(long, default_value_t = HubLimits::default().max_artifact_bytes, value_name = "BYTES")]
    max_artifact_size: u64,
    /// Partitions of the event log (device-to-cloud messages and the hub's events); fixed when the log is
    /// created. Azure's built-in endpoint defaults to 4.
    #[arg(long, default_value_t = EventLogOptions::default().partitions, value_name = "N")]
    event_partitions: u32,
    /// Hours events are kept (Azure keeps 1 day by default, 7 at most).
    #[arg(long, default_value_t = 24, value_name = "HOURS")]
    event_retention_hours: u64,
    /// Bytes of events kept at most (the oldest are deleted beyond it).
    #[arg(long, default_value_t = EventLogOptions::default().retention_bytes, value_name = "BYTES")]
    event_retention_size: u64,
    /// Seconds to finish in-flight work on SIGTERM/SIGINT before exiting.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    shutdown_grace: u64,
    /// Days audit records (state-changing service operations) are kept.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    audit_retention_days: u64,
    /// Audit records kept at most (the oldest are deleted beyond it).
    #[arg(long, default_value_t = AuditSettings::default().max_records, value_name = "N")]
    audit_max_records: u64,
    /// Serve this PEM certificate chain (leaf first) instead of one issued by the hub's own CA; clients then
    /// trust the CA that issued it. Reloaded when the file changes, and on SIGHUP. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Logs to stderr, as text or (`FLEETHUB_LOG_FORMAT=json`) JSON lines, filtered by `RUST_LOG` (default: info).
/// Logs to stderr; `RUST_LOG` overrides `default` (INFO for `serve`, WARN for client commands and the demo).
pub(crate) fn install_logging(default: tracing::Level) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(default));
    let json = std::env::var("FLEETHUB_LOG_FORMAT").is_ok_and(|format| format == "json");
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut hostnames = args.hostnames;
    if hostnames.is_empty() {
        hostnames.push("localhost".into());
    }
    let mut config = HubConfig {
        data_dir: args.data_dir,
        hostnames,
        mqtt_listen: args.mqtt_listen,
        https_listen: args.https_listen,
        limits: HubLimits {
            max_packet_size: args.max_packet_size,
            max_running_jobs: args.max_running_jobs,
            job_device_concurrency: args.job_device_concurrency,
            job_start_rate_per_second: args.job_start_rate,
            max_artifact_bytes: args.max_artifact_size,
            ..HubLimits::default()
        },
        twin_limits: Default::default(),
        events: EventLogOptions {
            partitions: args.event_partitions,
            retention_time: Duration::from_secs(args.event_retention_hours.saturating_mul(3600)),
            retention_bytes: args.event_retention_size,
            ..EventLogOptions::default()
        },
        routing: Default::default(),
        audit: AuditSettings {
            retention: Duration::from_secs(args.audit_retention_days.saturating_mul(24 * 3600)),
            max_records: args.audit_max_records,
        },
        server_certificate: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(certificate, key)| ServerCertificateFiles { certificate, key }),
    };
    args.limits.apply(&mut config.limits)?;
    let hub = fleethub_hub::start(config).await?;
    wait_for_signal(&hub).await?;
    tracing::info!("shutting down");
    hub.shutdown(Duration::from_secs(args.shutdown_grace)).await;
    Ok(())
}

/// Waits for SIGTERM or SIGINT; a SIGHUP meanwhile reloads the server certificate files.
async fn wait_for_signal(hub: &RunningHub) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            result = &mut interrupt => return result.context("wait for SIGINT"),
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => hub.reload_server_certificate(),
        }
    }
}

/// Connection caps, timeouts, in-flight windows and rate limits (docs/limits.md). Rates are per second;
/// 0 removes a limit. Without a preset nothing is rate-limited, so benchmarks are not throttled.
#[derive(clap::Args)]
struct LimitArgs {
    /// Open connections (MQTT, MQTT over WebSocket and HTTPS together) beyond which new sockets are
    /// closed at accept.
    #[arg(long, default_value_t = HubLimits::default().max_connections, value_name = "N")]
    max_connections: usize,
    /// Seconds a new connection has for its TLS handshake, and again for its MQTT CONNECT (or HTTP request
    /// head); slower ones are closed.
    #[arg(long, default_value_t = HubLimits::default().connect_timeout.as_secs(), value_name = "SECONDS", value_parser = connect_timeout_seconds)]
    connect_timeout: u64,
    /// QoS 1 telemetry publishes of one connection waiting to be durable before it reads more.
    #[arg(long, default_value_t = HubLimits::default().telemetry_in_flight, value_name = "N")]
    telemetry_in_flight: usize,
    /// Cloud-to-device messages one connection has out unacknowledged.
    #[arg(long, default_value_t = HubLimits::default().c2d_in_flight, value_name = "N")]
    c2d_in_flight: usize,
    /// Pushes (method requests, desired patches) queued for one connection; more are refused (429).
    #[arg(long, default_value_t = HubLimits::default().outbound_queue_depth, value_name = "N")]
    outbound_queue_depth: usize,
    /// Copy an Azure IoT Hub tier's throttles: none, f1, s1, s2 or s3.
    #[arg(long, default_value = "none", value_name = "PRESET")]
    throttle_preset: fleethub_hub::throttle::ThrottlePreset,
    /// Units of the preset's tier (Azure scales most throttles with them; F1 has one).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    throttle_units: u32,
    /// Burst of every rate, the preset's and those set below, in seconds' worth of it.
    #[arg(long, default_value_t = fleethub_hub::throttle::DEFAULT_BURST_SECONDS, value_name = "SECONDS")]
    throttle_burst_seconds: f64,
    /// Twin reads (REST and MQTT) per second, whole hub.
    #[arg(long, value_name = "PER_SECOND")]
    limit_twin_reads_per_second: Option<f64>,
    /// Twin updates (REST tags/desired, MQTT reported) per second, whole hub.
    #[arg(long, value_name = "PER_SECOND")]
    limit_twin_updates_per_second: Option<f64>,
    /// Direct-method calls per second, whole hub, in 4 KB steps of request body (as Azure meters them).
    #[arg(long, value_name = "PER_SECOND")]
    limit_method_calls_per_second: Option<f64>,
    /// Device-to-cloud messages per second, whole hub (over it devices are slowed down, then cut off).
    #[arg(long, value_name = "PER_SECOND")]
    limit_telemetry_per_second: Option<f64>,
    /// New device connections per second, whole hub (over it: CONNACK 3, server unavailable).
    #[arg(long, value_name = "PER_SECOND")]
    limit_connections_per_second: Option<f64>,
    /// Twin reads per second of one device.
    #[arg(long, value_name = "PER_SECOND")]
    limit_device_twin_reads_per_second: Option<f64>,
    /// Twin updates per second of one device.
    #[arg(long, value_name = "PER_SECOND")]
    limit_device_twin_updates_per_second: Option<f64>,
    /// Direct-method calls per second to one device (4 KB steps).
    #[arg(long, value_name = "PER_SECOND")]
    limit_device_method_calls_per_second: Option<f64>,
    /// Device-to-cloud messages per second of one device.
    #[arg(long, value_name = "PER_SECOND")]
    limit_device_telemetry_per_second: Option<f64>,
    /// Seconds a device may keep sending telemetry over its own limit before it is disconnected.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    abusive_device_after: f64,
    /// Longest a telemetry publish waits for the hub's telemetry rate before its connection is closed.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    telemetry_shaping_max_delay: f64,
    /// Devices whose per-device limits for service calls are tracked at once (memory bound).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_throttled_devices: usize,
}

/// `--connect-timeout`: whole seconds, at least one (0 would close every connection before its handshake).
fn connect_timeout_seconds(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err(
            "must be at least 1 second: 0 would close every connection before its handshake".into(),
        ),
        Ok(seconds) => Ok(seconds),
        Err(error) => Err(format!(
            "{text:?} is not a whole number of seconds: {error}"
        )),
    }
}

impl LimitArgs {
    fn apply(&self, limits: &mut HubLimits) -> anyhow::Result<()> {
        use fleethub_hub::throttle::{OperationClass, Rate, ThrottleSettings};
        let seconds = |name: &str, value: f64| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(value)
                .map_err(|_| anyhow::anyhow!("--{name} must be a number of seconds, got {value}"))
        };
        anyhow::ensure!(
            self.throttle_burst_seconds.is_finite() && self.throttle_burst_seconds > 0.0,
            "--throttle-burst-seconds must be above 0"
        );
        limits.max_connections = self.max_connections;
        limits.connect_timeout = Duration::from_secs(self.connect_timeout);
        limits.telemetry_in_flight = self.telemetry_in_flight.max(1);
        limits.c2d_in_flight = self.c2d_in_flight.max(1);
        limits.outbound_queue_depth = self.outbound_queue_depth.max(1);
        let mut throttle = ThrottleSettings::preset(
            self.throttle_preset,
            self.throttle_units,
            self.throttle_burst_seconds,
        );
        let rate = |flag: &str, value: f64| -> anyhow::Result<Option<Rate>> {
            anyhow::ensure!(
                value.is_finite() && value >= 0.0,
                "--{flag} must be a rate of 0 (no limit) or more, got {value}"
            );
            Ok((value > 0.0).then(|| Rate::per_second(value, self.throttle_burst_seconds)))
        };
        let overrides = [
            (
                "limit-twin-reads-per-second",
                OperationClass::TwinRead,
                self.limit_twin_reads_per_second,
                false,
            ),
            (
                "limit-twin-updates-per-second",
                OperationClass::TwinUpdate,
                self.limit_twin_updates_per_second,
                false,
            ),
            (
                "limit-method-calls-per-second",
                OperationClass::MethodCall,
                self.limit_method_calls_per_second,
                false,
            ),
            (
                "limit-telemetry-per-second",
                OperationClass::Telemetry,
                self.limit_telemetry_per_second,
                false,
            ),
            (
                "limit-connections-per-second",
                OperationClass::Connection,
                self.limit_connections_per_second,
                false,
            ),
            (
                "limit-device-twin-reads-per-second",
                OperationClass::TwinRead,
                self.limit_device_twin_reads_per_second,
                true,
            ),
            (
                "limit-device-twin-updates-per-second",
                OperationClass::TwinUpdate,
                self.limit_device_twin_updates_per_second,
                true,
            ),
            (
                "limit-device-method-calls-per-second",
                OperationClass::MethodCall,
                self.limit_device_method_calls_per_second,
                true,
            ),
            (
                "limit-device-telemetry-per-second",
                OperationClass::Telemetry,
                self.limit_device_telemetry_per_second,
                true,
            ),
        ];
        for (flag, class, value, per_device) in overrides {
            if let Some(value) = value {
                let rates = if per_device {
                    &mut throttle.device
                } else {
                    &mut throttle.hub
                };
                rates.set(class, rate(flag, value)?);
            }
        }
        throttle.abusive_after = seconds("abusive-device-after", self.abusive_device_after)?;
        throttle.telemetry_max_delay = seconds(
            "telemetry-shaping-max-delay",
            self.telemetry_shaping_max_delay,
        )?;
        throttle.max_tracked_devices = self.max_throttled_devices.max(1);
        limits.throttle = throttle;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use fleethub_hub::throttle::{Rate, ThrottlePreset, ThrottleSettings};

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn limits(flags: &[&str]) -> anyhow::Result<HubLimits> {
        let parsed = Flags::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))?;
        let mut limits = HubLimits::default();
        parsed.limits.apply(&mut limits)?;
        Ok(limits)
    }

    #[test]
    fn no_flags_keep_the_defaults_and_limit_no_rate() {
        let limits = limits(&[]).expect("valid");
        let defaults = HubLimits::default();
        assert_eq!(limits.throttle, ThrottleSettings::default());
        assert_eq!(limits.max_connections, defaults.max_connections);
        assert_eq!(limits.connect_timeout, defaults.connect_timeout);
        assert_eq!(limits.telemetry_in_flight, defaults.telemetry_in_flight);
    }

    #[test]
    fn a_preset_with_overrides_and_caps() {
        let limits = limits(&[
            "--throttle-preset",
            "s2",
            "--throttle-units",
            "3",
            "--limit-twin-updates-per-second",
            "7",
            "--limit-telemetry-per-second",
            "0",
            "--limit-device-telemetry-per-second",
            "2.5",
            "--max-connections",
            "1000",
            "--connect-timeout",
            "5",
        ])
        .expect("valid");
        let preset = ThrottleSettings::preset(ThrottlePreset::S2, 3, 1.0);
        assert_eq!(limits.throttle.hub.twin_reads, preset.hub.twin_reads);
        assert_eq!(
            limits.throttle.hub.twin_updates,
            Some(Rate::per_second(7.0, 1.0))
        );
        assert_eq!(limits.throttle.hub.telemetry, None);
        assert_eq!(
            limits.throttle.device.telemetry,
            Some(Rate::per_second(2.5, 1.0))
        );
        assert_eq!(limits.max_connections, 1000);
        assert_eq!(limits.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(limits(&["--throttle-preset", "b1"]).is_err());
        assert!(limits(&["--throttle-units", "0"]).is_err());
        assert!(limits(&["--limit-twin-reads-per-second", "-1"]).is_err());
        assert!(limits(&["--abusive-device-after", "-3"]).is_err());
        assert!(limits(&["--throttle-burst-seconds", "0"]).is_err());
        let refused = limits(&["--connect-timeout", "0"])
            .expect_err("a connect timeout of 0 closes every connection");
        assert!(
            refused.to_string().contains("at least 1 second"),
            "{refused}"
        );
    }

    #[test]
    fn the_burst_applies_to_preset_rates_too() {
        let limits = limits(&[
            "--throttle-preset",
            "s1",
            "--throttle-burst-seconds",
            "10",
            "--limit-device-twin-reads-per-second",
            "2",
        ])
        .expect("valid");
        assert_eq!(
            limits.throttle.hub.twin_reads,
            Some(Rate::per_second(100.0, 10.0))
        );
        assert_eq!(
            limits.throttle.hub.connections,
            Some(Rate::per_second(100.0, 10.0))
        );
        assert_eq!(
            limits.throttle.device.twin_reads,
            Some(Rate::per_second(2.0, 10.0))
        );
    }
}
