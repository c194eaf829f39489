//! The audit log (`GET /audit`, a fleethub extension): who changed what, when, and with what result.

use fleethub_protocol::audit::AuditPage;
use reqwest::Method;

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

/// Which records [`ServiceClient::audit_page`] asks for; every field set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// At or after this time (RFC 3339).
    pub from: Option<String>,
    /// Before this time (RFC 3339).
    pub to: Option<String>,
    /// e.g. `twin.patch`.
    pub operation: Option<String>,
    /// A device id, `device/module`, job, configuration or rollout id, `model/version`.
    pub target: Option<String>,
    /// A shared access policy's name.
    pub policy: Option<String>,
    /// Records per page (the hub allows 1 to 1000; 100 when left out).
    pub limit: Option<usize>,
    /// The previous page's continuation token.
    pub continuation: Option<String>,
}

impl ServiceClient {
    /// One page of audit records, newest first (needs RegistryRead). Pass the page's `continuation_token` as
    /// `query.continuation` for the next, older page.
    pub async fn audit_page(&self, query: &AuditQuery) -> Result<AuditPage, ServiceError> {
        let limit = query.limit.map(|limit| limit.to_string());
        let parameters: Vec<(&str, &str)> = [
            ("from", query.from.as_deref()),
            ("to", query.to.as_deref()),
            ("operation", query.operation.as_deref()),
            ("target", query.target.as_deref()),
            ("policy", query.policy.as_deref()),
            ("limit", limit.as_deref()),
            ("continuation", query.continuation.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
        .collect();
        let path = wire::with_query("/audit", &parameters);
        self.call_json(Call::new(Method::GET, path, "a page of audit records"))
            .await
    }
}
