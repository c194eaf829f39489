//! Downloading an image over HTTPS into `DIR/download/partial`, resumable across cuts and restarts.
//!
//! The sidecar record (`partial.json`, a [`DownloadRecord`]) is written before the first byte and then at
//! every checkpoint, always after an fsync of `partial`, so the `bytes` it names are on disk. A checkpoint
//! comes about once a second, or every 10 %, or when the body stalls or ends, and only a checkpoint reports
//! progress: the progress the hub sees never runs ahead of what survives a power cut. A new attempt
//! (after a cut, or after the agent restarted) truncates `partial` to that and asks for the rest with
//! `Range: bytes=N-` and `If-Range: <etag>`. A 206 whose `Content-Range` starts at `N` continues the file; a
//! 200 (the image changed, or the server ignores ranges) starts again from byte 0; a 416 whose size is `N`
//! means the file is already complete.
//!
//! Failures that retrying can fix (the connection, a cut body, 5xx, 408, 429) are retried with exponential
//! backoff and full jitter; the download fails once `max_attempts` attempts in a row made no progress. Other
//! answers (401, 403, 404, ...) fail it at once.
//!
//! A signed URL (`sig=` in its query) is fetched as is; any other URL carries the device's SAS token in
//! `Authorization`, and only over HTTPS.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use fleethub_protocol::DeviceConnectionString;
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::error::{StartError, StorageError, UpdateError, UpdateErrorCode};
use crate::payload::is_signed_url;
use crate::state::{DownloadRecord, StateDir};

/// The header carrying the manifest JWS of a signed artifact.
pub const MANIFEST_HEADER: &str = "x-fleethub-manifest";
/// The header carrying the image's SHA-256.
pub const SHA256_HEADER: &str = "x-fleethub-sha256";
/// How long a SAS token made for one download request is valid.
const TOKEN_TTL_SECONDS: u64 = 3600;
/// How much of an error answer's body a failure reason quotes.
const BODY_QUOTE: usize = 200;

/// How downloads are retried and timed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DownloadPolicy {
    /// Attempts in a row that make no progress before the download fails. Default 8.
    pub max_attempts: u32,
    /// Upper bound of the first backoff delay. Default 500 ms.
    pub initial_backoff: Duration,
    /// Largest upper bound of a backoff delay. Default 30 s.
    pub max_backoff: Duration,
    /// Connecting (TCP and TLS). Default 30 s.
    pub connect_timeout: Duration,
    /// The longest wait for the next bytes of an answer before the attempt counts as cut. Default 60 s.
    pub read_timeout: Duration,
    /// Checkpoints (received bytes made durable, the record updated, progress reported) come at most about
    /// this often, and at every 10 %. Default 1 s.
    pub sync_interval: Duration,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            sync_interval: Duration::from_secs(1),
        }
    }
}

impl DownloadPolicy {
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    pub fn with_read_timeout(mut self, read_timeout: Duration) -> Self {
        self.read_timeout = read_timeout;
        self
    }

    pub fn with_sync_interval(mut self, sync_interval: Duration) -> Self {
        self.sync_interval = sync_interval;
        self
    }
}

/// The delay before retry number `failures` (from 1): uniform in `[0, min(max, initial * 2^(failures-1))]`.
pub fn backoff_delay(failures: u32, initial: Duration, max: Duration, random: u64) -> Duration {
    let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
    let bound = initial.saturating_mul(doubling).min(max);
    let bound_nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    if bound_nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % bound_nanos.saturating_add(1))
}

/// Download progress in percent, when the total is known.
pub fn percent(bytes: u64, total: Option<u64>) -> Option<u8> {
    let total = total.filter(|total| *total > 0)?;
    Some(u8::try_from((bytes.saturating_mul(100) / total).min(100)).unwrap_or(100))
}

/// When the next checkpoint is due: `interval` after the last one, or 10 % further.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    interval: Duration,
    last_time: tokio::time::Instant,
    last_percent: Option<u8>,
}

impl Checkpoints {
    pub fn new(interval: Duration, percent: Option<u8>, now: tokio::time::Instant) -> Self {
        Self {
            interval,
            last_time: now,
            last_percent: percent,
        }
    }

    pub fn due(&self, percent: Option<u8>, now: tokio::time::Instant) -> bool {
        let by_step = match (percent, self.last_percent) {
            (Some(percent), Some(last)) => percent >= last.saturating_add(10),
            (Some(_), None) => true,
            (None, _) => false,
        };
        by_step || now - self.last_time >= self.interval
    }

