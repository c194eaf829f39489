//! `GET /metrics` (a fleethub extension): the hub's figures in Prometheus's text format (`metrics.rs`).
//!
//! Authorised like any service call, with a SAS token of a policy holding ServiceConnect or RegistryRead;
//! the token may also come as a bearer token (`Authorization: Bearer SharedAccessSignature sr=...`), which is
//! what Prometheus's `authorization`/`bearer_token` settings send. Give the scraper a long-lived token of a
//! read-only policy (`fleethub connection-string --policy registryRead` names one).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{ApiResult, ApiState};
use crate::auth::{authorize_service, required};
use crate::jobs::JobService;
use crate::metrics::Snapshot;
use crate::rollouts::RolloutService;

/// Prometheus text exposition format 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) async fn scrape(
    State(state): State<ApiState>,
    Extension(jobs): Extension<Arc<JobService>>,
    Extension(rollouts): Extension<Arc<RolloutService>>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            let value = value.trim();
            match value.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
                _ => value,
            }
        });
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    authorize_service(
        &state.services,
        authorization,
        uri.path(),
        required::METRICS_READ,
        now,
    )?;
    let services = &state.services;
    let mut body = services.metrics.render(&Snapshot {
        connected_devices: services.router().connected_count(),
        jobs: jobs.active_work(),
        rollouts: rollouts.active_work(),
        endpoints: services.routing.endpoint_figures(&*services.events).await,
    });
    services.throttle.render_metrics(&mut body);
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}
