//! The one reader of the change feed for all rollouts: tells running rollouts which devices connected (a
//! pending offline device becomes startable) and what devices report about their firmware (an update's
//! progress and outcome), pushed as they are committed.
//!
//! Rollouts receive batches through a `broadcast` channel: bounded, and a rollout that falls behind learns
//! it (`Lagged`) and resynchronises instead of silently missing an outcome. When no rollout listens the
//! feed is not read at all (only the cursor moves).

use std::sync::Arc;
use std::time::Duration;

use fleethub_core::identity::IdentityKey;
use fleethub_protocol::changes::ChangeOperation;
use fleethub_store::{ChangeFilter, ChangeRecord, Store};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Batches a listener may fall behind by before it is told it lagged.
pub(super) const FLEET_EVENT_BATCHES: usize = 256;
/// Change records read per store call.
const READ_BATCH: usize = 1000;

/// What a device reported about its firmware in one reported-properties patch (docs/firmware.md, "Reported
/// properties"): the agent's `firmware` object and the reference workflow's `firmwareStatus`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct FirmwareReport {
    /// `firmware.status`, else `firmwareStatus`.
    pub status: Option<String>,
    pub target_version: Option<String>,
    pub current_version: Option<String>,
    /// `firmware.error`: `{"code", "reason"}`.
    pub error: Option<Value>,
    /// The `firmware` object as patched (what a successful device's record keeps as its outcome).
    pub firmware: Value,
}

impl FirmwareReport {
    /// The firmware part of a reported patch, if it has one.
    pub(super) fn of_patch(reported: &Value) -> Option<FirmwareReport> {
        let firmware = reported.get("firmware").filter(|value| value.is_object());
        let reference_status = reported.get("firmwareStatus").and_then(Value::as_str);
        if firmware.is_none() && reference_status.is_none() {
            return None;
        }
        let text = |name: &str| {
            firmware
                .and_then(|firmware| firmware.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Some(FirmwareReport {
            status: text("status").or_else(|| reference_status.map(str::to_owned)),
            target_version: text("targetVersion"),
            current_version: text("currentVersion"),
            error: firmware
                .and_then(|firmware| firmware.get("error"))
                .filter(|error| !error.is_null())
                .cloned(),
            firmware: firmware.cloned().unwrap_or(Value::Null),
        })
    }

    /// The firmware part of a twin's reported properties.
    pub(super) fn of_twin(twin: &Value) -> Option<FirmwareReport> {
        FirmwareReport::of_patch(twin.pointer("/properties/reported")?)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum FleetEvent {
    /// The device opened a connection.
    Connected(IdentityKey),
    /// The device reported firmware properties; `sequence` is the change record's.
    Reported {
        key: IdentityKey,
        sequence: u64,
        report: Box<FirmwareReport>,
    },
}

pub(super) type FleetEvents = Arc<[FleetEvent]>;

/// The events in change records (devices only: rollouts target devices).
pub(super) fn events_of(records: Vec<ChangeRecord>) -> Vec<FleetEvent> {
    records
        .into_iter()
        .filter(|record| record.module_id.is_none())
        .filter_map(|record| {
            let key = IdentityKey::device(record.device_id?);
            match record.operation {
                ChangeOperation::DeviceConnected => Some(FleetEvent::Connected(key)),
                ChangeOperation::UpdateTwin => {
                    let report =
                        FirmwareReport::of_patch(record.body.pointer("/properties/reported")?)?;
                    Some(FleetEvent::Reported {
                        key,
                        sequence: record.sequence,
                        report: Box::new(report),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

pub(super) async fn follow_changes(
    store: Arc<dyn Store>,
    sender: broadcast::Sender<FleetEvents>,
    stop: CancellationToken,
) {
    let mut notifier = store.change_notifier();
    let mut after = *notifier.borrow_and_update();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = notifier.changed() => if changed.is_err() { return },
        }
        // The newest sequence number before looking for listeners: a rollout that subscribes after this
        // check only needs changes made after it subscribed, and those are all above `latest`.
        let latest = *notifier.borrow_and_update();
        if sender.receiver_count() == 0 {
            after = latest;
            continue;
        }
        while after < latest {
            let records = match store
                .read_changes(after, READ_BATCH, ChangeFilter::all())
                .await
            {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(%error, "rollouts cannot read the change feed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let Some(last) = records.last() else { break };
            after = last.sequence;
            let events = events_of(records);
            if !events.is_empty() {
                // No receiver left is fine: nobody needs these.
                let _ = sender.send(events.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn firmware_reports_are_read_from_the_agents_and_the_reference_shapes() {
        let agent = json!({"firmwareStatus": "rolledBack", "firmware": {
            "model": "m", "currentVersion": "1.0.0", "targetVersion": "2.0.0", "status": "rolledBack",
            "error": {"code": "healthCheckFailed", "reason": "exit 1"}}});
        let report = FirmwareReport::of_patch(&agent).expect("a report");
        assert_eq!(report.status.as_deref(), Some("rolledBack"));
        assert_eq!(report.target_version.as_deref(), Some("2.0.0"));
        assert_eq!(report.current_version.as_deref(), Some("1.0.0"));
        assert_eq!(
            report.error,
            Some(json!({"code": "healthCheckFailed", "reason": "exit 1"}))
        );

        let reference =
            FirmwareReport::of_patch(&json!({"firmwareStatus": "completed"})).expect("a report");
        assert_eq!(reference.status.as_deref(), Some("completed"));
        assert_eq!(
            (reference.target_version, reference.firmware),
            (None, Value::Null)
        );

        let progress =
            FirmwareReport::of_patch(&json!({"firmware": {"progress": 40}})).expect("a report");
        assert_eq!(progress.status, None);
        assert_eq!(FirmwareReport::of_patch(&json!({"temperature": 21})), None);
        let cleared =
            FirmwareReport::of_patch(&json!({"firmware": {"status": "completed", "error": null}}));
        assert_eq!(cleared.and_then(|report| report.error), None);
    }
}
