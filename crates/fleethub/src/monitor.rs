//! `fleethub monitor-events`: prints device-to-cloud messages and the hub's twin, connection and lifecycle
//! events as they arrive, like `az iot hub monitor-events`: one aligned, coloured line per event for people,
//! or `az`'s JSON (`{"event": {"origin", "module", "interface", "component", "payload", "properties":
//! {"system", "application"}, "annotations"}}`) one object per line with `--output json`. With
//! `--consumer-group` it starts after the group's checkpoints and checkpoints what it printed (every second
//! and on exit), so the next run goes on where this one stopped.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use fleethub_service::protocol::events::{Checkpoint, EventMessage, names, sources};
use fleethub_service::protocol::ids::DeviceId;
use fleethub_service::protocol::rest::{format_time, parse_time};
use fleethub_service::{EventReadOptions, EventStart};
use serde_json::{Map, Value, json};

use crate::failure::{ExplainResult as _, Kind, Operation, explain};
use crate::hub::{HUB_HELP, Hub, HubArgs};
use crate::output::{OutputFormat, Palette, paint, write_stdout};

/// Checkpoints are saved at most this often (and on exit).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct MonitorArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Only this device's events (its modules' too); `*` and `?` match any characters, as in `az`
    #[arg(long = "device", short = 'd', value_name = "DEVICE_ID")]
    device: Option<String>,
    /// Only this module's events (`*` and `?` match any characters)
    #[arg(long = "module", short = 'm', value_name = "MODULE_ID")]
    module: Option<String>,
    /// Also show properties: sys (system), app (application), anno (annotations: who sent it, when, where
    /// in the log), all. `--properties` alone means all
    #[arg(
        long,
        short = 'p',
        value_enum,
        num_args = 0..,
        value_delimiter = ',',
        default_missing_value = "all",
        value_name = "KIND"
    )]
    properties: Option<Vec<PropertyKind>>,
    /// Read as this consumer group: start after its checkpoints and checkpoint what was printed
    #[arg(long, short = 'c', value_name = "GROUP")]
    consumer_group: Option<String>,
    /// Start at this enqueued time (RFC 3339, or milliseconds since the Unix epoch as `az` takes it)
    /// instead of now
    #[arg(long, short = 'e', value_name = "TIME", conflicts_with = "from_start")]
    enqueued_time: Option<String>,
    /// Start with the oldest events the hub keeps instead of now
    #[arg(long)]
    from_start: bool,
    /// Only these kinds of events
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SOURCE")]
    source: Vec<Source>,
    /// Stop after this many events
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,
    /// Stop after this many seconds without an event (0: never)
    #[arg(long, short = 't', default_value_t = 0, value_name = "SECONDS")]
    timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PropertyKind {
    Sys,
    App,
    Anno,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// Device-to-cloud messages
    Telemetry,
    /// Twin change events
    Twin,
    /// Device and module creation and deletion
    Lifecycle,
    /// Connections and disconnections
    Connection,
}

impl Source {
    fn message_source(self) -> &'static str {
        match self {
            Source::Telemetry => sources::TELEMETRY,
            Source::Twin => sources::TWIN_CHANGE_EVENTS,
            Source::Lifecycle => sources::DEVICE_LIFECYCLE_EVENTS,
            Source::Connection => sources::DEVICE_CONNECTION_STATE_EVENTS,
        }
    }
}

/// Which parts of an event to show.
#[derive(Clone, Copy, Debug, Default)]
struct Shown {
    system: bool,
    application: bool,
    annotations: bool,
}

impl Shown {
    fn from(kinds: Option<&[PropertyKind]>) -> Shown {
        let Some(kinds) = kinds else {
            return Shown::default();
        };
        let all = kinds.contains(&PropertyKind::All);
        Shown {
            system: all || kinds.contains(&PropertyKind::Sys),
            application: all || kinds.contains(&PropertyKind::App),
            annotations: all || kinds.contains(&PropertyKind::Anno),
        }
    }
}

