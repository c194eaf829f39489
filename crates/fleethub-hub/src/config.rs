//! The hub's configuration: where it keeps data, what it listens on, and its limits. Binaries fill it in;
//! the library never reads the environment or files for configuration.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleethub_core::twin::TwinLimits;
use fleethub_eventlog::EventLogOptions;

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    /// Names devices and services use to reach the hub (`--hostname`); the server certificate covers them,
    /// and SAS tokens may name any of them.
    pub hostnames: Vec<String>,
    pub mqtt_listen: SocketAddr,
    pub https_listen: SocketAddr,
    pub limits: HubLimits,
    pub twin_limits: TwinLimits,
    /// The event log in `DATA_DIR/events/` (partitions, segments, retention).
    pub events: EventLogOptions,
    /// Delivery to routing's custom endpoints (retries, file sizes).
    pub routing: crate::routing::RoutingSettings,
    /// Retention of the audit log.
    pub audit: crate::audit::AuditSettings,
    /// The operator's own server certificate chain and key (`--tls-cert`, `--tls-key`); `None`: the hub
    /// issues its own from its CA in the data directory.
    pub server_certificate: Option<ServerCertificateFiles>,
}

/// A PEM certificate chain (leaf first) and its PEM private key; reloaded when they change.
#[derive(Clone, Debug)]
pub struct ServerCertificateFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl HubConfig {
    /// A configuration for tests and embedding: loopback, ephemeral ports.
    pub fn for_loopback(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            hostnames: vec!["localhost".into()],
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            https_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            limits: HubLimits::default(),
            twin_limits: TwinLimits::default(),
            events: EventLogOptions::default(),
            routing: crate::routing::RoutingSettings::default(),
            audit: crate::audit::AuditSettings::default(),
            server_certificate: None,
        }
    }

    /// Every name the server certificate must carry: the configured hostnames, `localhost`, `127.0.0.1`,
    /// and the specific IPs the listeners are bound to.
    pub fn certificate_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .hostnames
            .iter()
            .map(|name| name.to_ascii_lowercase())
            .collect();
        names.insert("localhost".into());
        names.insert("127.0.0.1".into());
        for address in [self.mqtt_listen, self.https_listen] {
            if !address.ip().is_unspecified() {
                names.insert(address.ip().to_string());
            }
        }
        names
    }

    /// Whether a host named in a SAS token or MQTT username is this hub (case-insensitive, port ignored).
    pub fn is_own_hostname(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.certificate_names().contains(&host)
    }
}

#[derive(Clone, Debug)]
pub struct HubLimits {
    /// Largest MQTT packet accepted; larger ones close the connection.
    pub max_packet_size: usize,
    /// Connections beyond this are refused at accept time.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake, and again for the MQTT CONNECT packet and its authentication;
    /// above zero (`fleethub serve` refuses 0, which would close every connection).
    pub connect_timeout: Duration,
    /// Pushes (method requests, desired patches) waiting for one device connection; more are refused.
    pub outbound_queue_depth: usize,
    /// Direct-method payload limit, request and response alike (Azure: 128 KB).
    pub method_payload_max_bytes: usize,
    /// How often coalesced `lastActivityTime` values are written.
    pub activity_flush_interval: Duration,
    /// REST request bodies larger than this are refused with 413.
    pub max_request_body_bytes: usize,
    /// Jobs (Jobs v2) running at once; more wait as `queued` until one ends (Azure allows 1, 5 or 10 active
    /// jobs, depending on its tier, and refuses more with 429 ThrottlingMaxActiveJobCountExceeded).
    pub max_running_jobs: usize,
    /// Devices one job works on at once (direct methods awaiting an answer, twin writes in flight).
    pub job_device_concurrency: usize,
    /// Devices one job starts per second at most; 0 for no limit. With `job_device_concurrency` this bounds
    /// what a job adds to the store's write queue and to devices' push queues, so live traffic keeps flowing
    /// (see `jobs.rs`).
    pub job_start_rate_per_second: u32,
    /// Largest firmware image an upload may carry; larger ones are refused with 413. Uploads stream to
    /// disk, so this bounds disk use, not memory.
    pub max_artifact_bytes: u64,
    /// QoS 1 telemetry publishes of one connection waiting for the event log (each acknowledged once it is
    /// durable); beyond this the connection reads nothing more until the oldest is.
    pub telemetry_in_flight: usize,
    /// Cloud-to-device messages one connection has published at QoS 1 and the device not yet acknowledged;
    /// the next are read from the queue as PUBACKs come back.
    pub c2d_in_flight: usize,
    /// Rate limits per hub and per device (`throttle.rs`); unlimited by default.
    pub throttle: crate::throttle::ThrottleSettings,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            max_packet_size: 256 * 1024 + 1024,
            max_connections: 200_000,
            connect_timeout: Duration::from_secs(30),
            outbound_queue_depth: 64,
            method_payload_max_bytes: 128 * 1024,
            activity_flush_interval: Duration::from_secs(5),
            max_request_body_bytes: 1024 * 1024,
            max_running_jobs: 100,
            job_device_concurrency: 100,
            job_start_rate_per_second: 1000,
            max_artifact_bytes: 4 * 1024 * 1024 * 1024,
            telemetry_in_flight: 64,
            c2d_in_flight: 16,
            throttle: crate::throttle::ThrottleSettings::default(),
        }
    }
}
