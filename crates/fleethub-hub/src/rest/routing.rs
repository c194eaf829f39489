//! Message routing on the REST API (a fleethub extension: Azure configures routing in the hub's Azure
//! Resource Manager resource, `properties.routing`, whose shape this keeps):
//!
//! - `GET /routing`: the configuration in force ([`RoutingProperties`]), its version in the `ETag` header;
//! - `PUT /routing`: replaces it as a whole (`If-Match` optional; a stale one answers 412
//!   `PreconditionFailed`); an invalid one answers 400 saying what is wrong and where (a condition's syntax
//!   error with its position, an unknown endpoint, a bad URL, ...) and changes nothing; it applies at once;
//! - `POST /routing/routes/$testnew` and `POST /routing/routes/$testall`: Azure's route tests
//!   (`TestRouteInput` → `TestRouteResult`, `TestAllRoutesInput` → `TestAllRoutesResult`);
//! - `GET /routing/health`: each custom endpoint's health (Azure's `EndpointHealthData`, with counters)
//!   and each route's match counts;
//! - `GET /routing/deadLetters?endpoint=&from=&top=`: dead letters, oldest first, paged by id.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::events::names;
use fleethub_protocol::routing::{
    MatchedRoute, RouteCompilationError, RouteErrorPosition, RouteErrorRange, RoutingMessage,
    RoutingProperties, RoutingSource, TestAllRoutesInput, TestAllRoutesResult, TestResultStatus,
    TestRouteInput, TestRouteResult, TestRouteResultDetails,
};
use fleethub_query::{QueryError, RouteCondition, RouteOutcome, RoutedMessage};
use serde_json::Value;

use super::{ApiResult, ApiState, authorize, if_match, json_body};
use crate::auth::required;
use crate::rest::ApiError;
use crate::routing::{CompiledRouting, Routing};

/// Dead letters per page unless `top` says otherwise, and at most.
const DEFAULT_DEAD_LETTERS: usize = 100;
const MAX_DEAD_LETTERS: usize = 1000;

fn with_etag(compiled: &CompiledRouting) -> Response {
    let mut response = Json(&compiled.properties).into_response();
    let etag = Routing::etag(compiled.version).to_header_value();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

pub(super) async fn get_routing(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROUTING_READ)?;
    Ok(with_etag(&state.services.routing.current()))
}

pub(super) async fn put_routing(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROUTING_WRITE)?;
    let properties: RoutingProperties = json_body(body)?;
    let services = &state.services;
    let compiled = services
        .routing
        .update(services, properties, if_match(&headers)?)
        .await?;
    Ok(with_etag(&compiled))
}

/// A message's system and application properties, as the event log keeps them.
type Properties = (Vec<(String, String)>, Vec<(String, Option<String>)>);

/// A sample message's properties as the hub stores them: system properties by their Event Hubs names, with
/// `iothub-message-source` for `source` unless given.
fn sample_properties(message: &RoutingMessage, source: RoutingSource) -> Properties {
    let mut system: Vec<(String, String)> = message
        .system_properties
        .iter()
        .map(|(name, value)| {
            let name = name.strip_prefix('$').unwrap_or(name);
            (
                fleethub_query::routing::system_property_name(name).to_owned(),
                value.clone(),
            )
        })
        .collect();
    if !system
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(names::MESSAGE_SOURCE))
    {
        system.push((
            names::MESSAGE_SOURCE.to_owned(),
            source.message_source().to_owned(),
        ));
    }
    let application = message
        .app_properties
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    (system, application)
}

fn compilation_error(error: &QueryError) -> RouteCompilationError {
    let location = match error {
        QueryError::Syntax { line, column, .. } | QueryError::Invalid { line, column, .. } => {
            let position = RouteErrorPosition {
                line: *line,
                column: *column,
            };
            Some(RouteErrorRange {
                start: position,
                end: position,
            })
        }
        _ => None,
    };
    RouteCompilationError {
        message: error.to_string(),
        severity: "error".to_owned(),
        location,
    }
}

pub(super) async fn test_new_route(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<TestRouteResult>> {
    authorize(&state, &headers, &uri, required::ROUTING_READ)?;
    let input: TestRouteInput = json_body(body)?;
    let condition = match RouteCondition::parse(input.route.condition.as_deref().unwrap_or("")) {
        Ok(condition) => condition,
        Err(error) => {
            return Ok(Json(TestRouteResult {
                result: TestResultStatus::Undefined,
                details: TestRouteResultDetails {
                    compilation_errors: vec![compilation_error(&error)],
                },
            }));
        }
    };
    let (system, application) = sample_properties(&input.message, input.route.source);
    let mut message = RoutedMessage::new(&system, &application, input.message.body.as_bytes());
    if let Some(twin) = &input.twin {
        message = message.with_twin(twin);
    }
    let result = match condition.evaluate(&message) {
        RouteOutcome::True => TestResultStatus::True,
        RouteOutcome::False => TestResultStatus::False,
        RouteOutcome::NotBoolean => TestResultStatus::Undefined,
    };
    Ok(Json(TestRouteResult {
        result,
        details: TestRouteResultDetails::default(),
    }))
}

pub(super) async fn test_all_routes(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<TestAllRoutesResult>> {
    authorize(&state, &headers, &uri, required::ROUTING_READ)?;
    let input: TestAllRoutesInput = json_body(body)?;
    let source = input
        .routing_source
        .unwrap_or(RoutingSource::DeviceMessages);
    let (system, application) = sample_properties(&input.message, source);
    let twin: Option<&Value> = input.twin.as_ref();
    let mut message = RoutedMessage::new(&system, &application, input.message.body.as_bytes());
    if let Some(twin) = twin {
        message = message.with_twin(twin);
    }
    let current = state.services.routing.current();
    let routes = current
        .matching_routes(source, &message)
        .into_iter()
        .map(|route| MatchedRoute {
            properties: route.clone(),
        })
        .collect();
    Ok(Json(TestAllRoutesResult { routes }))
}

pub(super) async fn routing_health(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROUTING_READ)?;
    let services = &state.services;
    Ok(Json(services.routing.health(&*services.events).await).into_response())
}

pub(super) async fn dead_letters(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::ROUTING_DEAD_LETTERS)?;
    let from = match query.get("from") {
        None => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "from must be a dead letter id (a number), got {text:?}"
            ))
        })?,
    };
    let top = match query.get("top") {
        None => DEFAULT_DEAD_LETTERS,
        Some(text) => match text.parse::<usize>() {
            Ok(top) if (1..=MAX_DEAD_LETTERS).contains(&top) => top,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "top must be a number from 1 to {MAX_DEAD_LETTERS}, got {text:?}"
                )));
            }
        },
    };
    let page = state
        .services
        .routing
        .dead_letters()
        .read(query.get("endpoint").cloned(), from, top)
        .await
        .map_err(|error| {
            ApiError::new(
                ErrorCode::ServerError,
                format!("cannot read the dead letters: {error}"),
            )
        })?;
    Ok(Json(page).into_response())
}
