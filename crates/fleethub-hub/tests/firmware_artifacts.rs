//! Firmware artifacts against a real hub over real HTTPS: uploads (signed, unsigned, wrong, cut off,
//! duplicate, too large) through the service SDK and raw requests, with what they leave on disk; list, show
//! and delete with shared images; grants; and the devices' download with its credentials, entitlement
//! rules and byte ranges.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use fleethub_core::identity::IdentityKey;
use fleethub_hub::HubConfig;
use fleethub_protocol::artifacts::{Artifact, sign_download};
use fleethub_protocol::errors::ErrorCode;
use fleethub_protocol::firmware::{FirmwareManifest, PublicKey, SigningKey};
use fleethub_protocol::ids::{DeviceId, IfMatch};
use fleethub_protocol::rest::DeviceStatus;
use fleethub_service::{ArtifactUpload, ServiceClient, ServiceClientOptions, ServiceError};
use fleethub_store::{DeviceRecord, FirmwareGrant, TwinChange};
use fleethub_testkit::{ServiceApi, TestHub, device_token, tls_connector, unix_now};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use rustls::pki_types::ServerName;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

const MODEL: &str = "thermostat-x";
const WAIT: Duration = Duration::from_secs(10);

fn service(hub: &TestHub, policy: &str) -> ServiceClient {
    let key = hub.policy(policy).primary_key;
    let connection_string = format!(
        "HostName=localhost:{};SharedAccessKeyName={policy};SharedAccessKey={key}",
        hub.hub.https_address.port()
    );
    let options = ServiceClientOptions {
        ca_pem: Some(hub.hub.ca_pem.clone()),
        ..ServiceClientOptions::default()
    };
    ServiceClient::from_connection_string(&connection_string, options).expect("service client")
}

/// `length` bytes that differ from those of another `seed`.
fn image(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn manifest(model: &str, version: &str, bytes: &[u8]) -> FirmwareManifest {
    FirmwareManifest {
        model: model.into(),
        version: version.into(),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        created: time::macros::datetime!(2026-11-26 10:00 UTC),
        health_check: Some("/usr/bin/true".into()),
        description: Some("the test image".into()),
    }
}

fn signing_key() -> SigningKey {
    SigningKey::from_seed([9; 32])
}

struct Fixture {
    hub: TestHub,
    client: ServiceClient,
    api: ServiceApi,
    files: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        Self::with_hub(TestHub::start().await)
    }

    fn with_hub(hub: TestHub) -> Self {
        let client = service(&hub, "iothubowner");
        let api = ServiceApi::for_hub(&hub, "iothubowner");
        Self {
            hub,
            client,
            api,
            files: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.hub.directory.path().join("data")
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.files.path().join(name);
        std::fs::write(&path, bytes).expect("write the image");
        path
    }

    async fn upload(
        &self,
        version: &str,
        bytes: &[u8],
        manifest: Option<String>,
    ) -> Result<Artifact, ServiceError> {
        let upload = ArtifactUpload {
            model: MODEL.into(),
            version: version.into(),
            file: self.file(&format!("image-{version}"), bytes),
            manifest,
            ..ArtifactUpload::default()
        };
        self.client.upload_artifact(&upload).await
    }

    async fn signed_upload(&self, version: &str, bytes: &[u8]) -> Artifact {
        let jws = signing_key()
            .sign(&manifest(MODEL, version, bytes))
            .expect("signs");
        self.upload(version, bytes, Some(jws))
            .await
            .expect("signed upload")
    }

    /// A registered, enabled device that reported `model`.
    async fn device(&self, id: &str, model: &str) -> DeviceRecord {
        let record = self.hub.create_device(id).await;
        self.hub
            .hub
            .services
            .update_twin(
                &record.key,
                TwinChange::ReportedPatch(json!({"firmware": {"model": model}})),
                IfMatch::Any,
            )
            .await
            .expect("report the model");
        record
    }

    async fn grant(&self, version: &str, device_id: &str) -> String {
        self.client
            .create_grant(
                MODEL,
                version,
                &device_id.parse().expect("valid id"),
                Duration::from_secs(600),
            )
            .await
            .expect("grant")
            .url
    }

    /// A GET with these headers; the body read whole.
    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = self.api.client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the hub answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("a whole body").to_vec();
        (status, headers, body)
    }

    fn image_url(&self, version: &str) -> String {
        format!(
            "{}/firmware/artifacts/{MODEL}/{version}/image",
            self.api.base
        )
    }

    fn url_key(&self) -> Vec<u8> {
        let text = std::fs::read_to_string(self.data_dir().join("artifacts/url-signing.key"))
            .expect("the hub made its URL key");
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .expect("base64")
    }

    fn blobs(&self) -> Vec<String> {
        names(&self.data_dir().join("artifacts/blobs"))
    }

    fn tmp(&self) -> Vec<String> {
        names(&self.data_dir().join("artifacts/tmp"))
    }
}

