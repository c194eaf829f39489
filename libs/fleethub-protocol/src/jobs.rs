//! JSON shapes of Jobs v2 (`PUT/GET /jobs/v2/{id}`, `POST /jobs/v2/{id}/cancel`, `GET /jobs/v2/query`) and of
//! the per-device job records queried as `devices.jobs`.
//!
//! Sources: PROTOCOL.md §3.2-3.4 (the msrest models `job_request_py3.py`, `job_response_py3.py`,
//! `device_job_statistics_py3.py` and `query_result_py3.py` of `azure-iot-hub` 2.7.0); the C# service SDK's
//! `DeviceJob`, `DeviceJobStatus`, `DeviceJobError` (the `devices.jobs` record, which the Python SDK has no
//! model for); Azure docs "Queries for IoT Hub jobs" (query-jobs.md) and "Schedule jobs on multiple
//! devices" (iot-hub-devguide-jobs.md). Note two spellings Azure really uses: a job is `cancelled`, a
//! device job is `canceled`.
//!
//! Like [`crate::rest`], unknown fields are ignored on input and unset optional fields are omitted on output:
//! Azure answers a job creation with `{"jobId":"job02","type":"scheduleUpdateTwin","status":"queued"}`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{DeviceId, JobId, ModuleId};
use crate::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult, Twin, azure_time};

/// `type` of a job. Only [`JobType::ScheduleDeviceMethod`] and [`JobType::ScheduleUpdateTwin`] are Jobs v2
/// types; the others are listed because the models accept them (import/export jobs use `/jobs/create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobType {
    Unknown,
    Export,
    Import,
    Backup,
    ReadDeviceProperties,
    WriteDeviceProperties,
    UpdateDeviceConfiguration,
    RebootDevice,
    FactoryResetDevice,
    FirmwareUpdate,
    ScheduleDeviceMethod,
    ScheduleUpdateTwin,
    RestoreFromBackup,
    FailoverDataCopy,
}

impl JobType {
    pub const ALL: [JobType; 14] = [
        JobType::Unknown,
        JobType::Export,
        JobType::Import,
        JobType::Backup,
        JobType::ReadDeviceProperties,
        JobType::WriteDeviceProperties,
        JobType::UpdateDeviceConfiguration,
        JobType::RebootDevice,
        JobType::FactoryResetDevice,
        JobType::FirmwareUpdate,
        JobType::ScheduleDeviceMethod,
        JobType::ScheduleUpdateTwin,
        JobType::RestoreFromBackup,
        JobType::FailoverDataCopy,
    ];

    /// The wire spelling (`scheduleDeviceMethod`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Unknown => "unknown",
            JobType::Export => "export",
            JobType::Import => "import",
            JobType::Backup => "backup",
            JobType::ReadDeviceProperties => "readDeviceProperties",
            JobType::WriteDeviceProperties => "writeDeviceProperties",
            JobType::UpdateDeviceConfiguration => "updateDeviceConfiguration",
            JobType::RebootDevice => "rebootDevice",
            JobType::FactoryResetDevice => "factoryResetDevice",
            JobType::FirmwareUpdate => "firmwareUpdate",
            JobType::ScheduleDeviceMethod => "scheduleDeviceMethod",
            JobType::ScheduleUpdateTwin => "scheduleUpdateTwin",
            JobType::RestoreFromBackup => "restoreFromBackup",
            JobType::FailoverDataCopy => "failoverDataCopy",
        }
    }

    /// Reads the wire spelling, exactly (as the `jobType` query parameter and stored values carry it).
    pub fn parse(text: &str) -> Option<JobType> {
        JobType::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// `status` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobStatus {
    Unknown,
    Enqueued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Scheduled,
    Queued,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Unknown,
        JobStatus::Enqueued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Scheduled,
        JobStatus::Queued,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Unknown => "unknown",
            JobStatus::Enqueued => "enqueued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Queued => "queued",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// `completed`, `failed` and `cancelled` never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Body of `PUT /jobs/v2/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    /// The SDKs send it; the path carries it too, and the hub checks they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// Required for `scheduleDeviceMethod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_method: Option<CloudToDeviceMethod>,
    /// Required for `scheduleUpdateTwin`: tags and desired properties to patch, and an `etag` (`"*"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_twin: Option<Twin>,
    /// A WHERE condition over `devices` (`deviceId IN ['a', 'b']`, `tags.site = 'x'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_condition: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub start_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_execution_time_in_seconds: Option<u64>,
}

