//! One-off measurement (deleted after use).
#[path = "support/rollouts.rs"]
mod support;
use std::time::Instant;
use fleethub_protocol::rollouts::RolloutStatus;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure() {
    let count: usize = std::env::var("N").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(count, |_| None).await;
    fleet.start_all_agents();
    fleet.wait_for_reported_models(count).await;
    fleet.upload(TARGET).await;
    let setup = t0.elapsed();
    let id = rollout_id("measure");
    let request = request(|r| {
        r.waves = Some(serde_json::from_value(serde_json::json!("1%,10%,50%,100%")).unwrap());
        r.max_concurrency = Some(100);
    });
    let before = *fleet.hub().hub.services.store.change_notifier().borrow();
    let t1 = Instant::now();
    fleet.service.create_rollout(&id, &request).await.unwrap();
    let mut follower = Follower::open(&fleet.service, &id).await;
    let done = follower.until("done", |r| r.status.is_final()).await;
    let took = t1.elapsed();
    assert_eq!(done.status, RolloutStatus::Completed);
    let records = fleet.hub().hub.services.store.read_changes(before, 10_000_000, fleethub_store::ChangeFilter::all()).await.unwrap();
    let rollout_records = records.iter().filter(|r| r.rollout_id.is_some()).count();
    let twin_records = records.iter().filter(|r| r.operation == fleethub_protocol::changes::ChangeOperation::UpdateTwin).count();
    eprintln!("MEASURE devices={count} setup={setup:?} rollout={took:?} per_device_ms={:.2} rollout_records={rollout_records} twin_reports={twin_records} watch_items={}", took.as_secs_f64()*1000.0/count as f64, follower.history.len());
    fleet.stop_all_agents().await;
}