fn names(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .expect("the directory exists")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Waits (up to [`WAIT`]) until `condition` holds, checking every few milliseconds: for effects of a
/// connection the test closed, which nothing announces.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn message(body: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("an error body: {}", String::from_utf8_lossy(body)));
    json["Message"]
        .as_str()
        .expect("registry error shape")
        .to_owned()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .map(|value| value.to_str().expect("ASCII"))
}

fn api_status(result: Result<impl std::fmt::Debug, ServiceError>) -> (u16, String) {
    match result {
        Err(ServiceError::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_signed_upload_reads_back_and_downloads_with_its_manifest() {
    let fixture = Fixture::start().await;
    let bytes = image(300_000, 1);
    let progress = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&progress);
    let jws = signing_key()
        .sign(&manifest(MODEL, "2.0.0", &bytes))
        .expect("signs");
    let artifact = fixture
        .client
        .upload_artifact(&ArtifactUpload {
            model: MODEL.into(),
            version: "2.0.0".into(),
            file: fixture.file("image", &bytes),
            manifest: Some(jws.clone()),
            progress: Some(Arc::new(move |sent| seen.store(sent, Ordering::Relaxed))),
            ..ArtifactUpload::default()
        })
        .await
        .expect("upload");
    assert_eq!(progress.load(Ordering::Relaxed), bytes.len() as u64);
    assert_eq!(artifact.sha256, sha256_hex(&bytes));
    assert_eq!(artifact.size, bytes.len() as u64);
    assert!(artifact.signed);
    assert_eq!(artifact.key_id, Some(signing_key().public_key().key_id()));
    assert_eq!(artifact.manifest.as_deref(), Some(jws.as_str()));
    assert_eq!(artifact.health_check.as_deref(), Some("/usr/bin/true"));
    assert_eq!(
        artifact.created,
        time::macros::datetime!(2026-11-26 10:00 UTC)
    );
    assert_eq!(
        fixture
            .client
            .get_artifact(MODEL, "2.0.0")
            .await
            .expect("get"),
        artifact
    );
    assert_eq!(fixture.blobs(), vec![artifact.sha256.clone()]);
    assert!(fixture.tmp().is_empty());

    fixture.device("dev1", MODEL).await;
    let url = fixture.grant("2.0.0", "dev1").await;
    assert!(
        url.starts_with(&format!(
            "https://localhost:{}/firmware/artifacts/{MODEL}/2.0.0/image?device=dev1&expires=",
            fixture.hub.hub.https_address.port()
        )),
        "{url}"
    );
    let (status, headers, body) = fixture.get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(header(&headers, "accept-ranges"), Some("bytes"));
    let etag = format!("\"{}\"", artifact.sha256);
    assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    assert_eq!(
        header(&headers, "x-fleethub-sha256"),
        Some(artifact.sha256.as_str())
    );
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    let downloaded_manifest = header(&headers, "x-fleethub-manifest").expect("signed");
    // What a device does: verify the manifest with the publisher's public key, then the bytes.
    let public = PublicKey::parse(&signing_key().public_key().to_spki_pem()).expect("key");
    let verified = public.verify(downloaded_manifest).expect("verifies");
    assert_eq!(verified.sha256, sha256_hex(&body));
}

#[tokio::test]
async fn an_unsigned_upload_gets_a_manifest_made_by_the_hub() {
    let fixture = Fixture::start().await;
    let bytes = image(5000, 2);
    let upload = ArtifactUpload {
        model: MODEL.into(),
        version: "1.0.0-rc1+b.7".into(),
        file: fixture.file("image", &bytes),
        health_check: Some("systemctl is-active app".into()),
        description: Some("première".into()),
        ..ArtifactUpload::default()
    };
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let artifact = fixture
        .client
        .upload_artifact(&upload)
        .await
        .expect("upload");
    assert!(!artifact.signed);
    assert_eq!(artifact.manifest, None);
    assert_eq!(artifact.key_id, None);
    assert_eq!(artifact.sha256, sha256_hex(&bytes));
    assert_eq!(artifact.size, 5000);
    assert_eq!(
        artifact.health_check.as_deref(),
        Some("systemctl is-active app")
    );
    assert_eq!(artifact.description.as_deref(), Some("première"));
    assert!(artifact.created >= before && artifact.uploaded >= before);

    fixture.device("dev1", MODEL).await;
    let url = fixture.grant("1.0.0-rc1+b.7", "dev1").await;
    let (status, headers, body) = fixture.get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(header(&headers, "x-fleethub-manifest"), None);
}

#[tokio::test]
async fn an_image_that_does_not_match_its_manifest_is_refused_and_leaves_nothing() {
    let fixture = Fixture::start().await;
    let bytes = image(40_000, 3);
    let key = signing_key();
    let sign = |manifest: FirmwareManifest| key.sign(&manifest).expect("signs");

    let mut other_hash = manifest(MODEL, "1", &bytes);
    other_hash.sha256 = sha256_hex(b"something else");
    let mut longer = manifest(MODEL, "1", &bytes);
    longer.size += 1;
    let mut shorter = manifest(MODEL, "1", &bytes);
    shorter.size -= 1000;
    let cases = [
        (sign(other_hash), "SHA-256"),
        (sign(longer), "manifest says 40001"),
        (sign(shorter), "manifest says 39000"),
        (
            sign(manifest("other-model", "1", &bytes)),
            "not thermostat-x 1",
        ),
        (sign(manifest(MODEL, "2", &bytes)), "not thermostat-x 1"),
        ("not.a.jws".to_owned(), "x-fleethub-manifest"),
    ];
    for (jws, expected) in cases {
        let (status, message) = api_status(fixture.upload("1", &bytes, Some(jws)).await);
        assert_eq!(status, 400, "{expected}: {message}");
        assert!(message.contains(expected), "{expected}: {message}");
        assert!(fixture.blobs().is_empty(), "{expected}: nothing placed");
        assert!(fixture.tmp().is_empty(), "{expected}: nothing left in tmp");
    }
    // Without Content-Length the hub only learns the size at the end: still refused, still clean.
    let jws = sign(manifest(MODEL, "1", &bytes[..100]));
    let stream = futures_util::stream::iter(
        bytes
            .chunks(7000)
            .map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = fixture
        .api
        .client
        .put(format!(
            "{}/firmware/artifacts/{MODEL}/1?api-version=2021-04-12",
            fixture.api.base
        ))
        .header("authorization", fixture.api.token(unix_now() + 600))
        .header("x-fleethub-manifest", jws)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("the hub answers");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.bytes().await.expect("body");
    assert!(message(&body).contains("longer than the manifest's size, 100 bytes"));
    assert!(fixture.blobs().is_empty() && fixture.tmp().is_empty());
    assert!(
        fixture
            .client
            .list_artifacts(None)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let fixture = Fixture::start().await;
    let tcp = tokio::net::TcpStream::connect(fixture.hub.hub.https_address)
        .await
        .expect("connect");
    let mut tls = tls_connector(&fixture.hub.hub.ca_pem)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let request = format!(
        "PUT /firmware/artifacts/{MODEL}/1?api-version=2021-04-12 HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        fixture.api.token(unix_now() + 600),
        8 * 1024 * 1024
    );
    tls.write_all(request.as_bytes())
        .await
        .expect("send headers");
    tls.write_all(&image(1024 * 1024, 4))
        .await
        .expect("send a part");
    tls.flush().await.expect("flush");
    eventually("the upload reaches tmp", || !fixture.tmp().is_empty()).await;
    drop(tls);
    eventually("tmp is emptied after the client went away", || {
        fixture.tmp().is_empty()
    })
    .await;
    assert!(fixture.blobs().is_empty());
    let (status, _) = api_status(fixture.client.get_artifact(MODEL, "1").await);
    assert_eq!(status, 404);
    // The hub is fine: the same upload, whole, succeeds.
    fixture.signed_upload("1", &image(2 * 1024 * 1024, 4)).await;
}

#[tokio::test]
async fn a_duplicate_is_refused_and_sizes_beyond_the_limit_are_413() {
    let fixture = Fixture::with_hub(
        TestHub::start_with(|config: &mut HubConfig| config.limits.max_artifact_bytes = 100_000)
            .await,
    );
    let bytes = image(1000, 5);
    fixture.signed_upload("1", &bytes).await;
    let (status, message) = api_status(fixture.upload("1", &image(1000, 6), None).await);
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("already exists"), "{message}");
    let (status, message) = api_status(fixture.upload("1", &bytes, None).await);
    assert_eq!(status, 409, "the same bytes again: {message}");
    assert_eq!(
        fixture
            .client
            .get_artifact(MODEL, "1")
            .await
            .expect("kept")
            .sha256,
        sha256_hex(&bytes)
    );
    // Too large by Content-Length: refused before it is stored.
    let (status, message) = api_status(fixture.upload("2", &image(100_001, 7), None).await);
    assert_eq!(status, 413, "{message}");
    // Too large, found while streaming (no Content-Length).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..30).map(|seed| Ok(image(10_000, seed))).collect();
    let response = fixture
        .api
        .client
        .put(format!(
            "{}/firmware/artifacts/{MODEL}/3?api-version=2021-04-12",
            fixture.api.base
        ))
        .header("authorization", fixture.api.token(unix_now() + 600))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("the hub answers");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        header(response.headers(), "iothub-errorcode"),
        Some("GenericRequestEntityTooLarge")
    );
    assert_eq!(fixture.blobs(), vec![sha256_hex(&bytes)]);
    assert!(fixture.tmp().is_empty());
}

#[tokio::test]
async fn artifacts_are_listed_shown_and_deleted_and_a_shared_image_outlives_one_of_them() {
    let fixture = Fixture::start().await;
    let shared = image(20_000, 8);
    let first = fixture.signed_upload("1.0.0", &shared).await;
    let second = fixture
        .upload("1.0.1", &shared, None)
        .await
        .expect("upload");
    let other = fixture
        .upload("2.0.0", &image(10, 9), None)
        .await
        .expect("upload");
    let upload = ArtifactUpload {
        model: "another-model".into(),
        version: "1".into(),
        file: fixture.file("another", b"abc"),
        ..ArtifactUpload::default()
    };
    fixture
        .client
        .upload_artifact(&upload)
        .await
        .expect("upload");
    assert_eq!(fixture.blobs().len(), 3, "shared bytes are stored once");

    let listed = fixture.client.list_artifacts(None).await.expect("list");
    let keys: Vec<(&str, &str)> = listed
        .iter()
        .map(|artifact| (artifact.model.as_str(), artifact.version.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("another-model", "1"),
            (MODEL, "1.0.0"),
            (MODEL, "1.0.1"),
            (MODEL, "2.0.0")
        ]
    );
    assert_eq!(
        fixture
            .client
            .list_artifacts(Some(MODEL))
            .await
            .expect("list"),
        vec![first.clone(), second.clone(), other]
    );
    // `+` in a model or version survives the query string.
    assert!(
        fixture
            .client
            .list_artifacts(Some("a+b"))
            .await
            .expect("list")
            .is_empty()
    );

    fixture.device("dev1", MODEL).await;
    let url = fixture.grant("1.0.1", "dev1").await;
    fixture
        .client
        .delete_artifact(MODEL, "1.0.0")
        .await
        .expect("delete");
    assert_eq!(fixture.blobs().len(), 3, "1.0.1 still names the image");
    let (status, _, body) = fixture.get(&url, &[]).await;
    assert_eq!((status, body), (StatusCode::OK, shared.clone()));
    fixture
        .client
        .delete_artifact(MODEL, "1.0.1")
        .await
        .expect("delete");
    assert_eq!(fixture.blobs().len(), 2, "the last artifact took the image");
    assert!(!fixture.blobs().contains(&first.sha256));
    let (status, _, body) = fixture.get(&url, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", message(&body));

    let (status, message) = api_status(fixture.client.delete_artifact(MODEL, "1.0.1").await);
    assert_eq!(status, 404, "{message}");
    let (status, _) = api_status(fixture.client.get_artifact(MODEL, "1.0.0").await);
    assert_eq!(status, 404);
    let reply = fixture
        .api
        .send(Method::GET, "/firmware/artifacts?model=..", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rights_follow_the_table() {
    let fixture = Fixture::start().await;
    fixture.signed_upload("1", &image(100, 10)).await;
    fixture.device("dev1", MODEL).await;
    let file = fixture.file("x", b"x");
    let upload = |version: &str| ArtifactUpload {
        model: MODEL.into(),
        version: version.into(),
        file: file.clone(),
        ..ArtifactUpload::default()
    };
    let device: DeviceId = "dev1".parse().expect("valid");
    let hour = Duration::from_secs(3600);

    let read_only = service(&fixture.hub, "registryRead");
    read_only
        .list_artifacts(None)
        .await
        .expect("RegistryRead lists");
    read_only
        .get_artifact(MODEL, "1")
        .await
        .expect("RegistryRead reads");
    assert_eq!(
        api_status(read_only.upload_artifact(&upload("2")).await).0,
        403
    );
    assert_eq!(
        api_status(read_only.delete_artifact(MODEL, "1").await).0,
        403
    );
    assert_eq!(
        api_status(read_only.create_grant(MODEL, "1", &device, hour).await).0,
        403
    );

    let service_connect = service(&fixture.hub, "service");
    service_connect
        .create_grant(MODEL, "1", &device, hour)
        .await
        .expect("ServiceConnect grants");
    assert_eq!(
        api_status(service_connect.list_artifacts(None).await).0,
        403
    );
    assert_eq!(
        api_status(service_connect.upload_artifact(&upload("2")).await).0,
        403
    );

    let writer = service(&fixture.hub, "registryReadWrite");
    writer
        .upload_artifact(&upload("2"))
        .await
        .expect("RegistryWrite uploads");
    writer
        .delete_artifact(MODEL, "2")
        .await
        .expect("RegistryWrite deletes");

    let devices = service(&fixture.hub, "device");
    assert_eq!(api_status(devices.list_artifacts(None).await).0, 403);
    // No credentials at all.
    let reply = fixture
        .api
        .call(None, Method::GET, "/firmware/artifacts", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn grants_check_their_device_artifact_and_duration() {
    let fixture = Fixture::start().await;
    fixture.signed_upload("1", &image(100, 11)).await;
    fixture.device("dev1", MODEL).await;
    let device: DeviceId = "dev1".parse().expect("valid");
    let unknown: DeviceId = "nobody".parse().expect("valid");
    let hour = Duration::from_secs(3600);
    let grant = fixture
        .client
        .create_grant(MODEL, "1", &device, hour)
        .await
        .expect("grant");
    let remaining = grant.expires - time::OffsetDateTime::now_utc();
    assert!(
        remaining > time::Duration::minutes(59) && remaining <= time::Duration::hours(1),
        "{remaining}"
    );
    let (status, message) = api_status(
        fixture
            .client
            .create_grant(MODEL, "1", &unknown, hour)
            .await,
    );
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("nobody"), "{message}");
    let (status, message) =
        api_status(fixture.client.create_grant(MODEL, "9", &device, hour).await);
    assert_eq!(status, 404, "{message}");
    for seconds in [0, 30 * 24 * 3600 + 1] {
        let (status, message) = api_status(
            fixture
                .client
                .create_grant(MODEL, "1", &device, Duration::from_secs(seconds))
                .await,
        );
        assert_eq!(status, 400, "{seconds}: {message}");
    }
    let reply = fixture
        .api
        .send(
            Method::POST,
            &format!("/firmware/artifacts/{MODEL}/1/grants"),
            &[],
            Some(json!({"deviceId": "dev1"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn downloads_need_credentials_and_an_entitled_device() {
    let fixture = Fixture::start().await;
    let bytes = image(4096, 12);
    fixture.signed_upload("1", &bytes).await;
    let entitled = fixture.device("dev1", MODEL).await;
    let url = fixture.image_url("1");
    let token = |record: &DeviceRecord| device_token(record, unix_now() + 600);

    // No credentials.
    let (status, headers, body) = fixture.get(&url, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", message(&body));
    assert_eq!(
        header(&headers, "iothub-errorcode"),
        Some("IotHubUnauthorizedAccess")
    );
    // A SAS token, but no grant yet.
    let (status, _, body) = fixture
        .get(&url, &[("authorization", &token(&entitled))])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message(&body).contains("no live grant"),
        "{}",
        message(&body)
    );
    // With a grant: the image.
    fixture.grant("1", "dev1").await;
    let (status, _, body) = fixture
        .get(&url, &[("authorization", &token(&entitled))])
        .await;
    assert_eq!((status, body), (StatusCode::OK, bytes.clone()));
    // Bad tokens: expired, signed with another key, for a module, for a device that does not exist.
    let expired = device_token(&entitled, unix_now() - 10);
    let mut wrong_key = entitled.clone();
    wrong_key.identity.authentication.primary_key =
        Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
    let module = fixture.hub.create_module("dev1", "m1").await;
    for (case, token) in [
        ("expired", expired),
        ("wrong key", device_token(&wrong_key, unix_now() + 600)),
        ("module", device_token(&module, unix_now() + 600)),
        ("garbage", "SharedAccessSignature nonsense".to_owned()),
    ] {
        let (status, _, body) = fixture.get(&url, &[("authorization", &token)]).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            message(&body)
        );
    }

    // Another model, no reported model, an expired grant, disabled: 403 whatever the credentials.
    let other_model = fixture.device("dev2", "other-model").await;
    fixture.grant("1", "dev2").await;
    let (status, _, body) = fixture
        .get(&url, &[("authorization", &token(&other_model))])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message(&body).contains("reports model \"other-model\""),
        "{}",
        message(&body)
    );

    let silent = fixture.hub.create_device("dev3").await;
    fixture.grant("1", "dev3").await;
    let (status, _, body) = fixture
        .get(&url, &[("authorization", &token(&silent))])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message(&body).contains("has not reported"),
        "{}",
        message(&body)
    );

    let lapsed = fixture.device("dev4", MODEL).await;
    fixture
        .hub
        .hub
        .services
        .store
        .put_firmware_grant(FirmwareGrant {
            device_id: "dev4".parse().expect("valid"),
            model: MODEL.into(),
            version: "1".into(),
            expires: time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
            source: "update".into(),
        })
        .await
        .expect("an expired grant");
    let (status, _, _) = fixture
        .get(&url, &[("authorization", &token(&lapsed))])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let signed_url = fixture.grant("1", "dev1").await;
    let current = fixture
        .hub
        .hub
        .services
        .get_identity(&IdentityKey::device("dev1".parse().expect("valid")))
        .await
        .expect("dev1");
    fixture
        .hub
        .set_status(&current, DeviceStatus::Disabled)
        .await;
    for headers in [vec![("authorization", token(&entitled))], Vec::new()] {
        let target = if headers.is_empty() {
            &signed_url
        } else {
            &url
        };
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let (status, response_headers, _) = fixture.get(target, &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            header(&response_headers, "iothub-errorcode"),
            Some("DeviceDisabled")
        );
    }

    // An unknown artifact, with good credentials.
    let (status, headers, _) = fixture
        .get(
            &fixture.image_url("9"),
            &[("authorization", &token(&other_model))],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        header(&headers, "iothub-errorcode"),
        Some(ErrorCode::GenericNotFound.name())
    );
}

#[tokio::test]
async fn signed_urls_expire_and_cannot_be_altered() {
    let fixture = Fixture::start().await;
    let bytes = image(1000, 13);
    fixture.signed_upload("1", &bytes).await;
    fixture.device("dev1", MODEL).await;
    fixture.device("dev2", MODEL).await;
    let url = fixture.grant("1", "dev1").await;
    fixture.grant("1", "dev2").await;
    let (status, _, body) = fixture.get(&url, &[]).await;
    assert_eq!((status, body), (StatusCode::OK, bytes));

    let key = fixture.url_key();
    let base = fixture.image_url("1");
    let past = unix_now() - 60;
    let expired = format!(
        "{base}?device=dev1&expires={past}&sig={}",
        sign_download(&key, MODEL, "1", "dev1", past)
    );
    let (status, _, body) = fixture.get(&expired, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message(&body).contains("expired"), "{}", message(&body));

    let (_, query) = url.split_once('?').expect("a query");
    let parameter = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .expect("present")
            .to_owned()
    };
    let (expires, sig) = (parameter("expires"), parameter("sig"));
    let mut flipped = sig.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ASCII");
    let later: u64 = expires.parse::<u64>().expect("a number") + 3600;
    for (case, altered) in [
        (
            "signature",
            format!("{base}?device=dev1&expires={expires}&sig={flipped}"),
        ),
        (
            "expiry",
            format!("{base}?device=dev1&expires={later}&sig={sig}"),
        ),
        (
            "device",
            format!("{base}?device=dev2&expires={expires}&sig={sig}"),
        ),
        (
            "version",
            format!(
                "{}?device=dev1&expires={expires}&sig={sig}",
                fixture.image_url("2")
            ),
        ),
        (
            "no signature",
            format!("{base}?device=dev1&expires={expires}"),
        ),
        (
            "leading zero",
            format!("{base}?device=dev1&expires=0{expires}&sig={sig}"),
        ),
    ] {
        let (status, _, body) = fixture.get(&altered, &[]).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            message(&body)
        );
    }

    // Revoking the grant (deleting it) stops the URL too.
    fixture
        .hub
        .hub
        .services
        .store
        .revoke_firmware_grants("update")
        .await
        .expect("revoke");
    let (status, _, _) = fixture.get(&url, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn ranges_are_served_as_rfc_9110_says() {
    let fixture = Fixture::start().await;
    let bytes = image(1000, 14);
    let artifact = fixture.signed_upload("1", &bytes).await;
    fixture.device("dev1", MODEL).await;
    let url = fixture.grant("1", "dev1").await;
    let etag = format!("\"{}\"", artifact.sha256);

    let partial = [
        ("bytes=10-19", 10, 19),
        ("bytes=-100", 900, 999),
        ("bytes=10-", 10, 999),
        ("bytes=990-5000", 990, 999),
        ("bytes=0-0", 0, 0),
    ];
    for (range, start, end) in partial {
        let (status, headers, body) = fixture.get(&url, &[("range", range)]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(body, bytes[start..=end], "{range}");
        let content_range = format!("bytes {start}-{end}/1000");
        assert_eq!(
            header(&headers, "content-range"),
            Some(content_range.as_str()),
            "{range}"
        );
        let length = (end - start + 1).to_string();
        assert_eq!(
            header(&headers, "content-length"),
            Some(length.as_str()),
            "{range}"
        );
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    }
    for range in [
        "bytes=1000-",
        "bytes=5-3",
        "bytes=-0",
        "bytes=x-y",
        "bytes=2000-3000",
    ] {
        let (status, headers, body) = fixture.get(&url, &[("range", range)]).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(
            header(&headers, "content-range"),
            Some("bytes */1000"),
            "{range}"
        );
        assert!(message(&body).contains("Range"), "{range}");
    }
    // Several ranges, another unit: the whole image.
    for range in ["bytes=0-1,5-6", "items=0-1"] {
        let (status, headers, body) = fixture.get(&url, &[("range", range)]).await;
        assert_eq!(status, StatusCode::OK, "{range}");
        assert_eq!(body, bytes, "{range}");
        assert_eq!(header(&headers, "content-range"), None);
    }
    // If-Range: the current ETag keeps the range, anything else gets the whole image.
    let (status, _, body) = fixture
        .get(&url, &[("range", "bytes=10-19"), ("if-range", &etag)])
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::PARTIAL_CONTENT, bytes[10..20].to_vec())
    );
    for stale in ["\"0000\"", "W/\"abc\"", "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let (status, _, body) = fixture
            .get(&url, &[("range", "bytes=10-19"), ("if-range", stale)])
            .await;
        assert_eq!((status, body.len()), (StatusCode::OK, 1000), "{stale}");
    }
}

#[tokio::test]
async fn a_restart_keeps_artifacts_and_urls_and_clears_leftovers() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let data_dir = directory.path().join("data");
    let bytes = image(3000, 16);
    let (url, https_port) = {
        let hub = TestHub {
            hub: fleethub_hub::start(HubConfig::for_loopback(data_dir.clone()))
                .await
                .expect("start"),
            directory: tempfile::tempdir().expect("unused"),
        };
        let fixture = Fixture::with_hub(hub);
        fixture.signed_upload("1", &bytes).await;
        fixture.device("dev1", MODEL).await;
        let url = fixture.grant("1", "dev1").await;
        let port = fixture.hub.hub.https_address.port();
        let Fixture { hub, .. } = fixture;
        hub.hub.shutdown(Duration::from_secs(5)).await;
        (url, port)
    };
    // What a crash could leave: a half upload, and an image whose artifact was never recorded.
    std::fs::write(data_dir.join("artifacts/tmp/0123abcd"), b"half").expect("write");
    let orphan = sha256_hex(b"orphan");
    std::fs::write(data_dir.join("artifacts/blobs").join(&orphan), b"orphan").expect("write");

    let hub = TestHub {
        hub: fleethub_hub::start(HubConfig::for_loopback(data_dir.clone()))
            .await
            .expect("restart"),
        directory,
    };
    let fixture = Fixture::with_hub(hub);
    assert!(fixture.tmp().is_empty());
    assert_eq!(fixture.blobs(), vec![sha256_hex(&bytes)]);
    // The signature covers the artifact, the device and the expiry, not where the hub listens.
    let url = url.replace(
        &format!(":{https_port}/"),
        &format!(":{}/", fixture.hub.hub.https_address.port()),
    );
    let (status, _, body) = fixture.get(&url, &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, bytes),
        "the URL key survived"
    );
}
