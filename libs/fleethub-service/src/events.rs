//! Reading the hub's event log (device-to-cloud messages and the twin, connection and lifecycle events) over
//! `GET /events`, Server-Sent Events (a fleethub extension; Azure serves the same messages from an Event
//! Hubs endpoint over AMQP), and keeping consumer groups' checkpoints.
//!
//! An [`EventStream`] remembers, per partition, the next sequence number to read (the `id:` of each event),
//! so when the connection drops it reconnects by itself and resumes exactly there: no gap, no duplicate.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use fleethub_protocol::events::{
    Checkpoint, Checkpoints, EventMessage, EventPartitions, STREAM_START_HEADER, StreamPosition,
};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::percent::quote;
use fleethub_protocol::rest::format_time;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use time::OffsetDateTime;

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::sse::{self, Body, SseParser};
use crate::wire;

/// Where each partition starts when neither a checkpoint nor a resume position says otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EventStart {
    /// Only what arrives from now on (`@latest`).
    #[default]
    Latest,
    /// From the oldest event kept (`@earliest`).
    Earliest,
    /// From this sequence number (inclusive).
    SequenceNumber(u64),
    /// From the first event enqueued at or after this time.
    EnqueuedTime(OffsetDateTime),
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct EventReadOptions {
    /// These partitions; all when `None`.
    pub partitions: Option<Vec<u32>>,
    pub start: EventStart,
    /// Start each partition after this consumer group's checkpoint, where it has one (see
    /// [`ServiceClient::save_checkpoints`]).
    pub consumer_group: Option<String>,
    /// Only this device's events (and its modules').
    pub device: Option<DeviceId>,
    /// Stop at the first lost connection instead of resuming.
    pub no_reconnect: bool,
}

/// An async stream of [`EventMessage`]s. Reconnection failures are yielded as errors while it keeps trying;
/// it ends after an error the hub will keep giving (401, 403, 400), or when `no_reconnect` is set and the
/// connection ends.
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<EventMessage, ServiceError>> + Send>>,
}

impl EventStream {
    pub async fn next(&mut self) -> Option<Result<EventMessage, ServiceError>> {
        self.inner.next().await
    }
}

impl Stream for EventStream {
    type Item = Result<EventMessage, ServiceError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(context)
    }
}

struct Reader {
    client: ServiceClient,
    options: EventReadOptions,
    /// Per partition, the next sequence number to deliver; empty until the hub said where it starts.
    position: StreamPosition,
    body: Option<Body>,
    parser: SseParser,
    pending: VecDeque<EventMessage>,
    failures: u32,
    finished: bool,
}

impl ServiceClient {
    /// Reads the event log: telemetry with its system and application properties, and twin change,
    /// connection-state and lifecycle events in Azure's schema. The stream is open when this returns (a
    /// refusal comes back here); afterwards it resumes by itself after a dropped connection.
    ///
    /// ```no_run
    /// # async fn example(client: fleethub_service::ServiceClient) -> Result<(), fleethub_service::ServiceError> {
    /// use fleethub_service::{EventReadOptions, EventStart};
    /// let options = EventReadOptions { start: EventStart::Earliest, ..Default::default() };
    /// let mut events = client.read_events(options).await?;
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{:?} {:?}: {}", event.device_id(), event.message_source(), event.body);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_events(
        &self,
        options: EventReadOptions,
    ) -> Result<EventStream, ServiceError> {
        let (body, start) = open(self, &options, None).await?;
        let reader = Reader {
            client: self.clone(),
            options,
            position: start.unwrap_or_default(),
            body: Some(body),
            parser: SseParser::default(),
            pending: VecDeque::new(),
            failures: 0,
            finished: false,
        };
        Ok(EventStream {
            inner: Box::pin(futures_util::stream::unfold(reader, next_event)),
        })
    }

    /// Each partition's bounds (`GET /events/partitions`).
    pub async fn event_partitions(&self) -> Result<EventPartitions, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query("/events/partitions", &[]),
            "the event partitions",
        ))
        .await
    }

    /// A consumer group's checkpoints (`GET /events/consumerGroups/{group}`; none for an unknown group).
    pub async fn checkpoints(&self, consumer_group: &str) -> Result<Checkpoints, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query(
                &format!("/events/consumerGroups/{}", quote(consumer_group)),
                &[],
            ),
            "checkpoints",
        ))
        .await
    }

    /// Records, durably, the last event a consumer group processed in each given partition; returns all the
    /// group's checkpoints. A stream opened with this group then starts after them.
    pub async fn save_checkpoints(
        &self,
        consumer_group: &str,
        checkpoints: &[Checkpoint],
    ) -> Result<Checkpoints, ServiceError> {
        let body = Checkpoints {
            consumer_group: None,
            checkpoints: checkpoints.to_vec(),
        };
        let call = Call::new(
            Method::PUT,
            wire::with_query(
                &format!(
                    "/events/consumerGroups/{}/checkpoints",
                    quote(consumer_group)
                ),
                &[],
            ),
            "checkpoints",
        );
        self.call_json(call.json_body(&body)?).await
    }

    /// Forgets a consumer group's checkpoints (404 `GenericNotFound` when it has none).
    pub async fn delete_consumer_group(&self, consumer_group: &str) -> Result<(), ServiceError> {
        self.call_no_content(Call::new(
            Method::DELETE,
            wire::with_query(
                &format!("/events/consumerGroups/{}", quote(consumer_group)),
                &[],
            ),
            "a consumer group",
        ))
        .await
    }
}

