//! One attempt of a rollout on one device: look at what the device reports, entitle it (a grant and its
//! signed URL), call `firmwareUpdate`. The attempt then lasts until the device reports how the update ended
//! (`runner.rs` follows its reports), or the device timeout.
//!
//! The attempt is safe to make again: a device already at the version succeeds at once, and an attempt
//! made again after a hub restart ([`fleethub_core::rollout::REATTACH`]) follows the update the device
//! accepted before the restart (see [`start`]) instead of asking again, so no device updates twice.

use std::sync::Arc;
use std::time::Duration;

use fleethub_core::executor::{Outcome, TargetError};
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::rest::parse_time;
use fleethub_protocol::topics::Subscription;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::feed::FirmwareReport;
use crate::artifacts::ArtifactService;
use crate::jobs::ONLINE_SUBSCRIBE_GRACE;
use crate::services::{InvokeMethodError, MethodInvocation, Services};

/// The direct method the agent implements (docs/firmware.md).
pub const FIRMWARE_UPDATE_METHOD: &str = "firmwareUpdate";
/// How long the device has to answer `firmwareUpdate` (it answers at once, then works in the background).
pub const METHOD_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A grant lasts the device timeout plus this.
const GRANT_MARGIN: Duration = Duration::from_secs(300);

/// Error codes a rollout writes for a device (beside the executor's and the agent's own `firmware.error`).
pub mod error_codes {
    /// The device reports another model than the artifact's, or none.
    pub const MODEL_MISMATCH: &str = "ModelMismatch";
    /// The device answered 409: it is busy with another update.
    pub const DEVICE_BUSY: &str = "DeviceBusy";
    /// The device answered `firmwareUpdate` with another status than 200.
    pub const UPDATE_REFUSED: &str = "UpdateRefused";
    /// The device reported `failed` or `rolledBack` without an error code.
    pub const UPDATE_FAILED: &str = "UpdateFailed";
}

/// The artifact an attempt installs.
#[derive(Clone, Debug)]
pub(super) struct Install {
    pub model: String,
    pub version: String,
    /// The signed manifest, sent with the request so the device verifies it before downloading.
    pub manifest: Option<String>,
}

/// How the first part of an attempt ended.
#[derive(Debug)]
pub(super) enum Started {
    /// The attempt is over: the device was already at the version, refused, is offline, ...
    Done(Outcome),
    /// The device is updating to the version: its reports after change `after` say how it ends.
    Following { after: u64 },
}

/// What an attempt needs from the hub.
#[derive(Clone)]
pub(super) struct AttemptContext {
    pub services: Arc<Services>,
    pub artifacts: Arc<ArtifactService>,
    /// `rollout:<id>`.
    pub grant_source: String,
    pub device_timeout: Duration,
}

