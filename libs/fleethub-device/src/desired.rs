//! Desired-property patches: the bounded hand-over from the connection task to the application, and the
//! stream that keeps them in `$version` order, exactly once, across slow applications and reconnections.
//!
//! The stream starts by fetching the twin and yielding the whole desired section, and does the same again
//! after every reconnection (the connection task sends it a resync marker) and whenever the application
//! fell behind. Every item carries its `$version`, and only items with a version above the last one yielded
//! pass, so a patch that the twin already covered, or that the hub delivered twice, is skipped: a change made
//! while the device was offline arrives once, inside the desired section fetched after the reconnection.
//!
//! Backpressure: the connection task never waits for the application (that would stall keep-alive and
//! every other operation of the client). When the channel is full it drops the patch and raises `lagged`;
//! it keeps dropping until the stream has caught up. The stream then discards what is still buffered,
//! fetches the twin, and yields the whole desired section in place of the missed patches, as Azure's SDKs do
//! after a reconnect.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

use crate::client::DeviceClient;
use crate::error::TwinError;

/// Patches buffered between the connection task and a slow application before it must resynchronise.
const PATCH_QUEUE: usize = 16;
/// Pause between attempts to fetch the twin after a failed resynchronisation.
const RESYNC_RETRY: Duration = Duration::from_secs(1);

/// A desired patch as received: the raw payload and the topic's `$version`.
#[derive(Debug)]
pub(crate) struct DesiredPatchMessage {
    pub payload: Bytes,
    pub topic_version: Option<u64>,
}

/// What the connection task hands to the stream.
#[derive(Debug)]
pub(crate) enum DesiredEvent {
    Patch(DesiredPatchMessage),
    /// A new connection is up: patches sent while there was none are lost, so fetch the twin.
    Resync,
}

/// The connection task's end of a [`DesiredPatchStream`].
#[derive(Debug)]
pub(crate) struct DesiredSink {
    sender: mpsc::Sender<DesiredEvent>,
    lagged: Arc<AtomicBool>,
}

/// What became of one patch handed to a [`DesiredSink`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Delivered,
    /// Dropped because the application is behind; it will resynchronise from the twin.
    Dropped,
    /// The stream is gone.
    Closed,
}

impl DesiredSink {
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub fn deliver(&self, message: DesiredPatchMessage) -> Delivery {
        if self.lagged.load(Ordering::Acquire) {
            return Delivery::Dropped;
        }
        self.send(DesiredEvent::Patch(message))
    }

    /// Asks the stream to fetch the twin before anything else it has not yielded yet. `Dropped` here still
    /// resynchronises: the stream finds `lagged` raised.
    pub fn resync(&self) -> Delivery {
        self.send(DesiredEvent::Resync)
    }

    fn send(&self, event: DesiredEvent) -> Delivery {
        match self.sender.try_send(event) {
            Ok(()) => Delivery::Delivered,
            Err(TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                Delivery::Dropped
            }
            Err(TrySendError::Closed(_)) => Delivery::Closed,
        }
    }
}

/// The desired properties as a stream of changes in strictly increasing `$version` order, from
/// [`DeviceClient::desired_patches`].
///
/// Two kinds of items, both JSON objects carrying `"$version"`:
/// - the complete desired section fetched from the twin (with `$metadata`): always the first item, again
///   after every reconnection, and after the application fell more than 16 patches behind. It replaces
///   whatever came before (keys deleted meanwhile are simply absent from it), and it is skipped when its
///   version is not newer than the last item yielded;
/// - a patch exactly as the hub sent it (a JSON merge patch of the desired properties), skipped when its
///   version is at most the last one yielded.
///
/// So applying every item in order (replace on a full section, merge on a patch) tracks the desired state,
/// and each change reaches the application once: a change made while the device was offline arrives in
/// the desired section fetched after the reconnection, and the hub's patch for a version already seen is
/// dropped. Telling the two kinds apart: only the full section carries `$metadata` at the top level. The
/// stream survives reconnections; it ends when the client closes for good (see
/// [`DeviceClient::connection_state`]). It keeps the connection open while it lives, like a
/// [`DeviceClient`] clone.
pub struct DesiredPatchStream {
    inner: Pin<Box<dyn Stream<Item = Value> + Send>>,
}

impl std::fmt::Debug for DesiredPatchStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DesiredPatchStream")
            .finish_non_exhaustive()
    }
}

impl DesiredPatchStream {
    /// The next patch, or `None` once the connection is closed. Cancellation-safe.
    pub async fn next(&mut self) -> Option<Value> {
        std::future::poll_fn(|context| self.inner.as_mut().poll_next(context)).await
    }
}

impl Stream for DesiredPatchStream {
    type Item = Value;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Value>> {
        self.inner.as_mut().poll_next(context)
    }
}

