//! `fleethub job`: Jobs v2 through the service SDK: create a job (a direct method, or a twin patch, over the
//! devices a condition selects), show, list and cancel jobs, and follow one until it ends (`--watch`: a
//! progress bar on a terminal, one line per change otherwise, driven by the job's records in the hub's change
//! feed, never by polling).

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::ArgGroup;
use fleethub_service::JobProgress;
use fleethub_service::protocol::ids::{JobId, validate_method_name};
use fleethub_service::protocol::jobs::{
    DeviceJob, DeviceJobStatistics, DeviceJobStatus, JobRequest, JobResponse, JobStatus, JobType,
};
use fleethub_service::protocol::rest::{CloudToDeviceMethod, Twin, format_time, parse_time};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::failure::{ExplainResult as _, Kind, Operation, explain};
use crate::hub::{HUB_HELP, Hub, HubArgs};
use crate::json_input::{read_json_argument, require_object};
use crate::output::{
    Cell, OutputFormat, Palette, Table, compact, human_time, or_dash, print_json, write_stdout,
};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct JobCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: JobAction,
}

#[derive(clap::Subcommand)]
enum JobAction {
    /// Create a job: call a direct method on, or patch the twins of, every device a condition selects
    ///
    /// The hub freezes the set of devices when the job starts (at --start-time, or now) and works through
    /// them within --max-execution-time. Prints the job, queued; with --watch, follows it to its end.
    Create(CreateArgs),
    /// Show a job: its status, action and device counts
    ///
    /// With --watch, follows it until it ends (as `job create --watch`).
    Show {
        /// The job's id
        job_id: JobId,
        /// Follow the job until it ends: a progress bar on a terminal, one line per change otherwise (JSON
        /// lines with --output json), then the final job. Exits 0 whatever the job's final status.
        #[arg(long)]
        watch: bool,
    },
    /// List jobs by id, optionally of one type and/or status
    List {
        /// Only jobs of this type: method, twin (or Azure's names: scheduleDeviceMethod, scheduleUpdateTwin)
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_job_type)]
        job_type: Option<JobType>,
        /// Only jobs in this status: queued, scheduled, running, completed, failed, cancelled
        #[arg(long, value_name = "STATUS", value_parser = parse_job_status)]
        status: Option<JobStatus>,
    },
    /// Cancel a job: devices not started yet are cancelled, those running finish
    Cancel {
        /// The job's id
        job_id: JobId,
    },
}

#[derive(clap::Args)]
#[command(group(ArgGroup::new("action").required(true).args(["method", "twin_patch"])))]
struct CreateArgs {
    /// The new job's id (up to 128 ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ ')
    job_id: JobId,
    /// Call this direct method on every selected device
    #[arg(long, value_name = "METHOD_NAME", value_parser = parse_method_name)]
    method: Option<String>,
    /// The method's payload: JSON, @FILE or - (stdin) [default: null]
    #[arg(long, value_name = "JSON", conflicts_with = "twin_patch")]
    payload: Option<String>,
    /// Seconds each device has to answer the method (5 to 300, as in Azure) [default: 30]
    #[arg(
        long,
        value_name = "SECONDS",
        conflicts_with = "twin_patch",
        value_parser = clap::value_parser!(u64).range(5..=300)
    )]
    timeout: Option<u64>,
    /// Patch every selected twin instead: the REST body of a twin patch, tags and/or desired properties,
    /// e.g. '{"tags":{"ring":"canary"},"properties":{"desired":{"fw":"2.0"}}}' (JSON, @FILE or -)
    #[arg(long, value_name = "JSON")]
    twin_patch: Option<String>,
    /// Which devices: the WHERE of a devices query, e.g. "tags.site = 'lab'" or "deviceId IN ['a', 'b']"
    #[arg(long, value_name = "CONDITION")]
    query: String,
    /// When to start, in RFC 3339 (e.g. 2026-05-01T10:00:00Z) [default: now]
    #[arg(long, value_name = "TIME", value_parser = check_start_time)]
    start_time: Option<String>,
    /// Seconds the job may run from its start; devices not done by then fail (1 to 2592000) [default: 3600]
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=2_592_000)
    )]
    max_execution_time: Option<u64>,
    /// Follow the job until it ends, as `job show --watch`
    #[arg(long)]
    watch: bool,
}

