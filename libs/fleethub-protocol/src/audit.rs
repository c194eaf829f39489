//! The audit log's REST shapes (a fleethub extension): `GET /audit` answers an [`AuditPage`] of
//! [`AuditEntry`]s, newest first, with a continuation token for the next (older) page.

use serde::{Deserialize, Serialize};

/// The largest page `GET /audit?limit=` allows, and the default.
pub const AUDIT_PAGE_MAX: usize = 1000;
pub const AUDIT_PAGE_DEFAULT: usize = 100;

/// One state-changing service operation as the hub recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The record's place in the log: strictly increasing, never reused.
    pub sequence: u64,
    /// When the operation finished (RFC 3339, UTC).
    pub time: String,
    /// The shared access policy that authorised it; absent when the caller was not authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// e.g. `device.put`, `twin.patch`, `method.invoke`, `rollout.approve` (docs/compat.md lists them).
    pub operation: String,
    /// The device (`dev1`), module (`dev1/mod1`), job, configuration, rollout or artifact (`model/version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The HTTP status the hub answered.
    pub status: u16,
    /// Azure's error code when it failed (`DeviceNotFound`, `IotHubUnauthorizedAccess`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The caller's address (`ip:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// The answer of `GET /audit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub records: Vec<AuditEntry>,
    /// Pass as `continuation=` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
}
