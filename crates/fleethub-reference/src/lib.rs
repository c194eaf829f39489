//! The reference firmware-update workflow (DESIGN.md, "The reference workflow"), line by line, on fleethub's
//! own SDKs: a device app that answers the `firmwareUpdate` direct method and reports each step through its
//! twin, and a service app that invokes the method and polls the twin every 500 ms until the update is
//! applied. Both run against any hub, fleethub or Azure IoT Hub, from connection strings.
//!
//! The binaries `reference-device` and `reference-service` wrap [`device_app`] and [`service_app`];
//! `fleethub demo` runs both against a hub it starts itself.

use std::time::Duration;

use serde_json::{Value, json};

/// The method the service calls and the device handles.
pub const METHOD_NAME: &str = "firmwareUpdate";
/// The device's immediate answer to `firmwareUpdate`.
pub const STARTED_RESPONSE: &str = "Firmware update started";
/// The states the device reports, in order, each with the timestamp property that goes with it.
pub const STATES: [(&str, &str); 4] = [
    ("standBy", "logTime"),
    ("downloading", "downloadComplete"),
    ("applying", "startedApplyingImage"),
    ("completed", "lastFirmwareUpdate"),
];

/// Now, as the tutorial writes it (ISO 8601, UTC).
pub fn utc_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC times always format")
}

/// The service app's line for a reported `firmwareStatus`, as the tutorial prints it.
pub fn status_message(status: &str) -> &'static str {
    match status {
        "standBy" => "Waiting on device...",
        "downloading" => "Downloading firmware...",
        "applying" => "Download complete, applying firmware...",
        "completed" => "Firmware applied",
        _ => "Unknown firmware status",
    }
}

pub mod device_app {
    //! The device side: connects, reports `standBy`, answers `firmwareUpdate` at once with 200 and then, in
    //! the background, reports `downloading`, `applying` and `completed` with their timestamps.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use fleethub_device::{DeviceClient, DeviceClientOptions, MethodRequest, MethodResponse};

    use super::*;

    /// How long each simulated step takes (the tutorial sleeps; the firmware issue brings real downloads).
    #[derive(Clone, Debug)]
    pub struct DeviceAppOptions {
        pub step: Duration,
        /// Print nothing (when another display shows the progress, as `fleethub demo` does).
        pub quiet: bool,
    }

    impl Default for DeviceAppOptions {
        fn default() -> Self {
            Self {
                step: Duration::from_secs(2),
                quiet: false,
            }
        }
    }

    /// Prints the app's console lines unless quiet.
    #[derive(Clone, Copy)]
    struct Console {
        quiet: bool,
    }

    impl Console {
        fn say(self, line: impl std::fmt::Display) {
            if !self.quiet {
                println!("{line}");
            }
        }
    }

    /// Connects and serves the workflow until `stop` resolves. Prints what it does, like the tutorial.
    pub async fn run(
        connection_string: &str,
        client_options: DeviceClientOptions,
        options: DeviceAppOptions,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let console = Console {
            quiet: options.quiet,
        };
        let client = DeviceClient::connect(connection_string, client_options).await?;
        console.say(format_args!("Device {} connected", client.client_id()));
        client
            .patch_reported(&json!({"firmwareStatus": "standBy", "logTime": utc_now()}))
            .await?;
        console.say("Reported firmwareStatus standBy");
        let updating = Arc::new(AtomicBool::new(false));
        let handler_client = client.clone();
        let step = options.step;
        client
            .on_method(move |request: MethodRequest| {
                let client = handler_client.clone();
                let updating = Arc::clone(&updating);
                async move { handle_method(client, updating, step, request, console) }
            })
            .await?;
        console.say(format_args!(
            "Waiting for the {METHOD_NAME} direct method..."
        ));
        stop.await;
        client.disconnect().await?;
        Ok(())
    }

