//! Message routing: which endpoints each device-to-cloud message and each twin, lifecycle and
//! connection-state event goes to (routes with conditions, the fallback route, enrichments), the
//! configuration's storage, and delivery to the custom endpoints (webhooks, file sinks).
//!
//! Where it sits: the connection task (`mqtt.rs`) and the events pump (`events.rs`) ask [`Routing`] where a
//! message goes *before* appending it to the event log, and the log stores the decision with the message
//! (`stamp.rs`). So a QoS 1 PUBACK still waits only for the log's fsync, and every routed message is
//! durable before anything is delivered. A message routed nowhere is not appended (Azure drops it). Readers
//! of the log apply the decision: the event stream (`GET /events`, the built-in `events` endpoint) shows
//! only messages routed to `events` ([`visible_on_events`]); one worker per custom endpoint (`delivery.rs`)
//! reads the whole log from its own durable cursor, like an Event Hubs consumer, and delivers the messages
//! routed to it, retrying with backoff and dead-lettering what it gives up on. A slow or dead endpoint
//! never slows ingestion; nothing routed is lost across restarts (up to the log's retention).
//!
//! The configuration is one versioned JSON document in the store's metadata (its ETag is the version) and
//! takes effect at once: [`Routing::update`] compiles it (conditions parsed once per version) and publishes
//! it to the hot path and the delivery workers. Each custom endpoint has an incarnation (the version it
//! appeared in); a new incarnation's cursor starts at the log's end, since nothing before was routed to it.
//! Cursors live in a second metadata document, written before the configuration that needs them, so a
//! crash between the two writes leaves an unused cursor (removed at the next start), never a missing one.

mod compiled;
mod dead_letters;
mod delivery;
mod file_sink;
mod stamp;
mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use fleethub_eventlog::{AppendError, AppendReceipt, EventLog, NewEvent, StoredEvent};
use fleethub_protocol::events::{Notification, names};
use fleethub_protocol::ids::{ETag, IfMatch};
use fleethub_protocol::rest::format_time;
use fleethub_protocol::routing::{
    BUILT_IN_ENDPOINT, EndpointHealthData, EndpointHealthStatus, EndpointType, RoutingHealth,
    RoutingProperties, RoutingSource,
};
use fleethub_query::RoutedMessage;
use fleethub_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;

pub use compiled::{CompiledRouting, CustomEndpoint, Decision, EndpointKind, default_routing};
pub use dead_letters::DeadLetters;
pub use delivery::run as run_delivery;
pub use file_sink::ROUTES_DIRECTORY;
pub use stamp::ROUTING_PROPERTY;

use crate::config::HubConfig;
use crate::services::Services;

/// The store metadata key of the configuration document.
pub const ROUTING_META_KEY: &str = "routing";
/// The store metadata key of the custom endpoints' cursors.
pub const CURSORS_META_KEY: &str = "routing.cursors";
/// The directory of the dead-letter file inside the data directory.
pub const ROUTING_DIRECTORY: &str = "routing";

/// How the hub delivers to custom endpoints.
#[derive(Clone, Debug)]
pub struct RoutingSettings {
    /// One webhook request's time limit.
    pub webhook_timeout: Duration,
    /// Attempts at one message (a file sink: one batch) before it is dead-lettered.
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further one...
    pub initial_backoff: Duration,
    /// ... up to this.
    pub max_backoff: Duration,
    /// A message is dead-lettered once this long has passed since its first attempt, even with attempts
    /// left.
    pub max_retry_duration: Duration,
    /// A file sink's file is rotated once it would grow beyond this.
    pub file_sink_max_bytes: u64,
    /// The dead-letter file is rotated at this size (one previous file is kept).
    pub dead_letter_max_bytes: u64,
    /// How often a busy endpoint's cursor is saved (an idle one's is saved at once): what may be delivered
    /// twice after a crash.
    pub cursor_save_interval: Duration,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            webhook_timeout: Duration::from_secs(10),
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_retry_duration: Duration::from_secs(3600),
            file_sink_max_bytes: 64 * 1024 * 1024,
            dead_letter_max_bytes: 16 * 1024 * 1024,
            cursor_save_interval: Duration::from_secs(1),
        }
    }
}

