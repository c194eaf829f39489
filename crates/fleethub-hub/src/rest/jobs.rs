//! Jobs v2 over REST: `PUT /jobs/v2/{id}` (200 with the job, as the SDKs expect), `GET /jobs/v2/{id}`,
//! `POST /jobs/v2/{id}/cancel`, and `GET /jobs/v2/query?jobType=&jobStatus=` (an object
//! `{"type","items","continuationToken"}`, paged with `x-ms-max-item-count` and `x-ms-continuation`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use fleethub_protocol::ids::JobId;
use fleethub_protocol::jobs::{ITEM_TYPE_JOB_RESPONSE, JobRequest, JobStatus, JobType};
use serde_json::Value;

use super::{ApiError, ApiResult, ApiState, authorize, json_body};
use crate::auth::required;
use crate::jobs::{
    DEFAULT_JOBS_PAGE, DYNAMIC_TARGETS_FIELD, JobOptions, JobService, MAX_JOBS_PAGE,
};

fn job_id(text: &str) -> ApiResult<JobId> {
    text.parse()
        .map_err(|error| ApiError::bad_request(format!("job id {text:?}: {error}")))
}

pub(super) async fn put_job(
    State(state): State<ApiState>,
    Extension(jobs): Extension<Arc<JobService>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::JOB_WRITE)?;
    let id = job_id(&id)?;
    let body: Value = json_body(body)?;
    let options = JobOptions {
        dynamic_targets: match body.get(DYNAMIC_TARGETS_FIELD) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(dynamic)) => *dynamic,
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "{DYNAMIC_TARGETS_FIELD} must be true or false"
                )));
            }
        },
    };
    let request: JobRequest = serde_json::from_value(body).map_err(|error| {
        ApiError::bad_request(format!("the body is not a valid JobRequest: {error}"))
    })?;
    let job = jobs.create(id, request, options).await?;
    Ok(Json(job).into_response())
}

pub(super) async fn get_job(
    State(state): State<ApiState>,
    Extension(jobs): Extension<Arc<JobService>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::JOB_READ)?;
    let job = jobs.get(&job_id(&id)?).await?;
    Ok(Json(job).into_response())
}

pub(super) async fn cancel_job(
    State(state): State<ApiState>,
    Extension(jobs): Extension<Arc<JobService>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::JOB_WRITE)?;
    let job = jobs.cancel(&job_id(&id)?).await?;
    Ok(Json(job).into_response())
}

pub(super) async fn query_jobs(
    State(state): State<ApiState>,
    Extension(jobs): Extension<Arc<JobService>>,
    headers: HeaderMap,
    uri: Uri,
    Query(parameters): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::JOB_READ)?;
    let parameter = |name: &str| {
        parameters
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    };
    let job_type = parameter("jobType")
        .map(|text| {
            JobType::parse(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "jobType {text:?} is not a job type (scheduleDeviceMethod, scheduleUpdateTwin, ...)"
                ))
            })
        })
        .transpose()?;
    let status = parameter("jobStatus")
        .map(|text| {
            JobStatus::parse(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "jobStatus {text:?} is not a job status (queued, scheduled, running, completed, failed, cancelled, ...)"
                ))
            })
        })
        .transpose()?;
    let max_items = match headers.get("x-ms-max-item-count") {
        None => DEFAULT_JOBS_PAGE,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
        {
            Some(count) if (1..=MAX_JOBS_PAGE).contains(&count) => count,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "x-ms-max-item-count must be a number from 1 to {MAX_JOBS_PAGE}"
                )));
            }
        },
    };
    let continuation = headers
        .get("x-ms-continuation")
        .and_then(|value| value.to_str().ok());
    let page = jobs.list(job_type, status, continuation, max_items).await?;
    let token = page.continuation_token.clone();
    let mut response = Json(page).into_response();
    response.headers_mut().insert(
        "x-ms-item-type",
        HeaderValue::from_static(ITEM_TYPE_JOB_RESPONSE),
    );
    if let Some(token) = token {
        let value = HeaderValue::from_str(&token).expect("base64 is a valid header value");
        response.headers_mut().insert("x-ms-continuation", value);
    }
    Ok(response)
}
