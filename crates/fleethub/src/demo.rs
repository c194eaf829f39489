//! `fleethub demo`: the reference firmware-update workflow end to end on a fresh machine, in one command.
//! Starts a hub on loopback (free ports, a temporary or given data directory), registers a device, runs the
//! reference device app and service app against it, shows the update going through its states, prints the
//! final reported properties, and shuts everything down.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use fleethub_device::DeviceClientOptions;
use fleethub_hub::HubConfig;
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::Device;
use fleethub_reference::service_app::{Progress, ServiceAppOptions};
use fleethub_reference::{STATES, device_app, service_app, status_message};
use fleethub_service::{ServiceClient, ServiceClientOptions};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the hub's data here instead of a temporary directory (removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds each simulated firmware step takes on the device (the service polls every 0.5 s, as the
    /// tutorial does, so shorter steps may not all be seen).
    #[arg(long, default_value_t = 1.0)]
    step_seconds: f64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temporary = tempfile::tempdir().context("create a temporary data directory")?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temporary.path().join("data"));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = HubConfig {
        mqtt_listen: loopback,
        https_listen: loopback,
        ..HubConfig::for_loopback(data_dir.clone())
    };
    let hub = fleethub_hub::start(config)
        .await
        .context("start the demo hub")?;
    println!(
        "Hub running: MQTT on {}, HTTPS on {}, data in {}",
        hub.mqtt_address,
        hub.https_address,
        data_dir.display()
    );

    let outcome = run_workflow(&hub, &args).await;
    hub.shutdown(Duration::from_secs(5)).await;
    let reported = outcome?;
    println!("Final reported properties:");
    println!(
        "{}",
        serde_json::to_string_pretty(&reported).expect("JSON always serialises")
    );
    Ok(())
}

async fn run_workflow(
    hub: &fleethub_hub::RunningHub,
    args: &DemoArgs,
) -> anyhow::Result<serde_json::Value> {
    let owner = hub
        .services
        .policies()
        .iter()
        .find(|policy| policy.key_name == "iothubowner")
        .cloned()
        .context("the hub has its iothubowner policy")?;
    let connection_string = format!(
        "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
        hub.https_address.port(),
        owner.primary_key
    );
    let service_options = ServiceClientOptions {
        ca_pem: Some(hub.ca_pem.clone()),
        ..ServiceClientOptions::default()
    };
    let service = ServiceClient::from_connection_string(&connection_string, service_options)?;

    let device_id: DeviceId = "demo-device".parse().expect("a valid id");
    let device = service
        .create_device(&Device::new(device_id.clone()))
        .await
        .context("register the demo device")?;
    let device_connection_string = service
        .device_connection_string(&device)
        .context("the hub generated the device's keys")?;
    println!("Registered device {device_id}");

    let client_options = DeviceClientOptions::default()
        .with_ca_pem(hub.ca_pem.clone())
        .with_port(hub.mqtt_address.port());
    let app_options = device_app::DeviceAppOptions {
        step: Duration::from_secs_f64(args.step_seconds.max(0.0)),
        quiet: true,
    };
    let (stop_device, device_stopped) = tokio::sync::oneshot::channel::<()>();
    let device_app = tokio::spawn(async move {
        device_app::run(
            &device_connection_string,
            client_options,
            app_options,
            async {
                let _ = device_stopped.await;
            },
        )
        .await
    });
    // The device app reports standBy once connected; wait for it so the method finds the device online.
    let ready_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let twin = service.get_twin(&device_id).await?;
        let reported = twin
            .properties
            .map(|properties| properties.reported)
            .unwrap_or_default();
        if reported.get("firmwareStatus").is_some() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < ready_deadline,
            "the device app did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("Device app connected; invoking firmwareUpdate");

    let bar = ProgressBar::new(STATES.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    // Without a terminal the bar is hidden; the tutorial's lines still go to the log.
    let interactive = std::io::stdout().is_terminal();
    let line = |text: String| {
        if interactive {
            bar.println(text)
        } else {
            println!("{text}")
        }
    };
    let result = service_app::run(
        &service,
        &device_id,
        &ServiceAppOptions::default(),
        |progress| match progress {
            Progress::MethodAnswered { status, payload } => line(format!(
                "Method response: status {status}, payload {payload}"
            )),
            Progress::Status { status, .. } => {
                let position = STATES
                    .iter()
                    .position(|(known, _)| known == status)
                    .map_or(0, |index| index + 1);
                bar.set_position(position as u64);
                bar.set_message(status_message(status));
                line(status_message(status).to_owned());
            }
        },
    )
    .await;
    bar.finish_and_clear();
    let _ = stop_device.send(());
    device_app.await.context("the device app task")??;
    result
}
