//! The `fleethub` command: runs the hub (`serve`), prints its connection strings, and drives a hub (this one
//! or Azure IoT Hub) through the service SDK: devices and modules, twins, direct methods, queries, jobs,
//! configurations, the change feed, firmware artifacts and rollouts.
//!
//! Exit status: 0 when the command did what was asked, 1 when it failed (the message on stderr says what was
//! wrong and what to do), 2 for a usage error (clap's).

mod audit;
mod backup;
mod c2d;
mod certificate;
mod config;
mod demo;
mod device;
mod failure;
mod firmware;
mod hub;
mod job;
mod json_input;
mod local_hub;
mod method;
mod monitor;
mod output;
mod policy;
mod query;
mod rollout;
mod route;
mod serve;
mod sim;
mod twin;
mod watch;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::builder::styling::{AnsiColor, Style};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleethub",
    version,
    about = "A self-hosted IoT hub, wire-compatible with Azure IoT Hub",
    after_help = "The device, twin, method, c2d, query, job, config, firmware, rollout, route, audit, policy and sim commands find the hub from --hub, --data-dir, \
                  FLEETHUB_CONNECTION_STRING or FLEETHUB_DATA_DIR (see `fleethub device --help`) and print \
                  tables, or JSON with --output json."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: MQTT (TLS) for devices, HTTPS for the REST API and MQTT over WebSocket.
    Serve(serve::ServeArgs),
    /// Print a service connection string for a local hub's shared access policy.
    ConnectionString(local_hub::ConnectionStringArgs),
    /// Devices and modules in the identity registry: create, show, list, delete, connection strings.
    Device(device::DeviceCommand),
    /// Device and module twins: show, patch, replace, and watch changes as they happen.
    Twin(twin::TwinCommand),
    /// Direct methods: invoke one on a connected device or module.
    Method(method::MethodCommand),
    /// Cloud-to-device messages: send one to a device's queue, purge a queue, read delivery feedback.
    C2d(c2d::C2dCommand),
    /// Run an IoT Hub query and print every result (follows continuation tokens).
    Query(query::QueryCommand),
    /// Jobs: call a method on, or patch the twins of, many devices; show, list, cancel, watch them run.
    Job(job::JobCommand),
    /// Configurations (automatic device management): desired properties for the twins a condition targets.
    Config(config::ConfigCommand),
    /// Firmware artifacts: make a signing key, upload (signed here) and manage images, grant downloads.
    Firmware(firmware::FirmwareCommand),
    /// Firmware rollouts: send an artifact to many devices in waves; show, pause, resume, approve, abort, watch.
    Rollout(rollout::RolloutCommand),
    /// Message routing: routes, webhook and file endpoints, enrichments, the fallback route, dead letters
    /// (like `az iot hub message-route`).
    Route(route::RouteCommand),
    /// Print device-to-cloud messages and twin, connection and lifecycle events as they arrive (like `az iot
    /// hub monitor-events`).
    MonitorEvents(monitor::MonitorArgs),
    /// Run the reference firmware-update workflow end to end on a hub started just for it.
    Demo(demo::DemoArgs),
    /// The audit log: which policy changed what, when, from where, with what result (newest first).
    Audit(audit::AuditCommand),
    /// Shared access policies: regenerate a key (a fleethub extension).
    Policy(policy::PolicyCommand),
    /// X.509 CA certificates for device authentication: upload, list, show, delete, proof of possession;
    /// make test CA and device certificates (like `az iot hub certificate`).
    Certificate(certificate::CertificateCommand),
    /// Simulate N devices against a hub: real MQTT/TLS connections that send telemetry, report properties,
    /// answer direct methods, run firmware updates and churn; registered and removed in bulk.
    Sim(sim::SimArgs),
    /// Copy a hub's data directory, consistently, while the hub serves it (files listed with SHA-256).
    Backup(backup::BackupArgs),
    /// Lay a backup out as a new data directory, after checking every file against its manifest.
    Restore(backup::RestoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => tracing::Level::INFO,
        // The demo narrates what happens; the agent's own warnings (an expected rollback) would repeat it.
        Command::Demo(_) => tracing::Level::ERROR,
        _ => tracing::Level::WARN,
    };
    serve::install_logging(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Query(command) => query::run(command).await,
            Command::ConnectionString(args) => local_hub::connection_string(args).await,
            Command::Device(command) => device::run(command).await,
            Command::Twin(command) => twin::run(command).await,
            Command::Method(command) => method::run(command).await,
            Command::C2d(command) => c2d::run(command).await,
            Command::Job(command) => job::run(command).await,
            Command::Config(command) => config::run(command).await,
            Command::Firmware(command) => firmware::run(command).await,
            Command::Rollout(command) => rollout::run(command).await,
            Command::Route(command) => route::run(command).await,
            Command::MonitorEvents(args) => monitor::run(args).await,
            Command::Sim(args) => sim::run(args).await,
            Command::Audit(command) => audit::run(command).await,
            Command::Policy(command) => policy::run(command).await,
            Command::Certificate(command) => certificate::run(command).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
            let style = if std::io::stderr().is_terminal() && !no_color {
                AnsiColor::Red.on_default().bold()
            } else {
                Style::new()
            };
            eprintln!("{}error:{} {error:#}", style.render(), style.render_reset());
            ExitCode::FAILURE
        }
    }
}
