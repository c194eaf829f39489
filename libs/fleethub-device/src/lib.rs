//! The fleethub device SDK: connect a device or module to an IoT hub over MQTT 3.1.1 (TLS or secure
//! WebSocket), send telemetry, receive cloud-to-device messages, read and report twin properties, follow the
//! desired properties, and answer direct methods; and stay connected doing so, across network outages, hub restarts and SAS token expiry.
//!
//! ```no_run
//! use fleethub_device::{DeviceClient, DeviceClientOptions, MethodRequest, MethodResponse};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let ca_pem = std::fs::read_to_string("ca.pem")?;
//! let client = DeviceClient::connect(
//!     "HostName=localhost;DeviceId=thermostat-1;SharedAccessKey=...",
//!     DeviceClientOptions::default().with_ca_pem(ca_pem),
//! )
//! .await?;
//!
//! client
//!     .on_method(|request: MethodRequest| async move {
//!         println!("{} called with {}", request.method_name, request.payload);
//!         MethodResponse::ok(json!({ "Response": "done" }))
//!     })
//!     .await?;
//!
//! let version = client.patch_reported(&json!({ "firmwareStatus": "standBy" })).await?;
//! println!("reported properties now at version {version}");
//!
//! // The desired state: first the whole desired section, then each change, once, in version order.
//! let mut desired = client.desired_patches().await?;
//! while let Some(change) = desired.next().await {
//!     println!("desired properties at version {}: {change}", change["$version"]);
//! #   break;
//! }
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Staying connected
//! - **Reconnection.** When the connection is lost (an I/O error, the hub closing it, a keep-alive without
//!   answer, a protocol violation by the hub), the client reconnects by itself with exponential backoff and
//!   full jitter ([`ReconnectPolicy`]: from 100 ms up to 30 s, forever, by default). It stops only on an error
//!   that retrying cannot fix ([`ConnectError::is_permanent`]: the hub refusing the credentials with CONNACK 4
//!   or 5, which is what a fleethub hub answers once a device is disabled or deleted; an untrusted server
//!   certificate; ...), or when the policy's attempts run out. [`DeviceClient::connection_state`] shows
//!   `Reconnecting { attempt, since, reason }` meanwhile, and `Disconnected(reason)` once it has stopped.
//! - **Session continuity.** The client id and clean-session 0 stay the same, so a hub that keeps sessions
//!   still has the subscriptions; the client subscribes again anyway (for hubs that do not). QoS 1 publishes
//!   the hub had not acknowledged are re-sent with DUP set. Twin requests keep waiting until their deadline:
//!   a GET is sent again, a reported patch the hub had not acknowledged is re-sent (it may be applied twice,
//!   which leaves the same properties), and one it had acknowledged fails with [`TwinError::Disconnected`]
//!   because its response went down with the connection. Operations started during an outage wait for the
//!   next connection; a request still waiting at its deadline fails with `Disconnected`. The method handler
//!   survives, and a method response the old connection did not deliver goes out on the new one.
//! - **Desired properties exactly once.** After every (re)connection the [`DesiredPatchStream`] fetches the
//!   twin and yields the whole desired section if its `$version` is newer than the last item it yielded, and
//!   it drops every patch whose `$version` is at most that. A change made while the device was offline thus
//!   arrives once, inside that desired section, never also as a patch.
//! - **SAS token renewal.** With a `SharedAccessKey` the client signs a token for each connection, valid for
//!   [`DeviceClientOptions::sas_ttl`] (1 h by default), and 2 to 3 minutes before it expires (20 to 30 % of
//!   short lifetimes before) it sends DISCONNECT and connects again with a fresh token, as Azure's SDKs do. It waits for a moment when nothing is in flight, so nothing is interrupted; subscriptions and
//!   handlers carry over as after any reconnection. A ready-made `SharedAccessSignature` in the connection
//!   string cannot be renewed: the client disconnects when it expires
//!   ([`DisconnectReason::SasTokenExpired`]); connect again with a new connection string.
//! - **X.509.** With `x509=true` in the connection string (`HostName=...;DeviceId=...;x509=true`, as Azure's
//!   SDKs take it) the client presents [`DeviceClientOptions::client_certificate`] (a [`ClientCertificate`]
//!   from PEM text or files) in the TLS handshake and sends CONNECT without a password; there is no token to
//!   renew. The hub accepts it by thumbprint (`selfSigned`) or by its chain to a verified CA
//!   (`certificateAuthority`).
//!
//! # Azure IoT Hub
//! The client speaks IoT Hub's wire protocol exactly as Microsoft's device SDKs do (same topics, same SAS
//! token authentication, same MQTT user name shape, clean-session 0, the same reconnect and renewal
//! behaviour), so the same client connects to a fleethub hub and to Azure IoT Hub unchanged: pass Azure's
//! root CA (DigiCert Global Root G2) as `ca_pem` and the connection string from the Azure portal. That
//! path cannot be tested here and is not.
//!
//! # How it works
//! Each client is one Tokio task that owns the connection and a pure session state machine (packet ids,
//! PUBACK/SUBACK tracking, `$rid` correlation, keep-alive, what to re-send after a reconnection);
//! [`DeviceClient`] handles send it commands over a small bounded channel. Reconnection and renewal happen
//! inside that task: a client is one task whatever happens to its connection. Twin requests and method
//! responses are QoS 1. Nothing the application does can stall the connection task: method handlers run in
//! their own tasks (at most 32 at once per client), desired patches are handed over through a bounded queue
//! that resynchronises from the twin instead of blocking, and twin requests are limited to 16 in flight per
//! client. An idle client holds its TLS state, a 1 KiB read buffer, a task of about 2 KiB and a few small
//! allocations, so thousands fit in one process; what reconnecting needs (about 18 KiB for a handshake in
//! progress) is allocated only while reconnecting.
//!
//! Telemetry: [`DeviceClient::send_message`] publishes a [`Message`] (body, system properties such as
//! message id and content type, application properties) at QoS 1 and resolves at its PUBACK; calls pipeline,
//! up to 64 in flight per client, each completing on its own.
//!
//! Cloud-to-device messages: [`DeviceClient::cloud_to_device_messages`] subscribes and returns a
//! [`CloudToDeviceStream`] of [`CloudToDeviceMessage`]s (body, system and application properties); each is
//! acknowledged to the hub once the application has taken it, and the subscription survives reconnections.
//!
//! The API is shaped so that later features arrive without breaking changes: options, errors, states and
//! reasons are `#[non_exhaustive]`, and the session re-sends and re-subscribes whatever it tracks.

mod c2d;
mod client;
mod connection;
mod credentials;
mod desired;
mod error;
mod methods;
mod options;
mod reconnect;
mod session;
mod telemetry;
mod transport;
mod twin;

pub use crate::c2d::{CloudToDeviceMessage, CloudToDeviceStream};
pub use crate::client::DeviceClient;
pub use crate::connection::{ConnectionState, DisconnectReason};
pub use crate::desired::DesiredPatchStream;
pub use crate::error::{
    ConnectError, ConnectStage, DisconnectError, SendError, SubscribeError, TwinError,
};
pub use crate::methods::{MethodRequest, MethodResponse};
pub use crate::options::{ClientCertificate, DeviceClientOptions, ReconnectPolicy, Transport};
pub use crate::telemetry::Message;
pub use fleethub_mqtt::ConnectReturnCode;
pub use fleethub_protocol::errors::{ErrorCode, ReportedErrorCode};
pub use fleethub_protocol::ids::ClientId;
