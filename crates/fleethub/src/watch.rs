//! `fleethub twin watch`: follows the hub's change feed (the service SDK's `watch_changes`) and prints
//! each change as it happens, one line each.

use std::io::IsTerminal as _;

use anyhow::anyhow;
use fleethub_service::WatchOptions;
use fleethub_service::protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_service::protocol::ids::DeviceId;
use fleethub_service::protocol::rest::format_time;
use serde_json::{Map, Value};

use crate::failure::{ExplainResult as _, Kind, Operation, explain};
use crate::hub::Hub;
use crate::output::{OutputFormat, Palette, compact, human_time, write_stdout};

#[derive(clap::Args)]
pub(crate) struct WatchArgs {
    /// Only this device's changes (its modules' included); all devices when left out
    device_id: Option<DeviceId>,
    /// Replay the changes after this sequence number (the #N of each line) before following new ones;
    /// by default only changes from now on. Resume an interrupted watch with the last number it printed.
    #[arg(long, value_name = "SEQUENCE")]
    after: Option<u64>,
}

/// A summary longer than this is cut (the JSON output always has everything).
const SUMMARY_LIMIT: usize = 160;

pub(crate) async fn run(
    hub: &Hub,
    format: OutputFormat,
    palette: &Palette,
    args: WatchArgs,
) -> anyhow::Result<()> {
    let mut operation = Operation::new(Kind::WatchChanges, "watch changes");
    if let Some(device_id) = &args.device_id {
        operation = operation.on(device_id, None);
    }
    let options = WatchOptions {
        after: args.after,
        device: args.device_id.clone(),
        ..WatchOptions::default()
    };
    let mut changes = hub
        .client
        .watch_changes(options)
        .await
        .or_explain(hub, &operation)
        .await?;
    if format == OutputFormat::Table && std::io::stderr().is_terminal() {
        let whose = match &args.device_id {
            Some(device_id) => format!("device {device_id}"),
            None => "all devices".to_owned(),
        };
        eprintln!(
            "watching changes of {whose} on {} (Ctrl-C to stop)",
            hub.host()
        );
    }
    let mut last_sequence = args.after;
    let mut last_error = None;
    while let Some(item) = changes.next().await {
        match item {
            Ok(record) => {
                last_error = None;
                last_sequence = Some(record.sequence);
                let line = match format {
                    OutputFormat::Json => {
                        let mut text = serde_json::to_string(&record)
                            .expect("a change record always serialises");
                        text.push('\n');
                        text
                    }
                    OutputFormat::Table => change_line(palette, &record),
                };
                write_stdout(&line)?;
            }
            // The stream keeps trying after a lost connection and ends only after an error it cannot get past;
            // say what happened meanwhile, and keep the error in case it is the last word.
            Err(error) => {
                let message = explain(hub, &operation, error);
                eprintln!("warning: {message}; retrying");
                last_error = Some(message);
            }
        }
    }
    let resume = match last_sequence {
        Some(sequence) => format!("; resume with `fleethub twin watch --after {sequence}`"),
        None => String::new(),
    };
    Err(match last_error {
        Some(error) => anyhow!("{error}{resume}"),
        None => anyhow!("the hub ended the change stream{resume}"),
    })
}