fn parse_method_name(text: &str) -> Result<String, String> {
    validate_method_name(text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_job_type(text: &str) -> Result<JobType, String> {
    match text {
        "method" => Ok(JobType::ScheduleDeviceMethod),
        "twin" => Ok(JobType::ScheduleUpdateTwin),
        other => JobType::parse(other).ok_or_else(|| {
            "expected method, twin, scheduleDeviceMethod or scheduleUpdateTwin".to_owned()
        }),
    }
}

fn parse_job_status(text: &str) -> Result<JobStatus, String> {
    JobStatus::parse(text).ok_or_else(|| {
        "expected queued, scheduled, running, completed, failed or cancelled".to_owned()
    })
}

fn check_start_time(text: &str) -> Result<String, String> {
    parse_time(text)
        .map(|_| text.to_owned())
        .map_err(|_| "expected an RFC 3339 time such as 2026-05-01T10:00:00Z".to_owned())
}

pub(crate) async fn run(command: JobCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    match command.action {
        JobAction::Create(args) => {
            let watch = args.watch;
            let request = job_request(args)?;
            let job_id = request.job_id.clone().expect("job_request names the job");
            let operation =
                Operation::new(Kind::WriteJob, format!("create job {job_id}")).on_job(&job_id);
            let job = hub
                .client
                .create_job(&request)
                .await
                .or_explain(&hub, &operation)
                .await?;
            if watch {
                follow(&hub, format, &palette, &job_id).await
            } else {
                print_job(format, &palette, &job)
            }
        }
        JobAction::Show { job_id, watch } => {
            if watch {
                return follow(&hub, format, &palette, &job_id).await;
            }
            let operation =
                Operation::new(Kind::ReadJob, format!("read job {job_id}")).on_job(&job_id);
            let job = hub
                .client
                .get_job(&job_id)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_job(format, &palette, &job)
        }
        JobAction::List { job_type, status } => {
            let operation = Operation::new(Kind::ReadJob, "list jobs");
            let jobs = hub
                .client
                .query_jobs(job_type, status)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&jobs),
                OutputFormat::Table if jobs.is_empty() => write_stdout(
                    "no jobs: create one with `fleethub job create JOB_ID --method NAME --query CONDITION`\n",
                ),
                OutputFormat::Table => jobs_table(&palette, &jobs).print(&palette),
            }
        }
        JobAction::Cancel { job_id } => {
            let operation =
                Operation::new(Kind::WriteJob, format!("cancel job {job_id}")).on_job(&job_id);
            let job = hub
                .client
                .cancel_job(&job_id)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_job(format, &palette, &job)
        }
    }
}

/// The request `job create` sends, from its flags (clap guarantees exactly one of --method, --twin-patch).
fn job_request(args: CreateArgs) -> anyhow::Result<JobRequest> {
    let mut request = match (&args.method, &args.twin_patch) {
        (Some(method), _) => {
            let payload = match &args.payload {
                Some(payload) => read_json_argument("--payload", payload)?,
                None => Value::Null,
            };
            let method = CloudToDeviceMethod {
                method_name: method.clone(),
                payload,
                response_timeout_in_seconds: Some(args.timeout.unwrap_or(30)),
                connect_timeout_in_seconds: None,
            };
            JobRequest::device_method(args.job_id, method, args.query)
        }
        (None, Some(patch)) => JobRequest::update_twin(args.job_id, twin_patch(patch)?, args.query),
        (None, None) => unreachable!("clap requires --method or --twin-patch"),
    };
    request.start_time = args
        .start_time
        .as_deref()
        .map(|text| parse_time(text).expect("checked by the argument parser"));
    request.max_execution_time_in_seconds = args.max_execution_time;
    Ok(request)
}

