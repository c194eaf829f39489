//! Desired-property patches on one device connection: QoS 1 delivery where the subscription grants it, what
//! a persistent session's device has of its desired properties, and the catch-up patch it gets when it
//! reconnects.
//!
//! Azure drops the patches of a device that is offline; so do we for clean sessions. A persistent session
//! (clean session 0) subscribed to desired patches keeps, in the store beside its subscriptions, a
//! checkpoint: the desired `$version` the device acknowledged (PUBACK of a QoS 1 patch) or, at QoS 0, was last
//! sent (written to the socket and flushed, not merely queued: [`DesiredPatches::flushed`]), with the desired
//! properties at that version. On its next connection, right after the CONNACK and before anything else, the
//! device gets one patch from that checkpoint to the current desired properties, carrying the current
//! `$version`, if their content differs (`TwinDocument::desired_catch_up_patch`: every current value, `null`
//! for what was deleted, so the application converges whether it kept its state or restarted).
//!
//! The connection follows what the device has without reading the twin per patch: it keeps the desired
//! properties as of the last patch it published (`sent`) and merges each pushed patch into them. Pushes come
//! in version order (`services::push_desired_patch` runs in commit order). When a push is dropped because the
//! connection's push queue is full, the session table flags the connection (`ConnectionShared`), which then
//! reads the twin at its next wake-up and publishes the merge-patch diff from `sent` to it; a push that skips a
//! version does the same. So a live persistent-session device subscribed to desired patches does not miss
//! patches either, unless the twin cannot be read then: the pushed patch (if any) still goes out, untracked,
//! and the next push or reconnect resynchronises. Clean sessions are not followed: like Azure's, their devices
//! miss what a full queue drops (they see it on their next twin GET).
//!
//! Memory: following costs each persistent subscribed connection a copy of its device's desired properties
//! (`sent`, roughly the size of the desired JSON, up to the twin size limit), and a second one while the
//! checkpoint (`acknowledged`) lags behind `sent`; a hub with N such connections holds about N times the
//! desired size. Clean sessions and unsubscribed connections hold none.
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

