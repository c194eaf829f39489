//! The client side of MQTT sessions with IoT Hub as a state machine without I/O: requests from the
//! application and packets from the hub go in, packets to send come out, and time is passed in.
//!
//! It owns packet-id allocation and PUBACK/SUBACK tracking, `$rid` correlation of twin requests, lazy
//! subscriptions (the first twin request subscribes `$iothub/twin/res/#` and is sent only after the SUBACK,
//! as Azure's C SDK does), keep-alive, and the hand-over of desired patches and method requests.
//!
//! One `Session` outlives the connections under it. [`Session::connection_lost`] and
//! [`Session::connected`] carry it across a reconnect:
//! - every subscription is requested again (harmless with a hub that kept them, required with one that did
//!   not), before anything else on the new connection;
//! - unacknowledged QoS 1 publishes (twin requests, method responses, device-to-cloud messages) are re-sent
//!   in their original order, with DUP set when they may have reached the hub;
//! - twin requests keep waiting until their deadline. A GET whose response was lost is sent again; a
//!   reported patch the hub had acknowledged but not answered fails with `Disconnected` at once (it may have
//!   been applied, and sending it again could apply it after a later patch); a request still waiting for a
//!   reconnection when its deadline passes fails with `Disconnected`, not `Timeout`;
//! - the desired-patch stream is told to resynchronise from the twin, and the method handler stays;
//! - cloud-to-device messages the application had not taken yet are not acknowledged: the hub delivers them
//!   again, and an acknowledgement meant for the old connection is dropped (packet ids are per connection).
//!
//! Invariants: every request that enters gets exactly one answer on its reply channel (response, error,
//! timeout, or `Disconnected`); no twin request outlives its deadline; packet ids in flight are unique; while
//! disconnected nothing is queued for sending (the queue is rebuilt from the in-flight table on
//! reconnection). The number of entries is bounded by the callers' permits (twin requests, method calls)
//! plus one SUBSCRIBE per subscription kind, connected or not.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleethub_mqtt::{Packet, PacketId, Publish, QoS, SubAck, Subscribe, SubscribeReturnCode};
use fleethub_protocol::ids::ClientId;
use fleethub_protocol::topics::{self, HubTopic, Subscription};
use serde_json::json;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use crate::c2d::{C2D_QUEUE, C2dSink, CloudToDeviceMessage, Delivered, PendingAck};
use crate::connection::DisconnectReason;
use crate::desired::{Delivery, DesiredPatchMessage, DesiredSink};
use crate::error::{DisconnectError, SendError, SubscribeError, TwinError};
use crate::methods::{
    MAX_CONCURRENT_METHOD_CALLS, MethodCall, MethodHandler, MethodResponseMessage,
};
use crate::telemetry::SendReply;
use crate::twin::{TwinRequest, TwinResponse};

pub(crate) type SubscribeReply = oneshot::Sender<Result<(), SubscribeError>>;
pub(crate) type TwinReply = oneshot::Sender<Result<TwinResponse, TwinError>>;
pub(crate) type DisconnectReply = oneshot::Sender<Result<(), DisconnectError>>;

/// What client handles send to the connection task. Variants are boxed so that the channel's slots (allocated
/// up front, per client) stay one pointer wide.
#[derive(Debug)]
pub(crate) enum Command {
    Request(Request),
    Disconnect(DisconnectReply),
}

/// The commands the session itself handles.
pub(crate) enum Request {
    Twin(Box<TwinCommand>),
    DesiredPatches(Box<DesiredPatchesCommand>),
    OnMethod(Box<OnMethodCommand>),
    MethodResponse(Box<MethodResponseMessage>),
    Telemetry(Box<TelemetryCommand>),
    CloudToDevice(Box<CloudToDeviceCommand>),
    /// The application has the cloud-to-device message: PUBACK it, if its connection is still the current.
    AcknowledgeCloudToDevice(PendingAck),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Request::Twin(_) => "Twin",
            Request::DesiredPatches(_) => "DesiredPatches",
            Request::OnMethod(_) => "OnMethod",
            Request::MethodResponse(_) => "MethodResponse",
            Request::Telemetry(_) => "Telemetry",
            Request::CloudToDevice(_) => "CloudToDevice",
            Request::AcknowledgeCloudToDevice(_) => "AcknowledgeCloudToDevice",
        })
    }
}

pub(crate) struct TwinCommand {
    pub request: TwinRequest,
    /// The session answers by this instant at the latest; the caller waits a little longer.
    pub deadline: Instant,
    pub timeout: Duration,
    pub reply: TwinReply,
}

/// A device-to-cloud message to publish: at QoS 1 answered at its PUBACK (re-sent across reconnections until
/// then), at QoS 0 answered once queued on a live connection.
pub(crate) struct TelemetryCommand {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub reply: SendReply,
}

pub(crate) struct DesiredPatchesCommand {
    pub sink: DesiredSink,
    pub reply: SubscribeReply,
}

pub(crate) struct CloudToDeviceCommand {
    pub sink: C2dSink,
    pub reply: SubscribeReply,
}

pub(crate) struct OnMethodCommand {
    pub handler: MethodHandler,
    pub reply: SubscribeReply,
}

/// A packet we sent (or will send) that the hub has not acknowledged yet.
#[derive(Debug)]
enum InFlight {
    Publish(InFlightPublish),
    Subscribe(Subscription),
}

#[derive(Debug)]
struct InFlightPublish {
    /// Kept whole so that it can be re-sent with DUP set after a reconnect.
    publish: Publish,
    /// Publishes are re-sent in the order they were first queued.
    sequence: u64,
    /// Handed to a connection at least once, so the hub may have it: a re-send carries DUP.
    transmitted: bool,
    /// The twin request this publish carries, if any.
    twin_request: Option<u64>,
    /// Who waits for this message's PUBACK (device-to-cloud messages).
    sent_reply: Option<SendReply>,
}

#[derive(Debug)]
enum SubscriptionState {
    Pending(Vec<SubscribeWaiter>),
    Active,
}

/// Who is waiting for a SUBACK.
#[derive(Debug)]
enum SubscribeWaiter {
    Caller(SubscribeReply),
    /// A twin request held back until `$iothub/twin/res/#` is active.
    TwinRequest(u64),
}

struct PendingTwinRequest {
    deadline: Instant,
    timeout: Duration,
    reply: TwinReply,
    is_get: bool,
    stage: TwinStage,
}

enum TwinStage {
    /// Waiting for `$iothub/twin/res/#`, with the topic and payload to publish then.
    AwaitingSubscription(String, Bytes),
    /// Published; the PUBACK has not come (the in-flight table re-sends it after a reconnect).
    Published,
    /// The hub acknowledged it; only the response is missing.
    Acknowledged,
}

struct MethodDispatcher {
    handler: MethodHandler,
    permits: Arc<Semaphore>,
}

pub(crate) struct Session {
    client_id: ClientId,
    keep_alive: Option<Duration>,
    /// A connection is up; packets may be queued for it.
    connected: bool,
    last_sent: Instant,
    ping_sent_at: Option<Instant>,
    last_packet_id: u16,
    last_request_id: u64,
    last_publish_sequence: u64,
    outgoing: VecDeque<Packet>,
    in_flight: HashMap<PacketId, InFlight>,
    twin_requests: HashMap<u64, PendingTwinRequest>,
    subscriptions: HashMap<Subscription, SubscriptionState>,
    desired: Option<DesiredSink>,
    methods: Option<MethodDispatcher>,
    /// Where cloud-to-device messages go; `None` while nobody reads them.
    c2d: Option<C2dSink>,
    /// Cloud-to-device messages that arrived while nobody read them (a persistent session delivers before
    /// the application asks), unacknowledged, for the next stream; at most [`C2D_QUEUE`].
    c2d_backlog: VecDeque<Delivered>,
    /// Counts connections, so that a PUBACK is only sent on the connection its publish came on.
    connection_number: u64,
}

impl Session {
    /// A session for a connection that was just accepted at `now`. `keep_alive` of zero turns pings off.
    pub fn new(client_id: ClientId, keep_alive: Duration, now: Instant) -> Self {
        Self {
            client_id,
            keep_alive: (!keep_alive.is_zero()).then_some(keep_alive),
            connected: true,
            last_sent: now,
            ping_sent_at: None,
            last_packet_id: 0,
            last_request_id: 0,
            last_publish_sequence: 0,
            outgoing: VecDeque::new(),
            in_flight: HashMap::new(),
            twin_requests: HashMap::new(),
            subscriptions: HashMap::new(),
            desired: None,
            methods: None,
            c2d: None,
            c2d_backlog: VecDeque::new(),
            connection_number: 0,
        }
    }

