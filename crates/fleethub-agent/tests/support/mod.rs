//! Test support for the agent's integration tests: a real hub ([`TestHub`]) with a device, the service SDK
//! to call `firmwareUpdate` and to follow the device's reported properties through the hub's change feed,
//! signed artifacts, and [`ArtifactServer`], a small HTTPS server that serves images the way the hub's
//! download endpoint is specified (docs/firmware.md, "Download") and can cut or stall a response once.
//!
//! Where the images come from is decided in one place, [`Scenario::publish`]: the hub's own endpoint
//! (`PUT /firmware/artifacts/{model}/{version}` then a grant), or the test server with
//! `FLEETHUB_AGENT_TEST_ARTIFACTS=server` (both pass the same tests). Fault injection (cut, stall, a
//! mismatching image the hub would refuse to store) always uses the test server.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use fleethub_agent::{AgentConfig, DownloadPolicy};
use fleethub_protocol::SasToken;
use fleethub_protocol::changes::ChangeOperation;
use fleethub_protocol::firmware::{FirmwareManifest, SigningKey};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::rest::CloudToDeviceMethod;
use fleethub_protocol::sas::decode_key;
use fleethub_service::{ChangeStream, ServiceClient, ServiceClientOptions, WatchOptions};
use fleethub_testkit::TestHub;
use futures_util::StreamExt as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::mpsc;

pub const MODEL: &str = "thermostat-x";
pub const FACTORY_VERSION: &str = "1.0.0";
pub const DEVICE: &str = "thermostat-1";
/// Every wait in these tests ends after this long.
pub const WAIT: Duration = Duration::from_secs(30);

/// Where published artifacts are served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactSource {
    /// [`ArtifactServer`], inside the test.
    TestServer,
    /// The hub's download endpoint.
    Hub,
}

impl ArtifactSource {
    pub fn from_env() -> Self {
        match std::env::var("FLEETHUB_AGENT_TEST_ARTIFACTS").as_deref() {
            Ok("server") => Self::TestServer,
            _ => Self::Hub,
        }
    }
}

/// An image and its manifest, published.
#[derive(Debug, Clone)]
pub struct Published {
    pub url: String,
    /// The manifest JWS (also what the server sends as `x-fleethub-manifest`).
    pub manifest: Option<String>,
    pub image: Bytes,
    pub version: String,
}

