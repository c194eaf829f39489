//! `fleethub rollout`: firmware rollouts (a fleethub extension, docs/firmware.md "Rollouts") through the
//! service SDK: create one (an uploaded artifact, to the devices a condition selects, in waves), list and
//! show them, pause, resume, approve and abort them, and follow one until it ends (`watch`: a progress bar
//! per wave on a terminal, one line per change otherwise, JSON lines with `--output json`; driven by the
//! rollout's records in the hub's change feed, never by polling).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::anyhow;
use fleethub_service::RolloutProgress;
use fleethub_service::protocol::firmware::check_name;
use fleethub_service::protocol::ids::RolloutId;
use fleethub_service::protocol::rest::format_time;
use fleethub_service::protocol::rollouts::{
    ArtifactRef, DeviceRollout, DeviceRolloutStatus, NumberOrText, Rollout, RolloutPhase,
    RolloutRequest, RolloutStatistics, RolloutStatus, WaveStatus, WavesRequest,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::failure::{ExplainResult as _, Kind, Operation, explain};
use crate::hub::{HUB_HELP, Hub, HubArgs};
use crate::output::{
    Cell, OutputFormat, Palette, Table, human_time, or_dash, print_json, write_stdout,
};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct RolloutCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: RolloutAction,
}

#[derive(clap::Subcommand)]
enum RolloutAction {
    /// Create a rollout: send an uploaded artifact to the devices a condition selects, in waves
    ///
    /// The hub freezes the set of devices at the start (those matching --query that reported the artifact's
    /// model), shuffles them, and sends the update wave by wave: the next wave starts when the current one
    /// has its success threshold of updated devices; its error threshold of failed devices aborts the
    /// rollout (then the devices that failed get --rollback-version, if given). Prints the rollout; with
    /// --watch, follows it to its end.
    Create(Box<CreateArgs>),
    /// List rollouts by id, optionally in one status
    List {
        /// Only rollouts in this status: running, paused, waitingForApproval, aborting, completed, aborted
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<RolloutStatus>,
    },
    /// Show a rollout: its status, each wave's counts and thresholds, its limits
    Show {
        /// The rollout's id
        rollout_id: RolloutId,
    },
    /// Pause a rollout: no device starts; devices updating finish
    Pause { rollout_id: RolloutId },
    /// Resume a paused rollout
    Resume { rollout_id: RolloutId },
    /// Approve the next wave of a rollout waiting for approval (or go on past a wave below its success
    /// threshold)
    Approve { rollout_id: RolloutId },
    /// Abort a rollout: devices not started are cancelled, those updating finish, then the devices that
    /// failed get the rollback artifact (if the rollout has one)
    Abort { rollout_id: RolloutId },
    /// Follow a rollout until it ends: a progress bar per wave on a terminal, one line per change
    /// otherwise (JSON lines with --output json), then the final rollout. Exits 0 when it completed, 1
    /// when it was aborted.
    Watch { rollout_id: RolloutId },
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The new rollout's id (up to 128 ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ ')
    rollout_id: RolloutId,
    /// The artifact's model (devices must have reported it as properties.reported.firmware.model)
    #[arg(long, value_name = "MODEL", value_parser = parse_name)]
    model: String,
    /// The artifact's version
    #[arg(long, value_name = "VERSION", value_parser = parse_name)]
    version: String,
    /// Which devices: the WHERE of a devices query, e.g. "tags.site = 'lab'" [default: every device]
    #[arg(long, value_name = "CONDITION", default_value = "IS_DEFINED(deviceId)")]
    query: String,
    /// Cumulative wave sizes: percentages or device counts, e.g. 1%,10%,50%,100% or 10,100,1000 (a final
    /// 100% wave is added when missing) [default: 100%]
    #[arg(long, value_name = "SIZES")]
    waves: Option<String>,
    /// Share (or count) of a wave's devices that must succeed before the next wave starts [default: 100%]
    #[arg(long, value_name = "SHARE")]
    success_threshold: Option<String>,
    /// Failed devices of a wave (a count, or a share of its finished devices) that abort the rollout, or
    /// "none" [default: 10%]
    #[arg(long, value_name = "SHARE")]
    error_threshold: Option<String>,
    /// Finished devices of a wave before its error threshold applies (the whole wave if smaller)
    /// [default: 10]
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    error_minimum: Option<u64>,
    /// Wait for `fleethub rollout approve` after each wave before the next
    #[arg(long)]
    approval: bool,
    /// Devices updating at once (1 to 10000) [default: 100]
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_concurrency: Option<u64>,
    /// Devices started per second at most [default: no limit]
    #[arg(long, value_name = "PER_SECOND")]
    start_rate: Option<u32>,
    /// Seconds one device's update may take, from the request to its final report [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    device_timeout: Option<u64>,
    /// Attempts per device (1 to 10) [default: 1]
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u32).range(1..=10))]
    max_attempts: Option<u32>,
    /// Seconds before a failed device is tried again [default: 60]
    #[arg(long, value_name = "SECONDS")]
    retry_backoff: Option<u64>,
    /// Seconds an offline device may wait before it fails; 0 waits for ever [default: 86400]
    #[arg(long, value_name = "SECONDS")]
    offline_timeout: Option<u64>,
    /// If the rollout aborts, send this version (same model) to the devices that failed
    #[arg(long, value_name = "VERSION", value_parser = parse_name)]
    rollback_version: Option<String>,
    /// Seed of the devices' random order (the same seed and devices give the same waves) [default: random]
    #[arg(long, value_name = "NUMBER")]
    seed: Option<u64>,
    /// Follow the rollout until it ends, as `rollout watch`
    #[arg(long)]
    watch: bool,
}

