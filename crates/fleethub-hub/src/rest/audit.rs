//! The audit log at the REST edge: a middleware that records every state-changing service operation once it
//! has an answer, and `GET /audit` to read the records (a fleethub extension).
//!
//! The middleware knows an operation by its HTTP method and matched route (the table in [`operation`]);
//! reads pass through untouched. The policy comes from [`authorize`](super::authorize), which every handler
//! calls first: it leaves the policy's name in a task-local slot the middleware set up. The handler and the
//! record's write run in a task of their own, so a caller who hangs up neither cuts the operation in half nor
//! loses its record, and the answer goes out only once the record is durable (through the store's
//! group-committing writer, so concurrent requests share one COMMIT). A record that cannot be written turns a
//! success into a 500: nobody is told "done" for an operation the log does not hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleethub_protocol::audit::{AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX, AuditEntry, AuditPage};
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::percent::unquote_strict;
use fleethub_protocol::rest::{format_time, parse_time};
use fleethub_store::{AuditFilter, AuditRecord, NewAuditRecord};
use time::OffsetDateTime;

use super::{ApiError, ApiResult, ApiState, Peer, authorize};
use crate::auth::required;

tokio::task_local! {
    /// The policy that authorised the request being handled (set by `authorize`).
    static CALLER: Arc<Mutex<Option<String>>>;
}

/// Called by `authorize` with the policy that authenticated the caller (allowed or not); outside an audited
/// request it does nothing.
pub(super) fn note_caller(policy: &str) {
    let _ = CALLER.try_with(|slot| {
        *slot.lock().expect("the audit slot is never poisoned") = Some(policy.to_owned());
    });
}

/// A state-changing operation: its audit name and what it acted on.
#[derive(Debug, PartialEq, Eq)]
struct Audited {
    operation: &'static str,
    /// The path's ids joined by `/`, percent-decoded: `dev1`, `dev1/mod1`, `model/version`.
    target: Option<String>,
}

/// The operation a request is, from its method and path (the REST router's routes, so only routes that
/// exist get here); `None` for reads, which are not recorded.
fn audited(method: &Method, path: &str) -> Option<Audited> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (operation, ids): (&'static str, &[&str]) = match (method.as_str(), segments.as_slice()) {
        ("POST", ["devices"]) => ("device.bulk", &[]),
        ("PUT", ["devices", device]) => ("device.put", &[device]),
        ("DELETE", ["devices", device]) => ("device.delete", &[device]),
        ("PUT", ["devices", device, "modules", module]) => ("module.put", &[device, module]),
        ("DELETE", ["devices", device, "modules", module]) => ("module.delete", &[device, module]),
        ("PATCH", ["twins", device]) => ("twin.patch", &[device]),
        ("PATCH", ["twins", device, "modules", module]) => ("twin.patch", &[device, module]),
        ("PUT", ["twins", device]) => ("twin.replace", &[device]),
        ("PUT", ["twins", device, "modules", module]) => ("twin.replace", &[device, module]),
        ("POST", ["twins", device, "methods"]) => ("method.invoke", &[device]),
        ("POST", ["twins", device, "modules", module, "methods"]) => {
            ("method.invoke", &[device, module])
        }
        ("POST", ["devices", device, "messages", "deviceBound" | "devicebound"]) => {
            ("c2d.send", &[device])
        }
        ("DELETE", ["devices", device, "commands"]) => ("c2d.purge", &[device]),
        ("DELETE", ["messages", "serviceBound", "feedback", lock]) => {
            ("c2d.feedback.complete", &[lock])
        }
        ("POST", ["messages", "serviceBound", "feedback", lock, "abandon"]) => {
            ("c2d.feedback.abandon", &[lock])
        }
        ("PUT", ["configurations", id]) => ("configuration.put", &[id]),
        ("DELETE", ["configurations", id]) => ("configuration.delete", &[id]),
        ("PUT", ["jobs", "v2", job]) => ("job.create", &[job]),
        ("POST", ["jobs", "v2", job, "cancel"]) => ("job.cancel", &[job]),
        ("PUT", ["routing"]) => ("routing.put", &[]),
        ("PUT", ["certificates", name]) => ("certificate.put", &[name]),
        ("DELETE", ["certificates", name]) => ("certificate.delete", &[name]),
        ("POST", ["certificates", name, "generateVerificationCode"]) => {
            ("certificate.generateVerificationCode", &[name])
        }
        ("POST", ["certificates", name, "verify"]) => ("certificate.verify", &[name]),
        ("POST", ["policies", policy, "regenerateKey"]) => ("policy.regenerateKey", &[policy]),
        ("PUT", ["events", "consumerGroups", group, "checkpoints"]) => ("checkpoint.put", &[group]),
        ("DELETE", ["events", "consumerGroups", group]) => ("consumerGroup.delete", &[group]),
        ("PUT", ["firmware", "artifacts", model, version]) => {
            ("firmware.upload", &[model, version])
        }
        ("DELETE", ["firmware", "artifacts", model, version]) => {
            ("firmware.delete", &[model, version])
        }
        ("POST", ["firmware", "artifacts", model, version, "grants"]) => {
            ("firmware.grant", &[model, version])
        }
        ("PUT", ["firmware", "rollouts", rollout]) => ("rollout.create", &[rollout]),
        ("POST", ["firmware", "rollouts", rollout, action]) => {
            let operation = match *action {
                "pause" => "rollout.pause",
                "resume" => "rollout.resume",
                "approve" => "rollout.approve",
                "abort" => "rollout.abort",
                // The handler refuses it; the attempt is still recorded.
                _ => "rollout.action",
            };
            (operation, &[rollout])
        }
        _ => return None,
    };
    let target = (!ids.is_empty()).then(|| {
        ids.iter()
            .map(|id| unquote_strict(id).unwrap_or_else(|_| (*id).to_owned()))
            .collect::<Vec<_>>()
            .join("/")
    });
    Some(Audited { operation, target })
}

