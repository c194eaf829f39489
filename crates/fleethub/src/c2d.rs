//! `fleethub c2d`: cloud-to-device messages. `send` queues one for a device (with properties, a time to live
//! and the feedback to ask for), `purge` empties a device's queue, `feedback` reads the feedback records of
//! delivered, expired, rejected and purged messages (once, or following them with `--watch`).

use std::io::{IsTerminal as _, Read as _};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use fleethub_service::protocol::c2d::{
    DeliveryAcknowledgement, FeedbackRecord, SendC2dRequest, SendC2dResponse,
};
use fleethub_service::protocol::ids::DeviceId;
use fleethub_service::protocol::rest::{PurgeMessageQueueResult, format_time};
use std::collections::BTreeMap;

use crate::failure::{ExplainResult as _, Kind, Operation, explain};
use crate::hub::{HUB_HELP, Hub, HubArgs};
use crate::output::{Cell, OutputFormat, Palette, Table, compact, print_json, write_stdout};

/// How often `feedback --watch` asks the hub while there is none.
const FEEDBACK_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct C2dCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: C2dAction,
}

#[derive(clap::Subcommand)]
enum C2dAction {
    /// Queue a message for a device; it is delivered when the device is subscribed (at once if it is)
    ///
    /// Prints the message id, its sequence number in the queue and when it expires. The hub keeps at most 50
    /// messages per device and 64 KB per message (body and properties).
    Send {
        /// The device's id
        device_id: DeviceId,
        /// The message body: text, @FILE (its bytes) or - (stdin)
        body: String,
        /// An application property, NAME=VALUE (NAME alone: a property without a value); repeat for more
        #[arg(long = "property", short = 'p', value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// Seconds the message may wait for the device before it expires (at most 172800, two days);
        /// the hub's default is one hour
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u64>,
        /// Which outcomes produce a feedback record (read them with `fleethub c2d feedback`)
        #[arg(long, value_enum, default_value_t = Ack::None)]
        ack: Ack,
        /// The message id (feedback records name the message by it); a UUID when left out
        #[arg(long, value_name = "ID")]
        message_id: Option<String>,
        /// The correlation id
        #[arg(long, value_name = "ID")]
        correlation_id: Option<String>,
        /// The content type, e.g. application/json
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        /// The content encoding, e.g. utf-8
        #[arg(long, value_name = "ENCODING")]
        content_encoding: Option<String>,
    },
    /// Remove every message waiting in a device's queue
    Purge {
        /// The device's id
        device_id: DeviceId,
    },
    /// Print feedback records: which messages were delivered, expired, rejected or purged
    ///
    /// Reads the records waiting now (one batch, at most 64) and marks them read. With --watch, follows
    /// new records as they come until interrupted.
    Feedback {
        /// Follow new records (Ctrl-C to stop)
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Ack {
    /// No feedback
    None,
    /// Feedback when the device completes the message
    Positive,
    /// Feedback when the message expires, is rejected or purged
    Negative,
    /// Both
    Full,
}

impl From<Ack> for DeliveryAcknowledgement {
    fn from(ack: Ack) -> Self {
        match ack {
            Ack::None => DeliveryAcknowledgement::None,
            Ack::Positive => DeliveryAcknowledgement::Positive,
            Ack::Negative => DeliveryAcknowledgement::Negative,
            Ack::Full => DeliveryAcknowledgement::Full,
        }
    }
}

pub(crate) async fn run(command: C2dCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    match command.action {
        C2dAction::Send {
            device_id,
            body,
            properties,
            ttl,
            ack,
            message_id,
            correlation_id,
            content_type,
            content_encoding,
        } => {
            let request = SendC2dRequest {
                message_id,
                correlation_id,
                content_type,
                content_encoding,
                ack: (ack != Ack::None).then(|| ack.into()),
                ttl_seconds: ttl,
                properties: parse_properties(&properties)?,
                ..read_body(&body)?
            };
            let operation = Operation::new(
                Kind::CloudToDevice,
                format!("send a message to device {device_id}"),
            )
            .on(&device_id, None);
            let sent = hub
                .client
                .send_c2d(&device_id, &request)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&sent),
                OutputFormat::Table => sent_table(&palette, &device_id, &sent).print(&palette),
            }
        }
        C2dAction::Purge { device_id } => {
            let operation = Operation::new(
                Kind::CloudToDevice,
                format!("purge the message queue of device {device_id}"),
            )
            .on(&device_id, None);
            let purged = hub
                .client
                .purge_c2d(&device_id)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&purged),
                OutputFormat::Table => write_stdout(&purged_text(&purged)),
            }
        }
        C2dAction::Feedback { watch: false } => feedback_once(&hub, format, &palette).await,
        C2dAction::Feedback { watch: true } => feedback_watch(&hub, format, &palette).await,
    }
}

