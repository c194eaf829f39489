//! The one reader of the change feed for all jobs: tells running jobs which devices connected (a pending
//! offline target becomes startable) and, while a job with dynamic targets runs, which twins changed.
//!
//! Jobs receive batches through a `broadcast` channel: bounded, and a job that falls behind learns it
//! (`Lagged`) and resynchronises instead of silently missing a connection. When no job listens the feed is
//! not read at all (only the cursor moves), so an idle job service costs nothing however busy the fleet is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleethub_core::identity::IdentityKey;
use fleethub_protocol::changes::ChangeOperation;
use fleethub_store::{ChangeFilter, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Batches a listener may fall behind by before it is told it lagged.
pub(super) const FLEET_EVENT_BATCHES: usize = 256;
/// Change records read per store call.
const READ_BATCH: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum FleetEvent {
    /// The device opened a connection.
    Connected(IdentityKey),
    /// Something a query condition can test changed: the twin, the identity, the connection state, or the
    /// device was created.
    Changed(IdentityKey),
}

pub(super) type FleetEvents = Arc<[FleetEvent]>;

pub(super) async fn follow_changes(
    store: Arc<dyn Store>,
    sender: broadcast::Sender<FleetEvents>,
    dynamic_jobs: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut notifier = store.change_notifier();
    let mut after = *notifier.borrow_and_update();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = notifier.changed() => if changed.is_err() { return },
        }
        // Read the newest sequence number before looking for listeners: a job that subscribes after this
        // check only needs changes made after it subscribed, and those are all above `latest`.
        let latest = *notifier.borrow_and_update();
        if sender.receiver_count() == 0 {
            after = latest;
            continue;
        }
        let with_changes = dynamic_jobs.load(Ordering::Relaxed) > 0;
        while after < latest {
            let records = match store
                .read_changes(after, READ_BATCH, ChangeFilter::all())
                .await
            {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(%error, "jobs cannot read the change feed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let Some(last) = records.last() else { break };
            after = last.sequence;
            let events: Vec<FleetEvent> = records
                .into_iter()
                .filter(|record| record.module_id.is_none())
                .filter_map(|record| {
                    let key = IdentityKey::device(record.device_id?);
                    match record.operation {
                        ChangeOperation::DeviceConnected => Some(FleetEvent::Connected(key)),
                        // Jobs' and rollouts' own progress says nothing a query condition can test.
                        ChangeOperation::DeleteDeviceIdentity
                        | ChangeOperation::DeviceJobUpdated
                        | ChangeOperation::JobUpdated
                        | ChangeOperation::DeviceRolloutUpdated
                        | ChangeOperation::RolloutUpdated => None,
                        _ if with_changes => Some(FleetEvent::Changed(key)),
                        _ => None,
                    }
                })
                .collect();
            if !events.is_empty() {
                // No receiver left is fine: nobody needs these.
                let _ = sender.send(events.into());
            }
        }
    }
}