    /// The next packet to write. Writing counts as activity for keep-alive.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        let packet = self.outgoing.pop_front()?;
        if let Packet::Publish(Publish {
            packet_id: Some(packet_id),
            ..
        }) = &packet
            && let Some(InFlight::Publish(in_flight)) = self.in_flight.get_mut(packet_id)
        {
            in_flight.transmitted = true;
        }
        self.last_sent = now;
        Some(packet)
    }

    /// When [`Session::on_timer`] must run next: the earliest twin deadline or, while connected, keep-alive
    /// event.
    pub fn next_deadline(&self) -> Option<Instant> {
        let keep_alive = self
            .keep_alive
            .filter(|_| self.connected)
            .map(|interval| self.ping_sent_at.unwrap_or(self.last_sent) + interval);
        let twin = self
            .twin_requests
            .values()
            .map(|request| request.deadline)
            .min();
        keep_alive.into_iter().chain(twin).min()
    }

    /// Expires twin requests and drives keep-alive. An error means the hub stopped answering pings.
    pub fn on_timer(&mut self, now: Instant) -> Result<(), DisconnectReason> {
        let expired: Vec<u64> = self
            .twin_requests
            .iter()
            .filter(|(_, request)| request.deadline <= now)
            .map(|(request_id, _)| *request_id)
            .collect();
        for request_id in expired {
            if let Some(request) = self.twin_requests.remove(&request_id) {
                let error = if self.connected {
                    TwinError::Timeout(request.timeout)
                } else {
                    TwinError::Disconnected
                };
                let _ = request.reply.send(Err(error));
            }
        }
        if !self.connected {
            return Ok(());
        }
        if let Some(interval) = self.keep_alive {
            match self.ping_sent_at {
                Some(sent) if now >= sent + interval => {
                    return Err(DisconnectReason::KeepAliveTimeout);
                }
                Some(_) => {}
                None if now >= self.last_sent + interval => {
                    self.outgoing.push_back(Packet::PingReq);
                    self.ping_sent_at = Some(now);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Nothing is waiting for the hub or for a method handler: no unacknowledged packet, no twin request,
    /// nothing queued, no method call running. A planned reconnection (token renewal) waits for this so that
    /// it interrupts nothing.
    pub fn is_quiet(&self) -> bool {
        let no_method_running = self.methods.as_ref().is_none_or(|methods| {
            methods.permits.available_permits() == MAX_CONCURRENT_METHOD_CALLS
        });
        self.in_flight.is_empty()
            && self.twin_requests.is_empty()
            && self.outgoing.is_empty()
            && no_method_running
    }

    pub fn handle_request(&mut self, request: Request) {
        match request {
            Request::Twin(command) => self.start_twin_request(*command),
            Request::DesiredPatches(command) => {
                let DesiredPatchesCommand { sink, reply } = *command;
                if self
                    .desired
                    .as_ref()
                    .is_some_and(|current| !current.is_closed())
                {
                    let _ = reply.send(Err(SubscribeError::AlreadyActive));
                    return;
                }
                self.desired = Some(sink);
                self.ensure_subscribed(
                    Subscription::DesiredPatches,
                    SubscribeWaiter::Caller(reply),
                );
            }
            Request::OnMethod(command) => {
                let OnMethodCommand { handler, reply } = *command;
                let permits = match self.methods.take() {
                    Some(previous) => previous.permits,
                    None => Arc::new(Semaphore::new(MAX_CONCURRENT_METHOD_CALLS)),
                };
                self.methods = Some(MethodDispatcher { handler, permits });
                self.ensure_subscribed(Subscription::Methods, SubscribeWaiter::Caller(reply));
            }
            Request::MethodResponse(message) => {
                let MethodResponseMessage {
                    status,
                    request_id,
                    payload,
                    permit,
                } = *message;
                self.publish(
                    topics::method_response_topic(status, &request_id),
                    payload,
                    None,
                );
                drop(permit);
            }
            Request::Telemetry(command) => {
                let TelemetryCommand {
                    topic,
                    payload,
                    qos,
                    reply,
                } = *command;
                if qos == QoS::AtMostOnce {
                    if !self.connected {
                        let _ = reply.send(Err(SendError::Disconnected));
                        return;
                    }
                    self.outgoing.push_back(Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic,
                        packet_id: None,
                        payload,
                    }));
                    let _ = reply.send(Ok(()));
                } else {
                    self.publish_tracked(topic, payload, None, Some(reply));
                }
            }
            Request::CloudToDevice(command) => {
                let CloudToDeviceCommand { sink, reply } = *command;
                if self
                    .c2d
                    .as_ref()
                    .is_some_and(|current| !current.is_closed())
                {
                    let _ = reply.send(Err(SubscribeError::AlreadyActive));
                    return;
                }
                while let Some(delivered) = self.c2d_backlog.pop_front() {
                    if let Err(delivered) = sink.deliver(delivered) {
                        self.c2d_backlog.push_front(delivered);
                        break;
                    }
                }
                self.c2d = Some(sink);
                self.ensure_subscribed(Subscription::CloudToDevice, SubscribeWaiter::Caller(reply));
            }
            Request::AcknowledgeCloudToDevice(ack) => {
                if self.connected && ack.connection == self.connection_number {
                    self.outgoing.push_back(Packet::PubAck(ack.packet_id));
                } else {
                    tracing::debug!(packet_id = %ack.packet_id, "not acknowledging a message from a lost connection: the hub delivers it again");
                }
            }
        }
    }

    /// Handles one packet from the hub. Returns a method call for the caller to run, or the reason to close
    /// the connection when the hub broke the protocol.
    pub fn handle_packet(
        &mut self,
        packet: Packet,
    ) -> Result<Option<MethodCall>, DisconnectReason> {
        match packet {
            Packet::Publish(publish) => return self.handle_publish(publish),
            Packet::PubAck(packet_id) => match self.in_flight.get(&packet_id) {
                Some(InFlight::Publish(in_flight)) => {
                    if let Some(request) = in_flight
                        .twin_request
                        .and_then(|request_id| self.twin_requests.get_mut(&request_id))
                    {
                        request.stage = TwinStage::Acknowledged;
                    }
                    if let Some(InFlight::Publish(in_flight)) = self.in_flight.remove(&packet_id)
                        && let Some(reply) = in_flight.sent_reply
                    {
                        let _ = reply.send(Ok(()));
                    }
                }
                Some(InFlight::Subscribe(_)) => {
                    return Err(violation(format!("PUBACK {packet_id} answers a SUBSCRIBE")));
                }
                None => tracing::debug!(%packet_id, "ignoring a PUBACK for a packet not in flight"),
            },
            Packet::SubAck(suback) => self.handle_suback(suback)?,
            Packet::PingResp => self.ping_sent_at = None,
            Packet::UnsubAck(packet_id) => {
                tracing::debug!(%packet_id, "ignoring an UNSUBACK; nothing was unsubscribed")
            }
            other @ (Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect) => {
                return Err(violation(format!(
                    "unexpected {} from the hub",
                    other.name()
                )));
            }
        }
        Ok(None)
    }

    /// The connection is gone (the task reconnects): forgets what was queued for it and fails the reported
    /// patches whose responses it took with it. Everything else waits for [`Session::connected`].
    pub fn connection_lost(&mut self) {
        self.connected = false;
        self.outgoing.clear();
        // The hub delivers the unacknowledged ones again on the next connection.
        self.c2d_backlog.retain(|delivered| delivered.ack.is_none());
        self.ping_sent_at = None;
        let answerless: Vec<u64> = self
            .twin_requests
            .iter()
            .filter(|(_, request)| {
                !request.is_get && matches!(request.stage, TwinStage::Acknowledged)
            })
            .map(|(request_id, _)| *request_id)
            .collect();
        for request_id in answerless {
            if let Some(request) = self.twin_requests.remove(&request_id) {
                let _ = request.reply.send(Err(TwinError::Disconnected));
            }
        }
    }

    /// A new connection was accepted at `now`: queues the SUBSCRIBEs for every subscription, then the
    /// unacknowledged publishes (DUP set where they may have reached the hub), then GETs whose responses
    /// were lost, and asks the desired-patch stream to resynchronise.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.connection_number += 1;
        self.outgoing.clear();
        self.last_sent = now;
        self.ping_sent_at = None;

        self.in_flight
            .retain(|_, in_flight| matches!(in_flight, InFlight::Publish(_)));
        let mut subscriptions: Vec<Subscription> = self.subscriptions.keys().copied().collect();
        subscriptions.sort_by_key(|subscription| subscription_rank(*subscription));
        for subscription in subscriptions {
            self.send_subscribe(subscription);
        }

        // Publishes of twin requests that expired meanwhile would only surprise a caller who was told they
        // failed; everything else goes out again.
        let twin_requests = &self.twin_requests;
        self.in_flight.retain(|_, in_flight| match in_flight {
            InFlight::Publish(publish) => publish
                .twin_request
                .is_none_or(|request_id| twin_requests.contains_key(&request_id)),
            InFlight::Subscribe(_) => true,
        });
        let mut publishes: Vec<&mut InFlightPublish> = self
            .in_flight
            .values_mut()
            .filter_map(|in_flight| match in_flight {
                InFlight::Publish(publish) => Some(publish),
                InFlight::Subscribe(_) => None,
            })
            .collect();
        publishes.sort_by_key(|publish| publish.sequence);
        for publish in publishes {
            let mut packet = publish.publish.clone();
            packet.dup = publish.transmitted;
            self.outgoing.push_back(Packet::Publish(packet));
        }

        let mut lost_gets: Vec<u64> = self
            .twin_requests
            .iter()
            .filter(|(_, request)| {
                request.is_get && matches!(request.stage, TwinStage::Acknowledged)
            })
            .map(|(request_id, _)| *request_id)
            .collect();
        lost_gets.sort_unstable();
        for request_id in lost_gets {
            self.publish(
                topics::twin_get_topic(&request_id.to_string()),
                Bytes::new(),
                Some(request_id),
            );
        }

        if let Some(sink) = &self.desired
            && sink.resync() == Delivery::Closed
        {
            self.desired = None;
        }
    }

    /// The client is closing for good: answers everything still waiting with `Disconnected` and forgets
    /// all state. The desired sink goes first, so that a stream seeing `Disconnected` finds its channel
    /// closed and ends.
    pub fn fail_all(&mut self) {
        self.connected = false;
        self.desired = None;
        self.methods = None;
        self.c2d = None;
        self.c2d_backlog.clear();
        self.outgoing.clear();
        for (_, request) in self.twin_requests.drain() {
            let _ = request.reply.send(Err(TwinError::Disconnected));
        }
        for (_, state) in self.subscriptions.drain() {
            if let SubscriptionState::Pending(waiters) = state {
                for waiter in waiters {
                    if let SubscribeWaiter::Caller(reply) = waiter {
                        let _ = reply.send(Err(SubscribeError::Disconnected));
                    }
                }
            }
        }
        for (_, packet) in self.in_flight.drain() {
            if let InFlight::Publish(in_flight) = packet {
                tracing::debug!(topic = %in_flight.publish.topic, "publish not acknowledged before the client closed");
                if let Some(reply) = in_flight.sent_reply {
                    let _ = reply.send(Err(SendError::Disconnected));
                }
            }
        }
    }

    fn start_twin_request(&mut self, command: TwinCommand) {
        self.last_request_id += 1;
        let request_id = self.last_request_id;
        let rid = request_id.to_string();
        let (is_get, topic, payload) = match command.request {
            TwinRequest::Get => (true, topics::twin_get_topic(&rid), Bytes::new()),
            TwinRequest::PatchReported(patch) => {
                (false, topics::twin_patch_reported_topic(&rid), patch)
            }
        };
        self.twin_requests.insert(
            request_id,
            PendingTwinRequest {
                deadline: command.deadline,
                timeout: command.timeout,
                reply: command.reply,
                is_get,
                stage: TwinStage::AwaitingSubscription(topic, payload),
            },
        );
        self.ensure_subscribed(
            Subscription::TwinResponses,
            SubscribeWaiter::TwinRequest(request_id),
        );
    }

    fn ensure_subscribed(&mut self, subscription: Subscription, waiter: SubscribeWaiter) {
        match self.subscriptions.get_mut(&subscription) {
            Some(SubscriptionState::Active) => self.subscribed(waiter),
            Some(SubscriptionState::Pending(waiters)) => waiters.push(waiter),
            None => {
                if subscription.filter_for(&self.client_id).is_none() {
                    // Only module-input subscriptions lack a filter for device clients; none is requested yet.
                    self.subscription_refused(waiter, &format!("{subscription:?}"));
                    return;
                }
                self.subscriptions
                    .insert(subscription, SubscriptionState::Pending(vec![waiter]));
                // While disconnected, `connected` sends it.
                if self.connected {
                    self.send_subscribe(subscription);
                }
            }
        }
    }

    /// Queues a SUBSCRIBE for `subscription`, whose filter exists for this client.
    fn send_subscribe(&mut self, subscription: Subscription) {
        let Some(filter) = subscription.filter_for(&self.client_id) else {
            return;
        };
        let packet_id = self.allocate_packet_id();
        self.in_flight
            .insert(packet_id, InFlight::Subscribe(subscription));
        self.outgoing.push_back(Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(filter, QoS::AtLeastOnce)],
        }));
    }

    fn handle_suback(&mut self, suback: SubAck) -> Result<(), DisconnectReason> {
        let subscription = match self.in_flight.get(&suback.packet_id) {
            Some(InFlight::Subscribe(subscription)) => *subscription,
            Some(InFlight::Publish(_)) => {
                return Err(violation(format!(
                    "SUBACK {} answers a PUBLISH",
                    suback.packet_id
                )));
            }
            None => {
                tracing::debug!(packet_id = %suback.packet_id, "ignoring a SUBACK for a packet not in flight");
                return Ok(());
            }
        };
        self.in_flight.remove(&suback.packet_id);
        // One filter per SUBSCRIBE, so the first return code is the answer.
        let granted = matches!(
            suback.return_codes.first(),
            Some(SubscribeReturnCode::Success(_))
        );
        let waiters = match self.subscriptions.remove(&subscription) {
            Some(SubscriptionState::Pending(waiters)) => waiters,
            Some(SubscriptionState::Active) | None => Vec::new(),
        };
        if granted {
            self.subscriptions
                .insert(subscription, SubscriptionState::Active);
            for waiter in waiters {
                self.subscribed(waiter);
            }
        } else {
            // Also after a reconnect, for a subscription that was active: it is forgotten, so the next
            // request that needs it subscribes again.
            let filter = subscription.filter_for(&self.client_id).unwrap_or_default();
            tracing::warn!(%filter, "the hub refused a subscription");
            for waiter in waiters {
                self.subscription_refused(waiter, &filter);
            }
        }
        Ok(())
    }

    fn subscribed(&mut self, waiter: SubscribeWaiter) {
        match waiter {
            SubscribeWaiter::Caller(reply) => {
                let _ = reply.send(Ok(()));
            }
            SubscribeWaiter::TwinRequest(request_id) => self.send_twin_request(request_id),
        }
    }

    fn subscription_refused(&mut self, waiter: SubscribeWaiter, filter: &str) {
        match waiter {
            SubscribeWaiter::Caller(reply) => {
                let _ = reply.send(Err(SubscribeError::Refused {
                    filter: filter.to_owned(),
                }));
            }
            SubscribeWaiter::TwinRequest(request_id) => {
                if let Some(request) = self.twin_requests.remove(&request_id) {
                    let _ = request.reply.send(Err(TwinError::SubscriptionRefused));
                }
            }
        }
    }

    fn send_twin_request(&mut self, request_id: u64) {
        // Absent when it expired while the subscription was pending.
        let Some(request) = self.twin_requests.get_mut(&request_id) else {
            return;
        };
        let TwinStage::AwaitingSubscription(topic, payload) =
            std::mem::replace(&mut request.stage, TwinStage::Published)
        else {
            return;
        };
        self.publish(topic, payload, Some(request_id));
    }

    /// Queues a QoS 1 publish and tracks it until its PUBACK. While disconnected it is only tracked;
    /// [`Session::connected`] sends it.
    fn publish(&mut self, topic: String, payload: Bytes, twin_request: Option<u64>) {
        self.publish_tracked(topic, payload, twin_request, None);
    }

    /// [`Session::publish`], answering `sent_reply` at the PUBACK.
    fn publish_tracked(
        &mut self,
        topic: String,
        payload: Bytes,
        twin_request: Option<u64>,
        sent_reply: Option<SendReply>,
    ) {
        let packet_id = self.allocate_packet_id();
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(packet_id),
            payload,
        };
        if let Some(request) = twin_request.and_then(|id| self.twin_requests.get_mut(&id)) {
            request.stage = TwinStage::Published;
        }
        self.last_publish_sequence += 1;
        if self.connected {
            self.outgoing.push_back(Packet::Publish(publish.clone()));
        }
        self.in_flight.insert(
            packet_id,
            InFlight::Publish(InFlightPublish {
                publish,
                sequence: self.last_publish_sequence,
                transmitted: false,
                twin_request,
                sent_reply,
            }),
        );
    }
    fn handle_publish(&mut self, publish: Publish) -> Result<Option<MethodCall>, DisconnectReason> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(violation(format!(
                "QoS 2 PUBLISH on {} although every subscription is QoS 1",
                publish.topic
            )));
        }
        let topic = match topics::parse_hub_publish(&publish.topic) {
            Ok(topic) => topic,
            Err(error) => {
                tracing::debug!(%error, "ignoring a publish on a topic this client does not know");
                self.acknowledge(&publish);
                return Ok(None);
            }
        };
        match topic {
            HubTopic::TwinResponse {
                status,
                request_id,
                version,
            } => {
                self.acknowledge(&publish);
                let pending = request_id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| self.twin_requests.remove(&id));
                match pending {
                    Some(request) => {
                        let _ = request.reply.send(Ok(TwinResponse {
                            status,
                            version,
                            body: publish.payload,
                        }));
                    }
                    None => {
                        tracing::debug!(%request_id, "ignoring a twin response to an unknown or expired request")
                    }
                }
                Ok(None)
            }
            HubTopic::DesiredPatch { version } => {
                self.acknowledge(&publish);
                self.deliver_desired_patch(DesiredPatchMessage {
                    payload: publish.payload,
                    topic_version: version,
                });
                Ok(None)
            }
            HubTopic::MethodRequest {
                method_name,
                request_id,
            } => {
                self.acknowledge(&publish);
                Ok(self.dispatch_method(method_name, request_id, publish.payload))
            }
            HubTopic::CloudToDevice { properties } => {
                let ack = publish.packet_id.map(|packet_id| PendingAck {
                    connection: self.connection_number,
                    packet_id,
                });
                let delivered = Delivered {
                    message: CloudToDeviceMessage::new(publish.payload, properties),
                    ack,
                };
                self.deliver_cloud_to_device(delivered);
                Ok(None)
            }
            HubTopic::ModuleInput { .. } => {
                // Left unacknowledged so that the hub keeps the message for a client that reads them; a
                // persistent session from an earlier program may deliver them before anything subscribes.
                tracing::debug!(topic = %publish.topic, "not acknowledging a message this client does not read yet");
                Ok(None)
            }
        }
    }

    /// Hands a message to the stream, or keeps it for the next stream while there is none. Left
    /// unacknowledged when neither has room: the hub delivers it again on the next connection.
    fn deliver_cloud_to_device(&mut self, delivered: Delivered) {
        let delivered = match &self.c2d {
            Some(sink) => match sink.deliver(delivered) {
                Ok(()) => return,
                Err(delivered) if sink.is_closed() => {
                    self.c2d = None;
                    delivered
                }
                Err(_) => {
                    tracing::warn!(
                        "dropping a cloud-to-device message: the application is behind; the hub delivers it again after a reconnection"
                    );
                    return;
                }
            },
            None => delivered,
        };
        if self.c2d_backlog.len() < C2D_QUEUE {
            self.c2d_backlog.push_back(delivered);
        } else {
            tracing::debug!("not keeping a cloud-to-device message: nobody reads them");
        }
    }

    fn acknowledge(&mut self, publish: &Publish) {
        if let Some(packet_id) = publish.packet_id {
            self.outgoing.push_back(Packet::PubAck(packet_id));
        }
    }

    fn deliver_desired_patch(&mut self, message: DesiredPatchMessage) {
        let Some(sink) = &self.desired else {
            tracing::debug!("dropping a desired patch: nobody reads desired patches");
            return;
        };
        match sink.deliver(message) {
            Delivery::Delivered => {}
            Delivery::Dropped => {
                tracing::debug!("dropping a desired patch: the application is behind")
            }
            Delivery::Closed => self.desired = None,
        }
    }

    fn dispatch_method(
        &mut self,
        method_name: String,
        request_id: String,
        payload: Bytes,
    ) -> Option<MethodCall> {
        let Some(dispatcher) = &self.methods else {
            // Only possible with a session kept from an earlier program: answer rather than let the caller wait.
            self.answer_method(
                &request_id,
                501,
                "the device has no handler for direct methods",
            );
            return None;
        };
        match Arc::clone(&dispatcher.permits).try_acquire_owned() {
            Ok(permit) => Some(MethodCall {
                handler: Arc::clone(&dispatcher.handler),
                method_name,
                request_id,
                payload,
                permit,
            }),
            Err(_) => {
                tracing::warn!(method = %method_name, "answering 429: too many method calls in progress");
                self.answer_method(
                    &request_id,
                    429,
                    "the device is busy with other method calls",
                );
                None
            }
        }
    }

    fn answer_method(&mut self, request_id: &str, status: i32, message: &str) {
        let payload = Bytes::from(json!({ "message": message }).to_string());
        self.publish(
            topics::method_response_topic(status, request_id),
            payload,
            None,
        );
    }

    /// The next packet id not in flight. In-flight packets are bounded far below 65535 (see the module
    /// docs), so the search ends quickly.
    fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            let packet_id = PacketId::new(self.last_packet_id).expect("packet ids skip zero");
            if !self.in_flight.contains_key(&packet_id) {
                return packet_id;
            }
        }
    }
}