/// The outcome a report gives an attempt that installs `version`, if it is a final one.
pub(super) fn outcome_of(report: &FirmwareReport, version: &str) -> Option<Outcome> {
    if report
        .target_version
        .as_deref()
        .is_some_and(|target| target != version)
    {
        return None;
    }
    match report.status.as_deref()? {
        "completed" => {
            if report
                .current_version
                .as_deref()
                .is_some_and(|current| current != version)
            {
                return None;
            }
            Some(Outcome::Succeeded(outcome_value(report)))
        }
        status @ ("failed" | "rolledBack") => {
            let error = report.error.as_ref();
            let text = |name: &str| {
                error
                    .and_then(|error| error.get(name))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            Some(Outcome::Failed(TargetError::new(
                text("code").unwrap_or_else(|| error_codes::UPDATE_FAILED.to_owned()),
                match text("reason") {
                    Some(reason) => format!("the device reported {status}: {reason}"),
                    None => format!("the device reported {status}"),
                },
            )))
        }
        _ => None,
    }
}

fn outcome_value(report: &FirmwareReport) -> Value {
    if report.firmware.is_null() {
        json!({ "status": report.status })
    } else {
        report.firmware.clone()
    }
}

/// An update is under way on the device (the agent's statuses between the request and the outcome).
fn in_progress(report: &FirmwareReport) -> bool {
    matches!(report.status.as_deref(), Some("downloading" | "applying"))
}

/// How an attempt begins.
#[derive(Clone, Copy, Debug)]
pub(super) struct Begin {
    /// The attempt is made again after a hub restart interrupted it (see the module docs).
    pub reattach: bool,
    /// When the device's first attempt in this phase started: a reattaching attempt trusts only reports
    /// made after it.
    pub first_started: Option<OffsetDateTime>,
    pub came_online_recently: bool,
}

/// When the device last reported its `firmware` object (`$metadata` of the reported properties).
fn reported_at(twin: &Value) -> Option<OffsetDateTime> {
    let reported = twin.pointer("/properties/reported/$metadata")?;
    let at = reported
        .pointer("/firmware/$lastUpdated")
        .or_else(|| reported.pointer("/firmwareStatus/$lastUpdated"))?
        .as_str()?;
    parse_time(at).ok()
}

/// Starts an attempt: checks the device, grants it the artifact and asks it to update.
///
/// An attempt made again after a restart never asks again (the device accepted before the restart, or the
/// hub was killed before asking, in which case the device timeout ends the attempt): it takes the outcome
/// the device reported since its first attempt started, follows an update under way, or waits for the
/// device's reports. The one exception is a device that reported, since then, that it is idle and not at
/// the version: it lost the request, and is asked.
pub(super) async fn start(
    context: &AttemptContext,
    key: &IdentityKey,
    install: &Install,
    begin: Begin,
) -> Started {
    let Begin {
        reattach,
        first_started,
        came_online_recently,
    } = begin;
    let services = &context.services;
    // Reports committed after this point are this attempt's.
    let after = *services.store.change_notifier().borrow();
    let record = match services.store.get(key).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return failed(
                ErrorCode::DeviceNotFound.name(),
                format!("{key} no longer exists"),
            );
        }
        Err(error) => return failed(ErrorCode::ServerError.name(), error.to_string()),
    };
    let twin = record.twin_json();
    let report = FirmwareReport::of_twin(&twin);
    let model = twin
        .pointer("/properties/reported/firmware/model")
        .and_then(Value::as_str);
    if model != Some(install.model.as_str()) {
        return failed(
            error_codes::MODEL_MISMATCH,
            match model {
                Some(model) => format!(
                    "the device reports model {model:?}; the artifact is for {:?}",
                    install.model
                ),
                None => format!(
                    "the device has not reported properties.reported.firmware.model; the artifact is for {:?}",
                    install.model
                ),
            },
        );
    }
    if let Some(report) = &report
        && report.current_version.as_deref() == Some(install.version.as_str())
        && !in_progress(report)
    {
        return Started::Done(Outcome::Succeeded(outcome_value(report)));
    }
    if reattach {
        let fresh = match (reported_at(&twin), first_started) {
            (Some(reported), Some(started)) => reported >= started,
            _ => false,
        };
        match &report {
            Some(report) if fresh => {
                if let Some(outcome) = outcome_of(report, &install.version) {
                    return Started::Done(outcome);
                }
                let idle = !in_progress(report)
                    && report.target_version.as_deref() != Some(install.version.as_str());
                if !idle {
                    return Started::Following { after };
                }
            }
            // Nothing reported since the attempt began (or its reports wait in the device's queue until it
            // reconnects): wait for them.
            _ => return Started::Following { after },
        }
    }
    let router = services.router();
    let online = router
        .wait_for_subscription(key, Subscription::Methods, Duration::ZERO)
        .await;
    if !online && !came_online_recently {
        // Nothing reached the device: no grant, no attempt counted.
        return Started::Done(Outcome::Offline);
    }
    let grant_seconds = (context.device_timeout + GRANT_MARGIN)
        .as_secs()
        .min(fleethub_protocol::artifacts::MAX_GRANT_SECONDS);
    let grant = match context
        .artifacts
        .grant_for(
            &install.model,
            &install.version,
            &key.device_id,
            grant_seconds,
            &context.grant_source,
        )
        .await
    {
        Ok(grant) => grant,
        Err(error) => {
            return failed(
                ErrorCode::ServerError.name(),
                format!("cannot grant the artifact: {error}"),
            );
        }
    };
    let mut payload = json!({"fwPackageUri": grant.url, "version": install.version});
    if let Some(manifest) = &install.manifest {
        payload["manifest"] = Value::String(manifest.clone());
    }
    let invocation = MethodInvocation {
        method_name: FIRMWARE_UPDATE_METHOD.to_owned(),
        payload,
        response_timeout: METHOD_RESPONSE_TIMEOUT,
        // A device found offline waits (pending, no attempt counted); the attempt after its connection gives
        // it time to subscribe to methods.
        connect_timeout: if came_online_recently {
            ONLINE_SUBSCRIBE_GRACE
        } else {
            Duration::ZERO
        },
    };
    match services.invoke_method(key, invocation).await {
        Ok(result) if result.status == 200 => Started::Following { after },
        Ok(result) if result.status == 409 => {
            if report.as_ref().is_some_and(|report| {
                report.target_version.as_deref() == Some(install.version.as_str())
                    && in_progress(report)
            }) {
                // Already updating to this version (asked by someone else): follow it.
                return Started::Following { after };
            }
            failed(
                error_codes::DEVICE_BUSY,
                format!("the device is busy: {}", response_text(&result.payload)),
            )
        }
        // The agent is rebooting into new firmware: nothing reached it; it is asked again once it
        // reconnects, as an offline device is.
        Ok(result) if result.status == 503 => Started::Done(Outcome::Offline),
        Ok(result) => failed(
            error_codes::UPDATE_REFUSED,
            format!(
                "the device answered {}: {}",
                result.status,
                response_text(&result.payload)
            ),
        ),
        Err(InvokeMethodError::NotOnline(_)) => Started::Done(Outcome::Offline),
        Err(error) => {
            let code = match &error {
                InvokeMethodError::NotFound(_) => ErrorCode::DeviceNotFound,
                InvokeMethodError::NotOnline(_) => ErrorCode::DeviceNotOnline,
                InvokeMethodError::Timeout { .. } => ErrorCode::GatewayTimeout,
                InvokeMethodError::Busy(_) => ErrorCode::ThrottlingException,
                InvokeMethodError::PayloadTooLarge { .. } => ErrorCode::MessageTooLarge,
                InvokeMethodError::InvalidResponse(_) => ErrorCode::GenericBadRequest,
                InvokeMethodError::Store(_) => ErrorCode::ServerError,
            };
            failed(code.name(), error.to_string())
        }
    }
}

