//! The hub's services: registry, twins and direct methods. Adapters (REST, MQTT) call these; these never
//! see sockets, topics or HTTP, and reach storage only through the `Store` trait and devices only through
//! the `DeviceRouter`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use fleethub_core::access::AccessPolicy;
use fleethub_core::identity::{FreshKeys, IdentityKey, IdentitySpec};
use fleethub_protocol::ids::{DeviceId, IfMatch};
use fleethub_protocol::rest::{ConnectionState, DeviceStatus};
use fleethub_protocol::topics::Subscription;
use fleethub_store::{
    BulkOperation, CreateIdentity, DeviceRecord, Store, StoreError, TwinChange, TwinCommitHook,
    TwinUpdated, UpdateIdentity, UpdateTwin,
};
use serde_json::Value;
use time::OffsetDateTime;

use crate::config::HubConfig;
use crate::methods::{MethodReply, PendingMethods};
use crate::sessions::{CloseReason, DeliveryError, DeviceRouter, Outbound, SessionTable};

pub struct Services {
    pub config: HubConfig,
    pub store: Arc<dyn Store>,
    /// Device-to-cloud messages and the hub's events (`events.rs`).
    pub events: Arc<dyn fleethub_eventlog::EventLog>,
    pub sessions: Arc<SessionTable>,
    pub methods: PendingMethods,
    /// Automatic device management's shared state (the engine runs in `configurations::run`).
    pub configurations: crate::configurations::Configurations,
    /// Cloud-to-device messages published over MQTT and not yet acknowledged, across connections (`c2d.rs`).
    pub c2d: crate::c2d::Deliveries,
    /// Message routing: the configuration in force, endpoint cursors and health, dead letters.
    pub routing: crate::routing::Routing,
    /// Operational figures for `GET /metrics` (`metrics.rs`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Rate limits and their counters (`throttle.rs`).
    pub throttle: crate::throttle::Throttle,
    /// X.509 CA certificates and the verified set device authentication trusts (`certificates.rs`).
    pub certificates: crate::certificates::CaCertificates,
    /// Cancelled when the hub begins to shut down (`RunningHub::shutdown`): the listeners stop accepting,
    /// HTTPS connections finish the requests they carry and close, event and change streams end. Device
    /// connections stay open until the drain is over, so in-flight method calls get their answers.
    pub draining: tokio_util::sync::CancellationToken,
    /// HTTPS connections open now (the drain waits for them).
    pub https_connections: std::sync::atomic::AtomicUsize,
    policies: RwLock<Arc<Vec<AccessPolicy>>>,
    /// Serialises policy key changes (`regenerate_policy_key`).
    policy_writes: tokio::sync::Mutex<()>,
}

/// Which key to regenerate: `primary`, `secondary`, or `swap` the two (as `az iot hub device-identity
/// renew-key --key-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegenerateKey {
    Primary,
    Secondary,
    Swap,
}

