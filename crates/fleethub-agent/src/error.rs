//! The agent's errors: why an update failed (what the device reports in `firmware.error`), why the state
//! directory could not be read or written, and why the agent could not start or stopped.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `code` of a reported `firmware.error`: one per way an update can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpdateErrorCode {
    /// The download did not finish: the network or the server kept failing until the attempts ran out.
    DownloadFailed,
    /// The server refused the download (401, 403, 404, or another answer retrying cannot change).
    DownloadRefused,
    /// A public key is configured and the artifact came without a manifest to verify.
    UnsignedArtifact,
    /// The manifest's signature does not verify with the configured public key.
    BadSignature,
    /// The manifest is not a valid firmware manifest (not a JWS, wrong algorithm, bad fields).
    InvalidManifest,
    /// The manifest is for another hardware model.
    WrongModel,
    /// The manifest's version is not the version the update asked for.
    VersionMismatch,
    /// The image is not the size the manifest says.
    SizeMismatch,
    /// The image's SHA-256 is not the one the manifest says.
    HashMismatch,
    /// No manifest and no `x-fleethub-sha256`: nothing to check the image against.
    Unverifiable,
    /// Writing the download, a slot or the boot record failed on the device.
    Storage,
    /// The new firmware booted but its health check failed (or timed out).
    HealthCheckFailed,
    /// The new firmware booted more times than `--boot-limit` without passing its health check.
    BootLimitExceeded,
}

impl UpdateErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DownloadFailed => "downloadFailed",
            Self::DownloadRefused => "downloadRefused",
            Self::UnsignedArtifact => "unsignedArtifact",
            Self::BadSignature => "badSignature",
            Self::InvalidManifest => "invalidManifest",
            Self::WrongModel => "wrongModel",
            Self::VersionMismatch => "versionMismatch",
            Self::SizeMismatch => "sizeMismatch",
            Self::HashMismatch => "hashMismatch",
            Self::Unverifiable => "unverifiable",
            Self::Storage => "storage",
            Self::HealthCheckFailed => "healthCheckFailed",
            Self::BootLimitExceeded => "bootLimitExceeded",
        }
    }
}

impl std::fmt::Display for UpdateErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why an update failed, exactly as reported in `firmware.error`: `{"code": "...", "reason": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct UpdateError {
    pub code: UpdateErrorCode,
    /// For people: what went wrong, with the values involved.
    pub reason: String,
}

impl UpdateError {
    pub fn new(code: UpdateErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl From<StorageError> for UpdateError {
    fn from(error: StorageError) -> Self {
        Self::new(UpdateErrorCode::Storage, error.to_string())
    }
}

/// The state directory could not be read or written, or holds something the agent did not write.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every file the agent writes is replaced atomically, so this means someone else edited it.
    #[error("{path} is not a valid {what}: {detail}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    /// A storage task on the blocking pool panicked or was cancelled.
    #[error("a storage task failed: {0}")]
    Task(String),
    /// Tests stop the agent's storage after a given number of durable steps to simulate a power cut.
    #[cfg(test)]
    #[error("simulated crash after the durable step {0:?}")]
    SimulatedCrash(&'static str),
}

impl StorageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// Why [`Agent::start`](crate::Agent::start) refused to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid device connection string: {0}")]
    ConnectionString(#[from] fleethub_protocol::ConnectionStringError),
    #[error("the connection string's SharedAccessKey is not base64: {0}")]
    SharedAccessKey(String),
    #[error("X.509 connection strings are not supported by the agent")]
    X509NotSupported,
    #[error("invalid model: {0}")]
    Model(fleethub_protocol::firmware::ManifestError),
    #[error("invalid initial version: {0}")]
    InitialVersion(fleethub_protocol::firmware::ManifestError),
    #[error("invalid CA certificate for downloads: {0}")]
    CaCertificate(String),
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(String),
    #[error("the state directory: {0}")]
    Storage(#[from] StorageError),
}

/// Why a running agent stopped other than by request or for a reboot.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Connecting to the hub failed in a way retrying cannot fix (credentials refused, untrusted hub
    /// certificate, no CA configured, ...).
    #[error("cannot connect to the hub: {0}")]
    Connect(#[from] fleethub_device::ConnectError),
    /// The device client stopped for good (the hub refused its credentials on a reconnection, ...).
    #[error("the connection to the hub ended: {0}")]
    Disconnected(fleethub_device::DisconnectReason),
    #[error("the state directory: {0}")]
    Storage(#[from] StorageError),
    /// [`run_in_process`](crate::run_in_process) could not start the agent again.
    #[error("cannot start the agent: {0}")]
    Start(#[from] StartError),
    #[error("an agent task failed: {0}")]
    Task(String),
}