/// `--twin-patch`: tags and/or desired properties, as the REST body of a twin patch.
fn twin_patch(argument: &str) -> anyhow::Result<Twin> {
    let body = read_json_argument("--twin-patch", argument)?;
    let object = require_object("--twin-patch", &body)?;
    let example = r#"'{"tags":{"ring":"canary"},"properties":{"desired":{"fw":"2.0"}}}'"#;
    if let Some(unexpected) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "tags" | "properties"))
    {
        bail!(
            "--twin-patch has {unexpected:?}: a job patches \"tags\" and \"properties\".\"desired\", e.g. {example}"
        );
    }
    if let Some(properties) = object.get("properties") {
        let properties = require_object("\"properties\" in --twin-patch", properties)?;
        if properties.keys().any(|key| key != "desired") {
            bail!(
                "--twin-patch may only change \"properties\".\"desired\" (reported properties are the device's), e.g. {example}"
            );
        }
    }
    let twin: Twin = serde_json::from_value(body)
        .map_err(|error| anyhow!("--twin-patch is not a twin patch ({error}), e.g. {example}"))?;
    let empty = twin.tags.as_ref().is_none_or(|tags| tags.is_empty())
        && twin
            .properties
            .as_ref()
            .is_none_or(|properties| properties.desired.is_empty());
    if empty {
        bail!("--twin-patch changes nothing: give tags and/or properties.desired, e.g. {example}");
    }
    Ok(twin)
}

/// Follows a job until it ends, then prints it. The progress goes to a bar on stderr when stderr is a
/// terminal and the output is a table; otherwise one line per change on stdout (JSON lines with
/// `--output json`, the final job as the last line).
async fn follow(
    hub: &Hub,
    format: OutputFormat,
    palette: &Palette,
    job_id: &JobId,
) -> anyhow::Result<()> {
    let operation = Operation::new(Kind::WatchJob, format!("watch job {job_id}")).on_job(job_id);
    let mut progress = hub
        .client
        .watch_job(job_id)
        .await
        .or_explain(hub, &operation)
        .await?;
    let mut display = match format {
        OutputFormat::Table if std::io::stderr().is_terminal() => Display::Bar(progress_bar()),
        OutputFormat::Table => Display::Lines(*palette),
        OutputFormat::Json => Display::Json,
    };
    let mut last: Option<JobProgress> = None;
    let mut last_error = None;
    while let Some(item) = progress.next().await {
        match item {
            Ok(update) => {
                display.show(job_id, &update)?;
                last = Some(update);
                last_error = None;
            }
            // The stream keeps trying after a lost connection and ends after an error it cannot get past.
            Err(error) => {
                let message = explain(hub, &operation, error);
                display.warn(&format!("warning: {message}; retrying"));
                last_error = Some(message);
            }
        }
    }
    display.finish();
    match last {
        Some(update) if update.is_over() => match format {
            OutputFormat::Json => write_stdout(&json_line(&update.job)),
            OutputFormat::Table => {
                if matches!(display, Display::Lines(_)) {
                    write_stdout("\n")?;
                }
                print_job(format, palette, &update.job)
            }
        },
        _ => {
            let resume = format!("; follow it again with `fleethub job show {job_id} --watch`");
            Err(match last_error {
                Some(error) => anyhow!("{error}{resume}"),
                None => {
                    anyhow!("the hub ended the change stream before job {job_id} ended{resume}")
                }
            })
        }
    }
}

enum Display {
    Bar(ProgressBar),
    Lines(Palette),
    Json,
}

impl Display {
    fn show(&mut self, job_id: &JobId, update: &JobProgress) -> anyhow::Result<()> {
        match self {
            Display::Bar(bar) => {
                let statistics = update.statistics();
                // Until the job knows its devices there is nothing to measure: no bar (an empty one would
                // be drawn full).
                bar.set_style(bar_style(statistics.device_count > 0));
                bar.set_length(statistics.device_count);
                bar.set_position(statistics.finished_count());
                bar.set_prefix(format!("job {job_id}"));
                bar.set_message(bar_message(&Palette::for_stderr(), update));
                Ok(())
            }
            Display::Lines(palette) => write_stdout(&progress_line(palette, update)),
            Display::Json => write_stdout(&json_line(&progress_json(update))),
        }
    }