impl JobRequest {
    /// A `scheduleDeviceMethod` job: calls `method` on every device matching `query_condition` (the WHERE of
    /// a devices query), starting now, within the hub's default maximum execution time.
    pub fn device_method(
        job_id: JobId,
        method: CloudToDeviceMethod,
        query_condition: impl Into<String>,
    ) -> JobRequest {
        JobRequest {
            job_id: Some(job_id),
            job_type: JobType::ScheduleDeviceMethod,
            cloud_to_device_method: Some(method),
            update_twin: None,
            query_condition: Some(query_condition.into()),
            start_time: None,
            max_execution_time_in_seconds: None,
        }
    }

    /// A `scheduleUpdateTwin` job: patches the tags and desired properties of `twin` into every device
    /// matching `query_condition`. Its etag is set to `"*"`, the only one a job takes.
    pub fn update_twin(
        job_id: JobId,
        mut twin: Twin,
        query_condition: impl Into<String>,
    ) -> JobRequest {
        twin.etag = Some(crate::ids::ETag::new("*"));
        JobRequest {
            job_id: Some(job_id),
            job_type: JobType::ScheduleUpdateTwin,
            cloud_to_device_method: None,
            update_twin: Some(twin),
            query_condition: Some(query_condition.into()),
            start_time: None,
            max_execution_time_in_seconds: None,
        }
    }
}

/// Per-status device counts of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobStatistics {
    #[serde(default)]
    pub device_count: u64,
    #[serde(default)]
    pub failed_count: u64,
    #[serde(default)]
    pub succeeded_count: u64,
    #[serde(default)]
    pub running_count: u64,
    #[serde(default)]
    pub pending_count: u64,
}

/// A job as `GET /jobs/v2/{id}`, `PUT`, cancel and the jobs query return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResponse {
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_condition: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub created_time: Option<OffsetDateTime>,
    /// The older C# SDK reads `startTimeUtc`; accepted on input.
    #[serde(
        default,
        alias = "startTimeUtc",
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub start_time: Option<OffsetDateTime>,
    #[serde(
        default,
        alias = "endTimeUtc",
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub end_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_execution_time_in_seconds: Option<u64>,
    #[serde(rename = "type")]
    pub job_type: JobType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_method: Option<CloudToDeviceMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_twin: Option<Twin>,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_job_statistics: Option<DeviceJobStatistics>,
}

/// `x-ms-item-type` / `type` of a query answer carrying [`JobResponse`]s.
pub const ITEM_TYPE_JOB_RESPONSE: &str = "jobResponse";
/// `x-ms-item-type` of a `devices.jobs` query answer (items are [`DeviceJob`]s).
pub const ITEM_TYPE_DEVICE_JOB: &str = "deviceJob";

/// `GET /jobs/v2/query`: an object (not a bare array as `/devices/query` returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobQueryResult {
    /// [`ITEM_TYPE_JOB_RESPONSE`].
    #[serde(rename = "type")]
    pub item_type: String,
    #[serde(default)]
    pub items: Vec<JobResponse>,
    #[serde(default)]
    pub continuation_token: Option<String>,
}

/// Status of one device in a job (`devices.jobs.status`). Spelled `canceled`, unlike [`JobStatus::Cancelled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceJobStatus {
    Pending,
    Scheduled,
    Running,
    Completed,
    Failed,
    Canceled,
}

/// `outcome` of a device job: the device's answer to a method job; `null` for twin jobs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobOutcome {
    #[serde(default)]
    pub device_method_response: Option<CloudToDeviceMethodResult>,
}

/// `error` of a device job.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceJobError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub description: String,
}

/// One device's part in a job: an item of `SELECT * FROM devices.jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJob {
    pub device_id: DeviceId,
    /// Absent for device targets (the C# model has no such field); set for module targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<ModuleId>,
    pub job_id: JobId,
    pub job_type: JobType,
    pub status: DeviceJobStatus,
    /// Omitted until the device's part started (the C# SDK reads a missing time as its default; it
    /// cannot read `null`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub start_time_utc: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "azure_time::option"
    )]
    pub end_time_utc: Option<OffsetDateTime>,
    #[serde(with = "azure_time")]
    pub created_date_time_utc: OffsetDateTime,
    #[serde(with = "azure_time")]
    pub last_updated_date_time_utc: OffsetDateTime,
    #[serde(default)]
    pub outcome: DeviceJobOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<DeviceJobError>,
}

