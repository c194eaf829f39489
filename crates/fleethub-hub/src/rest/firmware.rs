//! Firmware artifacts over REST (a fleethub extension, docs/firmware.md): upload (`PUT`, the image streamed
//! to disk, outside the REST body limit), list, show, delete, grants (`POST .../grants`, a signed URL), and
//! the devices' download (`GET .../image`) with single-range requests.
//!
//! The handlers find the `ArtifactService` in a request extension (`lib.rs` adds it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use fleethub_protocol::artifacts::{
    DESCRIPTION_HEADER, DEVICE_PARAMETER, EXPIRES_PARAMETER, GrantRequest, HEALTH_CHECK_HEADER,
    MANIFEST_HEADER, SHA256_HEADER, SIGNATURE_PARAMETER,
};
use fleethub_protocol::errors::ErrorCode;
use futures_util::{Stream, StreamExt as _};

use super::range::{RangeRequest, parse_range};
use super::{ApiError, ApiResult, ApiState, authorize, json_body};
use crate::artifacts::{ArtifactService, DownloadCredentials, UploadMetadata, artifact_json};
use crate::auth::required;

/// After a refused upload, at most this much of the rest of the body is read (and discarded) before
/// answering, so that the client, still sending, reads the answer instead of a connection reset.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Bytes per read of an image being downloaded. A download holds about this chunk, hyper's write buffer
/// (capped at the same size in `listeners.rs`) and its TLS record while the socket drains, so a rollout with
/// thousands of downloads at once pays it per download (BENCHMARKS.md, "Firmware rollout"); 32 KiB saved
/// little memory and cost a fifth of the throughput.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

type Artifacts = Extension<Arc<ArtifactService>>;

pub(super) async fn upload_artifact(
    State(state): State<ApiState>,
    Extension(artifacts): Artifacts,
    headers: HeaderMap,
    uri: Uri,
    Path((model, version)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::FIRMWARE_WRITE)?;
    let mut stream = body.into_data_stream();
    let metadata = match upload_metadata(&headers) {
        Ok(metadata) => metadata,
        Err(error) => {
            drain(&mut stream).await;
            return Err(error);
        }
    };
    match artifacts
        .upload(&model, &version, metadata, &mut stream)
        .await
    {
        Ok(record) => Ok((StatusCode::CREATED, Json(artifact_json(&record))).into_response()),
        Err(error) => {
            drain(&mut stream).await;
            Err(error.into())
        }
    }
}

fn upload_metadata(headers: &HeaderMap) -> ApiResult<UploadMetadata> {
    let manifest_jws = headers
        .get(MANIFEST_HEADER)
        .map(|value| {
            value
                .to_str()
                .map(|text| text.trim().to_owned())
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "{MANIFEST_HEADER} is not ASCII: it must be a compact JWS"
                    ))
                })
        })
        .transpose()?;
    let text = |name: &str| -> ApiResult<Option<String>> {
        headers
            .get(name)
            .map(|value| {
                std::str::from_utf8(value.as_bytes())
                    .map(str::to_owned)
                    .map_err(|_| ApiError::bad_request(format!("{name} is not UTF-8")))
            })
            .transpose()
    };
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))
        })
        .transpose()?;
    Ok(UploadMetadata {
        manifest_jws,
        health_check: text(HEALTH_CHECK_HEADER)?,
        description: text(DESCRIPTION_HEADER)?,
        content_length,
    })
}

/// Reads and discards what is left of a refused upload's body, within limits (see [`DRAIN_LIMIT`]).
async fn drain<S, E>(stream: &mut S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let discard = async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_LIMIT {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

pub(super) async fn list_artifacts(
    State(state): State<ApiState>,
    Extension(artifacts): Artifacts,
    headers: HeaderMap,
    uri: Uri,
    Query(parameters): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::FIRMWARE_READ)?;
    let model = parameters
        .get("model")
        .map(|model| model.trim())
        .filter(|model| !model.is_empty());
    if let Some(model) = model {
        fleethub_protocol::firmware::check_name("model", model)
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
    }
    let records = artifacts.list(model).await?;
    let list: Vec<_> = records.iter().map(artifact_json).collect();
    Ok(Json(list).into_response())
}

pub(super) async fn get_artifact(
    State(state): State<ApiState>,
    Extension(artifacts): Artifacts,
    headers: HeaderMap,
    uri: Uri,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::FIRMWARE_READ)?;
    let record = artifacts.get(&model, &version).await?;
    Ok(Json(artifact_json(&record)).into_response())
}

