//! Conformance checks of CA certificates: records round-trip whole, replace by name, list by name, delete
//! once, and survive reopening.

use time::OffsetDateTime;
use time::macros::datetime;

use super::StoreFactory;
use crate::{CaCertificateRecord, Store};

const CREATED: OffsetDateTime = datetime!(2026-05-01 10:00:00.123 UTC);

fn record(name: &str, verified: bool) -> CaCertificateRecord {
    CaCertificateRecord {
        name: name.into(),
        certificate_der: vec![0x30, 0x03, 0x02, 0x01, name.len() as u8],
        is_verified: verified,
        verification_code: (!verified).then(|| format!("code-{name}")),
        created: CREATED,
        updated: CREATED + time::Duration::seconds(5),
        etag: format!("etag-{name}"),
    }
}

pub(super) async fn run_all(factory: &dyn StoreFactory) {
    let store = factory.open();
    records_round_trip_and_replace_by_name(&*store).await;
    drop(store);
    records_survive_reopening(factory).await;
}

async fn records_round_trip_and_replace_by_name(store: &dyn Store) {
    assert_eq!(store.get_ca_certificate("root").await.unwrap(), None);
    store
        .put_ca_certificate(record("root", false))
        .await
        .unwrap();
    store
        .put_ca_certificate(record("intermediate", true))
        .await
        .unwrap();
    assert_eq!(
        store.get_ca_certificate("root").await.unwrap(),
        Some(record("root", false))
    );
    let mut verified = record("root", true);
    verified.etag = "etag-2".into();
    store.put_ca_certificate(verified.clone()).await.unwrap();
    let listed = store.list_ca_certificates().await.unwrap();
    assert_eq!(listed, vec![record("intermediate", true), verified]);
    assert!(store.delete_ca_certificate("intermediate").await.unwrap());
    assert!(!store.delete_ca_certificate("intermediate").await.unwrap());
    assert_eq!(store.list_ca_certificates().await.unwrap().len(), 1);
}

async fn records_survive_reopening(factory: &dyn StoreFactory) {
    let store = factory.open();
    let names: Vec<String> = store
        .list_ca_certificates()
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.name)
        .collect();
    assert_eq!(names, vec!["root".to_owned()]);
}
