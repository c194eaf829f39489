//! The `fleethub` command: runs the hub (`serve`) and prints connection strings for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fleethub_hub::{HubConfig, HubLimits};
use fleethub_store::{SqliteStore, SqliteStoreOptions, Store};

#[derive(Parser)]
#[command(
    name = "fleethub",
    version,
    about = "A self-hosted IoT hub, wire-compatible with Azure IoT Hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: MQTT (TLS) for devices, HTTPS for the REST API and MQTT over WebSocket.
    Serve(ServeArgs),
    /// Print a service connection string for a local hub's shared access policy.
    ConnectionString(ConnectionStringArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the hub keeps its database, CA and certificates (created if missing).
    #[arg(long, default_value = "./fleethub-data", env = "FLEETHUB_DATA_DIR")]
    data_dir: PathBuf,
    /// A name devices and services use to reach the hub; repeat for several. The server certificate covers
    /// each, plus localhost and 127.0.0.1.
    #[arg(long = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,
    /// Address of the MQTT/TLS listener.
    #[arg(long, default_value = "0.0.0.0:8883", value_name = "ADDR:PORT")]
    mqtt_listen: SocketAddr,
    /// Address of the HTTPS listener (REST API and MQTT over WebSocket).
    #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR:PORT")]
    https_listen: SocketAddr,
    /// Largest MQTT packet accepted, in bytes.
    #[arg(long, default_value_t = HubLimits::default().max_packet_size, value_name = "BYTES")]
    max_packet_size: usize,
    /// Seconds to finish in-flight work on SIGTERM/SIGINT before exiting.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    shutdown_grace: u64,
}

#[derive(clap::Args)]
struct ConnectionStringArgs {
    /// The data directory of the hub (the one given to `fleethub serve`).
    #[arg(long, default_value = "./fleethub-data", env = "FLEETHUB_DATA_DIR")]
    data_dir: PathBuf,
    /// Which shared access policy: iothubowner, service, registryRead, registryReadWrite or device.
    #[arg(long, default_value = "iothubowner")]
    policy: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_logging();
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
            Command::Serve(args) => serve(args).await,
            Command::ConnectionString(args) => connection_string(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn install_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let json = std::env::var("FLEETHUB_LOG_FORMAT").is_ok_and(|format| format == "json");
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut hostnames = args.hostnames;
    if hostnames.is_empty() {
        hostnames.push("localhost".into());
    }
    let config = HubConfig {
        data_dir: args.data_dir,
        hostnames,
        mqtt_listen: args.mqtt_listen,
        https_listen: args.https_listen,
        limits: HubLimits {
            max_packet_size: args.max_packet_size,
            ..HubLimits::default()
        },
        twin_limits: Default::default(),
    };
    let hub = fleethub_hub::start(config).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    hub.shutdown(Duration::from_secs(args.shutdown_grace)).await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("wait for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

async fn connection_string(args: ConnectionStringArgs) -> anyhow::Result<()> {
    let database = args.data_dir.join(fleethub_hub::DATABASE_FILE);
    if !Path::new(&database).exists() {
        bail!(
            "{} holds no hub yet: start one with `fleethub serve --data-dir {}` first",
            args.data_dir.display(),
            args.data_dir.display()
        );
    }
    let store = SqliteStore::open(&database, SqliteStoreOptions::default())
        .context("open the hub's store")?;
    let policies = store
        .policies()
        .await
        .context("read the shared access policies")?;
    let Some(policy) = policies
        .iter()
        .find(|policy| policy.key_name == args.policy)
    else {
        let names: Vec<&str> = policies
            .iter()
            .map(|policy| policy.key_name.as_str())
            .collect();
        bail!(
            "no shared access policy {:?}; this hub has: {}",
            args.policy,
            names.join(", ")
        );
    };
    let hostname = store
        .get_meta(fleethub_hub::META_HOSTNAME)
        .await?
        .unwrap_or_else(|| "localhost".into());
    let port = store
        .get_meta(fleethub_hub::META_HTTPS_PORT)
        .await?
        .unwrap_or_else(|| "443".into());
    let host = if port == "443" {
        hostname
    } else {
        format!("{hostname}:{port}")
    };
    println!(
        "HostName={host};SharedAccessKeyName={};SharedAccessKey={}",
        policy.key_name, policy.primary_key
    );
    Ok(())
}
