//! `fleethub firmware update DEVICE --version V [--watch]`: the reference workflow's service app, native.
//! Grants the device the artifact (a signed URL), invokes `firmwareUpdate` with
//! `{"fwPackageUri", "version", "manifest"}`, and with `--watch` shows each state the device reports as it
//! arrives, from the change feed (pushed, never polled), until the update completes, fails or rolls back.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{anyhow, bail};
use fleethub_service::WatchOptions;
use fleethub_service::protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_service::protocol::ids::DeviceId;
use fleethub_service::protocol::rest::CloudToDeviceMethod;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::failure::{ExplainResult as _, Kind, MethodCall, Operation};
use crate::hub::Hub;
use crate::output::{OutputFormat, Palette, compact, paint, write_stdout};

/// The direct method the agent implements (and the reference device app simulates).
pub(crate) const METHOD: &str = "firmwareUpdate";
/// The device answers at once; the update itself runs after the answer.
const METHOD_RESPONSE_TIMEOUT: u64 = 60;
const METHOD_CONNECT_TIMEOUT: u64 = 10;

/// What to update and how.
pub(crate) struct UpdateRequest {
    pub(crate) device: DeviceId,
    pub(crate) model: Option<String>,
    pub(crate) version: String,
    pub(crate) grant_for: Duration,
    pub(crate) watch: bool,
    pub(crate) timeout: Duration,
}

/// `firmwareStatus` values that end an update.
fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "rolledBack")
}