fn parse_name(text: &str) -> Result<String, String> {
    check_name("name", text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_status(text: &str) -> Result<RolloutStatus, String> {
    RolloutStatus::parse(text).ok_or_else(|| {
        "expected running, paused, waitingForApproval, aborting, completed or aborted".to_owned()
    })
}

pub(crate) async fn run(command: RolloutCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    match command.action {
        RolloutAction::Create(args) => {
            let watch = args.watch;
            let rollout_id = args.rollout_id.clone();
            let request = rollout_request(*args);
            let operation =
                Operation::new(Kind::WriteRollout, format!("create rollout {rollout_id}"))
                    .on_rollout(&rollout_id);
            let rollout = hub
                .client
                .create_rollout(&rollout_id, &request)
                .await
                .or_explain(&hub, &operation)
                .await?;
            if watch {
                follow(&hub, format, &palette, &rollout_id).await
            } else {
                print_rollout(format, &palette, &rollout)
            }
        }
        RolloutAction::List { status } => {
            let operation = Operation::new(Kind::ReadRollout, "list rollouts");
            let rollouts = hub
                .client
                .list_rollouts(status)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&rollouts),
                OutputFormat::Table if rollouts.is_empty() => write_stdout(
                    "no rollouts: create one with `fleethub rollout create ID --model MODEL --version VERSION --query CONDITION`\n",
                ),
                OutputFormat::Table => rollouts_table(&palette, &rollouts).print(&palette),
            }
        }
        RolloutAction::Show { rollout_id } => {
            let operation = Operation::new(Kind::ReadRollout, format!("read rollout {rollout_id}"))
                .on_rollout(&rollout_id);
            let rollout = hub
                .client
                .get_rollout(&rollout_id)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_rollout(format, &palette, &rollout)
        }
        RolloutAction::Pause { rollout_id } => {
            act(&hub, format, &palette, &rollout_id, "pause").await
        }
        RolloutAction::Resume { rollout_id } => {
            act(&hub, format, &palette, &rollout_id, "resume").await
        }
        RolloutAction::Approve { rollout_id } => {
            act(&hub, format, &palette, &rollout_id, "approve").await
        }
        RolloutAction::Abort { rollout_id } => {
            act(&hub, format, &palette, &rollout_id, "abort").await
        }
        RolloutAction::Watch { rollout_id } => follow(&hub, format, &palette, &rollout_id).await,
    }
}

async fn act(
    hub: &Hub,
    format: OutputFormat,
    palette: &Palette,
    rollout_id: &RolloutId,
    action: &str,
) -> anyhow::Result<()> {
    let operation = Operation::new(Kind::WriteRollout, format!("{action} rollout {rollout_id}"))
        .on_rollout(rollout_id);
    let result = match action {
        "pause" => hub.client.pause_rollout(rollout_id).await,
        "resume" => hub.client.resume_rollout(rollout_id).await,
        "approve" => hub.client.approve_rollout(rollout_id).await,
        _ => hub.client.abort_rollout(rollout_id).await,
    };
    let rollout = result.or_explain(hub, &operation).await?;
    print_rollout(format, palette, &rollout)
}

