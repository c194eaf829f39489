//! `fleethub sim`: N simulated devices in one process against any hub (found like every client command),
//! each a real MQTT/TLS connection with its own identity through the device SDK.
//!
//! Phases, each with a progress bar on a terminal: register the fleet through the bulk registry API
//! (`registry.rs`), connect every device within a limit of TLS handshakes in flight (`device.rs`), run the
//! devices (telemetry, reported properties, direct methods, simulated firmware updates (`firmware.rs`),
//! churn) with a live status line until `--duration` or Ctrl-C, disconnect them, and delete them unless
//! `--keep`. Then a summary (`stats.rs`): a table, or JSON with `--output json`.
//!
//! Shutdown: one `watch` flag is the stop; every device task, update task and the churn controller end on
//! it. A first Ctrl-C sets it (the run then disconnects and deletes as usual and exits 0); a second one
//! exits at once, leaving the devices registered.

mod device;
mod firmware;
mod random;
mod registry;
mod stats;

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use fleethub_agent::DownloadPolicy;
use fleethub_agent::verify::Trust;
use fleethub_device::{ConnectError, DeviceClientOptions};
use fleethub_service::protocol::firmware::{PublicKey, check_name};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::device::{Behaviour, ConnectFailure, Fleet, Readiness, SimDevice};
use self::firmware::FirmwareSimulation;
use self::random::Random;
use self::stats::{Counters, Summary, status_line};
use crate::hub::{HUB_HELP, Hub, HubArgs, HubOrigin, Trust as HubTrust};
use crate::local_hub;
use crate::output::{Cell, OutputFormat, Palette, Table, print_json};

/// The largest telemetry body: IoT Hub's 256 KB per message, less room for the message's properties.
const MAX_PAYLOAD_BYTES: u32 = 255 * 1024;
/// How often the status line is redrawn on a terminal.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a status line is printed when stderr is not a terminal.
const STATUS_LINE_INTERVAL: Duration = Duration::from_secs(10);
/// Device tasks get this long to disconnect after the stop before they are abandoned.
const DISCONNECT_GRACE: Duration = Duration::from_secs(60);
/// The port Azure IoT Hub (and a hub started without `--mqtt-listen`) serves MQTT on.
const DEFAULT_MQTT_PORT: u16 = 8883;

#[derive(clap::Args)]
#[command(after_long_help = sim_help())]
pub(crate) struct SimArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// How many simulated devices
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    devices: u32,
    /// Device ids are PREFIX and a six-digit index (sim-000000, sim-000001, ...), the same on every run
    #[arg(long, default_value = "sim-", value_name = "PREFIX")]
    prefix: String,
    /// The hardware model the devices report as properties.reported.firmware.model: artifacts for it install
    #[arg(long, default_value = "sim-board", value_name = "MODEL")]
    model: String,
    /// The firmware version new devices report (firmware.currentVersion); devices kept from an earlier run
    /// keep the version they reported
    #[arg(long, default_value = "1.0.0", value_name = "VERSION")]
    firmware_version: String,
    /// Each device patches its reported properties every SECONDS (fractions allowed; 0: never)
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = parse_seconds)]
    report_every: Duration,
    /// Each device sends a telemetry message every SECONDS (fractions allowed; 0: never)
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = parse_seconds)]
    telemetry_every: Duration,
    /// Size of each telemetry body: JSON (deviceId, sequence, temperature) padded to BYTES when that is more
    /// than its ~60 bytes; at most 261120
    #[arg(long, default_value_t = 256, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAYLOAD_BYTES)))]
    payload_bytes: u32,
    /// Every SECONDS, --churn-fraction of the devices disconnect and reconnect (0: no churn)
    #[arg(long, default_value = "0", value_name = "SECONDS", value_parser = parse_seconds)]
    churn_every: Duration,
    /// The fraction of the devices each churn round disconnects, above 0 and at most 1
    #[arg(long, default_value = "0.1", value_name = "FRACTION", value_parser = parse_churn_fraction)]
    churn_fraction: f64,
    /// The fraction of firmware updates that fail after the image was checked, 0 to 1: half report failed
    /// (writing the slot failed), half rolledBack (the health check failed), with a reason saying so
    #[arg(long, default_value = "0", value_name = "RATE", value_parser = parse_rate)]
    firmware_failure_rate: f64,
    /// Firmware manifests must verify with this public key (`firmware keygen`'s .pub.pem or .pub.jwk);
    /// without it they are read unverified, as the agent does without --public-key
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// Stop after SECONDS once the devices are connected [default: run until Ctrl-C]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Leave the devices registered at the end (a later run with the same --prefix reuses them)
    #[arg(long)]
    keep: bool,
    /// Connect from these local addresses, spread over the devices (e.g. 127.0.0.1,127.0.0.2,127.0.0.3):
    /// one source and destination address pair has only ~28k ports
    #[arg(long, value_delimiter = ',', value_name = "ADDRESS,...")]
    source_addresses: Vec<IpAddr>,
    /// TLS handshakes in flight at once while connecting
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connect_concurrency: u32,
    /// The MQTT port devices dial [default: the port the local hub of --data-dir recorded, else 8883]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    mqtt_port: Option<u16>,
}

