//! The reference apps against a real hub: the firmware update goes through its states in order and the final
//! reported properties carry every timestamp.

use std::time::Duration;

use fleethub_device::DeviceClientOptions;
use fleethub_reference::service_app::{Progress, ServiceAppOptions};
use fleethub_reference::{STATES, device_app, service_app};
use fleethub_service::{ServiceClient, ServiceClientOptions};
use fleethub_testkit::TestHub;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firmware_update_goes_through_its_states_in_order() {
    let hub = TestHub::start().await;
    let record = hub.create_device("thermostat").await;
    let key = record.identity.authentication.primary_key.clone().unwrap();
    let device_connection_string =
        format!("HostName=localhost;DeviceId=thermostat;SharedAccessKey={key}");
    let options = DeviceClientOptions::default()
        .with_ca_pem(hub.hub.ca_pem.clone())
        .with_port(hub.hub.mqtt_address.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let device = tokio::spawn(async move {
        let app_options = device_app::DeviceAppOptions {
            step: Duration::from_millis(300),
            quiet: true,
        };
        device_app::run(&device_connection_string, options, app_options, async {
            let _ = stopped.await;
        })
        .await
    });

    let owner = hub.policy("iothubowner");
    let service = ServiceClient::from_connection_string(
        &format!(
            "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
            hub.hub.https_address.port(),
            owner.primary_key
        ),
        ServiceClientOptions {
            ca_pem: Some(hub.hub.ca_pem.clone()),
            ..ServiceClientOptions::default()
        },
    )
    .unwrap();
    let mut seen = Vec::new();
    let options = ServiceAppOptions {
        poll_interval: Duration::from_millis(100),
        ..ServiceAppOptions::default()
    };
    let reported = tokio::time::timeout(
        Duration::from_secs(30),
        service_app::run(
            &service,
            &"thermostat".parse().unwrap(),
            &options,
            |progress| seen.push(progress.clone()),
        ),
    )
    .await
    .expect("the workflow finishes")
    .expect("the workflow succeeds");

    match &seen[0] {
        Progress::MethodAnswered { status, payload } => {
            assert_eq!(
                (*status, payload),
                (200, &json!({"Response": "Firmware update started"}))
            );
        }
        other => panic!("the method answer comes first, got {other:?}"),
    }
    let statuses: Vec<&str> = seen[1..]
        .iter()
        .map(|progress| match progress {
            Progress::Status { status, .. } => status.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let order: Vec<&str> = STATES.iter().map(|(status, _)| *status).collect();
    let positions: Vec<usize> = statuses
        .iter()
        .map(|status| order.iter().position(|known| known == status).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "states never go backwards: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&"completed"));
    for (_, time_key) in STATES {
        assert!(
            reported[time_key].is_string(),
            "{time_key} reported: {reported}"
        );
    }
    stop.send(()).unwrap();
    device.await.unwrap().unwrap();
}