impl std::str::FromStr for RegenerateKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "primary" => Ok(Self::Primary),
            "secondary" => Ok(Self::Secondary),
            "swap" => Ok(Self::Swap),
            _ => Err(format!("key {text:?}: expected primary, secondary or swap")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegeneratePolicyKeyError {
    #[error("shared access policy {0:?} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One item of [`Services::bulk_registry`], already validated by the REST edge.
#[derive(Debug, Clone)]
pub struct BulkItem {
    pub key: IdentityKey,
    pub mode: BulkMode,
    /// For creates and updates; `None` means an enabled SAS identity with generated keys.
    pub spec: Option<IdentitySpec>,
    /// A service twin patch (`tags`, `properties.desired`) to apply with the item.
    pub twin_patch: Option<Value>,
    /// Reported properties of a created identity (imports from another hub carry them).
    pub reported: Option<Value>,
}

/// Azure's import modes, reduced to what the store does.
#[derive(Debug, Clone)]
pub enum BulkMode {
    /// `create`: an existing id is an error.
    Create,
    /// `update` / `updateIfMatchETag`: create, or update if the identity's etag matches.
    Upsert(IfMatch),
    /// `delete` / `deleteIfMatchETag`.
    Delete(IfMatch),
    /// `updateTwin` / `updateTwinIfMatchETag`: patch the twin if its etag matches.
    UpdateTwin(IfMatch),
}

fn default_spec() -> IdentitySpec {
    IdentitySpec {
        status: DeviceStatus::Enabled,
        status_reason: None,
        authentication: fleethub_core::identity::Authentication {
            kind: fleethub_protocol::rest::AuthenticationType::Sas,
            primary_key: None,
            secondary_key: None,
            primary_thumbprint: None,
            secondary_thumbprint: None,
        },
        iot_edge: false,
        managed_by: None,
        device_scope: None,
        parent_scopes: Vec::new(),
    }
}

/// Azure's bounds for method timeouts, in seconds.
pub const METHOD_RESPONSE_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 5..=300;
pub const METHOD_CONNECT_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 0..=300;
pub const METHOD_DEFAULT_RESPONSE_TIMEOUT: u64 = 30;

/// A direct-method call as the service asked for it, already validated.
#[derive(Debug, Clone)]
pub struct MethodInvocation {
    pub method_name: String,
    pub payload: Value,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MethodResult {
    pub status: i32,
    pub payload: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeMethodError {
    #[error("{0} not found")]
    NotFound(IdentityKey),
    #[error(
        "{0} is not online: it did not connect and subscribe to methods within the connect timeout"
    )]
    NotOnline(IdentityKey),
    #[error("{key} did not answer method {method_name:?} within {timeout:?}")]
    Timeout {
        key: IdentityKey,
        method_name: String,
        timeout: Duration,
    },
    #[error("{0} has too many pushes pending")]
    Busy(IdentityKey),
    #[error("the request payload is {bytes} bytes; the limit is {max}")]
    PayloadTooLarge { bytes: usize, max: usize },
    #[error("{0}")]
    InvalidResponse(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Services {
    pub fn new(
        config: HubConfig,
        store: Arc<dyn Store>,
        events: Arc<dyn fleethub_eventlog::EventLog>,
        policies: Vec<AccessPolicy>,
    ) -> Self {
        let sessions = Arc::new(SessionTable::new(config.limits.outbound_queue_depth));
        let routing = crate::routing::Routing::new(&config);
        let throttle = crate::throttle::Throttle::new(config.limits.throttle.clone());
        Self {
            config,
            store,
            events,
            sessions,
            methods: PendingMethods::default(),
            configurations: crate::configurations::Configurations::new(),
            c2d: crate::c2d::Deliveries::default(),
            routing,
            draining: tokio_util::sync::CancellationToken::new(),
            https_connections: std::sync::atomic::AtomicUsize::new(0),
            metrics: Arc::default(),
            throttle,
            certificates: crate::certificates::CaCertificates::default(),
            policies: RwLock::new(Arc::new(policies)),
            policy_writes: tokio::sync::Mutex::new(()),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    pub fn policies(&self) -> Arc<Vec<AccessPolicy>> {
        Arc::clone(&self.policies.read().expect("policies lock poisoned"))
    }

    pub fn router(&self) -> &dyn DeviceRouter {
        &*self.sessions
    }

    // ---- registry ----

    pub async fn get_identity(&self, key: &IdentityKey) -> Result<DeviceRecord, StoreError> {
        self.store
            .get(key)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.clone()))
    }

    /// `PUT /devices/{id}` (and modules): create without `If-Match`, update with it.
    pub async fn put_identity(
        &self,
        key: IdentityKey,
        spec: IdentitySpec,
        if_match: Option<IfMatch>,
    ) -> Result<DeviceRecord, StoreError> {
        let now = self.now();
        match if_match {
            None => {
                self.store
                    .create_identity(CreateIdentity {
                        key,
                        spec,
                        generation_id: generation_id(now),
                        fresh_keys: fresh_keys(),
                        now,
                    })
                    .await
            }
            Some(if_match) => {
                let before = self.store.get(&key).await?;
                let updated = self
                    .store
                    .update_identity(UpdateIdentity {
                        key: key.clone(),
                        spec,
                        if_match,
                        fresh_keys: fresh_keys(),
                        now,
                    })
                    .await?;
                let record = updated.record;
                let credentials_changed = before.is_some_and(|before| {
                    before.identity.authentication != record.identity.authentication
                });
                if record.identity.status == DeviceStatus::Disabled && updated.status_changed {
                    if key.module_id.is_none() {
                        self.sessions
                            .disconnect_device_and_modules(&key.device_id, CloseReason::Disabled);
                    } else {
                        self.sessions.disconnect(&key, CloseReason::Disabled);
                    }
                } else if credentials_changed {
                    // Tokens signed with a replaced key must stop working at once, connected or not; a
                    // connection on a key that is still primary or secondary stays.
                    self.close_revoked_connections(&key, &record);
                }
                Ok(record)
            }
        }
    }

    /// Closes the identity's live connection if its token no longer verifies with the identity's keys.
    fn close_revoked_connections(&self, key: &IdentityKey, record: &DeviceRecord) {
        let closed = self.sessions.disconnect_revoked(Some(key), |_, token| {
            crate::auth::identity_token_still_valid(token, record)
        });
        if closed > 0 {
            tracing::info!(device = %key, "closed a connection whose key was replaced");
        }
    }

    /// Replaces one key of a shared access policy (or swaps the two), stores it, and from then on tokens
    /// signed with the replaced key are refused: REST calls get 401 and devices connected with such a
    /// policy token are disconnected. A fleethub extension (docs/compat.md).
    pub async fn regenerate_policy_key(
        &self,
        policy_name: &str,
        which: RegenerateKey,
    ) -> Result<AccessPolicy, RegeneratePolicyKeyError> {
        // One regeneration at a time, so two cannot each store a policy the other did not see.
        let _writing = self.policy_writes.lock().await;
        let mut policy = self
            .policies()
            .iter()
            .find(|policy| policy.key_name == policy_name)
            .cloned()
            .ok_or_else(|| RegeneratePolicyKeyError::NotFound(policy_name.to_owned()))?;
        match which {
            RegenerateKey::Primary => policy.primary_key = random_key(),
            RegenerateKey::Secondary => policy.secondary_key = random_key(),
            RegenerateKey::Swap => {
                std::mem::swap(&mut policy.primary_key, &mut policy.secondary_key);
            }
        }
        self.store.put_policy(policy.clone()).await?;
        {
            let mut policies = self.policies.write().expect("policies lock poisoned");
            let mut updated = Vec::clone(&policies);
            for existing in &mut updated {
                if existing.key_name == policy.key_name {
                    *existing = policy.clone();
                }
            }
            *policies = Arc::new(updated);
        }
        let closed = self.sessions.disconnect_revoked(None, |_, token| {
            token.is_none_or(|token| {
                token.key_name.as_deref() != Some(policy.key_name.as_str())
                    || crate::auth::signed_by_policy(token, &policy)
            })
        });
        tracing::info!(policy = %policy.key_name, closed, "regenerated a policy key");
        Ok(policy)
    }

    pub async fn delete_identity(
        &self,
        key: &IdentityKey,
        if_match: IfMatch,
    ) -> Result<(), StoreError> {
        self.store.delete_identity(key, if_match).await?;
        if key.module_id.is_none() {
            self.sessions
                .disconnect_device_and_modules(&key.device_id, CloseReason::Deleted);
        } else {
            self.sessions.disconnect(key, CloseReason::Deleted);
        }
        Ok(())
    }

    pub async fn list_devices(&self, top: usize) -> Result<Vec<DeviceRecord>, StoreError> {
        self.store.list_devices(None, top).await
    }

    pub async fn list_modules(
        &self,
        device_id: &DeviceId,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        if self
            .store
            .get(&IdentityKey::device(device_id.clone()))
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(IdentityKey::device(device_id.clone())));
        }
        self.store.list_modules(device_id).await
    }

    // ---- twins ----

    /// Applies a twin change and, if desired properties changed, pushes the patch to the device. The push
    /// happens in the store's commit order, so a device receives desired patches in version order.
    pub async fn update_twin(
        &self,
        key: &IdentityKey,
        change: TwinChange,
        if_match: IfMatch,
    ) -> Result<TwinUpdated, StoreError> {
        let by_device = matches!(change, TwinChange::ReportedPatch(_));
        let sessions = Arc::clone(&self.sessions);
        let target = key.clone();
        let push: TwinCommitHook = Box::new(move |updated: &TwinUpdated| {
            if let Some(patch) = &updated.desired_patch_for_device {
                push_desired_patch(
                    &sessions,
                    &target,
                    updated.record.twin.desired_version(),
                    patch,
                );
            }
        });
        self.store
            .update_twin(UpdateTwin {
                key: key.clone(),
                change,
                if_match,
                now: self.now(),
                on_commit: Some(push),
            })
            .await
            .inspect(|_| self.metrics.twin_written(by_device))
    }

    /// Many registry writes in one durable transaction (`POST /devices`). Each item succeeds or fails on its
    /// own; pushes and disconnects follow as for single writes.
    pub async fn bulk_registry(
        &self,
        items: Vec<BulkItem>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let now = self.now();
        let mut operations = Vec::with_capacity(items.len());
        for item in items {
            let operation = match item.mode {
                BulkMode::Create => BulkOperation::Create {
                    request: self.create_request(
                        item.key,
                        item.spec.unwrap_or_else(default_spec),
                        now,
                    ),
                    twin_patch: item.twin_patch,
                    reported: item.reported,
                },
                BulkMode::Upsert(if_match) => {
                    let spec = item.spec.unwrap_or_else(default_spec);
                    if self.store.get(&item.key).await?.is_some() {
                        let request = UpdateIdentity {
                            key: item.key,
                            spec,
                            if_match,
                            fresh_keys: fresh_keys(),
                            now,
                        };
                        BulkOperation::Update {
                            request,
                            twin_patch: item.twin_patch,
                        }
                    } else {
                        BulkOperation::Create {
                            request: self.create_request(item.key, spec, now),
                            twin_patch: item.twin_patch,
                            reported: item.reported,
                        }
                    }
                }
                BulkMode::Delete(if_match) => BulkOperation::Delete {
                    key: item.key,
                    if_match,
                },
                BulkMode::UpdateTwin(if_match) => BulkOperation::UpdateTwin {
                    key: item.key,
                    patch: item.twin_patch.unwrap_or_else(|| serde_json::json!({})),
                    if_match,
                    now,
                },
            };
            operations.push(operation);
        }
        let kinds: Vec<bool> = operations
            .iter()
            .map(|operation| matches!(operation, BulkOperation::Delete { .. }))
            .collect();
        let results = self.store.bulk(operations).await?;
        Ok(results
            .into_iter()
            .zip(kinds)
            .map(|(result, deleted)| {
                let applied = result?;
                if deleted {
                    self.sessions.disconnect(&applied.key, CloseReason::Deleted);
                    if applied.key.module_id.is_none() {
                        self.sessions.disconnect_device_and_modules(
                            &applied.key.device_id,
                            CloseReason::Deleted,
                        );
                    }
                } else if applied.status_changed
                    && applied
                        .record
                        .as_ref()
                        .is_some_and(|record| record.identity.status == DeviceStatus::Disabled)
                {
                    self.sessions.disconnect_device_and_modules(
                        &applied.key.device_id,
                        CloseReason::Disabled,
                    );
                } else if let Some(record) = &applied.record {
                    self.close_revoked_connections(&applied.key, record);
                }
                if let (Some(patch), Some(record)) =
                    (&applied.desired_patch_for_device, &applied.record)
                {
                    push_desired_patch(
                        &self.sessions,
                        &applied.key,
                        record.twin.desired_version(),
                        patch,
                    );
                }
                Ok(())
            })
            .collect())
    }

    fn create_request(
        &self,
        key: IdentityKey,
        spec: IdentitySpec,
        now: OffsetDateTime,
    ) -> CreateIdentity {
        CreateIdentity {
            key,
            spec,
            generation_id: generation_id(now),
            fresh_keys: fresh_keys(),
            now,
        }
    }

    // ---- methods ----

    /// Calls a direct method on a connected device and waits for its answer (timed for `GET /metrics`).
    pub async fn invoke_method(
        &self,
        key: &IdentityKey,
        invocation: MethodInvocation,
    ) -> Result<MethodResult, InvokeMethodError> {
        let started = std::time::Instant::now();
        let result = self.call_method(key, invocation).await;
        self.metrics.method_call(started.elapsed(), result.is_ok());
        result
    }

    async fn call_method(
        &self,
        key: &IdentityKey,
        invocation: MethodInvocation,
    ) -> Result<MethodResult, InvokeMethodError> {
        let payload = Bytes::from(
            serde_json::to_vec(&invocation.payload).expect("a JSON value always serialises"),
        );
        let max = self.config.limits.method_payload_max_bytes;
        if payload.len() > max {
            return Err(InvokeMethodError::PayloadTooLarge {
                bytes: payload.len(),
                max,
            });
        }
        // A device connected and subscribed exists (deleting an identity closes its connection), so the
        // hot path skips the store; only a device that is not online needs the store to tell "unknown"
        // (404001) from "offline" (404103).
        let methods = Subscription::Methods;
        if !self
            .sessions
            .wait_for_subscription(key, methods, Duration::ZERO)
            .await
        {
            if self.store.get(key).await?.is_none() {
                return Err(InvokeMethodError::NotFound(key.clone()));
            }
            let connect_timeout = invocation.connect_timeout;
            if !self
                .sessions
                .wait_for_subscription(key, methods, connect_timeout)
                .await
            {
                return Err(InvokeMethodError::NotOnline(key.clone()));
            }
        }
        let call = self.methods.register(key);
        let request = Outbound::MethodRequest {
            method_name: invocation.method_name.clone(),
            request_id: call.request_id.clone(),
            payload,
        };
        match self.sessions.deliver(key, Subscription::Methods, request) {
            Ok(()) => {}
            Err(DeliveryError::QueueFull) => return Err(InvokeMethodError::Busy(key.clone())),
            Err(DeliveryError::NotConnected | DeliveryError::NotSubscribed) => {
                return Err(InvokeMethodError::NotOnline(key.clone()));
            }
        }
        let timeout = invocation.response_timeout;
        let reply = match tokio::time::timeout(timeout, &mut { call }.reply).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) | Err(_) => {
                return Err(InvokeMethodError::Timeout {
                    key: key.clone(),
                    method_name: invocation.method_name,
                    timeout,
                });
            }
        };
        decode_method_reply(reply, max)
    }
}

