//! Desired-property patches on one device connection: QoS 1 delivery where the subscription grants it, what
//! a persistent session's device has of its desired properties, and the catch-up patch it gets when it
//! reconnects.
//!
//! Azure drops the patches of a device that is offline; so do we for clean sessions. A persistent session
//! (clean session 0) subscribed to desired patches keeps, in the store beside its subscriptions, a
//! checkpoint: the desired `$version` the device acknowledged (PUBACK of a QoS 1 patch) or, at QoS 0, was last
//! sent, with the desired properties at that version. On its next connection, right after the CONNACK and
//! before anything else, the device gets one patch from that checkpoint to the current desired properties,
//! carrying the current `$version`, if their content differs (`TwinDocument::desired_catch_up_patch`: every
//! current value, `null` for what was deleted, so the application converges whether it kept its state or
//! restarted).
//!
//! The connection follows what the device has without reading the twin per patch: it keeps the desired
//! properties as of the last patch it published (`sent`) and merges each pushed patch into them. Pushes come
//! in version order (`services::push_desired_patch` runs in commit order); a push that skips a version (the
//! push queue was full) makes the connection read the twin and publish the merge-patch diff to it instead, so
//! a live device no longer misses patches either.
//!
//! Durability: the checkpoint moves forward in memory and is written through the store's writer at most
//! every [`CHECKPOINT_SAVE_INTERVAL`] while patches are acknowledged, and when the connection ends. It only
//! ever lags what the device has, never leads it: after a crash the device may get values it already has
//! again (with a `$version` it may have seen), never miss one. The store refuses to move a checkpoint back,
//! so a connection that was taken over cannot undo what its successor saved.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use fleethub_core::twin::{apply_merge_patch, merge_patch_diff};
use fleethub_mqtt::{Packet, PacketId, Publish, QoS};
use fleethub_protocol::ids::ClientId;
use fleethub_protocol::topics::{self, Subscription};
use fleethub_store::{DesiredCheckpoint, StoredSubscription};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::c2d::Outbox;
use crate::services::Services;

/// How often at most a connection writes its checkpoint while patches are acknowledged.
pub const CHECKPOINT_SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// QoS 1 patches a device may leave unacknowledged; beyond, patches go at QoS 0 (they still count as sent,
/// but the checkpoint waits for an acknowledgement of the newest).
const MAX_IN_FLIGHT: usize = 32;

/// The granted QoS of the desired-patch subscription among a session's stored subscriptions.
pub fn subscription_qos(filters: &[StoredSubscription], client_id: &ClientId) -> Option<QoS> {
    filters
        .iter()
        .find(|stored| {
            topics::parse_device_subscription(&stored.filter, client_id)
                == Ok(Subscription::DesiredPatches)
        })
        .map(|stored| QoS::from_u8(stored.qos).unwrap_or(QoS::AtLeastOnce))
}

/// Desired properties at one `$version`.
#[derive(Clone, Debug)]
struct DesiredState {
    version: u64,
    properties: Arc<Map<String, Value>>,
}

impl DesiredState {
    fn checkpoint(&self) -> DesiredCheckpoint {
        DesiredCheckpoint {
            version: self.version,
            desired: Map::clone(&self.properties),
        }
    }
}

/// One connection's desired-patch delivery. The connection task owns it: [`DesiredPatches::resume`] after
/// the CONNACK, [`DesiredPatches::subscribed`]/[`DesiredPatches::unsubscribed`] on (UN)SUBSCRIBE,
/// [`DesiredPatches::publish`] for each pushed patch, [`DesiredPatches::acknowledged`] on PUBACK and
/// [`DesiredPatches::finish`] at the end.
#[derive(Debug)]
pub struct DesiredPatches {
    /// Clean session 0: the checkpoint is kept.
    persistent: bool,
    /// The granted QoS of the subscription; `None` while not subscribed.
    subscription: Option<QoS>,
    /// Persistent sessions: the desired properties the device has once it took every patch published.
    /// `None` when unknown (not subscribed, or the store failed): patches then go out untracked.
    sent: Option<DesiredState>,
    /// The highest `$version` published on this connection; pushes at or below it are not sent again.
    published: u64,
    /// What the device has for sure: the checkpoint.
    acknowledged: Option<DesiredState>,
    /// The checkpoint version in the store, as far as this connection knows.
    saved_version: Option<u64>,
    /// When this connection last wrote the checkpoint.
    last_save: Option<Instant>,
    /// QoS 1 patches awaiting their PUBACK: packet id and `$version`, oldest first.
    in_flight: VecDeque<(PacketId, u64)>,
}

impl DesiredPatches {
    pub fn new(clean_session: bool, subscription: Option<QoS>) -> Self {
        Self {
            persistent: !clean_session,
            subscription,
            sent: None,
            published: 0,
            acknowledged: None,
            saved_version: None,
            last_save: None,
            in_flight: VecDeque::new(),
        }
    }

