//! The reported properties the agent writes: the reference workflow's `firmwareStatus` and timestamps, and
//! fleethub's `firmware` object. Pure: each status change is one merge patch carrying the whole `firmware`
//! object, so a patch never leaves a stale field behind (an old error, an old target); download progress
//! alone is a small patch of `firmware.progress`, sent at the downloader's checkpoints.

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::error::UpdateError;
use crate::state::Slot;

/// `firmwareStatus` (and `firmware.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FirmwareStatus {
    StandBy,
    Downloading,
    Applying,
    Completed,
    Failed,
    RolledBack,
}

impl FirmwareStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandBy => "standBy",
            Self::Downloading => "downloading",
            Self::Applying => "applying",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::RolledBack => "rolledBack",
        }
    }
}

/// The `firmware` reported property, which is also what [`RunningAgent::firmware`](crate::RunningAgent::firmware)
/// shows in-process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareState {
    pub model: String,
    /// The committed firmware's version.
    pub current_version: String,
    /// The version an update goes to, once known.
    pub target_version: Option<String>,
    pub status: FirmwareStatus,
    /// Download progress in percent, during and after a download.
    pub progress: Option<u8>,
    /// The slot running now (the tentative one during a trial).
    pub slot: Slot,
    pub error: Option<UpdateError>,
}

/// The reference workflow's timestamp properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    DownloadComplete,
    StartedApplyingImage,
    LastFirmwareUpdate,
}

impl Timestamp {
    pub fn property(self) -> &'static str {
        match self {
            Self::DownloadComplete => "downloadComplete",
            Self::StartedApplyingImage => "startedApplyingImage",
            Self::LastFirmwareUpdate => "lastFirmwareUpdate",
        }
    }
}

/// The full patch for `state`, with `timestamps` set.
pub fn state_patch(state: &FirmwareState, timestamps: &[(Timestamp, OffsetDateTime)]) -> Value {
    let mut patch = json!({
        "firmwareStatus": state.status.as_str(),
        "firmware": state,
    });
    for (timestamp, time) in timestamps {
        patch[timestamp.property()] = Value::String(rfc3339(*time));
    }
    patch
}

/// The patch for a progress step.
pub fn progress_patch(progress: u8) -> Value {
    json!({"firmware": {"progress": progress}})
}

pub fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC time always formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::error::UpdateErrorCode;

    #[test]
    fn a_state_patch_carries_every_field() {
        let state = FirmwareState {
            model: "m".into(),
            current_version: "1.0.0".into(),
            target_version: Some("2.0.0".into()),
            status: FirmwareStatus::RolledBack,
            progress: Some(100),
            slot: Slot::A,
            error: Some(UpdateError::new(
                UpdateErrorCode::HealthCheckFailed,
                "exit 1",
            )),
        };
        let patch = state_patch(
            &state,
            &[(
                Timestamp::LastFirmwareUpdate,
                datetime!(2026-11-27 12:00 UTC),
            )],
        );
        assert_eq!(
            patch,
            json!({
                "firmwareStatus": "rolledBack",
                "firmware": {
                    "model": "m", "currentVersion": "1.0.0", "targetVersion": "2.0.0",
                    "status": "rolledBack", "progress": 100, "slot": "a",
                    "error": {"code": "healthCheckFailed", "reason": "exit 1"},
                },
                "lastFirmwareUpdate": "2026-11-27T12:00:00Z",
            })
        );
        let idle = FirmwareState {
            error: None,
            target_version: None,
            progress: None,
            status: FirmwareStatus::StandBy,
            ..state
        };
        let patch = state_patch(&idle, &[]);
        assert_eq!(patch["firmware"]["error"], Value::Null);
        assert_eq!(patch["firmwareStatus"], "standBy");
    }
}