    pub fn mark(&mut self, percent: Option<u8>, now: tokio::time::Instant) {
        self.last_time = now;
        if percent.is_some() {
            self.last_percent = percent;
        }
    }
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock still spreads devices apart.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.subsec_nanos().into())
            .unwrap_or(0)
    })
}

/// How the device proves who it is to the download endpoint: a SAS token for `sr=<host>/devices/<id>`,
/// signed from the connection string's key (as the device SDK signs its MQTT password), or the connection
/// string's own token.
#[derive(Clone)]
pub struct DeviceAuth {
    resource: String,
    credential: Credential,
}

#[derive(Clone)]
enum Credential {
    Key(Vec<u8>),
    Token(String),
}

impl std::fmt::Debug for DeviceAuth {
    /// Never prints key material.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DeviceAuth")
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl DeviceAuth {
    pub fn from_connection_string(parsed: &DeviceConnectionString) -> Result<Self, StartError> {
        if parsed.x509 {
            return Err(StartError::X509NotSupported);
        }
        let resource = match &parsed.module_id {
            Some(module) => format!(
                "{}/devices/{}/modules/{module}",
                parsed.host_name, parsed.device_id
            ),
            None => format!("{}/devices/{}", parsed.host_name, parsed.device_id),
        };
        let credential = match (&parsed.shared_access_key, &parsed.shared_access_signature) {
            (Some(key), _) => Credential::Key(
                decode_key(key).map_err(|error| StartError::SharedAccessKey(error.to_string()))?,
            ),
            (None, Some(token)) => Credential::Token(token.clone()),
            (None, None) => {
                return Err(StartError::ConnectionString(
                    fleethub_protocol::ConnectionStringError::MissingCredential,
                ));
            }
        };
        Ok(Self {
            resource,
            credential,
        })
    }

    /// The `Authorization` value for a request made at `now_unix`.
    pub fn token(&self, now_unix: u64) -> String {
        match &self.credential {
            Credential::Key(key) => generate_sas_token(
                &self.resource,
                key,
                now_unix.saturating_add(TOKEN_TTL_SECONDS),
                None,
            ),
            Credential::Token(token) => token.clone(),
        }
    }
}

/// The HTTP client downloads use: rustls with the *ring* provider passed explicitly, trusting exactly
/// `ca_pem` when given (a fleethub hub's `ca.pem`), else the operating system's roots.
pub fn http_client(
    ca_pem: Option<&str>,
    policy: &DownloadPolicy,
) -> Result<reqwest::Client, StartError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| StartError::HttpClient(error.to_string()))?;
    let builder = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let certificate =
                    certificate.map_err(|error| StartError::CaCertificate(error.to_string()))?;
                roots
                    .add(certificate)
                    .map_err(|error| StartError::CaCertificate(error.to_string()))?;
            }
            if roots.is_empty() {
                return Err(StartError::CaCertificate(
                    "it holds no \"BEGIN CERTIFICATE\" section".into(),
                ));
            }
            builder.with_root_certificates(roots)
        }
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|error| StartError::HttpClient(error.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    let mut config = builder.with_no_client_auth();
    // reqwest leaves ALPN to a preconfigured config; downloads are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(policy.connect_timeout)
        .read_timeout(policy.read_timeout)
        .user_agent(concat!("fleethub-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| StartError::HttpClient(error.to_string()))
}

/// Why a download stopped.
#[derive(Debug)]
pub enum DownloadError {
    Failed(UpdateError),
    /// The agent is stopping; the record and the bytes stay for the next start.
    Cancelled,
}

impl From<StorageError> for DownloadError {
    fn from(error: StorageError) -> Self {
        Self::Failed(error.into())
    }
}

enum AttemptError {
    /// Retrying cannot help.
    Permanent(UpdateError),
    /// Worth another attempt.
    Transient(String),
    Cancelled,
}

impl From<StorageError> for AttemptError {
    fn from(error: StorageError) -> Self {
        Self::Permanent(error.into())
    }
}

/// Downloads images.
#[derive(Debug, Clone)]
pub struct Downloader {
    http: reqwest::Client,
    auth: DeviceAuth,
    policy: DownloadPolicy,
}

impl Downloader {
    pub fn new(http: reqwest::Client, auth: DeviceAuth, policy: DownloadPolicy) -> Self {
        Self { http, auth, policy }
    }

    /// Downloads `record.url` into `state`'s `partial` until it is complete, resuming from what `record`
    /// says is there. `check_headers` runs whenever a response's headers are in (with the record updated from
    /// them) and can refuse the artifact before its body is read; `progress` sees `(bytes, total)` at each
    /// checkpoint, the bytes already durable.
    ///
    /// Cancellation-safe at every await that waits on the network: `cancel` stops it with the bytes made
    /// durable and the record saved; file writes are never cut half-way.
    pub async fn download(
        &self,
        state: &StateDir,
        record: &mut DownloadRecord,
        cancel: &CancellationToken,
        check_headers: &(dyn Fn(&DownloadRecord) -> Result<(), UpdateError> + Sync),
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<(), DownloadError> {
        let mut failures = 0u32;
        loop {
            if record.complete {
                return Ok(());
            }
            let before = record.bytes;
            match self
                .attempt(state, record, cancel, check_headers, progress)
                .await
            {
                Ok(()) => return Ok(()),
                Err(AttemptError::Cancelled) => return Err(DownloadError::Cancelled),
                Err(AttemptError::Permanent(error)) => return Err(DownloadError::Failed(error)),
                Err(AttemptError::Transient(reason)) => {
                    if record.bytes > before {
                        failures = 0;
                    }
                    failures += 1;
                    if failures >= self.policy.max_attempts {
                        return Err(DownloadError::Failed(UpdateError::new(
                            UpdateErrorCode::DownloadFailed,
                            format!(
                                "gave up after {failures} attempts in a row without progress; the last: {reason}"
                            ),
                        )));
                    }
                    let delay = backoff_delay(
                        failures,
                        self.policy.initial_backoff,
                        self.policy.max_backoff,
                        random_u64(),
                    );
                    tracing::info!(url = %redact(&record.url), %reason, bytes = record.bytes, ?delay, "download attempt failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(DownloadError::Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn request(&self, record: &DownloadRecord) -> Result<reqwest::RequestBuilder, AttemptError> {
        let url = reqwest::Url::parse(&record.url).map_err(|error| {
            AttemptError::Permanent(UpdateError::new(
                UpdateErrorCode::DownloadRefused,
                format!("{:?} is not a URL: {error}", record.url),
            ))
        })?;
        let mut request = self.http.get(url.clone());
        if !is_signed_url(&url) {
            if url.scheme() != "https" {
                return Err(AttemptError::Permanent(UpdateError::new(
                    UpdateErrorCode::DownloadRefused,
                    format!(
                        "{} is neither a signed URL nor HTTPS; the device's SAS token is only sent over HTTPS",
                        record.url
                    ),
                )));
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            request = request.header(
                header::AUTHORIZATION,
                self.auth.token(u64::try_from(now).unwrap_or(0)),
            );
        }
        if record.bytes > 0 {
            request = request.header(header::RANGE, format!("bytes={}-", record.bytes));
            if let Some(etag) = &record.etag {
                request = request.header(header::IF_RANGE, etag);
            }
        }
        Ok(request)
    }

    async fn attempt(
        &self,
        state: &StateDir,
        record: &mut DownloadRecord,
        cancel: &CancellationToken,
        check_headers: &(dyn Fn(&DownloadRecord) -> Result<(), UpdateError> + Sync),
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<(), AttemptError> {
        let path = state.partial_path();
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await
            .map_err(StorageError::io("open", &path))?;
        let on_disk = file
            .metadata()
            .await
            .map_err(StorageError::io("inspect", &path))?
            .len();
        if on_disk < record.bytes {
            tracing::warn!(
                on_disk,
                recorded = record.bytes,
                "the partial download is shorter than its record; starting over"
            );
            record.restart();
        }
        // Bytes past the record's count were never confirmed durable: write them again.
        truncate(&mut file, &path, record.bytes).await?;

        let request = self.request(record)?;
        let response = tokio::select! {
            () = cancel.cancelled() => return Err(AttemptError::Cancelled),
            response = request.send() => response.map_err(|error| AttemptError::Transient(error_chain(&error.without_url())))?,
        };
        let status = response.status();
        let headers = response.headers().clone();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = headers
                    .get(header::CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(parse_content_range);
                let etag_changed =
                    match (&record.etag, header_text(&headers, header::ETAG.as_str())) {
                        (Some(ours), Some(theirs)) => *ours != theirs,
                        _ => false,
                    };
                match range {
                    Some(range) if range.start == record.bytes && !etag_changed => {
                        record.total = range.total;
                    }
                    _ => {
                        record.restart();
                        truncate(&mut file, &path, 0).await?;
                        state.save_download_record(record)?;
                        return Err(AttemptError::Transient(format!(
                            "the server resumed with Content-Range {:?} (etag changed: {etag_changed}); starting over",
                            header_text(&headers, header::CONTENT_RANGE.as_str())
                        )));
                    }
                }
            }
            StatusCode::OK => {
                if record.bytes > 0 {
                    tracing::info!(url = %redact(&record.url), "the server sent the whole image instead of the rest; starting over");
                    record.restart();
                    truncate(&mut file, &path, 0).await?;
                }
                record.total = response.content_length();
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let size = header_text(&headers, header::CONTENT_RANGE.as_str()).and_then(|text| {
                    text.strip_prefix("bytes */")
                        .and_then(|size| size.parse::<u64>().ok())
                });
                if record.bytes > 0 && size == Some(record.bytes) {
                    record.total = size;
                    record.complete = true;
                    state.save_download_record(record)?;
                    progress(record.bytes, record.total);
                    return Ok(());
                }
                record.restart();
                truncate(&mut file, &path, 0).await?;
                state.save_download_record(record)?;
                return Err(AttemptError::Transient(format!(
                    "the server answered 416 (size {size:?}); starting over"
                )));
            }
            status
                if status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                return Err(AttemptError::Transient(format!(
                    "the server answered {status}"
                )));
            }
            status => {
                let body = response.text().await.unwrap_or_default();
                let quoted: String = body.trim().chars().take(BODY_QUOTE).collect();
                return Err(AttemptError::Permanent(UpdateError::new(
                    UpdateErrorCode::DownloadRefused,
                    if quoted.is_empty() {
                        format!("GET {} answered {status}", redact(&record.url))
                    } else {
                        format!("GET {} answered {status}: {quoted}", redact(&record.url))
                    },
                )));
            }
        }

        if let Some(etag) = header_text(&headers, header::ETAG.as_str()) {
            record.etag = Some(etag);
        }
        if let Some(manifest) = header_text(&headers, MANIFEST_HEADER) {
            record.server_manifest = Some(manifest);
        }
        record.server_sha256 = header_text(&headers, SHA256_HEADER).or_else(|| {
            record
                .etag
                .as_deref()
                .map(|etag| etag.trim_start_matches("W/").trim_matches('"').to_owned())
                .filter(|etag| {
                    etag.len() == 64 && etag.bytes().all(|byte| byte.is_ascii_hexdigit())
                })
        });
        state.save_download_record(record)?;
        check_headers(record).map_err(AttemptError::Permanent)?;

        let mut response = response;
        let mut written = record.bytes;
        let mut checkpoints = Checkpoints::new(
            self.policy.sync_interval,
            percent(written, record.total),
            tokio::time::Instant::now(),
        );
        progress(written, record.total);
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => {
                    persist(&mut file, &path, state, record, written).await?;
                    return Err(AttemptError::Cancelled);
                }
                next = tokio::time::timeout(self.policy.sync_interval, response.chunk()) => next,
            };
            match next {
                // Nothing for a while: checkpoint what did arrive, then keep waiting.
                Err(_elapsed) => {
                    if written > record.bytes {
                        persist(&mut file, &path, state, record, written).await?;
                        checkpoints
                            .mark(percent(written, record.total), tokio::time::Instant::now());
                        progress(written, record.total);
                    }
                }
                Ok(Ok(Some(chunk))) => {
                    if record
                        .total
                        .is_some_and(|total| written + chunk.len() as u64 > total)
                    {
                        record.restart();
                        truncate(&mut file, &path, 0).await?;
                        state.save_download_record(record)?;
                        return Err(AttemptError::Transient(
                            "the server sent more bytes than it announced; starting over".into(),
                        ));
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(StorageError::io("write", &path))?;
                    written += chunk.len() as u64;
                    let now = tokio::time::Instant::now();
                    let reached = percent(written, record.total);
                    if checkpoints.due(reached, now) {
                        persist(&mut file, &path, state, record, written).await?;
                        checkpoints.mark(reached, now);
                        progress(written, record.total);
                    }
                }
                Ok(Ok(None)) => {
                    persist(&mut file, &path, state, record, written).await?;
                    if record.total.is_some_and(|total| written != total) {
                        return Err(AttemptError::Transient(format!(
                            "the body ended after {written} of {:?} bytes",
                            record.total
                        )));
                    }
                    record.total = Some(written);
                    record.complete = true;
                    state.save_download_record(record)?;
                    progress(written, record.total);
                    return Ok(());
                }
                Ok(Err(error)) => {
                    persist(&mut file, &path, state, record, written).await?;
                    progress(written, record.total);
                    return Err(AttemptError::Transient(format!(
                        "the body was cut after {written} bytes: {}",
                        error_chain(&error.without_url())
                    )));
                }
            }
        }
    }
}

/// fsyncs `partial` and records `written` as durable.
async fn persist(
    file: &mut tokio::fs::File,
    path: &std::path::Path,
    state: &StateDir,
    record: &mut DownloadRecord,
    written: u64,
) -> Result<(), StorageError> {
    file.flush()
        .await
        .map_err(StorageError::io("write", path))?;
    file.sync_data()
        .await
        .map_err(StorageError::io("fsync", path))?;
    record.bytes = written;
    state.save_download_record(record)
}

async fn truncate(
    file: &mut tokio::fs::File,
    path: &std::path::Path,
    length: u64,
) -> Result<(), StorageError> {
    file.set_len(length)
        .await
        .map_err(StorageError::io("truncate", path))?;
    file.seek(SeekFrom::Start(length))
        .await
        .map_err(StorageError::io("seek", path))?;
    Ok(())
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub total: Option<u64>,
}

pub fn parse_content_range(text: &str) -> Option<ContentRange> {
    let rest = text.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    if end < start || total.is_some_and(|total| end >= total) {
        return None;
    }
    Some(ContentRange { start, end, total })
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// A URL for logs and reports, without its query (a signed URL's signature is a credential).
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?..."),
        None => url.to_owned(),
    }
}

/// An error and its sources, `a: b: c`; reqwest's own message alone rarely says what happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse_and_nonsense_does_not() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some(ContentRange {
                start: 100,
                end: 199,
                total: Some(200)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-0/*"),
            Some(ContentRange {
                start: 0,
                end: 0,
                total: None
            })
        );
        for bad in [
            "bytes */200",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes a-b/c",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn checkpoints_come_every_ten_percent_or_interval() {
        let start = tokio::time::Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        let mut checkpoints = Checkpoints::new(Duration::from_secs(1), Some(0), start);
        let steps = [
            (Some(1), 10, false),
            (Some(9), 20, false),
            (Some(10), 30, true),
            (Some(15), 40, false),
            (Some(15), 1030, true),
            (Some(16), 1100, false),
            (Some(26), 1200, true),
            (None, 1300, false),
            (None, 2200, true),
        ];
        for (reached, millis, expected) in steps {
            let due = checkpoints.due(reached, at(millis));
            assert_eq!(due, expected, "{reached:?} at {millis} ms");
            if due {
                checkpoints.mark(reached, at(millis));
            }
        }
        assert_eq!(percent(1, Some(3)), Some(33));
        assert_eq!(percent(5, Some(5)), Some(100));
        assert_eq!(percent(5, Some(0)), None);
        assert_eq!(percent(5, None), None);
    }

    #[test]
    fn backoff_stays_within_its_doubling_bound() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for failures in 1..40 {
            let bound = initial
                .saturating_mul(2u32.saturating_pow((failures - 1).min(31)))
                .min(max);
            for random in [0, 1, 12345, u64::MAX / 3, u64::MAX] {
                let delay = backoff_delay(failures, initial, max, random);
                assert!(delay <= bound, "{failures}: {delay:?} > {bound:?}");
            }
        }
        assert_eq!(backoff_delay(1, Duration::ZERO, max, 7), Duration::ZERO);
        // Full jitter: the whole range is reachable.
        assert_eq!(backoff_delay(1, initial, max, 0), Duration::ZERO);
        assert_eq!(backoff_delay(1, initial, max, 100_000_000), initial);
    }

    #[test]
    fn tokens_are_for_the_device_and_urls_are_redacted() {
        let parsed: DeviceConnectionString =
            "HostName=hub.example;DeviceId=dev1;SharedAccessKey=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
                .parse()
                .unwrap();
        let auth = DeviceAuth::from_connection_string(&parsed).unwrap();
        let token: fleethub_protocol::SasToken = auth.token(1000).parse().unwrap();
        assert_eq!(token.resource, "hub.example/devices/dev1");
        assert_eq!(token.expiry, 1000 + TOKEN_TTL_SECONDS);
        assert!(!format!("{auth:?}").contains("MDEy"));
        assert_eq!(redact("https://h/x?sig=secret"), "https://h/x?...");
        assert_eq!(redact("https://h/x"), "https://h/x");
    }
}