pub(crate) async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let hub = args.hub.connect().await?;
    let format = args.hub.output;
    let palette = Palette::for_stdout();
    let shown = Shown::from(args.properties.as_deref());
    let device_pattern = args.device.clone();
    // A plain id is filtered by the hub (which then reads one partition); a pattern here.
    let exact_device = device_pattern
        .as_deref()
        .filter(|pattern| !pattern.contains(['*', '?']))
        .map(|id| id.parse::<DeviceId>())
        .transpose()
        .map_err(|error| anyhow!("--device: {error}"))?;
    let start = if args.from_start {
        EventStart::Earliest
    } else {
        match args.enqueued_time.as_deref() {
            None => EventStart::Latest,
            Some(text) => EventStart::EnqueuedTime(enqueued_time(text)?),
        }
    };
    let mut operation = Operation::new(Kind::ReadEvents, "read events");
    if let Some(device) = &exact_device {
        operation = operation.on(device, None);
    }
    let options = EventReadOptions {
        device: exact_device,
        start,
        consumer_group: args.consumer_group.clone(),
        ..EventReadOptions::default()
    };
    let mut events = hub
        .client
        .read_events(options)
        .await
        .or_explain(&hub, &operation)
        .await?;
    if format == OutputFormat::Table && std::io::stderr().is_terminal() {
        eprintln!(
            "Starting event monitor on {}, use ctrl-c to stop...",
            hub.host()
        );
    }

    let mut printer = Printer {
        palette,
        format,
        shown,
        origin_width: 12,
    };
    let mut checkpoints = Checkpoints::new(args.consumer_group.clone());
    let mut printed = 0u64;
    let mut last_error = None;
    let idle = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let outcome: anyhow::Result<()> = loop {
        let next = async {
            match idle {
                Some(idle) => tokio::time::timeout(idle, events.next()).await.ok(),
                None => Some(events.next().await),
            }
        };
        let item = tokio::select! {
            _ = &mut interrupt => break Ok(()),
            () = tokio::time::sleep(CHECKPOINT_INTERVAL), if checkpoints.is_due() => {
                checkpoints.save(&hub).await?;
                continue;
            }
            item = next => item,
        };
        let event = match item {
            // Idle for --timeout seconds.
            None => break Ok(()),
            Some(None) => {
                break Err(match last_error.take() {
                    Some(error) => anyhow!("{error}"),
                    None => anyhow!("the hub ended the event stream"),
                });
            }
            Some(Some(Err(error))) => {
                let message = explain(&hub, &operation, error);
                eprintln!("warning: {message}; retrying");
                last_error = Some(message);
                continue;
            }
            Some(Some(Ok(event))) => event,
        };
        last_error = None;
        checkpoints.processed(&event);
        if !wanted(
            &event,
            device_pattern.as_deref(),
            args.module.as_deref(),
            &args.source,
        ) {
            continue;
        }
        write_stdout(&printer.render(&event))?;
        printed += 1;
        if args.max_messages.is_some_and(|max| printed >= max) {
            break Ok(());
        }
        if checkpoints.is_due() && checkpoints.since_saved() >= CHECKPOINT_INTERVAL {
            checkpoints.save(&hub).await?;
        }
    };
    checkpoints.save(&hub).await?;
    outcome
}

/// `--enqueued-time`: RFC 3339, or milliseconds since the epoch.
fn enqueued_time(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    if let Ok(millis) = text.parse::<i64>() {
        return time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
            .map_err(|_| anyhow!("--enqueued-time {text}: out of range"));
    }
    parse_time(text).map_err(|_| {
        anyhow!("--enqueued-time {text:?}: give an RFC 3339 time (2026-11-27T10:00:00Z) or milliseconds since the epoch")
    })
}

