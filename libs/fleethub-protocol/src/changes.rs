//! The hub's change feed on the wire: what changed (a twin, an identity, a connection, a job's or a firmware
//! rollout's progress on a device, a job, a rollout), in Azure's operation names where Azure has one, with a strictly increasing sequence number
//! to resume from. The store writes these records; the hub streams them as Server-Sent Events at
//! `GET /changes` (a fleethub extension, see docs/compat.md); the service SDK reads them back.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::ids::{DeviceId, JobId, ModuleId, RolloutId};

/// What happened, in Azure's operation names (the `opType` of its twin, lifecycle and connection events);
/// the job and rollout operations are fleethub's (Azure has no job events and no rollouts).
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
    /// A device's (or module's) status in a job changed; the body is a
    /// [`DeviceJobChange`](crate::jobs::DeviceJobChange).
    DeviceJobUpdated,
    /// A job was created, or its status or end time changed; the record has no device and the body is the
    /// job as [`JobResponse`](crate::jobs::JobResponse).
    JobUpdated,
    /// A device's status in a firmware rollout changed; the body is a
    /// [`DeviceRolloutChange`](crate::rollouts::DeviceRolloutChange).
    DeviceRolloutUpdated,
    /// A rollout was created, or its status, current wave, a wave's status or its end changed; the record has
    /// no device and the body is the rollout as [`Rollout`](crate::rollouts::Rollout).
    RolloutUpdated,
}

impl ChangeOperation {
    pub const ALL: [ChangeOperation; 11] = [
        Self::CreateDeviceIdentity,
        Self::DeleteDeviceIdentity,
        Self::UpdateDeviceIdentity,
        Self::UpdateTwin,
        Self::ReplaceTwin,
        Self::DeviceConnected,
        Self::DeviceDisconnected,
        Self::DeviceJobUpdated,
        Self::JobUpdated,
        Self::DeviceRolloutUpdated,
        Self::RolloutUpdated,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CreateDeviceIdentity => "createDeviceIdentity",
            Self::DeleteDeviceIdentity => "deleteDeviceIdentity",
            Self::UpdateDeviceIdentity => "updateDeviceIdentity",
            Self::UpdateTwin => "updateTwin",
            Self::ReplaceTwin => "replaceTwin",
            Self::DeviceConnected => "deviceConnected",
            Self::DeviceDisconnected => "deviceDisconnected",
            Self::DeviceJobUpdated => "deviceJobUpdated",
            Self::JobUpdated => "jobUpdated",
            Self::DeviceRolloutUpdated => "deviceRolloutUpdated",
            Self::RolloutUpdated => "rolloutUpdated",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|operation| operation.as_str() == text)
    }

    /// `deviceJobUpdated` and `jobUpdated`: records that carry a [`ChangeRecord::job_id`].
    pub const fn is_job(self) -> bool {
        matches!(self, Self::DeviceJobUpdated | Self::JobUpdated)
    }

    /// `deviceRolloutUpdated` and `rolloutUpdated`: records that carry a [`ChangeRecord::rollout_id`].
    pub const fn is_rollout(self) -> bool {
        matches!(self, Self::DeviceRolloutUpdated | Self::RolloutUpdated)
    }
}

/// One entry of the change feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecord {
    pub sequence: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The device the change is about; `None` only for [`ChangeOperation::JobUpdated`] and
    /// [`ChangeOperation::RolloutUpdated`] (a job or a rollout is no device's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<ModuleId>,
    /// The job of a `deviceJobUpdated` or `jobUpdated` record, else `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The rollout of a `deviceRolloutUpdated` or `rolloutUpdated` record, else `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<RolloutId>,
    pub operation: ChangeOperation,
    /// The twin version after the change (twin operations and creation), else `None`.
    pub twin_version: Option<u64>,
    /// For twin changes, what changed in Azure's twin-change-event shape:
    /// `{"version": v, "tags": {...}, "properties": {"desired": {...}, "reported": {...}}}` holding the patch.
    /// For job changes, see [`ChangeOperation::DeviceJobUpdated`] and [`ChangeOperation::JobUpdated`].
    pub body: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_spell_and_parse_back() {
        for operation in ChangeOperation::ALL {
            assert_eq!(
                serde_json::to_value(operation).ok(),
                Some(Value::String(operation.as_str().to_owned()))
            );
            assert_eq!(ChangeOperation::parse(operation.as_str()), Some(operation));
        }
        assert_eq!(ChangeOperation::parse("UpdateTwin"), None);
        let jobs: Vec<ChangeOperation> = ChangeOperation::ALL
            .into_iter()
            .filter(|operation| operation.is_job())
            .collect();
        assert_eq!(
            jobs,
            [
                ChangeOperation::DeviceJobUpdated,
                ChangeOperation::JobUpdated
            ]
        );
        let rollouts: Vec<ChangeOperation> = ChangeOperation::ALL
            .into_iter()
            .filter(|operation| operation.is_rollout())
            .collect();
        assert_eq!(
            rollouts,
            [
                ChangeOperation::DeviceRolloutUpdated,
                ChangeOperation::RolloutUpdated
            ]
        );
    }

    #[test]
    fn rollout_records_carry_their_rollout() {
        let rollout = json!({
            "sequence": 9,
            "time": "2026-05-01T10:00:02Z",
            "deviceId": "dev1",
            "rolloutId": "r1",
            "operation": "deviceRolloutUpdated",
            "twinVersion": null,
            "body": {"status": "running"}
        });
        let record: ChangeRecord = serde_json::from_value(rollout.clone()).expect("parses");
        assert_eq!(
            record.rollout_id.as_ref().map(RolloutId::as_str),
            Some("r1")
        );
        assert_eq!(record.job_id, None);
        assert_eq!(serde_json::to_value(&record).ok(), Some(rollout));
    }

    #[test]
    fn device_and_job_records_round_trip_leaving_out_what_they_lack() {
        let device = json!({
            "sequence": 7,
            "time": "2026-05-01T10:00:00Z",
            "deviceId": "dev1",
            "operation": "updateTwin",
            "twinVersion": 3,
            "body": {"version": 3}
        });
        let record: ChangeRecord = serde_json::from_value(device.clone()).expect("parses");
        assert_eq!(
            record.device_id.as_ref().map(DeviceId::as_str),
            Some("dev1")
        );
        assert_eq!(record.job_id, None);
        assert_eq!(serde_json::to_value(&record).ok(), Some(device));

        let job = json!({
            "sequence": 8,
            "time": "2026-05-01T10:00:01Z",
            "jobId": "job1",
            "operation": "jobUpdated",
            "twinVersion": null,
            "body": {"jobId": "job1", "type": "scheduleUpdateTwin", "status": "running"}
        });
        let record: ChangeRecord = serde_json::from_value(job.clone()).expect("parses");
        assert_eq!(record.device_id, None);
        assert_eq!(record.job_id.as_ref().map(JobId::as_str), Some("job1"));
        assert_eq!(serde_json::to_value(&record).ok(), Some(job));
    }
}