/// Records the request if it is a state-changing operation (see the module's doc).
pub(super) async fn record(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(Audited { operation, target }) = audited(request.method(), request.uri().path())
    else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<Peer>()
        .map(|Peer(address)| address.to_string());
    let slot = Arc::new(Mutex::new(None));
    let services = Arc::clone(&state.services);
    let handled = state.tracker.spawn(CALLER.scope(Arc::clone(&slot), async move {
        let response = next.run(request).await;
        let status = response.status();
        let record = NewAuditRecord {
            time: OffsetDateTime::now_utc(),
            policy: slot.lock().expect("the audit slot is never poisoned").take(),
            operation: operation.to_owned(),
            target,
            status: status.as_u16(),
            error_code: response
                .headers()
                .get("iothub-errorcode")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            peer,
        };
        match services.store.append_audit(record).await {
            Ok(_) => response,
            Err(error) if status.is_success() => ApiError::new(
                ErrorCode::ServerError,
                format!("the operation ran but its audit record could not be written: {error}"),
            )
            .into_response(),
            Err(error) => {
                tracing::error!(%error, operation, "could not write the audit record of a failed operation");
                response
            }
        }
    }));
    match handled.await {
        Ok(response) => response,
        Err(error) => ApiError::new(
            ErrorCode::ServerError,
            format!("the request's task failed: {error}"),
        )
        .into_response(),
    }
}

// ---- GET /audit ----

/// `api-version` is what every Azure SDK sends; it is accepted and ignored.
const QUERY_PARAMETERS: &[&str] = &[
    "api-version",
    "from",
    "to",
    "operation",
    "target",
    "policy",
    "limit",
    "continuation",
];

fn query_time(query: &HashMap<String, String>, name: &str) -> ApiResult<Option<OffsetDateTime>> {
    query
        .get(name)
        .map(|text| {
            parse_time(text).map_err(|error| {
                ApiError::bad_request(format!(
                    "{name} must be an RFC 3339 time such as 2026-05-01T10:00:00Z, got {text:?}: {error}"
                ))
            })
        })
        .transpose()
}

