//! X.509 CA certificates on the REST API, in the shapes of Azure's certificates API:
//! `PUT/GET/DELETE /certificates/{name}`, `GET /certificates`, `POST /certificates/{name}/generateVerificationCode`
//! and `POST /certificates/{name}/verify`. Reads need RegistryRead, writes RegistryWrite (the audit
//! middleware records the writes). `If-Match` is optional except to replace an existing certificate.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleethub_protocol::certificates::{
    CertificateDescription, CertificateListDescription, CertificateUpload, CertificateVerification,
};

use super::{ApiResult, ApiState, authorize, if_match, json_body};
use crate::auth::required;

/// The description with its etag also in the `ETag` header (quoted, as HTTP wants it).
fn described(description: CertificateDescription) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", description.etag)).ok();
    let mut response = Json(description).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert("etag", etag);
    }
    response
}

pub(super) async fn put_certificate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let upload: CertificateUpload = json_body(body)?;
    let description = state
        .services
        .put_ca_certificate(&name, upload, if_match(&headers)?)
        .await?;
    Ok(described(description))
}

pub(super) async fn get_certificate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_READ)?;
    Ok(described(state.services.get_ca_certificate(&name).await?))
}

pub(super) async fn list_certificates(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_READ)?;
    let value = state.services.list_ca_certificates().await?;
    Ok(Json(CertificateListDescription { value }).into_response())
}

pub(super) async fn delete_certificate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    state
        .services
        .delete_ca_certificate(&name, if_match(&headers)?)
        .await?;
    Ok(StatusCode::OK.into_response())
}

pub(super) async fn generate_verification_code(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let description = state
        .services
        .generate_verification_code(&name, if_match(&headers)?)
        .await?;
    Ok(described(description))
}

pub(super) async fn verify_certificate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let verification: CertificateVerification = json_body(body)?;
    let description = state
        .services
        .verify_ca_certificate(&name, if_match(&headers)?, verification)
        .await?;
    Ok(described(description))
}