    /// Starts following what the device has, for a persistent session subscribed to desired patches: from
    /// its stored checkpoint (returning the catch-up patch to publish first, if the desired content moved
    /// on), or, without one, from the current desired properties (the device is presumed to know those as
    /// it subscribes; the checkpoint is written at once so that a disconnect right after loses nothing).
    /// Call it after the connection is registered with its subscriptions, so that every later push has a
    /// higher version than the twin read here. A store failure is logged and leaves patches untracked.
    pub async fn resume(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
    ) -> Option<Packet> {
        if !self.persistent || self.subscription.is_none() || self.sent.is_some() {
            return None;
        }
        let loaded = async {
            let checkpoint = services.store.load_desired_checkpoint(key).await?;
            let record = services.store.get(key).await?;
            Ok::<_, fleethub_store::StoreError>((checkpoint, record))
        }
        .await;
        let (checkpoint, record) = match loaded {
            Ok((checkpoint, Some(record))) => (checkpoint, record),
            Ok((_, None)) => return None,
            Err(error) => {
                tracing::warn!(device = %key, %error, "desired patches untracked: could not read the checkpoint or the twin");
                return None;
            }
        };
        let current = DesiredState {
            version: record.twin.desired_version(),
            properties: Arc::new(record.twin.desired_properties().clone()),
        };
        self.sent = Some(current.clone());
        let Some(checkpoint) = checkpoint else {
            self.acknowledged = Some(current);
            self.save(services, key).await;
            return None;
        };
        self.saved_version = Some(checkpoint.version);
        // Pushes up to the current version are covered from here on, whether or not a patch goes out.
        self.published = current.version;
        let Some(patch) = record.twin.desired_catch_up_patch(&checkpoint.desired) else {
            self.acknowledged = Some(current);
            return None;
        };
        self.acknowledged = Some(DesiredState {
            version: checkpoint.version,
            properties: Arc::new(checkpoint.desired),
        });
        tracing::debug!(device = %key, from = checkpoint.version, to = current.version, "catching up desired properties");
        Some(self.packet(services, key, outbox, current.version, to_payload(&patch)))
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscription.is_some()
    }

    /// The device subscribed (again) with `qos` granted. A persistent session starts following what the
    /// device has unless it already does (see [`DesiredPatches::resume`]); call it once the subscription is
    /// registered.
    pub async fn subscribed(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
        qos: QoS,
    ) -> Option<Packet> {
        self.subscription = Some(qos);
        self.resume(services, key, outbox).await
    }

    /// The device unsubscribed: nothing is followed any more and the stored checkpoint is forgotten, so a
    /// later subscription starts afresh. Patches in flight may still be acknowledged.
    pub async fn unsubscribed(&mut self, services: &Services, key: &IdentityKey) {
        self.subscription = None;
        self.sent = None;
        self.acknowledged = None;
        self.published = 0;
        self.saved_version = None;
        if self.persistent
            && let Err(error) = services.store.save_desired_checkpoint(key, None).await
        {
            tracing::warn!(device = %key, %error, "could not forget the desired checkpoint");
        }
    }

    /// The packet for a pushed patch of `version`, if it is to go out: a patch the device already has is
    /// not; one that follows a version the connection missed becomes the diff from what the device has to
    /// the current desired properties.
    pub async fn publish(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
        version: u64,
        payload: Bytes,
    ) -> Option<Packet> {
        if version <= self.published {
            return None;
        }
        let Some(sent) = &self.sent else {
            return Some(self.packet(services, key, outbox, version, payload));
        };
        if version <= sent.version {
            // Committed before the subscription's baseline and pushed after it: the device has not seen it.
            return Some(self.packet(services, key, outbox, version, payload));
        }
        if version == sent.version + 1 {
            let patch = match serde_json::from_slice::<Value>(&payload) {
                Ok(Value::Object(mut patch)) => {
                    patch.shift_remove("$version");
                    patch
                }
                _ => {
                    tracing::error!(device = %key, version, "a pushed desired patch is not a JSON object");
                    return None;
                }
            };
            let mut next = self.sent.take().expect("`sent` was just read");
            // Copies the properties only while the checkpoint still shares them.
            apply_merge_patch(Arc::make_mut(&mut next.properties), &patch);
            next.version = version;
            self.sent = Some(next);
            return Some(self.packet(services, key, outbox, version, payload));
        }
        self.resynchronise(services, key, outbox, version).await
    }