/// The configuration document in the store.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRouting {
    version: u64,
    routing: RoutingProperties,
    /// Each custom endpoint's incarnation, by lowercase name.
    #[serde(default)]
    endpoints_since: BTreeMap<String, u64>,
}

/// One custom endpoint's cursor: per partition, the next offset to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    since: u64,
    next: BTreeMap<u32, u64>,
}

/// By lowercase endpoint name.
type Cursors = BTreeMap<String, Cursor>;

#[derive(Debug, thiserror::Error)]
pub enum LoadRoutingError {
    #[error("the stored routing configuration cannot be read: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateRoutingError {
    /// The configuration is not valid; the text says what and where.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the routing configuration changed: its etag is {current}, not the one given in If-Match"
    )]
    PreconditionFailed { current: ETag },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The hub's routing: the current configuration, cursors, endpoint health and dead letters.
pub struct Routing {
    current: watch::Sender<Arc<CompiledRouting>>,
    /// The cursors document; its lock also serialises configuration updates.
    cursors: tokio::sync::Mutex<Cursors>,
    hub_name: String,
    settings: RoutingSettings,
    routes_root: PathBuf,
    dead_letters: DeadLetters,
    health: Mutex<BTreeMap<String, EndpointHealthState>>,
}

/// What the health endpoint reports of one endpoint incarnation.
#[derive(Debug, Clone)]
struct EndpointHealthState {
    since: u64,
    status: EndpointHealthStatus,
    last_error: Option<String>,
    last_error_time: Option<OffsetDateTime>,
    last_success: Option<OffsetDateTime>,
    last_attempt: Option<OffsetDateTime>,
    delivered: u64,
    dead_lettered: u64,
    cursor: BTreeMap<u32, u64>,
}

impl EndpointHealthState {
    fn new(since: u64) -> Self {
        Self {
            since,
            status: EndpointHealthStatus::Unknown,
            last_error: None,
            last_error_time: None,
            last_success: None,
            last_attempt: None,
            delivered: 0,
            dead_lettered: 0,
            cursor: BTreeMap::new(),
        }
    }
}

