//! The REST API against a real hub over real HTTPS: authorisation per policy, registry, twins, direct
//! methods, error shapes, and bad requests with their exact outcome.

use std::time::Duration;

use fleethub_core::access::AccessPolicy;
use fleethub_mqtt::{Packet, QoS};
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use reqwest::{Method, StatusCode};

use fleethub_testkit::*;
use serde_json::{Value, json};

struct Api {
    inner: ServiceApi,
    client: reqwest::Client,
    base: String,
    host: String,
}

impl Api {
    fn new(hub: &TestHub) -> Self {
        let inner = ServiceApi::for_hub(hub, "iothubowner");
        Self {
            client: inner.client.clone(),
            base: inner.base.clone(),
            host: inner.host.clone(),
            inner,
        }
    }

    fn policy(hub: &TestHub, name: &str) -> AccessPolicy {
        hub.policy(name)
    }

    /// A service token as the Python SDK makes it (sr = URL-encoded host with port).
    fn token(&self, policy: &AccessPolicy, expiry: u64) -> String {
        let key = decode_key(&policy.primary_key).unwrap();
        generate_sas_token(&self.host, &key, expiry, Some(&policy.key_name))
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.inner.call(token, method, path, headers, body).await
    }

    async fn owner(
        &self,
        _hub: &TestHub,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        self.inner.send(method, path, headers, body).await
    }
}

fn registry_message(reply: &Reply) -> String {
    reply.body["Message"]
        .as_str()
        .unwrap_or_else(|| panic!("registry error shape expected: {}", reply.body))
        .to_owned()
}

