#[path = "support/jobs.rs"]
mod support;
use fleethub_testkit::TestHub;
use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rate: u32 = std::env::var("RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let hub = TestHub::start_with(|c| c.limits.job_start_rate_per_second = rate).await;
    let _: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let hub = &hub;
            async move { hub.create_device(&format!("m-{i:05}")).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    hub.create_device("live").await;
    let api = owner(&hub);
    // baseline
    let mut base = Vec::new();
    for v in 0..50 {
        let t = Instant::now();
        api.send(
            Method::PATCH,
            "/twins/live",
            &[],
            Some(json!({"properties":{"desired":{"n":v}}})),
        )
        .await;
        base.push(t.elapsed());
    }
    let began = Instant::now();
    create_job(&api, "measure", json!({"type":"scheduleUpdateTwin","updateTwin":{"properties":{"desired":{"x":1}}},"queryCondition":"STARTSWITH(deviceId, 'm-')"})).await;
    let mut during = Vec::new();
    let api2 = owner(&hub);
    let done = loop {
        let t = Instant::now();
        api2.send(
            Method::PATCH,
            "/twins/live",
            &[],
            Some(json!({"properties":{"desired":{"n":1}}})),
        )
        .await;
        during.push(t.elapsed());
        let job = get_job(&api, "measure").await.body;
        if job["status"] == json!("completed") {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = began.elapsed();
    base.sort();
    during.sort();
    eprintln!(
        "rate {rate} N={n} took {took:?} ({:.0}/s) stats {} ; live write baseline p50 {:?} max {:?}; during job p50 {:?} p99 {:?} max {:?} (n={})",
        n as f64 / took.as_secs_f64(),
        done["deviceJobStatistics"],
        base[base.len() / 2],
        base[base.len() - 1],
        during[during.len() / 2],
        during[during.len() * 99 / 100],
        during[during.len() - 1],
        during.len()
    );
}
