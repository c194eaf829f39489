//! The REST API on the HTTPS port, Azure IoT Hub's service API: registry, twins, direct methods,
//! configurations, statistics; plus `/healthz`, the MQTT-over-WebSocket endpoint `/$iothub/websocket`, and
//! fleethub's extensions (the change feed, firmware artifacts and their downloads, firmware rollouts).
//!
//! Handlers parse and authorise, call a service, and render; the mapping from failures to HTTP lives in
//! [`error`] alone.

mod audit;
mod bulk;
mod c2d;
mod certificates;
mod changes;
mod configurations;
mod convert;
pub mod error;
mod events;
mod firmware;
mod jobs;
mod metrics;
mod query;
pub mod range;
mod rollouts;
mod routing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::ids::{DeviceId, IfMatch, ModuleId, parse_if_match, validate_method_name};
use fleethub_protocol::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult};
use fleethub_store::TwinChange;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Requirement, authorize_service, required};
use crate::services::{
    METHOD_CONNECT_TIMEOUT_RANGE, METHOD_DEFAULT_RESPONSE_TIMEOUT, METHOD_RESPONSE_TIMEOUT_RANGE,
    MethodInvocation, Services,
};
use crate::throttle::OperationClass;
use crate::websocket::WebSocketStream;
pub use error::ApiError;

/// The TCP peer of the HTTPS connection a request came in on.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

