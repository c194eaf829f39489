//! Who is connected right now, and delivery of pushes (method requests, desired patches, disconnects) to
//! their connections.
//!
//! [`DeviceRouter`] is the seam for scaling out: services only ever talk to a router, never to a connection,
//! so a multi-node hub can route through a message bus to whichever node holds the device's connection.
//! [`SessionTable`] is the single-node implementation: a sharded map from identity to the live connection.
//!
//! Memory matters here (one entry per connected device): a live entry holds one `Arc<ConnectionShared>`,
//! whose queue allocates only while pushes are pending.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::topics::Subscription;
use tokio::sync::{Notify, oneshot};

/// A push to one device connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    DesiredPatch {
        version: u64,
        payload: Bytes,
    },
    MethodRequest {
        method_name: String,
        request_id: String,
        payload: Bytes,
    },
}

/// Why the hub closes a device's connection on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    None = 0,
    TakenOver = 1,
    Disabled = 2,
    Deleted = 3,
    ShuttingDown = 4,
    CredentialsChanged = 5,
}

impl CloseReason {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::TakenOver,
            2 => Self::Disabled,
            3 => Self::Deleted,
            4 => Self::ShuttingDown,
            5 => Self::CredentialsChanged,
            _ => Self::None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::None => "open",
            Self::TakenOver => "another connection with the same client id took over",
            Self::Disabled => "the device was disabled",
            Self::Deleted => "the identity was deleted",
            Self::ShuttingDown => "the hub is shutting down",
            Self::CredentialsChanged => "the identity's credentials changed",
        }
    }
}

/// The set of subscription kinds a connection holds, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionSet(u8);

impl SubscriptionSet {
    const fn bit(kind: Subscription) -> u8 {
        match kind {
            Subscription::TwinResponses => 1,
            Subscription::DesiredPatches => 2,
            Subscription::Methods => 4,
            Subscription::CloudToDevice => 8,
            Subscription::ModuleInputs => 16,
        }
    }

    pub fn contains(self, kind: Subscription) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub fn insert(&mut self, kind: Subscription) {
        self.0 |= Self::bit(kind);
    }

    pub fn remove(&mut self, kind: Subscription) {
        self.0 &= !Self::bit(kind);
    }
}

/// The part of a live connection other tasks may touch: its push queue, its subscriptions, its close flag.
#[derive(Debug)]
pub struct ConnectionShared {
    pub generation: u64,
    queue: Mutex<VecDeque<Outbound>>,
    wake: Notify,
    subscriptions: AtomicU8,
    close: AtomicU8,
    /// Set when the device's cloud-to-device queue may hold messages this connection has not read yet; the
    /// connection reads the queue itself (`c2d.rs`), so a wake-up carries no message and is never lost.
    cloud_to_device_available: AtomicBool,
    /// Set when a desired patch was dropped because the push queue was full; the connection then reads the
    /// twin and sends the device what it missed (`desired.rs`).
    desired_resync_due: AtomicBool,
    /// Unix milliseconds of the last packet from the device, and of the last value written to the store:
    /// activity is coalesced here and flushed periodically, so it costs no write per packet.
    last_activity_ms: AtomicI64,
    flushed_activity_ms: AtomicI64,
    /// The SAS token the connection authenticated with: when an identity's or a policy's keys change, the
    /// connections whose token no longer verifies are closed and the others stay (`Services`).
    credential: Option<fleethub_protocol::sas::SasToken>,
}

impl ConnectionShared {
    fn new(
        generation: u64,
        subscriptions: SubscriptionSet,
        credential: Option<fleethub_protocol::sas::SasToken>,
    ) -> Self {
        Self {
            generation,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            subscriptions: AtomicU8::new(subscriptions.0),
            close: AtomicU8::new(CloseReason::None as u8),
            cloud_to_device_available: AtomicBool::new(false),
            desired_resync_due: AtomicBool::new(false),
            last_activity_ms: AtomicI64::new(0),
            flushed_activity_ms: AtomicI64::new(0),
            credential,
        }
    }

