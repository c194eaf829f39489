//! The fleethub service SDK: a typed async client of the Azure IoT Hub service REST API, for back-end code,
//! tools and tests. It speaks the same wire protocol as Microsoft's service SDKs (api-version `2021-04-12`), so
//! the same code drives a fleethub hub and a real Azure IoT Hub.
//!
//! # Overview
//!
//! A [`ServiceClient`] is built from a shared access policy's connection string
//! (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`; `HostName` may carry `:port`) and
//! [`ServiceClientOptions`] (the CA to trust and a request timeout). It covers:
//!
//! - the identity registry: [`create_device`](ServiceClient::create_device),
//!   [`update_device`](ServiceClient::update_device), [`get_device`](ServiceClient::get_device),
//!   [`list_devices`](ServiceClient::list_devices), [`delete_device`](ServiceClient::delete_device) and the same
//!   for modules; [`registry_statistics`](ServiceClient::registry_statistics),
//!   [`service_statistics`](ServiceClient::service_statistics); [`bulk_registry`](ServiceClient::bulk_registry)
//!   creates, updates and deletes many identities in one request (Azure's `importMode` items);
//! - twins: [`get_twin`](ServiceClient::get_twin), [`update_twin`](ServiceClient::update_twin) (merge patch),
//!   [`replace_twin`](ServiceClient::replace_twin), and the module-twin variants;
//! - direct methods: [`invoke_method`](ServiceClient::invoke_method),
//!   [`invoke_module_method`](ServiceClient::invoke_module_method);
//! - twin queries: [`query`](ServiceClient::query) streams every result across pages,
//!   [`query_page`](ServiceClient::query_page) gives one page and its continuation token;
//! - jobs (Jobs v2): [`create_job`](ServiceClient::create_job), [`get_job`](ServiceClient::get_job),
//!   [`cancel_job`](ServiceClient::cancel_job), [`query_jobs`](ServiceClient::query_jobs) (every page) and
//!   [`query_jobs_page`](ServiceClient::query_jobs_page); [`watch_job`](ServiceClient::watch_job) follows a
//!   job's progress until it ends, pushed by the hub (a fleethub extension);
//! - configurations (automatic device management):
//!   [`create_configuration`](ServiceClient::create_configuration),
//!   [`update_configuration`](ServiceClient::update_configuration),
//!   [`get_configuration`](ServiceClient::get_configuration),
//!   [`list_configurations`](ServiceClient::list_configurations),
//!   [`delete_configuration`](ServiceClient::delete_configuration),
//!   [`test_configuration_queries`](ServiceClient::test_configuration_queries);
//! - firmware artifacts (a fleethub extension): [`upload_artifact`](ServiceClient::upload_artifact) streams an
//!   image from disk (with a signed manifest or without), [`list_artifacts`](ServiceClient::list_artifacts),
//!   [`get_artifact`](ServiceClient::get_artifact), [`delete_artifact`](ServiceClient::delete_artifact), and
//!   [`create_grant`](ServiceClient::create_grant) entitles a device and returns its signed download URL;
//! - firmware rollouts (a fleethub extension): [`create_rollout`](ServiceClient::create_rollout),
//!   [`get_rollout`](ServiceClient::get_rollout), [`list_rollouts`](ServiceClient::list_rollouts),
//!   [`pause_rollout`](ServiceClient::pause_rollout), [`resume_rollout`](ServiceClient::resume_rollout),
//!   [`approve_rollout`](ServiceClient::approve_rollout), [`abort_rollout`](ServiceClient::abort_rollout);
//!   [`watch_rollout`](ServiceClient::watch_rollout) follows one, wave by wave, until it ends;
//! - the change feed, pushed: [`watch_changes`](ServiceClient::watch_changes) (a fleethub extension, not in
//!   Azure) streams twin, identity, connection, job and rollout changes and resumes by itself after a dropped
//!   connection;
//! - the event log (a fleethub extension; Azure's built-in Event Hubs endpoint):
//!   [`read_events`](ServiceClient::read_events) streams device-to-cloud messages and twin, connection and
//!   lifecycle events and resumes by itself after a dropped connection; consumer groups'
//!   [`save_checkpoints`](ServiceClient::save_checkpoints) and [`checkpoints`](ServiceClient::checkpoints);
//!   [`event_partitions`](ServiceClient::event_partitions);
//! - message routing (a fleethub extension; Azure's `properties.routing` shape):
//!   [`get_routing`](ServiceClient::get_routing) and [`set_routing`](ServiceClient::set_routing) (with its
//!   etag), [`test_route`](ServiceClient::test_route), [`test_all_routes`](ServiceClient::test_all_routes),
//!   [`routing_health`](ServiceClient::routing_health), [`dead_letters`](ServiceClient::dead_letters);
//! - cloud-to-device messages: [`send_c2d`](ServiceClient::send_c2d) queues one for a device (a fleethub
//!   extension: Azure's service SDKs send over AMQP), [`purge_c2d`](ServiceClient::purge_c2d) empties a queue;
//!   their feedback with [`receive_feedback`](ServiceClient::receive_feedback),
//!   [`complete_feedback`](ServiceClient::complete_feedback), [`abandon_feedback`](ServiceClient::abandon_feedback)
//!   or, record by record, [`feedback_stream`](ServiceClient::feedback_stream);
//! - keys: [`renew_device_key`](ServiceClient::renew_device_key) and
//!   [`renew_module_key`](ServiceClient::renew_module_key) (as `az iot hub device-identity renew-key`),
//!   [`regenerate_policy_key`](ServiceClient::regenerate_policy_key) (a fleethub extension);
//! - [`raw`](ServiceClient::raw): any signed request, for endpoints not wrapped yet and for tests.
//!
//! The JSON types ([`Device`](protocol::rest::Device), [`Twin`](protocol::rest::Twin), ...) and ids
//! ([`DeviceId`](protocol::ids::DeviceId), [`ETag`](protocol::ids::ETag)) come from `fleethub-protocol`, re-exported
//! as [`protocol`].
//!
//! ```no_run
//! use fleethub_service::protocol::ids::DeviceId;
//! use fleethub_service::protocol::rest::{CloudToDeviceMethod, Device};
//! use fleethub_service::{ServiceClient, ServiceClientOptions};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let options = ServiceClientOptions {
//!     // The hub's CA; leave it `None` for Azure IoT Hub.
//!     ca_pem: Some(std::fs::read_to_string("data/ca.pem")?),
//!     ..Default::default()
//! };
//! let client = ServiceClient::from_connection_string(
//!     "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=...",
//!     options,
//! )?;
//!
//! let device_id = DeviceId::new("thermostat-1")?;
//! let device = client.create_device(&Device::new(device_id.clone())).await?; // the hub generates the keys
//! println!("{}", client.device_connection_string(&device).unwrap_or_default());
//!
//! let twin = client.get_twin(&device_id).await?;
//! let patch = json!({"properties": {"desired": {"telemetryInterval": 5}}});
//! client.update_twin(&device_id, &patch, twin.etag.as_ref()).await?;
//!
//! let request = CloudToDeviceMethod {
//!     method_name: "reboot".to_owned(),
//!     payload: json!({"delay": 5}),
//!     response_timeout_in_seconds: Some(30),
//!     connect_timeout_in_seconds: Some(5),
//! };
//! let result = client.invoke_method(&device_id, &request).await?;
//! println!("device answered {}: {}", result.status, result.payload);
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every call returns [`ServiceError`]: [`Api`](ServiceError::Api) when the hub refused (HTTP status plus the IoT
//! Hub error code from the `iothub-errorcode` header or the body, see
//! [`ServiceError::error_code`]), [`Tls`](ServiceError::Tls) when the hub's certificate is not trusted (wrong
//! `ca_pem`), [`Transport`](ServiceError::Transport) and [`Timeout`](ServiceError::Timeout) when it could not be
//! reached, [`Decode`](ServiceError::Decode) when a success answer is not the expected JSON,
//! [`File`](ServiceError::File) when a file to upload cannot be read.
//!
//! # Performance
//!
//! One client holds one connection pool (HTTP/1.1 keep-alive, one connection per concurrent request, idle ones
//! reused) and one SAS token, valid for an hour and renewed five minutes before it expires; clone the client
//! rather than building one per task. Requests are not retried: the caller knows whether a write is safe to
//! repeat ([`ServiceError::is_connectivity`] tells which failures are worth it).
//!
//! # Azure IoT Hub
//!
//! Against Azure, pass a policy connection string from the portal and `ca_pem: None`: the hub's certificate is
//! then checked against the operating system's roots (on Linux `SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured).
//! Everything sent follows the captures of the official Python SDK in PROTOCOL.md §3 (paths escaped with
//! `quote(id, safe="")`, `If-Match: "etag"`/`"*"`, the same SAS token format), so Azure accepts it; this is not
//! exercised by our tests, which have no Azure subscription. Azure-specific limits apply there and not here:
//! `list_devices` returns at most 1000 devices, and twin/method payload limits are Azure's.
//!
//! TLS is rustls with the *ring* provider, passed explicitly: the SDK installs no process-wide crypto provider.

mod audit;
mod auth;
mod bulk;
mod c2d;
mod certificates;
mod changes;
mod client;
mod configurations;
mod error;
mod events;
mod firmware;
mod jobs;
mod keys;
mod methods;
mod query;
mod registry;
mod rollouts;
mod routing;
mod sse;
mod tls;
mod twins;
mod wire;

pub use audit::AuditQuery;
pub use auth::{RENEW_BEFORE_EXPIRY_SECONDS, TOKEN_LIFETIME_SECONDS};
pub use c2d::{FeedbackStream, ReceivedFeedback};
pub use changes::{ChangeStream, WatchOptions};
pub use client::{RawResponse, ServiceClient, ServiceClientOptions};
pub use error::{ConfigError, ServiceError};
pub use events::{EventReadOptions, EventStart, EventStream};
pub use firmware::{ArtifactUpload, UploadProgress};
pub use jobs::{JobPage, JobProgress, JobWatch};
pub use keys::{KeyToRenew, SharedAccessPolicy};
pub use query::{QueryPage, QueryStream};
pub use rollouts::{RolloutProgress, RolloutWatch};
pub use routing::{DeadLetterQuery, RoutingConfiguration};
pub use wire::API_VERSION;

/// The wire types this client takes and returns (ids, REST JSON shapes, error codes, connection strings).
pub use fleethub_protocol as protocol;
/// HTTP types used by [`ServiceClient::raw`] and [`RawResponse`].
pub use reqwest::{Method, StatusCode, header::HeaderMap};