pub(super) async fn delete_artifact(
    State(state): State<ApiState>,
    Extension(artifacts): Artifacts,
    headers: HeaderMap,
    uri: Uri,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::FIRMWARE_WRITE)?;
    artifacts.delete(&model, &version).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn create_grant(
    State(state): State<ApiState>,
    Extension(artifacts): Artifacts,
    headers: HeaderMap,
    uri: Uri,
    Path((model, version)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::FIRMWARE_GRANT)?;
    let request: GrantRequest = json_body(body)?;
    let grant = artifacts
        .grant(
            &model,
            &version,
            &request.device_id,
            request.expires_in_seconds,
        )
        .await?;
    Ok(Json(grant).into_response())
}

/// `GET .../image`: a signed URL (`device`, `expires`, `sig` in the query) or the device's SAS token.
pub(super) async fn download_image(
    Extension(artifacts): Artifacts,
    headers: HeaderMap,
    uri: Uri,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let Query(parameters) = Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map_err(|rejection| ApiError::bad_request(format!("the query string: {rejection}")))?;
    let credentials = if parameters.contains_key(SIGNATURE_PARAMETER)
        || parameters.contains_key(DEVICE_PARAMETER)
        || parameters.contains_key(EXPIRES_PARAMETER)
    {
        let field = |name: &str| {
            parameters.get(name).cloned().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::IotHubUnauthorizedAccess,
                    format!("the signed URL has no {name}: it needs device, expires and sig"),
                )
            })
        };
        DownloadCredentials::SignedUrl {
            device: field(DEVICE_PARAMETER)?,
            expires: field(EXPIRES_PARAMETER)?,
            signature: field(SIGNATURE_PARAMETER)?,
        }
    } else {
        DownloadCredentials::Token(
            headers
                .get(header::AUTHORIZATION)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
        )
    };
    let allowed = artifacts
        .authorize_download(&model, &version, credentials)
        .await?;
    let artifact = &allowed.artifact;
    let size = artifact.manifest.size;
    let etag = format!("\"{}\"", artifact.sha256());
    let mut common = HeaderMap::new();
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(header::ETAG, header_value(&etag));
    common.insert(
        HeaderName::from_static(SHA256_HEADER),
        header_value(artifact.sha256()),
    );
    if let Some(jws) = &artifact.manifest_jws {
        common.insert(HeaderName::from_static(MANIFEST_HEADER), header_value(jws));
    }
    let text_of = |name: HeaderName| {
        headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let range = parse_range(
        text_of(header::RANGE).as_deref(),
        text_of(header::IF_RANGE).as_deref(),
        &etag,
        size,
    );
    let (status, start, length) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            common.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}")),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::new(
                ErrorCode::ArgumentInvalid,
                format!(
                    "the Range header asks for bytes this {size}-byte image does not have (one range, bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX)"
                ),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .into_response();
            response.headers_mut().extend(common);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            return Ok(response);
        }
    };
    let image = allowed.image.into_std().await;
    tracing::debug!(device = %allowed.device_id, model = %artifact.model(), version = %artifact.version(), start, length, "firmware download");
    let mut response = Response::new(file_body(image, start, length));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.extend(common);
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

/// Hashes, JWS text and numbers are always valid header values.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("hex, base64url and digits are valid header values")
}

/// `length` bytes of `file` from `start`, a chunk at a time. Each chunk is one positional read on the blocking
/// pool straight into the buffer that goes to the socket: no second buffer (as `tokio::fs::File` keeps), no
/// read-ahead, so a download holds one chunk plus its TLS record while the socket drains.
fn file_body(file: std::fs::File, start: u64, length: u64) -> Body {
    let file = Arc::new(file);
    let chunks = futures_util::stream::unfold(
        (file, start, length),
        |(file, offset, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let want = remaining.min(DOWNLOAD_CHUNK as u64) as usize;
            let reader = Arc::clone(&file);
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt as _;
                let mut buffer = vec![0u8; want];
                let read = reader.read_at(&mut buffer, offset)?;
                buffer.truncate(read);
                Ok::<_, std::io::Error>(buffer)
            })
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error)));
            match read {
                Ok(buffer) if buffer.is_empty() => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the image is shorter than recorded",
                    )),
                    (file, offset, 0),
                )),
                Ok(buffer) => {
                    let read = buffer.len() as u64;
                    Some((
                        Ok(Bytes::from(buffer)),
                        (file, offset + read, remaining - read),
                    ))
                }
                Err(error) => Some((Err(error), (file, offset, 0))),
            }
        },
    );
    Body::from_stream(chunks)
}