fn sim_help() -> String {
    format!(
        "\
Devices are registered through the bulk registry API (importMode update: existing devices are reused with new
keys) with the tag sim: true and reported firmware (model, version), so queries, jobs and rollouts can target
them (\"tags.sim = true\"). They answer the direct methods ping (echoes the payload) and firmwareUpdate (the
firmware agent's checks and reports, simulated: nothing is written), and 404 to anything else.
Ctrl-C stops: devices disconnect and are deleted unless --keep; a second Ctrl-C exits at once.

{HUB_HELP}"
    )
}

/// Seconds as a duration: a non-negative number, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?}: give 0 or a positive number of seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} seconds is too long"))
}

/// A probability: 0 to 1.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!(
            "{text:?}: give a fraction from 0 to 1 (0.1 is 10 %)"
        ));
    }
    Ok(rate)
}

fn parse_churn_fraction(text: &str) -> Result<f64, String> {
    let fraction = parse_rate(text)?;
    if fraction == 0.0 {
        return Err(format!(
            "{text:?}: give a fraction above 0 (to turn churn off, leave --churn-every out)"
        ));
    }
    Ok(fraction)
}

/// `Some` for a positive period, `None` for 0 (off).
fn period(every: Duration) -> Option<Duration> {
    (!every.is_zero()).then_some(every)
}

pub(crate) async fn run(args: SimArgs) -> anyhow::Result<()> {
    let count = args.devices as usize;
    // Arguments first: nothing is registered when they are wrong.
    for index in [0, count - 1] {
        registry::device_id(&args.prefix, index)
            .map_err(|error| anyhow!("--prefix {:?}: {error}", args.prefix))?;
    }
    check_name("model", &args.model).map_err(|error| anyhow!("--model: {error}"))?;
    check_name("version", &args.firmware_version)
        .map_err(|error| anyhow!("--firmware-version: {error}"))?;
    let public_key = args
        .public_key
        .as_deref()
        .map(read_public_key)
        .transpose()?;

    let hub = args.hub.connect().await?;
    let ca_pem = device_ca(&hub)?;
    let mqtt_port = match (args.mqtt_port, &hub.origin) {
        (Some(port), _) => port,
        (None, HubOrigin::DataDir(data_dir)) => local_hub::mqtt_port(data_dir)
            .await?
            .unwrap_or(DEFAULT_MQTT_PORT),
        (None, _) => DEFAULT_MQTT_PORT,
    };
    let host_name = crate::failure::host_without_port(hub.host()).to_owned();
    let identities = registry::identities(&args.prefix, count)?;

    let (stop_sender, stop) = watch::channel(false);
    let interrupted = Arc::new(AtomicBool::new(false));
    let interrupts = tokio::spawn(follow_interrupts(
        stop_sender.clone(),
        Arc::clone(&interrupted),
    ));
    let outcome = simulate(
        &args,
        &hub,
        SimulationSetup {
            ca_pem,
            mqtt_port,
            host_name,
            public_key,
            identities: &identities,
            stop_sender: &stop_sender,
            stop,
        },
    )
    .await;
    let (mut summary, connect_failure) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            interrupts.abort();
            return Err(error);
        }
    };
    if interrupted.load(Ordering::Relaxed) {
        summary.stopped_by = "interrupted";
    }

    let mut deleted = Ok(());
    if args.keep {
        summary.kept = true;
    } else {
        let bar = count_bar(count, "deleting");
        deleted = registry::delete(&hub, &identities, &bar).await;
        bar.finish_and_clear();
        if deleted.is_ok() {
            summary.deleted = count;
        }
    }
    // Until here a second Ctrl-C still exits at once.
    interrupts.abort();
    print_summary(&summary, args.hub.output)?;
    deleted.map_err(|error| {
        error.context(format!(
            "the simulated devices {}* may still be registered: run `fleethub sim` with the same --prefix and --devices again to delete them",
            args.prefix
        ))
    })?;
    if let Some(connect_failure) = connect_failure {
        bail!("no simulated device could connect: {connect_failure}");
    }
    Ok(())
}