pub(crate) async fn run(
    hub: &Hub,
    format: OutputFormat,
    palette: &Palette,
    request: UpdateRequest,
) -> anyhow::Result<()> {
    let device = &request.device;
    let read_twin = Operation::new(Kind::ReadTwin, format!("read the twin of device {device}"))
        .on(device, None);
    let twin = hub
        .client
        .get_twin(device)
        .await
        .or_explain(hub, &read_twin)
        .await?;
    let reported = twin
        .properties
        .as_ref()
        .map(|properties| Value::Object(properties.reported.clone()))
        .unwrap_or_else(|| json!({}));
    let model = match (&request.model, reported["firmware"]["model"].as_str()) {
        (Some(model), _) => model.clone(),
        (None, Some(model)) => model.to_owned(),
        (None, None) => bail!(
            "device {device} has not reported properties.reported.firmware.model (is fleethub-agent running \
             on it?); name the model with --model"
        ),
    };
    let version = &request.version;
    let artifact_operation = Operation::new(
        Kind::ReadFirmware,
        format!("read firmware {model} {version}"),
    )
    .on_artifact(&model, version);
    let artifact = hub
        .client
        .get_artifact(&model, version)
        .await
        .or_explain(hub, &artifact_operation)
        .await?;

    // Open the watch before the call, so no report the device sends after answering is missed.
    let mut changes = if request.watch {
        let operation = Operation::new(
            Kind::WatchChanges,
            format!("watch the firmware update of device {device}"),
        )
        .on(device, None);
        let options = WatchOptions {
            device: Some(device.clone()),
            ..WatchOptions::default()
        };
        Some(
            hub.client
                .watch_changes(options)
                .await
                .or_explain(hub, &operation)
                .await?,
        )
    } else {
        None
    };

    let grant_operation = Operation::new(
        Kind::GrantFirmware,
        format!("grant firmware {model} {version} to device {device}"),
    )
    .on_artifact(&model, version)
    .on(device, None);
    let grant = hub
        .client
        .create_grant(&model, version, device, request.grant_for)
        .await
        .or_explain(hub, &grant_operation)
        .await?;

    let mut payload = json!({"fwPackageUri": grant.url, "version": version});
    if let Some(manifest) = &artifact.manifest {
        payload["manifest"] = Value::String(manifest.clone());
    }
    let call = CloudToDeviceMethod {
        method_name: METHOD.to_owned(),
        payload,
        response_timeout_in_seconds: Some(METHOD_RESPONSE_TIMEOUT),
        connect_timeout_in_seconds: Some(METHOD_CONNECT_TIMEOUT),
    };
    let invoke = Operation::new(
        Kind::InvokeMethod,
        format!("invoke {METHOD} on device {device}"),
    )
    .on(device, None)
    .with_method(MethodCall {
        name: METHOD.to_owned(),
        response_timeout: METHOD_RESPONSE_TIMEOUT,
        connect_timeout: Some(METHOD_CONNECT_TIMEOUT),
    });
    let answer = hub
        .client
        .invoke_method(device, &call)
        .await
        .or_explain(hub, &invoke)
        .await?;
    if !(200..300).contains(&answer.status) {
        bail!(
            "device {device} refused the update with status {}: {}",
            answer.status,
            answer
                .payload
                .get("Response")
                .and_then(Value::as_str)
                .map_or_else(|| compact(&answer.payload), str::to_owned)
        );
    }
    let started = json!({
        "event": "started",
        "deviceId": device,
        "model": model,
        "version": version,
        "methodStatus": answer.status,
        "methodPayload": answer.payload,
    });
    match format {
        OutputFormat::Json => write_stdout(&format!("{started}\n"))?,
        OutputFormat::Table => write_stdout(&format!(
            "{} firmware {model} {version} on device {device}: {}\n",
            paint(palette.good, "started"),
            answer
                .payload
                .get("Response")
                .and_then(Value::as_str)
                .map_or_else(|| compact(&answer.payload), str::to_owned)
        ))?,
    }
    let Some(changes) = changes.as_mut() else {
        return Ok(());
    };

    let mut view = Follower::new(reported, version.clone());
    let bar = (format == OutputFormat::Table && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(100);
        bar.set_style(
            ProgressStyle::with_template("{spinner} downloading [{bar:30}] {pos:>3}%")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let deadline = tokio::time::Instant::now() + request.timeout;
    let outcome = loop {
        let next = tokio::time::timeout_at(deadline, changes.next()).await;
        let record = match next {
            Err(_) => {
                break Err(anyhow!(
                    "device {device} did not finish the update within {} s (last status: {}); it may still be \
                 working: watch it with `fleethub twin watch {device}`",
                    request.timeout.as_secs(),
                    view.status().unwrap_or("none")
                ));
            }
            Ok(None) => break Err(anyhow!("the change feed ended before the update finished")),
            Ok(Some(Err(error))) => {
                // The stream resumes by itself after a lost connection; say so and go on.
                if let Some(bar) = &bar {
                    bar.println(format!("change feed: {error}; resuming"));
                } else {
                    eprintln!("change feed: {error}; resuming");
                }
                continue;
            }
            Ok(Some(Ok(record))) => record,
        };
        let Some(step) = view.apply(&record) else {
            continue;
        };
        if let (Some(bar), Some(progress)) = (&bar, step.progress) {
            bar.set_position(u64::from(progress));
        }
        if step.status_changed || (bar.is_none() && step.progress_changed) {
            let line = match format {
                OutputFormat::Json => format!("{}\n", step.json(device)),
                OutputFormat::Table => format!("{}\n", step.line(palette)),
            };
            match &bar {
                Some(bar) => bar.println(line.trim_end()),
                None => write_stdout(&line)?,
            }
        }
        if step.finished {
            break Ok(step);
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let step = outcome?;
    match step.status.as_str() {
        "completed" => Ok(()),
        other => Err(anyhow!(
            "the update of device {device} to {version} ended {other}{}",
            step.error
                .as_ref()
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        )),
    }
}

/// The device's reported firmware properties, kept up to date from the change feed's twin patches.
struct Follower {
    reported: Value,
    version: String,
    last_status: Option<String>,
    last_progress: Option<u8>,
    /// The device has taken up this update (reported it as its target, or moved past standBy since the call).
    engaged: bool,
}

/// One observed change of the update.
struct Step {
    time: OffsetDateTime,
    status: String,
    progress: Option<u8>,
    status_changed: bool,
    progress_changed: bool,
    finished: bool,
    error: Option<String>,
    firmware: Value,
}

impl Step {
    fn line(&self, palette: &Palette) -> String {
        let time = self
            .time
            .format(&time::macros::format_description!(
                "[hour]:[minute]:[second]"
            ))
            .unwrap_or_default();
        let style = match self.status.as_str() {
            "completed" => palette.good,
            "failed" | "rolledBack" => palette.bad,
            _ => palette.change,
        };
        let mut line = format!("{time}  {}", paint(style, format!("{:<12}", self.status)));
        if self.status == "downloading"
            && let Some(progress) = self.progress
        {
            line.push_str(&format!(" {progress:>3}%"));
        }
        if let Some(version) = self.firmware["currentVersion"].as_str() {
            line.push_str(&format!("  running {version}"));
        }
        if let Some(error) = &self.error {
            line.push_str(&format!("  {error}"));
        }
        line
    }

    fn json(&self, device: &DeviceId) -> Value {
        json!({
            "event": "status",
            "deviceId": device,
            "time": self.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "firmwareStatus": self.status,
            "firmware": self.firmware,
        })
    }
}

impl Follower {
    fn new(reported: Value, version: String) -> Self {
        Self {
            last_status: reported["firmwareStatus"].as_str().map(str::to_owned),
            last_progress: None,
            reported,
            version,
            engaged: false,
        }
    }

    fn status(&self) -> Option<&str> {
        self.reported["firmwareStatus"].as_str()
    }

    /// Merges a twin change into the view; `Some` when it touched the firmware reports.
    fn apply(&mut self, record: &ChangeRecord) -> Option<Step> {
        if !matches!(
            record.operation,
            ChangeOperation::UpdateTwin | ChangeOperation::ReplaceTwin
        ) || record.module_id.is_some()
        {
            return None;
        }
        let patch = record.body.get("properties")?.get("reported")?;
        if patch.get("firmwareStatus").is_none() && patch.get("firmware").is_none() {
            return None;
        }
        merge(&mut self.reported, patch);
        let firmware = self.reported["firmware"].clone();
        let status = self
            .reported
            .get("firmwareStatus")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let targets_us = firmware["targetVersion"].as_str() == Some(self.version.as_str());
        let runs_us = firmware["currentVersion"].as_str() == Some(self.version.as_str());
        if targets_us || status == "downloading" {
            self.engaged = true;
        }
        let progress = firmware["progress"]
            .as_u64()
            .and_then(|value| u8::try_from(value.min(100)).ok());
        let status_changed = self.last_status.as_deref() != Some(status.as_str());
        let progress_changed = progress.is_some() && progress != self.last_progress;
        self.last_status = Some(status.clone());
        self.last_progress = progress;
        // A final status before the device took this update up is the previous update's: not the end.
        let finished = is_final(&status) && self.engaged && (targets_us || runs_us);
        let error = firmware["error"]["reason"].as_str().map(|reason| {
            match firmware["error"]["code"].as_str() {
                Some(code) => format!("{code}: {reason}"),
                None => reason.to_owned(),
            }
        });
        Some(Step {
            time: record.time,
            status,
            progress,
            status_changed,
            progress_changed,
            finished,
            error,
            firmware,
        })
    }
}

/// JSON merge patch (RFC 7396), as the twin applies reported patches.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let object = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, reported: Value) -> ChangeRecord {
        ChangeRecord {
            sequence,
            time: OffsetDateTime::UNIX_EPOCH,
            device_id: Some("d".parse().expect("id")),
            module_id: None,
            job_id: None,
            rollout_id: None,
            operation: ChangeOperation::UpdateTwin,
            twin_version: Some(sequence),
            body: json!({"properties": {"reported": reported}}),
        }
    }

    #[test]
    fn an_update_is_followed_to_its_end_and_an_older_final_status_is_not_it() {
        let mut view = Follower::new(
            json!({"firmwareStatus": "completed", "firmware": {"currentVersion": "1.0.0", "targetVersion": "1.0.0"}}),
            "2.0.0".into(),
        );
        // A report unrelated to firmware is ignored.
        assert!(view.apply(&record(1, json!({"temperature": 20}))).is_none());
        let step = view
            .apply(&record(2, json!({"firmwareStatus": "downloading", "firmware": {"status": "downloading", "targetVersion": "2.0.0", "progress": 0}})))
            .expect("a firmware change");
        assert!(step.status_changed && !step.finished);
        let step = view
            .apply(&record(3, json!({"firmware": {"progress": 50}})))
            .expect("progress");
        assert_eq!(step.progress, Some(50));
        assert!(!step.status_changed && step.progress_changed);
        let step = view
            .apply(&record(4, json!({"firmwareStatus": "rolledBack", "firmware": {"status": "rolledBack", "error": {"code": "healthCheckFailed", "reason": "exit 1"}}})))
            .expect("the end");
        assert!(step.finished);
        assert_eq!(step.error.as_deref(), Some("healthCheckFailed: exit 1"));
        assert_eq!(step.status, "rolledBack");
    }

    #[test]
    fn merge_follows_rfc_7396() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge(&mut target, &json!({"a": {"b": null, "e": 4}, "d": [1]}));
        assert_eq!(target, json!({"a": {"c": 2, "e": 4}, "d": [1]}));
    }
}