async fn next_event(mut reader: Reader) -> Option<(Result<EventMessage, ServiceError>, Reader)> {
    loop {
        if let Some(event) = reader.pending.pop_front() {
            let next = reader.position.0.entry(event.partition).or_insert(0);
            // Only a resume overlap could repeat an event; skip it.
            if event.sequence_number < *next {
                continue;
            }
            *next = event.sequence_number + 1;
            return Some((Ok(event), reader));
        }
        if reader.finished {
            return None;
        }
        let Some(body) = reader.body.as_mut() else {
            sse::wait_before_reconnecting(reader.failures).await;
            let resume = (!reader.position.0.is_empty()).then(|| reader.position.clone());
            match open(&reader.client, &reader.options, resume.as_ref()).await {
                Ok((body, _)) => {
                    reader.body = Some(body);
                    reader.parser = SseParser::default();
                    reader.failures = 0;
                }
                Err(error) => {
                    reader.failures += 1;
                    if sse::is_permanent(&error) || reader.options.no_reconnect {
                        reader.finished = true;
                    }
                    return Some((Err(error), reader));
                }
            }
            continue;
        };
        match body.next().await {
            Some(Ok(chunk)) => {
                let decoded =
                    sse::decode_events(&mut reader.parser, &chunk, "an event", &mut reader.pending);
                if let Err(error) = decoded {
                    return Some((Err(error), reader));
                }
            }
            Some(Err(_)) | None => {
                reader.body = None;
                reader.failures = 1;
                if reader.options.no_reconnect {
                    reader.finished = true;
                }
            }
        }
    }
}

/// Opens the stream; returns the body and the position the hub says it starts at.
async fn open(
    client: &ServiceClient,
    options: &EventReadOptions,
    resume: Option<&StreamPosition>,
) -> Result<(Body, Option<StreamPosition>), ServiceError> {
    let mut parameters: Vec<(&str, String)> = Vec::new();
    if let Some(partitions) = &options.partitions {
        let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
        parameters.push(("partition", list.join(",")));
    }
    parameters.push((
        "from",
        match options.start {
            EventStart::Latest => "@latest".to_owned(),
            EventStart::Earliest => "@earliest".to_owned(),
            EventStart::SequenceNumber(sequence) => sequence.to_string(),
            EventStart::EnqueuedTime(time) => format_time(time),
        },
    ));
    if let Some(group) = &options.consumer_group {
        parameters.push(("consumerGroup", group.clone()));
    }
    if let Some(device) = &options.device {
        parameters.push(("deviceId", device.to_string()));
    }
    if let Some(position) = resume {
        parameters.push(("position", position.to_string()));
    }
    let borrowed: Vec<(&str, &str)> = parameters
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let path_and_query = wire::with_query("/events", &borrowed);
    let (body, start) = sse::open(client, &path_and_query, STREAM_START_HEADER).await?;
    Ok((
        body,
        start.and_then(|text| text.parse::<StreamPosition>().ok()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_reassembled() {
        let wire = b": keep-alive\n\nid: 0:1\nevent: Telemetry\ndata: {\"a\":1}\n\nid: 1:5\r\nevent: x\r\ndata: b\r\n\r\n";
        for split in 0..wire.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&wire[..split]);
            events.extend(parser.push(&wire[split..]));
            assert_eq!(
                events,
                vec!["{\"a\":1}".to_owned(), "b".to_owned()],
                "split at {split}"
            );
        }
    }
}