struct SimulationSetup<'a> {
    ca_pem: String,
    mqtt_port: u16,
    host_name: String,
    public_key: Option<PublicKey>,
    identities: &'a [registry::Identity],
    stop_sender: &'a watch::Sender<bool>,
    stop: watch::Receiver<bool>,
}

/// Registers, connects and runs the fleet until the stop, and disconnects it. Returns what it did and, when
/// no device connected, why the first one could not.
async fn simulate(
    args: &SimArgs,
    hub: &Hub,
    setup: SimulationSetup<'_>,
) -> anyhow::Result<(Summary, Option<String>)> {
    let SimulationSetup {
        ca_pem,
        mqtt_port,
        host_name,
        public_key,
        identities,
        stop_sender,
        mut stop,
    } = setup;
    let count = identities.len();

    let registration = registry::Registration {
        model: args.model.clone(),
        firmware_version: args.firmware_version.clone(),
    };
    let bar = count_bar(count, "registering");
    let registered = registry::register(hub, identities, &registration, &bar, &stop).await;
    bar.finish_and_clear();
    let registered = registered.map_err(|error| {
        error.context(format!(
            "devices already registered stay: a later `fleethub sim --prefix {}` reuses and deletes them",
            args.prefix
        ))
    })?;
    if !registered {
        // Interrupted while registering: nothing ran.
        let nothing = Summary::new(
            count,
            args.prefix.clone(),
            0,
            &Default::default(),
            Duration::ZERO,
        );
        return Ok((nothing, None));
    }

    let policy = DownloadPolicy::default();
    let http = fleethub_agent::download::http_client(Some(&ca_pem), &policy)
        .context("set up the firmware download client")?;
    let fleet = Arc::new(Fleet {
        options: DeviceClientOptions::default()
            .with_ca_pem(ca_pem)
            .with_port(mqtt_port),
        behaviour: Behaviour {
            telemetry_every: period(args.telemetry_every),
            report_every: period(args.report_every),
            payload_bytes: args.payload_bytes as usize,
        },
        firmware: FirmwareSimulation {
            http,
            trust: Trust {
                public_key,
                model: args.model.clone(),
            },
            policy,
            initial_version: args.firmware_version.clone(),
            failure_rate: args.firmware_failure_rate,
            random: Random::from_os()?,
        },
        counters: Counters::default(),
        random: Random::from_os()?,
        handshakes: Semaphore::new(args.connect_concurrency as usize),
        stop: stop.clone(),
    });
    let devices: Vec<Arc<SimDevice>> = identities
        .iter()
        .enumerate()
        .map(|(index, identity)| {
            let source = (!args.source_addresses.is_empty())
                .then(|| args.source_addresses[index % args.source_addresses.len()]);
            Arc::new(SimDevice::new(
                identity.device_id.clone(),
                &host_name,
                &identity.primary_key,
                source,
            ))
        })
        .collect();

    // Connect: every device task starts, and waits for a handshake slot.
    let (ready_sender, mut ready) = mpsc::channel(1024);
    let mut tasks = JoinSet::new();
    for device in &devices {
        tasks.spawn(Arc::clone(device).run(Arc::clone(&fleet), ready_sender.clone()));
    }
    drop(ready_sender);
    let bar = count_bar(count, "connecting");
    let mut first_failure = None;
    let mut answered = 0;
    while answered < count {
        let readiness = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            readiness = ready.recv() => readiness,
        };
        match readiness {
            Some(Readiness::Connected) => bar.inc(1),
            Some(Readiness::Failed(error)) => {
                first_failure.get_or_insert(error);
            }
            None => break,
        }
        answered += 1;
    }
    bar.finish_and_clear();
    drop(ready);
    let first_failure = first_failure.map(|error| format!("{error}{}", connect_hint(&error)));
    if let Some(error) = &first_failure
        && fleet.counters.connected() > 0
    {
        let failed = fleet.counters.snapshot().connect_failures;
        eprintln!(
            "warning: {failed} of {count} simulated devices could not connect, the first: {error}"
        );
    }

    // Run until the duration is over or the stop.
    let started = Instant::now();
    if fleet.counters.connected() > 0 {
        let churn = period(args.churn_every).map(|every| {
            tokio::spawn(churn(
                devices.clone(),
                every,
                args.churn_fraction,
                Arc::clone(&fleet),
            ))
        });
        run_until_stopped(&fleet, count, args.duration, &mut stop).await;
        if let Some(churn) = churn {
            churn.abort();
        }
    }
    let at_stop = fleet.counters.snapshot();
    let ran_for = started.elapsed();
    stop_sender.send_replace(true);

    let bar = spinner(format!("disconnecting {} devices", at_stop.connected));
    let disconnected = tokio::time::timeout(DISCONNECT_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if disconnected.is_err() {
        tasks.abort_all();
    }
    bar.finish_and_clear();

    let summary = Summary::new(
        count,
        args.prefix.clone(),
        at_stop.connected,
        &fleet.counters.snapshot(),
        ran_for,
    );
    let no_device_connected = first_failure
        .filter(|_| at_stop.connected == 0 && at_stop.connect_failures as usize == count);
    Ok((summary, no_device_connected))
}