fn wanted(
    event: &EventMessage,
    device: Option<&str>,
    module: Option<&str>,
    kinds: &[Source],
) -> bool {
    let device_ok = device.is_none_or(|pattern| glob(pattern, event.device_id().unwrap_or("")));
    let module_ok = module.is_none_or(|pattern| glob(pattern, event.module_id().unwrap_or("")));
    let source_ok = kinds.is_empty()
        || kinds
            .iter()
            .any(|kind| event.message_source() == Some(kind.message_source()));
    device_ok && module_ok && source_ok
}

/// `*` matches any characters, `?` one character; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Classic two-pointer matching with backtracking to the last `*`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|character| *character == '*')
}

/// The consumer group's progress: the last event printed (or skipped) per partition, saved now and then.
struct Checkpoints {
    group: Option<String>,
    unsaved: BTreeMap<u32, u64>,
    saved_at: Instant,
}

impl Checkpoints {
    fn new(group: Option<String>) -> Checkpoints {
        Checkpoints {
            group,
            unsaved: BTreeMap::new(),
            saved_at: Instant::now(),
        }
    }

    fn processed(&mut self, event: &EventMessage) {
        if self.group.is_some() {
            self.unsaved.insert(event.partition, event.sequence_number);
        }
    }

    fn is_due(&self) -> bool {
        !self.unsaved.is_empty()
    }

    fn since_saved(&self) -> Duration {
        self.saved_at.elapsed()
    }

    async fn save(&mut self, hub: &Hub) -> anyhow::Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        if self.unsaved.is_empty() {
            return Ok(());
        }
        let checkpoints: Vec<Checkpoint> = self
            .unsaved
            .iter()
            .map(|(partition, sequence_number)| Checkpoint {
                partition: *partition,
                sequence_number: *sequence_number,
            })
            .collect();
        let operation = Operation::new(
            Kind::ReadEvents,
            format!("save the checkpoints of consumer group {group}"),
        );
        hub.client
            .save_checkpoints(group, &checkpoints)
            .await
            .or_explain(hub, &operation)
            .await
            .context("checkpoint")?;
        self.unsaved.clear();
        self.saved_at = Instant::now();
        Ok(())
    }
}

struct Printer {
    palette: Palette,
    format: OutputFormat,
    shown: Shown,
    /// Grows to the longest origin seen, so lines stay aligned.
    origin_width: usize,
}

/// System properties an Event Hubs consumer gets as AMQP message properties (`az` shows them under
/// `properties.system`, with these names); the rest of IoT Hub's stamps are annotations.
const AMQP_PROPERTIES: [(&str, &str); 6] = [
    (names::MESSAGE_ID, "message_id"),
    (names::CORRELATION_ID, "correlation_id"),
    (names::USER_ID, "user_id"),
    (names::CONTENT_TYPE, "content_type"),
    (names::CONTENT_ENCODING, "content_encoding"),
    (names::ABSOLUTE_EXPIRY_TIME, "absolute_expiry_time"),
];

impl Printer {
    fn render(&mut self, event: &EventMessage) -> String {
        match self.format {
            OutputFormat::Json => {
                let mut line = serde_json::to_string(&az_event(event, self.shown))
                    .expect("JSON always serialises");
                line.push('\n');
                line
            }
            OutputFormat::Table => self.line(event),
        }
    }