/// `2026-11-26 05:00:01Z      #12  dev1              updateTwin            desired.fw="2.0" (twin v3)`
fn change_line(palette: &Palette, record: &ChangeRecord) -> String {
    let who = match (&record.device_id, &record.module_id, &record.job_id) {
        (Some(device_id), Some(module_id), _) => format!("{device_id}/{module_id}"),
        (Some(device_id), None, _) => device_id.to_string(),
        (None, _, Some(job_id)) => format!("job {job_id}"),
        (None, _, None) => match &record.rollout_id {
            Some(rollout_id) => format!("rollout {rollout_id}"),
            None => "-".to_owned(),
        },
    };
    let operation_style = match record.operation {
        ChangeOperation::CreateDeviceIdentity | ChangeOperation::DeviceConnected => palette.good,
        ChangeOperation::DeleteDeviceIdentity | ChangeOperation::DeviceDisconnected => palette.bad,
        ChangeOperation::UpdateDeviceIdentity
        | ChangeOperation::UpdateTwin
        | ChangeOperation::ReplaceTwin => palette.change,
        ChangeOperation::DeviceJobUpdated
        | ChangeOperation::JobUpdated
        | ChangeOperation::DeviceRolloutUpdated
        | ChangeOperation::RolloutUpdated => palette.muted,
    };
    let time = human_time(Some(&format_time(record.time)));
    let mut summary = match record.operation {
        ChangeOperation::DeviceJobUpdated | ChangeOperation::JobUpdated => job_summary(record),
        ChangeOperation::DeviceRolloutUpdated | ChangeOperation::RolloutUpdated => {
            rollout_summary(record)
        }
        _ => summarize(&record.body),
    };
    if let Some(version) = record.twin_version {
        if !summary.is_empty() {
            summary.push(' ');
        }
        summary.push_str(&format!("(twin v{version})"));
    }
    let operation = record.operation.as_str();
    // Styles wrap the words only, so the padding stays plain and columns line up with colour on or off.
    let padding = " ".repeat(20usize.saturating_sub(operation.len()));
    let line = format!(
        "{}{time}{}  {:>6}  {who:<16}  {}{operation}{}{padding}  {summary}",
        palette.muted.render(),
        palette.muted.render_reset(),
        format!("#{}", record.sequence),
        operation_style.render(),
        operation_style.render_reset(),
    );
    format!("{}\n", line.trim_end())
}

/// A job record: `job reboot-1: completed (200)` for a device, `running, 2/5 finished` for the job.
fn job_summary(record: &ChangeRecord) -> String {
    let body = &record.body;
    let status = body["status"].as_str().unwrap_or("?");
    match record.operation {
        ChangeOperation::DeviceJobUpdated => {
            let job = record.job_id.as_ref().map_or("?", |job_id| job_id.as_str());
            let detail = match (
                body["error"]["code"].as_str(),
                body["outcome"]["deviceMethodResponse"]["status"].as_i64(),
            ) {
                (Some(code), _) => format!(" ({code})"),
                (None, Some(status)) => format!(" ({status})"),
                (None, None) => String::new(),
            };
            format!("job {job}: {status}{detail}")
        }
        _ => {
            let statistics = &body["deviceJobStatistics"];
            let count = |name: &str| statistics[name].as_u64().unwrap_or(0);
            let finished =
                count("deviceCount").saturating_sub(count("pendingCount") + count("runningCount"));
            format!("{status}, {finished}/{} finished", count("deviceCount"))
        }
    }
}

/// A rollout record: `rollout fw-2 wave 2: failed (healthCheckFailed)` for a device, `running, wave 2,
/// 6/50 succeeded` for the rollout.
fn rollout_summary(record: &ChangeRecord) -> String {
    let body = &record.body;
    let status = body["status"].as_str().unwrap_or("?");
    match record.operation {
        ChangeOperation::DeviceRolloutUpdated => {
            let rollout = record
                .rollout_id
                .as_ref()
                .map_or("?", |rollout_id| rollout_id.as_str());
            let place = match body["phase"].as_str() {
                Some("rollback") => "rollback".to_owned(),
                _ => format!("wave {}", body["wave"].as_u64().unwrap_or(0)),
            };
            let detail = body["error"]["code"]
                .as_str()
                .map(|code| format!(" ({code})"))
                .unwrap_or_default();
            format!("rollout {rollout} {place}: {status}{detail}")
        }
        _ => {
            let statistics = &body["statistics"];
            let count = |name: &str| statistics[name].as_u64().unwrap_or(0);
            format!(
                "{status}, wave {}, {}/{} succeeded",
                body["currentWave"].as_u64().unwrap_or(0),
                count("succeeded"),
                count("deviceCount")
            )
        }
    }
}