/// The live status line until `duration` has passed or the stop is set.
async fn run_until_stopped(
    fleet: &Fleet,
    count: usize,
    duration: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
) {
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| spinner(String::new()));
    let every = if terminal {
        STATUS_INTERVAL
    } else {
        STATUS_LINE_INTERVAL
    };
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    let mut before = fleet.counters.snapshot();
    let mut measured_at = Instant::now();
    let ends = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(ends);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            () = &mut ends => break,
            _ = ticks.tick() => {
                let now = fleet.counters.snapshot();
                let line = status_line(count, &before, &now, measured_at.elapsed());
                match &bar {
                    Some(bar) => bar.set_message(line),
                    None => eprintln!("{line}"),
                }
                before = now;
                measured_at = Instant::now();
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// Every `every`, tells `fraction` of the devices (drawn at random, at least one) to disconnect and
/// reconnect. A device in the middle of a firmware update sits the round out.
async fn churn(devices: Vec<Arc<SimDevice>>, every: Duration, fraction: f64, fleet: Arc<Fleet>) {
    let mut stop = fleet.stop.clone();
    let total = devices.len();
    let per_round = ((total as f64 * fraction).ceil() as usize).clamp(1, total);
    // A partial Fisher-Yates shuffle each round: `per_round` distinct devices without a new allocation.
    let mut order: Vec<usize> = (0..total).collect();
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        for picked in 0..per_round {
            let swap_with = picked + fleet.random.below((total - picked) as u64) as usize;
            order.swap(picked, swap_with);
            devices[order[picked]].churn.notify_one();
        }
    }
}

/// Sets the stop at the first Ctrl-C; exits at the second.
async fn follow_interrupts(stop: watch::Sender<bool>, interrupted: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    interrupted.store(true, Ordering::Relaxed);
    stop.send_replace(true);
    eprintln!(
        "stopping: the simulated devices disconnect and are deleted unless --keep (Ctrl-C again to quit at once)"
    );
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!(
            "error: interrupted twice: the simulated devices stay registered; a later `fleethub sim` with the same --prefix reuses and deletes them"
        );
        std::process::exit(130);
    }
}

