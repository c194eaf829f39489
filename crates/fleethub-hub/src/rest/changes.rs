//! `GET /changes`: the change feed as Server-Sent Events, a fleethub extension (Azure routes twin change
//! events to Event Hubs instead). Pushed, never polled: the stream waits on the store's change notifier.
//!
//! Query: `after=SEQ` (exclusive) or `from=SEQ` (inclusive), or the standard `Last-Event-ID` header on a
//! reconnect; with none of them the stream starts at the newest change (only what happens from now on).
//! `deviceId=ID` keeps one device's changes (its modules' and its records in jobs too); `jobId=ID` keeps one
//! job's records (`jobUpdated`, `deviceJobUpdated`), read through their own index, so watching a job costs
//! nothing however busy the rest of the hub is; `rolloutId=ID` likewise keeps one firmware rollout's
//! records (`rolloutUpdated`, `deviceRolloutUpdated`). Each event: `id:` the sequence number, `event:` the
//! operation (`updateTwin`, `deviceConnected`, `deviceJobUpdated`, ...), `data:` the `ChangeRecord` JSON.
//! A comment line is sent every 15 s so proxies and clients see the stream is alive. The response header
//! `x-fleethub-after-sequence` says where the stream starts, so a client can resume exactly.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleethub_protocol::changes::ChangeRecord;
use fleethub_protocol::ids::{DeviceId, JobId, RolloutId};
use fleethub_store::{ChangeFilter, Store};
use futures_util::stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ApiResult, ApiState, authorize, query_id};
use crate::auth::required;
use crate::rest::ApiError;

/// Records read from the store per query; the stream refills when they are sent.
const PAGE: usize = 256;

/// Response header: the sequence number the stream starts after.
pub const START_HEADER: &str = "x-fleethub-after-sequence";

struct Cursor {
    store: Arc<dyn Store>,
    notifier: watch::Receiver<u64>,
    after: u64,
    /// The head the last read covered whole (fewer records than a page came back): once its records are
    /// sent, the next read starts there, not at the last record the filter kept. A filtered stream (one
    /// device) would otherwise scan again, at every change, everything since its own last record.
    scanned_through: u64,
    filter: ChangeFilter,
    pending: VecDeque<ChangeRecord>,
    shutdown: CancellationToken,
}

pub(super) async fn stream_changes(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::WATCH_CHANGES)?;
    let number = |name: &str, text: &str| {
        text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("{name} must be a sequence number, got {text:?}"))
        })
    };
    let store = Arc::clone(&state.services.store);
    let notifier = store.change_notifier();
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let after = match (query.get("after"), query.get("from"), last_event_id) {
        (Some(after), _, _) => number("after", after)?,
        (None, Some(from), _) => number("from", from)?.saturating_sub(1),
        (None, None, Some(last)) => number("Last-Event-ID", last)?,
        (None, None, None) => *notifier.borrow(),
    };
    let device: Option<DeviceId> = query_id(&query, "deviceId")?;
    let job: Option<JobId> = query_id(&query, "jobId")?;
    let rollout: Option<RolloutId> = query_id(&query, "rolloutId")?;
    let cursor = Cursor {
        store,
        notifier,
        after,
        filter: ChangeFilter {
            device,
            job,
            rollout,
        },
        pending: VecDeque::new(),
        scanned_through: after,
        shutdown: state.services.draining.clone(),
    };
    let events = stream::unfold(cursor, next_event);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Where the stream starts, so a client that asked for "from now" can resume exactly after a reconnect.
    response.headers_mut().insert(START_HEADER, after.into());
    Ok(response)
}

/// The next event, waiting for new changes when caught up; `None` ends the stream (shutdown or store failure).
async fn next_event(mut cursor: Cursor) -> Option<(Result<Event, Infallible>, Cursor)> {
    loop {
        if let Some(record) = cursor.pending.pop_front() {
            cursor.after = record.sequence;
            let data = serde_json::to_string(&record).expect("change records always serialise");
            let event = Event::default()
                .id(record.sequence.to_string())
                .event(record.operation.as_str())
                .data(data);
            return Some((Ok(event), cursor));
        }
        cursor.after = cursor.after.max(cursor.scanned_through);
        // Mark the current head as seen before reading, so a change committed after the read wakes us; every
        // record up to it is committed, so a read that returns less than a page has seen all of them.
        let head = *cursor.notifier.borrow_and_update();
        match cursor
            .store
            .read_changes(cursor.after, PAGE, cursor.filter.clone())
            .await
        {
            Ok(records) => {
                if records.len() < PAGE {
                    cursor.scanned_through = head;
                }
                if !records.is_empty() {
                    cursor.pending.extend(records);
                    continue;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "change stream ends: the store failed");
                return None;
            }
        }
        tokio::select! {
            changed = cursor.notifier.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            () = cursor.shutdown.cancelled() => return None,
        }
    }
}