    /// `2026-11-27 10:00:01.123Z  dev1/filter  telemetry   {"temperature":21.5}`
    fn line(&mut self, event: &EventMessage) -> String {
        let palette = self.palette;
        let origin = match (event.device_id(), event.module_id()) {
            (Some(device), Some(module)) => format!("{device}/{module}"),
            (Some(device), None) => device.to_owned(),
            _ => "-".to_owned(),
        };
        self.origin_width = self.origin_width.max(origin.chars().count());
        let operation = event.property("opType").unwrap_or("");
        let (label, style) = match event.message_source() {
            Some(sources::TELEMETRY) => ("telemetry", palette.label),
            Some(sources::TWIN_CHANGE_EVENTS) => ("twin", palette.change),
            Some(sources::DEVICE_LIFECYCLE_EVENTS)
            | Some(sources::DEVICE_CONNECTION_STATE_EVENTS) => {
                let label = if event.message_source() == Some(sources::DEVICE_LIFECYCLE_EVENTS) {
                    "lifecycle"
                } else {
                    "connection"
                };
                let good = matches!(operation, "createDeviceIdentity" | "deviceConnected");
                (label, if good { palette.good } else { palette.bad })
            }
            _ => ("event", palette.muted),
        };
        let summary = match event.message_source() {
            Some(sources::TELEMETRY) => payload_text(event),
            Some(sources::TWIN_CHANGE_EVENTS) => format!("{operation} {}", payload_text(event)),
            _ => operation.to_owned(),
        };
        let time = format_time(event.enqueued_time);
        // `2026-11-27T10:00:01.1234567Z` → `2026-11-27 10:00:01.123Z`.
        let time = match (time.get(..10), time.get(11..23)) {
            (Some(date), Some(clock)) => format!("{date} {clock}Z"),
            _ => time,
        };
        let padding = " ".repeat(self.origin_width - origin.chars().count());
        let label_padding = " ".repeat(10 - label.len());
        let mut text = format!(
            "{}  {origin}{padding}  {}{label_padding}  {summary}",
            paint(palette.muted, &time),
            paint(style, label),
        );
        text = text.trim_end().to_owned();
        text.push('\n');
        let indent = " ".repeat(4);
        let mut section = |name: &str, pairs: Vec<(String, String)>| {
            if pairs.is_empty() {
                return;
            }
            let joined: Vec<String> = pairs
                .iter()
                .map(|(key, value)| format!("{}={value}", paint(palette.label, key)))
                .collect();
            text.push_str(&format!(
                "{indent}{}  {}\n",
                paint(palette.muted, format!("{name:<11}")),
                joined.join("  ")
            ));
        };
        let (system, annotations) = split_system(event);
        if self.shown.system {
            section(
                "system",
                system
                    .into_iter()
                    .map(|(key, value)| (key, text_of(&value)))
                    .collect(),
            );
        }
        if self.shown.application {
            section(
                "application",
                event
                    .properties
                    .iter()
                    .map(|(key, value)| (key.clone(), text_of(value)))
                    .collect(),
            );
        }
        if self.shown.annotations {
            section(
                "annotations",
                annotations
                    .into_iter()
                    .map(|(key, value)| (key, text_of(&value)))
                    .collect(),
            );
        }
        text
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "(no value)".to_owned(),
        other => other.to_string(),
    }
}

/// The body as `az` shows it: parsed JSON when the content type says JSON (and it parses), else text; base64
/// bodies as `<N bytes>` in tables.
fn payload(event: &EventMessage) -> Value {
    let is_json = event
        .system_property(names::CONTENT_TYPE)
        .is_some_and(|content_type| {
            content_type
                .to_ascii_lowercase()
                .contains("application/json")
        });
    if is_json && let Ok(value) = serde_json::from_str::<Value>(&event.body) {
        return value;
    }
    Value::String(event.body.clone())
}

fn payload_text(event: &EventMessage) -> String {
    if event.body_encoding != fleethub_service::protocol::events::BodyEncoding::Utf8 {
        let bytes = event.body_bytes().map_or(0, |bytes| bytes.len());
        return format!("<{bytes} bytes>");
    }
    match payload(event) {
        Value::String(text) => text,
        value => value.to_string(),
    }
}

/// `properties.system` (AMQP property names) and `annotations` (IoT Hub's stamps and the log position), as
/// `az` splits them.
fn split_system(event: &EventMessage) -> (Map<String, Value>, Map<String, Value>) {
    let mut system = Map::new();
    let mut annotations = Map::new();
    for (key, value) in &event.system_properties {
        match AMQP_PROPERTIES.iter().find(|(name, _)| name == key) {
            Some((_, amqp)) => {
                system.insert((*amqp).to_owned(), value.clone());
            }
            None if key == names::ENQUEUED_TIME => {
                annotations.insert(key.clone(), json!(millis(event.enqueued_time)));
            }
            None => {
                annotations.insert(key.clone(), value.clone());
            }
        }
    }
    annotations.insert(
        "x-opt-sequence-number".to_owned(),
        json!(event.sequence_number),
    );
    annotations.insert("x-opt-offset".to_owned(), json!(event.offset));
    annotations.insert(
        "x-opt-enqueued-time".to_owned(),
        json!(millis(event.enqueued_time)),
    );
    (system, annotations)
}

