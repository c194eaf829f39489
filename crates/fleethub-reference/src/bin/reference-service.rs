//! The reference service app: `reference-service --hub "HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."
//! --ca ca.pem DEVICE_ID`. Invokes firmwareUpdate and polls the twin every 500 ms until it is applied.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use fleethub_protocol::ids::DeviceId;
use fleethub_reference::service_app::{ServiceAppOptions, print_progress, run};
use fleethub_service::{ServiceClient, ServiceClientOptions};

#[derive(Parser)]
#[command(
    about = "The firmware-update reference service: starts an update and follows it through the twin"
)]
struct Args {
    /// A service connection string with ServiceConnect (or FLEETHUB_CONNECTION_STRING).
    #[arg(long, env = "FLEETHUB_CONNECTION_STRING")]
    hub: String,
    /// The CA certificate to trust (a fleethub hub's DATA_DIR/ca.pem); omit for Azure IoT Hub.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The firmware image's URI, passed to the device.
    #[arg(long, default_value = "https://example.com/firmware/v2.0.bin")]
    package_uri: String,
    device_id: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca_pem = args
        .ca
        .as_ref()
        .map(std::fs::read_to_string)
        .transpose()
        .context("read the CA certificate")?;
    let service = ServiceClient::from_connection_string(
        &args.hub,
        ServiceClientOptions {
            ca_pem,
            ..Default::default()
        },
    )?;
    let device_id: DeviceId = args.device_id.parse()?;
    let options = ServiceAppOptions {
        package_uri: args.package_uri,
        ..ServiceAppOptions::default()
    };
    run(&service, &device_id, &options, print_progress).await?;
    Ok(())
}