pub(crate) fn push_desired_patch(
    sessions: &SessionTable,
    key: &IdentityKey,
    version: u64,
    patch: &Value,
) {
    let payload = Bytes::from(serde_json::to_vec(patch).expect("a JSON value always serialises"));
    match sessions.deliver(
        key,
        Subscription::DesiredPatches,
        Outbound::DesiredPatch { version, payload },
    ) {
        Ok(()) | Err(DeliveryError::NotConnected) | Err(DeliveryError::NotSubscribed) => {}
        Err(DeliveryError::QueueFull) => {
            // The device reads too slowly. A persistent session's connection is flagged and resynchronises
            // from the twin (`desired.rs`); a clean session's device sees it at its next twin GET.
            tracing::warn!(device = %key, version, "desired patch not pushed: the device's queue is full");
        }
    }
}

/// The device's payload must be JSON (empty means `null`, as the Python SDK sends `None`).
fn decode_method_reply(reply: MethodReply, max: usize) -> Result<MethodResult, InvokeMethodError> {
    if reply.payload.len() > max {
        return Err(InvokeMethodError::InvalidResponse(format!(
            "the device's response payload is {} bytes; the limit is {max}",
            reply.payload.len()
        )));
    }
    let payload = if reply.payload.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&reply.payload).map_err(|error| {
            InvokeMethodError::InvalidResponse(format!(
                "the device's response payload is not valid JSON: {error}"
            ))
        })?
    };
    Ok(MethodResult {
        status: reply.status,
        payload,
    })
}

/// Azure's generation ids are 18-digit numbers; ours are the creation time in 100 ns ticks.
fn generation_id(now: OffsetDateTime) -> String {
    let ticks = (now.unix_timestamp_nanos() / 100).max(0);
    format!("{:018}", ticks % 1_000_000_000_000_000_000)
}

/// Two random 32-byte keys, base64, for identities created without keys.
pub fn fresh_keys() -> FreshKeys {
    FreshKeys {
        primary: random_key(),
        secondary: random_key(),
    }
}

pub fn random_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    fleethub_protocol::sas::generate_key_from_bytes(&bytes)
}

/// Records connection state for the MQTT gateway, logging instead of failing: connection state is
/// advisory and must never keep a device from connecting.
pub async fn record_connection_state(
    services: &Services,
    key: &IdentityKey,
    state: ConnectionState,
) {
    if let Err(error) = services
        .store
        .set_connection_state(key, state, services.now())
        .await
    {
        tracing::warn!(device = %key, ?state, %error, "could not record connection state");
    }
}