/// An image of `size` bytes whose content depends on `seed`.
pub fn image(size: usize, seed: u8) -> Bytes {
    (0..size)
        .map(|index| (index.wrapping_mul(31) as u8) ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub fn manifest(image: &[u8], version: &str, health_check: Option<&str>) -> FirmwareManifest {
    FirmwareManifest {
        model: MODEL.into(),
        version: version.into(),
        sha256: sha256_hex(image),
        size: image.len() as u64,
        created: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("valid"),
        health_check: health_check.map(str::to_owned),
        description: Some("agent test image".into()),
    }
}

/// A hub with one device, an artifact server, a signing key, a state directory for the agent, and a watch
/// on the device's reported properties opened before anything happened.
pub struct Scenario {
    pub hub: TestHub,
    pub service: ServiceClient,
    pub device_id: DeviceId,
    /// The device's connection string; `GatewayHostName` carries the hub's MQTT port.
    pub connection_string: String,
    pub server: ArtifactServer,
    pub key: SigningKey,
    pub directory: tempfile::TempDir,
    pub reported: ReportedWatch,
    pub source: ArtifactSource,
}

impl Scenario {
    pub async fn start() -> Self {
        let hub = TestHub::start().await;
        let record = hub.create_device(DEVICE).await;
        let device_key = record
            .identity
            .authentication
            .primary_key
            .clone()
            .expect("SAS device");
        let connection_string = format!(
            "HostName=localhost;DeviceId={DEVICE};SharedAccessKey={device_key};GatewayHostName=localhost:{}",
            hub.hub.mqtt_address.port()
        );
        let owner = hub.policy("iothubowner");
        let service = ServiceClient::from_connection_string(
            &format!(
                "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
                hub.hub.https_address.port(),
                owner.primary_key
            ),
            ServiceClientOptions {
                ca_pem: Some(hub.hub.ca_pem.clone()),
                ..ServiceClientOptions::default()
            },
        )
        .expect("service client");
        let device_id: DeviceId = DEVICE.parse().expect("valid id");
        let data_dir = hub.directory.path().join("data");
        let server = ArtifactServer::start(&data_dir).await;
        server.allow_device(DEVICE, &device_key);
        let reported = ReportedWatch::open(&service, &device_id).await;
        let directory = tempfile::tempdir().expect("temporary directory");
        std::fs::write(directory.path().join("ca.pem"), &hub.hub.ca_pem).expect("write ca.pem");
        Self {
            hub,
            service,
            device_id,
            connection_string,
            server,
            key: SigningKey::from_seed([42; 32]),
            directory,
            reported,
            source: ArtifactSource::from_env(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.directory.path().join("state")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.directory.path().join("ca.pem")
    }

    /// The agent's configuration: the hub's CA, this scenario's key, factory version 1.0.0, quick retries.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig::new(&self.connection_string, self.state_dir(), MODEL)
            .with_ca_pem(self.hub.hub.ca_pem.clone())
            .with_public_key(self.key.public_key())
            .with_initial_version(FACTORY_VERSION)
            .with_health_check_timeout(Duration::from_secs(20))
            .with_download_policy(
                DownloadPolicy::default()
                    .with_max_attempts(5)
                    .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
                    .with_read_timeout(Duration::from_secs(20)),
            )
    }

    /// Signs `manifest` with this scenario's key.
    pub fn sign(&self, manifest: &FirmwareManifest) -> String {
        self.key.sign(manifest).expect("signs")
    }

    /// Makes `image` downloadable with `manifest` (a JWS, or `None` for an unsigned artifact) and returns
    /// the URL the device is to fetch it from (SAS-authorised, not a signed URL).
    pub async fn publish(
        &self,
        version: &str,
        image: Bytes,
        manifest: Option<String>,
    ) -> Published {
        let url = match self.source {
            ArtifactSource::TestServer => {
                self.server
                    .add(MODEL, version, image.clone(), manifest.clone());
                self.server.url(MODEL, version)
            }
            ArtifactSource::Hub => {
                self.publish_to_hub(version, &image, manifest.as_deref())
                    .await
            }
        };
        Published {
            url,
            manifest,
            image,
            version: version.into(),
        }
    }

    /// Like [`publish`](Self::publish), but on the test server whatever the source, for tests that inject
    /// faults.
    pub fn publish_on_test_server(
        &self,
        version: &str,
        image: Bytes,
        manifest: Option<String>,
    ) -> Published {
        self.server
            .add(MODEL, version, image.clone(), manifest.clone());
        Published {
            url: self.server.url(MODEL, version),
            manifest,
            image,
            version: version.into(),
        }
    }

    /// docs/firmware.md: upload with the signed manifest, then grant the device (the grant is what
    /// entitles a SAS-authorised download).
    async fn publish_to_hub(&self, version: &str, image: &Bytes, manifest: Option<&str>) -> String {
        let api = fleethub_testkit::ServiceApi::for_hub(&self.hub, "iothubowner");
        let token = api.token(fleethub_testkit::unix_now() + 3600);
        let mut upload = api
            .client
            .put(format!(
                "{}/firmware/artifacts/{MODEL}/{version}?api-version=2021-04-12",
                api.base
            ))
            .header("authorization", &token)
            .header("content-type", "application/octet-stream")
            .body(image.clone());
        if let Some(manifest) = manifest {
            upload = upload.header("x-fleethub-manifest", manifest);
        }
        let response = upload.send().await.expect("the hub answers");
        assert_eq!(
            response.status(),
            201,
            "upload: {:?}",
            response.text().await
        );
        let reply = api
            .send(
                reqwest::Method::POST,
                &format!("/firmware/artifacts/{MODEL}/{version}/grants"),
                &[],
                Some(json!({"deviceId": DEVICE, "expiresInSeconds": 3600})),
            )
            .await;
        assert_eq!(reply.status, 200, "grant: {}", reply.body);
        format!("{}/firmware/artifacts/{MODEL}/{version}/image", api.base)
    }

    /// Calls a direct method through the hub and returns the device's status and payload.
    pub async fn invoke(&self, method: &str, payload: Value) -> (i32, Value) {
        let request = CloudToDeviceMethod {
            method_name: method.into(),
            payload,
            response_timeout_in_seconds: Some(30),
            connect_timeout_in_seconds: Some(10),
        };
        let result = self
            .service
            .invoke_method(&self.device_id, &request)
            .await
            .expect("the hub delivers the method");
        (result.status, result.payload)
    }

    /// `firmwareUpdate` with the rich payload (URL, version, manifest).
    pub async fn update(&self, published: &Published) -> (i32, Value) {
        let mut payload = json!({"fwPackageUri": published.url, "version": published.version});
        if let Some(manifest) = &published.manifest {
            payload["manifest"] = json!(manifest);
        }
        self.invoke("firmwareUpdate", payload).await
    }

    /// `boot.json` as JSON, with the documented field names.
    pub fn boot_json(&self) -> Value {
        let text = std::fs::read(self.state_dir().join("boot.json")).expect("boot.json exists");
        serde_json::from_slice(&text).expect("boot.json is JSON")
    }

    pub fn slot_file(&self, slot: &str, file: &str) -> Option<Vec<u8>> {
        std::fs::read(self.state_dir().join("slots").join(slot).join(file)).ok()
    }

    pub fn download_dir_is_empty(&self) -> bool {
        std::fs::read_dir(self.state_dir().join("download"))
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(true)
    }
}

pub fn started() -> (i32, Value) {
    (200, json!({"Response": "Firmware update started"}))
}

/// The device's reported properties as the hub's change feed shows them: every reported patch in order, and
/// their merge.
pub struct ReportedWatch {
    changes: ChangeStream,
    /// The reported properties so far (the merge of every patch seen).
    pub reported: Value,
    /// Every `firmwareStatus` in the order the patches set it.
    pub statuses: Vec<String>,
    /// Every patch, in order.
    pub patches: Vec<Value>,
}

impl ReportedWatch {
    pub async fn open(service: &ServiceClient, device_id: &DeviceId) -> Self {
        let changes = service
            .watch_changes(WatchOptions {
                device: Some(device_id.clone()),
                ..WatchOptions::default()
            })
            .await
            .expect("watch the change feed");
        Self {
            changes,
            reported: json!({}),
            statuses: Vec::new(),
            patches: Vec::new(),
        }
    }

    /// Waits (up to [`WAIT`]) until the reported properties satisfy `condition`; returns them.
    pub async fn until(&mut self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !condition(&self.reported) {
            let next = tokio::time::timeout_at(deadline, self.changes.next()).await;
            let change = match next {
                Ok(Some(Ok(change))) => change,
                Ok(Some(Err(error))) => panic!("the change feed failed: {error}"),
                Ok(None) => panic!("the change feed ended"),
                Err(_) => panic!(
                    "waited {WAIT:?} for {what}; statuses so far {:?}, reported {}",
                    self.statuses, self.reported
                ),
            };
            if change.operation != ChangeOperation::UpdateTwin {
                continue;
            }
            let Some(patch) = change.body["properties"].get("reported").cloned() else {
                continue;
            };
            if let Some(status) = patch["firmwareStatus"].as_str() {
                self.statuses.push(status.to_owned());
            }
            merge(&mut self.reported, &patch);
            self.patches.push(patch);
        }
        self.reported.clone()
    }

    pub async fn until_status(&mut self, status: &str) -> Value {
        self.until(&format!("firmwareStatus {status}"), |reported| {
            reported["firmwareStatus"] == status
        })
        .await
    }

    /// The statuses with repeats in a row folded.
    pub fn distinct_statuses(&self) -> Vec<&str> {
        let mut distinct: Vec<&str> = Vec::new();
        for status in &self.statuses {
            if distinct.last() != Some(&status.as_str()) {
                distinct.push(status);
            }
        }
        distinct
    }
}

/// RFC 7396 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("made an object");
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else if value.is_object() {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        } else {
            object.insert(key.clone(), value.clone());
        }
    }
}

/// A fault to inject into the next image response.
///
/// A body that errors is not a deterministic cut: hyper drops what it had buffered but not yet written. So a
/// response stalls after exactly `n` bytes (all of them flushed), and the test cuts it with
/// [`ArtifactServer::cut_stalled`] once it knows the client has them all (from the agent's progress report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Send this many body bytes, then nothing until [`ArtifactServer::cut_stalled`] or the client leaves.
    StallAfter(usize),
}