fn audit_filter(query: &HashMap<String, String>) -> ApiResult<AuditFilter> {
    if let Some(unknown) = query
        .keys()
        .find(|name| !QUERY_PARAMETERS.contains(&name.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {unknown:?}; known: {}",
            QUERY_PARAMETERS.join(", ")
        )));
    }
    let limit = match query.get("limit") {
        None => AUDIT_PAGE_DEFAULT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=AUDIT_PAGE_MAX).contains(&limit) => limit,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a number from 1 to {AUDIT_PAGE_MAX}, got {text:?}"
                )));
            }
        },
    };
    let before = query
        .get("continuation")
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "continuation {text:?} is not a continuation token this hub gave"
                ))
            })
        })
        .transpose()?;
    let text = |name: &str| query.get(name).filter(|value| !value.is_empty()).cloned();
    Ok(AuditFilter {
        from: query_time(query, "from")?,
        to: query_time(query, "to")?,
        operation: text("operation"),
        target: text("target"),
        policy: text("policy"),
        before,
        limit,
    })
}

fn entry(record: AuditRecord) -> AuditEntry {
    let AuditRecord { sequence, record } = record;
    AuditEntry {
        sequence,
        time: format_time(record.time),
        policy: record.policy,
        operation: record.operation,
        target: record.target,
        status: record.status,
        error_code: record.error_code,
        peer: record.peer,
    }
}

/// `GET /audit?from=&to=&operation=&target=&policy=&limit=&continuation=`: newest first, with RegistryRead.
pub(super) async fn list_audit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::AUDIT_READ)?;
    let Query(query) = query
        .map_err(|rejection| ApiError::bad_request(format!("bad query string: {rejection}")))?;
    let filter = audit_filter(&query)?;
    let limit = filter.limit;
    let records = state.services.store.list_audit(filter).await?;
    let continuation_token = (records.len() == limit)
        .then(|| records.last().map(|last| last.sequence.to_string()))
        .flatten();
    Ok(Json(AuditPage {
        records: records.into_iter().map(entry).collect(),
        continuation_token,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_audited_and_writes_are_named_with_their_target() {
        let named = |method: Method, path: &str| {
            audited(&method, path).map(|audited| (audited.operation, audited.target))
        };
        assert_eq!(named(Method::GET, "/devices/dev1"), None);
        assert_eq!(named(Method::POST, "/devices/dev1"), None, "a query");
        assert_eq!(named(Method::POST, "/devices/query"), None);
        assert_eq!(named(Method::POST, "/configurations/testQueries"), None);
        assert_eq!(
            named(Method::PUT, "/devices/dev%231"),
            Some(("device.put", Some("dev#1".into())))
        );
        assert_eq!(named(Method::POST, "/devices"), Some(("device.bulk", None)));
        assert_eq!(
            named(Method::PATCH, "/twins/dev1/modules/mod1"),
            Some(("twin.patch", Some("dev1/mod1".into())))
        );
        assert_eq!(
            named(Method::POST, "/firmware/rollouts/r1/approve"),
            Some(("rollout.approve", Some("r1".into())))
        );
        assert_eq!(
            named(Method::POST, "/firmware/rollouts/r1/explode"),
            Some(("rollout.action", Some("r1".into())))
        );
        assert_eq!(
            named(Method::POST, "/firmware/artifacts/cam/1.0/grants"),
            Some(("firmware.grant", Some("cam/1.0".into())))
        );
        assert_eq!(named(Method::PUT, "/routing"), Some(("routing.put", None)));
        assert_eq!(
            named(Method::POST, "/policies/service/regenerateKey"),
            Some(("policy.regenerateKey", Some("service".into())))
        );
    }

    #[test]
    fn malformed_filters_are_refused() {
        let query = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        };
        for bad in [
            query(&[("limit", "0")]),
            query(&[("limit", "1001")]),
            query(&[("limit", "ten")]),
            query(&[("from", "yesterday")]),
            query(&[("continuation", "-1")]),
            query(&[("operaton", "twin.patch")]),
        ] {
            assert!(audit_filter(&bad).is_err(), "{bad:?}");
        }
        let filter = audit_filter(&query(&[
            ("from", "2026-05-01T10:00:00Z"),
            ("operation", "twin.patch"),
            ("continuation", "42"),
        ]))
        .expect("valid");
        assert_eq!(filter.before, Some(42));
        assert_eq!(filter.limit, AUDIT_PAGE_DEFAULT);
        assert!(filter.from.is_some());
    }
}