#[derive(Clone)]
struct ApiState {
    services: Arc<Services>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(
    services: Arc<Services>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Router {
    let body_limit = services.config.limits.max_request_body_bytes;
    let state = ApiState {
        services,
        ready,
        shutdown,
        tracker,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/devices", get(list_devices).post(bulk::bulk_devices))
        .route(
            "/devices/{device_id}",
            put(put_device)
                .get(get_device)
                .delete(delete_device)
                .post(query::post_devices),
        )
        .route("/devices/{device_id}/modules", get(list_modules))
        // Cloud-to-device messages: the service sends (POST, fleethub's JSON envelope) and the device
        // receives over HTTPS (GET and settle, with its SAS token) on the same path, as in Azure; SDKs spell
        // it `deviceBound` or `devicebound`.
        .route(
            "/devices/{device_id}/messages/deviceBound",
            post(c2d::send).get(c2d::device_receive),
        )
        .route(
            "/devices/{device_id}/messages/devicebound",
            post(c2d::send).get(c2d::device_receive),
        )
        .route(
            "/devices/{device_id}/messages/deviceBound/{lock_token}",
            delete(c2d::device_settle),
        )
        .route(
            "/devices/{device_id}/messages/devicebound/{lock_token}",
            delete(c2d::device_settle),
        )
        .route(
            "/devices/{device_id}/messages/deviceBound/{lock_token}/abandon",
            post(c2d::device_abandon),
        )
        .route(
            "/devices/{device_id}/messages/devicebound/{lock_token}/abandon",
            post(c2d::device_abandon),
        )
        .route("/devices/{device_id}/commands", delete(c2d::purge))
        .route(
            "/messages/serviceBound/feedback",
            get(c2d::receive_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{lock_token}",
            delete(c2d::complete_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{lock_token}/abandon",
            post(c2d::abandon_feedback),
        )
        .route(
            "/devices/{device_id}/modules/{module_id}",
            put(put_module).get(get_module).delete(delete_module),
        )
        .route(
            "/twins/{device_id}",
            get(get_twin).patch(patch_twin).put(replace_twin),
        )
        .route(
            "/twins/{device_id}/modules/{module_id}",
            get(get_module_twin)
                .patch(patch_module_twin)
                .put(replace_module_twin),
        )
        .route("/twins/{device_id}/methods", post(invoke_method))
        .route(
            "/twins/{device_id}/modules/{module_id}/methods",
            post(invoke_module_method),
        )
        .route("/configurations", get(configurations::list_configurations))
        .route(
            "/configurations/testQueries",
            post(configurations::test_queries),
        )
        .route(
            "/configurations/{id}",
            put(configurations::put_configuration)
                .get(configurations::get_configuration)
                .delete(configurations::delete_configuration),
        )
        .route("/statistics/devices", get(device_statistics))
        .route("/statistics/service", get(service_statistics))
        .route("/changes", get(changes::stream_changes))
        // The event log (fleethub extension): device-to-cloud messages and the hub's events.
        .route("/events", get(events::stream_events))
        .route("/events/partitions", get(events::list_partitions))
        .route("/events/consumerGroups", get(events::list_consumer_groups))
        .route(
            "/events/consumerGroups/{group}",
            get(events::get_consumer_group).delete(events::delete_consumer_group),
        )
        .route(
            "/events/consumerGroups/{group}/checkpoints",
            put(events::put_checkpoints),
        )
        // Message routing (fleethub extension; Azure's `properties.routing` shape and route tests).
        .route(
            "/routing",
            get(routing::get_routing).put(routing::put_routing),
        )
        .route("/routing/routes/$testnew", post(routing::test_new_route))
        .route("/routing/routes/$testall", post(routing::test_all_routes))
        .route("/routing/health", get(routing::routing_health))
        .route("/routing/deadLetters", get(routing::dead_letters))
        // Jobs v2; the handlers find the `JobService` in a request extension (`lib.rs` adds it).
        .route("/jobs/v2/query", get(jobs::query_jobs))
        .route("/jobs/v2/{job_id}", put(jobs::put_job).get(jobs::get_job))
        .route("/jobs/v2/{job_id}/cancel", post(jobs::cancel_job))
        // Firmware artifacts (fleethub extension); the handlers find the `ArtifactService` in a request
        // extension (`lib.rs` adds it). Uploads stream to disk, so the body limit does not apply to them.
        .route("/firmware/artifacts", get(firmware::list_artifacts))
        .route(
            "/firmware/artifacts/{model}/{version}",
            put(firmware::upload_artifact)
                .layer(DefaultBodyLimit::disable())
                .get(firmware::get_artifact)
                .delete(firmware::delete_artifact),
        )
        .route(
            "/firmware/artifacts/{model}/{version}/grants",
            post(firmware::create_grant),
        )
        .route(
            "/firmware/artifacts/{model}/{version}/image",
            get(firmware::download_image),
        )
        // Firmware rollouts (fleethub extension); the handlers find the `RolloutService` in a request
        // extension (`lib.rs` adds it).
        .route("/firmware/rollouts", get(rollouts::list_rollouts))
        .route(
            "/firmware/rollouts/{rollout_id}",
            put(rollouts::put_rollout).get(rollouts::get_rollout),
        )
        .route(
            "/firmware/rollouts/{rollout_id}/{action}",
            post(rollouts::act_on_rollout),
        )
        // X.509 CA certificates for device authentication (Azure's certificates API).
        .route("/certificates", get(certificates::list_certificates))
        .route(
            "/certificates/{name}",
            put(certificates::put_certificate)
                .get(certificates::get_certificate)
                .delete(certificates::delete_certificate),
        )
        .route(
            "/certificates/{name}/generateVerificationCode",
            post(certificates::generate_verification_code),
        )
        .route(
            "/certificates/{name}/verify",
            post(certificates::verify_certificate),
        )
        .route("/$iothub/websocket", get(mqtt_over_websocket))
        // Replacing a shared access policy's key (fleethub extension, docs/compat.md).
        .route(
            "/policies/{policy_name}/regenerateKey",
            post(regenerate_policy_key),
        )
        // The audit log (fleethub extension); the middleware records the state-changing routes above.
        .route("/audit", get(audit::list_audit))
        // Prometheus metrics (fleethub extension), with a SAS token or the same token as a bearer token.
        .route("/metrics", get(metrics::scrape))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

// ---- helpers ----

fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    uri: &Uri,
    requirement: Requirement,
) -> ApiResult<()> {
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    match authorize_service(&state.services, authorization, uri.path(), requirement, now) {
        Ok(caller) => {
            audit::note_caller(&caller.policy);
            Ok(())
        }
        Err(error) => {
            if let crate::auth::ServiceAuthError::Forbidden { policy, .. } = &error {
                audit::note_caller(policy);
            }
            Err(error.into())
        }
    }
}

fn device_key(device_id: &str) -> ApiResult<IdentityKey> {
    let device_id: DeviceId = device_id
        .parse()
        .map_err(|error| ApiError::bad_request(format!("device id {device_id:?}: {error}")))?;
    Ok(IdentityKey::device(device_id))
}

fn module_key(device_id: &str, module_id: &str) -> ApiResult<IdentityKey> {
    let device = device_key(device_id)?.device_id;
    let module_id: ModuleId = module_id
        .parse()
        .map_err(|error| ApiError::bad_request(format!("module id {module_id:?}: {error}")))?;
    Ok(IdentityKey::module(device, module_id))
}

fn if_match(headers: &HeaderMap) -> ApiResult<Option<IfMatch>> {
    match headers.get("if-match") {
        None => Ok(None),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::bad_request("the If-Match header is not ASCII"))?;
            Ok(Some(parse_if_match(text)))
        }
    }
}

/// Parses a JSON body, answering 400/413 in Azure's shape instead of axum's plain-text rejections.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::GenericRequestEntityTooLarge,
                "the request body is too large",
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; a JSON document is required",
        ));
    }
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON for this operation: {error}"
        ))
    })
}

