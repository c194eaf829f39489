//! The audit log against a real hub over HTTPS: state-changing operations leave records with the policy,
//! operation, target, result and peer; failures are recorded with their error code; reads are not; `GET
//! /audit` filters, pages and checks its rights and parameters.

use std::collections::BTreeSet;

use fleethub_protocol::audit::{AuditEntry, AuditPage};
use fleethub_testkit::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn audit(api: &ServiceApi, query: &str) -> AuditPage {
    let reply = api
        .send(Method::GET, &format!("/audit?{query}"), &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    serde_json::from_value(reply.body).expect("an audit page")
}

fn only<'a>(page: &'a AuditPage, operation: &str, target: &str) -> Vec<&'a AuditEntry> {
    page.records
        .iter()
        .filter(|entry| entry.operation == operation && entry.target.as_deref() == Some(target))
        .collect()
}

#[tokio::test]
async fn operations_are_recorded_with_policy_target_result_and_peer() {
    let hub = TestHub::start().await;
    let owner = ServiceApi::for_hub(&hub, "iothubowner");
    let service = ServiceApi::for_hub(&hub, "service");

    let created = owner
        .send(
            Method::PUT,
            "/devices/audited-1",
            &[],
            Some(json!({"deviceId": "audited-1"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    let patched = service
        .send(
            Method::PATCH,
            "/twins/audited-1",
            &[],
            Some(json!({"properties": {"desired": {"mode": "eco"}}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    // A read leaves no record.
    let read = owner
        .send(Method::GET, "/devices/audited-1", &[], None)
        .await;
    assert_eq!(read.status, StatusCode::OK);
    // Failures: the device is offline; the device does not exist; no token; a policy without the right.
    let offline = service
        .send(
            Method::POST,
            "/twins/audited-1/methods",
            &[],
            Some(json!({"methodName": "reboot", "responseTimeoutInSeconds": 5})),
        )
        .await;
    assert_eq!(offline.status, StatusCode::NOT_FOUND);
    let missing = owner
        .send(Method::DELETE, "/devices/audited-nobody", &[], None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let anonymous = owner
        .call(
            None,
            Method::PUT,
            "/devices/audited-2",
            &[],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let forbidden = service
        .send(
            Method::PUT,
            "/devices/audited-2",
            &[],
            Some(json!({"deviceId": "audited-2"})),
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);

    // Each answer came after its record was durable, so the log holds them all now.
    let reader = ServiceApi::for_hub(&hub, "registryRead");
    let page = audit(&reader, "").await;

    let put = only(&page, "device.put", "audited-1");
    assert_eq!(put.len(), 1, "{:?}", page.records);
    assert_eq!(put[0].policy.as_deref(), Some("iothubowner"));
    assert_eq!(put[0].status, 200);
    assert_eq!(put[0].error_code, None);
    let peer = put[0].peer.as_deref().expect("the peer is known");
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert!(put[0].time.ends_with('Z'), "{}", put[0].time);

    let patch = only(&page, "twin.patch", "audited-1");
    assert_eq!(patch.len(), 1);
    assert_eq!(patch[0].policy.as_deref(), Some("service"));
    assert_eq!(patch[0].status, 200);

    let method = only(&page, "method.invoke", "audited-1");
    assert_eq!(method.len(), 1);
    assert_eq!(method[0].status, 404);
    assert_eq!(method[0].error_code.as_deref(), Some("DeviceNotOnline"));

    let delete = only(&page, "device.delete", "audited-nobody");
    assert_eq!(delete.len(), 1);
    assert_eq!(delete[0].error_code.as_deref(), Some("DeviceNotFound"));

    let denied = only(&page, "device.put", "audited-2");
    assert_eq!(denied.len(), 2, "{denied:?}");
    let unauthenticated = denied
        .iter()
        .find(|entry| entry.status == 401)
        .expect("401");
    assert_eq!(unauthenticated.policy, None);
    assert_eq!(
        unauthenticated.error_code.as_deref(),
        Some("IotHubUnauthorizedAccess")
    );
    let refused = denied
        .iter()
        .find(|entry| entry.status == 403)
        .expect("403");
    assert_eq!(refused.policy.as_deref(), Some("service"));

    assert!(
        page.records
            .iter()
            .all(|entry| entry.operation != "device.get" && entry.status != 0),
        "reads are not recorded: {:?}",
        page.records
    );
    assert_eq!(page.records.len(), 6, "{:?}", page.records);
    let sequences: Vec<u64> = page.records.iter().map(|entry| entry.sequence).collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {sequences:?}"
    );
    assert_eq!(page.continuation_token, None);

    // Filters.
    let by_policy = audit(&reader, "policy=service").await;
    assert_eq!(by_policy.records.len(), 3, "{:?}", by_policy.records);
    let by_target = audit(&reader, "target=audited-1&operation=twin.patch").await;
    assert_eq!(by_target.records.len(), 1);
    let future = audit(&reader, "from=2999-01-01T00:00:00Z").await;
    assert!(future.records.is_empty());
    let past = audit(&reader, "to=2000-01-01T00:00:00Z").await;
    assert!(past.records.is_empty());
}

#[tokio::test]
async fn pages_walk_back_through_every_record_once() {
    let hub = TestHub::start().await;
    let owner = ServiceApi::for_hub(&hub, "registryReadWrite");
    for index in 0..7 {
        let id = format!("paged-{index}");
        let reply = owner
            .send(
                Method::PUT,
                &format!("/devices/{id}"),
                &[],
                Some(json!({"deviceId": id})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let mut seen = Vec::new();
    let mut query = "operation=device.put&limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = audit(&owner, &query).await;
        pages += 1;
        seen.extend(
            page.records
                .iter()
                .map(|entry| entry.target.clone().expect("a target")),
        );
        match page.continuation_token {
            Some(token) => query = format!("operation=device.put&limit=3&continuation={token}"),
            None => break,
        }
        assert!(pages < 10, "paging ends");
    }
    let expected: Vec<String> = (0..7).rev().map(|index| format!("paged-{index}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 7);
}

#[tokio::test]
async fn reading_the_log_needs_registry_read_and_well_formed_parameters() {
    let hub = TestHub::start().await;
    for policy in ["service", "device"] {
        let api = ServiceApi::for_hub(&hub, policy);
        let reply = api.send(Method::GET, "/audit", &[], None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{policy}");
    }
    let anonymous = ServiceApi::for_hub(&hub, "registryRead");
    let reply = anonymous.call(None, Method::GET, "/audit", &[], None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=many",
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "continuation=abc",
        "operaton=twin.patch",
    ] {
        let reply = anonymous
            .send(Method::GET, &format!("/audit?{bad}"), &[], None)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.body
        );
        assert_eq!(
            reply.error_code.as_deref(),
            Some("ArgumentInvalid"),
            "{bad}"
        );
    }
    // Reading the log is not itself recorded.
    let page = audit(&anonymous, "").await;
    assert!(page.records.is_empty(), "{:?}", page.records);
}