/// The CA devices trust: the device SDK uses only the CA it is given, never the system's roots.
fn device_ca(hub: &Hub) -> anyhow::Result<String> {
    match &hub.trust {
        HubTrust::CaFlag(path) | HubTrust::DataDirCa(path) => {
            std::fs::read_to_string(path).with_context(|| format!("read the CA {}", path.display()))
        }
        HubTrust::SystemRoots => Err(anyhow!(
            "simulated devices need the CA that signed the hub's certificate: pass --ca FILE (for Azure IoT Hub, the PEM of DigiCert Global Root G2); the device SDK does not use the system's roots"
        )),
    }
}

fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow!("--public-key {}: {error}", path.display()))?;
    PublicKey::parse(&text).map_err(|error| {
        anyhow!(
            "--public-key {}: not a public key ({error}); give the .pub.pem or .pub.jwk of `fleethub firmware keygen`",
            path.display()
        )
    })
}

/// What to do about a failed connection, when the error says.
fn connect_hint(error: &ConnectFailure) -> &'static str {
    const TOO_MANY_OPEN_FILES: i32 = 24;
    const ADDRESS_NOT_AVAILABLE: i32 = 99;
    match error {
        ConnectFailure::Connect(ConnectError::Tcp { source, .. })
            if source.raw_os_error() == Some(TOO_MANY_OPEN_FILES) =>
        {
            "; raise the limit of open files (`ulimit -n 1048576`) or simulate fewer devices"
        }
        ConnectFailure::Connect(ConnectError::Tcp { source, .. })
            if source.raw_os_error() == Some(ADDRESS_NOT_AVAILABLE) =>
        {
            "; out of local ports, or a --source-addresses address is not on this machine: spread the devices over more addresses (--source-addresses 127.0.0.1,127.0.0.2,...; ~28k connections each)"
        }
        ConnectFailure::Connect(ConnectError::TcpRefused { .. }) => {
            "; nothing listens there: is the hub running, and is --mqtt-port right?"
        }
        ConnectFailure::Connect(ConnectError::ServerCertificateRejected { .. }) => {
            "; pass --ca FILE with the CA that signed the hub's certificate"
        }
        ConnectFailure::Connect(ConnectError::Refused { .. }) => {
            "; the hub refused the device's credentials"
        }
        _ => "",
    }
}

fn count_bar(length: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:12} [{bar:30}] {pos}/{len} ({per_sec})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn print_summary(summary: &Summary, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(summary);
    }
    let palette = Palette::for_stdout();
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    let removed = if summary.kept {
        "kept (--keep)".to_owned()
    } else {
        format!("{} deleted", summary.deleted)
    };
    let rows = [
        (
            "devices",
            format!(
                "{} ({}000000...), {} connected at the stop, {} could not connect",
                summary.devices, summary.prefix, summary.connected, summary.connect_failures
            ),
        ),
        (
            "ran",
            format!(
                "{:.1} s, stopped by {}",
                summary.duration_seconds, summary.stopped_by
            ),
        ),
        (
            "telemetry",
            format!(
                "{} sent ({:.1}/s), {} failed",
                summary.telemetry.sent, summary.telemetry.per_second, summary.telemetry.failed
            ),
        ),
        (
            "reported",
            format!(
                "{} patches ({:.1}/s), {} failed",
                summary.reports.sent, summary.reports.per_second, summary.reports.failed
            ),
        ),
        ("methods", format!("{} answered", summary.methods.answered)),
        (
            "firmware",
            format!(
                "{} updates: {} completed, {} failed, {} rolled back",
                summary.firmware.updates,
                summary.firmware.completed,
                summary.firmware.failed,
                summary.firmware.rolled_back
            ),
        ),
        (
            "churn",
            format!(
                "{} disconnected, {} reconnected",
                summary.churn.disconnects, summary.churn.reconnects
            ),
        ),
        ("registry", removed),
    ];
    for (name, value) in rows {
        table.row(vec![label(name), value.into()]);
    }
    table.print(&palette)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_rates_and_fractions_are_checked() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        for bad in ["-1", "soon", "inf", "NaN"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("0.1"), Ok(0.1));
        assert!(parse_rate("1.5").unwrap_err().contains("from 0 to 1"));
        assert!(parse_churn_fraction("0").unwrap_err().contains("above 0"));
        assert_eq!(period(Duration::ZERO), None);
    }
}