    fn warn(&self, message: &str) {
        match self {
            Display::Bar(bar) => bar.println(message),
            Display::Lines(_) | Display::Json => eprintln!("{message}"),
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(bar_style(false));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Position = devices finished out of the job's devices; the message has the counts.
fn bar_style(with_bar: bool) -> ProgressStyle {
    let template = if with_bar {
        "{spinner} {prefix} [{bar:30}] {pos}/{len} {msg}"
    } else {
        "{spinner} {prefix} {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
}

/// `running: 2 succeeded, 1 failed, 3 running, 4 pending`.
fn bar_message(palette: &Palette, update: &JobProgress) -> String {
    let statistics = update.statistics();
    let style = status_style(palette, update.status());
    format!(
        "{}{}{}: {}",
        style.render(),
        update.status().as_str(),
        style.render_reset(),
        counts_text(palette, &statistics)
    )
}

fn counts_text(palette: &Palette, statistics: &DeviceJobStatistics) -> String {
    let mut text = format!(
        "{}{} succeeded{}, {}{} failed{}, {} running, {} pending",
        palette.good.render(),
        statistics.succeeded_count,
        palette.good.render_reset(),
        palette.bad.render(),
        statistics.failed_count,
        palette.bad.render_reset(),
        statistics.running_count,
        statistics.pending_count,
    );
    let cancelled = statistics.cancelled_count();
    if cancelled > 0 {
        text.push_str(&format!(", {cancelled} cancelled"));
    }
    text
}

/// `    #12  running    2/5 finished: 2 succeeded, 0 failed, 1 running, 2 pending  dev3: completed (200)`.
fn progress_line(palette: &Palette, update: &JobProgress) -> String {
    let statistics = update.statistics();
    let sequence = update
        .sequence
        .map_or_else(|| "-".to_owned(), |sequence| format!("#{sequence}"));
    let status = update.status().as_str();
    let style = status_style(palette, update.status());
    // Styles wrap the words only, so padding stays plain and columns line up with colour on or off.
    let padding = " ".repeat(9usize.saturating_sub(status.len()));
    let mut line = format!(
        "{sequence:>6}  {}{status}{}{padding}  {}/{} finished: {}",
        style.render(),
        style.render_reset(),
        statistics.finished_count(),
        statistics.device_count,
        counts_text(palette, &statistics),
    );
    if let Some(device) = &update.device {
        line.push_str("  ");
        line.push_str(&device_text(palette, device));
    }
    format!("{}\n", line.trim_end())
}

/// `dev1: completed (200)`, `dev1/m1: failed (GatewayTimeout)`.
fn device_text(palette: &Palette, device: &DeviceJob) -> String {
    let who = match &device.module_id {
        Some(module_id) => format!("{}/{module_id}", device.device_id),
        None => device.device_id.to_string(),
    };
    let (status, style) = match device.status {
        DeviceJobStatus::Completed => ("completed", palette.good),
        DeviceJobStatus::Failed => ("failed", palette.bad),
        DeviceJobStatus::Canceled => ("canceled", palette.bad),
        DeviceJobStatus::Running => ("running", palette.change),
        DeviceJobStatus::Pending => ("pending", palette.muted),
        DeviceJobStatus::Scheduled => ("scheduled", palette.muted),
    };
    let detail = match (&device.error, &device.outcome.device_method_response) {
        (Some(error), _) => format!(" ({})", error.code),
        (None, Some(response)) => format!(" ({})", response.status),
        (None, None) => String::new(),
    };
    format!(
        "{who}: {}{status}{}{detail}",
        style.render(),
        style.render_reset()
    )
}

/// One progress line of `--watch --output json`: where the job stands after the record `sequence` (`null`:
/// the job as first read), and the device record that brought the change.
fn progress_json(update: &JobProgress) -> Value {
    let mut line = json!({
        "jobId": update.job.job_id,
        "sequence": update.sequence,
        "status": update.status(),
        "deviceJobStatistics": update.statistics(),
    });
    if let Some(device) = &update.device {
        line["device"] = serde_json::to_value(device).expect("a device job always serialises");
    }
    line
}

fn json_line<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string(value).expect("the hub's JSON always serialises");
    text.push('\n');
    text
}

fn status_style(palette: &Palette, status: JobStatus) -> clap::builder::styling::Style {
    match status {
        JobStatus::Completed => palette.good,
        JobStatus::Failed | JobStatus::Cancelled => palette.bad,
        JobStatus::Running => palette.change,
        _ => palette.muted,
    }
}

fn print_job(format: OutputFormat, palette: &Palette, job: &JobResponse) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(job),
        OutputFormat::Table => job_table(palette, job).print(palette),
    }
}

/// A job's time (from `format_time`) as tables show it.
fn time_text(azure_time: Option<String>) -> String {
    human_time(azure_time.as_deref())
}

fn job_table(palette: &Palette, job: &JobResponse) -> Table {
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    table.row(vec![label("job id"), job.job_id.as_str().into()]);
    table.row(vec![label("type"), job.job_type.as_str().into()]);
    table.row(vec![
        label("status"),
        Cell::styled(job.status.as_str(), status_style(palette, job.status)),
    ]);
    table.row(vec![
        label("query"),
        or_dash(job.query_condition.clone()).into(),
    ]);
    if let Some(method) = &job.cloud_to_device_method {
        let timeout = method
            .response_timeout_in_seconds
            .map(|seconds| format!(", timeout {seconds} s"))
            .unwrap_or_default();
        table.row(vec![
            label("method"),
            format!(
                "{} (payload {}{timeout})",
                method.method_name,
                compact(&method.payload)
            )
            .into(),
        ]);
    }
    if let Some(twin) = &job.update_twin {
        let mut patch = serde_json::Map::new();
        if let Some(tags) = &twin.tags {
            patch.insert("tags".into(), Value::Object(tags.clone()));
        }
        if let Some(properties) = &twin.properties {
            patch.insert(
                "properties".into(),
                json!({ "desired": properties.desired }),
            );
        }
        table.row(vec![
            label("twin patch"),
            compact(&Value::Object(patch)).into(),
        ]);
    }
    table.row(vec![
        label("created"),
        time_text(job.created_time.map(format_time)).into(),
    ]);
    table.row(vec![
        label("start"),
        time_text(job.start_time.map(format_time)).into(),
    ]);
    table.row(vec![
        label("end"),
        time_text(job.end_time.map(format_time)).into(),
    ]);
    if let Some(seconds) = job.max_execution_time_in_seconds {
        table.row(vec![label("max time"), format!("{seconds} s").into()]);
    }
    if let Some(statistics) = &job.device_job_statistics {
        table.row(vec![
            label("devices"),
            format!(
                "{}/{} finished: {}",
                statistics.finished_count(),
                statistics.device_count,
                counts_text(palette, statistics)
            )
            .into(),
        ]);
    }
    if let Some(message) = &job.status_message {
        table.row(vec![label("message"), message.as_str().into()]);
    }
    if let Some(reason) = &job.failure_reason {
        table.row(vec![
            label("failure"),
            Cell::styled(reason.as_str(), palette.bad),
        ]);
    }
    table
}

fn jobs_table(palette: &Palette, jobs: &[JobResponse]) -> Table {
    let mut table = Table::new(&[
        "JOB ID",
        "TYPE",
        "STATUS",
        "DEVICES",
        "SUCCEEDED",
        "FAILED",
        "CREATED",
        "END",
    ]);
    for job in jobs {
        let statistics = job.device_job_statistics.unwrap_or_default();
        let kind = match job.job_type {
            JobType::ScheduleDeviceMethod => match &job.cloud_to_device_method {
                Some(method) => format!("method {}", method.method_name),
                None => "method".to_owned(),
            },
            JobType::ScheduleUpdateTwin => "twin".to_owned(),
            other => other.as_str().to_owned(),
        };
        table.row(vec![
            job.job_id.as_str().into(),
            kind.into(),
            Cell::styled(job.status.as_str(), status_style(palette, job.status)),
            format!(
                "{}/{}",
                statistics.finished_count(),
                statistics.device_count
            )
            .into(),
            statistics.succeeded_count.to_string().into(),
            statistics.failed_count.to_string().into(),
            time_text(job.created_time.map(format_time)).into(),
            time_text(job.end_time.map(format_time)).into(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(value: Value) -> JobResponse {
        serde_json::from_value(value).expect("a job")
    }

    #[test]
    fn job_types_and_statuses_read_short_and_azure_names() {
        assert_eq!(parse_job_type("method"), Ok(JobType::ScheduleDeviceMethod));
        assert_eq!(
            parse_job_type("scheduleUpdateTwin"),
            Ok(JobType::ScheduleUpdateTwin)
        );
        assert!(parse_job_type("reboot").is_err());
        assert_eq!(parse_job_status("cancelled"), Ok(JobStatus::Cancelled));
        assert!(parse_job_status("canceled").is_err());
        assert!(check_start_time("2026-05-01T10:00:00Z").is_ok());
        assert!(check_start_time("tomorrow").is_err());
    }

    #[test]
    fn progress_lines_show_the_counts_and_the_device_that_changed() {
        let palette = Palette::new(false);
        let update = JobProgress {
            job: job(json!({
                "jobId": "j", "type": "scheduleDeviceMethod", "status": "running",
                "deviceJobStatistics": {"deviceCount": 5, "succeededCount": 2, "failedCount": 0, "runningCount": 1, "pendingCount": 1}
            })),
            device: Some(
                serde_json::from_value(json!({
                    "deviceId": "dev3", "jobId": "j", "jobType": "scheduleDeviceMethod", "status": "completed",
                    "createdDateTimeUtc": "2026-05-01T10:00:00Z", "lastUpdatedDateTimeUtc": "2026-05-01T10:00:01Z",
                    "outcome": {"deviceMethodResponse": {"status": 200, "payload": null}}
                }))
                .expect("a device job"),
            ),
            sequence: Some(12),
        };
        assert_eq!(
            progress_line(&palette, &update),
            "   #12  running    3/5 finished: 2 succeeded, 0 failed, 1 running, 1 pending, 1 cancelled  dev3: completed (200)\n"
        );
        let first = JobProgress {
            job: job(json!({"jobId": "j", "type": "scheduleUpdateTwin", "status": "scheduled"})),
            device: None,
            sequence: None,
        };
        assert_eq!(
            progress_line(&palette, &first),
            "     -  scheduled  0/0 finished: 0 succeeded, 0 failed, 0 running, 0 pending\n"
        );
        assert_eq!(
            progress_json(&first),
            json!({"jobId": "j", "sequence": null, "status": "scheduled",
                   "deviceJobStatistics": {"deviceCount": 0, "failedCount": 0, "succeededCount": 0, "runningCount": 0, "pendingCount": 0}})
        );
        assert_eq!(
            bar_message(&palette, &update),
            "running: 2 succeeded, 0 failed, 1 running, 1 pending, 1 cancelled"
        );
    }

    #[test]
    fn job_tables_show_the_action_and_the_counts() {
        let palette = Palette::new(false);
        let method = job(json!({
            "jobId": "reboot-lab", "type": "scheduleDeviceMethod", "status": "completed",
            "queryCondition": "tags.site = 'lab'",
            "createdTime": "2026-05-01T10:00:00Z", "startTime": "2026-05-01T10:00:00Z", "endTime": "2026-05-01T10:00:05Z",
            "maxExecutionTimeInSeconds": 3600,
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 30},
            "statusMessage": "2 of 2 devices succeeded, 0 failed",
            "deviceJobStatistics": {"deviceCount": 2, "succeededCount": 2, "failedCount": 0, "runningCount": 0, "pendingCount": 0}
        }));
        assert_eq!(
            job_table(&palette, &method).render(&palette),
            "job id    reboot-lab\n\
             type      scheduleDeviceMethod\n\
             status    completed\n\
             query     tags.site = 'lab'\n\
             method    reboot (payload {\"delay\":1}, timeout 30 s)\n\
             created   2026-05-01 10:00:00Z\n\
             start     2026-05-01 10:00:00Z\n\
             end       2026-05-01 10:00:05Z\n\
             max time  3600 s\n\
             devices   2/2 finished: 2 succeeded, 0 failed, 0 running, 0 pending\n\
             message   2 of 2 devices succeeded, 0 failed\n"
        );
        let twin = job(json!({
            "jobId": "tag", "type": "scheduleUpdateTwin", "status": "queued",
            "updateTwin": {"tags": {"ring": "canary"}, "etag": "*"}
        }));
        let rendered = jobs_table(&palette, &[method, twin]).render(&palette);
        assert_eq!(
            rendered,
            "JOB ID      TYPE           STATUS     DEVICES  SUCCEEDED  FAILED  CREATED               END\n\
             reboot-lab  method reboot  completed  2/2      2          0       2026-05-01 10:00:00Z  2026-05-01 10:00:05Z\n\
             tag         twin           queued     0/0      0          0       -                     -\n"
        );
    }
}
