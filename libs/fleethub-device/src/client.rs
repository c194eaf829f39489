//! [`DeviceClient`], the handle applications hold: connect, twin requests, desired patches, direct methods,
//! device-to-cloud messages, disconnect. Every operation is a message to the connection task and an answer
//! back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleethub_protocol::ids::ClientId;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::c2d::{CloudToDeviceStream, PendingAck, c2d_channel};
use crate::connection::{ConnectionState, ConnectionTask, Dialer};
use crate::credentials::Identity;
use crate::desired::{DesiredPatchStream, patch_channel};
use crate::error::{ConnectError, DisconnectError, SendError, SubscribeError, TwinError};
use crate::methods::{MethodRequest, MethodResponse, erase_handler};
use crate::options::DeviceClientOptions;
use crate::reconnect::Jitter;
use crate::session::{
    CloudToDeviceCommand, Command, DesiredPatchesCommand, OnMethodCommand, Request, Session,
    SubscribeReply, TelemetryCommand, TwinCommand,
};
use crate::telemetry::{MAX_MESSAGES_IN_FLIGHT, Message};
use crate::transport::{tls_config, tls_config_with_client_certificate};
use crate::twin::{
    MAX_CONCURRENT_TWIN_REQUESTS, TwinRequest, TwinResponse, reported_version_from_response,
    twin_from_response,
};

