//! Device and module identities as the registry keeps them, and Azure's rules for creating and updating them.
//!
//! Pure: keys and generation ids are random, so the caller passes them in; time is passed in as `now`.

use base64::Engine as _;
use fleethub_protocol::ids::{ClientId, DeviceId, ModuleId};
use fleethub_protocol::rest::{AuthenticationType, ConnectionState, DeviceStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Which identity a record belongs to: a device (`module_id == None`) or one of its modules.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdentityKey {
    pub device_id: DeviceId,
    pub module_id: Option<ModuleId>,
}

impl IdentityKey {
    pub fn device(device_id: DeviceId) -> Self {
        Self {
            device_id,
            module_id: None,
        }
    }

    pub fn module(device_id: DeviceId, module_id: ModuleId) -> Self {
        Self {
            device_id,
            module_id: Some(module_id),
        }
    }

    /// The MQTT client id of this identity: `device` or `device/module`.
    pub fn client_id(&self) -> ClientId {
        ClientId {
            device: self.device_id.clone(),
            module: self.module_id.clone(),
        }
    }

    pub fn from_client_id(client_id: &ClientId) -> Self {
        Self {
            device_id: client_id.device.clone(),
            module_id: client_id.module.clone(),
        }
    }
}

impl std::fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.module_id {
            Some(module_id) => write!(f, "{}/{}", self.device_id, module_id),
            None => write!(f, "{}", self.device_id),
        }
    }
}

/// How an identity authenticates. Keys are base64 text exactly as the service gave or got them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authentication {
    pub kind: AuthenticationType,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    pub primary_thumbprint: Option<String>,
    pub secondary_thumbprint: Option<String>,
}

/// What a `PUT /devices/{id}` (or module) body asks for; keys may be absent and are then generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySpec {
    pub status: DeviceStatus,
    pub status_reason: Option<String>,
    pub authentication: Authentication,
    pub iot_edge: bool,
    pub managed_by: Option<String>,
    pub device_scope: Option<String>,
    pub parent_scopes: Vec<String>,
}

/// A pair of freshly generated symmetric keys (base64), in case the spec lacks them.
#[derive(Clone, Debug)]
pub struct FreshKeys {
    pub primary: String,
    pub secondary: String,
}

/// The stored state of one identity. The twin lives beside it (see `TwinDocument`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub generation_id: String,
    /// Incremented on every change of the identity itself (not of the twin, not of connection state);
    /// the identity `etag` is derived from it.
    pub etag_version: u64,
    pub status: DeviceStatus,
    pub status_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub status_updated_time: Option<OffsetDateTime>,
    pub authentication: Authentication,
    #[serde(default)]
    pub iot_edge: bool,
    #[serde(default)]
    pub managed_by: Option<String>,
    #[serde(default)]
    pub device_scope: Option<String>,
    #[serde(default)]
    pub parent_scopes: Vec<String>,
    pub connection_state: ConnectionState,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub connection_state_updated_time: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_activity_time: Option<OffsetDateTime>,
    #[serde(default)]
    pub cloud_to_device_message_count: u64,
}

