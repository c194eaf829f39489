//! Cloud-to-device messages over REST: the service's send (fleethub's JSON envelope, `POST
//! /devices/{id}/messages/deviceBound`), Azure's purge (`DELETE /devices/{id}/commands`) and feedback
//! (`/messages/serviceBound/feedback`), and Azure's device-side HTTPS receive (`GET
//! /devices/{id}/messages/deviceBound`, complete, reject, abandon) with the device's SAS token.

use std::collections::HashMap;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleethub_protocol::c2d::{FEEDBACK_CONTENT_TYPE, LockToken, SendC2dRequest};
use fleethub_protocol::rest::format_time;
use fleethub_store::QueuedC2dMessage;

use super::{ApiError, ApiResult, ApiState, authorize, device_key, json_body};
use crate::auth::required;
use crate::c2d::{self, Settlement};

/// `POST /devices/{id}/messages/deviceBound`: one message for the device's queue; 200 with what was queued.
pub(super) async fn send(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CLOUD_TO_DEVICE)?;
    let key = device_key(&device_id)?;
    let request: SendC2dRequest = json_body(body)?;
    let queued = c2d::send(&state.services, &key.device_id, request).await?;
    Ok(axum::Json(queued).into_response())
}

/// `DELETE /devices/{id}/commands`: Azure's "purge the cloud-to-device queue".
pub(super) async fn purge(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CLOUD_TO_DEVICE)?;
    let key = device_key(&device_id)?;
    let result = c2d::purge(&state.services, &key.device_id).await?;
    Ok(axum::Json(result).into_response())
}

/// `GET /messages/serviceBound/feedback`: 200 with a batch of records (its lock token in `ETag`), or 204.
pub(super) async fn receive_feedback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CLOUD_TO_DEVICE)?;
    let Some(batch) = c2d::receive_feedback(&state.services).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let body = serde_json::to_vec(&batch.records).expect("feedback records always serialise");
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(FEEDBACK_CONTENT_TYPE),
    );
    headers.insert(ETAG, header_value(&batch.lock_token.to_etag()));
    headers.insert(
        "iothub-lockeduntil",
        header_value(&format_time(batch.locked_until)),
    );
    Ok(response)
}

/// `DELETE /messages/serviceBound/feedback/{lockToken}`: the batch is read; 204.
pub(super) async fn complete_feedback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(lock_token): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CLOUD_TO_DEVICE)?;
    let lock_token = lock_token_from_path(&lock_token)?;
    let services = &state.services;
    services
        .store
        .complete_c2d_feedback(&lock_token, services.now())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: the batch goes back to be received again; 204.
pub(super) async fn abandon_feedback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(lock_token): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CLOUD_TO_DEVICE)?;
    let lock_token = lock_token_from_path(&lock_token)?;
    let services = &state.services;
    services
        .store
        .abandon_c2d_feedback(&lock_token, services.now())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /devices/{id}/messages/deviceBound` with the device's SAS token: the first message of its queue,
/// locked for a minute (the lock token in `ETag`), with its properties in Azure's `iothub-*` headers; 204
/// when the queue holds nothing deliverable.
pub(super) async fn device_receive(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(device_id): Path<String>,
) -> ApiResult<Response> {
    let key = device_key(&device_id)?;
    c2d::authenticate_device(&state.services, authorization(&headers), &key.device_id).await?;
    match c2d::receive_for_device(&state.services, &key.device_id).await? {
        Some(message) => Ok(device_message_response(message)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `DELETE /devices/{id}/messages/deviceBound/{lockToken}` completes the message; with `?reject` rejects it.
pub(super) async fn device_settle(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((device_id, lock_token)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let settlement = match query.get("reject").map(String::as_str) {
        None | Some("false") => Settlement::Complete,
        Some(_) => Settlement::Reject,
    };
    device_settlement(&state, &headers, &device_id, &lock_token, settlement).await
}

/// `POST /devices/{id}/messages/deviceBound/{lockToken}/abandon`: back in the queue, delivered again.
pub(super) async fn device_abandon(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((device_id, lock_token)): Path<(String, String)>,
) -> ApiResult<Response> {
    device_settlement(
        &state,
        &headers,
        &device_id,
        &lock_token,
        Settlement::Abandon,
    )
    .await
}

async fn device_settlement(
    state: &ApiState,
    headers: &HeaderMap,
    device_id: &str,
    lock_token: &str,
    settlement: Settlement,
) -> ApiResult<Response> {
    let key = device_key(device_id)?;
    c2d::authenticate_device(&state.services, authorization(headers), &key.device_id).await?;
    let lock_token = lock_token_from_path(lock_token)?;
    c2d::settle_for_device(&state.services, &key.device_id, lock_token, settlement).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
}

/// The lock token in a path: bare, or quoted as the `ETag` carried it.
fn lock_token_from_path(text: &str) -> ApiResult<LockToken> {
    LockToken::from_etag(text)
        .map_err(|error| ApiError::bad_request(format!("lock token {text:?}: {error}")))
}

/// Values the hub produced itself (validated ids and properties, times, numbers) are valid header values.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("the hub's own header values are visible ASCII")
}

/// A message for the device-side HTTPS receive: the body as sent, system properties in Azure's headers
/// (`iothub-messageid`, `iothub-to`, `iothub-expiry`, ...), application properties as `iothub-app-{name}`.
fn device_message_response(message: QueuedC2dMessage) -> Response {
    let properties = &message.message.properties;
    let mut headers = HeaderMap::new();
    if let Some(lock) = &message.lock {
        headers.insert(ETAG, header_value(&lock.token.to_etag()));
    }
    let mut insert = |name: &'static str, value: &str| {
        headers.insert(HeaderName::from_static(name), header_value(value));
    };
    insert("iothub-messageid", &properties.message_id);
    insert(
        "iothub-sequencenumber",
        &message.sequence_number.to_string(),
    );
    insert(
        "iothub-to",
        &fleethub_protocol::c2d::C2dMessage::destination(&message.device_id),
    );
    insert("iothub-enqueuedtime", &format_time(message.enqueued_time));
    insert("iothub-deliverycount", &message.delivery_count.to_string());
    insert("iothub-ack", properties.ack.as_str());
    if let Some(expiry) = properties.expiry_time_utc {
        insert("iothub-expiry", &format_time(expiry));
    }
    if let Some(correlation_id) = &properties.correlation_id {
        insert("iothub-correlationid", correlation_id);
    }
    if let Some(user_id) = &properties.user_id {
        insert("iothub-userid", user_id);
    }
    if let Some(content_encoding) = &properties.content_encoding {
        insert("iothub-contentencoding", content_encoding);
    }
    match &properties.content_type {
        Some(content_type) => {
            insert("iothub-contenttype", content_type);
            headers.insert(CONTENT_TYPE, header_value(content_type));
        }
        None => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
    }
    for (name, value) in &message.message.application_properties {
        // Validated on send to HTTP token characters, so both always make a header.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(format!("iothub-app-{name}").as_bytes()),
            HeaderValue::from_str(value.as_deref().unwrap_or("")),
        ) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, message.message.body).into_response()
}
