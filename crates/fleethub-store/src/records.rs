//! The values the store keeps and hands out, and its error type.

use fleethub_core::identity::{Identity, IdentityKey, IdentitySpecError};
use fleethub_core::twin::{TwinDocument, TwinPatchError};
pub use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::ids::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One device or module: its identity and its twin, always read and written together.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRecord {
    pub key: IdentityKey,
    pub identity: Identity,
    pub twin: TwinDocument,
}

/// A twin write, applied by the store inside its transaction with `fleethub-core`'s rules.
#[derive(Clone, Debug)]
pub enum TwinChange {
    /// A device's reported-properties patch (MQTT).
    ReportedPatch(Value),
    /// A service's `PATCH /twins/{id}` body (tags and desired properties).
    ServicePatch(Value),
    /// A service's `PUT /twins/{id}` body.
    ServiceReplace(Value),
}

#[derive(Clone, Debug)]
pub struct TwinUpdated {
    pub record: DeviceRecord,
    /// What to push to the connected device on `$iothub/twin/PATCH/properties/desired/`, if desired changed.
    pub desired_patch_for_device: Option<Value>,
}

/// A persisted MQTT session: the subscriptions of a clean-session-0 client, as raw filters and granted QoS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredSession {
    pub subscriptions: Vec<StoredSubscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCounts {
    pub total_device_count: u64,
    pub enabled_device_count: u64,
    pub disabled_device_count: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(IdentityKey),
    #[error("device {0} not found")]
    ParentNotFound(DeviceId),
    #[error("{0} already exists")]
    AlreadyExists(IdentityKey),
    #[error("etag {given:?} does not match the current etag {current:?}")]
    PreconditionFailed { given: String, current: String },
    #[error(transparent)]
    Twin(#[from] TwinPatchError),
    #[error(transparent)]
    IdentitySpec(#[from] IdentitySpecError),
    /// The data directory was written by a newer fleethub, or is damaged.
    #[error("data is not readable: {0}")]
    Incompatible(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Backend(error.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Incompatible(format!("stored JSON does not parse: {error}"))
    }
}
