//! The reference device app: `reference-device --connection-string "HostName=...;DeviceId=...;SharedAccessKey=..."
//! [--ca ca.pem] [--port 8883] [--websocket] [--step-seconds 2]`. Runs until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fleethub_device::{DeviceClientOptions, Transport};
use fleethub_reference::device_app::{DeviceAppOptions, run};

#[derive(Parser)]
#[command(
    about = "The firmware-update reference device: answers firmwareUpdate and reports its progress"
)]
struct Args {
    /// The device's connection string (or FLEETHUB_DEVICE_CONNECTION_STRING).
    #[arg(long, env = "FLEETHUB_DEVICE_CONNECTION_STRING")]
    connection_string: String,
    /// The CA certificate to trust (a fleethub hub's DATA_DIR/ca.pem).
    #[arg(long)]
    ca: PathBuf,
    /// MQTT port to dial instead of 8883 (443 with --websocket).
    #[arg(long)]
    port: Option<u16>,
    /// MQTT over WebSocket instead of MQTT over TLS.
    #[arg(long)]
    websocket: bool,
    /// Seconds each simulated step (download, apply) takes.
    #[arg(long, default_value_t = 2)]
    step_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca_pem =
        std::fs::read_to_string(&args.ca).with_context(|| format!("read {}", args.ca.display()))?;
    let mut options = DeviceClientOptions::default().with_ca_pem(ca_pem);
    if args.websocket {
        options = options.with_transport(Transport::WebSocket);
    }
    if let Some(port) = args.port {
        options = options.with_port(port);
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run(
        &args.connection_string,
        options,
        DeviceAppOptions {
            step: Duration::from_secs(args.step_seconds),
            quiet: false,
        },
        stop,
    )
    .await
}