/// What happened to an endpoint, for its health.
pub(crate) enum HealthEvent<'a> {
    Delivered(u64),
    Failed(&'a str),
    DeadLettered(u64),
    Cursor(&'a BTreeMap<u32, u64>),
}

impl Routing {
    /// Routing with the default configuration; [`Routing::load`] reads the stored one before the hub serves.
    pub fn new(config: &HubConfig) -> Routing {
        let compiled = CompiledRouting::compile(0, default_routing(), &BTreeMap::new())
            .expect("the default routing configuration is valid");
        Routing {
            current: watch::Sender::new(Arc::new(compiled)),
            cursors: tokio::sync::Mutex::new(Cursors::new()),
            hub_name: crate::events::hub_name(config),
            settings: config.routing.clone(),
            routes_root: config.data_dir.join(ROUTES_DIRECTORY),
            dead_letters: DeadLetters::new(
                config.data_dir.join(ROUTING_DIRECTORY),
                config.routing.dead_letter_max_bytes,
            ),
            health: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reads the stored configuration and cursors, dropping cursors of endpoints no longer configured and
    /// starting missing ones at the oldest event (a cursor is written before its endpoint, so this happens
    /// only if the cursors document was lost; then nothing routed is skipped).
    pub async fn load(
        &self,
        store: &dyn Store,
        events: &dyn EventLog,
    ) -> Result<(), LoadRoutingError> {
        let mut cursors = self.cursors.lock().await;
        let compiled = match store.get_meta(ROUTING_META_KEY).await? {
            None => CompiledRouting::compile(0, default_routing(), &BTreeMap::new())
                .expect("the default routing configuration is valid"),
            Some(text) => {
                let stored: StoredRouting = serde_json::from_str(&text)
                    .map_err(|error| LoadRoutingError::Unreadable(error.to_string()))?;
                CompiledRouting::compile(stored.version, stored.routing, &stored.endpoints_since)
                    .map_err(LoadRoutingError::Unreadable)?
            }
        };
        let mut loaded: Cursors = match store.get_meta(CURSORS_META_KEY).await? {
            None => Cursors::new(),
            Some(text) => serde_json::from_str(&text)
                .map_err(|error| LoadRoutingError::Unreadable(format!("cursors: {error}")))?,
        };
        let before = loaded.clone();
        loaded.retain(|name, cursor| {
            compiled
                .endpoint(name)
                .is_some_and(|endpoint| endpoint.since == cursor.since)
        });
        for endpoint in &compiled.endpoints {
            loaded
                .entry(endpoint.name.to_ascii_lowercase())
                .or_insert_with(|| {
                    tracing::warn!(endpoint = %endpoint.name, "endpoint has no cursor; it starts at the oldest event");
                    Cursor {
                        since: endpoint.since,
                        next: log_start(events),
                    }
                });
        }
        if loaded != before {
            store.set_meta(CURSORS_META_KEY, &to_json(&loaded)).await?;
        }
        *cursors = loaded;
        self.current.send_replace(Arc::new(compiled));
        Ok(())
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<CompiledRouting> {
        Arc::clone(&self.current.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CompiledRouting>> {
        self.current.subscribe()
    }

    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    pub fn hub_name(&self) -> &str {
        &self.hub_name
    }

    /// The ETag of a configuration version.
    pub fn etag(version: u64) -> ETag {
        ETag::new(version.to_string())
    }

    /// Replaces the configuration, if `if_match` (when given) names the current one. Valid or refused as a
    /// whole; in force for the next message once this returns.
    pub async fn update(
        &self,
        services: &Services,
        properties: RoutingProperties,
        if_match: Option<IfMatch>,
    ) -> Result<Arc<CompiledRouting>, UpdateRoutingError> {
        let mut cursors = self.cursors.lock().await;
        let previous = self.current();
        let current_etag = Routing::etag(previous.version);
        if let Some(if_match) = if_match
            && !if_match.matches(&current_etag)
        {
            return Err(UpdateRoutingError::PreconditionFailed {
                current: current_etag,
            });
        }
        let version = previous.version + 1;
        // An endpoint keeps its incarnation (and cursor) when one of the same name and type was there.
        let mut since = BTreeMap::new();
        let named = properties
            .endpoints
            .webhooks
            .iter()
            .map(|webhook| (&webhook.name, EndpointType::Webhook))
            .chain(
                properties
                    .endpoints
                    .file_sinks
                    .iter()
                    .map(|sink| (&sink.name, EndpointType::FileSink)),
            );
        for (name, endpoint_type) in named {
            if let Some(old) = previous.endpoint(name)
                && old.kind.endpoint_type() == endpoint_type
            {
                since.insert(name.to_ascii_lowercase(), old.since);
            }
        }
        let compiled = CompiledRouting::compile(version, properties, &since)
            .map_err(UpdateRoutingError::Invalid)?;

        let mut next = cursors.clone();
        for endpoint in compiled
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.since == version)
        {
            next.insert(
                endpoint.name.to_ascii_lowercase(),
                Cursor {
                    since: version,
                    next: log_end(&*services.events),
                },
            );
        }
        if next != *cursors {
            services
                .store
                .set_meta(CURSORS_META_KEY, &to_json(&next))
                .await?;
            *cursors = next.clone();
        }
        let stored = StoredRouting {
            version,
            routing: compiled.properties.clone(),
            endpoints_since: compiled
                .endpoints
                .iter()
                .map(|endpoint| (endpoint.name.to_ascii_lowercase(), endpoint.since))
                .collect(),
        };
        services
            .store
            .set_meta(ROUTING_META_KEY, &to_json(&stored))
            .await?;
        let compiled = Arc::new(compiled);
        self.current.send_replace(Arc::clone(&compiled));
        tracing::info!(version, "routing configuration updated");

        next.retain(|name, cursor| {
            compiled
                .endpoint(name)
                .is_some_and(|endpoint| endpoint.since == cursor.since)
        });
        if next != *cursors {
            match services
                .store
                .set_meta(CURSORS_META_KEY, &to_json(&next))
                .await
            {
                Ok(()) => *cursors = next,
                // Harmless: the next start drops them.
                Err(error) => {
                    tracing::warn!(%error, "could not forget the cursors of removed endpoints")
                }
            }
        }
        self.health
            .lock()
            .expect("routing health lock poisoned")
            .retain(|name, state| {
                compiled
                    .endpoint(name)
                    .is_some_and(|endpoint| endpoint.since == state.since)
            });
        Ok(compiled)
    }

    /// An endpoint incarnation's cursor.
    async fn cursor(&self, name: &str, since: u64) -> Option<BTreeMap<u32, u64>> {
        let cursors = self.cursors.lock().await;
        cursors
            .get(&name.to_ascii_lowercase())
            .filter(|cursor| cursor.since == since)
            .map(|cursor| cursor.next.clone())
    }

    /// Saves an endpoint incarnation's cursor durably; ignored once the incarnation is gone.
    async fn save_cursor(
        &self,
        store: &dyn Store,
        name: &str,
        since: u64,
        next: &BTreeMap<u32, u64>,
    ) -> Result<(), StoreError> {
        let mut cursors = self.cursors.lock().await;
        let Some(cursor) = cursors
            .get_mut(&name.to_ascii_lowercase())
            .filter(|cursor| cursor.since == since)
        else {
            return Ok(());
        };
        if cursor.next == *next {
            return Ok(());
        }
        cursor.next = next.clone();
        store.set_meta(CURSORS_META_KEY, &to_json(&*cursors)).await
    }

    pub(crate) fn record_health(&self, name: &str, since: u64, event: HealthEvent<'_>) {
        let now = OffsetDateTime::now_utc();
        let mut health = self.health.lock().expect("routing health lock poisoned");
        let state = health
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| EndpointHealthState::new(since));
        if state.since != since {
            *state = EndpointHealthState::new(since);
        }
        match event {
            HealthEvent::Delivered(count) => {
                state.status = EndpointHealthStatus::Healthy;
                state.last_success = Some(now);
                state.last_attempt = Some(now);
                state.delivered += count;
            }
            HealthEvent::Failed(error) => {
                state.status = EndpointHealthStatus::Unhealthy;
                state.last_error = Some(error.to_owned());
                state.last_error_time = Some(now);
                state.last_attempt = Some(now);
            }
            HealthEvent::DeadLettered(count) => {
                state.status = EndpointHealthStatus::Dead;
                state.dead_lettered += count;
            }
            HealthEvent::Cursor(cursor) => state.cursor = cursor.clone(),
        }
    }

    /// Every custom endpoint's health and every route's counters.
    pub async fn health(&self, events: &dyn EventLog) -> RoutingHealth {
        let current = self.current();
        let cursors = self.cursors.lock().await.clone();
        let health = self
            .health
            .lock()
            .expect("routing health lock poisoned")
            .clone();
        let endpoints = current
            .endpoints
            .iter()
            .map(|endpoint| {
                let key = endpoint.name.to_ascii_lowercase();
                let state = health
                    .get(&key)
                    .filter(|state| state.since == endpoint.since)
                    .cloned()
                    .unwrap_or_else(|| EndpointHealthState::new(endpoint.since));
                let cursor = if state.cursor.is_empty() {
                    cursors
                        .get(&key)
                        .map(|cursor| cursor.next.clone())
                        .unwrap_or_default()
                } else {
                    state.cursor.clone()
                };
                EndpointHealthData {
                    endpoint_id: endpoint.name.clone(),
                    endpoint_type: endpoint.kind.endpoint_type(),
                    health_status: state.status,
                    last_known_error: state.last_error,
                    last_known_error_time: state.last_error_time,
                    last_successful_send_attempt_time: state.last_success,
                    last_send_attempt_time: state.last_attempt,
                    delivered: state.delivered,
                    dead_lettered: state.dead_lettered,
                    unread_events: unread(events, &cursor),
                }
            })
            .collect();
        RoutingHealth {
            endpoints,
            routes: current.statistics(),
        }
    }

    /// Each custom endpoint's delivery figures, for `GET /metrics`.
    pub async fn endpoint_figures(
        &self,
        events: &dyn EventLog,
    ) -> Vec<crate::metrics::EndpointFigures> {
        self.health(events)
            .await
            .endpoints
            .into_iter()
            .map(|endpoint| crate::metrics::EndpointFigures {
                name: endpoint.endpoint_id,
                status: match endpoint.health_status {
                    EndpointHealthStatus::Unknown => "unknown",
                    EndpointHealthStatus::Healthy => "healthy",
                    EndpointHealthStatus::Unhealthy => "unhealthy",
                    EndpointHealthStatus::Dead => "dead",
                },
                delivered: endpoint.delivered,
                dead_lettered: endpoint.dead_lettered,
                unread: endpoint.unread_events,
            })
            .collect()
    }

    /// Routes a telemetry message (device or module): the event to append, stamped with where it goes, or
    /// `None` when it goes nowhere. Loads the twin only if the configuration needs it.
    pub async fn route_telemetry(
        &self,
        services: &Services,
        mut event: NewEvent,
    ) -> Option<NewEvent> {
        let routing = self.current();
        if routing.plain_device_messages() {
            return Some(event);
        }
        let source = RoutingSource::DeviceMessages;
        let twin = if routing.needs_twin(source) {
            load_twin(services, &event.system_properties).await
        } else {
            None
        };
        let enqueued_time = format_time(OffsetDateTime::now_utc());
        let decision = {
            let mut message = RoutedMessage::new(
                &event.system_properties,
                &event.application_properties,
                &event.body,
            )
            .with_enqueued_time(&enqueued_time);
            if let Some(twin) = &twin {
                message = message.with_twin(twin);
            }
            routing.decide(source, &message, twin.as_ref(), &self.hub_name)
        };
        stamped(&mut event.system_properties, &decision).then_some(event)
    }

    /// Routes one of the hub's own events (twin change, lifecycle, connection state) made from change-feed
    /// record `upstream_sequence`: the event to append, or `None` when no route takes it.
    pub async fn route_notification(
        &self,
        services: &Services,
        notification: Notification,
        upstream_sequence: u64,
    ) -> Option<NewEvent> {
        let routing = self.current();
        let source = notification
            .system_properties
            .iter()
            .find(|(name, _)| name == names::MESSAGE_SOURCE)
            .and_then(|(_, value)| RoutingSource::from_message_source(value));
        let decision = match source {
            // Not a routable source: kept on `events`, as before routing.
            None => Decision {
                endpoints: vec![BUILT_IN_ENDPOINT.to_owned()],
                enrichments: Vec::new(),
            },
            Some(source) => {
                let twin = if routing.needs_twin(source) {
                    load_twin(services, &notification.system_properties).await
                } else {
                    None
                };
                let enqueued_time = format_time(OffsetDateTime::now_utc());
                let mut message = RoutedMessage::with_json_body(
                    &notification.system_properties,
                    &notification.application_properties,
                    &notification.body,
                )
                .with_enqueued_time(&enqueued_time);
                if let Some(twin) = &twin {
                    message = message.with_twin(twin);
                }
                routing.decide(source, &message, twin.as_ref(), &self.hub_name)
            }
        };
        let mut event = NewEvent {
            partition_key: notification.device_id.to_string(),
            body: Bytes::from(
                serde_json::to_vec(&notification.body).expect("JSON always serialises"),
            ),
            system_properties: notification.system_properties,
            application_properties: notification.application_properties,
            upstream_sequence: Some(upstream_sequence),
        };
        stamped(&mut event.system_properties, &decision).then_some(event)
    }
}

/// Adds the stamp for `decision`; `false` when the message goes nowhere.
fn stamped(system_properties: &mut Vec<(String, String)>, decision: &Decision) -> bool {
    if decision.endpoints.is_empty() {
        return false;
    }
    if let Some(stamp) = stamp::encode(decision) {
        system_properties.push((ROUTING_PROPERTY.to_owned(), stamp));
    }
    true
}

/// Routes a telemetry message and queues its append (see [`EventLog::enqueue`]). A message routed nowhere is
/// not appended: its receipt is ready at once, so its PUBACK still goes out in order.
pub async fn enqueue_telemetry(
    services: &Services,
    event: NewEvent,
) -> Result<AppendReceipt, AppendError> {
    match services.routing.route_telemetry(services, event).await {
        Some(event) => {
            services
                .events
                .enqueue(fleethub_eventlog::Append::events(vec![event]))
                .await
        }
        None => Ok(AppendReceipt::new(std::future::ready(Ok(Vec::new())))),
    }
}

/// The event as the built-in `events` endpoint shows it: `None` when it was not routed there; otherwise
/// without the routing stamp and with `events`' enrichments.
pub fn visible_on_events(mut event: StoredEvent) -> Option<StoredEvent> {
    stamp::for_endpoint(
        &mut event.system_properties,
        &mut event.application_properties,
        BUILT_IN_ENDPOINT,
    )
    .then_some(event)
}

/// The twin a message's conditions and enrichments see: the device's, or the module's for a module's
/// message. `None` when it is gone or cannot be read (then `$twin` is undefined, as for Azure).
async fn load_twin(services: &Services, system_properties: &[(String, String)]) -> Option<Value> {
    let property = |name: &str| {
        system_properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let device_id = property(names::CONNECTION_DEVICE_ID)?.parse().ok()?;
    let key = match property(names::CONNECTION_MODULE_ID) {
        Some(module) => IdentityKey::module(device_id, module.parse().ok()?),
        None => IdentityKey::device(device_id),
    };
    match services.store.get(&key).await {
        Ok(record) => record.map(|record| record.twin_json()),
        Err(error) => {
            tracing::warn!(%key, %error, "cannot read the twin for routing; $twin is undefined");
            None
        }
    }
}

/// Per partition, the next offset: where a new endpoint starts.
fn log_end(events: &dyn EventLog) -> BTreeMap<u32, u64> {
    (0..events.partition_count())
        .filter_map(|partition| events.partition_info(partition))
        .map(|info| (info.partition, info.next_offset))
        .collect()
}

/// Per partition, the oldest retained offset.
fn log_start(events: &dyn EventLog) -> BTreeMap<u32, u64> {
    (0..events.partition_count())
        .filter_map(|partition| events.partition_info(partition))
        .map(|info| (info.partition, info.first_offset))
        .collect()
}

/// Events in the log at or after `cursor`.
fn unread(events: &dyn EventLog, cursor: &BTreeMap<u32, u64>) -> u64 {
    (0..events.partition_count())
        .filter_map(|partition| events.partition_info(partition))
        .map(|info| {
            let from = cursor
                .get(&info.partition)
                .copied()
                .unwrap_or(info.first_offset)
                .max(info.first_offset);
            info.next_offset.saturating_sub(from)
        })
        .sum()
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("routing documents always serialise")
}