/// The request with its body: the argument's text, or the bytes of a file or stdin (as `bodyBase64` when they
/// are not UTF-8).
fn read_body(argument: &str) -> anyhow::Result<SendC2dRequest> {
    let bytes = if argument == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("read the body from stdin")?;
        bytes
    } else if let Some(path) = argument.strip_prefix('@') {
        std::fs::read(path).map_err(|error| anyhow!("cannot read the body from {path}: {error}"))?
    } else {
        argument.as_bytes().to_vec()
    };
    Ok(SendC2dRequest::with_payload(bytes))
}

/// `NAME=VALUE` (split at the first `=`) or `NAME` (no value). The hub checks the characters.
fn parse_properties(arguments: &[String]) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let mut properties = BTreeMap::new();
    for argument in arguments {
        let (name, value) = match argument.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (argument.as_str(), None),
        };
        if name.is_empty() {
            return Err(anyhow!(
                "--property {argument:?}: the name is empty; write NAME=VALUE"
            ));
        }
        if properties.insert(name.to_owned(), value).is_some() {
            return Err(anyhow!("--property {name} is given twice"));
        }
    }
    Ok(properties)
}

fn sent_table(palette: &Palette, device_id: &DeviceId, sent: &SendC2dResponse) -> Table {
    let mut table = Table::unheaded();
    let rows = [
        ("device", device_id.to_string()),
        ("message id", sent.message_id.clone()),
        ("sequence", sent.sequence_number.to_string()),
        ("enqueued", format_time(sent.enqueued_time_utc)),
        ("expires", format_time(sent.expiry_time_utc)),
    ];
    for (label, value) in rows {
        table.row(vec![Cell::styled(label, palette.label), value.into()]);
    }
    table
}

fn purged_text(purged: &PurgeMessageQueueResult) -> String {
    let count = purged.total_messages_purged;
    let noun = if count == 1 { "message" } else { "messages" };
    format!(
        "purged {count} {noun} from the queue of device {}\n",
        purged.device_id
    )
}

fn feedback_operation(action: &str) -> Operation {
    Operation::new(Kind::CloudToDevice, action)
}

async fn feedback_once(hub: &Hub, format: OutputFormat, palette: &Palette) -> anyhow::Result<()> {
    let operation = feedback_operation("read feedback");
    let batch = hub
        .client
        .receive_feedback()
        .await
        .or_explain(hub, &operation)
        .await?;
    let records = match &batch {
        Some(batch) => batch.records.clone(),
        None => Vec::new(),
    };
    match format {
        OutputFormat::Json => print_json(&records)?,
        OutputFormat::Table if records.is_empty() => {
            if std::io::stderr().is_terminal() {
                eprintln!("no feedback waiting");
            }
        }
        OutputFormat::Table => feedback_table(palette, &records).print(palette)?,
    }
    // Printed: the batch is read.
    if let Some(batch) = batch {
        hub.client
            .complete_feedback(&batch.lock_token)
            .await
            .or_explain(hub, &feedback_operation("mark feedback read"))
            .await?;
    }
    Ok(())
}

