//! Measures durable reported-patch throughput of the SQLite store alone: N writers (one per device) each
//! awaiting its previous write, as devices do. `cargo run --release -p fleethub-store --example patch_throughput -- 1000 5`
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleethub_core::identity::{Authentication, FreshKeys, IdentityKey, IdentitySpec};
use fleethub_protocol::ids::IfMatch;
use fleethub_protocol::rest::{AuthenticationType, DeviceStatus};
use fleethub_store::{
    CreateIdentity, SqliteStore, SqliteStoreOptions, Store, TwinChange, UpdateTwin,
};
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let devices: usize = args
        .next()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1000);
    let seconds: u64 = args.next().and_then(|text| text.parse().ok()).unwrap_or(5);
    let directory = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            &directory.path().join("bench.db"),
            SqliteStoreOptions::default(),
        )
        .expect("open"),
    );
    let now = time::OffsetDateTime::now_utc();
    for index in 0..devices {
        let key = IdentityKey::device(format!("dev{index}").parse().expect("valid"));
        store
            .create_identity(CreateIdentity {
                key,
                spec: IdentitySpec {
                    status: DeviceStatus::Enabled,
                    status_reason: None,
                    authentication: Authentication {
                        kind: AuthenticationType::Sas,
                        primary_key: None,
                        secondary_key: None,
                        primary_thumbprint: None,
                        secondary_thumbprint: None,
                    },
                    iot_edge: false,
                    managed_by: None,
                    device_scope: None,
                    parent_scopes: vec![],
                },
                generation_id: "1".into(),
                fresh_keys: FreshKeys {
                    primary: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
                    secondary: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
                },
                now,
            })
            .await
            .expect("create");
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..devices {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let key = IdentityKey::device(format!("dev{index}").parse().expect("valid"));
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let patch = json!({"firmwareStatus": "downloading", "progress": sequence, "temperature": 21.5});
                store
                    .update_twin(UpdateTwin {
                        key: key.clone(),
                        change: TwinChange::ReportedPatch(patch),
                        if_match: IfMatch::Any,
                        now: time::OffsetDateTime::now_utc(),
                        on_commit: None,
                    })
                    .await
                    .expect("patch");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = done.load(Ordering::Relaxed);
    println!(
        "{devices} devices, {total} durable patches in {elapsed:.2} s: {:.0} patches/s",
        total as f64 / elapsed
    );
}