fn violation(message: String) -> DisconnectReason {
    DisconnectReason::ProtocolViolation(message)
}

/// The order of SUBSCRIBEs after a reconnect: twin responses first, so that re-sent twin requests find
/// their subscription in place even at a hub that forgot it.
fn subscription_rank(subscription: Subscription) -> u8 {
    match subscription {
        Subscription::TwinResponses => 0,
        Subscription::DesiredPatches => 1,
        Subscription::Methods => 2,
        Subscription::CloudToDevice => 3,
        Subscription::ModuleInputs => 4,
    }
}

#[cfg(test)]
mod tests {
    use fleethub_mqtt::{ConnectReturnCode, SubscribeReturnCode};
    use serde_json::Value;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;
    use crate::desired::DesiredEvent;
    use crate::methods::{MethodRequest, MethodResponse, erase_handler};

    const TIMEOUT: Duration = Duration::from_secs(30);
    const KEEP_ALIVE: Duration = Duration::from_secs(60);

    fn session(now: Instant) -> Session {
        Session::new(ClientId::parse("dev1").expect("valid id"), KEEP_ALIVE, now)
    }

    fn drain(session: &mut Session, now: Instant) -> Vec<Packet> {
        std::iter::from_fn(|| session.poll_transmit(now)).collect()
    }

