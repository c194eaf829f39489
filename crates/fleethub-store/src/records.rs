//! The values the store keeps and hands out, and its error type.

use fleethub_core::identity::{Identity, IdentityKey, IdentitySpecError};
use fleethub_core::twin::{TwinDocument, TwinPatchError};
use fleethub_protocol::ids::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

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

/// What happened, in Azure's operation names (the `opType` of its twin, lifecycle and connection events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeOperation {
    CreateDeviceIdentity,
    DeleteDeviceIdentity,
    UpdateDeviceIdentity,
    /// A patch of tags, desired or reported properties; the body says which.
    UpdateTwin,
    ReplaceTwin,
    DeviceConnected,
    DeviceDisconnected,
}

impl ChangeOperation {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CreateDeviceIdentity => "createDeviceIdentity",
            Self::DeleteDeviceIdentity => "deleteDeviceIdentity",
            Self::UpdateDeviceIdentity => "updateDeviceIdentity",
            Self::UpdateTwin => "updateTwin",
            Self::ReplaceTwin => "replaceTwin",
            Self::DeviceConnected => "deviceConnected",
            Self::DeviceDisconnected => "deviceDisconnected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::CreateDeviceIdentity,
            Self::DeleteDeviceIdentity,
            Self::UpdateDeviceIdentity,
            Self::UpdateTwin,
            Self::ReplaceTwin,
            Self::DeviceConnected,
            Self::DeviceDisconnected,
        ]
        .into_iter()
        .find(|operation| operation.as_str() == text)
    }
}

/// One entry of the change feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecord {
    pub sequence: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub device_id: DeviceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_id: Option<fleethub_protocol::ids::ModuleId>,
    pub operation: ChangeOperation,
    /// The twin version after the change (twin operations and creation), else `None`.
    pub twin_version: Option<u64>,
    /// For twin changes, what changed in Azure's twin-change-event shape:
    /// `{"version": v, "tags": {...}, "properties": {"desired": {...}, "reported": {...}}}` holding the patch.
    pub body: Value,
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
