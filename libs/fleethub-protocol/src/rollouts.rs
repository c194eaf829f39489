//! JSON shapes of firmware rollouts (a fleethub extension, docs/firmware.md "Rollouts"): the request of
//! `PUT /firmware/rollouts/{id}`, the rollout that every rollout endpoint answers with, and the per-device
//! record of a rollout as the change feed carries it (`deviceRolloutUpdated`).
//!
//! Like [`crate::rest`], unknown fields are ignored on input (so a rollout read back is accepted as a
//! request) and unset optional fields are omitted on output. The request is lenient (every field optional,
//! sizes and thresholds as text or numbers) so the hub can say exactly what is missing or wrong; the rules
//! themselves are `fleethub_core::rollout`'s.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::ids::{DeviceId, ModuleId, RolloutId};
use crate::rest::azure_time;

/// The prefix of the grant source a rollout's firmware grants carry: `rollout:<id>`.
pub const GRANT_SOURCE_PREFIX: &str = "rollout:";

/// The source of the firmware grants a rollout makes for its devices.
pub fn grant_source(rollout_id: &RolloutId) -> String {
    format!("{GRANT_SOURCE_PREFIX}{rollout_id}")
}

/// An artifact by model and version (`/firmware/artifacts/{model}/{version}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub model: String,
    pub version: String,
}

impl std::fmt::Display for ArtifactRef {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}", self.model, self.version)
    }
}

/// A number or a text, as sizes and thresholds may be written (`10`, `"10"`, `"10%"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumberOrText {
    Number(u64),
    Text(String),
}

impl NumberOrText {
    /// The text form (`10`, `10%`).
    pub fn text(&self) -> String {
        match self {
            NumberOrText::Number(number) => number.to_string(),
            NumberOrText::Text(text) => text.clone(),
        }
    }
}

impl From<&str> for NumberOrText {
    fn from(text: &str) -> Self {
        NumberOrText::Text(text.to_owned())
    }
}

/// `waves` of a request: `"1%,10%,50%,100%"`, or a list whose items are sizes or wave objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WavesRequest {
    Text(String),
    List(Vec<WaveRequest>),
}

/// One item of a `waves` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaveRequest {
    Detailed(WaveDetail),
    Size(NumberOrText),
}

/// A wave with its own thresholds; what is not given comes from the rollout's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveDetail {
    /// Cumulative: how many of the targeted devices have been sent the update once this wave has started,
    /// as a count (`100`) or a percentage (`10%`).
    pub size: Option<NumberOrText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<NumberOrText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_threshold: Option<NumberOrText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_minimum_devices: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<bool>,
}

/// `PUT /firmware/rollouts/{id}`. Only `artifact` and `targetCondition` are required.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRequest {
    /// Must equal the id in the path when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<RolloutId>,
    /// The firmware to install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    /// The WHERE of a devices query; resolved once, when the rollout starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_condition: Option<String>,
    /// Cumulative wave sizes; default one wave of `100%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<WavesRequest>,
    /// Default for every wave: the share of a wave's devices that must succeed before the next wave
    /// starts (default `100%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<NumberOrText>,
    /// Default for every wave: failed devices (a count, or a percentage of the wave's finished devices) at
    /// which the rollout aborts (default `10%`; `none` never aborts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_threshold: Option<NumberOrText>,
    /// Default for every wave: finished devices needed before the error threshold applies (default 10, or
    /// the whole wave when it is smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_minimum_devices: Option<u64>,
    /// Default for every wave: once it reaches its success threshold, wait for `POST .../approve` before
    /// the next wave (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<bool>,
    /// Devices updating at once (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u64>,
    /// Devices started per second at most (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_rate_per_second: Option<u32>,
    /// How long one device's update may take, from the method call to its final report (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_timeout_in_seconds: Option<u64>,
    /// Attempts per device (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wait before a failed device is tried again (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_in_seconds: Option<u64>,
    /// How long a device found offline may stay pending before it fails with `DeviceNotOnline` (default
    /// 86400; 0 waits for ever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_timeout_in_seconds: Option<u64>,
    /// Sent to the devices that failed, if the rollout aborts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<ArtifactRef>,
    /// Seeds the random order of the devices (default: drawn by the hub); the same seed and target set give
    /// the same waves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RolloutStatus {
    /// Updating the devices of its started waves; the next wave starts when the current one reaches its
    /// success threshold.
    Running,
    /// Paused by `POST .../pause`: no device starts; those updating finish.
    Paused,
    /// A wave reached its success threshold and the next one waits for `POST .../approve`, or a wave can no
    /// longer reach its success threshold and the rollout waits for a decision (approve or abort).
    WaitingForApproval,
    /// Aborted (by the error threshold or `POST .../abort`): devices not started are cancelled, those updating
    /// finish, then the rollback artifact goes to the devices that failed.
    Aborting,
    Completed,
    Aborted,
}

