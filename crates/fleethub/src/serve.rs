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
    let config = HubConfig {
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
