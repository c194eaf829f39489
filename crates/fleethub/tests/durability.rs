//! Durability of a real `fleethub serve` process: acknowledged writes and MQTT subscriptions survive a
//! SIGKILL, and a device that was subscribed gets a method after the restart without subscribing again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleethub_mqtt::{Packet, QoS};
use fleethub_testkit::{
    RawClient, ServiceApi, connect_with_key, publish_qos1, subscribe, tls_connector,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

struct HubProcess {
    child: Child,
    data_dir: PathBuf,
    https: SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl HubProcess {
    async fn start(data_dir: &Path, mqtt: SocketAddr, https: SocketAddr) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_fleethub"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--mqtt-listen",
                &mqtt.to_string(),
                "--https-listen",
                &https.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fleethub serve");
        let hub = Self {
            child,
            data_dir: data_dir.to_owned(),
            https,
        };
        hub.wait_healthy().await;
        hub
    }

    async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ca) = std::fs::read_to_string(self.data_dir.join("ca.pem")) {
                let api = ServiceApi::new(self.https, &ca, "unused", "AAAA");
                let url = format!("{}/healthz", api.base);
                if let Ok(response) = api.client.get(url).send().await
                    && response.status() == StatusCode::OK
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hub did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ca(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("ca.pem")).unwrap()
    }

    /// The owner policy's key, read through the CLI as an operator would.
    fn owner_key(&self) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_fleethub"))
            .args(["connection-string", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .expect("run fleethub connection-string");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let expected_host = format!(
            "HostName=localhost:{};SharedAccessKeyName=iothubowner;",
            self.https.port()
        );
        assert!(text.starts_with(&expected_host), "{text}");
        text.trim()
            .rsplit_once("SharedAccessKey=")
            .unwrap()
            .1
            .to_owned()
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the hub");
        self.child.wait().expect("reap the hub");
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_and_subscriptions_survive_sigkill() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let hub = HubProcess::start(&data_dir, mqtt, https).await;
    let ca = hub.ca();
    let owner_key = hub.owner_key();
    let api = ServiceApi::new(https, &ca, "iothubowner", &owner_key);

    const DEVICES: usize = 8;
    let mut keys = HashMap::new();
    for index in 0..DEVICES {
        let id = format!("dev{index}");
        let created = api
            .send(
                Method::PUT,
                &format!("/devices/{id}"),
                &[],
                Some(json!({"deviceId": id})),
            )
            .await;
        assert_eq!(created.status, StatusCode::OK);
        keys.insert(
            id,
            created.body["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let desired = api
        .send(
            Method::PATCH,
            "/twins/dev0",
            &[],
            Some(json!({"properties": {"desired": {"fw": "2.0"}}})),
        )
        .await;
    assert_eq!(desired.status, StatusCode::OK, "acknowledged desired write");

    // Every device subscribes to methods (SUBACK = durable) and then reports as fast as it can, remembering
    // the last sequence number the hub acknowledged with a 204.
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..DEVICES).map(|_| AtomicU64::new(0)).collect());
    let mut writers = Vec::new();
    for index in 0..DEVICES {
        let id = format!("dev{index}");
        let mut client = RawClient::connect(mqtt, tls_connector(&ca)).await;
        client
            .connect_accepted(connect_with_key(&id, &keys[&id], 60))
            .await;
        client
            .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtLeastOnce))
            .await;
        assert!(matches!(client.receive().await, Some(Packet::SubAck(_))));
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            for sequence in 1..u64::MAX {
                let packet_id = (sequence % 60_000 + 1) as u16;
                let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={sequence}");
                client
                    .send(&publish_qos1(
                        &topic,
                        packet_id,
                        json!({"seq": sequence}).to_string().as_bytes(),
                    ))
                    .await;
                loop {
                    match client.receive_or_closed().await {
                        None => return,
                        Some(Packet::Publish(response))
                            if response.topic.starts_with("$iothub/twin/res/204/") =>
                        {
                            acknowledged[index].store(sequence, Ordering::SeqCst);
                            break;
                        }
                        Some(_) => continue,
                    }
                }
            }
        }));
    }
    // Let writes flow, then kill the hub in the middle of them.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while acknowledged
        .iter()
        .any(|sequence| sequence.load(Ordering::SeqCst) < 20)
    {
        assert!(
            tokio::time::Instant::now() < until,
            "writes are acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged: Vec<u64> = acknowledged
        .iter()
        .map(|sequence| sequence.load(Ordering::SeqCst))
        .collect();

    let hub = HubProcess::start(&data_dir, mqtt, https).await;
    assert_eq!(hub.ca(), ca, "the CA survives");
    assert_eq!(hub.owner_key(), owner_key, "the policies survive");
    for (index, last_acknowledged) in acknowledged.iter().enumerate() {
        let twin = api
            .send(Method::GET, &format!("/twins/dev{index}"), &[], None)
            .await;
        let stored = twin.body["properties"]["reported"]["seq"]
            .as_u64()
            .unwrap_or(0);
        // The one write in flight at the kill may or may not have committed; nothing acknowledged is lost.
        assert!(
            stored == *last_acknowledged || stored == last_acknowledged + 1,
            "dev{index}: acknowledged {last_acknowledged}, stored {stored}"
        );
        assert_eq!(
            twin.body["connectionState"],
            json!("Disconnected"),
            "no stale Connected after a kill"
        );
    }
    let twin = api.send(Method::GET, "/twins/dev0", &[], None).await;
    assert_eq!(twin.body["properties"]["desired"]["fw"], json!("2.0"));

    // dev3 reconnects with the same clean-session-0 CONNECT and does NOT subscribe again.
    let mut client = RawClient::connect(mqtt, tls_connector(&ca)).await;
    let session_present = client
        .connect_accepted(connect_with_key("dev3", &keys["dev3"], 60))
        .await;
    assert!(session_present, "the persisted session is resumed");
    let call = tokio::spawn(async move {
        api.send(
            Method::POST,
            "/twins/dev3/methods",
            &[],
            Some(json!({"methodName": "firmwareUpdate", "payload": {}, "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 10})),
        )
        .await
    });
    let request = client.receive_publish().await;
    assert!(
        request
            .topic
            .starts_with("$iothub/methods/POST/firmwareUpdate/"),
        "{}",
        request.topic
    );
    let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
    client
        .send(&publish_qos1(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            1,
            br#"{"Response":"ok"}"#,
        ))
        .await;
    let reply = call.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({"status": 200, "payload": {"Response": "ok"}})
    );
}