/// The request `rollout create` sends, from its flags.
fn rollout_request(args: CreateArgs) -> RolloutRequest {
    let text = |value: Option<String>| value.map(NumberOrText::Text);
    RolloutRequest {
        rollout_id: Some(args.rollout_id),
        artifact: Some(ArtifactRef {
            model: args.model.clone(),
            version: args.version,
        }),
        target_condition: Some(args.query),
        waves: args.waves.map(WavesRequest::Text),
        success_threshold: text(args.success_threshold),
        error_threshold: text(args.error_threshold),
        error_minimum_devices: args.error_minimum,
        approval: args.approval.then_some(true),
        max_concurrency: args.max_concurrency,
        start_rate_per_second: args.start_rate,
        device_timeout_in_seconds: args.device_timeout,
        max_attempts: args.max_attempts,
        retry_backoff_in_seconds: args.retry_backoff,
        offline_timeout_in_seconds: args.offline_timeout,
        rollback: args.rollback_version.map(|version| ArtifactRef {
            model: args.model,
            version,
        }),
        seed: args.seed,
    }
}

/// Follows a rollout until it ends, then prints it: bars on stderr when stderr is a terminal and the
/// output is a table, else one line per change on stdout (JSON lines with `--output json`, the final
/// rollout as the last line). An aborted rollout makes the command fail.
async fn follow(
    hub: &Hub,
    format: OutputFormat,
    palette: &Palette,
    rollout_id: &RolloutId,
) -> anyhow::Result<()> {
    let operation = Operation::new(Kind::WatchRollout, format!("watch rollout {rollout_id}"))
        .on_rollout(rollout_id);
    let mut progress = hub
        .client
        .watch_rollout(rollout_id)
        .await
        .or_explain(hub, &operation)
        .await?;
    let mut display = match format {
        OutputFormat::Table if std::io::stderr().is_terminal() => Display::Bars(Bars::new()),
        OutputFormat::Table => Display::Lines(*palette),
        OutputFormat::Json => Display::Json,
    };
    let mut last: Option<RolloutProgress> = None;
    let mut last_error = None;
    while let Some(item) = progress.next().await {
        match item {
            Ok(update) => {
                display.show(&update)?;
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
    let Some(update) = last.filter(RolloutProgress::is_over) else {
        let resume = format!("; follow it again with `fleethub rollout watch {rollout_id}`");
        return Err(match last_error {
            Some(error) => anyhow!("{error}{resume}"),
            None => {
                anyhow!("the hub ended the change stream before rollout {rollout_id} ended{resume}")
            }
        });
    };
    match format {
        OutputFormat::Json => write_stdout(&json_line(&update.rollout))?,
        OutputFormat::Table => {
            if matches!(display, Display::Lines(_)) {
                write_stdout("\n")?;
            }
            print_rollout(format, palette, &update.rollout)?;
        }
    }
    if update.status() == RolloutStatus::Aborted {
        return Err(anyhow!(
            "rollout {rollout_id} was aborted: {}",
            update
                .rollout
                .status_message
                .as_deref()
                .unwrap_or("no reason recorded")
        ));
    }
    Ok(())
}

enum Display {
    Bars(Bars),
    Lines(Palette),
    Json,
}

impl Display {
    fn show(&mut self, update: &RolloutProgress) -> anyhow::Result<()> {
        match self {
            Display::Bars(bars) => {
                bars.show(update);
                Ok(())
            }
            Display::Lines(palette) => write_stdout(&progress_line(palette, update)),
            Display::Json => write_stdout(&json_line(&progress_json(update))),
        }
    }

    fn warn(&self, message: &str) {
        match self {
            Display::Bars(bars) => {
                let _ = bars.multi.println(message);
            }
            Display::Lines(_) | Display::Json => eprintln!("{message}"),
        }
    }

    fn finish(&self) {
        if let Display::Bars(bars) = self {
            bars.finish();
        }
    }
}

/// A header line (status and totals), then a bar per wave and one for the rollback once it starts.
struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    waves: BTreeMap<u32, ProgressBar>,
    rollback: Option<ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::new();
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg}").expect("a valid template"),
        );
        header.enable_steady_tick(Duration::from_millis(120));
        Bars {
            multi,
            header,
            waves: BTreeMap::new(),
            rollback: None,
        }
    }

    fn bar(&self) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("  {prefix:<18} [{bar:30}] {pos:>5}/{len:<5} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    }

    fn show(&mut self, update: &RolloutProgress) {
        let palette = Palette::for_stderr();
        let rollout = &update.rollout;
        self.header
            .set_prefix(format!("rollout {}", rollout.rollout_id));
        self.header.set_message(header_text(&palette, rollout));
        for wave in &rollout.waves {
            if !self.waves.contains_key(&wave.wave) {
                let bar = self.bar();
                self.waves.insert(wave.wave, bar);
            }
            let bar = &self.waves[&wave.wave];
            bar.set_prefix(format!("wave {} ({})", wave.wave, wave.size));
            set_counts(bar, &wave.statistics);
            bar.set_message(format!(
                "{} {}",
                wave_status_text(&palette, wave.status),
                counts_text(&palette, &wave.statistics)
            ));
        }
        if let Some(statistics) = &rollout.rollback_statistics {
            if self.rollback.is_none() {
                self.rollback = Some(self.bar());
            }
            if let Some(bar) = &self.rollback {
                bar.set_prefix("rollback");
                set_counts(bar, statistics);
                bar.set_message(counts_text(&palette, statistics));
            }
        }
    }

    fn finish(&self) {
        self.header.finish_and_clear();
        for bar in self.waves.values().chain(self.rollback.as_ref()) {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

fn set_counts(bar: &ProgressBar, statistics: &RolloutStatistics) {
    bar.set_length(statistics.device_count);
    bar.set_position(statistics.finished());
}

/// `running, wave 2 of 4: 6/50 succeeded, 0 failed, 2 running, 42 pending`.
fn header_text(palette: &Palette, rollout: &Rollout) -> String {
    let style = status_style(palette, rollout.status);
    format!(
        "{}{}{}, wave {} of {}: {}",
        style.render(),
        rollout.status.as_str(),
        style.render_reset(),
        rollout.current_wave,
        rollout.waves.len(),
        counts_text(palette, &rollout.statistics)
    )
}

/// `6/50 succeeded, 1 failed, 2 running, 41 pending` (and the cancelled ones when there are any).
fn counts_text(palette: &Palette, statistics: &RolloutStatistics) -> String {
    let mut text = format!(
        "{}{}/{} succeeded{}, {}{} failed{}, {} running, {} pending",
        palette.good.render(),
        statistics.succeeded,
        statistics.device_count,
        palette.good.render_reset(),
        palette.bad.render(),
        statistics.failed,
        palette.bad.render_reset(),
        statistics.running,
        statistics.pending,
    );
    if statistics.cancelled > 0 {
        text.push_str(&format!(", {} cancelled", statistics.cancelled));
    }
    text
}

fn wave_status_text(palette: &Palette, status: WaveStatus) -> String {
    let (text, style) = match status {
        WaveStatus::Pending => ("pending", palette.muted),
        WaveStatus::Running => ("running", palette.change),
        WaveStatus::Passed => ("passed", palette.good),
        WaveStatus::Failed => ("failed", palette.bad),
        WaveStatus::Skipped => ("skipped", palette.muted),
    };
    format!("{}{text}{}", style.render(), style.render_reset())
}

/// `   #12  running    wave 2/4  6/50 succeeded, 0 failed, 2 running, 42 pending  unit-003 (wave 2): succeeded`.
fn progress_line(palette: &Palette, update: &RolloutProgress) -> String {
    let rollout = &update.rollout;
    let sequence = update
        .sequence
        .map_or_else(|| "-".to_owned(), |sequence| format!("#{sequence}"));
    let status = rollout.status.as_str();
    let style = status_style(palette, rollout.status);
    // Styles wrap the words only, so padding stays plain and columns line up with colour on or off.
    let padding = " ".repeat(18usize.saturating_sub(status.len()));
    let mut line = format!(
        "{sequence:>6}  {}{status}{}{padding}  wave {}/{}  {}",
        style.render(),
        style.render_reset(),
        rollout.current_wave,
        rollout.waves.len(),
        counts_text(palette, &rollout.statistics),
    );
    if let Some(rollback) = &rollout.rollback_statistics {
        line.push_str(&format!("; rollback {}", counts_text(palette, rollback)));
    }
    if let Some(device) = &update.device {
        line.push_str("  ");
        line.push_str(&device_text(palette, device));
    }
    format!("{}\n", line.trim_end())
}

/// `unit-003 (wave 2): failed (healthCheckFailed)`, `unit-003 (rollback): succeeded`.
fn device_text(palette: &Palette, device: &DeviceRollout) -> String {
    let who = match &device.module_id {
        Some(module_id) => format!("{}/{module_id}", device.device_id),
        None => device.device_id.to_string(),
    };
    let place = match device.phase {
        RolloutPhase::Update => format!("wave {}", device.wave),
        RolloutPhase::Rollback => "rollback".to_owned(),
    };
    let (status, style) = match device.status {
        DeviceRolloutStatus::Succeeded => ("succeeded", palette.good),
        DeviceRolloutStatus::Failed => ("failed", palette.bad),
        DeviceRolloutStatus::Cancelled => ("cancelled", palette.bad),
        DeviceRolloutStatus::Running => ("running", palette.change),
        DeviceRolloutStatus::Pending => ("pending", palette.muted),
    };
    let detail = device
        .error
        .as_ref()
        .map(|error| format!(" ({})", error.code))
        .unwrap_or_default();
    format!(
        "{who} ({place}): {}{status}{}{detail}",
        style.render(),
        style.render_reset()
    )
}

/// One line of `watch --output json`: where the rollout stands after the record `sequence` (`null`: as
/// first read), each wave's status and counts, and the device record that brought the change.
fn progress_json(update: &RolloutProgress) -> Value {
    let rollout = &update.rollout;
    let mut line = json!({
        "rolloutId": rollout.rollout_id,
        "sequence": update.sequence,
        "status": rollout.status,
        "currentWave": rollout.current_wave,
        "statistics": rollout.statistics,
        "waves": rollout.waves.iter().map(|wave| json!({
            "wave": wave.wave,
            "status": wave.status,
            "statistics": wave.statistics,
        })).collect::<Vec<_>>(),
    });
    if let Some(rollback) = &rollout.rollback_statistics {
        line["rollbackStatistics"] = json!(rollback);
    }
    if let Some(device) = &update.device {
        line["device"] = serde_json::to_value(device).expect("a device record always serialises");
    }
    line
}

fn json_line<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string(value).expect("the hub's JSON always serialises");
    text.push('\n');
    text
}

fn status_style(palette: &Palette, status: RolloutStatus) -> clap::builder::styling::Style {
    match status {
        RolloutStatus::Completed => palette.good,
        RolloutStatus::Aborted | RolloutStatus::Aborting => palette.bad,
        RolloutStatus::Running => palette.change,
        RolloutStatus::Paused | RolloutStatus::WaitingForApproval => palette.muted,
    }
}

fn print_rollout(format: OutputFormat, palette: &Palette, rollout: &Rollout) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(rollout),
        OutputFormat::Table => {
            rollout_table(palette, rollout).print(palette)?;
            write_stdout("\n")?;
            waves_table(palette, rollout).print(palette)
        }
    }
}

