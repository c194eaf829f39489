//! `firmwareUpdate` on a simulated device: the firmware agent's logic (`fleethub-agent`) without its disk.
//!
//! Shared with the agent: the method payload's parsing and the refusals before anything starts (400, 409),
//! the decision of what the image must be (the manifest's signature with `--public-key`, its model and
//! version, else the server's SHA-256), the size and SHA-256 checks of the downloaded bytes, the download's
//! retry policy and progress checkpoints, and the reported properties (`firmwareStatus` and the `firmware`
//! object, with the reference timestamps). Left out: the partial file and its resume, the A/B slot write,
//! the boot record and the re-executed "reboot", and the health check command. The image is hashed as it
//! streams in and dropped; the slot only flips in the reports (`applying` twice, before and after the
//! reboot, as the agent reports it).
//!
//! `--firmware-failure-rate` decides, per update, whether it fails once the image was checked: half of the
//! failures report `failed` (writing the slot failed, code `storage`), half `rolledBack` after the reboot
//! (the health check failed, code `healthCheckFailed`), each with a reason naming the simulation.

use fleethub_agent::download::{
    Checkpoints, DeviceAuth, MANIFEST_HEADER, SHA256_HEADER, backoff_delay, percent, redact,
};
use fleethub_agent::report::{Timestamp, progress_patch, state_patch};
use fleethub_agent::state::DownloadRecord;
use fleethub_agent::verify::{Trust, check_announced_size, check_image, expected_image};
use fleethub_agent::{
    DownloadPolicy, FirmwareState, FirmwareStatus, Slot, UpdateError, UpdateErrorCode,
    UpdateRequest,
};
use fleethub_device::{DeviceClient, MethodResponse};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::random::Random;
use super::stats::Counters;

/// How much of an error answer's body a failure reason quotes.
const BODY_QUOTE: usize = 200;

/// What every simulated device's firmware agent shares: the download client, what it trusts, the failure
/// rate.
pub(super) struct FirmwareSimulation {
    pub(super) http: reqwest::Client,
    pub(super) trust: Trust,
    pub(super) policy: DownloadPolicy,
    /// The version a device runs when its twin reports none.
    pub(super) initial_version: String,
    pub(super) failure_rate: f64,
    /// Which updates fail, and the jitter of download retries.
    pub(super) random: Random,
}

/// How an update that is to fail fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SimulatedFailure {
    /// Before the reboot: writing the inactive slot failed. Reports `failed`.
    SlotWrite,
    /// After the reboot: the health check failed. Reports `rolledBack`.
    HealthCheck,
}

/// How an update ended, as the device reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UpdateOutcome {
    Completed,
    Failed,
    RolledBack,
}

fn response(status: i32, text: impl Into<String>) -> MethodResponse {
    MethodResponse::new(status, json!({ "Response": text.into() }))
}

impl FirmwareSimulation {
    /// The agent's checks of a `firmwareUpdate` payload before it claims the update: `Err` is the answer
    /// (400 for a payload that is not one, 409 for a manifest of another model).
    pub(super) fn check(&self, payload: &Value) -> Result<UpdateRequest, MethodResponse> {
        let update = fleethub_agent::parse_update_request(payload)
            .map_err(|message| response(400, message))?;
        if let Some((_, manifest)) = &update.manifest
            && manifest.model != self.trust.model
        {
            return Err(response(
                409,
                format!(
                    "the manifest is for model {:?}; this device is model {:?}",
                    manifest.model, self.trust.model
                ),
            ));
        }
        Ok(update)
    }

    /// Whether this update is to fail, and how.
    pub(super) fn draw_failure(&self) -> Option<SimulatedFailure> {
        if !self.random.chance(self.failure_rate) {
            return None;
        }
        Some(if self.random.below(2) == 0 {
            SimulatedFailure::SlotWrite
        } else {
            SimulatedFailure::HealthCheck
        })
    }

