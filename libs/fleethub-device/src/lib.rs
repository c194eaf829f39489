//! The fleethub device SDK: connect a device or module to an IoT hub over MQTT 3.1.1 (TLS or secure
//! WebSocket), read and report twin properties, follow desired-property patches, and answer direct methods.
//!
//! It speaks IoT Hub's wire protocol exactly as Microsoft's device SDKs do (same topics, same SAS token
//! authentication, same MQTT user name shape, clean-session 0), so the same client connects to a fleethub
//! hub and to Azure IoT Hub unchanged. Against Azure, pass Azure's root CA (DigiCert Global Root G2) as
//! `ca_pem`; that path is not tested here.
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
//! // Follow desired properties: subscribe first, then read the twin, then apply newer patches.
//! let mut patches = client.desired_patches().await?;
//! let twin = client.get_twin().await?;
//! println!("desired now: {}", twin["desired"]);
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
//! while let Some(patch) = patches.next().await {
//!     println!("desired patch {patch}");
//! #   break;
//! }
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//! Each client is one Tokio task that owns the connection and a pure session state machine
//! (packet ids, PUBACK/SUBACK tracking, `$rid` correlation, keep-alive); [`DeviceClient`] handles send it
//! commands over a small bounded channel. Twin requests and method responses are QoS 1. Nothing the
//! application does can stall the connection task: method handlers run in their own tasks (at most 32 at
//! once per client), desired patches are handed over through a bounded queue that resynchronises from the
//! twin instead of blocking, and twin requests are limited to 16 in flight per client. An idle client
//! holds its TLS state, a 1 KiB read buffer and a few small allocations, so thousands fit in one process.
//!
//! Not yet: reconnecting with backoff, SAS token renewal before expiry, telemetry, cloud-to-device
//! messages, X.509 authentication. The API is shaped so that they arrive without breaking changes.

mod client;
mod connection;
mod credentials;
mod desired;
mod error;
mod methods;
mod options;
mod session;
mod transport;
mod twin;

pub use crate::client::DeviceClient;
pub use crate::connection::{ConnectionState, DisconnectReason};
pub use crate::desired::DesiredPatchStream;
pub use crate::error::{ConnectError, ConnectStage, DisconnectError, SubscribeError, TwinError};
pub use crate::methods::{MethodRequest, MethodResponse};
pub use crate::options::{DeviceClientOptions, Transport};
pub use fleethub_mqtt::ConnectReturnCode;
pub use fleethub_protocol::errors::{ErrorCode, ReportedErrorCode};
pub use fleethub_protocol::ids::ClientId;