fn failed(code: &str, description: impl Into<String>) -> Started {
    Started::Done(Outcome::Failed(TargetError::new(code, description)))
}

/// The agent answers `{"Response": "<reason>"}`.
fn response_text(payload: &Value) -> String {
    payload
        .get("Response")
        .and_then(Value::as_str)
        .map_or_else(|| payload.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: &str, target: Option<&str>, current: Option<&str>) -> FirmwareReport {
        FirmwareReport {
            status: Some(status.into()),
            target_version: target.map(str::to_owned),
            current_version: current.map(str::to_owned),
            error: None,
            firmware: json!({"status": status}),
        }
    }

    #[test]
    fn only_final_reports_about_the_version_end_an_attempt() {
        assert!(matches!(
            outcome_of(&report("completed", Some("2"), Some("2")), "2"),
            Some(Outcome::Succeeded(_))
        ));
        assert_eq!(
            outcome_of(&report("completed", Some("3"), Some("3")), "2"),
            None
        );
        assert_eq!(outcome_of(&report("completed", None, Some("1")), "2"), None);
        assert!(
            matches!(
                outcome_of(&report("completed", None, None), "2"),
                Some(Outcome::Succeeded(_))
            ),
            "the reference workflow's device reports no versions"
        );
        assert_eq!(
            outcome_of(&report("downloading", Some("2"), Some("1")), "2"),
            None
        );
        let mut rolled_back = report("rolledBack", Some("2"), Some("1"));
        rolled_back.error = Some(json!({"code": "healthCheckFailed", "reason": "exit 1"}));
        assert_eq!(
            outcome_of(&rolled_back, "2"),
            Some(Outcome::Failed(TargetError::new(
                "healthCheckFailed",
                "the device reported rolledBack: exit 1"
            )))
        );
        assert_eq!(
            outcome_of(&report("failed", Some("2"), Some("1")), "2"),
            Some(Outcome::Failed(TargetError::new(
                error_codes::UPDATE_FAILED,
                "the device reported failed"
            )))
        );
    }
}
