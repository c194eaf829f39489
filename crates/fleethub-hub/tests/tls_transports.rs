//! Both device transports through the hub's TLS stream (`tls_stream`), driven by our device SDK: MQTT over TLS
//! on the MQTT port, and MQTT over a secure WebSocket through the HTTPS port (hyper's upgrade on top of TLS).

use fleethub_device::{DeviceClient, DeviceClientOptions, Transport};
use fleethub_protocol::ids::IfMatch;
use fleethub_store::TwinChange;
use fleethub_testkit::*;
use serde_json::json;

#[tokio::test]
async fn the_device_sdk_reads_reports_and_follows_its_twin_over_tls_and_over_websocket() {
    let hub = TestHub::start().await;
    let transports = [
        ("over-tls", Transport::Mqtt, hub.hub.mqtt_address.port()),
        (
            "over-websocket",
            Transport::WebSocket,
            hub.hub.https_address.port(),
        ),
    ];
    for (device_id, transport, port) in transports {
        let record = hub.create_device(device_id).await;
        let key = record.identity.authentication.primary_key.clone().unwrap();
        let connection_string =
            format!("HostName=localhost;DeviceId={device_id};SharedAccessKey={key}");
        let options = DeviceClientOptions::default()
            .with_ca_pem(hub.hub.ca_pem.clone())
            .with_transport(transport)
            .with_port(port);
        let client = tokio::time::timeout(WAIT, DeviceClient::connect(&connection_string, options))
            .await
            .expect("connects in time")
            .expect("connects");

        let mut patches = client.desired_patches().await.unwrap();
        client
            .patch_reported(&json!({"transport": device_id}))
            .await
            .unwrap();
        let twin = client.get_twin().await.unwrap();
        assert_eq!(twin["reported"]["transport"], json!(device_id));

        // A push the device did not ask for, while it is idle.
        hub.hub
            .services
            .update_twin(
                &record.key,
                TwinChange::ServicePatch(json!({"properties": {"desired": {"interval": 30}}})),
                IfMatch::Any,
            )
            .await
            .unwrap();
        let patch = tokio::time::timeout(WAIT, patches.next())
            .await
            .expect("the patch arrives in time")
            .expect("the stream is open");
        assert_eq!(patch["interval"], json!(30), "{device_id}");

        client.disconnect().await.unwrap();
    }
}
