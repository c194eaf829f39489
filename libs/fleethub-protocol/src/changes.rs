//! The hub's change feed on the wire: what changed (a twin, an identity, a connection), in Azure's operation
//! names, with a strictly increasing sequence number to resume from. The store writes these records; the
//! hub streams them as Server-Sent Events at `GET /changes` (a fleethub extension, see docs/compat.md); the
//! service SDK reads them back.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::ids::{DeviceId, ModuleId};

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
    pub module_id: Option<ModuleId>,
    pub operation: ChangeOperation,
    /// The twin version after the change (twin operations and creation), else `None`.
    pub twin_version: Option<u64>,
    /// For twin changes, what changed in Azure's twin-change-event shape:
    /// `{"version": v, "tags": {...}, "properties": {"desired": {...}, "reported": {...}}}` holding the patch.
    pub body: Value,
}