/// What changed, compactly: `tags.site="lab", desired.fw="2.0"`, from a twin change body
/// (`{"version", "tags", "properties": {"desired", "reported"}}`); `$`-keys (`$version`) left out.
fn summarize(body: &Value) -> String {
    let Some(object) = body.as_object() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (key, value) in object {
        match (key.as_str(), value) {
            ("version", _) => {}
            ("properties", Value::Object(properties)) => {
                for (section, value) in properties {
                    match value {
                        Value::Object(inner) => leaves(section, inner, &mut parts),
                        other => parts.push(format!("{section}={}", compact(other))),
                    }
                }
            }
            (key, Value::Object(inner)) => leaves(key, inner, &mut parts),
            (key, other) => parts.push(format!("{key}={}", compact(other))),
        }
    }
    let text = parts.join(", ");
    if text.chars().count() > SUMMARY_LIMIT {
        let cut: String = text.chars().take(SUMMARY_LIMIT).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn leaves(prefix: &str, object: &Map<String, Value>, parts: &mut Vec<String>) {
    if object.keys().all(|key| key.starts_with('$')) {
        parts.push(format!("{prefix}={{}}"));
        return;
    }
    for (key, value) in object {
        if key.starts_with('$') {
            continue;
        }
        let path = format!("{prefix}.{key}");
        match value {
            Value::Object(inner) if !inner.is_empty() => leaves(&path, inner, parts),
            other => parts.push(format!("{path}={}", compact(other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> ChangeRecord {
        serde_json::from_value(value).expect("a valid change record")
    }

    /// body -> summary.
    #[test]
    fn twin_changes_are_summarised_as_paths() {
        let cases = [
            (
                json!({"version": 3, "properties": {"desired": {"fw": "2.0", "$version": 2}}}),
                "desired.fw=\"2.0\"",
            ),
            (
                json!({"version": 4, "tags": {"site": {"room": "lab"}, "n": 1}}),
                "tags.site.room=\"lab\", tags.n=1",
            ),
            (
                json!({"properties": {"reported": {"status": null, "$version": 5}}}),
                "reported.status=null",
            ),
            (json!({"version": 2, "tags": {}}), "tags={}"),
            (json!({}), ""),
            (json!(null), ""),
        ];
        for (body, expected) in cases {
            assert_eq!(summarize(&body), expected, "{body}");
        }
        let long = json!({"tags": {"text": "x".repeat(400)}});
        let summary = summarize(&long);
        assert_eq!(summary.chars().count(), SUMMARY_LIMIT + 1);
        assert!(summary.ends_with('…'));
    }

    #[test]
    fn change_lines_have_time_sequence_identity_operation_and_change() {
        let palette = Palette::new(false);
        let line = change_line(
            &palette,
            &record(json!({
                "sequence": 12,
                "time": "2026-11-26T05:00:01.5Z",
                "deviceId": "dev1",
                "operation": "updateTwin",
                "twinVersion": 3,
                "body": {"version": 3, "properties": {"desired": {"fw": "2.0", "$version": 2}}}
            })),
        );
        assert_eq!(
            line,
            "2026-11-26 05:00:01Z     #12  dev1              updateTwin            desired.fw=\"2.0\" (twin v3)\n"
        );
        let line = change_line(
            &palette,
            &record(json!({
                "sequence": 13,
                "time": "2026-11-26T05:00:02Z",
                "deviceId": "dev1",
                "moduleId": "m1",
                "operation": "deviceConnected",
                "twinVersion": null,
                "body": {}
            })),
        );
        assert_eq!(
            line,
            "2026-11-26 05:00:02Z     #13  dev1/m1           deviceConnected\n"
        );
        let line = change_line(
            &palette,
            &record(json!({
                "sequence": 14,
                "time": "2026-11-26T05:00:03Z",
                "deviceId": "dev1",
                "jobId": "reboot",
                "operation": "deviceJobUpdated",
                "twinVersion": null,
                "body": {"status": "completed", "outcome": {"deviceMethodResponse": {"status": 200, "payload": null}}}
            })),
        );
        assert_eq!(
            line,
            "2026-11-26 05:00:03Z     #14  dev1              deviceJobUpdated      job reboot: completed (200)\n"
        );
        let line = change_line(
            &palette,
            &record(json!({
                "sequence": 15,
                "time": "2026-11-26T05:00:04Z",
                "jobId": "reboot",
                "operation": "jobUpdated",
                "twinVersion": null,
                "body": {"status": "completed", "deviceJobStatistics": {"deviceCount": 2, "pendingCount": 0, "runningCount": 0}}
            })),
        );
        assert_eq!(
            line,
            "2026-11-26 05:00:04Z     #15  job reboot        jobUpdated            completed, 2/2 finished\n"
        );
    }
}