/// A connected pair: the sink goes to the connection task, the stream to the application.
pub(crate) fn patch_channel(client: DeviceClient) -> (DesiredSink, DesiredPatchStream) {
    let (sender, receiver) = mpsc::channel(PATCH_QUEUE);
    let lagged = Arc::new(AtomicBool::new(false));
    let state = StreamState {
        receiver,
        lagged: Arc::clone(&lagged),
        client,
        order: PatchOrder::default(),
        // The first item is the desired state itself.
        resync_pending: true,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let patch = state.next_patch().await?;
        Some((patch, state))
    });
    (
        DesiredSink { sender, lagged },
        DesiredPatchStream {
            inner: Box::pin(stream),
        },
    )
}

struct StreamState {
    receiver: mpsc::Receiver<DesiredEvent>,
    lagged: Arc<AtomicBool>,
    client: DeviceClient,
    order: PatchOrder,
    resync_pending: bool,
}

impl StreamState {
    async fn next_patch(&mut self) -> Option<Value> {
        loop {
            if self.lagged.swap(false, Ordering::AcqRel) {
                self.resync_pending = true;
            }
            if self.resync_pending {
                // Everything buffered was committed before the GET below is sent, so the twin covers it.
                loop {
                    match self.receiver.try_recv() {
                        Ok(_) => {}
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return None,
                    }
                }
                match self.client.get_twin().await {
                    Ok(twin) => {
                        self.resync_pending = false;
                        if let Some(desired) = self.order.admit_full_desired(twin) {
                            return Some(desired);
                        }
                    }
                    // The session drops the sink before it fails requests for good.
                    Err(TwinError::Disconnected) if self.receiver.is_closed() => return None,
                    Err(TwinError::Disconnected) => {
                        // Lost with a connection; the reconnection sends another resync marker, but a
                        // fetch right away costs nothing while the client is reconnecting.
                        tracing::debug!(
                            "the twin fetch for desired properties was cut off; retrying"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot fetch the twin for desired properties; retrying");
                        tokio::time::sleep(RESYNC_RETRY).await;
                    }
                }
                continue;
            }
            match self.receiver.recv().await? {
                DesiredEvent::Patch(message) => {
                    if let Some(patch) = self.order.admit_patch(message) {
                        return Some(patch);
                    }
                }
                DesiredEvent::Resync => self.resync_pending = true,
            }
        }
    }
}

/// Keeps yielded versions strictly increasing.
#[derive(Debug, Default)]
pub(crate) struct PatchOrder {
    last_version: Option<u64>,
}

impl PatchOrder {
    /// The patch to yield, or `None` for a duplicate, an outdated patch or a payload that is not a JSON
    /// object. A patch without any `$version` cannot be ordered and is passed through.
    pub fn admit_patch(&mut self, message: DesiredPatchMessage) -> Option<Value> {
        let patch: Value = match serde_json::from_slice(&message.payload) {
            Ok(patch @ Value::Object(_)) => patch,
            Ok(_) | Err(_) => {
                tracing::warn!("ignoring a desired patch that is not a JSON object");
                return None;
            }
        };
        let version = patch
            .get("$version")
            .and_then(Value::as_u64)
            .or(message.topic_version);
        self.admit_version(version).then_some(patch)
    }

    /// The twin's desired section, if it is newer than everything yielded so far.
    pub fn admit_full_desired(&mut self, mut twin: Value) -> Option<Value> {
        let desired = twin
            .get_mut("desired")
            .map(Value::take)
            .filter(Value::is_object)?;
        let version = desired.get("$version").and_then(Value::as_u64);
        self.admit_version(version).then_some(desired)
    }