/// The id in query parameter `name`, if there is one; 400 when it is not a valid id.
fn query_id<T>(query: &HashMap<String, String>, name: &str) -> ApiResult<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    query
        .get(name)
        .map(|id| {
            id.parse::<T>()
                .map_err(|error| ApiError::bad_request(format!("{name} {id:?}: {error}")))
        })
        .transpose()
}

fn query_top(query: &HashMap<String, String>) -> ApiResult<usize> {
    match query.get("top") {
        None => Ok(1000),
        Some(text) => match text.parse::<usize>() {
            Ok(top) if (1..=1000).contains(&top) => Ok(top),
            _ => Err(ApiError::bad_request(format!(
                "top must be a number from 1 to 1000, got {text:?}"
            ))),
        },
    }
}

// ---- health and fallbacks ----

async fn healthz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Acquire) && !state.services.draining.is_cancelled() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n").into_response()
    }
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::GenericNotFound,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::GenericMethodNotAllowed,
        format!("this HTTP method is not supported on {}", uri.path()),
    )
}

// ---- registry ----

async fn list_devices(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_READ)?;
    let top = query_top(&query)?;
    let records = state.services.list_devices(top).await?;
    let devices: Vec<Value> = records.iter().map(convert::identity_json).collect();
    Ok(Json(devices).into_response())
}

async fn get_device(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_READ)?;
    let record = state
        .services
        .get_identity(&device_key(&device_id)?)
        .await?;
    Ok(Json(convert::identity_json(&record)).into_response())
}

async fn put_device(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let key = device_key(&device_id)?;
    put_identity(&state, key, &headers, body).await
}

