//! The audit log's settings and its retention task. Records are written by the REST layer
//! (`rest/audit.rs`), once per state-changing service operation, and kept by the store.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::Services;

/// How long and how many audit records the hub keeps.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// Records older than this are deleted (default 90 days).
    pub retention: Duration,
    /// At most (about) this many records are kept; the oldest go first (default 1,000,000).
    pub max_records: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(90 * 24 * 3600),
            max_records: 1_000_000,
        }
    }
}

/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Applies retention every minute until shutdown (the first time at start).
pub async fn run_retention(services: Arc<Services>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(RETENTION_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let settings = &services.config.audit;
        let cutoff = OffsetDateTime::now_utc()
            - time::Duration::try_from(settings.retention).unwrap_or(time::Duration::MAX);
        match services
            .store
            .trim_audit(cutoff, settings.max_records)
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "trimmed the audit log"),
            Err(error) => tracing::warn!(%error, "could not trim the audit log"),
        }
    }
}
