//! Jobs v2 (`scheduleDeviceMethod`, `scheduleUpdateTwin`): create, read, cancel and query jobs, and follow
//! one job's progress as it happens ([`ServiceClient::watch_job`], on the change feed; a fleethub extension).

use std::pin::Pin;
use std::task::{Context, Poll};

use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::ids::JobId;
use fleethub_protocol::jobs::{
    DeviceJob, DeviceJobChange, DeviceJobStatistics, JobQueryResult, JobRequest, JobResponse,
    JobStatus, JobType,
};
use futures_util::{Stream, StreamExt};
use reqwest::Method;

use crate::changes::ChangeStream;
use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::{WatchOptions, wire};

/// One page of [`ServiceClient::query_jobs_page`].
pub type JobPage = JobQueryResult;

impl ServiceClient {
    /// Creates a job (`PUT /jobs/v2/{id}`) from a request that names its `job_id` (see
    /// [`JobRequest::device_method`] and [`JobRequest::update_twin`]). The hub answers with the job, `queued`;
    /// an id in use fails with 409 `JobAlreadyExists`, a request that breaks a rule with 400
    /// `ArgumentInvalid` saying which.
    pub async fn create_job(&self, request: &JobRequest) -> Result<JobResponse, ServiceError> {
        let job_id = request
            .job_id
            .as_ref()
            .ok_or_else(|| ServiceError::InvalidRequest {
                reason: "the job request has no jobId".to_owned(),
            })?;
        let call = Call::new(
            Method::PUT,
            wire::with_query(&wire::job(job_id), &[]),
            "a job",
        );
        self.call_json(call.json_body(request)?).await
    }

    /// A job with its device counts (`GET /jobs/v2/{id}`); 404 `JobNotFound` for an unknown id.
    pub async fn get_job(&self, job_id: &JobId) -> Result<JobResponse, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query(&wire::job(job_id), &[]),
            "a job",
        ))
        .await
    }

    /// Cancels a job (`POST /jobs/v2/{id}/cancel`): devices not started are cancelled, running ones finish.
    /// Returns the job, `cancelled` (or as it ended, if it already had).
    pub async fn cancel_job(&self, job_id: &JobId) -> Result<JobResponse, ServiceError> {
        let path = format!("{}/cancel", wire::job(job_id));
        self.call_json(Call::new(
            Method::POST,
            wire::with_query(&path, &[]),
            "a job",
        ))
        .await
    }

    /// One page of jobs (`GET /jobs/v2/query`), of a type and/or status, at most `max_items` (1-1000; the
    /// hub's default is 100) after `continuation`.
    pub async fn query_jobs_page(
        &self,
        job_type: Option<JobType>,
        status: Option<JobStatus>,
        continuation: Option<&str>,
        max_items: Option<u32>,
    ) -> Result<JobPage, ServiceError> {
        let mut parameters = Vec::new();
        if let Some(job_type) = job_type {
            parameters.push(("jobType", job_type.as_str()));
        }
        if let Some(status) = status {
            parameters.push(("jobStatus", status.as_str()));
        }
        let path = wire::with_query("/jobs/v2/query", &parameters);
        let max_items = max_items.map(|count| count.to_string());
        let mut headers = Vec::new();
        if let Some(count) = &max_items {
            headers.push(("x-ms-max-item-count", count.as_str()));
        }
        if let Some(token) = continuation {
            headers.push(("x-ms-continuation", token));
        }
        let response = self
            .raw(Method::GET, &path, &headers, None)
            .await?
            .error_for_status()?;
        let mut page: JobPage = response.decode("a page of jobs")?;
        // Azure sends the token in the body and the header; either will do.
        if page.continuation_token.as_deref().is_none_or(str::is_empty) {
            page.continuation_token = response
                .header("x-ms-continuation")
                .filter(|token| !token.is_empty())
                .map(str::to_owned);
        }
        Ok(page)
    }

    /// Every job of a type and/or status (`None`: any), by id, following continuation tokens.
    pub async fn query_jobs(
        &self,
        job_type: Option<JobType>,
        status: Option<JobStatus>,
    ) -> Result<Vec<JobResponse>, ServiceError> {
        let mut jobs = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .query_jobs_page(job_type, status, continuation.as_deref(), Some(1000))
                .await?;
            jobs.extend(page.items);
            match page.continuation_token {
                Some(token) if Some(&token) != continuation.as_ref() => continuation = Some(token),
                _ => return Ok(jobs),
            }
        }
    }

    /// Follows a job until it is over, without polling: one `GET /jobs/v2/{id}`, then the job's records in
    /// the change feed (`GET /changes?jobId=`, a fleethub extension; Azure IoT Hub has no such feed and
    /// refuses the call). The stream yields the job as read, then one [`JobProgress`] per record (a device's
    /// status in the job changed, or the job's status or end), and ends after the one where
    /// [`JobProgress::is_over`] holds.
    ///
    /// The watch is opened before the job is read, so no change is missed; a change committed between the
    /// two is delivered after the first item (which already includes it), so the first few items may
    /// repeat a state already shown. Every item after the first carries the job's exact counts at that
    /// record. The stream resumes by itself across dropped connections, like
    /// [`watch_changes`](ServiceClient::watch_changes); errors it cannot get past end it.
    ///
    /// ```no_run
    /// # async fn example(client: fleethub_service::ServiceClient) -> Result<(), fleethub_service::ServiceError> {
    /// let job_id = "reboot-lab".parse().expect("a valid job id");
    /// let mut progress = client.watch_job(&job_id).await?;
    /// while let Some(update) = progress.next().await {
    ///     let update = update?;
    ///     let statistics = update.statistics();
    ///     println!("{}: {}/{} devices", update.status().as_str(), statistics.finished_count(), statistics.device_count);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch_job(&self, job_id: &JobId) -> Result<JobWatch, ServiceError> {
        let changes = self
            .watch_changes(WatchOptions {
                job: Some(job_id.clone()),
                ..WatchOptions::default()
            })
            .await?;
        let job = self.get_job(job_id).await?;
        let state = WatchState {
            changes,
            first: Some(job.clone()),
            job,
            over: false,
        };
        Ok(JobWatch {
            inner: Box::pin(futures_util::stream::unfold(state, next_progress)),
        })
    }
}

