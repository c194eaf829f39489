//! `fleethub demo`: the firmware-update workflow end to end on a fresh machine, in one command. Starts a hub on
//! loopback (free ports, a temporary or given data directory), makes a signing key, uploads a signed
//! firmware image, registers a device and runs the real firmware agent (`fleethub-agent`, in-process, its
//! A/B slots in the temporary directory) on it, then updates the device the way
//! `fleethub firmware update --watch` does: a signed download URL, the `firmwareUpdate` method, and every
//! state the device reports shown as it arrives from the change feed. A second update, to an image whose
//! health check fails, shows the agent rolling back to the firmware it ran before. Then it prints the final
//! reported properties and shuts everything down.
//!
//! `--simulated` runs the original tutorial instead: the reference device app (which only sleeps through
//! the steps) and the reference service app (which polls the twin).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use fleethub_agent::AgentConfig;
use fleethub_device::DeviceClientOptions;
use fleethub_hub::HubConfig;
use fleethub_protocol::firmware::{FirmwareManifest, SigningKey};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::Device;
use fleethub_reference::service_app::{Progress, ServiceAppOptions};
use fleethub_reference::{STATES, device_app, service_app, status_message};
use fleethub_service::protocol::changes::ChangeOperation;
use fleethub_service::{ArtifactUpload, ServiceClient, ServiceClientOptions, WatchOptions};
use indicatif::{ProgressBar, ProgressStyle};
use ring::rand::SecureRandom as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::firmware::update::{UpdateRequest, run as update};
use crate::hub::{Hub, HubOrigin, Trust};
use crate::output::{OutputFormat, Palette};

/// The demo device's hardware model, its factory firmware, and the two updates it is offered.
const MODEL: &str = "demo-board";
const FACTORY_VERSION: &str = "1.0.0";
const GOOD_VERSION: &str = "2.0.0";
const BAD_VERSION: &str = "2.1.0";
/// Size of the demo images.
const IMAGE_SIZE: usize = 1 << 20;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the hub's data here instead of a temporary directory (removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run the original tutorial instead: the reference device app simulates the update by sleeping, and the
    /// reference service app polls the twin.
    #[arg(long)]
    simulated: bool,
    /// With --simulated: seconds each simulated firmware step takes on the device (the service polls every
    /// 0.5 s, as the tutorial does, so shorter steps may not all be seen).
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

    let outcome = if args.simulated {
        run_workflow(&hub, &args).await
    } else {
        run_agent_workflow(&hub, temporary.path(), &data_dir).await
    };
    hub.shutdown(Duration::from_secs(5)).await;
    let mut reported = outcome?;
    if let Some(reported) = reported.as_object_mut() {
        // When each property changed is in the twin; here it would drown what the device says.
        reported.remove("$metadata");
    }
    println!("Final reported properties:");
    println!(
        "{}",
        serde_json::to_string_pretty(&reported).expect("JSON always serialises")
    );
    Ok(())
}

/// The iothubowner connection string of the demo hub and a service client for it.
fn service_client(hub: &fleethub_hub::RunningHub) -> anyhow::Result<ServiceClient> {
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
    Ok(ServiceClient::from_connection_string(
        &connection_string,
        service_options,
    )?)
}

