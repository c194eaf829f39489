//! The event log over HTTPS (a fleethub extension; Azure offers it as an Event Hubs endpoint over AMQP):
//! `GET /events` streams device-to-cloud messages and the hub's events as Server-Sent Events,
//! `GET /events/partitions` gives each partition's bounds, and `/events/consumerGroups/...` keeps consumer
//! groups' checkpoints. Pushed, never polled: the stream waits on the log's per-partition watches.
//!
//! `GET /events` query:
//! - `partition=0,2`: which partitions (default: all);
//! - `from=@latest` (default: what arrives from now on), `@earliest`, a sequence number (that event and what
//!   follows), or an RFC 3339 time (the first event enqueued at or after it);
//! - `consumerGroup=G`: partitions where G has a checkpoint start after it (the others at `from`);
//! - `deviceId=D`: only D's events (read from D's partition only);
//! - `position=0:43,1:17`, or the `Last-Event-ID` header on a reconnect: resume exactly there.
//!
//! Each event: `id:` the stream position after it (`partition:next,...` over the stream's partitions),
//! `event:` its `iothub-message-source` (`Telemetry`, `twinChangeEvents`, ...), `data:` the
//! [`EventMessage`] JSON. The `x-fleethub-stream-position` header says where the stream starts. A comment
//! line goes out every 15 s. Partitions are read in turn, a page at a time, so one busy partition does not
//! starve the others; order holds within a partition (and so per device), not across partitions. The stream
//! is the built-in `events` routing endpoint: it shows only the messages routed there (`routing`), so
//! sequence numbers may skip those routed elsewhere only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use fleethub_eventlog::{ConsumerGroup, EventLog, ReadLimits, StoredEvent};
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::events::{
    Checkpoint, Checkpoints, EventPartition, EventPartitions, STREAM_START_HEADER, StreamPosition,
    names,
};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::parse_time;
use futures_util::stream;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ApiResult, ApiState, authorize, json_body, query_id};
use crate::auth::required;
use crate::rest::ApiError;

/// Events read from one partition per refill.
const PAGE: ReadLimits = ReadLimits {
    max_events: 256,
    max_bytes: 1024 * 1024,
};

struct PartitionCursor {
    partition: u32,
    /// The next offset to read.
    read_next: u64,
    watch: watch::Receiver<u64>,
}

struct EventCursor {
    events: Arc<dyn EventLog>,
    partitions: Vec<PartitionCursor>,
    /// Per partition, the next offset after the last event sent: the `id:` of each event.
    sent: StreamPosition,
    device: Option<String>,
    pending: VecDeque<StoredEvent>,
    /// The partition the next refill tries first.
    turn: usize,
    shutdown: CancellationToken,
}

fn parse_consumer_group(name: &str) -> ApiResult<ConsumerGroup> {
    ConsumerGroup::new(name).map_err(|error| ApiError::bad_request(error.to_string()))
}

/// Where a partition starts when nothing more specific says so.
enum StartAt {
    Latest,
    Earliest,
    Offset(u64),
    Time(time::OffsetDateTime),
}

fn parse_from(text: &str) -> ApiResult<StartAt> {
    match text {
        "@latest" => Ok(StartAt::Latest),
        "@earliest" | "-1" => Ok(StartAt::Earliest),
        _ => {
            if let Ok(offset) = text.parse::<u64>() {
                return Ok(StartAt::Offset(offset));
            }
            parse_time(text).map(StartAt::Time).map_err(|_| {
                ApiError::bad_request(format!(
                    "from must be @latest, @earliest, a sequence number or an RFC 3339 time, got {text:?}"
                ))
            })
        }
    }
}