/// The body of a `deviceJobUpdated` change record (a fleethub extension, see
/// [`crate::changes::ChangeOperation::DeviceJobUpdated`]): the device's `devices.jobs` record as it is now,
/// and the job's counts once this change is durable, so a watcher of the job's records always knows where
/// the whole job stands from the latest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobChange {
    #[serde(flatten)]
    pub device_job: DeviceJob,
    pub device_job_statistics: DeviceJobStatistics,
}

impl DeviceJobStatistics {
    /// Devices whose part is over: succeeded, failed, or cancelled (Azure has no cancelled count; it is what
    /// `deviceCount` holds beyond the others).
    pub fn finished_count(&self) -> u64 {
        self.device_count
            .saturating_sub(self.pending_count + self.running_count)
    }

    /// Devices cancelled: counted in `deviceCount` only.
    pub fn cancelled_count(&self) -> u64 {
        self.device_count.saturating_sub(
            self.pending_count + self.running_count + self.succeeded_count + self.failed_count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use time::macros::datetime;

    #[test]
    fn method_job_request_from_the_python_sdk_parses_and_round_trips() {
        // PROTOCOL.md §3.3, create_scheduled_job (method job).
        let body = r#"{"jobId": "job1", "type": "scheduleDeviceMethod", "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"a": 1}, "responseTimeoutInSeconds": 30}, "queryCondition": "deviceId IN ['dev1']", "startTime": "2024-05-01T10:00:00.000Z", "maxExecutionTimeInSeconds": 3600}"#;
        let request: JobRequest = serde_json::from_str(body).expect("parses");
        assert_eq!(request.job_type, JobType::ScheduleDeviceMethod);
        assert_eq!(request.job_id.as_ref().map(JobId::as_str), Some("job1"));
        assert_eq!(
            request
                .cloud_to_device_method
                .as_ref()
                .map(|method| method.method_name.as_str()),
            Some("reboot")
        );
        assert_eq!(request.start_time, Some(datetime!(2024-05-01 10:00 UTC)));
        assert_eq!(request.max_execution_time_in_seconds, Some(3600));
        let written = serde_json::to_value(&request).expect("serialises");
        assert_eq!(written["startTime"], json!("2024-05-01T10:00:00.0000000Z"));
        assert_eq!(written["type"], json!("scheduleDeviceMethod"));
        assert!(written.get("updateTwin").is_none());
    }

    #[test]
    fn twin_job_request_parses_with_its_etag() {
        // PROTOCOL.md §3.3, create_scheduled_job (twin job).
        let body = r#"{"jobId": "job2", "type": "scheduleUpdateTwin", "updateTwin": {"tags": {"t": 1}, "properties": {"desired": {"d": 1}}, "etag": "*"}, "queryCondition": "tags.site = 'a'", "startTime": "2024-05-01T10:00:00.000Z", "maxExecutionTimeInSeconds": 600}"#;
        let request: JobRequest = serde_json::from_str(body).expect("parses");
        let twin = request.update_twin.expect("updateTwin is read");
        assert_eq!(twin.etag.as_ref().map(|etag| etag.as_str()), Some("*"));
        assert_eq!(
            twin.tags,
            Some(serde_json::from_str(r#"{"t": 1}"#).expect("map"))
        );
        assert_eq!(request.query_condition.as_deref(), Some("tags.site = 'a'"));
    }

    #[test]
    fn job_requests_that_cannot_be_jobs_are_refused() {
        for body in [
            r#"{"jobId": "j"}"#,
            r#"{"jobId": "j", "type": "scheduleDirectMethod"}"#,
            r#"{"jobId": "j k", "type": "scheduleUpdateTwin"}"#,
            r#"{"jobId": "j", "type": "scheduleUpdateTwin", "maxExecutionTimeInSeconds": -1}"#,
            r#"{"jobId": "j", "type": "scheduleUpdateTwin", "startTime": "soon"}"#,
        ] {
            assert!(
                serde_json::from_str::<JobRequest>(body).is_err(),
                "{body} must not parse"
            );
        }
        let minimal: JobRequest =
            serde_json::from_str(r#"{"type": "scheduleUpdateTwin", "startTime": null}"#)
                .expect("parses");
        assert_eq!(minimal.job_id, None);
        assert_eq!(minimal.start_time, None);
    }

    #[test]
    fn a_queued_job_answers_like_azure() {
        let response = JobResponse {
            job_id: JobId::new("job02").expect("valid"),
            query_condition: None,
            created_time: None,
            start_time: None,
            end_time: None,
            max_execution_time_in_seconds: None,
            job_type: JobType::ScheduleUpdateTwin,
            cloud_to_device_method: None,
            update_twin: None,
            status: JobStatus::Queued,
            failure_reason: None,
            status_message: None,
            device_job_statistics: None,
        };
        // The answer Azure gave in iot-hub-devguide-jobs.md.
        assert_eq!(
            serde_json::to_string(&response).ok().as_deref(),
            Some(r#"{"jobId":"job02","type":"scheduleUpdateTwin","status":"queued"}"#)
        );
    }

    #[test]
    fn a_finished_job_round_trips_with_statistics() {
        let wire = json!({
            "jobId": "job1",
            "queryCondition": "deviceId IN ['dev1']",
            "createdTime": "2024-05-01T09:59:00.0000000Z",
            "startTime": "2024-05-01T10:00:00.0000000Z",
            "endTime": "2024-05-01T10:01:00.0000000Z",
            "maxExecutionTimeInSeconds": 3600,
            "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": null, "responseTimeoutInSeconds": 30},
            "status": "completed",
            "statusMessage": "done",
            "deviceJobStatistics": {"deviceCount": 3, "failedCount": 1, "succeededCount": 2, "runningCount": 0, "pendingCount": 0}
        });
        let response: JobResponse = serde_json::from_value(wire.clone()).expect("parses");
        assert_eq!(response.status, JobStatus::Completed);
        assert_eq!(
            response
                .device_job_statistics
                .map(|stats| stats.failed_count),
            Some(1)
        );
        assert_eq!(serde_json::to_value(&response).ok(), Some(wire));
        let old_csharp_names: JobResponse = serde_json::from_value(json!({
            "jobId": "j", "type": "scheduleUpdateTwin", "status": "running",
            "startTimeUtc": "2024-05-01T10:00:00Z", "endTimeUtc": "2024-05-01T10:01:00Z"
        }))
        .expect("parses");
        assert_eq!(
            old_csharp_names.end_time,
            Some(datetime!(2024-05-01 10:01 UTC))
        );
    }

    #[test]
    fn job_query_result_is_an_object() {
        let result = JobQueryResult {
            item_type: ITEM_TYPE_JOB_RESPONSE.to_owned(),
            items: vec![],
            continuation_token: None,
        };
        assert_eq!(
            serde_json::to_value(&result).ok(),
            Some(json!({"type": "jobResponse", "items": [], "continuationToken": null}))
        );
    }

    #[test]
    fn device_job_matches_the_query_jobs_sample() {
        // query-jobs.md's sample record, with a method response; Azure writes `startTimeUtc` there without a
        // zone, which is read as UTC.
        let sample = json!({
            "deviceId": "myDeviceId",
            "jobId": "myJobId",
            "jobType": "scheduleDeviceMethod",
            "status": "completed",
            "startTimeUtc": "2016-09-29T18:18:52.7418462",
            "endTimeUtc": "2016-09-29T18:20:52.7418462",
            "createdDateTimeUtc": "2016-09-29T18:18:56.7787107Z",
            "lastUpdatedDateTimeUtc": "2016-09-29T18:18:56.8894408Z",
            "outcome": {"deviceMethodResponse": {"status": 200, "payload": {"result": "ok"}}}
        });
        let record: DeviceJob = serde_json::from_value(sample).expect("parses");
        assert_eq!(record.status, DeviceJobStatus::Completed);
        assert_eq!(
            record.start_time_utc,
            Some(datetime!(2016-09-29 18:18:52.7418462 UTC))
        );
        let written = serde_json::to_value(&record).expect("serialises");
        assert_eq!(
            written["startTimeUtc"],
            json!("2016-09-29T18:18:52.7418462Z")
        );
        assert_eq!(
            written["outcome"],
            json!({"deviceMethodResponse": {"status": 200, "payload": {"result": "ok"}}})
        );
        assert!(written.get("moduleId").is_none());
        assert!(written.get("error").is_none());
    }

    #[test]
    fn a_pending_twin_device_job_omits_unset_times_and_keeps_a_null_outcome() {
        let record = DeviceJob {
            device_id: DeviceId::new("d").expect("valid"),
            module_id: Some(ModuleId::new("m").expect("valid")),
            job_id: JobId::new("j").expect("valid"),
            job_type: JobType::ScheduleUpdateTwin,
            status: DeviceJobStatus::Canceled,
            start_time_utc: None,
            end_time_utc: None,
            created_date_time_utc: datetime!(2024-05-01 10:00 UTC),
            last_updated_date_time_utc: datetime!(2024-05-01 10:00 UTC),
            outcome: DeviceJobOutcome::default(),
            error: Some(DeviceJobError {
                code: "JobCancelled".into(),
                description: "the job was cancelled".into(),
            }),
        };
        let written = serde_json::to_value(&record).expect("serialises");
        assert_eq!(
            written,
            json!({
                "deviceId": "d", "moduleId": "m", "jobId": "j", "jobType": "scheduleUpdateTwin",
                "status": "canceled",
                "createdDateTimeUtc": "2024-05-01T10:00:00.0000000Z",
                "lastUpdatedDateTimeUtc": "2024-05-01T10:00:00.0000000Z",
                "outcome": {"deviceMethodResponse": null},
                "error": {"code": "JobCancelled", "description": "the job was cancelled"}
            })
        );
        assert_eq!(
            serde_json::from_value::<DeviceJob>(written).ok(),
            Some(record)
        );
    }

    #[test]
    fn a_device_job_change_is_the_record_with_the_job_counts() {
        let wire = json!({
            "deviceId": "d", "jobId": "j", "jobType": "scheduleDeviceMethod", "status": "completed",
            "startTimeUtc": "2024-05-01T10:00:00.0000000Z",
            "endTimeUtc": "2024-05-01T10:00:01.0000000Z",
            "createdDateTimeUtc": "2024-05-01T10:00:00.0000000Z",
            "lastUpdatedDateTimeUtc": "2024-05-01T10:00:01.0000000Z",
            "outcome": {"deviceMethodResponse": {"status": 200, "payload": null}},
            "deviceJobStatistics": {"deviceCount": 4, "failedCount": 1, "succeededCount": 1, "runningCount": 1, "pendingCount": 0}
        });
        let change: DeviceJobChange = serde_json::from_value(wire.clone()).expect("parses");
        assert_eq!(change.device_job.status, DeviceJobStatus::Completed);
        assert_eq!(change.device_job_statistics.finished_count(), 3);
        assert_eq!(change.device_job_statistics.cancelled_count(), 1);
        assert_eq!(serde_json::to_value(&change).ok(), Some(wire.clone()));
        // The record alone reads as a plain `devices.jobs` item.
        let record: DeviceJob = serde_json::from_value(wire).expect("parses");
        assert_eq!(record, change.device_job);
    }

    #[test]
    fn enum_spellings_match_the_wire_and_parse_back() {
        for kind in JobType::ALL {
            let wire = serde_json::to_value(kind).expect("serialises");
            assert_eq!(wire, Value::String(kind.as_str().to_owned()));
            assert_eq!(JobType::parse(kind.as_str()), Some(kind));
        }
        for status in JobStatus::ALL {
            let wire = serde_json::to_value(status).expect("serialises");
            assert_eq!(wire, Value::String(status.as_str().to_owned()));
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobType::parse("ScheduleUpdateTwin"), None);
        assert_eq!(
            JobType::ScheduleDeviceMethod.as_str(),
            "scheduleDeviceMethod"
        );
        assert_eq!(JobStatus::Cancelled.as_str(), "cancelled");
        assert_eq!(
            serde_json::to_value(DeviceJobStatus::Canceled).ok(),
            Some(json!("canceled"))
        );
        let finals: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|status| status.is_final())
            .collect();
        assert_eq!(
            finals,
            vec![
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled
            ]
        );
    }
}
