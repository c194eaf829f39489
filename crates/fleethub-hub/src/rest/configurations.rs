//! Automatic device management on the REST API, as `IoTHubConfigurationManager` calls it:
//! `PUT/GET/DELETE /configurations/{id}`, `GET /configurations?top=`, `POST /configurations/testQueries`.
//!
//! PUT answers 200 for both create and update: the Python SDK accepts 200 or 201, the C# SDK only 200.
//! `If-Match` comes quoted (C#) or raw (`*` from the Python SDK's `delete_configuration`); both are read.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleethub_protocol::configurations::{ConfigurationQueriesTestInput, ConfigurationRequest};
use fleethub_protocol::ids::IfMatch;

use super::{ApiResult, ApiState, authorize, if_match, json_body, query_top};
use crate::auth::required;

pub(super) async fn put_configuration(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CONFIGURATION_WRITE)?;
    let request: ConfigurationRequest = json_body(body)?;
    let configuration = state
        .services
        .put_configuration(&id, request, if_match(&headers)?)
        .await?;
    Ok(Json(configuration).into_response())
}

pub(super) async fn get_configuration(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CONFIGURATION_READ)?;
    let configuration = state.services.get_configuration(&id).await?;
    Ok(Json(configuration).into_response())
}

pub(super) async fn list_configurations(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CONFIGURATION_READ)?;
    let top = query_top(&query)?;
    let configurations = state.services.list_configurations(top).await?;
    Ok(Json(configurations).into_response())
}

pub(super) async fn delete_configuration(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CONFIGURATION_WRITE)?;
    state
        .services
        .delete_configuration(&id, if_match(&headers)?.unwrap_or(IfMatch::Any))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn test_queries(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::CONFIGURATION_READ)?;
    let input: ConfigurationQueriesTestInput = json_body(body)?;
    Ok(Json(state.services.test_configuration_queries(&input)).into_response())
}