pub(super) async fn stream_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::READ_EVENTS)?;
    let events = Arc::clone(&state.services.events);
    let count = events.partition_count();
    let mut partitions: Vec<u32> = match query.get("partition") {
        None => (0..count).collect(),
        Some(list) => list
            .split(',')
            .map(|text| match text.trim().parse::<u32>() {
                Ok(partition) if partition < count => Ok(partition),
                _ => Err(ApiError::bad_request(format!(
                    "partition must list partitions from 0 to {}, got {text:?}",
                    count - 1
                ))),
            })
            .collect::<ApiResult<_>>()?,
    };
    partitions.sort_unstable();
    partitions.dedup();
    let device: Option<DeviceId> = query_id(&query, "deviceId")?;
    if let Some(device) = &device {
        let home = events.partition_of(device.as_str());
        if !partitions.contains(&home) {
            return Err(ApiError::bad_request(format!(
                "device {device}'s events are in partition {home}, which the stream does not read"
            )));
        }
        partitions = vec![home];
    }
    let from = query
        .get("from")
        .map(|text| parse_from(text))
        .transpose()?
        .unwrap_or(StartAt::Latest);
    let resume = match (query.get("position"), headers.get("last-event-id")) {
        (Some(text), _) => Some(text.as_str()),
        (None, Some(header)) => header.to_str().ok(),
        (None, None) => None,
    }
    .map(|text| {
        text.parse::<StreamPosition>()
            .map_err(|error| ApiError::bad_request(error.to_string()))
    })
    .transpose()?
    .unwrap_or_default();
    let checkpoints = match query.get("consumerGroup") {
        Some(name) => {
            let group = parse_consumer_group(name)?;
            events.checkpoints(&group).await.map_err(ApiError::from)?
        }
        None => BTreeMap::new(),
    };

    let mut cursors = Vec::with_capacity(partitions.len());
    let mut sent = StreamPosition::default();
    for partition in partitions {
        let info = events
            .partition_info(partition)
            .ok_or_else(|| ApiError::bad_request(format!("there is no partition {partition}")))?;
        let start = if let Some(next) = resume.0.get(&partition) {
            *next
        } else if let Some(last) = checkpoints.get(&partition) {
            last + 1
        } else {
            match &from {
                StartAt::Latest => info.next_offset,
                StartAt::Earliest => info.first_offset,
                StartAt::Offset(offset) => *offset,
                StartAt::Time(time) => events
                    .offset_at_time(partition, *time)
                    .await
                    .map_err(ApiError::from)?,
            }
        };
        let watch = events
            .watch_partition(partition)
            .ok_or_else(|| ApiError::bad_request(format!("there is no partition {partition}")))?;
        sent.0.insert(partition, start);
        cursors.push(PartitionCursor {
            partition,
            read_next: start,
            watch,
        });
    }
    let start = sent.to_string();
    let cursor = EventCursor {
        events,
        partitions: cursors,
        sent,
        device: device.map(|device| device.to_string()),
        pending: VecDeque::new(),
        turn: 0,
        shutdown: state.services.draining.clone(),
    };
    let frames = stream::unfold(cursor, next_frame);
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response();
    if let Ok(value) = start.parse() {
        response.headers_mut().insert(STREAM_START_HEADER, value);
    }
    Ok(response)
}

/// What the stream sends after 15 s without an event: an empty comment, which clients ignore.
const KEEP_ALIVE: &[u8] = b":\n\n";
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The next piece of the stream: every event read and not yet sent, in SSE form, in one frame (one write
/// and one TLS record for a page of events, not one per event); a keep-alive comment after 15 s without
/// events. Waits for new events when caught up; `None` ends the stream (shutdown, a read failure).
async fn next_frame(mut cursor: EventCursor) -> Option<(Result<Bytes, Infallible>, EventCursor)> {
    let keep_alive = tokio::time::sleep(KEEP_ALIVE_INTERVAL);
    tokio::pin!(keep_alive);
    loop {
        if !cursor.pending.is_empty() {
            let mut frame = BytesMut::new();
            while let Some(stored) = cursor.pending.pop_front() {
                cursor.sent.0.insert(stored.partition, stored.offset + 1);
                write_event(&mut frame, &cursor.sent, &stored);
            }
            return Some((Ok(frame.freeze()), cursor));
        }
        // Mark every partition's end as seen before reading, so an append after the reads wakes us.
        for partition in &mut cursor.partitions {
            partition.watch.borrow_and_update();
        }
        let count = cursor.partitions.len();
        let mut read_any = false;
        for step in 0..count {
            let index = (cursor.turn + step) % count;
            let partition = &mut cursor.partitions[index];
            let batch = match cursor
                .events
                .read(partition.partition, partition.read_next, PAGE)
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "event stream ends: the event log failed");
                    return None;
                }
            };
            if batch.events.is_empty() {
                continue;
            }
            partition.read_next = batch.next_offset;
            let device = cursor.device.as_deref();
            // The built-in `events` endpoint: only what routing sent there (`routing::visible_on_events`).
            cursor.pending.extend(
                batch
                    .events
                    .into_iter()
                    .filter(|event| {
                        device.is_none_or(|device| {
                            event.system_property(names::CONNECTION_DEVICE_ID) == Some(device)
                        })
                    })
                    .filter_map(crate::routing::visible_on_events),
            );
            cursor.turn = (index + 1) % count;
            read_any = true;
            break;
        }
        if read_any {
            continue;
        }
        if count == 0 {
            tokio::select! {
                () = cursor.shutdown.cancelled() => return None,
                () = &mut keep_alive => return Some((Ok(Bytes::from_static(KEEP_ALIVE)), cursor)),
            }
        }
        let changes = cursor
            .partitions
            .iter_mut()
            .map(|partition| Box::pin(partition.watch.changed()));
        let quiet = tokio::select! {
            (changed, _, _) = futures_util::future::select_all(changes) => {
                if changed.is_err() {
                    return None;
                }
                false
            }
            () = cursor.shutdown.cancelled() => return None,
            () = &mut keep_alive => true,
        };
        if quiet {
            return Some((Ok(Bytes::from_static(KEEP_ALIVE)), cursor));
        }
    }
}