    /// A push skipped versions: publish the diff from what the device has to the twin's current desired
    /// properties (at least `version`).
    async fn resynchronise(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
        version: u64,
    ) -> Option<Packet> {
        let sent = self.sent.take()?;
        let record = match services.store.get(key).await {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(device = %key, version, %error, "desired patches untracked: could not read the twin after a missed patch");
                return None;
            }
        };
        let current = DesiredState {
            version: record.twin.desired_version(),
            properties: Arc::new(record.twin.desired_properties().clone()),
        };
        let mut patch = merge_patch_diff(&sent.properties, &current.properties);
        self.sent = Some(current.clone());
        self.published = current.version;
        if patch.is_empty() {
            return None;
        }
        tracing::debug!(device = %key, from = sent.version, to = current.version, "desired patches missed; sending the difference");
        patch.insert("$version".to_owned(), Value::from(current.version));
        let payload = to_payload(&Value::Object(patch));
        Some(self.packet(services, key, outbox, current.version, payload))
    }

    /// The PUBLISH of `payload` as desired `version`, at QoS 1 if the subscription grants it and the device
    /// is not too far behind with its acknowledgements. At QoS 0 the patch counts as the device's at once.
    fn packet(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
        version: u64,
        payload: Bytes,
    ) -> Packet {
        self.published = self.published.max(version);
        let packet_id = match self.subscription {
            Some(QoS::AtLeastOnce | QoS::ExactlyOnce) if self.in_flight.len() < MAX_IN_FLIGHT => {
                let packet_id = outbox.reserve_packet_id(&services.c2d);
                self.in_flight.push_back((packet_id, version));
                Some(packet_id)
            }
            Some(QoS::AtLeastOnce | QoS::ExactlyOnce) => {
                tracing::debug!(device = %key, version, "desired patch at QoS 0: too many unacknowledged");
                None
            }
            _ => {
                if self
                    .sent
                    .as_ref()
                    .is_some_and(|sent| sent.version == version)
                {
                    self.acknowledged = self.sent.clone();
                }
                None
            }
        };
        Packet::Publish(Publish {
            dup: false,
            qos: if packet_id.is_some() {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            retain: false,
            topic: topics::desired_patch_topic(version),
            packet_id,
            payload,
        })
    }

    /// Handles a PUBACK if it acknowledges a desired patch (true), and writes the checkpoint if one is due.
    pub async fn acknowledged(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
        packet_id: PacketId,
    ) -> bool {
        let Some(index) = self
            .in_flight
            .iter()
            .position(|(used, _)| *used == packet_id)
        else {
            return false;
        };
        let (_, version) = self
            .in_flight
            .remove(index)
            .expect("the index was just found");
        outbox.release_packet_id(packet_id);
        // Only an acknowledgement of the newest patch tells which desired properties the device has; one of
        // an older patch leaves the checkpoint where it is (it lags, which is safe).
        if let Some(sent) = &self.sent
            && sent.version == version
        {
            self.acknowledged = Some(sent.clone());
            self.save_if_due(services, key).await;
        }
        true
    }

    /// Writes the checkpoint if it moved and the last write is [`CHECKPOINT_SAVE_INTERVAL`] ago; the
    /// connection calls it on acknowledgements and keep-alive pings.
    pub async fn save_if_due(&mut self, services: &Services, key: &IdentityKey) {
        if self
            .last_save
            .is_none_or(|last| last.elapsed() >= CHECKPOINT_SAVE_INTERVAL)
        {
            self.save(services, key).await;
        }
    }

    /// The connection ends: writes the checkpoint if it moved since the last write.
    pub async fn finish(&mut self, services: &Services, key: &IdentityKey) {
        self.save(services, key).await;
    }

    async fn save(&mut self, services: &Services, key: &IdentityKey) {
        if !self.persistent {
            return;
        }
        let Some(acknowledged) = &self.acknowledged else {
            return;
        };
        if self.saved_version == Some(acknowledged.version) {
            return;
        }
        self.last_save = Some(Instant::now());
        match services
            .store
            .save_desired_checkpoint(key, Some(acknowledged.checkpoint()))
            .await
        {
            Ok(()) => self.saved_version = Some(acknowledged.version),
            Err(error) => {
                tracing::warn!(device = %key, %error, "could not save the desired checkpoint")
            }
        }
    }
}

fn to_payload(patch: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(patch).expect("a JSON value always serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_desired_subscription_qos_is_found_among_the_stored_filters() {
        let client_id: ClientId = "dev1".parse().expect("valid");
        let filters = [
            StoredSubscription {
                filter: "$iothub/methods/POST/#".into(),
                qos: 1,
            },
            StoredSubscription {
                filter: "$iothub/twin/PATCH/properties/desired/#".into(),
                qos: 0,
            },
        ];
        assert_eq!(
            subscription_qos(&filters, &client_id),
            Some(QoS::AtMostOnce)
        );
        assert_eq!(subscription_qos(&filters[..1], &client_id), None);
    }
}
