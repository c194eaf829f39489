//! [`AgentConfig`]: everything an agent needs, with the defaults the binary uses.

use std::path::PathBuf;
use std::time::Duration;

use fleethub_device::DeviceClientOptions;
use fleethub_protocol::firmware::PublicKey;

use crate::download::DownloadPolicy;

/// The default `--boot-limit`.
pub const DEFAULT_BOOT_LIMIT: u32 = 3;
/// The default `--initial-version`: the factory firmware's version when nothing says otherwise.
pub const DEFAULT_INITIAL_VERSION: &str = "0.0.0";

/// How to run an agent. Start from [`AgentConfig::new`] and adjust with the `with_*` methods.
#[derive(Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The device's connection string (`HostName=..;DeviceId=..;SharedAccessKey=..`).
    pub connection_string: String,
    /// How the device client connects (CA, port, timeouts).
    pub device_options: DeviceClientOptions,
    /// The CA to trust for HTTPS downloads; `None` trusts the operating system's roots.
    pub ca_pem: Option<String>,
    /// The state directory (slots, `boot.json`, downloads).
    pub state_dir: PathBuf,
    /// This device's hardware model; artifacts for another model are refused.
    pub model: String,
    /// Only artifacts whose manifest verifies with this key are accepted, when set.
    pub public_key: Option<PublicKey>,
    /// The health check run after booting new firmware whose manifest names none.
    pub health_check: Option<String>,
    /// How long a health check may run before it counts as failed. Default 5 min.
    pub health_check_timeout: Duration,
    /// Boots of a tentative slot allowed before rolling back. Default 3.
    pub boot_limit: u32,
    /// The version of the factory firmware (slot `a` before any update). Default "0.0.0".
    pub initial_version: String,
    /// Retries and timeouts of downloads, and how often progress is checkpointed and reported.
    pub download: DownloadPolicy,
    /// How long stopping waits for reports to be delivered. Default 5 s.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for AgentConfig {
    /// Never prints the connection string: it holds the device's key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AgentConfig")
            .field("state_dir", &self.state_dir)
            .field("model", &self.model)
            .field("public_key", &self.public_key)
            .field("health_check", &self.health_check)
            .field("boot_limit", &self.boot_limit)
            .field("initial_version", &self.initial_version)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    pub fn new(
        connection_string: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        model: impl Into<String>,
    ) -> Self {
        Self {
            connection_string: connection_string.into(),
            device_options: DeviceClientOptions::default(),
            ca_pem: None,
            state_dir: state_dir.into(),
            model: model.into(),
            public_key: None,
            health_check: None,
            health_check_timeout: Duration::from_secs(300),
            boot_limit: DEFAULT_BOOT_LIMIT,
            initial_version: DEFAULT_INITIAL_VERSION.into(),
            download: DownloadPolicy::default(),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// Trusts `ca_pem` for both the hub connection and downloads (a fleethub hub's `ca.pem`).
    pub fn with_ca_pem(mut self, ca_pem: impl Into<String>) -> Self {
        let ca_pem = ca_pem.into();
        self.device_options = self.device_options.with_ca_pem(ca_pem.clone());
        self.ca_pem = Some(ca_pem);
        self
    }

    /// Replaces the device client's options, their CA included (call [`with_ca_pem`](Self::with_ca_pem)
    /// after this, or set `ca_pem` in them).
    pub fn with_device_options(mut self, device_options: DeviceClientOptions) -> Self {
        self.device_options = device_options;
        self
    }

    pub fn with_public_key(mut self, public_key: PublicKey) -> Self {
        self.public_key = Some(public_key);
        self
    }

    pub fn with_health_check(mut self, command: impl Into<String>) -> Self {
        self.health_check = Some(command.into());
        self
    }

    pub fn with_health_check_timeout(mut self, timeout: Duration) -> Self {
        self.health_check_timeout = timeout;
        self
    }

    pub fn with_boot_limit(mut self, boot_limit: u32) -> Self {
        self.boot_limit = boot_limit;
        self
    }

    pub fn with_initial_version(mut self, version: impl Into<String>) -> Self {
        self.initial_version = version.into();
        self
    }

    pub fn with_download_policy(mut self, download: DownloadPolicy) -> Self {
        self.download = download;
        self
    }
}
