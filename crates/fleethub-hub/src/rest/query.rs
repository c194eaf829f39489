//! `POST /devices/query`: IoT Hub queries with `x-ms-max-item-count` and `x-ms-continuation` paging.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::rest::QuerySpecification;

use super::{ApiError, ApiResult, ApiState, authorize, json_body};
use crate::auth::required;
use crate::query::{DEFAULT_ITEM_COUNT, MAX_ITEM_COUNT, RunQueryError};

/// `POST /devices/{id}`: only `/devices/query` exists (a device named "query" is still reachable with GET, PUT
/// and DELETE, which the `{id}` route serves).
pub(super) async fn post_devices(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    if device_id != "query" {
        return Err(ApiError::new(
            ErrorCode::GenericMethodNotAllowed,
            format!("POST is not supported on {}", uri.path()),
        ));
    }
    authorize(&state, &headers, &uri, required::QUERY)?;
    let specification: QuerySpecification = json_body(body)?;
    let max_items = match headers.get("x-ms-max-item-count") {
        None => DEFAULT_ITEM_COUNT,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
        {
            Some(count) if (1..=MAX_ITEM_COUNT).contains(&count) => count,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "x-ms-max-item-count must be a number from 1 to {MAX_ITEM_COUNT}"
                )));
            }
        },
    };
    let continuation = headers
        .get("x-ms-continuation")
        .and_then(|value| value.to_str().ok());
    let page = state
        .services
        .query(&specification.query, continuation, max_items)
        .await
        .map_err(|error| match error {
            RunQueryError::Store(store) => ApiError::from(store),
            other => ApiError::bad_request(other.to_string()),
        })?;
    let mut response = Json(page.items).into_response();
    response
        .headers_mut()
        .insert("x-ms-item-type", HeaderValue::from_static(page.item_type));
    if let Some(token) = page.continuation {
        let value = HeaderValue::from_str(&token).expect("base64 is a valid header value");
        response.headers_mut().insert("x-ms-continuation", value);
    }
    Ok(response)
}