fn time_text(time: Option<time::OffsetDateTime>) -> String {
    human_time(time.map(format_time).as_deref())
}

fn rollout_table(palette: &Palette, rollout: &Rollout) -> Table {
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    table.row(vec![
        label("rollout id"),
        rollout.rollout_id.as_str().into(),
    ]);
    table.row(vec![label("artifact"), rollout.artifact.to_string().into()]);
    table.row(vec![
        label("rollback"),
        or_dash(rollout.rollback.as_ref().map(ToString::to_string)).into(),
    ]);
    table.row(vec![
        label("target"),
        rollout.target_condition.as_str().into(),
    ]);
    table.row(vec![
        label("status"),
        Cell::styled(
            rollout.status.as_str(),
            status_style(palette, rollout.status),
        ),
    ]);
    if let Some(message) = &rollout.status_message {
        table.row(vec![label("message"), message.as_str().into()]);
    }
    table.row(vec![
        label("wave"),
        format!("{} of {}", rollout.current_wave, rollout.waves.len()).into(),
    ]);
    table.row(vec![
        label("devices"),
        counts_text(palette, &rollout.statistics).into(),
    ]);
    if let Some(rollback) = &rollout.rollback_statistics {
        table.row(vec![
            label("rolled back"),
            counts_text(palette, rollback).into(),
        ]);
    }
    let rate = rollout
        .start_rate_per_second
        .map(|rate| format!(", {rate}/s"))
        .unwrap_or_default();
    let offline = rollout
        .offline_timeout_in_seconds
        .map_or_else(|| "for ever".to_owned(), |seconds| format!("{seconds} s"));
    table.row(vec![
        label("limits"),
        format!(
            "{} at once{rate}, {} s per device, {} attempt(s), offline devices wait {offline}",
            rollout.max_concurrency, rollout.device_timeout_in_seconds, rollout.max_attempts
        )
        .into(),
    ]);
    table.row(vec![
        label("created"),
        time_text(Some(rollout.created_time)).into(),
    ]);
    table.row(vec![label("start"), time_text(rollout.start_time).into()]);
    table.row(vec![label("end"), time_text(rollout.end_time).into()]);
    table.row(vec![label("seed"), rollout.seed.to_string().into()]);
    table
}