/// The smallest byte count whose progress (`bytes * 100 / total`, as the agent computes it) is `percent`:
/// stalling after exactly that many bytes, a reported progress of `percent` proves they all arrived.
pub fn bytes_for_percent(total: usize, percent: usize) -> usize {
    (percent * total).div_ceil(100)
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub range: Option<String>,
    pub if_range: Option<String>,
    /// `sas` (a valid device token), `signed-url`, or `none`.
    pub authorized_by: &'static str,
    pub status: u16,
}

struct Artifact {
    image: Bytes,
    manifest: Option<String>,
}

#[derive(Default)]
struct ServerState {
    artifacts: Mutex<HashMap<(String, String), Arc<Artifact>>>,
    device_keys: Mutex<HashMap<String, Vec<u8>>>,
    faults: Mutex<VecDeque<Fault>>,
    requests: Mutex<Vec<SeenRequest>>,
    fault_events: Mutex<Option<mpsc::UnboundedSender<Fault>>>,
    /// Stalled responses, each ended with an error (a cut connection) when its sender fires.
    stalled: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}

/// Test support, not the hub: serves `GET /firmware/artifacts/{model}/{version}/image` as docs/firmware.md
/// specifies the hub's endpoint (device SAS token or a signed URL, one `Range` with `If-Range`, `ETag`,
/// `x-fleethub-sha256`, `x-fleethub-manifest`, 416 with `Content-Range: bytes */size`), over HTTPS with the
/// hub's own server certificate, so the agent trusts it with the hub's CA alone. A signed URL's `sig` is
/// accepted without checking it (the hub's key is the hub's business); SAS tokens are verified with the
/// device's key.
pub struct ArtifactServer {
    pub address: SocketAddr,
    state: Arc<ServerState>,
    fault_events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ArtifactServer {
    /// Serves over TLS with `data_dir`'s `server.pem` and `server-key.pem` (a fleethub hub's data directory).
    pub async fn start(data_dir: &Path) -> Self {
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(data_dir.join("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("server.pem parses");
        let key =
            PrivateKeyDer::from_pem_file(data_dir.join("server-key.pem")).expect("server-key.pem");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .expect("certificate and key match");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let state = Arc::new(ServerState::default());
        let (events, fault_events) = mpsc::unbounded_channel();
        *state.fault_events.lock().unwrap() = Some(events);
        let router = Router::new()
            .route(
                "/firmware/artifacts/{model}/{version}/image",
                get(serve_image),
            )
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            address,
            state,
            fault_events: tokio::sync::Mutex::new(fault_events),
            task,
        }
    }

    pub fn allow_device(&self, device_id: &str, key_base64: &str) {
        let key = decode_key(key_base64).expect("device keys are base64");
        self.state
            .device_keys
            .lock()
            .unwrap()
            .insert(device_id.to_owned(), key);
    }

    pub fn add(&self, model: &str, version: &str, image: Bytes, manifest: Option<String>) {
        self.state.artifacts.lock().unwrap().insert(
            (model.to_owned(), version.to_owned()),
            Arc::new(Artifact { image, manifest }),
        );
    }

    /// The URL for a SAS-authorised download.
    pub fn url(&self, model: &str, version: &str) -> String {
        format!(
            "https://localhost:{}/firmware/artifacts/{model}/{version}/image",
            self.address.port()
        )
    }

    /// A signed URL, the shape the hub's grants return.
    pub fn signed_url(&self, model: &str, version: &str, device_id: &str) -> String {
        let expires = fleethub_testkit::unix_now() + 3600;
        format!(
            "{}?device={device_id}&expires={expires}&sig=test-signature",
            self.url(model, version)
        )
    }

    /// The next image response suffers `fault` (faults queue up, one per response).
    pub fn inject(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push_back(fault);
    }

    /// Cuts every stalled response: the connection closes mid-body.
    pub fn cut_stalled(&self) {
        for cut in self.state.stalled.lock().unwrap().drain(..) {
            let _ = cut.send(());
        }
    }

    /// Waits until an injected fault has happened (its bytes handed to the connection).
    pub async fn fault_happened(&self) -> Fault {
        tokio::time::timeout(WAIT, self.fault_events.lock().await.recv())
            .await
            .expect("the fault happens in time")
            .expect("the server runs")
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

async fn serve_image(
    State(state): State<Arc<ServerState>>,
    UrlPath((model, version)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let authorized_by = if query.contains_key("sig") {
        "signed-url"
    } else if sas_is_valid(&state, &headers) {
        "sas"
    } else {
        "none"
    };
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let range = text(header::RANGE);
    let if_range = text(header::IF_RANGE);
    let artifact = state
        .artifacts
        .lock()
        .unwrap()
        .get(&(model, version))
        .cloned();
    let response = answer(
        &state,
        authorized_by,
        artifact,
        range.as_deref(),
        if_range.as_deref(),
    );
    state.requests.lock().unwrap().push(SeenRequest {
        range,
        if_range,
        authorized_by,
        status: response.status().as_u16(),
    });
    response
}

fn sas_is_valid(state: &ServerState, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<SasToken>().ok())
    else {
        return false;
    };
    let Some(device) = token
        .resource
        .strip_prefix("localhost/devices/")
        .map(str::to_owned)
    else {
        return false;
    };
    let keys = state.device_keys.lock().unwrap();
    keys.get(&device)
        .is_some_and(|key| token.signature_matches(key))
        && !token.is_expired(fleethub_testkit::unix_now())
}

fn answer(
    state: &ServerState,
    authorized_by: &str,
    artifact: Option<Arc<Artifact>>,
    range: Option<&str>,
    if_range: Option<&str>,
) -> Response {
    if authorized_by == "none" {
        return (
            StatusCode::UNAUTHORIZED,
            "no valid device token or signed URL",
        )
            .into_response();
    }
    let Some(artifact) = artifact else {
        return (StatusCode::NOT_FOUND, "no such artifact").into_response();
    };
    let size = artifact.image.len() as u64;
    let sha256 = sha256_hex(&artifact.image);
    let etag = format!("\"{sha256}\"");
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ASCII"));
    headers.insert(
        "x-fleethub-sha256",
        HeaderValue::from_str(&sha256).expect("ASCII"),
    );
    if let Some(manifest) = &artifact.manifest {
        headers.insert(
            "x-fleethub-manifest",
            HeaderValue::from_str(manifest).expect("ASCII"),
        );
    }
    // One range, honoured only when If-Range (if any) names the current ETag; anything else gets it all.
    let wanted = range
        .filter(|_| if_range.is_none_or(|tag| tag == etag))
        .and_then(single_range);
    let (status, start, end) = match wanted {
        None => (StatusCode::OK, 0, size),
        Some((start, _)) if start >= size => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
            );
            return (StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response();
        }
        Some((start, last)) => {
            let end = last.map_or(size, |last| (last + 1).min(size));
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)).expect("ASCII"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
    };
    let body = artifact.image.slice(start as usize..end as usize);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let fault = state.faults.lock().unwrap().pop_front();
    let events = state.fault_events.lock().unwrap().clone();
    let body = match fault {
        None => Body::from(body),
        Some(fault) => {
            let Fault::StallAfter(count) = fault;
            let head = body.slice(..count.min(body.len()));
            let (cut, cut_requested) = tokio::sync::oneshot::channel();
            state.stalled.lock().unwrap().push(cut);
            let after = async move {
                if let Some(events) = events {
                    let _ = events.send(fault);
                }
                // Until cut, or forever (the client going away drops the connection and this with it).
                let _ = cut_requested.await;
                Err::<Bytes, _>(std::io::Error::other("cut by the test"))
            };
            Body::from_stream(
                futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(head) })
                    .chain(futures_util::stream::once(after)),
            )
        }
    };
    (status, headers, body).into_response()
}

/// `bytes=a-b` or `bytes=a-`; `None` for several ranges or anything else.
fn single_range(text: &str) -> Option<(u64, Option<u64>)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse().ok()?),
    };
    Some((start, end))
}