use crate::c2d::{Deliveries, Outbox};
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
    /// The `$version` of the newest patch queued at QoS 0 and not yet flushed to the socket. It becomes the
    /// checkpoint only at [`DesiredPatches::flushed`]: a connection that ends before its write buffer left
    /// must not record what the device never got.
    unflushed: Option<u64>,
    /// The twin could not be read to resynchronise: `sent` still holds what the device had before, and the
    /// next push reads the twin again instead of merging.
    resync_due: bool,
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
            unflushed: None,
            resync_due: false,
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
        Some(self.packet(
            &services.c2d,
            key,
            outbox,
            current.version,
            to_payload(&patch),
        ))
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
        self.unflushed = None;
        self.resync_due = false;
        if self.persistent
            && let Err(error) = services.store.save_desired_checkpoint(key, None).await
        {
            tracing::warn!(device = %key, %error, "could not forget the desired checkpoint");
        }
    }

    /// The packet for a pushed patch of `version`, if it is to go out: a patch the device already has is
    /// not; one that follows a version the connection missed (or comes while a resynchronisation is due)
    /// becomes the diff from what the device has to the current desired properties.
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
            return Some(self.packet(&services.c2d, key, outbox, version, payload));
        };
        if version <= sent.version {
            // Committed before the subscription's baseline and pushed after it: the device has not seen it.
            return Some(self.packet(&services.c2d, key, outbox, version, payload));
        }
        if version == sent.version + 1 && !self.resync_due {
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
            return Some(self.packet(&services.c2d, key, outbox, version, payload));
        }
        self.resynchronise(services, key, outbox, version, Some(payload))
            .await
    }

    /// The session table dropped a push because the connection's queue was full
    /// (`ConnectionShared::take_desired_resync_signal`): the diff from what the device has to the twin's
    /// current desired properties, if the connection follows the device and the content moved on.
    pub async fn resynchronise_dropped(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
    ) -> Option<Packet> {
        // Not following the device (clean session, not subscribed, or the store failed at resume): no diff.
        self.sent.as_ref()?;
        let published = self.published;
        self.resynchronise(services, key, outbox, published, None)
            .await
    }

    /// Publishes the diff from what the device has to the twin's current desired properties (at least
    /// `version`). `pushed`: the patch of `version` that prompted it, published as it is if the twin
    /// cannot be read.
    async fn resynchronise(
        &mut self,
        services: &Services,
        key: &IdentityKey,
        outbox: &mut Outbox,
        version: u64,
        pushed: Option<Bytes>,
    ) -> Option<Packet> {
        let current = match services.store.get(key).await {
            Ok(Some(record)) => Some(DesiredState {
                version: record.twin.desired_version(),
                properties: Arc::new(record.twin.desired_properties().clone()),
            }),
            Ok(None) => {
                tracing::debug!(device = %key, version, "the twin is gone; desired patch sent as pushed");
                None
            }
            Err(error) => {
                tracing::warn!(device = %key, version, %error, "desired patch sent as pushed: could not read the twin to resynchronise");
                None
            }
        };
        let (version, payload) = self.resynchronised(key, version, pushed, current)?;
        Some(self.packet(&services.c2d, key, outbox, version, payload))
    }

    /// The pure half of [`DesiredPatches::resynchronise`]: given the twin's desired properties as read
    /// (`None`: they could not be), the `$version` and payload to publish, if any. Without them the pushed
    /// patch goes out untracked (the device still gets it), `sent` keeps what the device had before, and
    /// the next push resynchronises again.
    fn resynchronised(
        &mut self,
        key: &IdentityKey,
        version: u64,
        pushed: Option<Bytes>,
        current: Option<DesiredState>,
    ) -> Option<(u64, Bytes)> {
        let (Some(current), Some(sent)) = (current, &self.sent) else {
            self.resync_due = self.sent.is_some();
            return pushed.map(|payload| (version, payload));
        };
        let mut patch = merge_patch_diff(&sent.properties, &current.properties);
        tracing::debug!(device = %key, from = sent.version, to = current.version, "desired patches missed; sending the difference");
        let current_version = current.version;
        self.sent = Some(current);
        self.resync_due = false;
        self.published = self.published.max(current_version);
        if patch.is_empty() {
            return None;
        }
        patch.insert("$version".to_owned(), Value::from(current_version));
        Some((current_version, to_payload(&Value::Object(patch))))
    }

    /// The PUBLISH of `payload` as desired `version`, at QoS 1 if the subscription grants it and the device
    /// is not too far behind with its acknowledgements. At QoS 0 the patch counts as the device's once the
    /// connection has flushed it ([`DesiredPatches::flushed`]).
    fn packet(
        &mut self,
        deliveries: &Deliveries,
        key: &IdentityKey,
        outbox: &mut Outbox,
        version: u64,
        payload: Bytes,
    ) -> Packet {
        self.published = self.published.max(version);
        let packet_id = match self.subscription {
            Some(QoS::AtLeastOnce | QoS::ExactlyOnce) if self.in_flight.len() < MAX_IN_FLIGHT => {
                let packet_id = outbox.reserve_packet_id(deliveries);
                self.in_flight.push_back((packet_id, version));
                Some(packet_id)
            }
            Some(QoS::AtLeastOnce | QoS::ExactlyOnce) => {
                tracing::debug!(device = %key, version, "desired patch at QoS 0: too many unacknowledged");
                None
            }
            _ => {
                self.unflushed = Some(version);
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

    /// The connection wrote and flushed everything it had queued: the newest QoS 0 patch among it, if it
    /// brought the device to `sent`, becomes the checkpoint. Call it only after a successful flush.
    pub fn flushed(&mut self) {
        if let Some(version) = self.unflushed.take()
            && let Some(sent) = &self.sent
            && sent.version == version
        {
            self.acknowledged = Some(sent.clone());
        }
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
    use serde_json::json;

    fn state(version: u64, properties: Value) -> DesiredState {
        let Value::Object(properties) = properties else {
            panic!("desired properties are an object")
        };
        DesiredState {
            version,
            properties: Arc::new(properties),
        }
    }

    /// A persistent session subscribed at `qos` whose device has desired `{"a": 1}` at version 1.
    fn following(qos: QoS) -> (DesiredPatches, IdentityKey, Deliveries, Outbox) {
        let key = IdentityKey::device("dev1".parse().expect("valid"));
        let deliveries = Deliveries::default();
        let outbox = Outbox::new(&key, None, 4, false, &deliveries);
        let mut desired = DesiredPatches::new(false, Some(qos));
        desired.sent = Some(state(1, json!({"a": 1})));
        desired.acknowledged = desired.sent.clone();
        desired.published = 1;
        desired.saved_version = Some(1);
        (desired, key, deliveries, outbox)
    }

    fn checkpoint_version(desired: &DesiredPatches) -> Option<u64> {
        desired.acknowledged.as_ref().map(|state| state.version)
    }

    #[test]
    fn a_qos_0_patch_becomes_the_checkpoint_once_flushed_not_once_queued() {
        let (mut desired, key, deliveries, mut outbox) = following(QoS::AtMostOnce);
        // What `publish` does with the next pushed patch: merge it, then queue its packet.
        desired.sent = Some(state(2, json!({"a": 2})));
        let packet = desired.packet(
            &deliveries,
            &key,
            &mut outbox,
            2,
            Bytes::from_static(br#"{"a":2,"$version":2}"#),
        );
        assert!(matches!(
            packet,
            Packet::Publish(Publish {
                qos: QoS::AtMostOnce,
                ..
            })
        ));
        assert_eq!(
            checkpoint_version(&desired),
            Some(1),
            "queued is not sent: a connection that ends now must not record version 2"
        );
        desired.flushed();
        assert_eq!(checkpoint_version(&desired), Some(2));
        assert_eq!(
            desired
                .acknowledged
                .as_ref()
                .map(|state| Value::Object(Map::clone(&state.properties))),
            Some(json!({"a": 2}))
        );
        desired.flushed();
        assert_eq!(
            checkpoint_version(&desired),
            Some(2),
            "nothing more was queued"
        );
    }

    #[test]
    fn a_flush_counts_only_the_newest_qos_0_patch_and_only_if_it_brought_the_device_to_sent() {
        let (mut desired, key, deliveries, mut outbox) = following(QoS::AtMostOnce);
        // Committed before the baseline and pushed after it: goes out, but `sent` is not its state.
        desired.sent = Some(state(3, json!({"a": 3})));
        desired.packet(&deliveries, &key, &mut outbox, 2, Bytes::from_static(b"{}"));
        desired.flushed();
        assert_eq!(checkpoint_version(&desired), Some(1));
        // Two patches queued before one flush: the newest decides.
        desired.packet(&deliveries, &key, &mut outbox, 2, Bytes::from_static(b"{}"));
        desired.packet(&deliveries, &key, &mut outbox, 3, Bytes::from_static(b"{}"));
        desired.flushed();
        assert_eq!(checkpoint_version(&desired), Some(3));
    }

    #[test]
    fn a_qos_1_patch_waits_for_its_puback_not_for_the_flush() {
        let (mut desired, key, deliveries, mut outbox) = following(QoS::AtLeastOnce);
        desired.sent = Some(state(2, json!({"a": 2})));
        let packet = desired.packet(&deliveries, &key, &mut outbox, 2, Bytes::from_static(b"{}"));
        assert!(matches!(
            packet,
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                ..
            })
        ));
        desired.flushed();
        assert_eq!(checkpoint_version(&desired), Some(1));
    }

    #[test]
    fn a_resynchronisation_that_cannot_read_the_twin_still_sends_the_pushed_patch_and_stays_due() {
        let (mut desired, key, deliveries, mut outbox) = following(QoS::AtMostOnce);
        let pushed = Bytes::from_static(br#"{"c":3,"$version":3}"#);
        // Version 2 was dropped; version 3 arrives and the twin read fails.
        assert_eq!(
            desired.resynchronised(&key, 3, Some(pushed.clone()), None),
            Some((3, pushed.clone())),
            "the device still gets the pushed patch"
        );
        assert!(desired.resync_due);
        assert_eq!(
            desired.sent.as_ref().map(|sent| sent.version),
            Some(1),
            "what the device surely has is unchanged"
        );
        desired.packet(&deliveries, &key, &mut outbox, 3, pushed);
        desired.flushed();
        assert_eq!(
            checkpoint_version(&desired),
            Some(1),
            "an untracked patch does not move the checkpoint"
        );
        assert_eq!(desired.published, 3, "the pushed patch is not sent again");

        // The next attempt reads the twin: the diff from what the device had, at the twin's version.
        let current = state(4, json!({"a": 1, "b": 2, "c": 3}));
        let (version, payload) = desired
            .resynchronised(&key, 4, None, Some(current))
            .expect("the content moved on");
        assert_eq!(version, 4);
        assert_eq!(
            serde_json::from_slice::<Value>(&payload).expect("JSON"),
            json!({"b": 2, "c": 3, "$version": 4})
        );
        assert!(!desired.resync_due);
        assert_eq!(desired.sent.as_ref().map(|sent| sent.version), Some(4));
        assert_eq!(desired.published, 4);
    }

    #[test]
    fn a_resynchronisation_to_the_same_content_sends_nothing() {
        let (mut desired, key, _, _) = following(QoS::AtMostOnce);
        assert_eq!(
            desired.resynchronised(&key, 1, None, Some(state(2, json!({"a": 1})))),
            None
        );
        assert_eq!(desired.sent.as_ref().map(|sent| sent.version), Some(2));
        assert_eq!(desired.published, 2);
    }

    #[test]
    fn an_untracked_connection_publishes_the_pushed_patch_as_it_is() {
        let key = IdentityKey::device("dev1".parse().expect("valid"));
        let mut desired = DesiredPatches::new(true, Some(QoS::AtMostOnce));
        let pushed = Bytes::from_static(br#"{"a":1,"$version":5}"#);
        assert_eq!(
            desired.resynchronised(&key, 5, Some(pushed.clone()), None),
            Some((5, pushed))
        );
        assert!(
            !desired.resync_due,
            "nothing is followed, so nothing is due"
        );
    }

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
