//! The client against a scripted HTTPS server on 127.0.0.1:0: what goes on the wire for each call (method,
//! path, headers, body, SAS token), how answers and failures come back, and connection reuse.
//!
//! The real hub is exercised by the end-to-end tests in `crates/fleethub-hub/tests/`; this server only checks
//! our side of the contract (PROTOCOL.md §3) and failure modes a healthy hub cannot easily produce.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleethub_service::protocol::errors::{ErrorCode, ReportedErrorCode};
use fleethub_service::protocol::ids::{DeviceId, ETag, ModuleId};
use fleethub_service::protocol::rest::{
    CloudToDeviceMethod, ConnectionState, Device, Module, RegistryStatistics, ServiceStatistics,
    Twin,
};
use fleethub_service::protocol::sas::{SasToken, decode_key};
use fleethub_service::{HeaderMap, Method, ServiceClient, ServiceClientOptions, ServiceError};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const POLICY_KEY: &str = "cG9saWN5LWtleS1mb3ItZmxlZXRodWItdGVzdHMtMzI=";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("ascii header"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is json")
    }
}

/// One scripted answer.
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    delay: Duration,
}

impl Answer {
    fn json(status: u16, body: Value) -> Self {
        Answer {
            status,
            headers: vec![("content-type", "application/json; charset=utf-8")],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    fn empty(status: u16) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    /// Answer given when the script has run out.
    fallback: Mutex<Option<Answer>>,
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
}

struct MockHub {
    address: SocketAddr,
    ca_pem: String,
    script: Arc<Script>,
}

impl MockHub {
    async fn start() -> MockHub {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let certificate: CertificateDer<'static> = certified.cert.der().clone();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let script = Arc::new(Script::default());
        let accept_script = Arc::clone(&script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_script.connections.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let script = Arc::clone(&accept_script);
                tokio::spawn(async move {
                    // Handshake failures are what some tests are about; the client reports them.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request| answer(Arc::clone(&script), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        MockHub {
            address,
            ca_pem: certified.cert.pem(),
            script,
        }
    }

    fn connection_string(&self) -> String {
        format!(
            "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={POLICY_KEY}",
            self.address.port()
        )
    }

    fn client(&self) -> ServiceClient {
        self.client_with(ServiceClientOptions {
            ca_pem: Some(self.ca_pem.clone()),
            ..Default::default()
        })
    }

    fn client_with(&self, options: ServiceClientOptions) -> ServiceClient {
        ServiceClient::from_connection_string(&self.connection_string(), options)
            .expect("valid client")
    }

    fn then(&self, answer: Answer) -> &Self {
        self.script.answers.lock().expect("lock").push_back(answer);
        self
    }

    fn always(&self, answer: Answer) {
        *self.script.fallback.lock().expect("lock") = Some(answer);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.script.requests.lock().expect("lock").clone()
    }

    fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests.into_iter().next().expect("one request")
    }
}

async fn answer(
    script: Arc<Script>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes().to_vec())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_default();
    script.requests.lock().expect("lock").push(Recorded {
        method: parts.method,
        path_and_query,
        headers: parts.headers,
        body,
    });
    let scripted = script.answers.lock().expect("lock").pop_front();
    let fallback = script.fallback.lock().expect("lock").clone();
    let answer = scripted.or(fallback).unwrap_or_else(|| {
        Answer::json(
            500,
            json!({"Message": "ErrorCode:ServerError;the script ran out"}),
        )
    });
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = hyper::Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        response = response.header(*name, *value);
    }
    Ok(response
        .body(Full::new(Bytes::from(answer.body)))
        .expect("valid response"))
}

fn device_id(text: &str) -> DeviceId {
    DeviceId::new(text).expect("valid id")
}

fn device_json(id: &str) -> Value {
    json!({
        "deviceId": id, "generationId": "638500000000000000", "etag": "MTIzNDU2Nzg=", "connectionState": "Disconnected",
        "status": "enabled", "statusReason": null, "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
        "statusUpdatedTime": "0001-01-01T00:00:00Z", "lastActivityTime": "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": 0,
        "authentication": {"symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"},
                           "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}, "type": "sas"},
        "capabilities": {"iotEdge": false}, "deviceScope": null, "parentScopes": []
    })
}

fn twin_json(id: &str, version: u64) -> Value {
    json!({
        "deviceId": id, "etag": "AAAAAAAAAAI=", "deviceEtag": "NzA5NDc0MjQ4", "status": "enabled", "version": version,
        "connectionState": "Connected", "tags": {"site": "b"},
        "properties": {"desired": {"foo": 2, "$metadata": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z"}, "$version": 2},
                       "reported": {"$metadata": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z"}, "$version": 1}}
    })
}

/// Checks the request carries a valid service token for this hub: `sr` is the URL-encoded `HostName`,
/// `skn` the policy, an hour of validity.
fn assert_signed(request: &Recorded, hub: &MockHub) {
    let token: SasToken = request
        .header("authorization")
        .expect("authorization header")
        .parse()
        .expect("a sas token");
    assert_eq!(token.sr_raw, format!("localhost%3A{}", hub.address.port()));
    assert_eq!(token.key_name.as_deref(), Some("iothubowner"));
    assert!(token.signature_matches(&decode_key(POLICY_KEY).expect("valid key")));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        (now + 3590..=now + 3600).contains(&token.expiry),
        "expiry {} now {now}",
        token.expiry
    );
}

#[tokio::test]
async fn create_device_sends_what_the_python_sdk_sends() {
    let hub = MockHub::start().await;
    hub.then(Answer::json(200, device_json("a?b%c")));
    let mut device = Device::new(device_id("a?b%c"));
    device.authentication =
        serde_json::from_value(json!({"symmetricKey": {}, "type": "sas"})).expect("valid");

    let created = hub.client().create_device(&device).await.expect("created");

    assert_eq!(created.device_id, "a?b%c");
    assert_eq!(created.etag, Some(ETag::new("MTIzNDU2Nzg=")));
    let request = hub.only_request();
    assert_eq!(request.method, Method::PUT);
    assert_eq!(
        request.path_and_query,
        "/devices/a%3Fb%25c?api-version=2021-04-12"
    );
    assert_eq!(
        request.header("if-match"),
        None,
        "create must not send If-Match"
    );
    assert_eq!(
        request.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(
        request.header("host"),
        Some(&*format!("localhost:{}", hub.address.port()))
    );
    assert_signed(&request, &hub);
    assert_eq!(
        request.json(),
        json!({"deviceId": "a?b%c", "statusReason": null,
               "authentication": {"symmetricKey": {"primaryKey": null, "secondaryKey": null},
                                  "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}, "type": "sas"},
               "deviceScope": null, "parentScopes": []})
    );
}

#[tokio::test]
async fn updates_and_deletes_send_a_quoted_if_match() {
    let hub = MockHub::start().await;
    hub.then(Answer::json(200, device_json("dev1")))
        .then(Answer::json(200, device_json("dev1")))
        .then(Answer::empty(204))
        .then(Answer::empty(204));
    let client = hub.client();
    let device = Device::new(device_id("dev1"));
    let etag = ETag::new("MTIzNDU2Nzg=");

    client
        .update_device(&device, Some(&etag))
        .await
        .expect("updated");
    client.update_device(&device, None).await.expect("updated");
    client
        .delete_device(&device_id("dev1"), None)
        .await
        .expect("deleted");
    client
        .delete_device(&device_id("dev1"), Some(&ETag::new("\"MTIzNDU2Nzg=\"")))
        .await
        .expect("deleted");

    let seen: Vec<(Method, String, Option<String>)> = hub
        .requests()
        .iter()
        .map(|request| {
            (
                request.method.clone(),
                request.path_and_query.clone(),
                request.header("if-match").map(str::to_owned),
            )
        })
        .collect();
    let path = "/devices/dev1?api-version=2021-04-12".to_owned();
    assert_eq!(
        seen,
        vec![
            (
                Method::PUT,
                path.clone(),
                Some("\"MTIzNDU2Nzg=\"".to_owned())
            ),
            (Method::PUT, path.clone(), Some("\"*\"".to_owned())),
            (Method::DELETE, path.clone(), Some("\"*\"".to_owned())),
            (Method::DELETE, path, Some("\"MTIzNDU2Nzg=\"".to_owned())),
        ]
    );
}

#[tokio::test]
async fn every_registry_call_uses_its_path() {
    let hub = MockHub::start().await;
    let module = json!({"moduleId": "$edgeAgent", "deviceId": "d:1", "managedBy": "", "etag": "bW9k", "connectionState": "Disconnected",
                        "authentication": {"symmetricKey": {"primaryKey": "bW9kdWxl", "secondaryKey": "bW9kdWxlMg=="}, "type": "sas"}});
    hub.then(Answer::json(200, device_json("d:1")))
        .then(Answer::json(
            200,
            json!([device_json("d:1"), device_json("e")]),
        ))
        .then(Answer::json(200, json!([])))
        .then(Answer::json(200, module.clone()))
        .then(Answer::json(200, module.clone()))
        .then(Answer::json(200, module.clone()))
        .then(Answer::json(200, json!([module])))
        .then(Answer::empty(204))
        .then(Answer::json(
            200,
            json!({"totalDeviceCount": 3, "enabledDeviceCount": 2, "disabledDeviceCount": 1}),
        ))
        .then(Answer::json(200, json!({"connectedDeviceCount": 1})));
    let client = hub.client();
    let device = device_id("d:1");
    let module_id = ModuleId::new("$edgeAgent").expect("valid");
    let module = Module::new(device.clone(), module_id.clone());

    assert_eq!(
        client.get_device(&device).await.expect("got").device_id,
        device
    );
    assert_eq!(
        client.list_devices(Some(100)).await.expect("listed").len(),
        2
    );
    assert!(client.list_devices(None).await.expect("listed").is_empty());
    let created = client.create_module(&module).await.expect("created");
    assert_eq!(created.etag, Some(ETag::new("bW9k")));
    assert_eq!(
        client.module_connection_string(&created).as_deref(),
        Some("HostName=localhost;DeviceId=d:1;ModuleId=$edgeAgent;SharedAccessKey=bW9kdWxl")
    );
    client
        .update_module(&module, Some(&ETag::new("bW9k")))
        .await
        .expect("updated");
    client.get_module(&device, &module_id).await.expect("got");
    assert_eq!(client.list_modules(&device).await.expect("listed").len(), 1);
    client
        .delete_module(&device, &module_id, None)
        .await
        .expect("deleted");
    assert_eq!(
        client.registry_statistics().await.expect("statistics"),
        RegistryStatistics {
            total_device_count: 3,
            enabled_device_count: 2,
            disabled_device_count: 1
        }
    );
    assert_eq!(
        client.service_statistics().await.expect("statistics"),
        ServiceStatistics {
            connected_device_count: 1
        }
    );

    let seen: Vec<String> = hub
        .requests()
        .iter()
        .map(|request| {
            format!(
                "{} {} {}",
                request.method,
                request.path_and_query,
                request.header("if-match").unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "GET /devices/d%3A1?api-version=2021-04-12 -",
            "GET /devices?top=100&api-version=2021-04-12 -",
            "GET /devices?api-version=2021-04-12 -",
            "PUT /devices/d%3A1/modules/%24edgeAgent?api-version=2021-04-12 -",
            "PUT /devices/d%3A1/modules/%24edgeAgent?api-version=2021-04-12 \"bW9k\"",
            "GET /devices/d%3A1/modules/%24edgeAgent?api-version=2021-04-12 -",
            "GET /devices/d%3A1/modules?api-version=2021-04-12 -",
            "DELETE /devices/d%3A1/modules/%24edgeAgent?api-version=2021-04-12 \"*\"",
            "GET /statistics/devices?api-version=2021-04-12 -",
            "GET /statistics/service?api-version=2021-04-12 -",
        ]
    );
    assert_eq!(
        hub.requests()[3].json(),
        json!({"moduleId": "$edgeAgent", "managedBy": null, "deviceId": "d:1"})
    );
}

#[tokio::test]
async fn twin_calls_send_patches_and_replacements() {
    let hub = MockHub::start().await;
    hub.always(Answer::json(200, twin_json("dev1", 4)));
    let client = hub.client();
    let device = device_id("dev1");
    let module_id = ModuleId::new("m1").expect("valid");
    let typed_patch: Twin = serde_json::from_value(
        json!({"tags": {"site": "b"}, "properties": {"desired": {"foo": 2, "bar": null}}}),
    )
    .expect("valid twin");

    let twin = client.get_twin(&device).await.expect("twin");
    assert_eq!(twin.version, Some(4));
    assert_eq!(twin.connection_state, Some(ConnectionState::Connected));
    client
        .update_twin(&device, &typed_patch, Some(&ETag::new("AAAAAAAAAAE=")))
        .await
        .expect("patched");
    client
        .update_twin(&device, &json!({"properties": {"desired": {"x": 1}}}), None)
        .await
        .expect("patched");
    client
        .replace_twin(
            &device,
            &json!({"tags": {"x": 1}, "properties": {"desired": {"foo": 3}}}),
            None,
        )
        .await
        .expect("replaced");
    client
        .get_module_twin(&device, &module_id)
        .await
        .expect("module twin");
    client
        .update_module_twin(&device, &module_id, &json!({"tags": {"t": 1}}), None)
        .await
        .expect("patched");
    client
        .replace_module_twin(&device, &module_id, &Twin::default(), Some(&ETag::new("e")))
        .await
        .expect("replaced");

    let requests = hub.requests();
    let seen: Vec<String> = requests
        .iter()
        .map(|request| {
            format!(
                "{} {} {}",
                request.method,
                request.path_and_query,
                request.header("if-match").unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "GET /twins/dev1?api-version=2021-04-12 -",
            "PATCH /twins/dev1?api-version=2021-04-12 \"AAAAAAAAAAE=\"",
            "PATCH /twins/dev1?api-version=2021-04-12 \"*\"",
            "PUT /twins/dev1?api-version=2021-04-12 \"*\"",
            "GET /twins/dev1/modules/m1?api-version=2021-04-12 -",
            "PATCH /twins/dev1/modules/m1?api-version=2021-04-12 \"*\"",
            "PUT /twins/dev1/modules/m1?api-version=2021-04-12 \"e\"",
        ]
    );
    // PROTOCOL.md §3.3: the patch carries what was set; a null inside desired deletes and is sent. (The
    // protocol crate's Twin also writes a top-level `"statusReason": null`, which hubs ignore in a patch.)
    let without_top_level_nulls = |request: &Recorded| {
        let mut body = request.json();
        body.as_object_mut()
            .expect("an object")
            .retain(|_, value| !value.is_null());
        body
    };
    assert_eq!(
        without_top_level_nulls(&requests[1]),
        json!({"tags": {"site": "b"}, "properties": {"desired": {"foo": 2, "bar": null}}})
    );
    assert_eq!(
        requests[3].json(),
        json!({"tags": {"x": 1}, "properties": {"desired": {"foo": 3}}})
    );
    assert_eq!(without_top_level_nulls(&requests[6]), json!({}));
}

#[tokio::test]
async fn methods_post_the_request_and_read_the_device_answer() {
    let hub = MockHub::start().await;
    hub.then(Answer::json(
        200,
        json!({"status": 200, "payload": {"result": "rebooted"}}),
    ))
    .then(Answer::json(200, json!({"status": 500, "payload": null})));
    let client = hub.client();
    let request = CloudToDeviceMethod {
        method_name: "reboot".to_owned(),
        payload: json!({"delay": 5}),
        response_timeout_in_seconds: Some(30),
        connect_timeout_in_seconds: Some(5),
    };

    let result = client
        .invoke_method(&device_id("dev1"), &request)
        .await
        .expect("invoked");
    assert_eq!(
        (result.status, result.payload),
        (200, json!({"result": "rebooted"}))
    );
    let failed = client
        .invoke_module_method(
            &device_id("dev1"),
            &ModuleId::new("m1").expect("valid"),
            &request,
        )
        .await
        .expect("a device failure is still an answer");
    assert_eq!(failed.status, 500);

    let requests = hub.requests();
    assert_eq!(requests[0].method, Method::POST);
    assert_eq!(
        requests[0].path_and_query,
        "/twins/dev1/methods?api-version=2021-04-12"
    );
    assert_eq!(
        requests[1].path_and_query,
        "/twins/dev1/modules/m1/methods?api-version=2021-04-12"
    );
    assert_eq!(
        requests[0].body,
        br#"{"methodName":"reboot","payload":{"delay":5},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":5}"#
    );
}

#[tokio::test]
async fn hub_errors_carry_status_code_and_message() {
    let hub = MockHub::start().await;
    hub.then(
        Answer::json(404, json!({"Message": "ErrorCode:DeviceNotFound;Device dev1 not registered", "ExceptionMessage": "Tracking ID:t-1-TimeStamp:05/01/2024 10:00:00"}))
            .header("iothub-errorcode", "DeviceNotFound"),
    )
    .then(
        Answer::json(404, json!({"errorCode": 404103, "trackingId": "t-2", "message": "Timed out waiting for device to connect.", "info": {}, "timestampUtc": "2024-05-01T10:00:00Z"}))
            .header("iothub-errorcode", "DeviceNotOnline"),
    )
    .then(Answer::empty(412).header("iothub-errorcode", "PreconditionFailed"));
    let client = hub.client();

    let not_found = client.get_twin(&device_id("dev1")).await.expect_err("404");
    assert_eq!(
        not_found.to_string(),
        "the hub answered 404 DeviceNotFound (404001): Device dev1 not registered"
    );
    assert!(matches!(
        &not_found,
        ServiceError::Api { status: 404, code: ReportedErrorCode::Known(ErrorCode::DeviceNotFound), tracking_id: Some(id), .. } if id == "t-1"
    ));
    let request = CloudToDeviceMethod {
        method_name: "m".to_owned(),
        payload: Value::Null,
        response_timeout_in_seconds: None,
        connect_timeout_in_seconds: None,
    };
    let offline = client
        .invoke_method(&device_id("dev1"), &request)
        .await
        .expect_err("404");
    assert_eq!(offline.error_code(), Some(ErrorCode::DeviceNotOnline));
    assert_eq!(
        offline.to_string(),
        "the hub answered 404 DeviceNotOnline (404103): Timed out waiting for device to connect."
    );
    let stale = client
        .delete_device(&device_id("dev1"), Some(&ETag::new("old")))
        .await
        .expect_err("412");
    assert_eq!(
        (stale.status(), stale.error_code()),
        (Some(412), Some(ErrorCode::PreconditionFailed))
    );
}

#[tokio::test]
async fn a_success_answer_that_is_not_the_expected_json_is_a_decode_error() {
    let hub = MockHub::start().await;
    hub.then(Answer::json(200, json!({"deviceId": "dev 1"})))
        .then(Answer::json(200, json!({"no": "device"})));
    let client = hub.client();
    for _ in 0..2 {
        let error = client
            .get_device(&device_id("dev1"))
            .await
            .expect_err("not a device");
        assert!(
            matches!(
                &error,
                ServiceError::Decode {
                    what: "a device",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "could not read the hub's answer as a device"
        );
    }
}

#[tokio::test]
async fn an_untrusted_hub_certificate_is_a_tls_error() {
    let hub = MockHub::start().await;
    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("certificate")
        .cert
        .pem();
    let client = hub.client_with(ServiceClientOptions {
        ca_pem: Some(other_ca),
        ..Default::default()
    });

    let error = client
        .get_device(&device_id("dev1"))
        .await
        .expect_err("untrusted");

    match &error {
        ServiceError::Tls { host, source } => {
            assert_eq!(host, &format!("localhost:{}", hub.address.port()));
            // Both certificates carry rcgen's default subject, so rustls finds the "issuer" and reports a bad
            // signature; with distinct names it would be UnknownIssuer. Either way: the certificate is not trusted.
            assert!(
                matches!(source, rustls::Error::InvalidCertificate(_)),
                "{source:?}"
            );
        }
        other => panic!("expected a tls error, got {other:?}"),
    }
    assert!(error.is_connectivity());
    assert!(hub.requests().is_empty());
}

#[tokio::test]
async fn a_hub_that_is_not_listening_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let client = ServiceClient::from_connection_string(
        &format!(
            "HostName=127.0.0.1:{port};SharedAccessKeyName=iothubowner;SharedAccessKey={POLICY_KEY}"
        ),
        ServiceClientOptions::default(),
    )
    .expect("valid");

    let error = client
        .get_device(&device_id("dev1"))
        .await
        .expect_err("nothing listens");

    assert!(
        matches!(&error, ServiceError::Transport { host, .. } if host == &format!("127.0.0.1:{port}")),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("http request to 127.0.0.1:{port} failed")
    );
}

#[tokio::test]
async fn a_hub_that_does_not_answer_in_time_is_a_timeout() {
    let hub = MockHub::start().await;
    hub.then(Answer {
        delay: Duration::from_secs(5),
        ..Answer::json(200, device_json("dev1"))
    });
    let timeout = Duration::from_millis(300);
    let client = hub.client_with(ServiceClientOptions {
        ca_pem: Some(hub.ca_pem.clone()),
        timeout,
    });

    let error = client
        .get_device(&device_id("dev1"))
        .await
        .expect_err("too slow");

    assert!(
        matches!(error, ServiceError::Timeout { after } if after == timeout),
        "{error:?}"
    );
}

#[tokio::test]
async fn method_calls_may_outlast_the_default_timeout() {
    let hub = MockHub::start().await;
    hub.then(Answer {
        delay: Duration::from_millis(600),
        ..Answer::json(200, json!({"status": 200, "payload": null}))
    });
    let client = hub.client_with(ServiceClientOptions {
        ca_pem: Some(hub.ca_pem.clone()),
        timeout: Duration::from_millis(300),
    });
    let request = CloudToDeviceMethod {
        method_name: "slow".to_owned(),
        payload: Value::Null,
        response_timeout_in_seconds: Some(1),
        connect_timeout_in_seconds: None,
    };

    let result = client
        .invoke_method(&device_id("dev1"), &request)
        .await
        .expect("the device's timeout governs");

    assert_eq!(result.status, 200);
}

#[tokio::test]
async fn one_token_and_one_connection_serve_sequential_calls() {
    let hub = MockHub::start().await;
    hub.always(Answer::json(200, device_json("dev1")));
    let client = hub.client();
    let clone = client.clone();

    for _ in 0..10 {
        client.get_device(&device_id("dev1")).await.expect("got");
        clone.get_device(&device_id("dev1")).await.expect("got");
    }

    let tokens: Vec<String> = hub
        .requests()
        .iter()
        .map(|request| request.header("authorization").expect("signed").to_owned())
        .collect();
    assert_eq!(tokens.len(), 20);
    assert!(
        tokens.iter().all(|token| token == &tokens[0]),
        "the token is cached and shared by clones"
    );
    assert_eq!(
        hub.script.connections.load(Ordering::SeqCst),
        1,
        "keep-alive reuses the connection"
    );
}

#[tokio::test]
async fn concurrent_calls_share_the_pool() {
    let hub = MockHub::start().await;
    hub.always(Answer {
        delay: Duration::from_millis(50),
        ..Answer::json(200, device_json("dev1"))
    });
    let client = hub.client();

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let client = client.clone();
        tasks.spawn(async move {
            client
                .get_device(&device_id("dev1"))
                .await
                .map(|device| device.device_id)
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.expect("task finished").expect("got"), "dev1");
    }
    let first_wave = hub.script.connections.load(Ordering::SeqCst);
    assert!((2..=64).contains(&first_wave), "{first_wave} connections");

    for _ in 0..8 {
        client.get_device(&device_id("dev1")).await.expect("got");
    }
    assert_eq!(
        hub.script.connections.load(Ordering::SeqCst),
        first_wave,
        "idle connections are reused"
    );
}

#[tokio::test]
async fn raw_requests_are_signed_and_return_any_status() {
    let hub = MockHub::start().await;
    hub.then(Answer::json(
        200,
        json!({"totalMessagesPurged": 0, "deviceId": "dev1"}),
    ))
    .then(Answer::json(
        401,
        json!({"Message": "ErrorCode:IotHubUnauthorizedAccess;Unauthorized"}),
    ))
    .then(Answer::json(201, json!({"id": "cfg"})));
    let client = hub.client();

    let purged = client
        .raw(Method::DELETE, "/devices/dev1/commands", &[], None)
        .await
        .expect("answered");
    assert_eq!(purged.status, 200);
    assert_eq!(
        purged.json::<Value>().expect("json")["totalMessagesPurged"],
        0
    );
    let unauthorized = client
        .raw(
            Method::GET,
            "/devices?top=1",
            &[("Authorization", "SharedAccessSignature sr=x&sig=y&se=1")],
            None,
        )
        .await
        .expect("answered");
    assert_eq!(unauthorized.status, 401);
    let error = unauthorized
        .error_for_status()
        .expect_err("401 is an error");
    assert_eq!(
        error.error_code(),
        Some(ErrorCode::IotHubUnauthorizedAccess)
    );
    let created = client
        .raw(
            Method::PUT,
            "/configurations/cfg?api-version=2020-03-13",
            &[("If-Match", "*")],
            Some(b"{\"id\":\"cfg\"}".to_vec()),
        )
        .await
        .expect("answered")
        .error_for_status()
        .expect("201 is success");
    assert_eq!(created.text(), r#"{"id":"cfg"}"#);

    let requests = hub.requests();
    assert_eq!(
        requests[0].path_and_query,
        "/devices/dev1/commands?api-version=2021-04-12"
    );
    assert_signed(&requests[0], &hub);
    assert_eq!(
        requests[0].header("content-type"),
        None,
        "no body, no content type"
    );
    assert_eq!(
        requests[1].path_and_query,
        "/devices?top=1&api-version=2021-04-12"
    );
    assert_eq!(
        requests[1].headers.get_all("authorization").iter().count(),
        1,
        "the caller's token replaces ours"
    );
    assert_eq!(
        requests[1].header("authorization"),
        Some("SharedAccessSignature sr=x&sig=y&se=1")
    );
    assert_eq!(
        requests[2].path_and_query,
        "/configurations/cfg?api-version=2020-03-13"
    );
    assert_eq!(requests[2].header("if-match"), Some("*"));
    assert_eq!(
        requests[2].header("content-type"),
        Some("application/json; charset=utf-8")
    );

    let bad_header = client
        .raw(Method::GET, "/devices", &[("X-Bad", "a\nb")], None)
        .await
        .expect_err("invalid");
    assert_eq!(
        bad_header.to_string(),
        "invalid request: the value of header x-bad contains characters not allowed in http headers"
    );
    let relative = client
        .raw(Method::GET, "devices", &[], None)
        .await
        .expect_err("invalid");
    assert_eq!(
        relative.to_string(),
        "invalid request: path \"devices\" must start with '/'"
    );
}