async fn feedback_watch(hub: &Hub, format: OutputFormat, palette: &Palette) -> anyhow::Result<()> {
    if format == OutputFormat::Table && std::io::stderr().is_terminal() {
        eprintln!("watching feedback on {} (Ctrl-C to stop)", hub.host());
    }
    let mut stream = hub.client.feedback_stream(FEEDBACK_POLL_INTERVAL);
    let operation = feedback_operation("read feedback");
    let mut header_printed = false;
    loop {
        let record = tokio::select! {
            record = stream.next() => record.map_err(|error| explain(hub, &operation, error))?,
            interrupt = tokio::signal::ctrl_c() => {
                interrupt.context("wait for Ctrl-C")?;
                return Ok(());
            }
        };
        match format {
            OutputFormat::Json => {
                let value = serde_json::to_value(&record).context("encode the record as json")?;
                write_stdout(&format!("{}\n", compact(&value)))?;
            }
            OutputFormat::Table => {
                // One line per record, aligned like the table of `feedback` without --watch.
                let rendered =
                    feedback_table(palette, std::slice::from_ref(&record)).render(palette);
                let mut lines = rendered.lines();
                let header = lines.next().unwrap_or_default();
                if !header_printed {
                    write_stdout(&format!("{header}\n"))?;
                    header_printed = true;
                }
                for line in lines {
                    write_stdout(&format!("{line}\n"))?;
                }
            }
        }
    }
}

fn feedback_table(palette: &Palette, records: &[FeedbackRecord]) -> Table {
    let mut table = Table::new(&["TIME", "DEVICE", "MESSAGE ID", "STATUS"]);
    for record in records {
        let style = match record.status_code.as_str() {
            "Success" => palette.good,
            _ => palette.bad,
        };
        table.row(vec![
            format_time(record.enqueued_time_utc).into(),
            record.device_id.to_string().into(),
            record.original_message_id.clone().into(),
            Cell::styled(record.status_code.as_str(), style),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_split_at_the_first_equals_sign_and_bare_names_have_no_value() {
        let parsed = parse_properties(&[
            "priority=high".to_owned(),
            "expr=a=b".to_owned(),
            "flag".to_owned(),
            "empty=".to_owned(),
        ])
        .expect("valid");
        assert_eq!(
            parsed,
            BTreeMap::from([
                ("priority".to_owned(), Some("high".to_owned())),
                ("expr".to_owned(), Some("a=b".to_owned())),
                ("flag".to_owned(), None),
                ("empty".to_owned(), Some(String::new())),
            ])
        );
        assert!(
            parse_properties(&["=x".to_owned()])
                .unwrap_err()
                .to_string()
                .contains("name is empty")
        );
        assert!(
            parse_properties(&["a=1".to_owned(), "a=2".to_owned()])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn text_bodies_go_as_text() {
        let request = read_body("{\"led\":\"on\"}").expect("inline");
        assert_eq!(request.body.as_deref(), Some("{\"led\":\"on\"}"));
        assert_eq!(request.body_base64, None);
    }

    #[test]
    fn binary_files_go_as_base64() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("body.bin");
        std::fs::write(&path, [0u8, 159, 146, 150]).expect("write");
        let request = read_body(&format!("@{}", path.display())).expect("file");
        assert_eq!(request.body, None);
        assert_eq!(request.body_base64.as_deref(), Some("AJ+Slg=="));
        assert!(
            read_body("@/nonexistent/body")
                .unwrap_err()
                .to_string()
                .contains("cannot read the body")
        );
    }

    #[test]
    fn purge_results_read_as_a_sentence() {
        let result = PurgeMessageQueueResult {
            total_messages_purged: 1,
            device_id: "dev1".parse().expect("valid"),
            module_id: None,
        };
        assert_eq!(
            purged_text(&result),
            "purged 1 message from the queue of device dev1\n"
        );
    }
}
