//! The change feed pushed over HTTPS (Server-Sent Events at `GET /changes`) and read by the service SDK's
//! stream: order, filtering, resuming by sequence number, and resuming by itself across a hub restart.

use std::time::Duration;

use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_service::{ChangeStream, ServiceClient, ServiceClientOptions, WatchOptions};
use fleethub_testkit::TestHub;
use serde_json::json;

fn service(hub: &TestHub, policy: &str) -> ServiceClient {
    let key = hub.policy(policy).primary_key;
    let connection_string = format!(
        "HostName=localhost:{};SharedAccessKeyName={policy};SharedAccessKey={key}",
        hub.hub.https_address.port()
    );
    let options = ServiceClientOptions {
        ca_pem: Some(hub.hub.ca_pem.clone()),
        ..ServiceClientOptions::default()
    };
    ServiceClient::from_connection_string(&connection_string, options).expect("service client")
}

/// The next change; connection failures while the stream resumes (hub restarting) are expected and skipped.
async fn next(stream: &mut ChangeStream) -> ChangeRecord {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("a change arrives in time")
            .expect("the stream goes on");
        match item {
            Ok(record) => return record,
            Err(error) if error.is_connectivity() => continue,
            Err(error) => panic!("stream error: {error:?}"),
        }
    }
}

fn device_of(record: &ChangeRecord) -> Option<&str> {
    record
        .device_id
        .as_ref()
        .map(|device_id| device_id.as_str())
}

async fn patch(service: &ServiceClient, device: &str, value: i64) {
    let id = device.parse().unwrap();
    service
        .update_twin(&id, &json!({"properties": {"desired": {"n": value}}}), None)
        .await
        .expect("patch");
}

#[tokio::test]
async fn changes_arrive_in_order_and_resume_after_a_sequence_number() {
    let hub = TestHub::start().await;
    let owner = service(&hub, "iothubowner");
    let mut stream = owner
        .watch_changes(WatchOptions {
            after: Some(0),
            ..WatchOptions::default()
        })
        .await
        .unwrap();
    hub.create_device("dev1").await;
    patch(&owner, "dev1", 1).await;
    patch(&owner, "dev1", 2).await;

    let created = next(&mut stream).await;
    assert_eq!(
        (device_of(&created), created.operation),
        (Some("dev1"), ChangeOperation::CreateDeviceIdentity)
    );
    let first = next(&mut stream).await;
    assert_eq!(first.operation, ChangeOperation::UpdateTwin);
    assert_eq!(first.body["properties"]["desired"]["n"], json!(1));
    let second = next(&mut stream).await;
    assert_eq!(second.body["properties"]["desired"]["n"], json!(2));
    assert!(created.sequence < first.sequence && first.sequence < second.sequence);
    drop(stream);

    // Changes made while nobody watches are delivered on resume, exactly once each.
    patch(&owner, "dev1", 3).await;
    patch(&owner, "dev1", 4).await;
    let mut resumed = owner
        .watch_changes(WatchOptions {
            after: Some(first.sequence),
            ..WatchOptions::default()
        })
        .await
        .unwrap();
    let values: Vec<i64> = [
        next(&mut resumed).await,
        next(&mut resumed).await,
        next(&mut resumed).await,
    ]
    .iter()
    .map(|record| record.body["properties"]["desired"]["n"].as_i64().unwrap())
    .collect();
    assert_eq!(values, vec![2, 3, 4], "no gap, no duplicate");
}

#[tokio::test]
async fn a_device_filter_keeps_one_device_and_from_now_skips_history() {
    let hub = TestHub::start().await;
    let owner = service(&hub, "iothubowner");
    hub.create_device("old").await;
    hub.create_device("watched").await;
    hub.create_device("other").await;
    let watched = "watched".parse().unwrap();
    let mut stream = owner
        .watch_changes(WatchOptions {
            device: Some(watched),
            ..WatchOptions::default()
        })
        .await
        .unwrap();
    // The watch is open when watch_changes returns, so "from now" starts before the next writes.
    let mut everything = owner.watch_changes(WatchOptions::default()).await.unwrap();
    patch(&owner, "other", 1).await;
    patch(&owner, "watched", 7).await;
    let record = next(&mut stream).await;
    assert_eq!(device_of(&record), Some("watched"));
    assert_eq!(record.body["properties"]["desired"]["n"], json!(7));
    let first_new = next(&mut everything).await;
    assert_eq!(
        device_of(&first_new),
        Some("other"),
        "history before the watch started is not replayed"
    );
}