/// Commands waiting for the connection task. It takes them as they come, so a few slots suffice.
const COMMAND_QUEUE: usize = 8;
/// The connection task answers a twin request by its deadline; a caller waits this much longer before
/// concluding that the task has stopped running.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A device or module connected to IoT Hub over MQTT.
///
/// Cheap to clone; all clones share one connection and one task. The client stays alive until
/// [`disconnect`](Self::disconnect) is called on any clone, every clone (and every [`DesiredPatchStream`] and
/// [`CloudToDeviceStream`]) is dropped (the task still sends DISCONNECT), or reconnecting fails for good. A
/// method handler that captures a clone keeps the client alive until `disconnect` is called.
///
/// A lost connection is not the end: the client reconnects on its own (see
/// [`ReconnectPolicy`](crate::ReconnectPolicy)), subscribes again, re-sends what the hub had not
/// acknowledged, and keeps its method handler and desired-patch stream. Operations started meanwhile wait
/// for the new connection within their timeouts. Only once the client has stopped
/// ([`ConnectionState::Disconnected`]) do operations fail with a `Disconnected` error at once.
#[derive(Clone)]
pub struct DeviceClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    client_id: ClientId,
    operation_timeout: Duration,
    twin_permits: Semaphore,
    message_permits: Semaphore,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DeviceClient")
            .field("client_id", &self.inner.client_id)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl DeviceClient {
    /// Connects with a device (`HostName=..;DeviceId=..;SharedAccessKey=..`) or module (`..;ModuleId=..`)
    /// connection string. `GatewayHostName` is dialled when present; `HostName` always goes into the MQTT
    /// user name and the SAS token. A `SharedAccessSignature` in the string is used as is.
    ///
    /// Resolves once the hub has accepted the connection (CONNACK 0). This first connection is not retried:
    /// its error is returned as is (only later losses are reconnected). The connection string is read before
    /// the future is returned, so the future borrows nothing and can be spawned (the load tool connects
    /// thousands of clients that way). Must run within a Tokio runtime: it spawns the connection task.
    ///
    /// With a `SharedAccessKey` the client signs a token for each connection and renews it before it
    /// expires (see [`DeviceClientOptions::sas_ttl`]). A `SharedAccessSignature` cannot be renewed: the
    /// client disconnects when it expires, ending in
    /// [`DisconnectReason::SasTokenExpired`](crate::DisconnectReason::SasTokenExpired), and refuses to start
    /// with one that has already expired ([`ConnectError::SasTokenExpired`]).
    pub fn connect(
        connection_string: &str,
        options: DeviceClientOptions,
    ) -> impl Future<Output = Result<Self, ConnectError>> + Send + 'static {
        let identity = Identity::from_connection_string(connection_string);
        async move { Self::connect_identity(identity?, options).await }
    }

    async fn connect_identity(
        identity: Identity,
        options: DeviceClientOptions,
    ) -> Result<Self, ConnectError> {
        let ca_pem = options
            .ca_pem
            .as_deref()
            .ok_or(ConnectError::MissingCaCertificate)?;
        let tls = match &options.client_certificate {
            Some(client_certificate) => {
                tls_config_with_client_certificate(ca_pem, client_certificate)?
            }
            None if identity.uses_x509() => return Err(ConnectError::MissingClientCertificate),
            None => tls_config(ca_pem)?,
        };
        let client_id = identity.client_id.clone();
        let dialer = Dialer::new(identity, &options, tls);
        let mut jitter = Jitter::seeded((&client_id, std::time::Instant::now()));
        let established = dialer.establish(jitter.next_u64()).await?;
        tracing::debug!(
            %client_id,
            session_present = established.session_present,
            "connected to the hub"
        );

        let (command_sender, commands) = mpsc::channel(COMMAND_QUEUE);
        let (state_sender, state) = watch::channel(ConnectionState::Connected);
        let keep_alive = Duration::from_secs(u64::from(options.keep_alive_seconds()));
        let session = Session::new(client_id.clone(), keep_alive, Instant::now());
        let task = ConnectionTask::new(
            dialer,
            session,
            commands,
            command_sender.downgrade(),
            state_sender,
            jitter,
            &options,
        );
        tokio::spawn(task.run(established));

        Ok(Self {
            inner: Arc::new(ClientInner {
                commands: command_sender,
                state,
                client_id,
                operation_timeout: options.operation_timeout,
                twin_permits: Semaphore::new(MAX_CONCURRENT_TWIN_REQUESTS),
                message_permits: Semaphore::new(MAX_MESSAGES_IN_FLIGHT),
            }),
        })
    }

    /// `dev` or `dev/mod`: the MQTT client id, naming this device or module.
    pub fn client_id(&self) -> &ClientId {
        &self.inner.client_id
    }

    /// The connection state now and its changes: `Connected`; `Reconnecting` and `Connecting` and back to
    /// `Connected` as connections are lost and tokens renewed; `Disconnected(reason)` once, at the end. A
    /// watch holds only the latest value, so it costs nothing per change; a slow observer may skip a short
    /// `Connecting` or `Reconnecting` but never misses the final `Disconnected`.
    ///
    /// ```no_run
    /// # async fn example(client: fleethub_device::DeviceClient) {
    /// use fleethub_device::ConnectionState;
    ///
    /// let mut state = client.connection_state();
    /// while state.changed().await.is_ok() {
    ///     match &*state.borrow_and_update() {
    ///         ConnectionState::Reconnecting { attempt, reason, .. } => {
    ///             eprintln!("connection lost ({reason}), reconnection attempt {attempt}")
    ///         }
    ///         ConnectionState::Disconnected(reason) => eprintln!("stopped: {reason}"),
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub fn connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Whether a connection is up right now (not reconnecting, renewing or stopped).
    pub fn is_connected(&self) -> bool {
        matches!(*self.inner.state.borrow(), ConnectionState::Connected)
    }

    /// The twin's properties document, `{"desired": {..., "$version": n}, "reported": {..., "$version": m}}`
    /// (with `$metadata`), as IoT Hub sends it to devices. Tags are not visible to devices.
    ///
    /// The first twin request subscribes to `$iothub/twin/res/#`. Fails after `operation_timeout`. A GET
    /// interrupted by a lost connection is sent again on the next one.
    pub async fn get_twin(&self) -> Result<Value, TwinError> {
        twin_from_response(self.twin_request(TwinRequest::Get).await?)
    }

    /// Sends a JSON merge patch of the reported properties (`null` deletes a key) and returns the new
    /// reported `$version`.
    ///
    /// Dropping the future or a timeout does not withdraw the patch: once sent, the hub may apply it. Across
    /// a lost connection, a patch the hub had not acknowledged is re-sent (MQTT QoS 1: it may then be
    /// applied twice, which leaves the same properties); one it had acknowledged is not, and fails with
    /// [`TwinError::Disconnected`] because its response was lost (it may have been applied).
    pub async fn patch_reported(&self, patch: &Value) -> Result<u64, TwinError> {
        let body = Bytes::from(serde_json::to_vec(patch).expect("a JSON value always serialises"));
        reported_version_from_response(self.twin_request(TwinRequest::PatchReported(body)).await?)
    }

    /// Subscribes to desired properties and returns them as a stream: first the whole desired section from
    /// the twin, then each patch, in strictly increasing `$version` order, each change once, across
    /// reconnections (details on [`DesiredPatchStream`]). No separate [`get_twin`](Self::get_twin) is needed to
    /// follow the desired state.
    ///
    /// One stream per client at a time; a second call fails with [`SubscribeError::AlreadyActive`] until the
    /// first stream is dropped.
    pub async fn desired_patches(&self) -> Result<DesiredPatchStream, SubscribeError> {
        let (sink, stream) = patch_channel(self.clone());
        self.subscribe(|reply| {
            Request::DesiredPatches(Box::new(DesiredPatchesCommand { sink, reply }))
        })
        .await?;
        Ok(stream)
    }

    /// Subscribes to cloud-to-device messages (`devices/{id}/messages/devicebound/#`) and returns them as a
    /// stream, in the order the hub sends them, with their system and application properties (details on
    /// [`CloudToDeviceStream`]). Each message is acknowledged to the hub when the application asks for the
    /// next one, so the hub removes it from the device's queue only then; messages not acknowledged when a
    /// connection is lost come again on the next. The subscription is renewed after every reconnection.
    ///
    /// One stream per client at a time; a second call fails with [`SubscribeError::AlreadyActive`] until the
    /// first stream is dropped. Messages a persistent session delivers before the stream exists wait for it.
    ///
    /// ```no_run
    /// # async fn example(client: fleethub_device::DeviceClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut messages = client.cloud_to_device_messages().await?;
    /// while let Some(message) = messages.next().await {
    ///     println!(
    ///         "{:?}: {:?} (priority {:?})",
    ///         message.message_id(),
    ///         message.body_text(),
    ///         message.property("priority")
    ///     );
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cloud_to_device_messages(&self) -> Result<CloudToDeviceStream, SubscribeError> {
        let (sink, stream) = c2d_channel(self.clone());
        self.subscribe(|reply| {
            Request::CloudToDevice(Box::new(CloudToDeviceCommand { sink, reply }))
        })
        .await?;
        Ok(stream)
    }

    /// Sends the PUBACK of a cloud-to-device message the application took (dropped when the client stopped).
    pub(crate) async fn acknowledge_cloud_to_device(&self, ack: PendingAck) {
        let _ = self.send(Request::AcknowledgeCloudToDevice(ack)).await;
    }

    /// [`acknowledge_cloud_to_device`](Self::acknowledge_cloud_to_device) without waiting (from `Drop`); a full
    /// command queue leaves the message to be delivered again.
    pub(crate) fn try_acknowledge_cloud_to_device(&self, ack: PendingAck) {
        let _ = self
            .inner
            .commands
            .try_send(Command::Request(Request::AcknowledgeCloudToDevice(ack)));
    }

    /// Subscribes to direct methods and answers each request with `handler`'s response
    /// (`$iothub/methods/res/{status}/?$rid=..`).
    ///
    /// Each request runs in its own task, so a slow method does not hold up others; at most 32 run at once
    /// and further requests are answered 429. A request whose payload is not JSON is answered 400 and a
    /// handler that panics 500, so the caller never waits for a timeout. Calling `on_method` again replaces
    /// the handler. For work that outlives the response (the firmware-update pattern), spawn it from the
    /// handler and return at once. The handler survives reconnections; a response that the lost connection
    /// did not deliver is sent on the next one.
    ///
    /// ```no_run
    /// # async fn example(client: fleethub_device::DeviceClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use fleethub_device::{MethodRequest, MethodResponse};
    /// use serde_json::json;
    ///
    /// client
    ///     .on_method(|request: MethodRequest| async move {
    ///         match request.method_name.as_str() {
    ///             "reboot" => MethodResponse::ok(json!({ "Response": "rebooting" })),
    ///             _ => MethodResponse::new(404, json!({ "message": "unknown method" })),
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn on_method<F, Fut>(&self, handler: F) -> Result<(), SubscribeError>
    where
        F: Fn(MethodRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MethodResponse> + Send + 'static,
    {
        let handler = erase_handler(handler);
        self.subscribe(|reply| Request::OnMethod(Box::new(OnMethodCommand { handler, reply })))
            .await
    }

    /// Sends a device-to-cloud message at QoS 1 and resolves once the hub acknowledged it (a fleethub hub
    /// acknowledges once the message is durable in its event log). Calls pipeline: run several at once (from
    /// clones, `join`, or spawned tasks) and up to 64 are in flight on the connection, each resolving at its
    /// own PUBACK; messages go out in the order the calls reached the client.
    ///
    /// Across a lost connection an unacknowledged message is re-sent (so it may arrive twice, as with any
    /// MQTT QoS 1 client; use a message id to tell). Fails with [`SendError::Timeout`] after
    /// `operation_timeout` (the message may still be delivered), [`SendError::TooLarge`] over IoT Hub's
    /// 256 KB, and [`SendError::Disconnected`] once the client has stopped.
    ///
    /// ```no_run
    /// # async fn example(client: fleethub_device::DeviceClient) -> Result<(), fleethub_device::SendError> {
    /// use fleethub_device::Message;
    /// use serde_json::json;
    ///
    /// let message = Message::json(&json!({"temperature": 21.5})).with_property("alert", "none");
    /// client.send_message(message).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_message(&self, message: Message) -> Result<(), SendError> {
        self.send_telemetry(message, fleethub_mqtt::QoS::AtLeastOnce)
            .await
    }

    /// Sends a device-to-cloud message at QoS 0: resolves once it is handed to the connection, with no
    /// acknowledgement and no re-send ([`SendError::Disconnected`] while the client is reconnecting).
    pub async fn send_message_at_most_once(&self, message: Message) -> Result<(), SendError> {
        self.send_telemetry(message, fleethub_mqtt::QoS::AtMostOnce)
            .await
    }

    async fn send_telemetry(
        &self,
        message: Message,
        qos: fleethub_mqtt::QoS,
    ) -> Result<(), SendError> {
        let (topic, payload) = message.into_publish(&self.inner.client_id)?;
        let timeout = self.inner.operation_timeout;
        let deadline = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        let queued = async {
            // The semaphore is never closed.
            let permit = self
                .inner
                .message_permits
                .acquire()
                .await
                .map_err(|_| SendError::Disconnected)?;
            let command = TelemetryCommand {
                topic,
                payload,
                qos,
                reply,
            };
            self.send(Request::Telemetry(Box::new(command)))
                .await
                .map_err(|_| SendError::Disconnected)?;
            Ok(permit)
        };
        let _permit = tokio::time::timeout_at(deadline, queued)
            .await
            .unwrap_or(Err(SendError::Timeout(timeout)))?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SendError::Disconnected),
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }

    /// Stops the client (every clone's): sends MQTT DISCONNECT and closes the connection, or stops
    /// reconnecting. Requests still waiting fail with `Disconnected`; responses already queued are sent
    /// first. A client that has already stopped is not an error.
    pub async fn disconnect(self) -> Result<(), DisconnectError> {
        if matches!(*self.inner.state.borrow(), ConnectionState::Disconnected(_)) {
            return Ok(());
        }
        let (reply, outcome) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Disconnect(reply))
            .await
            .is_err()
        {
            return Ok(());
        }
        // The task bounds the close itself by `operation_timeout`; this only guards against a task that
        // never gets to the command.
        let timeout = self.inner.operation_timeout.saturating_mul(2);
        match tokio::time::timeout(timeout, outcome).await {
            Ok(Ok(result)) => result,
            // The connection ended for another reason before taking the command.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(DisconnectError::Timeout(timeout)),
        }
    }

    /// One twin request, start to finish, within `operation_timeout` (waiting for a free slot included). The
    /// connection task answers by the deadline, with `Timeout` or, when it was reconnecting all along,
    /// `Disconnected`.
    async fn twin_request(&self, request: TwinRequest) -> Result<TwinResponse, TwinError> {
        let timeout = self.inner.operation_timeout;
        let deadline = Instant::now() + timeout;
        let (reply, response) = oneshot::channel();
        let queued = async {
            // The semaphore is never closed.
            let permit = self
                .inner
                .twin_permits
                .acquire()
                .await
                .map_err(|_| TwinError::Disconnected)?;
            let command = TwinCommand {
                request,
                deadline,
                timeout,
                reply,
            };
            self.send(Request::Twin(Box::new(command)))
                .await
                .map_err(|_| TwinError::Disconnected)?;
            Ok(permit)
        };
        let _permit = tokio::time::timeout_at(deadline, queued)
            .await
            .unwrap_or(Err(TwinError::Timeout(timeout)))?;
        match tokio::time::timeout_at(deadline + ANSWER_GRACE, response).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TwinError::Disconnected),
            Err(_) => Err(TwinError::Timeout(timeout)),
        }
    }

    async fn subscribe(
        &self,
        request: impl FnOnce(SubscribeReply) -> Request,
    ) -> Result<(), SubscribeError> {
        let timeout = self.inner.operation_timeout;
        let exchange = async {
            let (reply, response) = oneshot::channel();
            self.send(request(reply))
                .await
                .map_err(|_| SubscribeError::Disconnected)?;
            response.await.map_err(|_| SubscribeError::Disconnected)?
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(SubscribeError::Timeout(timeout)))
    }

    async fn send(&self, request: Request) -> Result<(), mpsc::error::SendError<Command>> {
        self.inner.commands.send(Command::Request(request)).await
    }
}
