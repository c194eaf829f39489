//! Delivery to custom endpoints: one worker task per endpoint incarnation, started and stopped as the
//! configuration changes.
//!
//! A worker reads every partition of the event log from its cursor, a page at a time and partitions in
//! turn, and delivers the messages stamped for its endpoint in log order (so a device's messages arrive in
//! the order it sent them). A webhook gets one request per message; a file sink one write per page. A
//! failed attempt is retried after [`webhook::backoff`]; after `max_attempts` attempts or
//! `max_retry_duration` the message becomes a dead letter and the worker moves on. The cursor moves past a
//! message only once it is delivered or its dead letter is durable, and is saved every
//! `cursor_save_interval` while busy and at once when idle or stopping: delivery is at least once, and a
//! restart resumes where the saved cursor says. A worker never blocks ingestion: it only reads the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fleethub_eventlog::{ReadLimits, StoredEvent};
use fleethub_protocol::events::EventMessage;
use fleethub_protocol::routing::{DeadLetter, EndpointType};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::compiled::EndpointKind;
use super::file_sink::FileSinkWriter;
use super::{HealthEvent, stamp, webhook};
use crate::services::Services;

const PAGE: ReadLimits = ReadLimits {
    max_events: 256,
    max_bytes: 1024 * 1024,
};
/// Wait after a failed log read or dead-letter write before trying again.
const PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a worker for every custom endpoint of the configuration in force until shutdown; workers of
/// endpoints that a new configuration removes (or replaces by another type) stop.
pub async fn run(services: Arc<Services>, shutdown: CancellationToken) {
    let mut configuration = services.routing.subscribe();
    let tracker = TaskTracker::new();
    let mut workers: HashMap<(String, u64), CancellationToken> = HashMap::new();
    loop {
        let current = Arc::clone(&configuration.borrow_and_update());
        workers.retain(|(name, since), stop| {
            let kept = current
                .endpoint(name)
                .is_some_and(|endpoint| endpoint.since == *since);
            if !kept {
                stop.cancel();
            }
            kept
        });
        for endpoint in &current.endpoints {
            let key = (endpoint.name.to_ascii_lowercase(), endpoint.since);
            if workers.contains_key(&key) {
                continue;
            }
            let stop = shutdown.child_token();
            let worker = Worker {
                services: Arc::clone(&services),
                name: endpoint.name.clone(),
                since: endpoint.since,
                endpoint_type: endpoint.kind.endpoint_type(),
                stop: stop.clone(),
                cursor: BTreeMap::new(),
                saved_at: Instant::now(),
                http: None,
                sink: None,
            };
            tracker.spawn(worker.run());
            workers.insert(key, stop);
        }
        tokio::select! {
            changed = configuration.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    for stop in workers.values() {
        stop.cancel();
    }
    tracker.close();
    tracker.wait().await;
}

/// Why a worker stops delivering.
enum Stopped {
    /// Shutdown, or the endpoint was removed.
    Stop,
}

/// One message to deliver: where it is in the log and what the endpoint receives.
struct Pending {
    partition: u32,
    offset: u64,
    message: EventMessage,
}

struct Worker {
    services: Arc<Services>,
    name: String,
    since: u64,
    endpoint_type: EndpointType,
    stop: CancellationToken,
    /// Per partition, the next offset to read.
    cursor: BTreeMap<u32, u64>,
    saved_at: Instant,
    http: Option<reqwest::Client>,
    sink: Option<FileSinkWriter>,
}

impl Worker {
    async fn run(mut self) {
        let events = Arc::clone(&self.services.events);
        let stored = self.services.routing.cursor(&self.name, self.since).await;
        let count = events.partition_count();
        for partition in 0..count {
            let next = stored
                .as_ref()
                .and_then(|cursor| cursor.get(&partition).copied())
                .or_else(|| {
                    events
                        .partition_info(partition)
                        .map(|info| info.first_offset)
                })
                .unwrap_or(0);
            self.cursor.insert(partition, next);
        }
        let mut watches: Vec<watch::Receiver<u64>> = (0..count)
            .filter_map(|partition| events.watch_partition(partition))
            .collect();
        tracing::debug!(endpoint = %self.name, cursor = ?self.cursor, "endpoint worker started");
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            for watch in &mut watches {
                watch.borrow_and_update();
            }
            let mut progressed = false;
            for partition in 0..count {
                let from = self.cursor.get(&partition).copied().unwrap_or(0);
                let batch = match events.read(partition, from, PAGE).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(endpoint = %self.name, partition, %error, "endpoint worker cannot read the event log; retrying");
                        if self.pause().await {
                            break;
                        }
                        continue;
                    }
                };
                let Some(first) = batch.events.first().map(|event| event.offset) else {
                    continue;
                };
                if first > from {
                    tracing::warn!(
                        endpoint = %self.name,
                        partition,
                        lost = first - from,
                        "events expired from the event log before this endpoint read them"
                    );
                }
                let pending = self.select(batch.events);
                if let Err(Stopped::Stop) = self.deliver(pending).await {
                    break;
                }
                self.cursor.insert(partition, batch.next_offset);
                self.services.routing.record_health(
                    &self.name,
                    self.since,
                    HealthEvent::Cursor(&self.cursor),
                );
                progressed = true;
                if self.saved_at.elapsed() >= self.services.routing.settings().cursor_save_interval
                {
                    self.save_cursor().await;
                }
            }
            if self.stop.is_cancelled() {
                break;
            }
            if progressed {
                continue;
            }
            self.save_cursor().await;
            let changes = watches.iter_mut().map(|watch| Box::pin(watch.changed()));
            tokio::select! {
                (changed, _, _) = futures_util::future::select_all(changes) => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = self.stop.cancelled() => break,
            }
        }
        self.save_cursor().await;
        tracing::debug!(endpoint = %self.name, "endpoint worker stopped");
    }

    /// The messages of a page routed to this endpoint, as it receives them.
    fn select(&self, events: Vec<StoredEvent>) -> Vec<Pending> {
        events
            .into_iter()
            .filter_map(|mut event| {
                stamp::for_endpoint(
                    &mut event.system_properties,
                    &mut event.application_properties,
                    &self.name,
                )
                .then(|| Pending {
                    partition: event.partition,
                    offset: event.offset,
                    message: EventMessage::new(
                        event.partition,
                        event.offset,
                        event.enqueued_time,
                        &event.system_properties,
                        &event.application_properties,
                        &event.body,
                    ),
                })
            })
            .collect()
    }

    /// The endpoint's settings in the configuration in force; `None` once this incarnation is gone.
    fn endpoint(&self) -> Option<EndpointKind> {
        let current = self.services.routing.current();
        current
            .endpoint(&self.name)
            .filter(|endpoint| endpoint.since == self.since)
            .map(|endpoint| endpoint.kind.clone())
    }

    async fn deliver(&mut self, pending: Vec<Pending>) -> Result<(), Stopped> {
        if pending.is_empty() {
            return Ok(());
        }
        match self.endpoint_type {
            EndpointType::Webhook => {
                for message in pending {
                    self.deliver_to_webhook(message).await?;
                }
                Ok(())
            }
            EndpointType::FileSink => self.deliver_to_file(pending).await,
        }
    }

    async fn deliver_to_webhook(&mut self, pending: Pending) -> Result<(), Stopped> {
        let body = serde_json::to_vec(&pending.message).expect("event messages always serialise");
        let mut attempts = Attempts::new();
        loop {
            let Some(EndpointKind::Webhook(webhook)) = self.endpoint() else {
                return Err(Stopped::Stop);
            };
            if self.http.is_none() {
                match webhook::client(self.services.routing.settings().webhook_timeout) {
                    Ok(client) => self.http = Some(client),
                    Err(error) => {
                        tracing::error!(endpoint = %self.name, %error, "cannot make the webhook client");
                        if self.pause().await {
                            return Err(Stopped::Stop);
                        }
                        continue;
                    }
                }
            }
            let client = self.http.as_ref().expect("made above");
            attempts.count += 1;
            let delivery = webhook::Delivery {
                endpoint: &self.name,
                partition: pending.partition,
                sequence_number: pending.offset,
                attempt: attempts.count,
            };
            let outcome = tokio::select! {
                outcome = webhook::post(client, &webhook, &delivery, body.clone()) => outcome,
                () = self.stop.cancelled() => return Err(Stopped::Stop),
            };
            match outcome {
                Ok(()) => {
                    self.services.routing.record_health(
                        &self.name,
                        self.since,
                        HealthEvent::Delivered(1),
                    );
                    self.cursor.insert(pending.partition, pending.offset + 1);
                    return Ok(());
                }
                Err(error) => {
                    if !self.retry(&mut attempts, error).await? {
                        self.dead_letter(vec![pending.message], &attempts).await?;
                        self.cursor.insert(pending.partition, pending.offset + 1);
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn deliver_to_file(&mut self, pending: Vec<Pending>) -> Result<(), Stopped> {
        let mut lines = Vec::new();
        for message in &pending {
            serde_json::to_writer(&mut lines, &message.message)
                .expect("event messages always serialise");
            lines.push(b'\n');
        }
        let lines = Arc::new(lines);
        let mut attempts = Attempts::new();
        loop {
            let Some(EndpointKind::FileSink(sink)) = self.endpoint() else {
                return Err(Stopped::Stop);
            };
            attempts.count += 1;
            let writer = self
                .sink
                .take()
                .filter(|writer| writer.configured_path() == sink.path);
            let root = self.services.routing.routes_root.clone();
            let name = self.name.clone();
            let max_bytes = self.services.routing.settings().file_sink_max_bytes;
            let batch = Arc::clone(&lines);
            let written = tokio::task::spawn_blocking(move || {
                let mut writer = match writer {
                    Some(writer) => writer,
                    None => FileSinkWriter::open(&root, &name, &sink.path, max_bytes)
                        .map_err(|error| (None, format!("cannot open {}: {error}", sink.path)))?,
                };
                match writer.append(&batch) {
                    Ok(()) => Ok(writer),
                    Err(error) => {
                        Err((Some(writer), format!("cannot write {}: {error}", sink.path)))
                    }
                }
            })
            .await
            .unwrap_or_else(|error| Err((None, format!("the file sink's writer failed: {error}"))));
            match written {
                Ok(writer) => {
                    self.sink = Some(writer);
                    self.services.routing.record_health(
                        &self.name,
                        self.since,
                        HealthEvent::Delivered(pending.len() as u64),
                    );
                    return Ok(());
                }
                Err((writer, error)) => {
                    self.sink = writer;
                    if !self.retry(&mut attempts, error).await? {
                        let messages = pending.into_iter().map(|pending| pending.message).collect();
                        return self.dead_letter(messages, &attempts).await;
                    }
                }
            }
        }
    }

    /// After a failed attempt: records it, then waits out the backoff and answers `true` (try again), or
    /// answers `false` when the attempts or the time are used up.
    async fn retry(&mut self, attempts: &mut Attempts, error: String) -> Result<bool, Stopped> {
        let settings = self.services.routing.settings();
        tracing::debug!(endpoint = %self.name, attempt = attempts.count, %error, "delivery attempt failed");
        self.services
            .routing
            .record_health(&self.name, self.since, HealthEvent::Failed(&error));
        attempts.last_error = error;
        if attempts.count >= settings.max_attempts
            || attempts.started.elapsed() >= settings.max_retry_duration
        {
            return Ok(false);
        }
        let wait = webhook::backoff(
            attempts.count,
            settings.initial_backoff,
            settings.max_backoff,
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(true),
            () = self.stop.cancelled() => Err(Stopped::Stop),
        }
    }

    /// Writes the dead letters durably (retrying until it can, or until stopped).
    async fn dead_letter(
        &mut self,
        messages: Vec<EventMessage>,
        attempts: &Attempts,
    ) -> Result<(), Stopped> {
        let count = messages.len() as u64;
        tracing::warn!(
            endpoint = %self.name,
            messages = count,
            attempts = attempts.count,
            error = %attempts.last_error,
            "giving up on delivery; dead-lettering"
        );
        for message in messages {
            let letter = DeadLetter {
                id: 0,
                endpoint_name: self.name.clone(),
                endpoint_type: self.endpoint_type,
                dead_lettered_time: OffsetDateTime::now_utc(),
                first_attempt_time: attempts.first_attempt_time,
                attempts: attempts.count,
                last_error: attempts.last_error.clone(),
                message,
            };
            loop {
                match self
                    .services
                    .routing
                    .dead_letters()
                    .append(letter.clone())
                    .await
                {
                    Ok(_) => break,
                    Err(error) => {
                        tracing::error!(endpoint = %self.name, %error, "cannot write a dead letter; retrying");
                        if self.pause().await {
                            return Err(Stopped::Stop);
                        }
                    }
                }
            }
        }
        self.services.routing.record_health(
            &self.name,
            self.since,
            HealthEvent::DeadLettered(count),
        );
        Ok(())
    }

    async fn save_cursor(&mut self) {
        self.saved_at = Instant::now();
        if let Err(error) = self
            .services
            .routing
            .save_cursor(&*self.services.store, &self.name, self.since, &self.cursor)
            .await
        {
            tracing::warn!(endpoint = %self.name, %error, "cannot save the endpoint's cursor");
        }
    }

    /// Waits out [`PAUSE`]; `true` when stopped meanwhile.
    async fn pause(&self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(PAUSE) => false,
            () = self.stop.cancelled() => true,
        }
    }
}

/// The attempts at one message (or one file-sink batch).
struct Attempts {
    count: u32,
    started: Instant,
    first_attempt_time: OffsetDateTime,
    last_error: String,
}

impl Attempts {
    fn new() -> Self {
        Self {
            count: 0,
            started: Instant::now(),
            first_attempt_time: OffsetDateTime::now_utc(),
            last_error: String::new(),
        }
    }
}