impl RolloutStatus {
    pub const ALL: [RolloutStatus; 6] = [
        RolloutStatus::Running,
        RolloutStatus::Paused,
        RolloutStatus::WaitingForApproval,
        RolloutStatus::Aborting,
        RolloutStatus::Completed,
        RolloutStatus::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::WaitingForApproval => "waitingForApproval",
            RolloutStatus::Aborting => "aborting",
            RolloutStatus::Completed => "completed",
            RolloutStatus::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutStatus> {
        RolloutStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// `completed` and `aborted` never change again.
    pub fn is_final(self) -> bool {
        matches!(self, RolloutStatus::Completed | RolloutStatus::Aborted)
    }
}

/// Where one wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WaveStatus {
    /// Not started.
    Pending,
    /// Started, below its success threshold.
    Running,
    /// Reached its success threshold (its remaining devices still finish).
    Passed,
    /// Can no longer reach its success threshold, or reached its error threshold.
    Failed,
    /// Never started: the rollout was aborted first.
    Skipped,
}

/// Devices per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatistics {
    #[serde(default)]
    pub device_count: u64,
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub running: u64,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
}

impl RolloutStatistics {
    /// Devices whose part is over: succeeded, failed or cancelled.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// One wave: what it asks and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveProgress {
    /// Its number, from 1.
    pub wave: u32,
    /// Cumulative size as asked: `10%` or `100`.
    pub size: String,
    /// `95%`.
    pub success_threshold: String,
    /// `5%` or `3`; absent when this wave never aborts the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_threshold: Option<String>,
    pub error_minimum_devices: u64,
    pub approval: bool,
    pub status: WaveStatus,
    #[serde(default)]
    pub statistics: RolloutStatistics,
}

/// A rollout, as every rollout endpoint answers and as a `rolloutUpdated` change record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub rollout_id: RolloutId,
    pub artifact: ArtifactRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<ArtifactRef>,
    pub target_condition: String,
    pub status: RolloutStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(with = "azure_time")]
    pub created_time: OffsetDateTime,
    /// When the target set was frozen and the first wave started.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub start_time: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub end_time: Option<OffsetDateTime>,
    /// The number of the latest wave started (0 before the first).
    pub current_wave: u32,
    pub waves: Vec<WaveProgress>,
    pub max_concurrency: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_rate_per_second: Option<u32>,
    pub device_timeout_in_seconds: u64,
    pub max_attempts: u32,
    pub retry_backoff_in_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_timeout_in_seconds: Option<u64>,
    pub seed: u64,
    /// Every targeted device (all waves, started or not).
    #[serde(default)]
    pub statistics: RolloutStatistics,
    /// The devices the rollback artifact went to, once it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_statistics: Option<RolloutStatistics>,
}

impl Rollout {
    /// The rollout will not change again.
    pub fn is_over(&self) -> bool {
        self.status.is_final()
    }
}

/// Which part of a rollout a device record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RolloutPhase {
    /// The update to the rollout's artifact.
    Update,
    /// The rollback artifact, sent to the devices that failed once the rollout aborted.
    Rollback,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Update => "update",
            RolloutPhase::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutPhase> {
        [RolloutPhase::Update, RolloutPhase::Rollback]
            .into_iter()
            .find(|phase| phase.as_str() == text)
    }
}

/// Where one device stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceRolloutStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// Why a device failed: the hub's code (`DeviceNotOnline`, `DeviceJobTimedOut`, ...) or the agent's
/// `firmware.error.code` (`healthCheckFailed`, `downloadFailed`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceRolloutError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub description: String,
}

