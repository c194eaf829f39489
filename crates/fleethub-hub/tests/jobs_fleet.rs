//! A method job over a fleet of 1,000 devices on our SDK: most connected, some connecting only while the job
//! runs, some never; the hub restarts in the middle of the job (every device reconnects by itself). The job
//! must resume, call every reachable device exactly once, fail the unreachable ones with `DeviceNotOnline`
//! when its time runs out, and its statistics must equal its per-device records. Live twin writes made
//! while the job runs must not wait behind it.

#[path = "support/jobs.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleethub_device::DeviceClient;
use fleethub_hub::HubConfig;
use fleethub_store::DeviceRecord;
use fleethub_testkit::TestHub;
use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

const DEVICES: usize = 1000;
const JOB: &str = "fleet-reboot";
/// Long enough for every reachable device, restart included; the unreachable ones fail when it ends.
const MAX_EXECUTION_SECONDS: u64 = 12;

/// Connected from the start; connecting while the job runs; never connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Connected,
    Late,
    Never,
}

fn group(index: usize) -> Group {
    match index % 20 {
        7 => Group::Never,
        3 | 13 => Group::Late,
        _ => Group::Connected,
    }
}

fn device_id(index: usize) -> String {
    format!("fleet-{index:04}")
}

fn limits(config: &mut HubConfig) {
    // Slow enough that the restart lands in the middle of the job.
    config.limits.job_device_concurrency = 50;
    config.limits.job_start_rate_per_second = 300;
}

async fn connect_all(records: &[&DeviceRecord], hub: &TestHub, calls: &Calls) -> Vec<DeviceClient> {
    let port = hub.hub.mqtt_address.port();
    futures_util::stream::iter(
        records
            .iter()
            .map(|record| answering_device(record, &hub.hub.ca_pem, port, calls)),
    )
    .buffer_unordered(32)
    .collect()
    .await
}