    /// Notes device activity now (cheap: one relaxed store).
    pub fn touch(&self, now_ms: i64) {
        self.last_activity_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The activity time not yet flushed, if any, marking it flushed.
    fn take_unflushed_activity(&self) -> Option<i64> {
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        let flushed = self.flushed_activity_ms.swap(last, Ordering::Relaxed);
        (last > flushed).then_some(last)
    }

    pub fn subscriptions(&self) -> SubscriptionSet {
        SubscriptionSet(self.subscriptions.load(Ordering::Acquire))
    }

    pub fn close_reason(&self) -> CloseReason {
        CloseReason::from_u8(self.close.load(Ordering::Acquire))
    }

    /// Takes every pending push, oldest first.
    pub fn drain(&self, into: &mut Vec<Outbound>) {
        let mut queue = self.queue.lock().expect("session queue lock poisoned");
        into.extend(queue.drain(..));
        if queue.capacity() > 16 {
            // A burst grew the queue; give the memory back while the connection idles.
            queue.shrink_to_fit();
        }
    }

    /// Whether cloud-to-device messages were enqueued since the last call (clears the flag).
    pub fn take_cloud_to_device_signal(&self) -> bool {
        self.cloud_to_device_available.swap(false, Ordering::AcqRel)
    }

    /// Whether a desired patch was dropped since the last call (clears the flag).
    pub fn take_desired_resync_signal(&self) -> bool {
        self.desired_resync_due.swap(false, Ordering::AcqRel)
    }

    /// Resolves when a push is queued, cloud-to-device messages are enqueued, or the connection is asked
    /// to close.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    fn request_close(&self, reason: CloseReason) {
        self.close.store(reason as u8, Ordering::Release);
        self.wake.notify_one();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("the device is not connected")]
    NotConnected,
    #[error("the device is connected but not subscribed")]
    NotSubscribed,
    #[error("the device's queue of pending pushes is full")]
    QueueFull,
}

/// Delivery to devices wherever they are connected. Object-safe; see the module docs.
pub trait DeviceRouter: Send + Sync + 'static {
    /// Queues a push for the device's live connection if it holds the needed subscription.
    fn deliver(
        &self,
        key: &IdentityKey,
        needs: Subscription,
        message: Outbound,
    ) -> Result<(), DeliveryError>;
    /// Waits up to `timeout` until the device is connected with the subscription; true if it is.
    fn wait_for_subscription<'a>(
        &'a self,
        key: &'a IdentityKey,
        needs: Subscription,
        timeout: Duration,
    ) -> fleethub_store::BoxFuture<'a, bool>;
    /// Tells the device's connection, if it is subscribed to cloud-to-device messages, that its queue holds
    /// new ones: the connection reads them from the store after what it has already delivered. Call it after
    /// the enqueue committed.
    fn notify_cloud_to_device(&self, device_id: &fleethub_protocol::ids::DeviceId);
    /// Closes the device's connection, if any.
    fn disconnect(&self, key: &IdentityKey, reason: CloseReason);
    /// Number of live device and module connections.
    fn connected_count(&self) -> u64;
}

#[derive(Default)]
struct Slot {
    live: Option<Arc<ConnectionShared>>,
    waiters: Vec<oneshot::Sender<()>>,
}

/// The single-node session table.
pub struct SessionTable {
    shards: Box<[Mutex<HashMap<IdentityKey, Slot>>]>,
    /// Activity of connections that ended since the last flush.
    departed_activity: Mutex<Vec<(IdentityKey, i64)>>,
    hasher: std::collections::hash_map::RandomState,
    next_generation: AtomicU64,
    connected: AtomicU64,
    queue_depth: usize,
}

const SHARDS: usize = 64;

