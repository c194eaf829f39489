//! Watching the hub's change feed (`GET /changes`, Server-Sent Events; a fleethub extension) as an async
//! stream. When the connection drops, the stream reconnects by itself and resumes after the last change it
//! delivered, so a consumer sees every change once, in order, with no gap and no duplicate.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use fleethub_protocol::changes::ChangeRecord;
use fleethub_protocol::ids::{DeviceId, JobId, RolloutId};
use futures_util::{Stream, StreamExt};

use crate::sse::{self, Body, SseParser};
use crate::{ServiceClient, ServiceError};

/// The name this module's unit test knows the shared parser by.
#[cfg(test)]
use crate::sse::SseParser as EventParser;

/// Response header the hub sends with the sequence number the stream starts after.
const START_HEADER: &str = "x-fleethub-after-sequence";

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Deliver changes with a sequence number greater than this; `None` starts at the newest change (only
    /// what happens from now on).
    pub after: Option<u64>,
    /// Only this device's changes (and its modules', and its records in jobs).
    pub device: Option<DeviceId>,
    /// Only this job's records: `jobUpdated` (created, status or end time changed) and `deviceJobUpdated`
    /// (a device's status in the job changed). With `device` too, that device's records in the job.
    pub job: Option<JobId>,
    /// Only this firmware rollout's records: `rolloutUpdated` and `deviceRolloutUpdated`.
    pub rollout: Option<RolloutId>,
    /// Stop at the first lost connection instead of resuming (default: resume).
    pub no_reconnect: bool,
}

/// An async stream of [`ChangeRecord`]s. Reconnection failures are yielded as errors while it keeps trying; it
/// ends after yielding an error the hub will keep giving (401, 403, 400), or when `no_reconnect` is set and the
/// connection ends.
pub struct ChangeStream {
    inner: Pin<Box<dyn Stream<Item = Result<ChangeRecord, ServiceError>> + Send>>,
}

impl ChangeStream {
    pub async fn next(&mut self) -> Option<Result<ChangeRecord, ServiceError>> {
        self.inner.next().await
    }
}

impl Stream for ChangeStream {
    type Item = Result<ChangeRecord, ServiceError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(context)
    }
}

struct Watch {
    client: ServiceClient,
    options: WatchOptions,
    /// Sequence number of the last change delivered (or where the stream started).
    last: Option<u64>,
    body: Option<Body>,
    parser: SseParser,
    pending: VecDeque<ChangeRecord>,
    /// Consecutive failed connection attempts, for the backoff.
    failures: u32,
    finished: bool,
}

impl ServiceClient {
    /// Watches the hub's change feed: twin changes, identity creation and deletion, connection changes, jobs'
    /// progress ([`watch_job`](ServiceClient::watch_job) builds on it).
    /// The watch is open when this returns (so "from now" means from this call, and a refusal such as a
    /// policy without the right is returned here); afterwards the stream resumes by itself.
    ///
    /// ```no_run
    /// # async fn example(client: fleethub_service::ServiceClient) -> Result<(), fleethub_service::ServiceError> {
    /// use fleethub_service::WatchOptions;
    /// let mut changes = client.watch_changes(WatchOptions::default()).await?;
    /// while let Some(change) = changes.next().await {
    ///     let change = change?;
    ///     println!("{} {:?} {}", change.sequence, change.device_id, change.operation.as_str());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch_changes(&self, options: WatchOptions) -> Result<ChangeStream, ServiceError> {
        let (body, start) = open(self, &options, options.after).await?;
        let watch = Watch {
            client: self.clone(),
            last: options.after.or(start),
            options,
            body: Some(body),
            parser: SseParser::default(),
            pending: VecDeque::new(),
            failures: 0,
            finished: false,
        };
        Ok(ChangeStream {
            inner: Box::pin(futures_util::stream::unfold(watch, next_change)),
        })
    }
}

async fn next_change(mut watch: Watch) -> Option<(Result<ChangeRecord, ServiceError>, Watch)> {
    loop {
        if let Some(record) = watch.pending.pop_front() {
            // A record at or before the last delivered one can only come from a resume overlap: skip it.
            if watch.last.is_some_and(|last| record.sequence <= last) {
                continue;
            }
            watch.last = Some(record.sequence);
            return Some((Ok(record), watch));
        }
        if watch.finished {
            return None;
        }
        let Some(body) = watch.body.as_mut() else {
            sse::wait_before_reconnecting(watch.failures).await;
            match open(&watch.client, &watch.options, watch.last).await {
                Ok((body, start)) => {
                    watch.last = watch.last.or(start);
                    watch.body = Some(body);
                    watch.parser = SseParser::default();
                    watch.failures = 0;
                }
                Err(error) => {
                    watch.failures += 1;
                    if sse::is_permanent(&error) || watch.options.no_reconnect {
                        watch.finished = true;
                    }
                    return Some((Err(error), watch));
                }
            }
            continue;
        };
        match body.next().await {
            Some(Ok(chunk)) => {
                let decoded = sse::decode_events(
                    &mut watch.parser,
                    &chunk,
                    "a change record",
                    &mut watch.pending,
                );
                if let Err(error) = decoded {
                    return Some((Err(error), watch));
                }
            }
            // The connection ended or broke: resume after the last delivered change.
            Some(Err(_)) | None => {
                watch.body = None;
                watch.failures = 1;
                if watch.options.no_reconnect {
                    watch.finished = true;
                }
            }
        }
    }
}

async fn open(
    client: &ServiceClient,
    options: &WatchOptions,
    after: Option<u64>,
) -> Result<(Body, Option<u64>), ServiceError> {
    let mut query = String::from("/changes?api-version=2021-04-12");
    if let Some(after) = after {
        query.push_str(&format!("&after={after}"));
    }
    if let Some(device) = &options.device {
        query.push_str(&format!(
            "&deviceId={}",
            fleethub_protocol::percent::quote(device.as_str())
        ));
    }
    if let Some(job) = &options.job {
        query.push_str(&format!(
            "&jobId={}",
            fleethub_protocol::percent::quote(job.as_str())
        ));
    }
    if let Some(rollout) = &options.rollout {
        query.push_str(&format!(
            "&rolloutId={}",
            fleethub_protocol::percent::quote(rollout.as_str())
        ));
    }
    let (body, start) = sse::open(client, &query, START_HEADER).await?;
    Ok((body, start.and_then(|text| text.parse::<u64>().ok())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let wire = b": keep-alive\n\nid: 7\nevent: updateTwin\ndata: {\"a\":1}\n\nid: 8\r\nevent: x\r\ndata: line1\r\ndata: line2\r\n\r\n";
        for split in 0..wire.len() {
            let mut parser = EventParser::default();
            let mut events = parser.push(&wire[..split]);
            events.extend(parser.push(&wire[split..]));
            assert_eq!(
                events,
                vec!["{\"a\":1}".to_owned(), "line1\nline2".to_owned()],
                "split at {split}"
            );
        }
    }
}