/// Where a job stands, as [`ServiceClient::watch_job`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobProgress {
    /// The job as last reported: status, times and messages from the first read or the latest `jobUpdated`
    /// record, `deviceJobStatistics` from the latest record of either kind.
    pub job: JobResponse,
    /// The device's record that brought this update; `None` for the first read and for the job's own.
    pub device: Option<DeviceJob>,
    /// The change-feed sequence number of the record behind this update; `None` for the first read.
    pub sequence: Option<u64>,
}

impl JobProgress {
    pub fn status(&self) -> JobStatus {
        self.job.status
    }

    /// The job's device counts (zero before its targets are known).
    pub fn statistics(&self) -> DeviceJobStatistics {
        self.job.device_job_statistics.unwrap_or_default()
    }

    /// The job will not change again: `completed` or `failed`, or `cancelled` with an end time (a cancelled
    /// job lets its running devices finish; it ends when they have).
    pub fn is_over(&self) -> bool {
        match self.job.status {
            JobStatus::Completed | JobStatus::Failed => true,
            JobStatus::Cancelled => self.job.end_time.is_some(),
            _ => false,
        }
    }
}

/// The stream of [`ServiceClient::watch_job`].
pub struct JobWatch {
    inner: Pin<Box<dyn Stream<Item = Result<JobProgress, ServiceError>> + Send>>,
}

impl JobWatch {
    pub async fn next(&mut self) -> Option<Result<JobProgress, ServiceError>> {
        self.inner.next().await
    }
}

impl Stream for JobWatch {
    type Item = Result<JobProgress, ServiceError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(context)
    }
}

struct WatchState {
    changes: ChangeStream,
    /// The job as read, not yielded yet.
    first: Option<JobResponse>,
    /// The job as last reported.
    job: JobResponse,
    over: bool,
}

async fn next_progress(
    mut state: WatchState,
) -> Option<(Result<JobProgress, ServiceError>, WatchState)> {
    if state.over {
        return None;
    }
    if let Some(job) = state.first.take() {
        let progress = JobProgress {
            job,
            device: None,
            sequence: None,
        };
        state.over = progress.is_over();
        return Some((Ok(progress), state));
    }
    loop {
        let record = match state.changes.next().await? {
            Ok(record) => record,
            Err(error) => return Some((Err(error), state)),
        };
        let progress = match apply(&mut state.job, record) {
            Ok(Some(progress)) => progress,
            Ok(None) => continue,
            Err(error) => return Some((Err(error), state)),
        };
        state.over = progress.is_over();
        return Some((Ok(progress), state));
    }
}