/// One device's part in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRollout {
    pub device_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<ModuleId>,
    pub rollout_id: RolloutId,
    pub phase: RolloutPhase,
    /// Its wave, from 1; 0 in the rollback phase.
    pub wave: u32,
    pub status: DeviceRolloutStatus,
    /// Attempts made (offline ones not counted).
    pub attempts: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub start_time: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub end_time: Option<OffsetDateTime>,
    #[serde(with = "azure_time")]
    pub last_updated_time: OffsetDateTime,
    /// What the device reported when it succeeded (its `firmware` object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<DeviceRolloutError>,
}

/// The body of a `deviceRolloutUpdated` change record: the device's record as it is now, the counts of its
/// phase and of its wave once this change is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRolloutChange {
    #[serde(flatten)]
    pub device: DeviceRollout,
    /// The phase's counts: every targeted device for the update, the rollback's devices for the rollback.
    pub statistics: RolloutStatistics,
    /// The counts of the device's wave (update phase only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_statistics: Option<RolloutStatistics>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_take_sizes_and_thresholds_as_text_numbers_or_objects() {
        let request: RolloutRequest = serde_json::from_value(json!({
            "artifact": {"model": "m", "version": "2.0.0"},
            "targetCondition": "tags.site = 'lab'",
            "waves": ["1%", 10, {"size": "100%", "approval": true, "errorThreshold": 3}],
            "successThreshold": "95%",
            "unknownField": 1
        }))
        .expect("parses");
        assert_eq!(
            request.waves,
            Some(WavesRequest::List(vec![
                WaveRequest::Size(NumberOrText::Text("1%".into())),
                WaveRequest::Size(NumberOrText::Number(10)),
                WaveRequest::Detailed(WaveDetail {
                    size: Some(NumberOrText::Text("100%".into())),
                    error_threshold: Some(NumberOrText::Number(3)),
                    approval: Some(true),
                    ..WaveDetail::default()
                }),
            ]))
        );
        assert_eq!(
            request.success_threshold,
            Some(NumberOrText::Text("95%".into()))
        );
        let text: RolloutRequest =
            serde_json::from_value(json!({"waves": "1%,10%,100%"})).expect("parses");
        assert_eq!(text.waves, Some(WavesRequest::Text("1%,10%,100%".into())));
        assert_eq!(
            serde_json::to_value(RolloutRequest::default()).ok(),
            Some(json!({}))
        );
    }

    #[test]
    fn statuses_spell_and_parse_back() {
        for status in RolloutStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(Value::String(status.as_str().to_owned()))
            );
            assert_eq!(RolloutStatus::parse(status.as_str()), Some(status));
        }
        assert!(RolloutStatus::Aborted.is_final() && !RolloutStatus::Aborting.is_final());
        assert_eq!(
            RolloutPhase::parse("rollback"),
            Some(RolloutPhase::Rollback)
        );
        assert_eq!(RolloutPhase::parse("Rollback"), None);
        let id: RolloutId = "r1".parse().expect("valid");
        assert_eq!(grant_source(&id), "rollout:r1");
    }

    #[test]
    fn a_device_change_flattens_the_device_record() {
        let change = DeviceRolloutChange {
            device: DeviceRollout {
                device_id: "d1".parse().expect("valid"),
                module_id: None,
                rollout_id: "r1".parse().expect("valid"),
                phase: RolloutPhase::Update,
                wave: 2,
                status: DeviceRolloutStatus::Failed,
                attempts: 1,
                start_time: None,
                end_time: None,
                last_updated_time: time::macros::datetime!(2026-05-01 10:00 UTC),
                outcome: None,
                error: Some(DeviceRolloutError {
                    code: "healthCheckFailed".into(),
                    description: "exit 1".into(),
                }),
            },
            statistics: RolloutStatistics {
                device_count: 3,
                failed: 1,
                pending: 2,
                ..RolloutStatistics::default()
            },
            wave_statistics: None,
        };
        let value = serde_json::to_value(&change).expect("serialises");
        assert_eq!(
            value,
            json!({
                "deviceId": "d1", "rolloutId": "r1", "phase": "update", "wave": 2, "status": "failed",
                "attempts": 1, "lastUpdatedTime": "2026-05-01T10:00:00.0000000Z",
                "error": {"code": "healthCheckFailed", "description": "exit 1"},
                "statistics": {"deviceCount": 3, "pending": 2, "running": 0, "succeeded": 0, "failed": 1, "cancelled": 0}
            })
        );
        assert_eq!(
            serde_json::from_value::<DeviceRolloutChange>(value).ok(),
            Some(change)
        );
    }
}