impl SessionTable {
    pub fn new(queue_depth: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            departed_activity: Mutex::new(Vec::new()),
            hasher: std::collections::hash_map::RandomState::new(),
            next_generation: AtomicU64::new(1),
            connected: AtomicU64::new(0),
            queue_depth,
        }
    }

    fn shard(&self, key: &IdentityKey) -> std::sync::MutexGuard<'_, HashMap<IdentityKey, Slot>> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[index]
            .lock()
            .expect("session shard lock poisoned")
    }

    /// Registers a new live connection, closing any earlier one with the same identity (MQTT's session
    /// takeover). Returns the new connection's shared half.
    pub fn register(
        &self,
        key: &IdentityKey,
        subscriptions: SubscriptionSet,
    ) -> Arc<ConnectionShared> {
        self.register_authenticated(key, subscriptions, None)
    }

    /// [`Self::register`] for a connection that authenticated with `credential`, so that
    /// [`Self::disconnect_revoked`] can tell whether a key change revokes it.
    pub fn register_authenticated(
        &self,
        key: &IdentityKey,
        subscriptions: SubscriptionSet,
        credential: Option<fleethub_protocol::sas::SasToken>,
    ) -> Arc<ConnectionShared> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ConnectionShared::new(generation, subscriptions, credential));
        let mut shard = self.shard(key);
        let slot = shard.entry(key.clone()).or_default();
        match slot.live.replace(Arc::clone(&shared)) {
            Some(previous) => previous.request_close(CloseReason::TakenOver),
            None => {
                self.connected.fetch_add(1, Ordering::Relaxed);
            }
        }
        wake_waiters(slot);
        shared
    }

    /// Records a connection's current subscriptions and wakes anyone waiting for the device.
    pub fn update_subscriptions(
        &self,
        key: &IdentityKey,
        shared: &ConnectionShared,
        subscriptions: SubscriptionSet,
    ) {
        shared
            .subscriptions
            .store(subscriptions.0, Ordering::Release);
        let mut shard = self.shard(key);
        if let Some(slot) = shard.get_mut(key) {
            wake_waiters(slot);
        }
    }

    /// Removes a connection when it ends. Returns false if a newer connection had already taken over,
    /// in which case the caller must not record the device as disconnected.
    pub fn unregister(&self, key: &IdentityKey, generation: u64) -> bool {
        let mut shard = self.shard(key);
        let Entry::Occupied(mut entry) = shard.entry(key.clone()) else {
            return false;
        };
        let current = entry
            .get()
            .live
            .as_ref()
            .is_some_and(|live| live.generation == generation);
        if current {
            if let Some(live) = &entry.get().live
                && let Some(last) = live.take_unflushed_activity()
            {
                self.departed_activity
                    .lock()
                    .expect("activity lock poisoned")
                    .push((key.clone(), last));
            }
            entry.get_mut().live = None;
            self.connected.fetch_sub(1, Ordering::Relaxed);
            if entry.get().waiters.is_empty() {
                entry.remove();
            }
        }
        current
    }

    /// Collects activity not yet written: of live connections and of those that ended since the last call.
    pub fn collect_activity(&self) -> Vec<(IdentityKey, i64)> {
        let mut collected = std::mem::take(
            &mut *self
                .departed_activity
                .lock()
                .expect("activity lock poisoned"),
        );
        for shard in self.shards.iter() {
            for (key, slot) in shard.lock().expect("session shard lock poisoned").iter() {
                if let Some(last) = slot
                    .live
                    .as_ref()
                    .and_then(|live| live.take_unflushed_activity())
                {
                    collected.push((key.clone(), last));
                }
            }
        }
        collected
    }

    /// Closes every live connection (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.shards.iter() {
            for slot in shard.lock().expect("session shard lock poisoned").values() {
                if let Some(live) = &slot.live {
                    live.request_close(reason);
                }
            }
        }
    }

    /// Closes the live connections, of `only` or of every identity, whose credential (the SAS token, if
    /// one was recorded) `still_valid` rejects because keys changed. Returns how many were closed.
    pub fn disconnect_revoked(
        &self,
        only: Option<&IdentityKey>,
        still_valid: impl Fn(&IdentityKey, Option<&fleethub_protocol::sas::SasToken>) -> bool,
    ) -> usize {
        let mut closed = 0;
        let mut check = |key: &IdentityKey, slot: &Slot| {
            if let Some(live) = &slot.live
                && !still_valid(key, live.credential.as_ref())
            {
                live.request_close(CloseReason::CredentialsChanged);
                closed += 1;
            }
        };
        match only {
            Some(key) => {
                if let Some(slot) = self.shard(key).get(key) {
                    check(key, slot);
                }
            }
            None => {
                for shard in self.shards.iter() {
                    for (key, slot) in shard.lock().expect("session shard lock poisoned").iter() {
                        check(key, slot);
                    }
                }
            }
        }
        closed
    }

    /// Closes the connections of a device and all of its modules (device disabled or deleted).
    pub fn disconnect_device_and_modules(
        &self,
        device_id: &fleethub_protocol::ids::DeviceId,
        reason: CloseReason,
    ) {
        for shard in self.shards.iter() {
            for (key, slot) in shard.lock().expect("session shard lock poisoned").iter() {
                if &key.device_id == device_id
                    && let Some(live) = &slot.live
                {
                    live.request_close(reason);
                }
            }
        }
    }
}

fn wake_waiters(slot: &mut Slot) {
    for waiter in slot.waiters.drain(..) {
        let _ = waiter.send(());
    }
}