/// Why an identity spec was refused; each names the rule (answered as 400 by the REST edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentitySpecError {
    #[error("{which} key is not valid base64")]
    KeyNotBase64 { which: &'static str },
    #[error("{which} key must decode to between 16 and 64 bytes, got {bytes}")]
    KeyLength { which: &'static str, bytes: usize },
    #[error("{which} thumbprint must be 40 (SHA-1) or 64 (SHA-256) hexadecimal characters")]
    Thumbprint { which: &'static str },
    #[error("authentication type {kind} needs {what}")]
    MissingCredential {
        kind: &'static str,
        what: &'static str,
    },
    #[error("status reason must be at most 128 characters")]
    StatusReasonTooLong,
}

impl Identity {
    /// A new identity from a creation request. Missing SAS keys are taken from `fresh_keys`.
    pub fn create(
        spec: IdentitySpec,
        generation_id: String,
        fresh_keys: FreshKeys,
        now: OffsetDateTime,
    ) -> Result<Self, IdentitySpecError> {
        let authentication = complete_authentication(spec.authentication, fresh_keys)?;
        validate_status_reason(spec.status_reason.as_deref())?;
        Ok(Self {
            generation_id,
            etag_version: 1,
            status: spec.status,
            status_reason: spec.status_reason,
            status_updated_time: Some(now),
            authentication,
            iot_edge: spec.iot_edge,
            managed_by: spec.managed_by,
            device_scope: spec.device_scope,
            parent_scopes: spec.parent_scopes,
            connection_state: ConnectionState::Disconnected,
            connection_state_updated_time: None,
            last_activity_time: None,
            cloud_to_device_message_count: 0,
        })
    }

    /// Applies an update request. Connection state, generation id and counters are kept.
    /// Returns whether the status changed (a device disabled while connected must be disconnected).
    pub fn update(
        &mut self,
        spec: IdentitySpec,
        fresh_keys: FreshKeys,
        now: OffsetDateTime,
    ) -> Result<bool, IdentitySpecError> {
        let authentication = complete_authentication(spec.authentication, fresh_keys)?;
        validate_status_reason(spec.status_reason.as_deref())?;
        let status_changed = self.status != spec.status;
        if status_changed {
            self.status_updated_time = Some(now);
        }
        self.status = spec.status;
        self.status_reason = spec.status_reason;
        self.authentication = authentication;
        self.iot_edge = spec.iot_edge;
        self.managed_by = spec.managed_by;
        self.device_scope = spec.device_scope;
        self.parent_scopes = spec.parent_scopes;
        self.etag_version += 1;
        Ok(status_changed)
    }

    /// Azure-style identity etag: base64 of the decimal etag version (opaque to every SDK).
    pub fn etag(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.etag_version.to_string())
    }

    pub fn is_enabled(&self) -> bool {
        self.status == DeviceStatus::Enabled
    }

    /// The symmetric keys a device may sign its SAS tokens with, primary first.
    pub fn symmetric_keys(&self) -> impl Iterator<Item = &str> {
        let usable = self.authentication.kind == AuthenticationType::Sas;
        [
            self.authentication.primary_key.as_deref(),
            self.authentication.secondary_key.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(move |_| usable)
    }
}

fn validate_status_reason(reason: Option<&str>) -> Result<(), IdentitySpecError> {
    match reason {
        Some(reason) if reason.chars().count() > 128 => Err(IdentitySpecError::StatusReasonTooLong),
        _ => Ok(()),
    }
}

/// Fills in missing keys and checks what was given, following Azure: SAS keys are base64 of 16-64 bytes,
/// thumbprints are SHA-1 or SHA-256 hex.
fn complete_authentication(
    mut authentication: Authentication,
    fresh_keys: FreshKeys,
) -> Result<Authentication, IdentitySpecError> {
    match authentication.kind {
        AuthenticationType::Sas => {
            let primary = authentication
                .primary_key
                .take()
                .filter(|key| !key.is_empty());
            let secondary = authentication
                .secondary_key
                .take()
                .filter(|key| !key.is_empty());
            let primary = primary.unwrap_or(fresh_keys.primary);
            let secondary = secondary.unwrap_or(fresh_keys.secondary);
            validate_key("primary", &primary)?;
            validate_key("secondary", &secondary)?;
            authentication.primary_key = Some(primary);
            authentication.secondary_key = Some(secondary);
            authentication.primary_thumbprint = None;
            authentication.secondary_thumbprint = None;
        }
        AuthenticationType::SelfSigned => {
            authentication.primary_key = None;
            authentication.secondary_key = None;
            let primary = authentication
                .primary_thumbprint
                .take()
                .filter(|t| !t.is_empty());
            let secondary = authentication
                .secondary_thumbprint
                .take()
                .filter(|t| !t.is_empty());
            if primary.is_none() && secondary.is_none() {
                return Err(IdentitySpecError::MissingCredential {
                    kind: "selfSigned",
                    what: "a primary or secondary thumbprint",
                });
            }
            authentication.primary_thumbprint = primary
                .map(|t| validate_thumbprint("primary", t))
                .transpose()?;
            authentication.secondary_thumbprint = secondary
                .map(|t| validate_thumbprint("secondary", t))
                .transpose()?;
        }
        AuthenticationType::CertificateAuthority | AuthenticationType::None => {
            authentication.primary_key = None;
            authentication.secondary_key = None;
            authentication.primary_thumbprint = None;
            authentication.secondary_thumbprint = None;
        }
    }
    Ok(authentication)
}

fn validate_key(which: &'static str, key: &str) -> Result<(), IdentitySpecError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| IdentitySpecError::KeyNotBase64 { which })?;
    if !(16..=64).contains(&bytes.len()) {
        return Err(IdentitySpecError::KeyLength {
            which,
            bytes: bytes.len(),
        });
    }
    Ok(())
}

/// Thumbprints are compared upper-case, so they are stored upper-case.
fn validate_thumbprint(
    which: &'static str,
    thumbprint: String,
) -> Result<String, IdentitySpecError> {
    let ok =
        matches!(thumbprint.len(), 40 | 64) && thumbprint.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(thumbprint.to_ascii_uppercase())
    } else {
        Err(IdentitySpecError::Thumbprint { which })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn keys() -> FreshKeys {
        FreshKeys {
            primary: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
            secondary: "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=".into(),
        }
    }

    fn sas_spec(primary: Option<&str>) -> IdentitySpec {
        IdentitySpec {
            status: DeviceStatus::Enabled,
            status_reason: None,
            authentication: Authentication {
                kind: AuthenticationType::Sas,
                primary_key: primary.map(str::to_owned),
                secondary_key: None,
                primary_thumbprint: None,
                secondary_thumbprint: None,
            },
            iot_edge: false,
            managed_by: None,
            device_scope: None,
            parent_scopes: vec![],
        }
    }

    #[test]
    fn missing_keys_are_generated() {
        let identity = Identity::create(sas_spec(None), "1".into(), keys(), NOW).unwrap();
        assert_eq!(identity.authentication.primary_key, Some(keys().primary));
        assert_eq!(
            identity.authentication.secondary_key,
            Some(keys().secondary)
        );
        assert_eq!(identity.connection_state, ConnectionState::Disconnected);
        assert_eq!(identity.symmetric_keys().count(), 2);
    }

    #[test]
    fn given_keys_are_kept_and_checked() {
        let given = "cHJpbWFyeXByaW1hcnlwcmltYXJ5"; // 21 bytes
        let identity = Identity::create(sas_spec(Some(given)), "1".into(), keys(), NOW).unwrap();
        assert_eq!(identity.authentication.primary_key.as_deref(), Some(given));
        let short = Identity::create(sas_spec(Some("cHJpbWFyeQ==")), "1".into(), keys(), NOW);
        assert_eq!(
            short,
            Err(IdentitySpecError::KeyLength {
                which: "primary",
                bytes: 7
            })
        );
        let garbage = Identity::create(sas_spec(Some("not base64!")), "1".into(), keys(), NOW);
        assert_eq!(
            garbage,
            Err(IdentitySpecError::KeyNotBase64 { which: "primary" })
        );
    }

    #[test]
    fn update_bumps_etag_and_reports_status_change() {
        let mut identity = Identity::create(sas_spec(None), "1".into(), keys(), NOW).unwrap();
        let etag = identity.etag();
        let mut spec = sas_spec(None);
        spec.status = DeviceStatus::Disabled;
        let later = datetime!(2026-01-02 00:00 UTC);
        assert!(identity.update(spec.clone(), keys(), later).unwrap());
        assert_ne!(identity.etag(), etag);
        assert_eq!(identity.status_updated_time, Some(later));
        assert!(!identity.update(spec, keys(), later).unwrap());
        assert!(!identity.is_enabled());
    }

    #[test]
    fn self_signed_needs_a_thumbprint_and_normalises_case() {
        let mut spec = sas_spec(None);
        spec.authentication.kind = AuthenticationType::SelfSigned;
        assert!(matches!(
            Identity::create(spec.clone(), "1".into(), keys(), NOW),
            Err(IdentitySpecError::MissingCredential { .. })
        ));
        spec.authentication.primary_thumbprint = Some("c80b30af".repeat(5));
        let identity = Identity::create(spec.clone(), "1".into(), keys(), NOW).unwrap();
        assert_eq!(
            identity.authentication.primary_thumbprint,
            Some("C80B30AF".repeat(5))
        );
        assert_eq!(identity.symmetric_keys().count(), 0);
        spec.authentication.primary_thumbprint = Some("xyz".into());
        assert_eq!(
            Identity::create(spec, "1".into(), keys(), NOW),
            Err(IdentitySpecError::Thumbprint { which: "primary" })
        );
    }

    #[test]
    fn storage_form_round_trips() {
        let identity =
            Identity::create(sas_spec(None), "638500000000000000".into(), keys(), NOW).unwrap();
        let json = serde_json::to_string(&identity).unwrap();
        let back: Identity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, identity);
    }
}
