//! What goes into the event log besides the log itself: device-to-cloud messages built from publishes
//! (with the system properties IoT Hub stamps), and the pump that turns the change feed's twin, connection
//! and lifecycle records into Azure's non-telemetry events.
//!
//! The pump keeps the store's change feed as the source of truth (those records are written in the
//! transaction of the change) and appends their events in feed order. It resumes from the log's upstream
//! position, which the log keeps exact across crashes (see `fleethub_eventlog`), so every record's event is
//! appended exactly once. Job and rollout records (fleethub's own) and identity updates (no Azure event) make
//! no event; they stay readable on `GET /changes`.
//!
//! Routing (`routing`) decides where each event goes before it is appended: telemetry in `mqtt.rs`, the
//! pump's events here; an event no route takes is not appended. C2D feedback records can be appended
//! through the same [`fleethub_eventlog::EventLog`] as another source.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use fleethub_eventlog::{Append, NewEvent};
use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::events::{
    MAX_D2C_MESSAGE_BYTES, MessageOrigin, message_size, notification_from_change, telemetry_message,
};
use fleethub_protocol::property_bag::PropertyBag;
use fleethub_store::ChangeFilter;
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::services::Services;

/// Change records the pump reads at a time.
const PUMP_PAGE: usize = 512;
/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Wait after a failed store read or append before trying again.
const PUMP_RETRY: Duration = Duration::from_secs(1);

/// Why a publish cannot become a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "the message is {bytes} bytes (body and properties, as IoT Hub counts them); the limit is {max}"
    )]
    TooLarge { bytes: usize, max: usize },
}

/// The event for a telemetry publish (or a Will message delivered as one), or why there is none.
pub fn telemetry_event(
    origin: &MessageOrigin,
    properties: PropertyBag,
    body: Bytes,
    retain: bool,
    will: bool,
) -> Result<NewEvent, TelemetryError> {
    let bytes = message_size(&properties, body.len());
    if bytes > MAX_D2C_MESSAGE_BYTES {
        return Err(TelemetryError::TooLarge {
            bytes,
            max: MAX_D2C_MESSAGE_BYTES,
        });
    }
    let message = telemetry_message(origin, properties, retain, will);
    Ok(NewEvent {
        partition_key: origin.device_id.to_string(),
        system_properties: message.system_properties,
        application_properties: message.application_properties,
        body,
        upstream_sequence: None,
    })
}

/// The hub's name in events (`hubName`, `user-id`): the first label of its first host name, as Azure's
/// `contoso-hub` of `contoso-hub.azure-devices.net`.
pub fn hub_name(config: &HubConfig) -> String {
    let host = config
        .hostnames
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    host.split('.').next().unwrap_or(host).to_owned()
}

/// Follows the change feed and appends each record's event, in order, until shutdown.
pub async fn run_pump(services: Arc<Services>, shutdown: CancellationToken) {
    let hub_name = hub_name(&services.config);
    let mut notifier = services.store.change_notifier();
    let mut after = services.events.upstream_position();
    loop {
        // Mark the head seen before reading, so a change committed after the read wakes us.
        notifier.borrow_and_update();
        let records = match services
            .store
            .read_changes(after, PUMP_PAGE, ChangeFilter::all())
            .await
        {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "the event pump cannot read the change feed; retrying");
                if pause(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        let Some(last) = records.last().map(|record| record.sequence) else {
            tokio::select! {
                changed = notifier.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            continue;
        };
        if let Some(first) = records.first()
            && first.sequence > after + 1
            && after > 0
        {
            tracing::warn!(
                after,
                first = first.sequence,
                "change-feed records were trimmed before the event pump read them; their events are missing"
            );
        }
        let mut events = Vec::with_capacity(records.len());
        for record in &records {
            let twin = lifecycle_twin(&services, record).await;
            if let Some(notification) = notification_from_change(record, &hub_name, twin)
                && let Some(event) = services
                    .routing
                    .route_notification(&services, notification, record.sequence)
                    .await
            {
                events.push(event);
            }
        }
        let append = Append {
            events,
            upstream_through: Some(last),
        };
        match services.events.append(append).await {
            Ok(_) => after = last,
            Err(error) => {
                tracing::warn!(%error, "the event pump cannot append; retrying");
                if pause(&shutdown).await {
                    return;
                }
                // Whatever did reach the log, the log's own position says so.
                after = services.events.upstream_position();
            }
        }
    }
}

/// The twin a `createDeviceIdentity` event carries (Azure sends the new twin): the identity's twin if it is
/// still at the version the record names, else `None` (the event then names the identity and version).
async fn lifecycle_twin(services: &Services, record: &ChangeRecord) -> Option<serde_json::Value> {
    if record.operation != ChangeOperation::CreateDeviceIdentity {
        return None;
    }
    let key = IdentityKey {
        device_id: record.device_id.clone()?,
        module_id: record.module_id.clone(),
    };
    let stored = services.store.get(&key).await.ok()??;
    (Some(stored.twin.version()) == record.twin_version).then(|| stored.twin_json())
}

/// Waits out a retry delay; `true` when the hub is shutting down meanwhile.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(PUMP_RETRY) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Deletes expired segments every minute until shutdown.
pub async fn run_retention(services: Arc<Services>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(RETENTION_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                match services.events.enforce_retention().await {
                    Ok(report) if report.segments_deleted > 0 => tracing::info!(
                        segments = report.segments_deleted,
                        events = report.events_deleted,
                        bytes = report.bytes_deleted,
                        "deleted expired events"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "event log retention failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleethub_protocol::events::AuthScope;
    use fleethub_protocol::ids::DeviceId;

    fn origin() -> MessageOrigin {
        MessageOrigin {
            device_id: DeviceId::new("dev1").unwrap(),
            module_id: None,
            generation_id: "1".into(),
            auth_scope: AuthScope::Device,
            model_id: None,
        }
    }

    #[test]
    fn messages_up_to_256_kb_are_accepted_and_larger_refused() {
        let properties = PropertyBag::decode("%24.mid=abc&k=v").unwrap();
        let overhead = 3 + 1 + 1;
        let fits = Bytes::from(vec![b'x'; MAX_D2C_MESSAGE_BYTES - overhead]);
        let event = telemetry_event(&origin(), properties.clone(), fits, false, false).unwrap();
        assert_eq!(event.partition_key, "dev1");
        let too_big = Bytes::from(vec![b'x'; MAX_D2C_MESSAGE_BYTES - overhead + 1]);
        assert_eq!(
            telemetry_event(&origin(), properties, too_big, false, false),
            Err(TelemetryError::TooLarge {
                bytes: MAX_D2C_MESSAGE_BYTES + 1,
                max: MAX_D2C_MESSAGE_BYTES
            })
        );
    }

    #[test]
    fn the_hub_name_is_the_first_label_of_the_first_host_name() {
        let mut config = HubConfig::for_loopback("/tmp/x".into());
        assert_eq!(hub_name(&config), "localhost");
        config.hostnames = vec!["contoso-hub.azure-devices.net".into()];
        assert_eq!(hub_name(&config), "contoso-hub");
    }
}
