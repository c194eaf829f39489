//! `POST /devices/query` against a real hub: results, paging with continuation under concurrent writes,
//! TOP, aggregates, modules, read-your-writes, and refusals with Azure's 400.

use std::collections::BTreeSet;

use fleethub_testkit::{Reply, ServiceApi, TestHub};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn query(
    api: &ServiceApi,
    text: &str,
    max: Option<usize>,
    continuation: Option<&str>,
) -> Reply {
    let max = max.map(|max| max.to_string());
    let mut headers = Vec::new();
    if let Some(max) = &max {
        headers.push(("x-ms-max-item-count", max.as_str()));
    }
    if let Some(token) = continuation {
        headers.push(("x-ms-continuation", token));
    }
    api.send(
        Method::POST,
        "/devices/query",
        &headers,
        Some(json!({ "query": text })),
    )
    .await
}

async fn tag(api: &ServiceApi, device: &str, tags: Value) {
    let reply = api
        .send(
            Method::PATCH,
            &format!("/twins/{device}"),
            &[],
            Some(json!({ "tags": tags })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

/// Follows continuation tokens to the end, returning every item and how many pages it took.
async fn all_pages(api: &ServiceApi, text: &str, page: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let reply = query(api, text, Some(page), token.as_deref()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        pages += 1;
        items.extend(reply.body.as_array().unwrap().iter().cloned());
        match continuation_of(&reply) {
            Some(next) => token = Some(next),
            None => return (items, pages),
        }
    }
}

fn continuation_of(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get("x-ms-continuation")
        .map(|value| value.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn queries_filter_project_and_page() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    for index in 0..25 {
        let id = format!("dev{index:02}");
        hub.create_device(&id).await;
        tag(
            &api,
            &id,
            json!({"site": if index % 2 == 0 { "even" } else { "odd" }, "n": index}),
        )
        .await;
    }
    hub.create_module("dev00", "m1").await;

    let reply = query(
        &api,
        "SELECT * FROM devices WHERE tags.site = 'even'",
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers.get("x-ms-item-type").unwrap(), "twin");
    let twins = reply.body.as_array().unwrap();
    assert_eq!(twins.len(), 13);
    assert!(
        twins
            .iter()
            .all(|twin| twin["tags"]["site"] == json!("even")
                && twin["properties"]["desired"]["$version"].is_number())
    );

    // Paging in pages of 4 yields every match once, in device order.
    let (items, pages) = all_pages(&api, "SELECT deviceId FROM devices WHERE tags.n >= 3", 4).await;
    let ids: Vec<&str> = items
        .iter()
        .map(|item| item["deviceId"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (3..25).map(|index| format!("dev{index:02}")).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(pages, 6);

    let top = all_pages(&api, "SELECT TOP 5 deviceId FROM devices", 2)
        .await
        .0;
    assert_eq!(top.len(), 5, "TOP bounds the whole answer across pages");

    let count = query(
        &api,
        "SELECT COUNT() AS total FROM devices WHERE tags.site = 'odd'",
        None,
        None,
    )
    .await;
    assert_eq!(count.body, json!([{"total": 12}]));
    let groups = query(
        &api,
        "SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site ORDER BY site",
        None,
        None,
    )
    .await;
    assert_eq!(
        groups.body,
        json!([{"site": "even", "n": 13}, {"site": "odd", "n": 12}])
    );
    assert_ne!(groups.headers.get("x-ms-item-type").unwrap(), "twin");

    let modules = query(
        &api,
        "SELECT * FROM devices.modules WHERE moduleId = 'm1'",
        None,
        None,
    )
    .await;
    assert_eq!(modules.body.as_array().unwrap().len(), 1);
    assert_eq!(modules.body[0]["deviceId"], json!("dev00"));

    // Read-your-writes: a twin write is visible to the very next query.
    tag(&api, "dev07", json!({"site": "special"})).await;
    let special = query(
        &api,
        "SELECT deviceId FROM devices WHERE tags.site = 'special'",
        None,
        None,
    )
    .await;
    assert_eq!(special.body, json!([{"deviceId": "dev07"}]));
}

#[tokio::test]
async fn paging_neither_skips_nor_repeats_while_twins_change() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    for index in 0..40 {
        let id = format!("dev{index:02}");
        hub.create_device(&id).await;
        tag(&api, &id, json!({"fleet": "x"})).await;
    }
    let text = "SELECT deviceId FROM devices WHERE tags.fleet = 'x'";
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut round = 0;
    loop {
        let reply = query(&api, text, Some(7), token.as_deref()).await;
        seen.extend(
            reply
                .body
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["deviceId"].as_str().unwrap().to_owned()),
        );
        // Between pages: rewrite twins already returned and twins still to come, and add a device at the end.
        round += 1;
        tag(&api, "dev00", json!({"touched": round})).await;
        tag(&api, "dev39", json!({"touched": round})).await;
        match continuation_of(&reply) {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no twin repeated");
    assert_eq!(seen.len(), 40, "no twin skipped");
}

#[tokio::test]
async fn bad_queries_are_400_with_the_reason() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let long = format!(
        "SELECT * FROM devices WHERE tags.x = '{}'",
        "a".repeat(8200)
    );
    for (text, needle) in [
        ("SELECT * FROM devices WHERE tags.a = 1 AND", "position 42"),
        ("SELECT * FRM devices", "position"),
        (long.as_str(), "8192"),
        ("SELECT deviceId FROM devices.jobs", "devices.jobs"),
    ] {
        let reply = query(&api, text, None, None).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{text}: {}",
            reply.body
        );
        let message = reply.body["Message"].as_str().unwrap();
        assert!(message.contains(needle), "{text}: {message}");
    }
    let zero = query(&api, "SELECT * FROM devices", Some(0), None).await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);
    let too_many = query(&api, "SELECT * FROM devices", Some(1001), None).await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    let forged = query(
        &api,
        "SELECT * FROM devices",
        None,
        Some("bm90IGEgdG9rZW4="),
    )
    .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    let missing = api
        .send(Method::POST, "/devices/query", &[], Some(json!({})))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);

    // A device named "query" is still a device.
    hub.create_device("query").await;
    let device = api.send(Method::GET, "/devices/query", &[], None).await;
    assert_eq!(
        (device.status, device.body["deviceId"].clone()),
        (StatusCode::OK, json!("query"))
    );
}

/// Counting from the index (exact WHERE, indexed GROUP BY path, COUNT only) gives the same groups as
/// evaluating twin by twin (forced here by an inexact WHERE that matches everything).
#[tokio::test]
async fn counts_from_the_index_equal_counts_by_evaluation() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    let values = [
        json!("a"),
        json!("b"),
        json!(1),
        json!("1"),
        json!(true),
        json!(null),
    ];
    for index in 0..30 {
        let id = format!("dev{index:02}");
        hub.create_device(&id).await;
        if index % 7 != 0 {
            tag(
                &api,
                &id,
                json!({"kind": values[index % values.len()].clone(), "n": index}),
            )
            .await;
        }
    }
    let sorted = |reply: Reply| {
        let mut rows: Vec<String> = reply
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        rows.sort();
        rows
    };
    for (fast, slow) in [
        (
            "SELECT tags.kind AS kind, COUNT() AS n FROM devices GROUP BY tags.kind",
            "SELECT tags.kind AS kind, COUNT() AS n FROM devices WHERE deviceId = deviceId GROUP BY tags.kind",
        ),
        (
            "SELECT tags.kind, COUNT() AS n FROM devices WHERE tags.n > 10 GROUP BY tags.kind",
            "SELECT tags.kind, COUNT() AS n FROM devices WHERE tags.n + 0 > 10 GROUP BY tags.kind",
        ),
        (
            "SELECT COUNT() AS n FROM devices WHERE tags.kind = 'a'",
            "SELECT COUNT() AS n FROM devices WHERE tags.kind = LOWER('A')",
        ),
    ] {
        let fast_rows = sorted(query(&api, fast, None, None).await);
        let slow_rows = sorted(query(&api, slow, None, None).await);
        assert_eq!(fast_rows, slow_rows, "{fast}");
        assert!(!fast_rows.is_empty());
    }
    // An object value in the grouped path falls back to evaluation and still answers correctly.
    tag(&api, "dev01", json!({"kind": {"nested": 1}})).await;
    let rows = sorted(
        query(
            &api,
            "SELECT tags.kind AS kind, COUNT() AS n FROM devices GROUP BY tags.kind",
            None,
            None,
        )
        .await,
    );
    assert!(rows.iter().any(|row| row.contains("nested")), "{rows:?}");
}

#[tokio::test]
async fn the_service_sdk_streams_every_page() {
    let hub = TestHub::start().await;
    let api = ServiceApi::for_hub(&hub, "iothubowner");
    for index in 0..10 {
        hub.create_device(&format!("dev{index}")).await;
    }
    let key = hub.policy("iothubowner").primary_key;
    let client = fleethub_service::ServiceClient::from_connection_string(
        &format!(
            "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey={key}",
            api.host
        ),
        fleethub_service::ServiceClientOptions {
            ca_pem: Some(hub.hub.ca_pem.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let items = client
        .query("SELECT deviceId FROM devices", Some(3))
        .collect_all()
        .await
        .unwrap();
    let ids: Vec<&str> = items
        .iter()
        .map(|item| item["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..10)
            .map(|index| format!("dev{index}"))
            .collect::<Vec<_>>()
    );
    let page = client
        .query_page("SELECT * FROM devices", None, Some(4))
        .await
        .unwrap();
    assert_eq!(
        (page.items.len(), page.item_type.as_deref()),
        (4, Some("twin"))
    );
    assert!(page.continuation.is_some());
    let error = client
        .query("SELECT * FROM nowhere", None)
        .collect_all()
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
}
