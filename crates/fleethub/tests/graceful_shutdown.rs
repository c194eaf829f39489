//! `fleethub serve` and SIGTERM, on a real process: the hub stops accepting at once, lets a direct-method
//! call that is waiting for its device get the device's answer and a reported patch sent during the drain
//! become durable, then disconnects the device and exits with 0 within its grace period; after a restart
//! the device is recorded disconnected and the patch is there.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use fleethub_mqtt::{Packet, QoS};
use fleethub_testkit::{
    RawClient, ServiceApi, connect_with_key, publish_qos1, subscribe, tls_connector,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::free_port;

const WAIT: Duration = Duration::from_secs(30);
/// How long the device takes to answer the method call made before SIGTERM.
const DEVICE_THINKS: Duration = Duration::from_millis(1500);

async fn wait_until_up(https: SocketAddr, data_dir: &std::path::Path) -> String {
    support::wait_until_healthy(data_dir, https, "graceful shutdown").await
}

fn serve(data_dir: &std::path::Path, mqtt: SocketAddr, https: SocketAddr) -> std::process::Child {
    support::spawn_serve(data_dir, mqtt, https, &["--shutdown-grace", "20"])
}

fn owner(data_dir: &std::path::Path, https: SocketAddr, ca: &str) -> ServiceApi {
    let text = support::owner_connection_string(data_dir);
    let key = text.rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
    ServiceApi::new(https, ca, "iothubowner", &key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_then_disconnects_devices_and_exits_cleanly() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut hub = support::Reaped(serve(&data_dir, mqtt, https));
    let ca = wait_until_up(https, &data_dir).await;
    let api = owner(&data_dir, https, &ca);

    let created = api
        .send(
            Method::PUT,
            "/devices/thinker",
            &[],
            Some(json!({"deviceId": "thinker"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let key = created.body["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("a SAS key")
        .to_owned();
    let mut device = RawClient::connect(mqtt, tls_connector(&ca)).await;
    device
        .connect_accepted(connect_with_key("thinker", &key, 60))
        .await;
    device
        .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtMostOnce))
        .await;
    assert!(matches!(device.receive().await, Some(Packet::SubAck(_))));
    device
        .send(&subscribe(2, "$iothub/twin/res/#", QoS::AtMostOnce))
        .await;
    assert!(matches!(device.receive().await, Some(Packet::SubAck(_))));

    // A method call in flight when SIGTERM comes.
    let call = tokio::spawn(async move {
        let reply = api
            .send(
                Method::POST,
                "/twins/thinker/methods",
                &[],
                Some(json!({"methodName": "ponder", "responseTimeoutInSeconds": 20})),
            )
            .await;
        (api, reply)
    });
    let request = match device.receive().await {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("expected the method request, got {other:?}"),
    };
    assert!(
        request.topic.starts_with("$iothub/methods/POST/ponder/"),
        "{}",
        request.topic
    );
    let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();

    let terminated = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &hub.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());

    // Stops accepting: new connections are refused while the device is still being served.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(mqtt).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the MQTT port still accepts after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(https).await.is_err(),
        "the HTTPS port still accepts after SIGTERM"
    );

    // The device, still connected, writes a reported patch and answers the call late; both go through.
    tokio::time::sleep(DEVICE_THINKS.saturating_sub(terminated.elapsed())).await;
    device
        .send(&publish_qos1(
            "$iothub/twin/PATCH/properties/reported/?$rid=77",
            10,
            br#"{"thought":"done"}"#,
        ))
        .await;
    let mut patched = false;
    while !patched {
        match device.receive().await {
            Some(Packet::Publish(publish)) => {
                patched = publish.topic.starts_with("$iothub/twin/res/204/?$rid=77");
                assert!(
                    patched || !publish.topic.starts_with("$iothub/twin/res/"),
                    "the drain refused the patch: {}",
                    publish.topic
                );
            }
            Some(_) => {}
            None => panic!("the device was disconnected before its patch was answered"),
        }
    }
    device
        .send(&publish_qos1(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            11,
            br#"{"answer":42}"#,
        ))
        .await;
    let (api, reply) = tokio::time::timeout(WAIT, call)
        .await
        .expect("the call ends")
        .expect("the call task");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], json!(200));
    assert_eq!(reply.body["payload"], json!({"answer": 42}));

    // Then the device is disconnected and the process exits with 0, within the grace period.
    loop {
        match tokio::time::timeout(WAIT, device.receive_or_closed())
            .await
            .expect("the hub closes the device's connection")
        {
            None => break,
            Some(_) => continue,
        }
    }
    let exit = tokio::task::spawn_blocking(move || {
        let exit = hub.0.wait().expect("wait for the hub");
        (exit, hub)
    });
    let (exit, _hub) = tokio::time::timeout(WAIT, exit)
        .await
        .expect("the hub exits within its grace period")
        .unwrap();
    assert!(exit.success(), "fleethub serve exited with {exit}");
    assert!(
        terminated.elapsed() < Duration::from_secs(20),
        "took {:?}",
        terminated.elapsed()
    );

    // Restarted: the device is recorded disconnected and its patch is durable.
    let _restarted = support::Reaped(serve(&data_dir, mqtt, https));
    wait_until_up(https, &data_dir).await;
    let identity = api.send(Method::GET, "/devices/thinker", &[], None).await;
    assert_eq!(identity.status, StatusCode::OK, "{}", identity.body);
    assert_eq!(identity.body["connectionState"], json!("Disconnected"));
    let twin = api.send(Method::GET, "/twins/thinker", &[], None).await;
    assert_eq!(
        twin.body["properties"]["reported"]["thought"],
        json!("done"),
        "{}",
        twin.body
    );
}