    fn handle_method(
        client: DeviceClient,
        updating: Arc<AtomicBool>,
        step: Duration,
        request: MethodRequest,
        console: Console,
    ) -> MethodResponse {
        if request.method_name != METHOD_NAME {
            let text = format!("unknown method {}", request.method_name);
            return MethodResponse::new(404, json!({ "Response": text }));
        }
        if updating.swap(true, Ordering::SeqCst) {
            return MethodResponse::new(
                409,
                json!({"Response": "a firmware update is already running"}),
            );
        }
        let package = request
            .payload
            .get("fwPackageUri")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        console.say(format_args!("Received firmwareUpdate for {package}"));
        tokio::spawn(async move {
            if let Err(error) = simulate_update(&client, step, console).await {
                eprintln!("firmware update failed: {error}");
            }
            updating.store(false, Ordering::SeqCst);
        });
        MethodResponse::new(200, json!({"Response": STARTED_RESPONSE}))
    }

    async fn simulate_update(
        client: &DeviceClient,
        step: Duration,
        console: Console,
    ) -> anyhow::Result<()> {
        for (status, time_key) in &STATES[1..] {
            tokio::time::sleep(step).await;
            client
                .patch_reported(&json!({"firmwareStatus": status, *time_key: utc_now()}))
                .await?;
            console.say(format_args!("Reported firmwareStatus {status}"));
        }
        Ok(())
    }
}

pub mod service_app {
    //! The service side: invokes `firmwareUpdate` (60 s response timeout) and polls the twin every 500 ms,
    //! printing the tutorial's messages, until the device reports `completed`.

    use fleethub_protocol::ids::DeviceId;
    use fleethub_protocol::rest::CloudToDeviceMethod;
    use fleethub_service::ServiceClient;

    use super::*;

    #[derive(Clone, Debug)]
    pub struct ServiceAppOptions {
        pub package_uri: String,
        pub poll_interval: Duration,
        /// Give up after this long without reaching `completed`.
        pub deadline: Duration,
    }

    impl Default for ServiceAppOptions {
        fn default() -> Self {
            Self {
                package_uri: "https://example.com/firmware/v2.0.bin".into(),
                poll_interval: Duration::from_millis(500),
                deadline: Duration::from_secs(120),
            }
        }
    }

    /// What the service app sees, for callers that display it their own way (`fleethub demo`).
    #[derive(Clone, Debug)]
    pub enum Progress {
        MethodAnswered {
            status: i32,
            payload: Value,
        },
        /// A new `firmwareStatus` seen in the twin, with the reported properties at that moment.
        Status {
            status: String,
            reported: Value,
        },
    }

    /// Runs the workflow; `observe` sees each step. Returns the final reported properties.
    pub async fn run(
        service: &ServiceClient,
        device_id: &DeviceId,
        options: &ServiceAppOptions,
        mut observe: impl FnMut(&Progress),
    ) -> anyhow::Result<Value> {
        let request = CloudToDeviceMethod {
            method_name: METHOD_NAME.into(),
            payload: json!({"fwPackageUri": options.package_uri}),
            response_timeout_in_seconds: Some(60),
            connect_timeout_in_seconds: Some(30),
        };
        let result = service.invoke_method(device_id, &request).await?;
        observe(&Progress::MethodAnswered {
            status: result.status,
            payload: result.payload.clone(),
        });
        if result.status != 200 {
            anyhow::bail!(
                "the device refused the update: {} {}",
                result.status,
                result.payload
            );
        }
        let started = tokio::time::Instant::now();
        let mut last_status = String::new();
        let mut interval = tokio::time::interval(options.poll_interval);
        loop {
            interval.tick().await;
            let twin = service.get_twin(device_id).await?;
            let reported = twin
                .properties
                .map(|properties| Value::Object(properties.reported))
                .unwrap_or(Value::Null);
            let status = reported
                .get("firmwareStatus")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if status != last_status {
                last_status.clone_from(&status);
                observe(&Progress::Status {
                    status: status.clone(),
                    reported: reported.clone(),
                });
            }
            if status == "completed" {
                return Ok(reported);
            }
            if started.elapsed() > options.deadline {
                anyhow::bail!(
                    "the device did not complete the update within {:?}",
                    options.deadline
                );
            }
        }
    }

    /// The tutorial's console output for each step.
    pub fn print_progress(progress: &Progress) {
        match progress {
            Progress::MethodAnswered { status, payload } => {
                println!("Method response: status {status}, payload {payload}");
            }
            Progress::Status { status, reported } => {
                println!("{}", status_message(status));
                if status == "completed" {
                    println!(
                        "Reported properties: {}",
                        serde_json::to_string_pretty(reported).expect("JSON always serialises")
                    );
                }
            }
        }
    }
}