    fn admit_version(&mut self, version: Option<u64>) -> bool {
        match (version, self.last_version) {
            (Some(version), Some(last)) if version <= last => false,
            (Some(version), _) => {
                self.last_version = Some(version);
                true
            }
            (None, _) => true,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn sink(sender: mpsc::Sender<DesiredEvent>) -> DesiredSink {
        DesiredSink {
            sender,
            lagged: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(payload: Value, topic_version: Option<u64>) -> DesiredPatchMessage {
        DesiredPatchMessage {
            payload: Bytes::from(payload.to_string()),
            topic_version,
        }
    }

    #[test]
    fn patches_are_yielded_in_strictly_increasing_version_order() {
        let mut order = PatchOrder::default();
        assert!(
            order
                .admit_patch(message(json!({"a": 1, "$version": 2}), Some(2)))
                .is_some()
        );
        assert!(
            order
                .admit_patch(message(json!({"a": 1, "$version": 2}), Some(2)))
                .is_none(),
            "duplicate"
        );
        assert!(
            order
                .admit_patch(message(json!({"a": 0, "$version": 1}), Some(1)))
                .is_none(),
            "outdated"
        );
        assert!(
            order
                .admit_patch(message(json!({"a": 3, "$version": 3}), Some(3)))
                .is_some()
        );
        // The topic's version stands in for a missing body version.
        assert!(
            order
                .admit_patch(message(json!({"a": 4}), Some(3)))
                .is_none()
        );
        assert!(
            order
                .admit_patch(message(json!({"a": 4}), Some(4)))
                .is_some()
        );
        // Nothing to order by: passed through.
        assert!(order.admit_patch(message(json!({"a": 5}), None)).is_some());
        assert!(
            order.admit_patch(message(json!([1, 2]), Some(9))).is_none(),
            "not an object"
        );
        assert_eq!(order.last_version, Some(4));
    }

    #[test]
    fn full_desired_section_replaces_missed_patches_only_when_newer() {
        let mut order = PatchOrder::default();
        assert!(
            order
                .admit_patch(message(json!({"$version": 5}), None))
                .is_some()
        );
        let stale = json!({"desired": {"x": 1, "$version": 5}, "reported": {"$version": 1}});
        assert_eq!(order.admit_full_desired(stale), None);
        let newer = json!({"desired": {"x": 2, "$version": 9}, "reported": {"$version": 1}});
        assert_eq!(
            order.admit_full_desired(newer),
            Some(json!({"x": 2, "$version": 9}))
        );
        assert!(
            order
                .admit_patch(message(json!({"$version": 8}), None))
                .is_none()
        );
        assert!(
            order
                .admit_patch(message(json!({"$version": 10}), None))
                .is_some()
        );
    }

    #[test]
    fn change_made_offline_is_delivered_once_through_the_twin_fetched_after_reconnection() {
        let mut order = PatchOrder::default();
        // Connected: the stream starts with the desired section, then a patch.
        let first = json!({"desired": {"x": 0, "$version": 1}, "reported": {"$version": 1}});
        assert!(order.admit_full_desired(first).is_some());
        assert!(
            order
                .admit_patch(message(json!({"x": 1, "$version": 2}), Some(2)))
                .is_some()
        );
        // Offline: versions 3 and 4 are made. After reconnecting the twin carries both.
        let fetched = json!({"desired": {"x": 4, "$version": 4}, "reported": {"$version": 1}});
        assert_eq!(
            order.admit_full_desired(fetched),
            Some(json!({"x": 4, "$version": 4}))
        );
        // A hub that still pushes what the twin covered, or repeats a patch, is not heard twice.
        for version in [3, 4, 2] {
            assert!(
                order
                    .admit_patch(message(
                        json!({"x": version, "$version": version}),
                        Some(version)
                    ))
                    .is_none(),
                "version {version}"
            );
        }
        // A second reconnection with nothing changed yields nothing.
        let unchanged = json!({"desired": {"x": 4, "$version": 4}, "reported": {"$version": 1}});
        assert_eq!(order.admit_full_desired(unchanged), None);
        assert!(
            order
                .admit_patch(message(json!({"x": 5, "$version": 5}), Some(5)))
                .is_some()
        );
    }

    #[test]
    fn resync_marker_wakes_the_stream_or_raises_lagged_when_the_queue_is_full() {
        let (sender, mut receiver) = mpsc::channel(1);
        let sink = tests_support::sink(sender);
        assert_eq!(sink.resync(), Delivery::Delivered);
        assert!(matches!(receiver.try_recv(), Ok(DesiredEvent::Resync)));
        assert_eq!(
            sink.deliver(message(json!({"$version": 1}), None)),
            Delivery::Delivered
        );
        assert_eq!(sink.resync(), Delivery::Dropped);
        assert!(
            sink.lagged.load(Ordering::Acquire),
            "the stream resyncs anyway"
        );
        drop(receiver);
        assert_eq!(sink.resync(), Delivery::Closed);
    }

    #[test]
    fn full_sink_drops_and_keeps_dropping_until_the_stream_catches_up() {
        let (sender, mut receiver) = mpsc::channel(1);
        let sink = DesiredSink {
            sender,
            lagged: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(
            sink.deliver(message(json!({"$version": 1}), None)),
            Delivery::Delivered
        );
        assert_eq!(
            sink.deliver(message(json!({"$version": 2}), None)),
            Delivery::Dropped
        );
        receiver.try_recv().expect("first patch buffered");
        assert_eq!(
            sink.deliver(message(json!({"$version": 3}), None)),
            Delivery::Dropped,
            "still lagging"
        );
        sink.lagged.store(false, Ordering::Release);
        assert_eq!(
            sink.deliver(message(json!({"$version": 4}), None)),
            Delivery::Delivered
        );
        drop(receiver);
        assert!(sink.is_closed());
        sink.lagged.store(false, Ordering::Release);
        assert_eq!(
            sink.deliver(message(json!({"$version": 5}), None)),
            Delivery::Closed
        );
    }
}
