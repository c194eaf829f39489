//! Cloud-to-device (C2D) messages in the hub: a service's send into the device's durable queue, delivery over
//! the device's MQTT connection, the device-side HTTPS receive, the expiry sweep, and the service's feedback.
//!
//! The queue lives in the store (`fleethub_store` `c2d.rs`); nothing here holds a message the store does
//! not. Delivery over MQTT is pulled, not pushed: an enqueue only flags the device's connection
//! ([`DeviceRouter::notify_cloud_to_device`](crate::sessions::DeviceRouter::notify_cloud_to_device)), and the
//! connection's [`Outbox`] reads the queue "after the last sequence number I published". So a wake-up can
//! never be lost or overflow a push queue, messages go out in queue order, and a hub restart loses nothing:
//! the device's next connection (its persistent session still subscribed) reads the queue from the start.
//!
//! Over MQTT a message is published at QoS 1 (at the subscription's QoS when that is 0) and completed when the
//! device's PUBACK arrives; a connection has at most `c2d_in_flight` of them unacknowledged and reads on as
//! PUBACKs come back. A message published but not acknowledged stays in the queue and goes out again on the
//! device's next connection, with DUP set and its original packet id when the hub still knows them
//! ([`Deliveries`]: in memory, so across a hub restart a redelivery carries DUP 0). A QoS 0 subscription
//! (MQTT's "at most once") completes each message as it is published. Messages a device locked over HTTPS
//! and then abandoned, or whose lock ran out, reach its MQTT connection on the next connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleethub_core::identity::IdentityKey;
use fleethub_mqtt::{Packet, PacketId, Publish, QoS};
use fleethub_protocol::c2d::{
    AZURE_FEEDBACK_LOCK_DURATION, AZURE_FEEDBACK_MAX_DELIVERY_COUNT, AZURE_FEEDBACK_TTL,
    AZURE_LOCK_DURATION, AZURE_MAX_DELIVERY_COUNT, AZURE_MAX_QUEUE_DEPTH, C2dRequestError,
    DEFAULT_TTL, FEEDBACK_BATCH_MAX, LockToken, SendC2dRequest, SendC2dResponse,
};
use fleethub_protocol::ids::{ClientId, DeviceId};
use fleethub_protocol::rest::PurgeMessageQueueResult;
use fleethub_protocol::topics::{self, Subscription};
use fleethub_store::{
    C2dAbandoned, C2dReceipt, LockedFeedback, NewC2dMessage, QueuedC2dMessage, ReceiveFeedback,
    StoreError, StoredSubscription,
};
use tokio_util::sync::CancellationToken;

use crate::auth::{DeviceTokenError, authenticate_device_token};
use crate::services::Services;

