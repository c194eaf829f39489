//! The values the store keeps and hands out, and its error type.

use fleethub_core::configuration::{ConfigurationError, ConfigurationId};
use fleethub_core::identity::{Identity, IdentityKey, IdentitySpecError};
use fleethub_core::twin::{TwinDocument, TwinPatchError};
use fleethub_protocol::c2d::LockToken;
pub use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::ids::{ETag, JobId, RolloutId};
use fleethub_protocol::rest::{
    DeviceCapabilities, NEVER_TIME, Twin, TwinProperties, X509Thumbprint,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One device or module: its identity and its twin, always read and written together.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRecord {
    pub key: IdentityKey,
    pub identity: Identity,
    pub twin: TwinDocument,
}

impl DeviceRecord {
    /// The service view of the twin: what `GET /twins/{id}` returns and what a query over `devices` (or
    /// `devices.modules`) sees for this identity.
    pub fn twin_json(&self) -> Value {
        let record = self;
        let identity = &record.identity;
        let properties = match record.twin.properties_json() {
            Value::Object(mut sections) => TwinProperties {
                desired: take_object(&mut sections, "desired"),
                reported: take_object(&mut sections, "reported"),
            },
            _ => TwinProperties::default(),
        };
        let twin = Twin {
            device_id: Some(record.key.device_id.clone()),
            module_id: record.key.module_id.clone(),
            etag: Some(ETag::new(record.twin.etag())),
            device_etag: Some(ETag::new(identity.etag())),
            status: Some(identity.status),
            status_reason: identity.status_reason.clone(),
            status_update_time: Some(identity.status_updated_time.unwrap_or(NEVER_TIME)),
            connection_state: Some(identity.connection_state),
            last_activity_time: Some(identity.last_activity_time.unwrap_or(NEVER_TIME)),
            cloud_to_device_message_count: Some(identity.cloud_to_device_message_count),
            authentication_type: Some(identity.authentication.kind),
            x509_thumbprint: Some(X509Thumbprint {
                primary_thumbprint: identity.authentication.primary_thumbprint.clone(),
                secondary_thumbprint: identity.authentication.secondary_thumbprint.clone(),
            }),
            model_id: Some(String::new()),
            version: Some(record.twin.version()),
            tags: Some(record.twin.tags().clone()),
            properties: Some(properties),
            capabilities: record
                .key
                .module_id
                .is_none()
                .then_some(DeviceCapabilities {
                    iot_edge: identity.iot_edge,
                }),
            device_scope: None,
            parent_scopes: None,
            // Added below, only when some configuration targets the twin.
            configurations: None,
        };
        let mut json = serde_json::to_value(twin).expect("REST shapes always serialise");
        // Automatic device management's `configurations.{id}.status`, when any configuration targets the twin.
        let configurations = record.twin.configurations();
        if !configurations.is_empty()
            && let Value::Object(members) = &mut json
        {
            members.insert("configurations".into(), configurations.to_json());
        }
        json
    }
}

fn take_object(map: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match map.remove(key) {
        Some(Value::Object(object)) => object,
        _ => Map::new(),
    }
}

/// A twin write, applied by the store inside its transaction with `fleethub-core`'s rules.
#[derive(Clone, Debug)]
pub enum TwinChange {
    /// A device's reported-properties patch (MQTT).
    ReportedPatch(Value),
    /// A service's `PATCH /twins/{id}` body (tags and desired properties).
    ServicePatch(Value),
    /// A service's `PUT /twins/{id}` body.
    ServiceReplace(Value),
}

#[derive(Clone, Debug)]
pub struct TwinUpdated {
    pub record: DeviceRecord,
    /// What to push to the connected device on `$iothub/twin/PATCH/properties/desired/`, if desired changed.
    pub desired_patch_for_device: Option<Value>,
}

/// A persisted MQTT session: the subscriptions of a clean-session-0 client, as raw filters and granted QoS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredSession {
    pub subscriptions: Vec<StoredSubscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
}

/// The desired properties a persistent session's device has, as far as the hub knows: what it last
/// acknowledged (desired patches at QoS 1) or was last sent (QoS 0). The next connection of the session
/// catches the device up from it. Kept beside the session's subscriptions and gone with them.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredCheckpoint {
    /// The desired `$version` the device has.
    pub version: u64,
    /// The desired properties at that version, without `$metadata` and `$version`.
    pub desired: Map<String, Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCounts {
    pub total_device_count: u64,
    pub enabled_device_count: u64,
    pub disabled_device_count: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(IdentityKey),
    #[error("device {0} not found")]
    ParentNotFound(DeviceId),
    #[error("{0} already exists")]
    AlreadyExists(IdentityKey),
    #[error("etag {given:?} does not match the current etag {current:?}")]
    PreconditionFailed { given: String, current: String },
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("job {0} already exists")]
    JobAlreadyExists(JobId),
    #[error("configuration {0} not found")]
    ConfigurationNotFound(ConfigurationId),
    #[error("configuration {0} already exists")]
    ConfigurationAlreadyExists(ConfigurationId),
    #[error("the hub already has {max} configurations, the most it can hold")]
    TooManyConfigurations { max: usize },
    #[error("firmware artifact {model} {version} not found")]
    ArtifactNotFound { model: String, version: String },
    #[error("firmware artifact {model} {version} already exists")]
    ArtifactAlreadyExists { model: String, version: String },
    /// An artifact that unfinished rollouts install or roll back to cannot be deleted.
    #[error(
        "firmware artifact {model} {version} is used by unfinished rollouts: {}; abort them or wait for them to end",
        rollouts.iter().map(RolloutId::as_str).collect::<Vec<_>>().join(", ")
    )]
    ArtifactInUse {
        model: String,
        version: String,
        rollouts: Vec<RolloutId>,
    },
    #[error("rollout {0} not found")]
    RolloutNotFound(RolloutId),
    #[error("rollout {0} already exists")]
    RolloutAlreadyExists(RolloutId),
    /// The device's cloud-to-device queue already holds `max` messages (Azure: 403004
    /// `DeviceMaximumQueueDepthExceeded`).
    #[error(
        "device {device_id} already has {max} cloud-to-device messages queued, the most it can hold"
    )]
    C2dQueueFull { device_id: DeviceId, max: usize },
    /// No message of the device matches the receipt: it was completed, rejected, expired or purged, or its
    /// lock ran out (Azure: 412002 `DeviceMessageLockLost`).
    #[error(
        "device {device_id} has no such cloud-to-device message: it was settled, expired or purged, or its lock expired"
    )]
    C2dMessageLockLost { device_id: DeviceId },
    /// No feedback batch is locked under this token any more: it was completed or abandoned, or its lock
    /// ran out.
    #[error("no feedback batch holds lock {0}: it was completed or abandoned, or its lock expired")]
    FeedbackLockLost(LockToken),
    #[error(transparent)]
    Configuration(#[from] ConfigurationError),
    #[error(transparent)]
    Twin(#[from] TwinPatchError),
    #[error(transparent)]
    IdentitySpec(#[from] IdentitySpecError),
    /// The data directory was written by a newer fleethub, or is damaged.
    #[error("data is not readable: {0}")]
    Incompatible(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Backend(error.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Incompatible(format!("stored JSON does not parse: {error}"))
    }
}
