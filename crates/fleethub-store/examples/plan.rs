//! Shows SQLite's plan and timing for a selective twin query on a seeded store:
//! `cargo run --release -p fleethub-store --example plan -- 200000`
use std::time::Instant;

use fleethub_core::identity::{Authentication, FreshKeys, IdentityKey, IdentitySpec};
use fleethub_protocol::rest::{AuthenticationType, DeviceStatus};
use fleethub_query::Source;
use fleethub_store::{
    BulkOperation, CreateIdentity, SqliteStore, SqliteStoreOptions, Store, TwinQuery,
};
use serde_json::json;

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(200_000);
    let path = std::path::PathBuf::from(format!("/tmp/plan-{count}.db"));
    let fresh = !path.exists();
    let store = SqliteStore::open(&path, SqliteStoreOptions::default()).expect("open");
    let now = time::OffsetDateTime::now_utc();
    if fresh {
        for start in (0..count).step_by(1000) {
            let operations = (start..(start + 1000).min(count))
                .map(|index| BulkOperation::Create {
                    request: CreateIdentity {
                        key: IdentityKey::device(format!("twin-{index:07}").parse().unwrap()),
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
                    },
                    twin_patch: Some(json!({"tags": {"building": format!("b{:04}", index % 1000), "region": if index % 2 == 0 { "eu" } else { "us" }}})),
                    reported: Some(json!({"firmwareStatus": "standBy"})),
                })
                .collect();
            store.bulk(operations).await.expect("bulk");
        }
    }
    for condition in [
        "tags.building = 'b0037'",
        "tags.region = 'eu'",
        "tags.building = 'b0037' AND tags.region = 'us'",
    ] {
        let query = fleethub_query::parse_condition(condition, Source::Devices).unwrap();
        let started = Instant::now();
        for _ in 0..10 {
            let records = store
                .query_twins(TwinQuery {
                    modules: false,
                    filter: query.pushdown().predicate,
                    after: None,
                    limit: 100,
                })
                .await
                .unwrap();
            assert!(!records.is_empty() || condition.contains("AND"));
        }
        println!("{condition}: {:?} per page", started.elapsed() / 10);
    }
}