#[tokio::test]
async fn health_answers_once_listening() {
    let hub = TestHub::start().await;
    let api = Api::new(&hub);
    let reply = api.call(None, Method::GET, "/healthz", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// One row per policy: each operation family answers 2xx with the right, 403 without it.
#[tokio::test]
async fn every_policy_gets_exactly_its_rights() {
    let hub = TestHub::start().await;
    hub.create_device("target").await;
    let api = Api::new(&hub);
    let device =
        json!({"deviceId": "made-by-test", "authentication": {"type": "sas", "symmetricKey": {}}});
    // (policy, registry read, registry write, twin read, twin write, invoke method)
    let table = [
        ("iothubowner", true, true, true, true, true),
        ("service", false, false, true, true, true),
        ("registryRead", true, false, true, false, false),
        ("registryReadWrite", true, true, true, false, false),
        ("device", false, false, false, false, false),
    ];
    for (name, registry_read, registry_write, twin_read, twin_write, invoke) in table {
        let token = api.token(&Api::policy(&hub, name), unix_now() + 3600);
        let check = |reply: Reply, allowed: bool, what: &str| {
            if allowed {
                assert_ne!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "{name} may {what}: {}",
                    reply.body
                );
                assert_ne!(
                    reply.status,
                    StatusCode::UNAUTHORIZED,
                    "{name} may {what}: {}",
                    reply.body
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "{name} may not {what}: {}",
                    reply.body
                );
                assert_eq!(reply.error_code.as_deref(), Some("GenericForbidden"));
            }
        };
        check(
            api.call(Some(&token), Method::GET, "/devices/target", &[], None)
                .await,
            registry_read,
            "read the registry",
        );
        let body = serde_json::to_vec(&device).unwrap();
        let created = api
            .call(
                Some(&token),
                Method::PUT,
                "/devices/made-by-test",
                &[],
                Some(body),
            )
            .await;
        check(created, registry_write, "write the registry");
        let _ = hub
            .hub
            .services
            .delete_identity(
                &fleethub_core::identity::IdentityKey::device("made-by-test".parse().unwrap()),
                fleethub_protocol::ids::IfMatch::Any,
            )
            .await;
        check(
            api.call(Some(&token), Method::GET, "/twins/target", &[], None)
                .await,
            twin_read,
            "read twins",
        );
        let patch = serde_json::to_vec(&json!({"tags": {"by": name}})).unwrap();
        check(
            api.call(
                Some(&token),
                Method::PATCH,
                "/twins/target",
                &[],
                Some(patch),
            )
            .await,
            twin_write,
            "write twins",
        );
        let method = serde_json::to_vec(&json!({"methodName": "ping", "payload": null, "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 0})).unwrap();
        let reply = api
            .call(
                Some(&token),
                Method::POST,
                "/twins/target/methods",
                &[],
                Some(method),
            )
            .await;
        if invoke {
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{name}: the device is offline, so 404103: {}",
                reply.body
            );
        } else {
            check(reply, false, "invoke methods");
        }
    }
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_reason() {
    let hub = TestHub::start().await;
    let api = Api::new(&hub);
    let owner = Api::policy(&hub, "iothubowner");
    let key = decode_key(&owner.primary_key).unwrap();
    let other_key = decode_key(&Api::policy(&hub, "service").primary_key).unwrap();
    let cases = [
        ("no token", None, "missing"),
        (
            "malformed",
            Some("SharedAccessSignature nonsense".to_owned()),
            "malformed",
        ),
        (
            "expired",
            Some(api.token(&owner, unix_now() - 60)),
            "expired",
        ),
        (
            "wrong key",
            Some(generate_sas_token(
                &api.host,
                &other_key,
                unix_now() + 3600,
                Some("iothubowner"),
            )),
            "signature",
        ),
        (
            "unknown policy",
            Some(generate_sas_token(
                &api.host,
                &key,
                unix_now() + 3600,
                Some("root"),
            )),
            "unknown",
        ),
        (
            "another hub",
            Some(generate_sas_token(
                "otherhub.azure-devices.net",
                &key,
                unix_now() + 3600,
                Some("iothubowner"),
            )),
            "not this hub",
        ),
        (
            "no policy name",
            Some(generate_sas_token(&api.host, &key, unix_now() + 3600, None)),
            "skn",
        ),
    ];
    for (name, token, needle) in cases {
        let reply = api
            .call(token.as_deref(), Method::GET, "/devices", &[], None)
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            reply.error_code.as_deref(),
            Some("IotHubUnauthorizedAccess"),
            "{name}"
        );
        let message = registry_message(&reply);
        assert!(
            message.starts_with("ErrorCode:IotHubUnauthorizedAccess;"),
            "{name}: {message}"
        );
        assert!(message.contains(needle), "{name}: {message}");
    }
    // The host may be named in any case and with or without the port.
    let token = generate_sas_token("LOCALHOST", &key, unix_now() + 3600, Some("iothubowner"));
    assert_eq!(
        api.call(Some(&token), Method::GET, "/devices", &[], None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn registry_create_read_update_delete_follow_azure() {
    let hub = TestHub::start().await;
    let api = Api::new(&hub);
    let body = json!({"deviceId": "dev1", "status": "enabled", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}, "capabilities": {"iotEdge": false}});
    let created = api
        .owner(&hub, Method::PUT, "/devices/dev1", &[], Some(body.clone()))
        .await;
    assert_eq!(
        created.status,
        StatusCode::OK,
        "create answers 200: {}",
        created.body
    );
    let keys = &created.body["authentication"]["symmetricKey"];
    assert!(
        keys["primaryKey"]
            .as_str()
            .is_some_and(|key| key.len() == 44),
        "empty keys are generated: {keys}"
    );
    assert_eq!(created.body["connectionState"], json!("Disconnected"));
    assert_eq!(
        created.body["lastActivityTime"],
        json!("0001-01-01T00:00:00Z")
    );
    let etag = created.body["etag"].as_str().unwrap().to_owned();

    let duplicate = api
        .owner(&hub, Method::PUT, "/devices/dev1", &[], Some(body.clone()))
        .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.error_code.as_deref(), Some("DeviceAlreadyExists"));
    assert!(registry_message(&duplicate).starts_with("ErrorCode:DeviceAlreadyExists;"));

    let stale = api
        .owner(
            &hub,
            Method::PUT,
            "/devices/dev1",
            &[("if-match", "\"bm90LWl0\"")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.error_code.as_deref(), Some("PreconditionFailed"));

    let mut disabled = body.clone();
    disabled["status"] = json!("disabled");
    disabled["authentication"]["symmetricKey"] = keys.clone();
    let quoted = format!("\"{etag}\"");
    let updated = api
        .owner(
            &hub,
            Method::PUT,
            "/devices/dev1",
            &[("if-match", &quoted)],
            Some(disabled.clone()),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["status"], json!("disabled"));
    assert_eq!(
        &updated.body["authentication"]["symmetricKey"], keys,
        "keys kept"
    );
    assert_ne!(updated.body["etag"], json!(etag));

    let unknown = api
        .owner(
            &hub,
            Method::PUT,
            "/devices/nobody",
            &[("if-match", "*")],
            Some(json!({"deviceId": "nobody"})),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::NOT_FOUND,
        "If-Match on an unknown id"
    );
    assert_eq!(unknown.error_code.as_deref(), Some("DeviceNotFound"));

    let listed = api
        .owner(&hub, Method::GET, "/devices?top=10", &[], None)
        .await;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));
    let statistics = api
        .owner(&hub, Method::GET, "/statistics/devices", &[], None)
        .await;
    assert_eq!(
        statistics.body,
        json!({"totalDeviceCount": 1, "enabledDeviceCount": 0, "disabledDeviceCount": 1})
    );

    let module = api
        .owner(
            &hub,
            Method::PUT,
            "/devices/dev1/modules/mod1",
            &[],
            Some(json!({"moduleId": "mod1", "deviceId": "dev1", "managedBy": ""})),
        )
        .await;
    assert_eq!(module.status, StatusCode::OK, "{}", module.body);
    assert_eq!(module.body["moduleId"], json!("mod1"));
    let modules = api
        .owner(&hub, Method::GET, "/devices/dev1/modules", &[], None)
        .await;
    assert_eq!(modules.body.as_array().map(Vec::len), Some(1));
    let duplicate_module = api
        .owner(
            &hub,
            Method::PUT,
            "/devices/dev1/modules/mod1",
            &[],
            Some(json!({})),
        )
        .await;
    assert_eq!(
        duplicate_module.error_code.as_deref(),
        Some("ModuleAlreadyExistsOnDevice")
    );
    let orphan = api
        .owner(
            &hub,
            Method::PUT,
            "/devices/ghost/modules/mod1",
            &[],
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (orphan.status, orphan.error_code.as_deref()),
        (StatusCode::NOT_FOUND, Some("DeviceNotFound"))
    );
    let missing_module = api
        .owner(&hub, Method::GET, "/devices/dev1/modules/nope", &[], None)
        .await;
    assert_eq!(missing_module.error_code.as_deref(), Some("ModuleNotFound"));

    let deleted = api
        .owner(
            &hub,
            Method::DELETE,
            "/devices/dev1",
            &[("if-match", "*")],
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api
        .owner(&hub, Method::GET, "/devices/dev1/modules/mod1", &[], None)
        .await;
    assert_eq!(
        gone.status,
        StatusCode::NOT_FOUND,
        "modules go with their device"
    );
}

#[tokio::test]
async fn bad_requests_are_400_or_413_with_the_reason() {
    let hub = TestHub::start().await;
    hub.create_device("dev1").await;
    let api = Api::new(&hub);
    let token = api.token(&Api::policy(&hub, "iothubowner"), unix_now() + 3600);
    let long_id = "a".repeat(129);
    /// (case, method, path, body, expected status, text the message must contain)
    type Case = (
        &'static str,
        Method,
        String,
        Option<Vec<u8>>,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("id too long", Method::GET, format!("/devices/{long_id}"), None, StatusCode::BAD_REQUEST, "129"),
        ("bad character in id", Method::GET, "/devices/a%20b".into(), None, StatusCode::BAD_REQUEST, "' '"),
        ("body not JSON", Method::PUT, "/devices/dev2".into(), Some(b"{nope".to_vec()), StatusCode::BAD_REQUEST, "not valid JSON"),
        ("empty body", Method::PUT, "/devices/dev2".into(), Some(Vec::new()), StatusCode::BAD_REQUEST, "empty"),
        ("body id differs", Method::PUT, "/devices/dev2".into(), Some(br#"{"deviceId":"dev3"}"#.to_vec()), StatusCode::BAD_REQUEST, "does not match"),
        ("bad status", Method::PUT, "/devices/dev2".into(), Some(br#"{"status":"sleeping"}"#.to_vec()), StatusCode::BAD_REQUEST, "status"),
        ("short key", Method::PUT, "/devices/dev2".into(), Some(br#"{"authentication":{"type":"sas","symmetricKey":{"primaryKey":"c2hvcnQ="}}}"#.to_vec()), StatusCode::BAD_REQUEST, "between 16 and 64 bytes"),
        ("twin not an object", Method::PATCH, "/twins/dev1".into(), Some(b"[1]".to_vec()), StatusCode::BAD_REQUEST, "object"),
        ("twin key with dot", Method::PATCH, "/twins/dev1".into(), Some(br#"{"tags":{"a.b":1}}"#.to_vec()), StatusCode::BAD_REQUEST, "."),
        ("tags too large", Method::PATCH, "/twins/dev1".into(), Some(serde_json::to_vec(&json!({"tags": {"a": "x".repeat(4000), "b": "x".repeat(4000), "c": "x".repeat(4000)}})).unwrap()), StatusCode::BAD_REQUEST, "8192"),
        ("body over 1 MiB", Method::PATCH, "/twins/dev1".into(), Some(vec![b' '; 1024 * 1024 + 10]), StatusCode::PAYLOAD_TOO_LARGE, "too large"),
        ("top out of range", Method::GET, "/devices?top=0".into(), None, StatusCode::BAD_REQUEST, "top"),
        ("unknown endpoint", Method::GET, "/nothing/here".into(), None, StatusCode::NOT_FOUND, "no such endpoint"),
    ];
    for (name, method, path, body, status, needle) in cases {
        let reply = api.call(Some(&token), method, &path, &[], body).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        assert!(
            reply.error_code.is_some(),
            "{name}: every error names its code in iothub-errorcode"
        );
        let message = registry_message(&reply);
        assert!(message.contains(needle), "{name}: {message}");
    }
    let not_allowed = api
        .call(
            Some(&token),
            Method::POST,
            "/devices/dev1",
            &[],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn twins_read_patch_and_replace_with_etags() {
    let hub = TestHub::start().await;
    hub.create_device("dev1").await;
    let api = Api::new(&hub);
    let twin = api.owner(&hub, Method::GET, "/twins/dev1", &[], None).await;
    assert_eq!(twin.status, StatusCode::OK);
    for field in [
        "deviceId",
        "etag",
        "deviceEtag",
        "status",
        "statusUpdateTime",
        "connectionState",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "authenticationType",
        "version",
        "tags",
        "properties",
    ] {
        assert!(
            twin.body.get(field).is_some(),
            "twin has {field}: {}",
            twin.body
        );
    }
    assert_eq!(twin.body["properties"]["desired"]["$version"], json!(1));
    let etag = twin.body["etag"].as_str().unwrap().to_owned();

    let patch =
        json!({"tags": {"site": "a"}, "properties": {"desired": {"fw": "2.0", "gone": null}}});
    let quoted = format!("\"{etag}\"");
    let patched = api
        .owner(
            &hub,
            Method::PATCH,
            "/twins/dev1",
            &[("if-match", &quoted)],
            Some(patch.clone()),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["tags"]["site"], json!("a"));
    assert_eq!(patched.body["properties"]["desired"]["fw"], json!("2.0"));
    assert_eq!(patched.body["properties"]["desired"]["$version"], json!(2));
    assert!(
        patched.body["properties"]["desired"]["$metadata"]["fw"]["$lastUpdatedVersion"].is_number()
    );

    let stale = api
        .owner(
            &hub,
            Method::PATCH,
            "/twins/dev1",
            &[("if-match", &quoted)],
            Some(patch),
        )
        .await;
    assert_eq!(
        (stale.status, stale.error_code.as_deref()),
        (StatusCode::PRECONDITION_FAILED, Some("PreconditionFailed"))
    );

    // A full get -> modify -> replace round trip, as the SDKs do it, is accepted.
    let mut full = patched.body.clone();
    full["tags"] = json!({"site": "b"});
    full["properties"]["desired"]["fw"] = json!("3.0");
    let replaced = api
        .owner(
            &hub,
            Method::PUT,
            "/twins/dev1",
            &[("if-match", "*")],
            Some(full),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.body["tags"], json!({"site": "b"}));
    assert_eq!(replaced.body["properties"]["desired"]["fw"], json!("3.0"));

    hub.create_module("dev1", "mod1").await;
    let module_twin = api
        .owner(
            &hub,
            Method::PATCH,
            "/twins/dev1/modules/mod1",
            &[],
            Some(json!({"properties": {"desired": {"m": 1}}})),
        )
        .await;
    assert_eq!(module_twin.status, StatusCode::OK);
    assert_eq!(module_twin.body["moduleId"], json!("mod1"));
    let device_twin = api.owner(&hub, Method::GET, "/twins/dev1", &[], None).await;
    assert!(
        device_twin.body["properties"]["desired"].get("m").is_none(),
        "module twins are separate"
    );
    let missing = api
        .owner(&hub, Method::GET, "/twins/nobody", &[], None)
        .await;
    assert_eq!(
        (missing.status, missing.error_code.as_deref()),
        (StatusCode::NOT_FOUND, Some("DeviceNotFound"))
    );
}

#[tokio::test]
async fn method_calls_are_validated_and_fail_with_distinct_codes() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let api = Api::new(&hub);
    let call = |body: Value| {
        let api = &api;
        let hub = &hub;
        async move {
            api.owner(hub, Method::POST, "/twins/dev1/methods", &[], Some(body))
                .await
        }
    };
    let nested = |reply: &Reply| -> Value {
        serde_json::from_str(
            reply.body["Message"]
                .as_str()
                .expect("nested numeric shape"),
        )
        .expect("numeric body in Message")
    };
    for (name, body, needle) in [
        (
            "timeout too short",
            json!({"methodName": "m", "responseTimeoutInSeconds": 4}),
            "responseTimeoutInSeconds",
        ),
        (
            "timeout too long",
            json!({"methodName": "m", "responseTimeoutInSeconds": 301}),
            "responseTimeoutInSeconds",
        ),
        (
            "connect timeout too long",
            json!({"methodName": "m", "connectTimeoutInSeconds": 301}),
            "connectTimeoutInSeconds",
        ),
        (
            "bad method name",
            json!({"methodName": "a/b"}),
            "method name",
        ),
        ("no method name", json!({"payload": 1}), "methodName"),
    ] {
        let reply = call(body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{name}: {}",
            reply.body
        );
        let numeric = nested(&reply);
        assert_eq!(numeric["errorCode"], json!(400004), "{name}");
        assert!(
            numeric["message"].as_str().unwrap().contains(needle),
            "{name}: {numeric}"
        );
    }
    let offline =
        call(json!({"methodName": "m", "payload": "text", "connectTimeoutInSeconds": 0})).await;
    assert_eq!(
        (offline.status, offline.error_code.as_deref()),
        (StatusCode::NOT_FOUND, Some("DeviceNotOnline"))
    );
    assert_eq!(nested(&offline)["errorCode"], json!(404103));
    let unknown = api
        .owner(
            &hub,
            Method::POST,
            "/twins/ghost/methods",
            &[],
            Some(json!({"methodName": "m"})),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.error_code.as_deref()),
        (StatusCode::NOT_FOUND, Some("DeviceNotFound"))
    );
    assert_eq!(nested(&unknown)["errorCode"], json!(404001));
    let huge = call(json!({"methodName": "m", "payload": "x".repeat(129 * 1024)})).await;
    assert_eq!(
        (huge.status, huge.error_code.as_deref()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("MessageTooLarge"))
    );

    // Any JSON payload, including a bare string, reaches the device and any JSON comes back.
    let mut device = hub.connected(&record).await;
    device
        .send(&subscribe(1, "$iothub/methods/POST/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(device.receive().await, Some(Packet::SubAck(_))));
    let pending = tokio::spawn({
        let base = api.base.clone();
        let client = api.client.clone();
        let token = api.token(&Api::policy(&hub, "service"), unix_now() + 3600);
        async move {
            client
                .post(format!("{base}/twins/dev1/methods?api-version=2021-04-12"))
                .header("authorization", token)
                .json(&json!({"methodName": "echo", "payload": "just a string", "responseTimeoutInSeconds": 10}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    let request = device.receive_publish().await;
    assert_eq!(&request.payload[..], br#""just a string""#);
    let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
    device
        .send(&publish_qos1(
            &format!("$iothub/methods/res/404/?$rid={rid}"),
            2,
            br#"["a",1]"#,
        ))
        .await;
    let result = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        result,
        json!({"status": 404, "payload": ["a", 1]}),
        "the device's own status passes through"
    );
}

#[tokio::test]
async fn service_statistics_count_connected_devices() {
    let hub = TestHub::start().await;
    let record = hub.create_device("dev1").await;
    let api = Api::new(&hub);
    let _device = hub.connected(&record).await;
    let reply = api
        .owner(&hub, Method::GET, "/statistics/service", &[], None)
        .await;
    assert_eq!(reply.body, json!({"connectedDeviceCount": 1}));
}