/// One event in SSE form: `id:` the stream position after it, `event:` its message source, `data:` the
/// [`EventMessage`](fleethub_protocol::events::EventMessage) JSON (compact, so one line), a blank line.
fn write_event(frame: &mut BytesMut, position: &StreamPosition, stored: &StoredEvent) {
    use bytes::BufMut as _;
    use std::fmt::Write as _;
    let source = stored
        .system_property(names::MESSAGE_SOURCE)
        .filter(|source| !source.contains(['\r', '\n']))
        .unwrap_or("message");
    frame.reserve(stored.body.len() + 512);
    let _ = write!(frame, "id: {position}\nevent: {source}\ndata: ");
    // Written straight from the stored event into the frame (no `EventMessage` built): the stream's hot path.
    fleethub_protocol::events::write_event_message_json(
        frame.writer(),
        stored.partition,
        stored.offset,
        stored.enqueued_time,
        &stored.system_properties,
        &stored.application_properties,
        &stored.body,
    )
    .expect("writing to memory cannot fail");
    frame.extend_from_slice(b"\n\n");
}

pub(super) async fn list_partitions(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<EventPartitions>> {
    authorize(&state, &headers, &uri, required::READ_EVENTS)?;
    let events = &state.services.events;
    let partitions = (0..events.partition_count())
        .filter_map(|partition| events.partition_info(partition))
        .map(|info| EventPartition {
            partition: info.partition,
            beginning_sequence_number: info.first_offset,
            next_sequence_number: info.next_offset,
            last_enqueued_time: info.last_enqueued_time,
            is_empty: info.is_empty(),
        })
        .collect();
    Ok(Json(EventPartitions {
        partition_count: events.partition_count(),
        partitions,
    }))
}

pub(super) async fn list_consumer_groups(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::READ_EVENTS)?;
    let groups = state.services.events.consumer_groups().await?;
    let names: Vec<&str> = groups.iter().map(ConsumerGroup::as_str).collect();
    Ok(Json(json!({ "consumerGroups": names })).into_response())
}

fn checkpoints_body(group: &ConsumerGroup, checkpoints: BTreeMap<u32, u64>) -> Checkpoints {
    Checkpoints {
        consumer_group: Some(group.to_string()),
        checkpoints: checkpoints
            .into_iter()
            .map(|(partition, sequence_number)| Checkpoint {
                partition,
                sequence_number,
            })
            .collect(),
    }
}

pub(super) async fn get_consumer_group(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(group): Path<String>,
) -> ApiResult<Json<Checkpoints>> {
    authorize(&state, &headers, &uri, required::READ_EVENTS)?;
    let group = parse_consumer_group(&group)?;
    let checkpoints = state.services.events.checkpoints(&group).await?;
    Ok(Json(checkpoints_body(&group, checkpoints)))
}

pub(super) async fn put_checkpoints(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(group): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Checkpoints>> {
    authorize(&state, &headers, &uri, required::CHECKPOINT_EVENTS)?;
    let group = parse_consumer_group(&group)?;
    let request: Checkpoints = json_body(body)?;
    if request.checkpoints.is_empty() {
        return Err(ApiError::bad_request("checkpoints is empty"));
    }
    let updates = request
        .checkpoints
        .iter()
        .map(|checkpoint| (checkpoint.partition, checkpoint.sequence_number))
        .collect();
    let checkpoints = state
        .services
        .events
        .save_checkpoints(&group, updates)
        .await?;
    Ok(Json(checkpoints_body(&group, checkpoints)))
}

pub(super) async fn delete_consumer_group(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(group): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&state, &headers, &uri, required::CHECKPOINT_EVENTS)?;
    let group = parse_consumer_group(&group)?;
    if state.services.events.delete_consumer_group(&group).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ErrorCode::GenericNotFound,
            format!("consumer group {group} has no checkpoints"),
        ))
    }
}