    fn twin_command(
        request: TwinRequest,
        now: Instant,
    ) -> (Request, oneshot::Receiver<Result<TwinResponse, TwinError>>) {
        let (reply, receiver) = oneshot::channel();
        let command = TwinCommand {
            request,
            deadline: now + TIMEOUT,
            timeout: TIMEOUT,
            reply,
        };
        (Request::Twin(Box::new(command)), receiver)
    }

    fn hub_publish(topic: &str, packet_id: Option<u16>, payload: &str) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: if packet_id.is_some() {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            retain: false,
            topic: topic.to_owned(),
            packet_id: packet_id.map(|id| PacketId::new(id).expect("non-zero")),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        })
    }

    fn suback(packet_id: PacketId, code: SubscribeReturnCode) -> Packet {
        Packet::SubAck(SubAck {
            packet_id,
            return_codes: vec![code],
        })
    }

    fn expect_subscribe(packet: &Packet, filter: &str) -> PacketId {
        match packet {
            Packet::Subscribe(subscribe) => {
                assert_eq!(
                    subscribe.filters,
                    vec![(filter.to_owned(), QoS::AtLeastOnce)]
                );
                subscribe.packet_id
            }
            other => panic!("expected SUBSCRIBE {filter}, got {other:?}"),
        }
    }

    fn expect_publish(packet: &Packet) -> &Publish {
        match packet {
            Packet::Publish(publish) => {
                assert_eq!(publish.qos, QoS::AtLeastOnce);
                publish
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Subscribes `$iothub/twin/res/#` through a first GET and answers it, leaving the session ready.
    fn session_with_twin_responses(now: Instant) -> Session {
        let mut session = session(now);
        let (request, mut reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(request);
        let sent = drain(&mut session, now);
        let subscribe_id = expect_subscribe(&sent[0], "$iothub/twin/res/#");
        session
            .handle_packet(suback(
                subscribe_id,
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
            ))
            .expect("valid");
        let sent = drain(&mut session, now);
        let get = expect_publish(&sent[0]);
        session
            .handle_packet(Packet::PubAck(get.packet_id.expect("QoS 1")))
            .expect("valid");
        let topic = format!(
            "$iothub/twin/res/200/?$rid={}",
            &get.topic["$iothub/twin/GET/?$rid=".len()..]
        );
        session
            .handle_packet(hub_publish(&topic, None, "{}"))
            .expect("valid");
        assert!(reply.try_recv().expect("answered").is_ok());
        session
    }

    #[test]
    fn first_twin_request_subscribes_and_waits_for_the_suback() {
        let now = Instant::now();
        let mut session = session(now);
        let (request, mut reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(request);
        let sent = drain(&mut session, now);
        assert_eq!(
            sent.len(),
            1,
            "only the SUBSCRIBE goes out before the SUBACK: {sent:?}"
        );
        let subscribe_id = expect_subscribe(&sent[0], "$iothub/twin/res/#");

        session
            .handle_packet(suback(
                subscribe_id,
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
            ))
            .expect("valid");
        let sent = drain(&mut session, now);
        let get = expect_publish(&sent[0]);
        assert_eq!(get.topic, "$iothub/twin/GET/?$rid=1");
        assert!(get.payload.is_empty());
        assert!(matches!(reply.try_recv(), Err(TryRecvError::Empty)));

        let body = r#"{"desired":{"$version":1},"reported":{"$version":1}}"#;
        session
            .handle_packet(hub_publish("$iothub/twin/res/200/?$rid=1", Some(9), body))
            .expect("valid");
        assert_eq!(
            drain(&mut session, now),
            vec![Packet::PubAck(PacketId::new(9).expect("non-zero"))]
        );
        let response = reply.try_recv().expect("answered").expect("success");
        assert_eq!(
            response,
            TwinResponse {
                status: 200,
                version: None,
                body: Bytes::from_static(body.as_bytes())
            }
        );
    }

    #[test]
    fn responses_are_correlated_by_rid_in_any_order() {
        let now = Instant::now();
        let mut session = session_with_twin_responses(now);
        let (first, mut first_reply) = twin_command(
            TwinRequest::PatchReported(Bytes::from_static(b"{\"a\":1}")),
            now,
        );
        let (second, mut second_reply) = twin_command(
            TwinRequest::PatchReported(Bytes::from_static(b"{\"b\":2}")),
            now,
        );
        session.handle_request(first);
        session.handle_request(second);
        let sent = drain(&mut session, now);
        let topics: Vec<&str> = sent
            .iter()
            .map(|packet| expect_publish(packet).topic.as_str())
            .collect();
        assert_eq!(
            topics,
            [
                "$iothub/twin/PATCH/properties/reported/?$rid=2",
                "$iothub/twin/PATCH/properties/reported/?$rid=3"
            ]
        );
        assert_ne!(
            expect_publish(&sent[0]).packet_id,
            expect_publish(&sent[1]).packet_id
        );
        assert_eq!(&expect_publish(&sent[0]).payload[..], b"{\"a\":1}");

        // The second answer comes first, before any PUBACK; an unknown rid is ignored.
        session
            .handle_packet(hub_publish(
                "$iothub/twin/res/204/?$rid=3&$version=8",
                None,
                "",
            ))
            .expect("valid");
        session
            .handle_packet(hub_publish(
                "$iothub/twin/res/204/?$rid=99&$version=9",
                None,
                "",
            ))
            .expect("valid");
        session
            .handle_packet(hub_publish("$iothub/twin/res/400/?$rid=2", None, "bad"))
            .expect("valid");
        assert_eq!(
            second_reply
                .try_recv()
                .expect("answered")
                .expect("response")
                .version,
            Some(8)
        );
        assert_eq!(
            first_reply
                .try_recv()
                .expect("answered")
                .expect("response")
                .status,
            400
        );
    }

    #[test]
    fn twin_request_times_out_at_its_deadline_and_late_response_is_ignored() {
        let now = Instant::now();
        let mut session = session_with_twin_responses(now);
        let (request, mut reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(request);
        drain(&mut session, now);
        assert_eq!(session.next_deadline(), Some(now + TIMEOUT));

        session
            .on_timer(now + TIMEOUT - Duration::from_millis(1))
            .expect("no keep-alive failure");
        assert!(matches!(reply.try_recv(), Err(TryRecvError::Empty)));
        session
            .on_timer(now + TIMEOUT)
            .expect("no keep-alive failure");
        assert!(
            matches!(reply.try_recv(), Ok(Err(TwinError::Timeout(timeout))) if timeout == TIMEOUT)
        );
        session
            .handle_packet(hub_publish("$iothub/twin/res/200/?$rid=2", None, "{}"))
            .expect("ignored");
        assert_eq!(session.next_deadline(), Some(now + KEEP_ALIVE));
    }

    #[test]
    fn refused_twin_subscription_fails_the_waiting_requests_and_is_retried_later() {
        let now = Instant::now();
        let mut session = session(now);
        let (first, mut first_reply) = twin_command(TwinRequest::Get, now);
        let (second, mut second_reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(first);
        session.handle_request(second);
        let sent = drain(&mut session, now);
        assert_eq!(sent.len(), 1, "one SUBSCRIBE for both requests");
        let subscribe_id = expect_subscribe(&sent[0], "$iothub/twin/res/#");
        session
            .handle_packet(suback(subscribe_id, SubscribeReturnCode::Failure))
            .expect("valid");
        assert!(drain(&mut session, now).is_empty());
        assert!(matches!(
            first_reply.try_recv(),
            Ok(Err(TwinError::SubscriptionRefused))
        ));
        assert!(matches!(
            second_reply.try_recv(),
            Ok(Err(TwinError::SubscriptionRefused))
        ));

        let (third, _third_reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(third);
        expect_subscribe(&drain(&mut session, now)[0], "$iothub/twin/res/#");
    }

    fn on_method(session: &mut Session) -> oneshot::Receiver<Result<(), SubscribeError>> {
        let (reply, receiver) = oneshot::channel();
        let handler =
            erase_handler(|_request: MethodRequest| async { MethodResponse::ok(Value::Null) });
        session.handle_request(Request::OnMethod(Box::new(OnMethodCommand {
            handler,
            reply,
        })));
        receiver
    }

    fn grant(session: &mut Session, packet: &Packet) {
        let Packet::Subscribe(subscribe) = packet else {
            panic!("expected SUBSCRIBE, got {packet:?}");
        };
        session
            .handle_packet(suback(
                subscribe.packet_id,
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
            ))
            .expect("valid");
    }

    fn filters(packets: &[Packet]) -> Vec<&str> {
        packets
            .iter()
            .filter_map(|packet| match packet {
                Packet::Subscribe(subscribe) => Some(subscribe.filters[0].0.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reconnection_resubscribes_first_then_resends_unacknowledged_publishes_in_order() {
        let now = Instant::now();
        let mut session = session_with_twin_responses(now);
        let mut method_subscribed = on_method(&mut session);
        let (sender, mut desired) = tokio::sync::mpsc::channel(4);
        let (reply, _desired_subscribed) = oneshot::channel();
        session.handle_request(Request::DesiredPatches(Box::new(DesiredPatchesCommand {
            sink: crate::desired::tests_support::sink(sender),
            reply,
        })));
        for packet in drain(&mut session, now) {
            grant(&mut session, &packet);
        }
        assert!(matches!(method_subscribed.try_recv(), Ok(Ok(()))));

        // A reported patch goes out but is not acknowledged; a method response is queued but never written.
        let (patch, mut patch_reply) = twin_command(
            TwinRequest::PatchReported(Bytes::from_static(b"{\"a\":1}")),
            now,
        );
        session.handle_request(patch);
        let sent = drain(&mut session, now);
        let original = expect_publish(&sent[0]).clone();
        assert!(!original.dup);
        session.handle_request(Request::MethodResponse(Box::new(MethodResponseMessage {
            status: 200,
            request_id: "m1".into(),
            payload: Bytes::from_static(b"{}"),
            permit: None,
        })));
        assert!(!session.is_quiet());

        session.connection_lost();
        assert!(
            drain(&mut session, now).is_empty(),
            "nothing queued without a connection"
        );
        let (get, mut get_reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(get);
        assert!(drain(&mut session, now).is_empty());
        assert_eq!(
            session.next_deadline(),
            Some(now + TIMEOUT),
            "no keep-alive without a connection, only twin deadlines"
        );

        let later = now + Duration::from_secs(1);
        session.connected(later);
        let sent = drain(&mut session, later);
        assert_eq!(
            filters(&sent),
            [
                "$iothub/twin/res/#",
                "$iothub/twin/PATCH/properties/desired/#",
                "$iothub/methods/POST/#"
            ],
            "every subscription again, twin responses first"
        );
        assert!(
            sent[..3]
                .iter()
                .all(|packet| matches!(packet, Packet::Subscribe(_)))
        );
        let resent: Vec<&Publish> = sent[3..].iter().map(expect_publish).collect();
        assert_eq!(resent.len(), 3, "{sent:?}");
        assert_eq!(
            (
                resent[0].dup,
                resent[0].packet_id,
                &resent[0].topic,
                &resent[0].payload
            ),
            (true, original.packet_id, &original.topic, &original.payload),
            "the written patch again, same packet id, DUP set"
        );
        assert_eq!(
            (resent[1].dup, resent[1].topic.as_str()),
            (false, "$iothub/methods/res/200/?$rid=m1"),
            "never written, so no DUP"
        );
        assert_eq!(
            (resent[2].dup, resent[2].topic.as_str()),
            (false, "$iothub/twin/GET/?$rid=3")
        );
        assert!(matches!(desired.try_recv(), Ok(DesiredEvent::Resync)));

        for packet in &sent[..3] {
            grant(&mut session, packet);
        }
        for publish in &resent {
            session
                .handle_packet(Packet::PubAck(publish.packet_id.expect("QoS 1")))
                .expect("valid");
        }
        session
            .handle_packet(hub_publish(
                "$iothub/twin/res/204/?$rid=2&$version=4",
                None,
                "",
            ))
            .expect("valid");
        session
            .handle_packet(hub_publish("$iothub/twin/res/200/?$rid=3", None, "{}"))
            .expect("valid");
        assert_eq!(
            patch_reply
                .try_recv()
                .expect("answered")
                .expect("success")
                .version,
            Some(4)
        );
        assert!(get_reply.try_recv().expect("answered").is_ok());
        assert!(session.is_quiet());
        assert_eq!(session.next_deadline(), Some(later + KEEP_ALIVE));
    }

    #[test]
    fn acknowledged_patch_fails_when_its_response_is_lost_and_acknowledged_get_is_sent_again() {
        let now = Instant::now();
        let mut session = session_with_twin_responses(now);
        let (get, mut get_reply) = twin_command(TwinRequest::Get, now);
        let (patch, mut patch_reply) = twin_command(
            TwinRequest::PatchReported(Bytes::from_static(b"{\"a\":1}")),
            now,
        );
        session.handle_request(get);
        session.handle_request(patch);
        for packet in drain(&mut session, now) {
            session
                .handle_packet(Packet::PubAck(
                    expect_publish(&packet).packet_id.expect("QoS 1"),
                ))
                .expect("valid");
        }

        session.connection_lost();
        assert!(matches!(
            patch_reply.try_recv(),
            Ok(Err(TwinError::Disconnected))
        ));
        assert!(matches!(get_reply.try_recv(), Err(TryRecvError::Empty)));

        session.connected(now);
        let sent = drain(&mut session, now);
        assert_eq!(filters(&sent), ["$iothub/twin/res/#"]);
        let again = expect_publish(&sent[1]);
        assert_eq!(
            (again.dup, again.topic.as_str()),
            (false, "$iothub/twin/GET/?$rid=2")
        );
        assert_eq!(
            sent.len(),
            2,
            "the acknowledged patch is not re-sent: {sent:?}"
        );
        session
            .handle_packet(hub_publish("$iothub/twin/res/200/?$rid=2", None, "{}"))
            .expect("valid");
        assert!(get_reply.try_recv().expect("answered").is_ok());
    }

    #[test]
    fn request_still_waiting_for_a_connection_at_its_deadline_fails_disconnected_and_is_not_resent()
    {
        let now = Instant::now();
        let mut session = session_with_twin_responses(now);
        let (patch, mut patch_reply) = twin_command(
            TwinRequest::PatchReported(Bytes::from_static(b"{\"a\":1}")),
            now,
        );
        session.handle_request(patch);
        drain(&mut session, now);
        session.connection_lost();
        session
            .on_timer(now + TIMEOUT)
            .expect("no keep-alive while disconnected");
        assert!(matches!(
            patch_reply.try_recv(),
            Ok(Err(TwinError::Disconnected))
        ));
        session.connected(now + TIMEOUT);
        let sent = drain(&mut session, now + TIMEOUT);
        assert_eq!(
            filters(&sent),
            ["$iothub/twin/res/#"],
            "the caller was told it failed, so it stays unsent: {sent:?}"
        );
        assert_eq!(sent.len(), 1);
    }

    #[test]
    fn subscription_requested_while_disconnected_is_sent_on_reconnection() {
        let now = Instant::now();
        let mut session = session(now);
        session.connection_lost();
        let mut subscribed = on_method(&mut session);
        assert!(drain(&mut session, now).is_empty());
        session.connected(now);
        let sent = drain(&mut session, now);
        assert_eq!(filters(&sent), ["$iothub/methods/POST/#"]);
        grant(&mut session, &sent[0]);
        assert!(matches!(subscribed.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn refused_resubscription_is_forgotten_so_the_next_request_subscribes_again() {
        let now = Instant::now();
        let mut session = session_with_twin_responses(now);
        session.connection_lost();
        session.connected(now);
        let sent = drain(&mut session, now);
        let subscribe_id = expect_subscribe(&sent[0], "$iothub/twin/res/#");
        session
            .handle_packet(suback(subscribe_id, SubscribeReturnCode::Failure))
            .expect("valid");
        let (get, _reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(get);
        let sent = drain(&mut session, now);
        assert_eq!(sent.len(), 1, "held back until the new SUBACK: {sent:?}");
        expect_subscribe(&sent[0], "$iothub/twin/res/#");
    }

    #[test]
    fn session_is_quiet_only_when_nothing_waits_for_the_hub_or_a_method_handler() {
        let now = Instant::now();
        let mut session = session(now);
        assert!(session.is_quiet());
        let _subscribed = on_method(&mut session);
        let sent = drain(&mut session, now);
        assert!(!session.is_quiet(), "SUBSCRIBE in flight");
        grant(&mut session, &sent[0]);
        assert!(session.is_quiet());

        let call = session
            .handle_packet(hub_publish("$iothub/methods/POST/m/?$rid=1", None, ""))
            .expect("valid")
            .expect("dispatched");
        assert!(!session.is_quiet(), "a handler is running");
        session.handle_request(Request::MethodResponse(Box::new(MethodResponseMessage {
            status: 200,
            request_id: call.request_id.clone(),
            payload: Bytes::from_static(b"{}"),
            permit: Some(call.permit),
        })));
        let sent = drain(&mut session, now);
        assert!(!session.is_quiet(), "the response awaits its PUBACK");
        session
            .handle_packet(Packet::PubAck(
                expect_publish(&sent[0]).packet_id.expect("QoS 1"),
            ))
            .expect("valid");
        assert!(session.is_quiet(), "the permit went with the response");

        let (get, _reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(get);
        assert!(!session.is_quiet(), "a twin request waits");
    }

    #[test]
    fn fail_all_answers_every_waiter_with_disconnected() {
        let now = Instant::now();
        let mut session = session(now);
        let (twin, mut twin_reply) = twin_command(TwinRequest::Get, now);
        session.handle_request(twin);
        let (reply, mut subscribe_reply) = oneshot::channel();
        let handler =
            erase_handler(|_request: MethodRequest| async { MethodResponse::ok(Value::Null) });
        session.handle_request(Request::OnMethod(Box::new(OnMethodCommand {
            handler,
            reply,
        })));
        assert_eq!(drain(&mut session, now).len(), 2);

        session.fail_all();
        assert!(matches!(
            twin_reply.try_recv(),
            Ok(Err(TwinError::Disconnected))
        ));
        assert!(matches!(
            subscribe_reply.try_recv(),
            Ok(Err(SubscribeError::Disconnected))
        ));
        assert_eq!(
            session.next_deadline(),
            None,
            "a stopped session has no timers"
        );
    }

    #[test]
    fn method_requests_are_acknowledged_and_dispatched_to_the_handler() {
        let now = Instant::now();
        let mut session = session(now);
        let (reply, mut subscribe_reply) = oneshot::channel();
        let handler =
            erase_handler(|_request: MethodRequest| async { MethodResponse::ok(Value::Null) });
        session.handle_request(Request::OnMethod(Box::new(OnMethodCommand {
            handler,
            reply,
        })));
        let subscribe_id = expect_subscribe(&drain(&mut session, now)[0], "$iothub/methods/POST/#");
        session
            .handle_packet(suback(
                subscribe_id,
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
            ))
            .expect("valid");
        assert!(matches!(subscribe_reply.try_recv(), Ok(Ok(()))));

        let call = session
            .handle_packet(hub_publish(
                "$iothub/methods/POST/reboot/?$rid=abc",
                Some(4),
                r#"{"delay":5}"#,
            ))
            .expect("valid")
            .expect("dispatched");
        assert_eq!(
            (call.method_name.as_str(), call.request_id.as_str()),
            ("reboot", "abc")
        );
        assert_eq!(&call.payload[..], br#"{"delay":5}"#);
        assert_eq!(
            drain(&mut session, now),
            vec![Packet::PubAck(PacketId::new(4).expect("non-zero"))]
        );

        let message = MethodResponseMessage {
            status: 200,
            request_id: "abc".into(),
            payload: Bytes::from_static(b"{}"),
            permit: None,
        };
        session.handle_request(Request::MethodResponse(Box::new(message)));
        let sent = drain(&mut session, now);
        let response = expect_publish(&sent[0]);
        assert_eq!(response.topic, "$iothub/methods/res/200/?$rid=abc");
        session
            .handle_packet(Packet::PubAck(response.packet_id.expect("QoS 1")))
            .expect("valid");
        assert!(session.in_flight.is_empty());
    }

    #[test]
    fn method_request_without_handler_is_answered_501() {
        let now = Instant::now();
        let mut session = session(now);
        let call = session
            .handle_packet(hub_publish("$iothub/methods/POST/reboot/?$rid=1", None, ""))
            .expect("valid");
        assert!(call.is_none());
        let sent = drain(&mut session, now);
        assert_eq!(
            expect_publish(&sent[0]).topic,
            "$iothub/methods/res/501/?$rid=1"
        );
    }

    #[test]
    fn method_requests_beyond_the_concurrency_cap_are_answered_429() {
        let now = Instant::now();
        let mut session = session(now);
        let (reply, _subscribe_reply) = oneshot::channel();
        let handler =
            erase_handler(|_request: MethodRequest| async { MethodResponse::ok(Value::Null) });
        session.handle_request(Request::OnMethod(Box::new(OnMethodCommand {
            handler,
            reply,
        })));
        drain(&mut session, now);
        let calls: Vec<MethodCall> = (0..MAX_CONCURRENT_METHOD_CALLS)
            .map(|index| {
                let topic = format!("$iothub/methods/POST/m/?$rid={index}");
                session
                    .handle_packet(hub_publish(&topic, None, ""))
                    .expect("valid")
                    .expect("dispatched")
            })
            .collect();
        let refused = session
            .handle_packet(hub_publish("$iothub/methods/POST/m/?$rid=x", None, ""))
            .expect("valid");
        assert!(refused.is_none());
        assert_eq!(
            expect_publish(&drain(&mut session, now)[0]).topic,
            "$iothub/methods/res/429/?$rid=x"
        );
        drop(calls);
        let admitted = session
            .handle_packet(hub_publish("$iothub/methods/POST/m/?$rid=y", None, ""))
            .expect("valid");
        assert!(admitted.is_some(), "permits return when calls finish");
    }

    #[test]
    fn desired_patches_reach_the_sink_and_a_second_stream_is_refused() {
        let now = Instant::now();
        let mut session = session(now);
        let (sender, mut receiver) = tokio::sync::mpsc::channel(4);
        let sink = crate::desired::tests_support::sink(sender);
        let (reply, mut subscribe_reply) = oneshot::channel();
        session.handle_request(Request::DesiredPatches(Box::new(DesiredPatchesCommand {
            sink,
            reply,
        })));
        let subscribe_id = expect_subscribe(
            &drain(&mut session, now)[0],
            "$iothub/twin/PATCH/properties/desired/#",
        );
        session
            .handle_packet(suback(
                subscribe_id,
                SubscribeReturnCode::Success(QoS::AtMostOnce),
            ))
            .expect("valid");
        assert!(matches!(subscribe_reply.try_recv(), Ok(Ok(()))));

        session
            .handle_packet(hub_publish(
                "$iothub/twin/PATCH/properties/desired/?$version=3",
                Some(5),
                r#"{"$version":3}"#,
            ))
            .expect("valid");
        let Ok(DesiredEvent::Patch(patch)) = receiver.try_recv() else {
            panic!("a patch is delivered");
        };
        assert_eq!(
            (patch.topic_version, &patch.payload[..]),
            (Some(3), &br#"{"$version":3}"#[..])
        );

        let (other_sender, _other_receiver) = tokio::sync::mpsc::channel(4);
        let (reply, mut second_reply) = oneshot::channel();
        let sink = crate::desired::tests_support::sink(other_sender);
        session.handle_request(Request::DesiredPatches(Box::new(DesiredPatchesCommand {
            sink,
            reply,
        })));
        assert!(matches!(
            second_reply.try_recv(),
            Ok(Err(SubscribeError::AlreadyActive))
        ));

        // Once the first stream is gone a new one is accepted without subscribing again.
        drop(receiver);
        let (third_sender, _third_receiver) = tokio::sync::mpsc::channel(4);
        let (reply, mut third_reply) = oneshot::channel();
        let sink = crate::desired::tests_support::sink(third_sender);
        session.handle_request(Request::DesiredPatches(Box::new(DesiredPatchesCommand {
            sink,
            reply,
        })));
        assert!(matches!(third_reply.try_recv(), Ok(Ok(()))));
        let sent = drain(&mut session, now);
        assert_eq!(
            sent,
            vec![Packet::PubAck(PacketId::new(5).expect("non-zero"))]
        );
    }

    fn telemetry_command(
        body: &str,
        qos: QoS,
    ) -> (Request, oneshot::Receiver<Result<(), SendError>>) {
        let (reply, receiver) = oneshot::channel();
        let command = TelemetryCommand {
            topic: format!("devices/dev1/messages/events/%24.mid={body}"),
            payload: Bytes::copy_from_slice(body.as_bytes()),
            qos,
            reply,
        };
        (Request::Telemetry(Box::new(command)), receiver)
    }

    #[test]
    fn pipelined_messages_complete_each_at_its_own_puback() {
        let now = Instant::now();
        let mut session = session(now);
        let mut replies = Vec::new();
        for body in ["m1", "m2", "m3"] {
            let (request, reply) = telemetry_command(body, QoS::AtLeastOnce);
            session.handle_request(request);
            replies.push(reply);
        }
        let sent = drain(&mut session, now);
        let publishes: Vec<&Publish> = sent.iter().map(expect_publish).collect();
        let bodies: Vec<&[u8]> = publishes
            .iter()
            .map(|publish| &publish.payload[..])
            .collect();
        assert_eq!(
            bodies,
            vec![&b"m1"[..], b"m2", b"m3"],
            "all three in flight, in order"
        );
        // Acknowledged out of order: each reply resolves at its own PUBACK.
        let second = publishes[1].packet_id.expect("QoS 1");
        session
            .handle_packet(Packet::PubAck(second))
            .expect("valid");
        assert!(matches!(replies[1].try_recv(), Ok(Ok(()))));
        assert!(matches!(replies[0].try_recv(), Err(TryRecvError::Empty)));
        assert!(!session.is_quiet());
        for publish in [publishes[0], publishes[2]] {
            session
                .handle_packet(Packet::PubAck(publish.packet_id.expect("QoS 1")))
                .expect("valid");
        }
        assert!(matches!(replies[0].try_recv(), Ok(Ok(()))));
        assert!(matches!(replies[2].try_recv(), Ok(Ok(()))));
        assert!(session.is_quiet());
    }

    #[test]
    fn unacknowledged_messages_are_resent_with_dup_after_a_reconnection() {
        let now = Instant::now();
        let mut session = session(now);
        let (first, mut first_reply) = telemetry_command("m1", QoS::AtLeastOnce);
        session.handle_request(first);
        let sent = drain(&mut session, now);
        assert_eq!(sent.len(), 1);
        session.connection_lost();
        // Sent while reconnecting: tracked, sent on the new connection.
        let (second, mut second_reply) = telemetry_command("m2", QoS::AtLeastOnce);
        session.handle_request(second);
        assert!(drain(&mut session, now).is_empty());
        session.connected(now);
        let resent = drain(&mut session, now);
        let publishes: Vec<&Publish> = resent.iter().map(expect_publish).collect();
        assert_eq!(publishes.len(), 2);
        assert!(publishes[0].dup && &publishes[0].payload[..] == b"m1");
        assert!(!publishes[1].dup && &publishes[1].payload[..] == b"m2");
        for publish in publishes {
            session
                .handle_packet(Packet::PubAck(publish.packet_id.expect("QoS 1")))
                .expect("valid");
        }
        assert!(matches!(first_reply.try_recv(), Ok(Ok(()))));
        assert!(matches!(second_reply.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn at_most_once_messages_go_out_at_once_or_fail_while_disconnected_and_closing_fails_the_rest()
    {
        let now = Instant::now();
        let mut session = session(now);
        let (request, mut reply) = telemetry_command("q0", QoS::AtMostOnce);
        session.handle_request(request);
        assert!(matches!(reply.try_recv(), Ok(Ok(()))));
        match &drain(&mut session, now)[..] {
            [Packet::Publish(publish)] => {
                assert_eq!(publish.qos, QoS::AtMostOnce);
                assert_eq!(publish.packet_id, None);
            }
            other => panic!("expected one QoS 0 publish, got {other:?}"),
        }
        session.connection_lost();
        let (request, mut reply) = telemetry_command("q0", QoS::AtMostOnce);
        session.handle_request(request);
        assert!(matches!(reply.try_recv(), Ok(Err(SendError::Disconnected))));
        let (request, mut pending) = telemetry_command("q1", QoS::AtLeastOnce);
        session.handle_request(request);
        session.fail_all();
        assert!(matches!(
            pending.try_recv(),
            Ok(Err(SendError::Disconnected))
        ));
    }

    #[test]
    fn cloud_to_device_messages_are_left_unacknowledged_and_unknown_topics_acknowledged() {
        let now = Instant::now();
        let mut session = session(now);
        session
            .handle_packet(hub_publish(
                "devices/dev1/messages/devicebound/%24.mid=1",
                Some(7),
                "x",
            ))
            .expect("valid");
        assert!(drain(&mut session, now).is_empty());
        session
            .handle_packet(hub_publish("somewhere/else", Some(8), "x"))
            .expect("valid");
        assert_eq!(
            drain(&mut session, now),
            vec![Packet::PubAck(PacketId::new(8).expect("non-zero"))]
        );
    }

    fn c2d_stream(session: &mut Session, now: Instant) -> tokio::sync::mpsc::Receiver<Delivered> {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let (reply, mut subscribe_reply) = oneshot::channel();
        session.handle_request(Request::CloudToDevice(Box::new(CloudToDeviceCommand {
            sink: crate::c2d::tests_support::sink(sender),
            reply,
        })));
        let sent = drain(session, now);
        let subscribe_id = expect_subscribe(&sent[0], "devices/dev1/messages/devicebound/#");
        session
            .handle_packet(suback(
                subscribe_id,
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
            ))
            .expect("valid");
        assert!(matches!(subscribe_reply.try_recv(), Ok(Ok(()))));
        receiver
    }

    #[test]
    fn cloud_to_device_messages_are_acknowledged_only_when_the_application_took_them() {
        let now = Instant::now();
        let mut session = session(now);
        let mut receiver = c2d_stream(&mut session, now);
        session
            .handle_packet(hub_publish(
                "devices/dev1/messages/devicebound/%24.mid=m1&prop=v",
                Some(7),
                "hello",
            ))
            .expect("valid");
        assert!(drain(&mut session, now).is_empty(), "no PUBACK yet");
        let delivered = receiver.try_recv().expect("handed over");
        assert_eq!(delivered.message.message_id(), Some("m1"));
        assert_eq!(delivered.message.property("prop"), Some("v"));
        assert_eq!(delivered.message.body_text(), Some("hello"));
        let ack = delivered.ack.expect("QoS 1");
        session.handle_request(Request::AcknowledgeCloudToDevice(ack));
        assert_eq!(
            drain(&mut session, now),
            vec![Packet::PubAck(PacketId::new(7).expect("non-zero"))]
        );
    }

    #[test]
    fn an_acknowledgement_for_a_lost_connection_is_dropped_and_the_subscription_renewed() {
        let now = Instant::now();
        let mut session = session(now);
        let mut receiver = c2d_stream(&mut session, now);
        session
            .handle_packet(hub_publish(
                "devices/dev1/messages/devicebound/%24.mid=m1",
                Some(3),
                "x",
            ))
            .expect("valid");
        let ack = receiver
            .try_recv()
            .expect("handed over")
            .ack
            .expect("QoS 1");
        session.connection_lost();
        session.connected(now);
        let resubscribed = drain(&mut session, now);
        expect_subscribe(&resubscribed[0], "devices/dev1/messages/devicebound/#");
        session.handle_request(Request::AcknowledgeCloudToDevice(ack));
        assert!(
            drain(&mut session, now).is_empty(),
            "packet id 3 may name another message on the new connection"
        );
    }

    #[test]
    fn messages_delivered_before_the_stream_exists_wait_for_it() {
        let now = Instant::now();
        let mut session = session(now);
        session
            .handle_packet(hub_publish(
                "devices/dev1/messages/devicebound/%24.mid=early",
                Some(9),
                "x",
            ))
            .expect("valid");
        assert!(drain(&mut session, now).is_empty());
        let mut receiver = c2d_stream(&mut session, now);
        let delivered = receiver.try_recv().expect("from the backlog");
        assert_eq!(delivered.message.message_id(), Some("early"));
        session.handle_request(Request::AcknowledgeCloudToDevice(
            delivered.ack.expect("QoS 1"),
        ));
        assert_eq!(
            drain(&mut session, now),
            vec![Packet::PubAck(PacketId::new(9).expect("non-zero"))]
        );
    }

    #[test]
    fn protocol_violations_from_the_hub_close_the_connection() {
        let now = Instant::now();
        let violations = [
            Packet::PingReq,
            Packet::Disconnect,
            Packet::ConnAck(fleethub_mqtt::ConnAck {
                session_present: false,
                code: ConnectReturnCode::Accepted,
            }),
            Packet::PubRel(PacketId::new(1).expect("non-zero")),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "$iothub/twin/res/200/?$rid=1".into(),
                packet_id: PacketId::new(1),
                payload: Bytes::new(),
            }),
        ];
        for packet in violations {
            let name = packet.name();
            let result = session(now).handle_packet(packet);
            assert!(
                matches!(result, Err(DisconnectReason::ProtocolViolation(_))),
                "{name}"
            );
        }
        let mut lenient = session(now);
        lenient
            .handle_packet(Packet::PubAck(PacketId::new(3).expect("non-zero")))
            .expect("unknown PUBACK is ignored");
        lenient
            .handle_packet(suback(
                PacketId::new(3).expect("non-zero"),
                SubscribeReturnCode::Failure,
            ))
            .expect("ignored");
    }

    #[test]
    fn keep_alive_pings_when_idle_and_fails_without_pingresp() {
        let start = Instant::now();
        let mut session = session(start);
        assert_eq!(session.next_deadline(), Some(start + KEEP_ALIVE));

        // Sending postpones the ping.
        let later = start + Duration::from_secs(30);
        session.outgoing.push_back(Packet::PingResp);
        drain(&mut session, later);
        session.on_timer(start + KEEP_ALIVE).expect("not yet");
        assert!(drain(&mut session, start + KEEP_ALIVE).is_empty());

        let ping_at = later + KEEP_ALIVE;
        assert_eq!(session.next_deadline(), Some(ping_at));
        session.on_timer(ping_at).expect("ping");
        assert_eq!(drain(&mut session, ping_at), vec![Packet::PingReq]);
        session.handle_packet(Packet::PingResp).expect("valid");
        assert_eq!(session.next_deadline(), Some(ping_at + KEEP_ALIVE));

        let second_ping = ping_at + KEEP_ALIVE;
        session.on_timer(second_ping).expect("ping");
        drain(&mut session, second_ping);
        assert_eq!(session.next_deadline(), Some(second_ping + KEEP_ALIVE));
        assert_eq!(
            session.on_timer(second_ping + KEEP_ALIVE),
            Err(DisconnectReason::KeepAliveTimeout)
        );
    }

    #[test]
    fn zero_keep_alive_never_pings() {
        let now = Instant::now();
        let mut session =
            Session::new(ClientId::parse("dev1").expect("valid"), Duration::ZERO, now);
        assert_eq!(session.next_deadline(), None);
        session
            .on_timer(now + Duration::from_secs(100_000))
            .expect("no keep-alive");
        assert!(drain(&mut session, now).is_empty());
    }

    #[test]
    fn packet_ids_wrap_and_skip_ids_still_in_flight() {
        let now = Instant::now();
        let mut session = session(now);
        session.last_packet_id = u16::MAX - 1;
        session.publish("a".into(), Bytes::new(), None);
        session.publish("b".into(), Bytes::new(), None);
        session.last_packet_id = u16::MAX - 1;
        session.publish("c".into(), Bytes::new(), None);
        let ids: Vec<u16> = drain(&mut session, now)
            .iter()
            .map(|packet| expect_publish(packet).packet_id.expect("QoS 1").get())
            .collect();
        assert_eq!(ids, [u16::MAX, 1, 2]);
    }
}