    /// The device's firmware before its first update in this run: what its twin reports (the version and
    /// slot an earlier run left), else the initial version in slot A.
    pub(super) async fn initial_state(&self, client: &DeviceClient) -> FirmwareState {
        let reported = client
            .get_twin()
            .await
            .ok()
            .and_then(|twin| twin.pointer("/reported/firmware").cloned())
            .unwrap_or(Value::Null);
        let text = |name: &str| reported.get(name).and_then(Value::as_str);
        FirmwareState {
            model: self.trust.model.clone(),
            current_version: text("currentVersion")
                .unwrap_or(&self.initial_version)
                .to_owned(),
            target_version: None,
            status: FirmwareStatus::StandBy,
            progress: None,
            slot: if text("slot") == Some("b") {
                Slot::B
            } else {
                Slot::A
            },
            error: None,
        }
    }

    /// Runs one update to its end, reporting each step on `client`, and says how it ended.
    pub(super) async fn run(
        &self,
        client: &DeviceClient,
        auth: &DeviceAuth,
        state: &mut FirmwareState,
        update: UpdateRequest,
        failure: Option<SimulatedFailure>,
        counters: &Counters,
    ) -> UpdateOutcome {
        match self
            .update(client, auth, state, update, failure, counters)
            .await
        {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::debug!(code = %error.code, reason = %error.reason, "simulated firmware update failed");
                state.status = FirmwareStatus::Failed;
                state.error = Some(error);
                report(client, state, &[], counters).await;
                UpdateOutcome::Failed
            }
        }
    }

    async fn update(
        &self,
        client: &DeviceClient,
        auth: &DeviceAuth,
        state: &mut FirmwareState,
        update: UpdateRequest,
        failure: Option<SimulatedFailure>,
        counters: &Counters,
    ) -> Result<UpdateOutcome, UpdateError> {
        state.status = FirmwareStatus::Downloading;
        state.target_version = update.target_version().map(str::to_owned);
        let mut record = DownloadRecord::new(
            update.url.to_string(),
            update.version,
            update.manifest.map(|(jws, _)| jws),
            OffsetDateTime::now_utc(),
        );
        state.progress = Some(0);
        state.error = None;
        report(client, state, &[], counters).await;

        let (expected, sha256, size) = self.download(client, auth, &mut record, counters).await?;
        check_image(
            &expected,
            &self.trust.model,
            &sha256,
            size,
            OffsetDateTime::now_utc(),
        )?;
        state.progress = Some(100);
        state.target_version = Some(expected.version.clone());
        report(
            client,
            state,
            &[(Timestamp::DownloadComplete, OffsetDateTime::now_utc())],
            counters,
        )
        .await;

        if failure == Some(SimulatedFailure::SlotWrite) {
            return Err(UpdateError::new(
                UpdateErrorCode::Storage,
                format!(
                    "simulated failure (--firmware-failure-rate): writing version {} to slot {} failed",
                    expected.version,
                    state.slot.other()
                ),
            ));
        }
        state.status = FirmwareStatus::Applying;
        report(
            client,
            state,
            &[(Timestamp::StartedApplyingImage, OffsetDateTime::now_utc())],
            counters,
        )
        .await;
        // The reboot into the new slot: the agent reports `applying` again from there.
        let previous_slot = state.slot;
        state.slot = previous_slot.other();
        report(client, state, &[], counters).await;

        if failure == Some(SimulatedFailure::HealthCheck) {
            state.status = FirmwareStatus::RolledBack;
            state.slot = previous_slot;
            state.error = Some(UpdateError::new(
                UpdateErrorCode::HealthCheckFailed,
                format!(
                    "simulated failure (--firmware-failure-rate): the health check of version {} failed",
                    expected.version
                ),
            ));
            report(client, state, &[], counters).await;
            return Ok(UpdateOutcome::RolledBack);
        }
        state.status = FirmwareStatus::Completed;
        state.current_version = expected.version;
        state.error = None;
        report(
            client,
            state,
            &[(Timestamp::LastFirmwareUpdate, OffsetDateTime::now_utc())],
            counters,
        )
        .await;
        Ok(UpdateOutcome::Completed)
    }

    /// Downloads the image, hashing it as it streams in, retried as the agent retries (transient failures,
    /// `max_attempts` in a row). Returns what the image must be and its SHA-256 and size.
    async fn download(
        &self,
        client: &DeviceClient,
        auth: &DeviceAuth,
        record: &mut DownloadRecord,
        counters: &Counters,
    ) -> Result<(fleethub_agent::verify::ExpectedImage, String, u64), UpdateError> {
        let mut failures = 0;
        loop {
            match self.attempt(client, auth, record, counters).await {
                Ok(done) => return Ok(done),
                Err(Attempt::Permanent(error)) => return Err(error),
                Err(Attempt::Transient(reason)) => {
                    failures += 1;
                    if failures >= self.policy.max_attempts {
                        return Err(UpdateError::new(
                            UpdateErrorCode::DownloadFailed,
                            format!(
                                "gave up after {failures} attempts in a row; the last: {reason}"
                            ),
                        ));
                    }
                    let delay = backoff_delay(
                        failures,
                        self.policy.initial_backoff,
                        self.policy.max_backoff,
                        self.random.next_u64(),
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        client: &DeviceClient,
        auth: &DeviceAuth,
        record: &mut DownloadRecord,
        counters: &Counters,
    ) -> Result<(fleethub_agent::verify::ExpectedImage, String, u64), Attempt> {
        let url = reqwest::Url::parse(&record.url).map_err(|error| {
            Attempt::Permanent(UpdateError::new(
                UpdateErrorCode::DownloadRefused,
                format!("{:?} is not a URL: {error}", record.url),
            ))
        })?;
        let signed = url.query_pairs().any(|(name, _)| name == "sig");
        let mut request = self.http.get(url.clone());
        if !signed {
            if url.scheme() != "https" {
                return Err(Attempt::Permanent(UpdateError::new(
                    UpdateErrorCode::DownloadRefused,
                    format!(
                        "{} is neither a signed URL nor HTTPS; the device's SAS token is only sent over HTTPS",
                        record.url
                    ),
                )));
            }
            let now = OffsetDateTime::now_utc().unix_timestamp();
            request = request.header(
                header::AUTHORIZATION,
                auth.token(u64::try_from(now).unwrap_or(0)),
            );
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| Attempt::Transient(error.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            return Err(Attempt::Transient(format!("the server answered {status}")));
        }
        if status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            let quoted: String = body.trim().chars().take(BODY_QUOTE).collect();
            let mut reason = format!("GET {} answered {status}", redact(&record.url));
            if !quoted.is_empty() {
                reason = format!("{reason}: {quoted}");
            }
            return Err(Attempt::Permanent(UpdateError::new(
                UpdateErrorCode::DownloadRefused,
                reason,
            )));
        }
        let header_text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        record.server_manifest = header_text(MANIFEST_HEADER);
        record.server_sha256 = header_text(SHA256_HEADER);
        record.total = response.content_length();
        let expected = expected_image(&self.trust, record).map_err(Attempt::Permanent)?;
        if let Some(total) = record.total {
            check_announced_size(&expected, total).map_err(Attempt::Permanent)?;
        }

        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut checkpoints = Checkpoints::new(
            self.policy.sync_interval,
            Some(0),
            tokio::time::Instant::now(),
        );
        loop {
            let chunk = tokio::time::timeout(self.policy.read_timeout, response.chunk())
                .await
                .map_err(|_| {
                    Attempt::Transient(format!(
                        "no bytes for {:?} after {received} bytes",
                        self.policy.read_timeout
                    ))
                })?
                .map_err(|error| {
                    Attempt::Transient(format!(
                        "the body was cut after {received} bytes: {}",
                        error.without_url()
                    ))
                })?;
            let Some(chunk) = chunk else { break };
            received += chunk.len() as u64;
            if record.total.is_some_and(|total| received > total) {
                return Err(Attempt::Transient(
                    "the server sent more bytes than it announced".into(),
                ));
            }
            hasher.update(&chunk);
            let now = tokio::time::Instant::now();
            let reached = percent(received, record.total);
            if checkpoints.due(reached, now) {
                checkpoints.mark(reached, now);
                // Progress is best effort, as the agent's: a later report says more anyway.
                if let Some(reached) = reached.filter(|reached| *reached < 100) {
                    report_patch(client, &progress_patch(reached), counters).await;
                }
            }
        }
        if record.total.is_some_and(|total| received != total) {
            return Err(Attempt::Transient(format!(
                "the body ended after {received} of {:?} bytes",
                record.total
            )));
        }
        Ok((expected, hex(&hasher.finalize()), received))
    }
}

enum Attempt {
    Transient(String),
    Permanent(UpdateError),
}

/// Reports the whole state, as the agent does at each status change.
async fn report(
    client: &DeviceClient,
    state: &FirmwareState,
    timestamps: &[(Timestamp, OffsetDateTime)],
    counters: &Counters,
) {
    report_patch(client, &state_patch(state, timestamps), counters).await;
}

async fn report_patch(client: &DeviceClient, patch: &Value, counters: &Counters) {
    match client.patch_reported(patch).await {
        Ok(_) => counters.report_sent(),
        Err(error) => {
            counters.report_failed();
            tracing::debug!(%error, "a simulated firmware report failed");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleethub_service::protocol::firmware::{FirmwareManifest, SigningKey};

    fn simulation(failure_rate: f64) -> FirmwareSimulation {
        FirmwareSimulation {
            http: fleethub_agent::download::http_client(None, &DownloadPolicy::default())
                .expect("an HTTP client"),
            trust: Trust {
                public_key: None,
                model: "sim-board".into(),
            },
            policy: DownloadPolicy::default(),
            initial_version: "1.0.0".into(),
            failure_rate,
            random: Random::seeded(3),
        }
    }

    fn manifest_for(model: &str) -> String {
        SigningKey::from_seed([9; 32])
            .sign(&FirmwareManifest {
                model: model.into(),
                version: "2.0.0".into(),
                sha256: "ab".repeat(32),
                size: 1,
                created: time::macros::datetime!(2026-11-27 12:00 UTC),
                health_check: None,
                description: None,
            })
            .unwrap()
    }

    #[test]
    fn payloads_are_refused_as_the_agent_refuses_them() {
        let simulation = simulation(0.0);
        let bad = simulation.check(&json!({"nope": 1})).unwrap_err();
        assert_eq!(bad.status, 400);
        let other_model = simulation
            .check(&json!({"fwPackageUri": "https://h/fw.bin", "manifest": manifest_for("other")}))
            .unwrap_err();
        assert_eq!(other_model.status, 409);
        assert!(
            other_model.payload["Response"]
                .as_str()
                .unwrap()
                .contains("this device is model \"sim-board\""),
            "{}",
            other_model.payload
        );
        let accepted = simulation
            .check(
                &json!({"fwPackageUri": "https://h/fw.bin", "manifest": manifest_for("sim-board")}),
            )
            .unwrap();
        assert_eq!(accepted.target_version(), Some("2.0.0"));
    }

    #[test]
    fn the_failure_rate_decides_whether_and_how_an_update_fails() {
        let never = simulation(0.0);
        assert!((0..1000).all(|_| never.draw_failure().is_none()));
        let always = simulation(1.0);
        let failures: Vec<_> = (0..1000).map(|_| always.draw_failure()).collect();
        assert!(failures.iter().all(Option::is_some));
        assert!(failures.contains(&Some(SimulatedFailure::SlotWrite)));
        assert!(failures.contains(&Some(SimulatedFailure::HealthCheck)));
    }

    #[test]
    fn hashes_are_lower_case_hex() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
