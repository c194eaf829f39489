//! Jobs v2 on the fleet executor: how an executor's target records and counts appear in Azure's shapes
//! (`devices.jobs` records, `deviceJobStatistics`).

use fleethub_protocol::ids::JobId;
use fleethub_protocol::jobs::{
    DeviceJob, DeviceJobError, DeviceJobOutcome, DeviceJobStatistics, DeviceJobStatus, JobType,
};
use fleethub_protocol::rest::CloudToDeviceMethodResult;
use serde::Deserialize;

use crate::executor::{Statistics, TargetRecord, TargetStatus};

/// `Succeeded` is Azure's `completed`; `Cancelled` is spelled `canceled` for device jobs.
pub fn device_job_status(status: TargetStatus) -> DeviceJobStatus {
    match status {
        TargetStatus::Pending => DeviceJobStatus::Pending,
        TargetStatus::Running => DeviceJobStatus::Running,
        TargetStatus::Succeeded => DeviceJobStatus::Completed,
        TargetStatus::Failed => DeviceJobStatus::Failed,
        TargetStatus::Cancelled => DeviceJobStatus::Canceled,
    }
}

/// Azure's counts have no cancelled one: cancelled targets count in `deviceCount` only, so
/// `deviceCount - (pending + running + succeeded + failed)` is the number cancelled.
pub fn device_job_statistics(statistics: Statistics) -> DeviceJobStatistics {
    DeviceJobStatistics {
        device_count: statistics.device_count,
        failed_count: statistics.failed,
        succeeded_count: statistics.succeeded,
        running_count: statistics.running,
        pending_count: statistics.pending,
    }
}

/// A target's record as a `devices.jobs` item. The outcome of a `scheduleDeviceMethod` target is the
/// device's method result (`{"status", "payload"}`), shown as `outcome.deviceMethodResponse`; other jobs
/// show `{"deviceMethodResponse": null}` as Azure does.
pub fn device_job(job_id: &JobId, job_type: JobType, record: &TargetRecord) -> DeviceJob {
    let device_method_response = match job_type {
        JobType::ScheduleDeviceMethod => record
            .outcome
            .as_ref()
            .and_then(|outcome| CloudToDeviceMethodResult::deserialize(outcome).ok()),
        _ => None,
    };
    DeviceJob {
        device_id: record.target.device_id.clone(),
        module_id: record.target.module_id.clone(),
        job_id: job_id.clone(),
        job_type,
        status: device_job_status(record.status),
        start_time_utc: record.started,
        end_time_utc: record.finished,
        created_date_time_utc: record.created,
        last_updated_date_time_utc: record.last_updated,
        outcome: DeviceJobOutcome {
            device_method_response,
        },
        error: record.error.as_ref().map(|error| DeviceJobError {
            code: error.code.clone(),
            description: error.description.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;
    use crate::executor::TargetError;
    use crate::identity::IdentityKey;

    fn record(status: TargetStatus) -> TargetRecord {
        TargetRecord {
            target: IdentityKey::device("dev1".parse().expect("valid")),
            status,
            attempts: 1,
            created: datetime!(2024-05-01 9:59 UTC),
            started: Some(datetime!(2024-05-01 10:00 UTC)),
            finished: Some(datetime!(2024-05-01 10:01 UTC)),
            last_updated: datetime!(2024-05-01 10:01 UTC),
            outcome: Some(json!({"status": 200, "payload": {"result": "ok"}})),
            error: None,
        }
    }

    #[test]
    fn a_method_target_becomes_the_devices_jobs_record_azure_shows() {
        let job_id: JobId = "job1".parse().expect("valid");
        let item = device_job(
            &job_id,
            JobType::ScheduleDeviceMethod,
            &record(TargetStatus::Succeeded),
        );
        assert_eq!(
            serde_json::to_value(&item).ok(),
            Some(json!({
                "deviceId": "dev1",
                "jobId": "job1",
                "jobType": "scheduleDeviceMethod",
                "status": "completed",
                "startTimeUtc": "2024-05-01T10:00:00.0000000Z",
                "endTimeUtc": "2024-05-01T10:01:00.0000000Z",
                "createdDateTimeUtc": "2024-05-01T09:59:00.0000000Z",
                "lastUpdatedDateTimeUtc": "2024-05-01T10:01:00.0000000Z",
                "outcome": {"deviceMethodResponse": {"status": 200, "payload": {"result": "ok"}}}
            }))
        );
    }

    #[test]
    fn a_twin_target_has_a_null_method_response_and_keeps_its_error() {
        let mut failed = record(TargetStatus::Failed);
        failed.error = Some(TargetError::new("DeviceNotOnline", "offline"));
        let item = device_job(
            &"job2".parse().expect("valid"),
            JobType::ScheduleUpdateTwin,
            &failed,
        );
        assert_eq!(item.status, DeviceJobStatus::Failed);
        assert_eq!(item.outcome.device_method_response, None);
        assert_eq!(
            item.error,
            Some(DeviceJobError {
                code: "DeviceNotOnline".into(),
                description: "offline".into()
            })
        );
    }

    #[test]
    fn statuses_and_counts_map_to_azure() {
        let pairs = [
            (TargetStatus::Pending, DeviceJobStatus::Pending),
            (TargetStatus::Running, DeviceJobStatus::Running),
            (TargetStatus::Succeeded, DeviceJobStatus::Completed),
            (TargetStatus::Failed, DeviceJobStatus::Failed),
            (TargetStatus::Cancelled, DeviceJobStatus::Canceled),
        ];
        for (status, azure) in pairs {
            assert_eq!(device_job_status(status), azure);
        }
        let statistics = Statistics {
            device_count: 15,
            pending: 1,
            running: 2,
            succeeded: 3,
            failed: 4,
            cancelled: 5,
        };
        assert_eq!(
            device_job_statistics(statistics),
            DeviceJobStatistics {
                device_count: 15,
                failed_count: 4,
                succeeded_count: 3,
                running_count: 2,
                pending_count: 1,
            }
        );
    }
}