fn millis(time: time::OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `{"event": {...}}` in `az iot hub monitor-events`' shape.
fn az_event(event: &EventMessage, shown: Shown) -> Value {
    let mut body = Map::new();
    body.insert("origin".into(), json!(event.device_id().unwrap_or("")));
    body.insert("module".into(), json!(event.module_id().unwrap_or("")));
    body.insert("interface".into(), json!(""));
    body.insert(
        "component".into(),
        json!(event.system_property(names::DT_SUBJECT).unwrap_or("")),
    );
    let (system, annotations) = split_system(event);
    if shown.system || shown.application {
        let mut properties = Map::new();
        if shown.system {
            properties.insert("system".into(), Value::Object(system));
        }
        if shown.application {
            properties.insert(
                "application".into(),
                Value::Object(event.properties.clone()),
            );
        }
        body.insert("properties".into(), Value::Object(properties));
    }
    if shown.annotations {
        body.insert("annotations".into(), Value::Object(annotations));
    }
    body.insert("payload".into(), payload(event));
    json!({ "event": body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn telemetry() -> EventMessage {
        EventMessage::new(
            2,
            41,
            datetime!(2026-11-27 10:00:01.1234567 UTC),
            &[
                ("message-id".into(), "mid-1".into()),
                ("content-type".into(), "application/json".into()),
                ("content-encoding".into(), "utf-8".into()),
                ("iothub-connection-device-id".into(), "dev1".into()),
                ("iothub-connection-module-id".into(), "filter".into()),
                ("iothub-message-source".into(), "Telemetry".into()),
            ],
            &[("alert".into(), Some("high".into()))],
            br#"{"t": 21.5}"#,
        )
    }

    #[test]
    fn json_output_has_the_shape_of_az_monitor_events() {
        let all = Shown::from(Some(&[PropertyKind::All]));
        let event = az_event(&telemetry(), all);
        assert_eq!(
            event,
            json!({"event": {
                "origin": "dev1",
                "module": "filter",
                "interface": "",
                "component": "",
                "properties": {
                    "system": {"message_id": "mid-1", "content_type": "application/json", "content_encoding": "utf-8"},
                    "application": {"alert": "high"}
                },
                "annotations": {
                    "iothub-connection-device-id": "dev1",
                    "iothub-connection-module-id": "filter",
                    "iothub-message-source": "Telemetry",
                    "iothub-enqueuedtime": 1_795_773_601_123i64,
                    "x-opt-sequence-number": 41,
                    "x-opt-offset": "41",
                    "x-opt-enqueued-time": 1_795_773_601_123i64
                },
                "payload": {"t": 21.5}
            }})
        );
        let bare = az_event(&telemetry(), Shown::default());
        assert_eq!(bare["event"].as_object().unwrap().len(), 5, "{bare}");
    }

    #[test]
    fn lines_align_and_properties_follow_when_asked() {
        let mut printer = Printer {
            palette: Palette::new(false),
            format: OutputFormat::Table,
            shown: Shown::from(Some(&[PropertyKind::App])),
            origin_width: 12,
        };
        assert_eq!(
            printer.render(&telemetry()),
            "2026-11-27 10:00:01.123Z  dev1/filter   telemetry   {\"t\":21.5}\n    application  alert=high\n"
        );
    }

    #[test]
    fn globs_match_like_az() {
        assert!(glob("dev*", "dev1"));
        assert!(glob("*", ""));
        assert!(glob("d?v1", "dev1"));
        assert!(glob("*-1", "thermostat-1"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("dev?", "dev12"));
        assert!(!glob("dev1", "dev2"));
    }
}