fn waves_table(palette: &Palette, rollout: &Rollout) -> Table {
    let mut table = Table::new(&[
        "WAVE",
        "SIZE",
        "STATUS",
        "DEVICES",
        "SUCCEEDED",
        "FAILED",
        "RUNNING",
        "PENDING",
        "SUCCESS AT",
        "ABORT AT",
    ]);
    for wave in &rollout.waves {
        let statistics = wave.statistics;
        let abort = match &wave.error_threshold {
            Some(threshold) => format!("{threshold} (after {})", wave.error_minimum_devices),
            None => "never".to_owned(),
        };
        let success = if wave.approval {
            format!("{}, approval", wave.success_threshold)
        } else {
            wave.success_threshold.clone()
        };
        table.row(vec![
            wave.wave.to_string().into(),
            wave.size.as_str().into(),
            Cell::plain(wave_status_text(palette, wave.status)),
            statistics.device_count.to_string().into(),
            statistics.succeeded.to_string().into(),
            statistics.failed.to_string().into(),
            statistics.running.to_string().into(),
            statistics.pending.to_string().into(),
            success.into(),
            abort.into(),
        ]);
    }
    table
}

fn rollouts_table(palette: &Palette, rollouts: &[Rollout]) -> Table {
    let mut table = Table::new(&[
        "ROLLOUT ID",
        "ARTIFACT",
        "STATUS",
        "WAVE",
        "DEVICES",
        "SUCCEEDED",
        "FAILED",
        "CREATED",
    ]);
    for rollout in rollouts {
        let statistics = rollout.statistics;
        table.row(vec![
            rollout.rollout_id.as_str().into(),
            rollout.artifact.to_string().into(),
            Cell::styled(
                rollout.status.as_str(),
                status_style(palette, rollout.status),
            ),
            format!("{}/{}", rollout.current_wave, rollout.waves.len()).into(),
            statistics.device_count.to_string().into(),
            statistics.succeeded.to_string().into(),
            statistics.failed.to_string().into(),
            time_text(Some(rollout.created_time)).into(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(value: Value) -> Rollout {
        serde_json::from_value(value).expect("a rollout")
    }

    fn sample() -> Rollout {
        rollout(json!({
            "rolloutId": "fw-2", "artifact": {"model": "m", "version": "2.0.0"},
            "rollback": {"model": "m", "version": "1.0.0"},
            "targetCondition": "tags.site = 'lab'", "status": "running",
            "statusMessage": "wave 2 of 2: 1 of 4 devices succeeded (4 needed to go on)",
            "createdTime": "2026-05-01T10:00:00Z", "startTime": "2026-05-01T10:00:01Z", "currentWave": 2,
            "waves": [
                {"wave": 1, "size": "20%", "successThreshold": "100%", "errorThreshold": "10%",
                 "errorMinimumDevices": 10, "approval": true, "status": "passed",
                 "statistics": {"deviceCount": 1, "succeeded": 1}},
                {"wave": 2, "size": "100%", "successThreshold": "100%", "errorMinimumDevices": 10,
                 "approval": false, "status": "running",
                 "statistics": {"deviceCount": 4, "succeeded": 1, "running": 2, "pending": 1}}
            ],
            "maxConcurrency": 10, "startRatePerSecond": 5, "deviceTimeoutInSeconds": 600, "maxAttempts": 1,
            "retryBackoffInSeconds": 60, "offlineTimeoutInSeconds": 86400, "seed": 42,
            "statistics": {"deviceCount": 5, "succeeded": 2, "running": 2, "pending": 1}
        }))
    }

    #[test]
    fn a_request_comes_from_the_flags() {
        let args = CreateArgs {
            rollout_id: "fw-2".parse().expect("valid"),
            model: "m".into(),
            version: "2.0.0".into(),
            query: "tags.site = 'lab'".into(),
            waves: Some("1%,10%,100%".into()),
            success_threshold: Some("95%".into()),
            error_threshold: Some("none".into()),
            error_minimum: Some(3),
            approval: true,
            max_concurrency: Some(20),
            start_rate: None,
            device_timeout: Some(600),
            max_attempts: None,
            retry_backoff: None,
            offline_timeout: Some(0),
            rollback_version: Some("1.0.0".into()),
            seed: Some(7),
            watch: false,
        };
        assert_eq!(
            serde_json::to_value(rollout_request(args)).ok(),
            Some(json!({
                "rolloutId": "fw-2", "artifact": {"model": "m", "version": "2.0.0"},
                "targetCondition": "tags.site = 'lab'", "waves": "1%,10%,100%",
                "successThreshold": "95%", "errorThreshold": "none", "errorMinimumDevices": 3,
                "approval": true, "maxConcurrency": 20, "deviceTimeoutInSeconds": 600,
                "offlineTimeoutInSeconds": 0, "rollback": {"model": "m", "version": "1.0.0"}, "seed": 7
            }))
        );
        assert!(parse_status("waitingForApproval").is_ok());
        assert!(parse_status("waiting").is_err());
    }

    #[test]
    fn progress_lines_show_the_counts_and_the_device_that_changed() {
        let palette = Palette::new(false);
        let update = RolloutProgress {
            rollout: sample(),
            device: Some(
                serde_json::from_value(json!({
                    "deviceId": "unit-3", "rolloutId": "fw-2", "phase": "update", "wave": 2,
                    "status": "failed", "attempts": 1, "lastUpdatedTime": "2026-05-01T10:00:02Z",
                    "error": {"code": "healthCheckFailed", "description": "exit 1"}
                }))
                .expect("a device record"),
            ),
            sequence: Some(31),
        };
        assert_eq!(
            progress_line(&palette, &update),
            "   #31  running             wave 2/2  2/5 succeeded, 0 failed, 2 running, 1 pending  unit-3 (wave 2): failed (healthCheckFailed)\n"
        );
        let line = progress_json(&update);
        assert_eq!(line["sequence"], json!(31));
        assert_eq!(line["waves"][1]["statistics"]["running"], json!(2));
        assert_eq!(line["device"]["error"]["code"], json!("healthCheckFailed"));
        assert_eq!(
            header_text(&palette, &update.rollout),
            "running, wave 2 of 2: 2/5 succeeded, 0 failed, 2 running, 1 pending"
        );
    }

    #[test]
    fn tables_show_the_rollout_and_its_waves() {
        let palette = Palette::new(false);
        let rollout = sample();
        let rendered = waves_table(&palette, &rollout).render(&palette);
        assert_eq!(
            rendered,
            "WAVE  SIZE  STATUS   DEVICES  SUCCEEDED  FAILED  RUNNING  PENDING  SUCCESS AT      ABORT AT\n\
             1     20%   passed   1        1          0       0        0        100%, approval  10% (after 10)\n\
             2     100%  running  4        1          0       2        1        100%            never\n"
        );
        let details = rollout_table(&palette, &rollout).render(&palette);
        assert!(details.contains("artifact    m 2.0.0\n"), "{details}");
        assert!(details.contains("rollback    m 1.0.0\n"), "{details}");
        assert!(
            details.contains("limits      10 at once, 5/s, 600 s per device, 1 attempt(s), offline devices wait 86400 s\n"),
            "{details}"
        );
        let list = rollouts_table(&palette, &[rollout]).render(&palette);
        assert!(list.starts_with("ROLLOUT ID  ARTIFACT"), "{list}");
        assert!(
            list.contains("fw-2        m 2.0.0   running  2/2   5"),
            "{list}"
        );
    }
}