/// The real thing: a signed artifact, the agent with A/B slots, an update followed from the change feed, and
/// an update that rolls back.
async fn run_agent_workflow(
    hub: &fleethub_hub::RunningHub,
    work_dir: &Path,
    data_dir: &Path,
) -> anyhow::Result<Value> {
    let client = service_client(hub)?;
    let cli_hub = Hub {
        client: client.clone(),
        origin: HubOrigin::DataDir(data_dir.to_owned()),
        trust: Trust::DataDirCa(data_dir.join("ca.pem")),
        policy: "iothubowner".to_owned(),
    };

    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow!("the operating system's random source failed"))?;
    let key = SigningKey::from_seed(seed);
    println!(
        "Made signing key {} (the private key stays here; the agent trusts the public key)",
        key.public_key().key_id()
    );
    publish(&client, &key, work_dir, GOOD_VERSION, None).await?;
    publish(
        &client,
        &key,
        work_dir,
        BAD_VERSION,
        Some("echo 'self-test failed: sensor bus not found' >&2; exit 1"),
    )
    .await?;

    let device_id: DeviceId = "demo-device".parse().expect("a valid id");
    let device = client
        .create_device(&Device::new(device_id.clone()))
        .await
        .context("register the demo device")?;
    let device_connection_string = client
        .device_connection_string(&device)
        .context("the hub generated the device's keys")?;
    println!("Registered device {device_id}");

    // Watch before the agent starts, so its first report cannot be missed.
    let mut changes = client
        .watch_changes(WatchOptions {
            device: Some(device_id.clone()),
            ..WatchOptions::default()
        })
        .await
        .context("watch the demo device")?;
    let agent_config = AgentConfig::new(
        device_connection_string,
        work_dir.join("agent-state"),
        MODEL,
    )
    .with_ca_pem(hub.ca_pem.clone())
    .with_device_options(
        DeviceClientOptions::default()
            .with_ca_pem(hub.ca_pem.clone())
            .with_port(hub.mqtt_address.port()),
    )
    .with_public_key(key.public_key())
    .with_initial_version(FACTORY_VERSION);
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(fleethub_agent::run_in_process(agent_config, async {
        let _ = agent_stopped.await;
    }));

    // The agent reports its model and version once connected: then the update can be sent.
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(change) = changes.next().await {
            let change = change?;
            if change.operation == ChangeOperation::UpdateTwin
                && change.body["properties"]["reported"]["firmware"]["model"].is_string()
            {
                return Ok::<_, anyhow::Error>(());
            }
        }
        Err(anyhow!("the change feed ended"))
    })
    .await;
    drop(changes);
    let outcome = match ready {
        Ok(Ok(())) => update_twice(&cli_hub, &device_id).await,
        Ok(Err(error)) => Err(error.context("wait for the agent")),
        Err(_) => Err(anyhow!("the firmware agent did not come up within 30 s")),
    };
    let _ = stop_agent.send(());
    agent
        .await
        .context("the agent task")?
        .context("the firmware agent")?;
    outcome?;
    let twin = client.get_twin(&device_id).await?;
    Ok(twin
        .properties
        .map(|properties| Value::Object(properties.reported))
        .unwrap_or_default())
}

async fn update_twice(hub: &Hub, device_id: &DeviceId) -> anyhow::Result<()> {
    let palette = Palette::for_stdout();
    let request = |version: &str| UpdateRequest {
        device: device_id.clone(),
        model: Some(MODEL.to_owned()),
        version: version.to_owned(),
        grant_for: Duration::from_secs(600),
        watch: true,
        timeout: Duration::from_secs(120),
    };
    println!(
        "\nAgent running firmware {FACTORY_VERSION}; updating to {GOOD_VERSION} \
         (`fleethub firmware update {device_id} --version {GOOD_VERSION} --watch`)"
    );
    update(hub, OutputFormat::Table, &palette, request(GOOD_VERSION)).await?;
    println!("Firmware {GOOD_VERSION} committed.");
    println!("\nUpdating to {BAD_VERSION}, whose health check fails on this device:");
    match update(hub, OutputFormat::Table, &palette, request(BAD_VERSION)).await {
        Ok(()) => Err(anyhow!(
            "the update to {BAD_VERSION} completed although its health check fails"
        )),
        Err(error) if error.to_string().contains("rolledBack") => {
            println!("As expected: {error}");
            println!("The device still runs {GOOD_VERSION}.\n");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Makes a 1 MiB image for `version`, signs its manifest with `key` and uploads it.
async fn publish(
    client: &ServiceClient,
    key: &SigningKey,
    work_dir: &Path,
    version: &str,
    health_check: Option<&str>,
) -> anyhow::Result<()> {
    // Deterministic bytes that differ per version: a SHA-256 counter stream.
    let mut image = Vec::with_capacity(IMAGE_SIZE);
    let mut counter = 0u64;
    while image.len() < IMAGE_SIZE {
        let block = Sha256::new()
            .chain_update(version.as_bytes())
            .chain_update(counter.to_le_bytes())
            .finalize();
        image.extend_from_slice(&block);
        counter += 1;
    }
    image.truncate(IMAGE_SIZE);
    let path = work_dir.join(format!("{MODEL}-{version}.bin"));
    std::fs::write(&path, &image).with_context(|| format!("write {}", path.display()))?;
    let manifest = FirmwareManifest {
        model: MODEL.to_owned(),
        version: version.to_owned(),
        sha256: Sha256::digest(&image)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
        size: IMAGE_SIZE as u64,
        created: time::OffsetDateTime::now_utc(),
        health_check: health_check.map(str::to_owned),
        description: Some(format!("fleethub demo firmware {version}")),
    };
    let jws = key.sign(&manifest)?;
    client
        .upload_artifact(&ArtifactUpload {
            model: MODEL.to_owned(),
            version: version.to_owned(),
            file: path,
            manifest: Some(jws),
            health_check: None,
            description: None,
            progress: None,
        })
        .await
        .with_context(|| format!("upload firmware {MODEL} {version}"))?;
    println!("Uploaded signed firmware {MODEL} {version} ({IMAGE_SIZE} bytes)");
    Ok(())
}

async fn run_workflow(
    hub: &fleethub_hub::RunningHub,
    args: &DemoArgs,
) -> anyhow::Result<serde_json::Value> {
    let service = service_client(hub)?;

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
