//! `fleethub-agent`: the firmware update agent as a process. Runs until SIGINT or SIGTERM; after applying an
//! update it "reboots" by re-executing itself with the same arguments and environment.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fleethub_agent::{Agent, AgentConfig, AgentExit, DEFAULT_BOOT_LIMIT, DEFAULT_INITIAL_VERSION};
use fleethub_protocol::firmware::PublicKey;

#[derive(Parser)]
#[command(
    name = "fleethub-agent",
    about = "The firmware update agent: answers firmwareUpdate, downloads, verifies, writes an A/B slot, boots it, health-checks it, commits or rolls back"
)]
struct Args {
    /// The device's connection string (or FLEETHUB_DEVICE_CONNECTION_STRING).
    #[arg(
        long,
        env = "FLEETHUB_DEVICE_CONNECTION_STRING",
        hide_env_values = true
    )]
    connection_string: String,
    /// The CA certificate(s) to trust for the hub and for downloads (a fleethub hub's DATA_DIR/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Where the slots, boot.json and downloads live.
    #[arg(long)]
    state_dir: PathBuf,
    /// This device's hardware model; artifacts for another model are refused.
    #[arg(long)]
    model: String,
    /// Only accept artifacts whose manifest is signed with this key (SPKI PEM or JWK).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// The health check for new firmware whose manifest names none (run with sh -c).
    #[arg(long)]
    health_check: Option<String>,
    /// Boots of new firmware allowed without a passing health check before rolling back.
    #[arg(long, default_value_t = DEFAULT_BOOT_LIMIT)]
    boot_limit: u32,
    /// The version of the factory firmware, reported until an update is committed.
    #[arg(long, default_value = DEFAULT_INITIAL_VERSION)]
    initial_version: String,
}

fn main() -> anyhow::Result<()> {
    install_logging();
    // reqwest and rustls are built without a default crypto provider; the agent passes ring explicitly, and
    // this covers anything that asks for the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let exit = runtime.block_on(run(config))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    match exit {
        AgentExit::Stopped => Ok(()),
        AgentExit::Reboot => Err(reboot()),
    }
}

fn config(args: &Args) -> anyhow::Result<AgentConfig> {
    let mut config = AgentConfig::new(
        args.connection_string.clone(),
        args.state_dir.clone(),
        args.model.clone(),
    )
    .with_boot_limit(args.boot_limit)
    .with_initial_version(args.initial_version.clone());
    if let Some(path) = &args.ca {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("read the CA certificate {}", path.display()))?;
        config = config.with_ca_pem(pem);
    }
    if let Some(path) = &args.public_key {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the public key {}", path.display()))?;
        let key = PublicKey::parse(&text)
            .with_context(|| format!("read the public key {}", path.display()))?;
        config = config.with_public_key(key);
    }
    if let Some(command) = &args.health_check {
        config = config.with_health_check(command.clone());
    }
    Ok(config)
}

async fn run(config: AgentConfig) -> anyhow::Result<AgentExit> {
    let agent = Agent::start(config).await.context("start the agent")?;
    let stopper = agent.stopper();
    let mut waiting = std::pin::pin!(agent.wait());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    let exit = tokio::select! {
        exit = &mut waiting => exit,
        _ = tokio::signal::ctrl_c() => {
            stopper.stop();
            waiting.await
        }
        _ = terminate.recv() => {
            stopper.stop();
            waiting.await
        }
    };
    exit.context("the agent stopped")
}

/// The simulated reboot: replace this process with a fresh run of the same executable, arguments and
/// environment. Returns only if that fails.
fn reboot() -> anyhow::Error {
    let executable = match std::env::current_exe() {
        Ok(executable) => executable,
        Err(error) => return anyhow::Error::new(error).context("find the agent's executable"),
    };
    tracing::info!(executable = %executable.display(), "rebooting: re-executing the agent");
    let error = std::process::Command::new(&executable)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::Error::new(error).context(format!("re-execute {}", executable.display()))
}

fn install_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}