async fn put_module(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path((device_id, module_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let key = module_key(&device_id, &module_id)?;
    put_identity(&state, key, &headers, body).await
}

async fn put_identity(
    state: &ApiState,
    key: IdentityKey,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body: Value = json_body(body)?;
    let spec = convert::identity_spec(&key, &body)?;
    let record = state
        .services
        .put_identity(key, spec, if_match(headers)?)
        .await?;
    // Azure answers 200 for both create and update (the Python SDK accepts nothing else for devices).
    Ok(Json(convert::identity_json(&record)).into_response())
}

async fn delete_device(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let key = device_key(&device_id)?;
    state
        .services
        .delete_identity(&key, if_match(&headers)?.unwrap_or(IfMatch::Any))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_module(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path((device_id, module_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_READ)?;
    let record = state
        .services
        .get_identity(&module_key(&device_id, &module_id)?)
        .await?;
    Ok(Json(convert::identity_json(&record)).into_response())
}

async fn delete_module(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path((device_id, module_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let key = module_key(&device_id, &module_id)?;
    state
        .services
        .delete_identity(&key, if_match(&headers)?.unwrap_or(IfMatch::Any))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_modules(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_READ)?;
    let key = device_key(&device_id)?;
    let records = state.services.list_modules(&key.device_id).await?;
    let modules: Vec<Value> = records.iter().map(convert::identity_json).collect();
    Ok(Json(modules).into_response())
}

async fn device_statistics(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_READ)?;
    let counts = state.services.store.statistics().await?;
    Ok(Json(counts).into_response())
}

async fn service_statistics(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::SERVICE_STATISTICS)?;
    let connected = state.services.router().connected_count();
    Ok(Json(json!({ "connectedDeviceCount": connected })).into_response())
}

/// `POST /policies/{name}/regenerateKey?key=primary|secondary|swap` (fleethub extension): only a policy
/// holding every right (`iothubowner`) may change keys, since a new key grants the policy's rights.
async fn regenerate_policy_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(policy_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let caller = authorize_service(
        &state.services,
        authorization,
        uri.path(),
        required::POLICY_KEYS_WRITE,
        now,
    )?;
    audit::note_caller(&caller.policy);
    if !fleethub_core::access::AccessRight::ALL
        .iter()
        .all(|right| caller.rights.contains(*right))
    {
        return Err(crate::auth::ServiceAuthError::Forbidden {
            policy: caller.policy,
            needed: "all of RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect".into(),
        }
        .into());
    }
    let which: crate::services::RegenerateKey = query
        .get("key")
        .ok_or_else(|| {
            ApiError::bad_request("the key query parameter is missing: primary, secondary or swap")
        })?
        .parse()
        .map_err(ApiError::bad_request)?;
    let policy = state
        .services
        .regenerate_policy_key(&policy_name, which)
        .await?;
    Ok(Json(policy).into_response())
}

// ---- twins ----

async fn get_twin(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::TWIN_READ)?;
    let key = device_key(&device_id)?;
    state
        .services
        .throttle
        .admit_service(OperationClass::TwinRead, &key, 1)?;
    let record = state.services.get_identity(&key).await?;
    Ok(Json(convert::twin_json(&record)).into_response())
}

async fn get_module_twin(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path((device_id, module_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::TWIN_READ)?;
    let key = module_key(&device_id, &module_id)?;
    state
        .services
        .throttle
        .admit_service(OperationClass::TwinRead, &key, 1)?;
    let record = state.services.get_identity(&key).await?;
    Ok(Json(convert::twin_json(&record)).into_response())
}

async fn write_twin(
    state: &ApiState,
    key: IdentityKey,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    replace: bool,
) -> ApiResult<Response> {
    state
        .services
        .throttle
        .admit_service(OperationClass::TwinUpdate, &key, 1)?;
    let body: Value = json_body(body)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the twin must be a JSON object"));
    }
    let change = if replace {
        TwinChange::ServiceReplace(body)
    } else {
        TwinChange::ServicePatch(body)
    };
    let updated = state
        .services
        .update_twin(&key, change, if_match(headers)?.unwrap_or(IfMatch::Any))
        .await?;
    Ok(Json(convert::twin_json(&updated.record)).into_response())
}

async fn patch_twin(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::TWIN_WRITE)?;
    write_twin(&state, device_key(&device_id)?, &headers, body, false).await
}

async fn replace_twin(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::TWIN_WRITE)?;
    write_twin(&state, device_key(&device_id)?, &headers, body, true).await
}

async fn patch_module_twin(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path((device_id, module_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::TWIN_WRITE)?;
    write_twin(
        &state,
        module_key(&device_id, &module_id)?,
        &headers,
        body,
        false,
    )
    .await
}

async fn replace_module_twin(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path((device_id, module_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::TWIN_WRITE)?;
    write_twin(
        &state,
        module_key(&device_id, &module_id)?,
        &headers,
        body,
        true,
    )
    .await
}

// ---- direct methods ----

async fn invoke_method(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::INVOKE_METHOD).map_err(ApiError::numeric)?;
    let key = device_key(&device_id).map_err(ApiError::numeric)?;
    invoke(&state, key, body).await
}

async fn invoke_module_method(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path((device_id, module_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::INVOKE_METHOD).map_err(ApiError::numeric)?;
    let key = module_key(&device_id, &module_id).map_err(ApiError::numeric)?;
    invoke(&state, key, body).await
}

async fn invoke(
    state: &ApiState,
    key: IdentityKey,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let meters = crate::throttle::method_meters(body.as_ref().map_or(0, Bytes::len));
    state
        .services
        .throttle
        .admit_service(OperationClass::MethodCall, &key, meters)
        .map_err(|throttled| ApiError::from(throttled).numeric())?;
    let request: CloudToDeviceMethod = json_body(body).map_err(ApiError::numeric)?;
    let invocation = method_invocation(request).map_err(ApiError::numeric)?;
    let result = state.services.invoke_method(&key, invocation).await?;
    Ok(Json(CloudToDeviceMethodResult {
        status: result.status,
        payload: result.payload,
    })
    .into_response())
}

/// Azure's rules: a valid method name, response timeout 5-300 s (default 30), connect timeout 0-300 s.
fn method_invocation(request: CloudToDeviceMethod) -> ApiResult<MethodInvocation> {
    validate_method_name(&request.method_name).map_err(|error| {
        ApiError::bad_request(format!("method name {:?}: {error}", request.method_name))
    })?;
    let response_timeout = request
        .response_timeout_in_seconds
        .unwrap_or(METHOD_DEFAULT_RESPONSE_TIMEOUT);
    if !METHOD_RESPONSE_TIMEOUT_RANGE.contains(&response_timeout) {
        return Err(ApiError::bad_request(format!(
            "responseTimeoutInSeconds must be from {} to {}, got {response_timeout}",
            METHOD_RESPONSE_TIMEOUT_RANGE.start(),
            METHOD_RESPONSE_TIMEOUT_RANGE.end()
        )));
    }
    let connect_timeout = request.connect_timeout_in_seconds.unwrap_or(0);
    if !METHOD_CONNECT_TIMEOUT_RANGE.contains(&connect_timeout) {
        return Err(ApiError::bad_request(format!(
            "connectTimeoutInSeconds must be from {} to {}, got {connect_timeout}",
            METHOD_CONNECT_TIMEOUT_RANGE.start(),
            METHOD_CONNECT_TIMEOUT_RANGE.end()
        )));
    }
    Ok(MethodInvocation {
        method_name: request.method_name,
        payload: request.payload,
        response_timeout: Duration::from_secs(response_timeout),
        connect_timeout: Duration::from_secs(connect_timeout),
    })
}

// ---- MQTT over WebSocket ----

async fn mqtt_over_websocket(
    State(state): State<ApiState>,
    Extension(Peer(peer)): Extension<Peer>,
    client_certificates: Option<Extension<crate::x509::ClientCertificates>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let client_certificates =
        client_certificates.and_then(|Extension(certificates)| certificates.0);
    let max_message = state.services.config.limits.max_packet_size + 1024;
    upgrade
        .protocols(["mqtt"])
        .max_message_size(max_message)
        .on_upgrade(move |socket| {
            let ApiState {
                services,
                shutdown,
                tracker,
                ..
            } = state;
            tracker.track_future(crate::mqtt::serve_connection(
                WebSocketStream::new(socket),
                services,
                peer,
                client_certificates,
                shutdown,
            ))
        })
}