fn count(job: &Value, name: &str) -> u64 {
    job["deviceJobStatistics"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {job}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_a_thousand_devices_resumes_after_a_restart_and_adds_up() {
    let began = Instant::now();
    let hub = TestHub::start_with(limits).await;
    let (mqtt, https) = (hub.hub.mqtt_address, hub.hub.https_address);
    let data_dir = hub.directory.path().join("data");
    let records: Vec<DeviceRecord> = futures_util::stream::iter(0..DEVICES)
        .map(|index| {
            let hub = &hub;
            async move { hub.create_device(&device_id(index)).await }
        })
        .buffered(32)
        .collect()
        .await;
    hub.create_device("bystander").await;
    let in_group = |wanted: Group| -> Vec<&DeviceRecord> {
        records
            .iter()
            .enumerate()
            .filter(|(index, _)| group(*index) == wanted)
            .map(|(_, record)| record)
            .collect()
    };
    let calls = Calls::default();
    let mut clients = connect_all(&in_group(Group::Connected), &hub, &calls).await;
    let setup = began.elapsed();

    let api = owner(&hub);
    let job_began = Instant::now();
    create_job(
        &api,
        JOB,
        method_job(
            "STARTSWITH(deviceId, 'fleet-')",
            "reboot",
            MAX_EXECUTION_SECONDS,
        ),
    )
    .await;

    // Live traffic while the job runs: twin writes to a device outside it.
    let mut slowest_live_write = Duration::ZERO;
    for value in 0..20 {
        let started = Instant::now();
        let reply = api
            .send(
                Method::PATCH,
                "/twins/bystander",
                &[],
                Some(json!({"properties": {"desired": {"n": value}}})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        slowest_live_write = slowest_live_write.max(started.elapsed());
    }

    // The late devices connect once the job has found some of them offline.
    wait_for_job(&api, JOB, "waiting for late devices", |job| {
        count(job, "pendingCount") > 0 && count(job, "succeededCount") >= 150
    })
    .await;
    clients.extend(connect_all(&in_group(Group::Late), &hub, &calls).await);

    let before_restart = wait_for_job(&api, JOB, "well under way", |job| {
        count(job, "succeededCount") >= 350
    })
    .await;
    assert_eq!(before_restart["status"], json!("running"));
    let TestHub {
        hub: running,
        directory,
    } = hub;
    running.shutdown(Duration::from_secs(5)).await;
    let mut config = HubConfig::for_loopback(data_dir);
    config.mqtt_listen = mqtt;
    config.https_listen = https;
    limits(&mut config);
    let restarted = fleethub_hub::start(config)
        .await
        .expect("restarts on the same directory");
    let hub = TestHub {
        hub: restarted,
        directory,
    };
    let api = owner(&hub);
    let resumed = get_job(&api, JOB).await.body;
    assert_eq!(resumed["status"], json!("running"), "{resumed}");
    assert!(
        count(&resumed, "succeededCount") >= count(&before_restart, "succeededCount"),
        "nothing done before the restart is lost: {resumed}"
    );
    assert!(
        count(&resumed, "succeededCount") < DEVICES as u64,
        "the restart came mid-job"
    );

    let expected_succeeded = (0..DEVICES)
        .filter(|index| group(*index) != Group::Never)
        .count() as u64;
    let reachable = wait_for_job(&api, JOB, "done with every reachable device", |job| {
        count(job, "succeededCount") == expected_succeeded
    })
    .await;
    let reachable_took = job_began.elapsed();
    assert_eq!(
        reachable["status"],
        json!("running"),
        "the others wait for the deadline"
    );
    let job = wait_for_status(&api, JOB, "completed").await;
    let job_took = job_began.elapsed();
    assert_eq!(count(&job, "deviceCount"), DEVICES as u64, "{job}");
    assert_eq!(count(&job, "succeededCount"), expected_succeeded, "{job}");
    assert_eq!(
        count(&job, "failedCount"),
        DEVICES as u64 - expected_succeeded,
        "{job}"
    );
    assert_eq!(
        (count(&job, "runningCount"), count(&job, "pendingCount")),
        (0, 0)
    );

    // The per-device records, all of them through devices.jobs, agree with the statistics.
    let (items, pages) = query_all(
        &api,
        &format!("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{JOB}'"),
        300,
    )
    .await;
    assert_eq!((items.len(), pages), (DEVICES, 4));
    let mut by_status: HashMap<String, u64> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        assert_eq!(item["deviceId"], json!(device_id(index)), "in device order");
        *by_status
            .entry(item["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        match group(index) {
            Group::Never => {
                assert_eq!(item["status"], json!("failed"), "{item}");
                assert_eq!(item["error"]["code"], json!("DeviceNotOnline"), "{item}");
            }
            Group::Connected | Group::Late => {
                assert_eq!(item["status"], json!("completed"), "{item}");
                assert_eq!(
                    item["outcome"]["deviceMethodResponse"],
                    json!({"status": 200, "payload": {"device": device_id(index)}})
                );
            }
        }
    }
    assert_eq!(
        by_status.get("completed").copied(),
        Some(count(&job, "succeededCount"))
    );
    assert_eq!(
        by_status.get("failed").copied(),
        Some(count(&job, "failedCount"))
    );

    // Exactly once per reachable device, across the restart; never for the others.
    let calls_per_device = calls.counts();
    for index in 0..DEVICES {
        let expected = usize::from(group(index) != Group::Never);
        assert_eq!(
            calls_per_device
                .get(&device_id(index))
                .copied()
                .unwrap_or(0),
            expected,
            "{}",
            device_id(index)
        );
    }
    assert!(
        slowest_live_write < Duration::from_secs(2),
        "a live twin write took {slowest_live_write:?} while the job ran"
    );
    eprintln!(
        "fleet job: setup {setup:.1?}, reachable devices done after {reachable_took:.1?}, job {job_took:.1?} (deadline {MAX_EXECUTION_SECONDS} s), slowest live twin write {slowest_live_write:.1?}, total {:.1?}",
        began.elapsed()
    );
    drop(clients);
}
