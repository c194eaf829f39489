//! Authentication and authorisation: service SAS tokens (signed with a shared access policy, `skn`) for the
//! REST API, and device SAS tokens for MQTT CONNECT and for firmware downloads over HTTPS.
//!
//! Rules (PROTOCOL.md §2.2, §3.1): the signature covers the `sr` field exactly as received, so it is never
//! re-encoded here; the host named in `sr` may be any of the hub's names, with or without a port,
//! case-insensitively; either key of the identity or policy may sign; `se` must be in the future.

use fleethub_core::access::{AccessPolicy, AccessRight, AccessRights};
use fleethub_core::identity::IdentityKey;
use fleethub_mqtt::ConnectReturnCode;
use fleethub_protocol::ids::ClientId;
use fleethub_protocol::sas::{DeviceResource, SasToken, TokenResource, decode_key};
use fleethub_store::DeviceRecord;

use crate::services::Services;

/// Which rights an operation needs: any one of them suffices.
#[derive(Clone, Copy, Debug)]
pub struct Requirement(pub &'static [AccessRight]);

/// The operation-to-right table (also in docs/compat.md). Azure grants registry reads to RegistryRead,
/// registry writes to RegistryWrite, and twin, method and other service-facing calls to ServiceConnect;
/// twin reads are also allowed with RegistryRead, as in Azure's RBAC model.
pub mod required {
    use super::{AccessRight::*, Requirement};
    pub const REGISTRY_READ: Requirement = Requirement(&[RegistryRead]);
    pub const REGISTRY_WRITE: Requirement = Requirement(&[RegistryWrite]);
    pub const TWIN_READ: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    pub const TWIN_WRITE: Requirement = Requirement(&[ServiceConnect]);
    pub const INVOKE_METHOD: Requirement = Requirement(&[ServiceConnect]);
    pub const SERVICE_STATISTICS: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    /// Twin queries (`POST /devices/query`) read twins.
    pub const QUERY: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    /// The change feed (`GET /changes`) shows twins and registry changes.
    pub const WATCH_CHANGES: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    /// Configurations (automatic device management) are read like the registry and written with
    /// RegistryWrite (our choice: Azure documents no shared-access right for them; see docs/compat.md).
    pub const CONFIGURATION_READ: Requirement = Requirement(&[RegistryRead, ServiceConnect]);
    pub const CONFIGURATION_WRITE: Requirement = Requirement(&[RegistryWrite]);
    /// Jobs v2 (`PUT /jobs/v2/{id}`, cancel): Azure's jobs docs ask for RegistryRead and RegistryWrite (the
    /// `registryReadWrite` policy); a job's action is a twin write or a method call, which ServiceConnect
    /// allows one device at a time, so either right may schedule it.
    pub const JOB_WRITE: Requirement = Requirement(&[ServiceConnect, RegistryWrite]);
    /// Reading jobs (`GET /jobs/v2/{id}`, `GET /jobs/v2/query`).
    pub const JOB_READ: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    /// Firmware artifacts (a fleethub extension, docs/firmware.md) are registry-like data: listed and
    /// read with RegistryRead, uploaded and deleted with RegistryWrite.
    pub const FIRMWARE_READ: Requirement = Requirement(&[RegistryRead]);
    pub const FIRMWARE_WRITE: Requirement = Requirement(&[RegistryWrite]);
    /// Entitling a device to download an artifact (`POST .../grants`) is a service-to-device operation,
    /// like a twin write or a method call.
    pub const FIRMWARE_GRANT: Requirement = Requirement(&[ServiceConnect]);
    /// Firmware rollouts (a fleethub extension) as jobs: creating, pausing, resuming, approving and aborting
    /// one (`PUT /firmware/rollouts/{id}`, `POST .../{action}`) with ServiceConnect or RegistryWrite (a rollout
    /// calls a method on many devices and entitles them to download), reading them with ServiceConnect or
    /// RegistryRead.
    pub const ROLLOUT_WRITE: Requirement = Requirement(&[ServiceConnect, RegistryWrite]);
    pub const ROLLOUT_READ: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    /// The event stream and partitions (`GET /events`, `GET /events/partitions`, reading consumer groups): Azure
    /// lets the `service` policy (ServiceConnect) read the built-in Event Hubs-compatible endpoint.
    pub const READ_EVENTS: Requirement = Requirement(&[ServiceConnect]);
    /// Saving and deleting consumer groups' checkpoints: what an Event Hubs consumer does, with ServiceConnect.
    pub const CHECKPOINT_EVENTS: Requirement = Requirement(&[ServiceConnect]);
    /// Message routing's configuration (`GET /routing`, route tests, endpoint health): registry-like data, read
    /// with RegistryRead (it holds webhook headers, so ServiceConnect alone does not read it) and written with
    /// RegistryWrite (Azure keeps it in the hub's resource, for its owners).
    pub const ROUTING_READ: Requirement = Requirement(&[RegistryRead]);
    pub const ROUTING_WRITE: Requirement = Requirement(&[RegistryWrite]);
    /// Dead letters hold messages: read like the event stream, with ServiceConnect (or RegistryRead, which
    /// reads the routing configuration they belong to).
    pub const ROUTING_DEAD_LETTERS: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    /// Cloud-to-device messages: sending, purging a device's queue, reading and settling feedback (Azure:
    /// ServiceConnect).
    pub const CLOUD_TO_DEVICE: Requirement = Requirement(&[ServiceConnect]);
    /// The audit log (`GET /audit`, a fleethub extension): who changed what in the registry and beyond, read
    /// with RegistryRead like the registry itself (ServiceConnect alone, a device-facing right, does not).
    pub const AUDIT_READ: Requirement = Requirement(&[RegistryRead]);
    /// Prometheus metrics (`GET /metrics`, a fleethub extension): counts and latencies, no device data; the
    /// `service` and `registryRead` policies both scrape.
    pub const METRICS_READ: Requirement = Requirement(&[ServiceConnect, RegistryRead]);
    /// Regenerating a policy's key (`POST /policies/{name}/regenerateKey`, a fleethub extension) starts
    /// with RegistryWrite; the handler then asks for every right (`iothubowner`), as Azure keeps keys in
    /// the hub's resource, for its owners.
    pub const POLICY_KEYS_WRITE: Requirement = Requirement(&[RegistryWrite]);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAuthError {
    /// Missing, malformed, expired, wrongly signed or for another hub: HTTP 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token whose policy lacks the right: HTTP 403.
    #[error("policy {policy:?} lacks the right this operation needs (one of: {needed})")]
    Forbidden { policy: String, needed: String },
}

/// The caller a valid service token identifies.
#[derive(Debug, Clone)]
pub struct ServiceCaller {
    pub policy: String,
    pub rights: AccessRights,
}

/// Checks the `Authorization` header of a REST request to `request_path` (e.g. `/devices/dev1`).
pub fn authorize_service(
    services: &Services,
    authorization: Option<&str>,
    request_path: &str,
    requirement: Requirement,
    now_unix: u64,
) -> Result<ServiceCaller, ServiceAuthError> {
    let unauthenticated = |message: &str| ServiceAuthError::Unauthenticated(message.to_owned());
    let header =
        authorization.ok_or_else(|| unauthenticated("the Authorization header is missing"))?;
    let token: SasToken = header.trim().parse().map_err(|error| {
        ServiceAuthError::Unauthenticated(format!("the SAS token is malformed: {error}"))
    })?;
    let policy_name = token.key_name.as_deref().ok_or_else(|| {
        unauthenticated(
            "the SAS token names no policy (skn): service calls need a shared access policy token",
        )
    })?;
    let policies = services.policies();
    let policy = policies
        .iter()
        .find(|policy| policy.key_name == policy_name)
        .ok_or_else(|| {
            ServiceAuthError::Unauthenticated(format!(
                "unknown shared access policy {policy_name:?}"
            ))
        })?;
    if !signed_by_policy(&token, policy) {
        return Err(unauthenticated(
            "the SAS token's signature does not match the policy's keys",
        ));
    }
    if token.is_expired(now_unix) {
        return Err(unauthenticated("the SAS token has expired"));
    }
    let resource = TokenResource::parse(&token.resource);
    if !services.config.is_own_hostname(&resource.host) {
        return Err(ServiceAuthError::Unauthenticated(format!(
            "the SAS token is for host {:?}, which is not this hub",
            resource.host
        )));
    }
    // A token scoped below the hub (sr = host/devices/dev1) covers only that subtree.
    let scope = resource.path.trim_end_matches('/');
    if !scope.is_empty() && !path_within(request_path, scope) {
        return Err(ServiceAuthError::Unauthenticated(format!(
            "the SAS token is scoped to {scope:?}, which does not cover {request_path:?}"
        )));
    }
    if !requirement
        .0
        .iter()
        .any(|right| policy.rights.contains(*right))
    {
        let needed: Vec<&str> = requirement.0.iter().map(|right| right.name()).collect();
        return Err(ServiceAuthError::Forbidden {
            policy: policy.key_name.clone(),
            needed: needed.join(", "),
        });
    }
    Ok(ServiceCaller {
        policy: policy.key_name.clone(),
        rights: policy.rights,
    })
}

fn path_within(path: &str, scope: &str) -> bool {
    let path = path.to_ascii_lowercase();
    let scope = scope.to_ascii_lowercase();
    path == scope || path.starts_with(&format!("{scope}/"))
}

/// Whether a connection of `record` that authenticated with `token` may stay after the identity's keys
/// changed: a policy token does not depend on them; a device or module token must still verify with one of
/// the identity's current keys. A connection with no recorded token is not kept.
pub fn identity_token_still_valid(token: Option<&SasToken>, record: &DeviceRecord) -> bool {
    token.is_some_and(|token| {
        token.key_name.is_some()
            || record
                .identity
                .symmetric_keys()
                .filter_map(|key| decode_key(key).ok())
                .any(|key| token.signature_matches(&key))
    })
}

pub(crate) fn signed_by_policy(token: &SasToken, policy: &AccessPolicy) -> bool {
    [&policy.primary_key, &policy.secondary_key]
        .into_iter()
        .filter_map(|key| decode_key(key).ok())
        .any(|key| token.signature_matches(&key))
}

/// Why a device's CONNECT is refused, with the CONNACK code to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRefusal {
    pub code: ConnectReturnCode,
    pub reason: String,
}

impl ConnectRefusal {
    fn new(code: ConnectReturnCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// Authenticates an MQTT CONNECT: client id, username `{host}/{clientId}/?...`, and either a SAS password
/// signed with the identity's key or with a policy that has DeviceConnect, or no password and the TLS client
/// certificate (`client_certificates`, leaf first) of an identity with X.509 authentication (`x509.rs`).
/// Returns the identity's record.
pub async fn authenticate_device(
    services: &Services,
    client_id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
    client_certificates: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    now_unix: u64,
) -> Result<DeviceRecord, ConnectRefusal> {
    use ConnectReturnCode::{BadUserNameOrPassword, IdentifierRejected, NotAuthorized};
    let client = ClientId::parse(client_id).map_err(|error| {
        ConnectRefusal::new(
            IdentifierRejected,
            format!("client id {client_id:?}: {error}"),
        )
    })?;
    let username =
        username.ok_or_else(|| ConnectRefusal::new(BadUserNameOrPassword, "no username"))?;
    let (host, named_client) = split_username(username).ok_or_else(|| {
        ConnectRefusal::new(
            BadUserNameOrPassword,
            format!("username {username:?} is not {{host}}/{{clientId}}/?..."),
        )
    })?;
    if named_client != client_id {
        return Err(ConnectRefusal::new(
            BadUserNameOrPassword,
            format!("username names client {named_client:?} but the client id is {client_id:?}"),
        ));
    }
    if !services.config.is_own_hostname(host_without_port(host)) {
        return Err(ConnectRefusal::new(
            NotAuthorized,
            format!("username names host {host:?}, which is not this hub"),
        ));
    }
    let Some(password) = password else {
        return authenticate_with_certificate(services, &client, client_certificates, now_unix)
            .await;
    };
    let password = std::str::from_utf8(password)
        .map_err(|_| ConnectRefusal::new(BadUserNameOrPassword, "the password is not UTF-8"))?;
    let token: SasToken = password.parse().map_err(|error| {
        ConnectRefusal::new(
            BadUserNameOrPassword,
            format!("the SAS token is malformed: {error}"),
        )
    })?;
    let key = IdentityKey::from_client_id(&client);
    let record = registered(services, &key).await?;

    let signed = match token.key_name.as_deref() {
        None if uses_x509(&record) => {
            return Err(ConnectRefusal::new(
                NotAuthorized,
                format!(
                    "{key} authenticates with an X.509 certificate ({:?}): a device SAS token is not accepted",
                    record.identity.authentication.kind
                ),
            ));
        }
        None => {
            let resource = DeviceResource::parse(&token.resource).map_err(|error| {
                ConnectRefusal::new(NotAuthorized, format!("the token's resource: {error}"))
            })?;
            if resource.device_id != client.device || resource.module_id != client.module {
                return Err(ConnectRefusal::new(
                    NotAuthorized,
                    format!("the token is for {}, not {key}", token.resource),
                ));
            }
            if !services.config.is_own_hostname(&resource.host) {
                return Err(ConnectRefusal::new(
                    NotAuthorized,
                    format!("the token is for host {:?}", resource.host),
                ));
            }
            record
                .identity
                .symmetric_keys()
                .filter_map(|key| decode_key(key).ok())
                .any(|key| token.signature_matches(&key))
        }
        Some(policy_name) => {
            // A policy token with DeviceConnect may connect any device its `sr` covers.
            let policies = services.policies();
            let policy = policies
                .iter()
                .find(|policy| {
                    policy.key_name == policy_name
                        && policy.rights.contains(AccessRight::DeviceConnect)
                })
                .ok_or_else(|| {
                    ConnectRefusal::new(
                        NotAuthorized,
                        format!("policy {policy_name:?} does not exist or lacks DeviceConnect"),
                    )
                })?;
            let resource = TokenResource::parse(&token.resource);
            let device_path = match &client.module {
                Some(module) => format!("/devices/{}/modules/{module}", client.device),
                None => format!("/devices/{}", client.device),
            };
            let scope = resource.path.trim_end_matches('/');
            if !services.config.is_own_hostname(&resource.host)
                || (!scope.is_empty() && !path_within(&device_path, scope))
            {
                return Err(ConnectRefusal::new(
                    NotAuthorized,
                    format!("the token's resource does not cover {key}"),
                ));
            }
            signed_by_policy(&token, policy)
        }
    };
    if !signed {
        return Err(ConnectRefusal::new(
            NotAuthorized,
            "the SAS token's signature does not match",
        ));
    }
    if token.is_expired(now_unix) {
        return Err(ConnectRefusal::new(
            NotAuthorized,
            "the SAS token has expired",
        ));
    }
    check_enabled(services, record).await
}

fn uses_x509(record: &DeviceRecord) -> bool {
    use fleethub_protocol::rest::AuthenticationType::{CertificateAuthority, SelfSigned};
    matches!(
        record.identity.authentication.kind,
        SelfSigned | CertificateAuthority
    )
}

/// The identity's record: refused as not authorized when it is not registered, as server unavailable when
/// the store fails.
async fn registered(
    services: &Services,
    key: &IdentityKey,
) -> Result<DeviceRecord, ConnectRefusal> {
    services
        .store
        .get(key)
        .await
        .map_err(|error| {
            ConnectRefusal::new(ConnectReturnCode::ServerUnavailable, error.to_string())
        })?
        .ok_or_else(|| {
            ConnectRefusal::new(
                ConnectReturnCode::NotAuthorized,
                format!("{key} is not registered"),
            )
        })
}

/// A CONNECT without a password: the identity must use X.509 authentication and the TLS client
/// certificate must satisfy it (`x509::authenticate_certificate`).
async fn authenticate_with_certificate(
    services: &Services,
    client: &ClientId,
    client_certificates: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    now_unix: u64,
) -> Result<DeviceRecord, ConnectRefusal> {
    use ConnectReturnCode::NotAuthorized;
    let key = IdentityKey::from_client_id(client);
    let record = registered(services, &key).await?;
    if !uses_x509(&record) {
        return Err(ConnectRefusal::new(
            NotAuthorized,
            format!("no password: {key} authenticates with a SAS token, send it as the password"),
        ));
    }
    let now =
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(now_unix).unwrap_or(i64::MAX))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    crate::x509::authenticate_certificate(
        &key,
        &record.identity.authentication,
        client_certificates,
        &services.certificates.trusted(),
        now,
    )
    .map_err(|reason| ConnectRefusal::new(NotAuthorized, reason))?;
    check_enabled(services, record).await
}

/// Refuses a disabled identity, or a module of a disabled device.
async fn check_enabled(
    services: &Services,
    record: DeviceRecord,
) -> Result<DeviceRecord, ConnectRefusal> {
    use ConnectReturnCode::NotAuthorized;
    let key = &record.key;
    if !record.identity.is_enabled() {
        return Err(ConnectRefusal::new(
            NotAuthorized,
            format!("{key} is disabled"),
        ));
    }
    if record.key.module_id.is_some() {
        let device = services
            .store
            .get(&IdentityKey::device(record.key.device_id.clone()))
            .await
            .ok()
            .flatten();
        if !device.is_some_and(|device| device.identity.is_enabled()) {
            return Err(ConnectRefusal::new(
                NotAuthorized,
                format!("device {} is disabled", record.key.device_id),
            ));
        }
    }
    Ok(record)
}

/// Why a device's HTTP request (a firmware download with `Authorization: SharedAccessSignature ...`) is not
/// authenticated: always HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceTokenError(pub String);

/// Authenticates a device's SAS token sent over HTTP: `sr` names the device (`host/devices/{id}`), signed
/// with one of its keys, or with a policy that has DeviceConnect (as for MQTT CONNECT). Returns the
/// device's record, enabled or not (the caller decides what a disabled device may do). Module tokens are
/// refused: firmware belongs to devices.
pub async fn authenticate_device_token(
    services: &Services,
    authorization: Option<&str>,
    now_unix: u64,
) -> Result<DeviceRecord, DeviceTokenError> {
    let refuse = |message: String| DeviceTokenError(message);
    let header = authorization.ok_or_else(|| {
        refuse(
            "the Authorization header is missing: send the device's SAS token, or use a signed URL"
                .into(),
        )
    })?;
    let token: SasToken = header
        .trim()
        .parse()
        .map_err(|error| refuse(format!("the SAS token is malformed: {error}")))?;
    let resource = DeviceResource::parse(&token.resource)
        .map_err(|error| refuse(format!("the SAS token's resource: {error}")))?;
    if resource.module_id.is_some() {
        return Err(refuse(format!(
            "the SAS token is for a module ({}): firmware downloads take the device's token",
            token.resource
        )));
    }
    if !services.config.is_own_hostname(&resource.host) {
        return Err(refuse(format!(
            "the SAS token is for host {:?}, which is not this hub",
            resource.host
        )));
    }
    let key = IdentityKey::device(resource.device_id.clone());
    let record = services
        .store
        .get(&key)
        .await
        .map_err(|error| refuse(format!("cannot check the token: {error}")))?
        .ok_or_else(|| refuse(format!("{key} is not registered")))?;
    let signed = match token.key_name.as_deref() {
        None => record
            .identity
            .symmetric_keys()
            .filter_map(|key| decode_key(key).ok())
            .any(|key| token.signature_matches(&key)),
        Some(policy_name) => {
            let policies = services.policies();
            let policy = policies
                .iter()
                .find(|policy| {
                    policy.key_name == policy_name
                        && policy.rights.contains(AccessRight::DeviceConnect)
                })
                .ok_or_else(|| {
                    refuse(format!(
                        "policy {policy_name:?} does not exist or lacks DeviceConnect"
                    ))
                })?;
            signed_by_policy(&token, policy)
        }
    };
    if !signed {
        return Err(refuse("the SAS token's signature does not match".into()));
    }
    if token.is_expired(now_unix) {
        return Err(refuse("the SAS token has expired".into()));
    }
    Ok(record)
}

/// `{host}/{clientId}/?{query}` → (host, clientId). The client id may itself contain one `/` (modules).
fn split_username(username: &str) -> Option<(&str, &str)> {
    let before_query = match username.find("/?") {
        Some(index) => &username[..index],
        None => username.strip_suffix('/').unwrap_or(username),
    };
    let (host, client) = before_query.split_once('/')?;
    if host.is_empty() || client.is_empty() {
        return None;
    }
    Some((host, client))
}

fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_split_into_host_and_client() {
        let python = "localhost/dev1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0";
        assert_eq!(split_username(python), Some(("localhost", "dev1")));
        assert_eq!(
            split_username("localhost:8883/dev1/mod1/?api-version=2021-04-12"),
            Some(("localhost:8883", "dev1/mod1"))
        );
        assert_eq!(split_username("hub/dev1/"), Some(("hub", "dev1")));
        assert_eq!(split_username("hub"), None);
        assert_eq!(split_username("/dev1/?x"), None);
        assert_eq!(host_without_port("localhost:8883"), "localhost");
        assert_eq!(host_without_port("LOCALHOST"), "LOCALHOST");
    }

    #[test]
    fn scoped_tokens_cover_their_subtree_only() {
        assert!(path_within("/devices/dev1", "/devices/dev1"));
        assert!(path_within("/devices/dev1/modules/m", "/devices/dev1"));
        assert!(!path_within("/devices/dev10", "/devices/dev1"));
        assert!(!path_within("/twins/dev1", "/devices/dev1"));
    }
}
