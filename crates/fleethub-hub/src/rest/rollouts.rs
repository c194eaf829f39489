//! Firmware rollouts over REST (a fleethub extension, docs/firmware.md "Rollouts"): `PUT
//! /firmware/rollouts/{id}` (200 with the rollout, `running`), `GET /firmware/rollouts/{id}`, `GET
//! /firmware/rollouts[?status=]` (an array, by id), and `POST /firmware/rollouts/{id}/{pause|resume|approve|abort}`
//! (200 with the rollout once the change is durable; 409 when its status does not allow it).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use fleethub_protocol::ids::RolloutId;
use fleethub_protocol::rollouts::{RolloutRequest, RolloutStatus};
use serde_json::Value;

use super::{ApiError, ApiResult, ApiState, authorize, json_body};
use crate::auth::required;
use crate::rollouts::{RolloutAction, RolloutService};

fn rollout_id(text: &str) -> ApiResult<RolloutId> {
    text.parse()
        .map_err(|error| ApiError::bad_request(format!("rollout id {text:?}: {error}")))
}

pub(super) async fn put_rollout(
    State(state): State<ApiState>,
    Extension(rollouts): Extension<Arc<RolloutService>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROLLOUT_WRITE)?;
    let id = rollout_id(&id)?;
    let body: Value = json_body(body)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a rollout request: {\"artifact\": {\"model\", \"version\"}, \"targetCondition\", \"waves\", ...}",
        ));
    }
    let request: RolloutRequest = serde_json::from_value(body).map_err(|error| {
        ApiError::bad_request(format!("the body is not a valid rollout request: {error}"))
    })?;
    let rollout = rollouts.create(id, request).await?;
    Ok(Json(rollout).into_response())
}

pub(super) async fn get_rollout(
    State(state): State<ApiState>,
    Extension(rollouts): Extension<Arc<RolloutService>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROLLOUT_READ)?;
    let rollout = rollouts.get(&rollout_id(&id)?).await?;
    Ok(Json(rollout).into_response())
}

pub(super) async fn list_rollouts(
    State(state): State<ApiState>,
    Extension(rollouts): Extension<Arc<RolloutService>>,
    headers: HeaderMap,
    uri: Uri,
    Query(parameters): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROLLOUT_READ)?;
    let status = parameters
        .get("status")
        .map(|text| text.trim())
        .filter(|text| !text.is_empty())
        .map(|text| {
            RolloutStatus::parse(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "status {text:?} is not a rollout status (running, paused, waitingForApproval, aborting, completed, aborted)"
                ))
            })
        })
        .transpose()?;
    let list = rollouts.list(status).await?;
    Ok(Json(list).into_response())
}

/// `POST /firmware/rollouts/{id}/{action}`.
pub(super) async fn act_on_rollout(
    State(state): State<ApiState>,
    Extension(rollouts): Extension<Arc<RolloutService>>,
    headers: HeaderMap,
    uri: Uri,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROLLOUT_WRITE)?;
    let action = match action.as_str() {
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        "approve" => RolloutAction::Approve,
        "abort" => RolloutAction::Abort,
        other => {
            return Err(ApiError::new(
                fleethub_protocol::errors::ErrorCode::GenericNotFound,
                format!(
                    "no such endpoint: {}; a rollout takes pause, resume, approve or abort, not {other:?}",
                    uri.path()
                ),
            ));
        }
    };
    let rollout = rollouts.act(&rollout_id(&id)?, action).await?;
    Ok(Json(rollout).into_response())
}