/// How often the sweep removes expired messages (with their `Expired` feedback) and stale feedback.
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SendC2dError {
    #[error(transparent)]
    Invalid(#[from] C2dRequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a device's HTTPS request for its cloud-to-device messages is refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceAccessError {
    #[error(transparent)]
    Unauthenticated(#[from] DeviceTokenError),
    #[error("the SAS token is for device {token_device}, not {path_device}")]
    OtherDevice {
        token_device: DeviceId,
        path_device: DeviceId,
    },
    #[error("device {0} is disabled")]
    Disabled(DeviceId),
}

/// Checks that the `Authorization` header carries a valid SAS token of `device_id` (its own keys, or a
/// policy with DeviceConnect) and that the device is enabled.
pub async fn authenticate_device(
    services: &Services,
    authorization: Option<&str>,
    device_id: &DeviceId,
) -> Result<(), DeviceAccessError> {
    let now_unix = services.now().unix_timestamp().max(0) as u64;
    let record = authenticate_device_token(services, authorization, now_unix).await?;
    if &record.key.device_id != device_id {
        return Err(DeviceAccessError::OtherDevice {
            token_device: record.key.device_id,
            path_device: device_id.clone(),
        });
    }
    if !record.identity.is_enabled() {
        return Err(DeviceAccessError::Disabled(device_id.clone()));
    }
    Ok(())
}

/// A fresh random (version 4) UUID in its usual text form: message ids the sender did not give, lock tokens.
pub fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn fresh_lock_token() -> LockToken {
    LockToken::new(random_uuid()).expect("a UUID is a valid lock token")
}

/// `POST /devices/{id}/messages/deviceBound`: validates the request, appends the message to the device's
/// queue (at most [`AZURE_MAX_QUEUE_DEPTH`]) and wakes the device's connection.
pub async fn send(
    services: &Services,
    device_id: &DeviceId,
    request: SendC2dRequest,
) -> Result<SendC2dResponse, SendC2dError> {
    let now = services.now();
    let validated = request.validate(now, DEFAULT_TTL, random_uuid())?;
    let queued = services
        .store
        .enqueue_c2d(
            NewC2dMessage {
                device_id: device_id.clone(),
                message: validated.message,
                enqueued_time: now,
                expires: validated.expires,
            },
            AZURE_MAX_QUEUE_DEPTH,
        )
        .await?;
    services.router().notify_cloud_to_device(device_id);
    Ok(SendC2dResponse {
        message_id: queued.message.properties.message_id,
        sequence_number: queued.sequence_number,
        enqueued_time_utc: queued.enqueued_time,
        expiry_time_utc: queued.expires,
    })
}

/// `DELETE /devices/{id}/commands`: empties the device's queue.
pub async fn purge(
    services: &Services,
    device_id: &DeviceId,
) -> Result<PurgeMessageQueueResult, StoreError> {
    let purged = services
        .store
        .purge_c2d_queue(device_id, services.now())
        .await?;
    Ok(PurgeMessageQueueResult {
        total_messages_purged: purged,
        device_id: device_id.clone(),
        module_id: None,
    })
}

/// `GET /messages/serviceBound/feedback`: locks the oldest feedback records as one batch, with Azure's
/// defaults for the batch size, lock, delivery count and time to live.
pub async fn receive_feedback(services: &Services) -> Result<Option<LockedFeedback>, StoreError> {
    services
        .store
        .receive_c2d_feedback(ReceiveFeedback {
            lock_token: fresh_lock_token(),
            lock_duration: AZURE_FEEDBACK_LOCK_DURATION,
            max_records: FEEDBACK_BATCH_MAX,
            max_delivery_count: AZURE_FEEDBACK_MAX_DELIVERY_COUNT,
            ttl: AZURE_FEEDBACK_TTL,
            now: services.now(),
        })
        .await
}

/// The device-side HTTPS receive (`GET /devices/{id}/messages/deviceBound`): locks the device's first
/// deliverable message for a minute.
pub async fn receive_for_device(
    services: &Services,
    device_id: &DeviceId,
) -> Result<Option<QueuedC2dMessage>, StoreError> {
    services
        .store
        .receive_c2d(
            device_id,
            fresh_lock_token(),
            AZURE_LOCK_DURATION,
            services.now(),
        )
        .await
}

/// How a device settles a message it received over HTTPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    Complete,
    Reject,
    Abandon,
}

/// Settles a message received over HTTPS under `lock`. An abandoned message is back in the queue, so the
/// device's MQTT connection (if any) is told.
pub async fn settle_for_device(
    services: &Services,
    device_id: &DeviceId,
    lock: LockToken,
    settlement: Settlement,
) -> Result<(), StoreError> {
    let receipt = C2dReceipt::Lock(lock);
    let now = services.now();
    match settlement {
        Settlement::Complete => services.store.complete_c2d(device_id, receipt, now).await,
        Settlement::Reject => services.store.reject_c2d(device_id, receipt, now).await,
        Settlement::Abandon => {
            let outcome = services
                .store
                .abandon_c2d(device_id, receipt, AZURE_MAX_DELIVERY_COUNT, now)
                .await?;
            if let C2dAbandoned::Requeued { .. } = outcome {
                services.router().notify_cloud_to_device(device_id);
            }
            Ok(())
        }
    }
}

/// The expiry sweep: every [`EXPIRY_SWEEP_INTERVAL`] removes the messages past their expiry (writing their
/// `Expired` feedback) and feedback records past Azure's feedback TTL. An idle hub pays one read per tick.
pub async fn run_expiry(services: Arc<Services>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match services
            .store
            .expire_due_c2d(services.now(), AZURE_FEEDBACK_TTL)
            .await
        {
            Ok(expired) if expired.messages > 0 || expired.feedback_records > 0 => {
                tracing::debug!(
                    messages = expired.messages,
                    feedback_records = expired.feedback_records,
                    "expired cloud-to-device messages and feedback"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not expire cloud-to-device messages")
            }
        }
    }
}

/// What the hub published to each device over MQTT and the device has not acknowledged yet: sequence
/// number → packet id. Outlives connections, so that the next connection of a persistent session redelivers
/// with DUP and the original packet id (MQTT 3.1.1 §4.4); a clean session forgets it. In memory only: the
/// queue itself is durable, this is only how redeliveries are flagged. Bounded by the queue: entries of
/// messages no longer in the queue are pruned when a connection first reads it.
#[derive(Debug, Default)]
pub struct Deliveries {
    devices: Mutex<HashMap<DeviceId, BTreeMap<u64, PacketId>>>,
}

impl Deliveries {
    fn with<T>(
        &self,
        device_id: &DeviceId,
        action: impl FnOnce(&mut BTreeMap<u64, PacketId>) -> T,
    ) -> T {
        let mut devices = self.devices.lock().expect("C2D deliveries lock poisoned");
        let entry = devices.entry(device_id.clone()).or_default();
        let result = action(entry);
        if entry.is_empty() {
            devices.remove(device_id);
        }
        result
    }

    fn forget_device(&self, device_id: &DeviceId) {
        self.devices
            .lock()
            .expect("C2D deliveries lock poisoned")
            .remove(device_id);
    }

    /// How many devices have unacknowledged deliveries (tests check that it is bounded).
    pub fn devices_with_unacknowledged(&self) -> usize {
        self.devices
            .lock()
            .expect("C2D deliveries lock poisoned")
            .len()
    }
}

/// The QoS a connection's stored subscriptions grant cloud-to-device messages, if it has one.
pub fn subscription_qos(filters: &[StoredSubscription], client_id: &ClientId) -> Option<QoS> {
    filters
        .iter()
        .find(|stored| {
            topics::parse_device_subscription(&stored.filter, client_id)
                == Ok(Subscription::CloudToDevice)
        })
        .map(|stored| QoS::from_u8(stored.qos).unwrap_or(QoS::AtLeastOnce))
}

/// One MQTT connection's delivery of its device's queue. The connection task owns it and drives it:
/// [`Outbox::fill`] when [`Outbox::wants_fill`], [`Outbox::acknowledged`] on each PUBACK.
#[derive(Debug)]
pub struct Outbox {
    /// `None` for module connections: Azure has no module queues, so nothing is delivered to them.
    device_id: Option<DeviceId>,
    /// The granted QoS of the C2D subscription; `None` while not subscribed.
    subscription: Option<QoS>,
    window: usize,
    /// This connection's published, unacknowledged messages: packet id and sequence number.
    in_flight: VecDeque<(PacketId, u64)>,
    /// The highest sequence number this connection published; the next read starts after it.
    last_sequence: Option<u64>,
    /// The queue may hold messages this connection has not read.
    read_due: bool,
    next_packet_id: u16,
    /// Packet ids the connection's other QoS 1 publishes (desired patches) hold until their PUBACK.
    reserved: Vec<PacketId>,
}

impl Outbox {
    /// The outbox of a new connection. A clean session forgets what earlier connections left unacknowledged
    /// (it is still in the queue and goes out again, as a first delivery).
    pub fn new(
        key: &IdentityKey,
        subscription: Option<QoS>,
        window: usize,
        clean_session: bool,
        deliveries: &Deliveries,
    ) -> Self {
        let device_id = key.module_id.is_none().then(|| key.device_id.clone());
        if clean_session && let Some(device_id) = &device_id {
            deliveries.forget_device(device_id);
        }
        Self {
            device_id,
            subscription,
            window: window.max(1),
            in_flight: VecDeque::new(),
            last_sequence: None,
            read_due: subscription.is_some(),
            next_packet_id: 0,
            reserved: Vec::new(),
        }
    }

    /// A packet id for another QoS 1 publish of this connection (a desired patch), unused by its messages in
    /// flight and by the device's unacknowledged deliveries, and kept from them until
    /// [`Outbox::release_packet_id`]: packet ids are one space per connection.
    pub fn reserve_packet_id(&mut self, deliveries: &Deliveries) -> PacketId {
        let packet_id = match self.device_id.clone() {
            Some(device_id) => deliveries.with(&device_id, |unacknowledged| {
                self.allocate_packet_id(unacknowledged)
            }),
            None => self.allocate_packet_id(&BTreeMap::new()),
        };
        self.reserved.push(packet_id);
        packet_id
    }

    /// The publish that held `packet_id` was acknowledged (or is forgotten).
    pub fn release_packet_id(&mut self, packet_id: PacketId) {
        self.reserved.retain(|reserved| *reserved != packet_id);
    }

    /// The device subscribed (again) to its messages with `qos` granted.
    pub fn subscribed(&mut self, qos: QoS) {
        self.subscription = Some(qos);
        self.read_due = true;
    }

    /// The device unsubscribed: nothing more is published; what is in flight may still be acknowledged.
    pub fn unsubscribed(&mut self) {
        self.subscription = None;
    }

    /// New messages may be in the queue (the hub was told of an enqueue or an abandon).
    pub fn wake(&mut self) {
        self.read_due = true;
    }

    pub fn wants_fill(&self) -> bool {
        self.read_due
            && self.device_id.is_some()
            && self.subscription.is_some()
            && self.in_flight.len() < self.window
    }

    /// Reads the next messages from the queue and returns their PUBLISH packets, as many as the window has
    /// room for. At QoS 0 each is completed once queued for sending. A store failure is logged and reading
    /// resumes at the next wake-up.
    pub async fn fill(&mut self, services: &Services) -> Vec<Packet> {
        let (Some(device_id), Some(qos)) = (self.device_id.clone(), self.subscription) else {
            return Vec::new();
        };
        let at_least_once = qos != QoS::AtMostOnce;
        let room = if at_least_once {
            self.window - self.in_flight.len()
        } else {
            self.window
        };
        let first_read = self.last_sequence.is_none();
        let now = services.now();
        let messages = match services
            .store
            .pending_c2d_for_device(&device_id, self.last_sequence, room, now)
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(device = %device_id, %error, "could not read the cloud-to-device queue");
                self.read_due = false;
                return Vec::new();
            }
        };
        // A full page means there may be more; otherwise the queue is read to its end.
        self.read_due = messages.len() == room;
        let deliveries = &services.c2d;
        if first_read {
            // What earlier connections left unacknowledged and is no longer in the queue (expired, purged)
            // will never be acknowledged: forget it.
            let listed: Vec<u64> = messages
                .iter()
                .map(|message| message.sequence_number)
                .collect();
            let beyond = if self.read_due {
                listed.last().copied()
            } else {
                None
            };
            deliveries.with(&device_id, |unacknowledged| {
                unacknowledged.retain(|sequence, _| {
                    listed.contains(sequence) || beyond.is_some_and(|last| *sequence > last)
                })
            });
        }
        let mut packets = Vec::with_capacity(messages.len());
        let mut completed = Vec::new();
        for queued in messages {
            let sequence = queued.sequence_number;
            self.last_sequence = Some(sequence);
            let topic = queued.message.devicebound_topic(&device_id);
            let payload = bytes::Bytes::from(queued.message.body);
            if !at_least_once {
                packets.push(Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic,
                    packet_id: None,
                    payload,
                }));
                completed.push(sequence);
                continue;
            }
            let (packet_id, dup) = deliveries.with(&device_id, |unacknowledged| {
                if let Some(packet_id) = unacknowledged.get(&sequence) {
                    return (*packet_id, true);
                }
                let packet_id = self.allocate_packet_id(unacknowledged);
                unacknowledged.insert(sequence, packet_id);
                (packet_id, false)
            });
            self.in_flight.push_back((packet_id, sequence));
            packets.push(Packet::Publish(Publish {
                dup,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic,
                packet_id: Some(packet_id),
                payload,
            }));
        }
        for sequence in completed {
            complete(services, &device_id, sequence).await;
        }
        services.metrics.c2d_published(packets.len());
        packets
    }

    /// A packet id used neither by this connection's messages in flight, nor by its reserved ids, nor by
    /// the device's other unacknowledged deliveries.
    fn allocate_packet_id(&mut self, unacknowledged: &BTreeMap<u64, PacketId>) -> PacketId {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            let Some(candidate) = PacketId::new(self.next_packet_id) else {
                continue;
            };
            let taken = self.in_flight.iter().any(|(used, _)| *used == candidate)
                || self.reserved.contains(&candidate)
                || unacknowledged.values().any(|used| *used == candidate);
            if !taken {
                return candidate;
            }
        }
    }

    /// The device acknowledged `packet_id`: the message is completed (removed from the queue, `Success`
    /// feedback if asked for). A PUBACK naming nothing the hub published is ignored.
    pub async fn acknowledged(&mut self, services: &Services, packet_id: PacketId) {
        let Some(device_id) = self.device_id.clone() else {
            return;
        };
        let published_here = self
            .in_flight
            .iter()
            .position(|(used, _)| *used == packet_id)
            .and_then(|index| self.in_flight.remove(index))
            .map(|(_, sequence)| sequence);
        // Also a message an earlier connection published (the device may acknowledge it late), and not only
        // what `Deliveries` still remembers (a clean session elsewhere may have made it forget).
        let sequence = services.c2d.with(&device_id, |unacknowledged| {
            let remembered = unacknowledged
                .iter()
                .find(|(_, used)| **used == packet_id)
                .map(|(sequence, _)| *sequence);
            let sequence = published_here.or(remembered)?;
            if unacknowledged.get(&sequence) == Some(&packet_id) {
                unacknowledged.remove(&sequence);
            }
            Some(sequence)
        });
        match sequence {
            Some(sequence) => {
                services.metrics.c2d_acknowledged();
                complete(services, &device_id, sequence).await
            }
            None => {
                tracing::debug!(device = %device_id, %packet_id, "ignoring a PUBACK for nothing in flight")
            }
        }
    }
}