/// A device's watch reads forward past other devices' changes (the feed has no per-device index): more than a
/// page of them between two of its own, and more than a page of its own in a row, all arrive once, in order.
#[tokio::test]
async fn a_device_watch_reads_past_pages_of_other_changes_and_of_its_own() {
    let hub = TestHub::start().await;
    let owner = service(&hub, "iothubowner");
    hub.create_device("watched").await;
    hub.create_device("other").await;
    let mut stream = owner
        .watch_changes(WatchOptions {
            device: Some("watched".parse().unwrap()),
            ..WatchOptions::default()
        })
        .await
        .unwrap();
    patch(&owner, "watched", 0).await;
    assert_eq!(
        next(&mut stream).await.body["properties"]["desired"]["n"],
        json!(0)
    );
    // The stream is caught up now; 300 changes of another device pass before the next of its own.
    for value in 0..300 {
        patch(&owner, "other", value).await;
    }
    patch(&owner, "watched", 1).await;
    let record = next(&mut stream).await;
    assert_eq!(device_of(&record), Some("watched"));
    assert_eq!(record.body["properties"]["desired"]["n"], json!(1));
    // More than a page of its own, interleaved with others'.
    for value in 2..302 {
        patch(&owner, "watched", value).await;
        if value % 3 == 0 {
            patch(&owner, "other", value).await;
        }
    }
    for value in 2..302 {
        let record = next(&mut stream).await;
        assert_eq!(device_of(&record), Some("watched"));
        assert_eq!(record.body["properties"]["desired"]["n"], json!(value));
    }
}

#[tokio::test]
async fn the_stream_resumes_by_itself_across_a_hub_restart() {
    let hub = TestHub::start().await;
    let (mqtt, https) = (hub.hub.mqtt_address, hub.hub.https_address);
    let data_dir = hub.directory.path().join("data");
    let owner = service(&hub, "iothubowner");
    hub.create_device("dev1").await;
    let mut stream = owner.watch_changes(WatchOptions::default()).await.unwrap();
    patch(&owner, "dev1", 1).await;
    assert_eq!(
        next(&mut stream).await.body["properties"]["desired"]["n"],
        json!(1)
    );

    let TestHub {
        hub: running,
        directory,
    } = hub;
    running.shutdown(Duration::from_secs(5)).await;
    let mut config = fleethub_hub::HubConfig::for_loopback(data_dir);
    config.mqtt_listen = mqtt;
    config.https_listen = https;
    let restarted = fleethub_hub::start(config)
        .await
        .expect("restart on the same directory and ports");
    let owner = service(
        &TestHub {
            hub: restarted,
            directory,
        },
        "iothubowner",
    );
    patch(&owner, "dev1", 2).await;
    patch(&owner, "dev1", 3).await;
    let values: Vec<i64> = [next(&mut stream).await, next(&mut stream).await]
        .iter()
        .map(|record| record.body["properties"]["desired"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        values,
        vec![2, 3],
        "resumed after the last delivered change"
    );
}

#[tokio::test]
async fn watching_needs_service_connect_or_registry_read() {
    let hub = TestHub::start().await;
    let refused = service(&hub, "device")
        .watch_changes(WatchOptions::default())
        .await;
    let error = refused
        .err()
        .expect("a policy without ServiceConnect or RegistryRead is refused");
    assert_eq!(error.status(), Some(403), "{error}");
    service(&hub, "registryRead")
        .watch_changes(WatchOptions::default())
        .await
        .expect("RegistryRead may watch");
}