/// Folds one of the job's change records into `job`; `None` for records of other kinds.
fn apply(job: &mut JobResponse, record: ChangeRecord) -> Result<Option<JobProgress>, ServiceError> {
    let decode_error = |what: &'static str, record: &ChangeRecord, source| ServiceError::Decode {
        what,
        body: record.body.to_string().chars().take(1024).collect(),
        source,
    };
    let device = match record.operation {
        ChangeOperation::JobUpdated => {
            *job = serde_json::from_value(record.body.clone())
                .map_err(|source| decode_error("a job", &record, source))?;
            None
        }
        ChangeOperation::DeviceJobUpdated => {
            let change: DeviceJobChange = serde_json::from_value(record.body.clone())
                .map_err(|source| decode_error("a device job change", &record, source))?;
            job.device_job_statistics = Some(change.device_job_statistics);
            Some(change.device_job)
        }
        _ => return Ok(None),
    };
    Ok(Some(JobProgress {
        job: job.clone(),
        device,
        sequence: Some(record.sequence),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(sequence: u64, operation: &str, body: serde_json::Value) -> ChangeRecord {
        let mut record = json!({
            "sequence": sequence,
            "time": "2026-05-01T10:00:00Z",
            "jobId": "j",
            "operation": operation,
            "twinVersion": null,
            "body": body
        });
        // A job's own record has no device.
        if operation != "jobUpdated" {
            record["deviceId"] = json!("d1");
        }
        serde_json::from_value(record).expect("a change record")
    }

    fn job(status: &str) -> JobResponse {
        serde_json::from_value(
            json!({"jobId": "j", "type": "scheduleDeviceMethod", "status": status}),
        )
        .expect("a job")
    }

    #[test]
    fn records_fold_into_the_job_and_say_when_it_is_over() {
        let mut current = job("running");
        let device = record(
            5,
            "deviceJobUpdated",
            json!({
                "deviceId": "d1", "jobId": "j", "jobType": "scheduleDeviceMethod", "status": "completed",
                "createdDateTimeUtc": "2026-05-01T10:00:00Z", "lastUpdatedDateTimeUtc": "2026-05-01T10:00:01Z",
                "outcome": {"deviceMethodResponse": {"status": 200, "payload": null}},
                "deviceJobStatistics": {"deviceCount": 2, "succeededCount": 1, "pendingCount": 1, "failedCount": 0, "runningCount": 0}
            }),
        );
        let progress = apply(&mut current, device)
            .expect("decodes")
            .expect("a job record");
        assert_eq!(progress.sequence, Some(5));
        assert_eq!(progress.statistics().finished_count(), 1);
        assert_eq!(
            progress
                .device
                .as_ref()
                .map(|device| device.device_id.to_string()),
            Some("d1".to_owned())
        );
        assert!(!progress.is_over());

        let cancelled = record(
            6,
            "jobUpdated",
            json!({"jobId": "j", "type": "scheduleDeviceMethod", "status": "cancelled",
                   "deviceJobStatistics": {"deviceCount": 2, "succeededCount": 1, "pendingCount": 0, "failedCount": 0, "runningCount": 1}}),
        );
        let progress = apply(&mut current, cancelled)
            .expect("decodes")
            .expect("a record");
        assert_eq!(progress.status(), JobStatus::Cancelled);
        assert!(!progress.is_over(), "a device is still running");
        let ended = record(
            7,
            "jobUpdated",
            json!({"jobId": "j", "type": "scheduleDeviceMethod", "status": "cancelled", "endTime": "2026-05-01T10:00:02Z"}),
        );
        let progress = apply(&mut current, ended)
            .expect("decodes")
            .expect("a record");
        assert!(progress.is_over());
        assert!(job("completed").device_job_statistics.is_none());
        for status in ["completed", "failed"] {
            let progress = JobProgress {
                job: job(status),
                device: None,
                sequence: None,
            };
            assert!(progress.is_over(), "{status}");
        }

        let twin = record(8, "updateTwin", json!({"version": 2}));
        assert_eq!(apply(&mut current, twin).expect("ignored"), None);
        let broken = record(9, "deviceJobUpdated", json!({"deviceId": 1}));
        assert!(matches!(
            apply(&mut current, broken),
            Err(ServiceError::Decode { .. })
        ));
    }
}