async fn complete(services: &Services, device_id: &DeviceId, sequence: u64) {
    match services
        .store
        .complete_c2d(device_id, C2dReceipt::Sequence(sequence), services.now())
        .await
    {
        Ok(()) => {}
        // Expired or purged while the device had it: its feedback already says so.
        Err(StoreError::C2dMessageLockLost { .. }) => {
            tracing::debug!(device = %device_id, sequence, "completed a message no longer in the queue")
        }
        Err(error) => {
            tracing::warn!(device = %device_id, sequence, %error, "could not complete a cloud-to-device message")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_in_text_form_and_lock_tokens() {
        let first = random_uuid();
        assert_eq!(first.len(), 36);
        assert_eq!(
            first.chars().filter(|character| *character == '-').count(),
            4
        );
        assert_eq!(&first[14..15], "4");
        assert!("89ab".contains(&first[19..20]));
        assert_ne!(first, random_uuid());
        assert!(LockToken::new(first).is_ok());
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_zero() {
        let key = IdentityKey::device("dev1".parse().expect("valid"));
        let deliveries = Deliveries::default();
        let mut outbox = Outbox::new(&key, Some(QoS::AtLeastOnce), 4, false, &deliveries);
        let used = BTreeMap::from([
            (7, PacketId::new(1).expect("non-zero")),
            (8, PacketId::new(2).expect("non-zero")),
        ]);
        assert_eq!(outbox.allocate_packet_id(&used).get(), 3);
        outbox.next_packet_id = u16::MAX;
        assert_eq!(outbox.allocate_packet_id(&used).get(), 3);
        let reserved = outbox.reserve_packet_id(&deliveries);
        assert_eq!(reserved.get(), 4);
        outbox.next_packet_id = 0;
        assert_eq!(
            outbox.allocate_packet_id(&BTreeMap::new()).get(),
            1,
            "ids are free again"
        );
        outbox.next_packet_id = 3;
        assert_eq!(
            outbox.allocate_packet_id(&BTreeMap::new()).get(),
            5,
            "a reserved id is skipped"
        );
        outbox.release_packet_id(reserved);
        outbox.next_packet_id = 3;
        assert_eq!(outbox.allocate_packet_id(&BTreeMap::new()).get(), 4);
    }

    #[test]
    fn module_connections_and_unsubscribed_ones_never_read_the_queue() {
        let deliveries = Deliveries::default();
        let module =
            IdentityKey::module("dev1".parse().expect("valid"), "m1".parse().expect("valid"));
        let mut outbox = Outbox::new(&module, Some(QoS::AtLeastOnce), 4, false, &deliveries);
        outbox.wake();
        assert!(!outbox.wants_fill());
        let device = IdentityKey::device("dev1".parse().expect("valid"));
        let mut outbox = Outbox::new(&device, None, 4, false, &deliveries);
        outbox.wake();
        assert!(!outbox.wants_fill());
        outbox.subscribed(QoS::AtLeastOnce);
        assert!(outbox.wants_fill());
    }
}
