//! Store writes a fleet runner (jobs, rollouts) cannot go on without: retried until they succeed or the hub
//! stops, one second apart, each failure logged with what was being done and for which job or rollout.

use std::future::Future;
use std::time::Duration;

use fleethub_store::{StoreError, StoreResult};
use tokio_util::sync::CancellationToken;

/// The wait between two tries of a failed store operation.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Runs `operation` until it succeeds; `None` if `stop` fires first. `owner` names the job or rollout
/// (`job x`, `rollout y`) in the log.
pub(crate) async fn durably<T, F, Fut>(
    owner: &str,
    what: &str,
    stop: &CancellationToken,
    mut operation: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    loop {
        match operation().await {
            Ok(value) => return Some(value),
            Err(error) => {
                if !back_off(owner, what, &error, stop).await {
                    return None;
                }
            }
        }
    }
}

/// Logs a store failure and waits before the next try; false if the hub stops meanwhile.
pub(crate) async fn back_off(
    owner: &str,
    what: &str,
    error: &StoreError,
    stop: &CancellationToken,
) -> bool {
    tracing::warn!(%owner, %error, "cannot {what}; retrying");
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(STORE_RETRY) => true,
    }
}