impl DeviceRouter for SessionTable {
    fn deliver(
        &self,
        key: &IdentityKey,
        needs: Subscription,
        message: Outbound,
    ) -> Result<(), DeliveryError> {
        let live = {
            let shard = self.shard(key);
            shard
                .get(key)
                .and_then(|slot| slot.live.clone())
                .ok_or(DeliveryError::NotConnected)?
        };
        if !live.subscriptions().contains(needs) {
            return Err(DeliveryError::NotSubscribed);
        }
        {
            let mut queue = live.queue.lock().expect("session queue lock poisoned");
            if queue.len() >= self.queue_depth {
                if matches!(message, Outbound::DesiredPatch { .. }) {
                    // Not lost: the connection resynchronises from the twin once it drains its queue.
                    live.desired_resync_due.store(true, Ordering::Release);
                    drop(queue);
                    live.wake.notify_one();
                }
                return Err(DeliveryError::QueueFull);
            }
            queue.push_back(message);
        }
        live.wake.notify_one();
        Ok(())
    }

    fn wait_for_subscription<'a>(
        &'a self,
        key: &'a IdentityKey,
        needs: Subscription,
        timeout: Duration,
    ) -> fleethub_store::BoxFuture<'a, bool> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let waiter = {
                    let mut shard = self.shard(key);
                    let slot = shard.entry(key.clone()).or_default();
                    if slot
                        .live
                        .as_ref()
                        .is_some_and(|live| live.subscriptions().contains(needs))
                    {
                        return true;
                    }
                    if timeout.is_zero() {
                        if slot.live.is_none() && slot.waiters.is_empty() {
                            shard.remove(key);
                        }
                        return false;
                    }
                    let (sender, receiver) = oneshot::channel();
                    slot.waiters.push(sender);
                    receiver
                };
                if tokio::time::timeout_at(deadline, waiter).await.is_err() {
                    // Timed out: drop our waiter and the slot if nothing else uses it.
                    let mut shard = self.shard(key);
                    if let Some(slot) = shard.get_mut(key) {
                        slot.waiters.retain(|waiter| !waiter.is_closed());
                        let subscribed = slot
                            .live
                            .as_ref()
                            .is_some_and(|live| live.subscriptions().contains(needs));
                        if slot.live.is_none() && slot.waiters.is_empty() {
                            shard.remove(key);
                        }
                        return subscribed;
                    }
                    return false;
                }
            }
        })
    }

    fn notify_cloud_to_device(&self, device_id: &fleethub_protocol::ids::DeviceId) {
        let key = IdentityKey::device(device_id.clone());
        let live = self
            .shard(&key)
            .get(&key)
            .and_then(|slot| slot.live.clone());
        if let Some(live) = live
            && live.subscriptions().contains(Subscription::CloudToDevice)
        {
            live.cloud_to_device_available
                .store(true, Ordering::Release);
            live.wake.notify_one();
        }
    }

    fn disconnect(&self, key: &IdentityKey, reason: CloseReason) {
        if let Some(live) = self.shard(key).get(key).and_then(|slot| slot.live.clone()) {
            live.request_close(reason);
        }
    }

    fn connected_count(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> IdentityKey {
        IdentityKey::device(id.parse().unwrap())
    }

    fn methods() -> SubscriptionSet {
        let mut set = SubscriptionSet::default();
        set.insert(Subscription::Methods);
        set
    }

    #[test]
    fn delivery_needs_a_live_subscribed_connection() {
        let table = SessionTable::new(2);
        let message = || Outbound::DesiredPatch {
            version: 1,
            payload: Bytes::from_static(b"{}"),
        };
        assert_eq!(
            table.deliver(&key("a"), Subscription::Methods, message()),
            Err(DeliveryError::NotConnected)
        );
        let shared = table.register(&key("a"), SubscriptionSet::default());
        assert_eq!(
            table.deliver(&key("a"), Subscription::Methods, message()),
            Err(DeliveryError::NotSubscribed)
        );
        table.update_subscriptions(&key("a"), &shared, methods());
        assert_eq!(
            table.deliver(&key("a"), Subscription::Methods, message()),
            Ok(())
        );
        assert_eq!(
            table.deliver(&key("a"), Subscription::Methods, message()),
            Ok(())
        );
        assert_eq!(
            table.deliver(&key("a"), Subscription::Methods, message()),
            Err(DeliveryError::QueueFull)
        );
        let mut drained = Vec::new();
        shared.drain(&mut drained);
        assert_eq!(drained.len(), 2);
    }

    #[test]
    fn a_desired_patch_dropped_for_a_full_queue_flags_the_connection_to_resynchronise() {
        let table = SessionTable::new(1);
        let shared = table.register(&key("a"), SubscriptionSet::default());
        let mut set = SubscriptionSet::default();
        set.insert(Subscription::DesiredPatches);
        set.insert(Subscription::Methods);
        table.update_subscriptions(&key("a"), &shared, set);
        let patch = |version| Outbound::DesiredPatch {
            version,
            payload: Bytes::from_static(b"{}"),
        };
        let method = || Outbound::MethodRequest {
            method_name: "reboot".into(),
            request_id: "1".into(),
            payload: Bytes::new(),
        };
        assert_eq!(
            table.deliver(&key("a"), Subscription::DesiredPatches, patch(1)),
            Ok(())
        );
        assert_eq!(
            table.deliver(&key("a"), Subscription::Methods, method()),
            Err(DeliveryError::QueueFull)
        );
        assert!(
            !shared.take_desired_resync_signal(),
            "a dropped method request is not a missed patch"
        );
        assert_eq!(
            table.deliver(&key("a"), Subscription::DesiredPatches, patch(2)),
            Err(DeliveryError::QueueFull)
        );
        assert!(shared.take_desired_resync_signal());
        assert!(!shared.take_desired_resync_signal(), "taking clears it");
    }

    #[test]
    fn cloud_to_device_wake_ups_reach_subscribed_device_connections_only_and_coalesce() {
        let table = SessionTable::new(2);
        let device: fleethub_protocol::ids::DeviceId = "a".parse().unwrap();
        table.notify_cloud_to_device(&device);
        let shared = table.register(&key("a"), SubscriptionSet::default());
        table.notify_cloud_to_device(&device);
        assert!(!shared.take_cloud_to_device_signal(), "not subscribed");
        let mut set = SubscriptionSet::default();
        set.insert(Subscription::CloudToDevice);
        table.update_subscriptions(&key("a"), &shared, set);
        for _ in 0..10 {
            table.notify_cloud_to_device(&device);
        }
        assert!(shared.take_cloud_to_device_signal());
        assert!(
            !shared.take_cloud_to_device_signal(),
            "ten enqueues are one wake-up"
        );
        let module = IdentityKey::module(device.clone(), "m".parse().unwrap());
        let module_shared = table.register(&module, set);
        table.notify_cloud_to_device(&device);
        assert!(
            !module_shared.take_cloud_to_device_signal(),
            "modules have no queue"
        );
        let mut drained = Vec::new();
        shared.drain(&mut drained);
        assert!(
            drained.is_empty(),
            "a wake-up takes no room in the push queue"
        );
    }

    #[test]
    fn a_second_connection_takes_over_and_the_first_cannot_unregister_it() {
        let table = SessionTable::new(8);
        let first = table.register(&key("a"), methods());
        let second = table.register(&key("a"), methods());
        assert_eq!(first.close_reason(), CloseReason::TakenOver);
        assert_eq!(second.close_reason(), CloseReason::None);
        assert_eq!(table.connected_count(), 1);
        assert!(
            !table.unregister(&key("a"), first.generation),
            "the old connection is not current"
        );
        assert_eq!(table.connected_count(), 1);
        assert!(table.unregister(&key("a"), second.generation));
        assert_eq!(table.connected_count(), 0);
    }

    #[test]
    fn activity_is_collected_once_per_change_including_after_disconnect() {
        let table = SessionTable::new(8);
        let shared = table.register(&key("a"), methods());
        assert!(table.collect_activity().is_empty());
        shared.touch(1_000);
        assert_eq!(table.collect_activity(), vec![(key("a"), 1_000)]);
        assert!(
            table.collect_activity().is_empty(),
            "nothing new, nothing written"
        );
        shared.touch(2_000);
        assert!(table.unregister(&key("a"), shared.generation));
        assert_eq!(
            table.collect_activity(),
            vec![(key("a"), 2_000)],
            "the last activity survives the disconnect"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_subscription_wakes_on_subscribe_and_times_out_otherwise() {
        let table = Arc::new(SessionTable::new(8));
        assert!(
            !table
                .wait_for_subscription(&key("a"), Subscription::Methods, Duration::ZERO)
                .await
        );
        let waiting = {
            let table = Arc::clone(&table);
            tokio::spawn(async move {
                table
                    .wait_for_subscription(
                        &key("a"),
                        Subscription::Methods,
                        Duration::from_secs(30),
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        let shared = table.register(&key("a"), SubscriptionSet::default());
        tokio::task::yield_now().await;
        table.update_subscriptions(&key("a"), &shared, methods());
        assert!(waiting.await.unwrap());
        assert!(
            !table
                .wait_for_subscription(&key("b"), Subscription::Methods, Duration::from_secs(5))
                .await
        );
        assert!(
            table
                .shards
                .iter()
                .all(|shard| !shard.lock().unwrap().contains_key(&key("b"))),
            "no leak"
        );
    }
}
