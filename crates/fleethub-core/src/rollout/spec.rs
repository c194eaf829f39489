//! A rollout request checked against the rules: wave sizes (`1%,10%,50%,100%` or `10,100,1000`), success
//! and error thresholds, limits. Errors are the messages of a 400.

use std::fmt;
use std::time::Duration;

use fleethub_protocol::firmware;
use fleethub_protocol::rollouts::{
    ArtifactRef, NumberOrText, Rollout, RolloutRequest, WaveDetail, WaveRequest, WavesRequest,
};

use crate::executor::ExecutionPolicy;

/// Most waves a rollout may have.
pub const MAX_WAVES: usize = 100;
/// Defaults of a request's optional fields (docs/firmware.md, "Rollouts").
pub const DEFAULT_SUCCESS_THRESHOLD: Threshold = Threshold::Percent(Percent::HUNDRED);
pub const DEFAULT_ERROR_THRESHOLD: Threshold = Threshold::Percent(Percent(1000));
pub const DEFAULT_ERROR_MINIMUM_DEVICES: u64 = 10;
pub const DEFAULT_MAX_CONCURRENCY: usize = 100;
pub const MAX_CONCURRENCY: usize = 10_000;
pub const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(60);
pub const DEFAULT_OFFLINE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest device timeout, retry backoff and offline timeout: 30 days.
pub const MAX_DURATION_SECONDS: u64 = 30 * 24 * 3600;

/// A share in hundredths of a percent (`12.5%` is 1250), 0 to 10000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u32);

impl Percent {
    pub const HUNDRED: Percent = Percent(10_000);

    /// `basis_points` hundredths of a percent, at most 100 %.
    pub fn from_hundredths(hundredths: u32) -> Option<Percent> {
        (hundredths <= 10_000).then_some(Percent(hundredths))
    }

    pub fn hundredths(self) -> u32 {
        self.0
    }

    /// `ceil(self × count)`: the least number of `count` items that make this share.
    pub fn of_ceil(self, count: u64) -> u64 {
        let product = u128::from(self.0) * u128::from(count);
        product.div_ceil(10_000) as u64
    }

    /// Whether `part / whole` is at least this share (false for an empty whole).
    pub fn reached_by(self, part: u64, whole: u64) -> bool {
        whole > 0 && u128::from(part) * 10_000 >= u128::from(self.0) * u128::from(whole)
    }

    /// Reads `12.5%` (the `%` is required; at most two decimals).
    fn parse(what: &str, text: &str) -> Result<Percent, String> {
        let number = text
            .strip_suffix('%')
            .ok_or_else(|| format!("{what} {text:?} is not a percentage such as \"10%\""))?
            .trim();
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits =
            |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
        if !digits(whole) || !(fraction.is_empty() || digits(fraction)) || fraction.len() > 2 {
            return Err(format!(
                "{what} {text:?} is not a percentage with at most two decimals, such as \"12.5%\""
            ));
        }
        let whole: u32 = whole
            .parse()
            .ok()
            .filter(|whole| *whole <= 100)
            .ok_or_else(|| format!("{what} {text:?} is more than 100%"))?;
        let fraction: u32 = format!("{fraction:0<2}").parse().unwrap_or(0);
        Percent::from_hundredths(whole * 100 + fraction)
            .ok_or_else(|| format!("{what} {text:?} is more than 100%"))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, fraction) = (self.0 / 100, self.0 % 100);
        match fraction {
            0 => write!(formatter, "{whole}%"),
            fraction if fraction % 10 == 0 => write!(formatter, "{whole}.{}%", fraction / 10),
            fraction => write!(formatter, "{whole}.{fraction:02}%"),
        }
    }
}

/// A cumulative wave size: how many of the targeted devices have been sent the update once the wave has
/// started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaveSize {
    Count(u64),
    Percent(Percent),
}

impl WaveSize {
    /// The wave's cumulative end among `total` devices (not beyond `total`).
    pub fn cumulative(self, total: u64) -> u64 {
        match self {
            WaveSize::Count(count) => count.min(total),
            WaveSize::Percent(percent) => percent.of_ceil(total).min(total),
        }
    }

    fn parse(text: &str) -> Result<WaveSize, String> {
        let text = text.trim();
        if text.ends_with('%') {
            let percent = Percent::parse("wave size", text)?;
            if percent.0 == 0 {
                return Err(format!("wave size {text:?} is 0%: a wave needs devices"));
            }
            return Ok(WaveSize::Percent(percent));
        }
        match text.parse::<u64>() {
            Ok(0) => Err(format!("wave size {text:?} is 0: a wave needs devices")),
            Ok(count) => Ok(WaveSize::Count(count)),
            Err(_) => Err(format!(
                "wave size {text:?} is neither a device count (\"100\") nor a percentage (\"10%\")"
            )),
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(count) => write!(formatter, "{count}"),
            WaveSize::Percent(percent) => write!(formatter, "{percent}"),
        }
    }
}

/// Reads a comma-separated list of cumulative wave sizes: `1%,10%,50%,100%` or `10,100,1000`. Sizes must grow;
/// the list is not completed to 100 % here (see [`RolloutSpec::from_request`]).
pub fn parse_waves(text: &str) -> Result<Vec<WaveSize>, String> {
    let sizes = text
        .split(',')
        .map(WaveSize::parse)
        .collect::<Result<Vec<_>, _>>()?;
    check_growing(&sizes)?;
    Ok(sizes)
}

fn check_growing(sizes: &[WaveSize]) -> Result<(), String> {
    if sizes.is_empty() {
        return Err("waves is empty: give at least one wave size, such as \"100%\"".into());
    }
    if sizes.len() > MAX_WAVES {
        return Err(format!(
            "a rollout has at most {MAX_WAVES} waves, got {}",
            sizes.len()
        ));
    }
    for pair in sizes.windows(2) {
        let growing = match (pair[0], pair[1]) {
            (WaveSize::Count(a), WaveSize::Count(b)) => a < b,
            (WaveSize::Percent(a), WaveSize::Percent(b)) => a < b,
            // A count and a percentage compare only once the target set is known; the plan keeps the
            // cumulative sizes from going down.
            _ => true,
        };
        if !growing {
            return Err(format!(
                "wave sizes are cumulative and must grow: {} is not more than {}",
                pair[1], pair[0]
            ));
        }
    }
    Ok(())
}

/// A success or error threshold: a device count or a share of a wave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Threshold {
    Count(u64),
    Percent(Percent),
}

impl Threshold {
    /// Reads `3` or `5%`.
    pub fn parse(what: &str, text: &str) -> Result<Threshold, String> {
        let text = text.trim();
        if text.ends_with('%') {
            return Percent::parse(what, text).map(Threshold::Percent);
        }
        text.parse::<u64>().map(Threshold::Count).map_err(|_| {
            format!("{what} {text:?} is neither a device count (\"3\") nor a percentage (\"5%\")")
        })
    }

    fn parse_value(what: &str, value: &NumberOrText) -> Result<Threshold, String> {
        match value {
            NumberOrText::Number(count) => Ok(Threshold::Count(*count)),
            NumberOrText::Text(text) => Threshold::parse(what, text),
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Count(count) => write!(formatter, "{count}"),
            Threshold::Percent(percent) => write!(formatter, "{percent}"),
        }
    }
}

/// One wave of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaveSpec {
    pub size: WaveSize,
    /// Succeeded devices of the wave needed before the next wave starts.
    pub success_threshold: Threshold,
    /// Failed devices of the wave at which the rollout aborts (a share of its finished devices); `None`:
    /// never.
    pub error_threshold: Option<Threshold>,
    /// Finished devices of the wave needed before the error threshold applies (the whole wave, if smaller).
    pub error_minimum_devices: u64,
    /// Once it reaches its success threshold, wait for an approval before the next wave.
    pub approval: bool,
}

impl WaveSpec {
    /// Succeeded devices needed among `size` devices.
    pub fn required_successes(&self, size: u64) -> u64 {
        match self.success_threshold {
            Threshold::Count(count) => count.min(size),
            Threshold::Percent(percent) => percent.of_ceil(size),
        }
    }

    /// Finished devices (succeeded or failed) needed before the error threshold applies.
    pub fn error_minimum(&self, size: u64) -> u64 {
        self.error_minimum_devices.min(size).max(1)
    }

    /// Whether `failed` of `finished` devices (succeeded or failed) of a wave of `size` devices reach the
    /// error threshold. Never before [`WaveSpec::error_minimum`] devices finished.
    pub fn error_threshold_reached(&self, failed: u64, finished: u64, size: u64) -> bool {
        let Some(threshold) = self.error_threshold else {
            return false;
        };
        if failed == 0 || finished < self.error_minimum(size) {
            return false;
        }
        match threshold {
            Threshold::Count(count) => failed >= count,
            Threshold::Percent(percent) => percent.reached_by(failed, finished),
        }
    }
}

/// A rollout request, checked: what to install where, in which waves, within which limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutSpec {
    pub artifact: ArtifactRef,
    pub rollback: Option<ArtifactRef>,
    pub target_condition: String,
    /// At least one; the last is always `100%`.
    pub waves: Vec<WaveSpec>,
    pub max_concurrency: usize,
    /// `None`: no limit.
    pub start_rate_per_second: Option<u32>,
    pub device_timeout: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// `None`: an offline device waits for ever.
    pub offline_timeout: Option<Duration>,
}

impl RolloutSpec {
    /// Checks a request (its seed is the caller's business). The wave list is completed with a `100%` wave
    /// when it does not end with one, so a rollout always covers its whole target set.
    pub fn from_request(request: &RolloutRequest) -> Result<RolloutSpec, String> {
        let artifact = request.artifact.clone().ok_or(
            "artifact is required: {\"model\": \"<model>\", \"version\": \"<version>\"} of an uploaded artifact",
        )?;
        check_artifact("artifact", &artifact)?;
        if let Some(rollback) = &request.rollback {
            check_artifact("rollback", rollback)?;
            if rollback.model != artifact.model {
                return Err(format!(
                    "rollback is for model {:?} but the artifact is for model {:?}: a rollback goes to the same devices",
                    rollback.model, artifact.model
                ));
            }
            if rollback.version == artifact.version {
                return Err(format!(
                    "rollback is the rollout's own artifact ({artifact}); name the version to go back to"
                ));
            }
        }
        let target_condition = request
            .target_condition
            .as_deref()
            .map(str::trim)
            .filter(|condition| !condition.is_empty())
            .ok_or(
                "targetCondition is required: the WHERE of a devices query, such as \"tags.site = 'lab'\" or \"IS_DEFINED(deviceId)\" for every device",
            )?
            .to_owned();

        let success_threshold = match &request.success_threshold {
            Some(value) => success_threshold(value)?,
            None => DEFAULT_SUCCESS_THRESHOLD,
        };
        let error_threshold = match &request.error_threshold {
            Some(value) => error_threshold(value)?,
            None => Some(DEFAULT_ERROR_THRESHOLD),
        };
        let error_minimum_devices =
            error_minimum("errorMinimumDevices", request.error_minimum_devices)?;
        let defaults = WaveSpec {
            size: WaveSize::Percent(Percent::HUNDRED),
            success_threshold,
            error_threshold,
            error_minimum_devices,
            approval: request.approval.unwrap_or(false),
        };
        let mut waves = match &request.waves {
            None => vec![defaults],
            Some(WavesRequest::Text(text)) => parse_waves(text)
                .map_err(|error| format!("waves: {error}"))?
                .into_iter()
                .map(|size| WaveSpec { size, ..defaults })
                .collect(),
            Some(WavesRequest::List(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    wave(item, &defaults).map_err(|error| format!("waves[{index}]: {error}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let sizes: Vec<WaveSize> = waves.iter().map(|wave| wave.size).collect();
        check_growing(&sizes).map_err(|error| format!("waves: {error}"))?;
        if waves.last().map(|wave| wave.size) != Some(WaveSize::Percent(Percent::HUNDRED)) {
            if waves.len() == MAX_WAVES {
                return Err(format!("waves: the last of {MAX_WAVES} waves must be 100%"));
            }
            waves.push(defaults);
        }

        let max_concurrency = match request.max_concurrency {
            None => DEFAULT_MAX_CONCURRENCY,
            Some(count) if (1..=MAX_CONCURRENCY as u64).contains(&count) => count as usize,
            Some(count) => {
                return Err(format!(
                    "maxConcurrency must be from 1 to {MAX_CONCURRENCY}, got {count}"
                ));
            }
        };
        let start_rate_per_second = request.start_rate_per_second.filter(|rate| *rate > 0);
        let device_timeout = seconds(
            "deviceTimeoutInSeconds",
            request.device_timeout_in_seconds,
            DEFAULT_DEVICE_TIMEOUT,
            1,
        )?;
        let max_attempts = match request.max_attempts {
            None => 1,
            Some(attempts) if (1..=MAX_ATTEMPTS).contains(&attempts) => attempts,
            Some(attempts) => {
                return Err(format!(
                    "maxAttempts must be from 1 to {MAX_ATTEMPTS}, got {attempts}"
                ));
            }
        };
        let retry_backoff = seconds(
            "retryBackoffInSeconds",
            request.retry_backoff_in_seconds,
            DEFAULT_RETRY_BACKOFF,
            0,
        )?;
        let offline_timeout = seconds(
            "offlineTimeoutInSeconds",
            request.offline_timeout_in_seconds,
            DEFAULT_OFFLINE_TIMEOUT,
            0,
        )?;
        Ok(RolloutSpec {
            artifact,
            rollback: request.rollback.clone(),
            target_condition,
            waves,
            max_concurrency,
            start_rate_per_second,
            device_timeout,
            max_attempts,
            retry_backoff,
            offline_timeout: (!offline_timeout.is_zero()).then_some(offline_timeout),
        })
    }

    /// The request this spec stands for, every default written out (what a stored rollout keeps); `seed` as
    /// given. `from_request` of it gives this spec back.
    pub fn to_request(&self, seed: u64) -> RolloutRequest {
        RolloutRequest {
            rollout_id: None,
            artifact: Some(self.artifact.clone()),
            target_condition: Some(self.target_condition.clone()),
            waves: Some(WavesRequest::List(
                self.waves
                    .iter()
                    .map(|wave| {
                        WaveRequest::Detailed(WaveDetail {
                            size: Some(NumberOrText::Text(wave.size.to_string())),
                            success_threshold: Some(NumberOrText::Text(
                                wave.success_threshold.to_string(),
                            )),
                            error_threshold: Some(NumberOrText::Text(
                                wave.error_threshold.map_or_else(
                                    || NONE.to_owned(),
                                    |threshold| threshold.to_string(),
                                ),
                            )),
                            error_minimum_devices: Some(wave.error_minimum_devices),
                            approval: Some(wave.approval),
                        })
                    })
                    .collect(),
            )),
            success_threshold: None,
            error_threshold: None,
            error_minimum_devices: None,
            approval: None,
            max_concurrency: Some(self.max_concurrency as u64),
            start_rate_per_second: self.start_rate_per_second,
            device_timeout_in_seconds: Some(self.device_timeout.as_secs()),
            max_attempts: Some(self.max_attempts),
            retry_backoff_in_seconds: Some(self.retry_backoff.as_secs()),
            offline_timeout_in_seconds: Some(
                self.offline_timeout.map_or(0, |timeout| timeout.as_secs()),
            ),
            rollback: self.rollback.clone(),
            seed: Some(seed),
        }
    }

    /// The spec of a stored rollout (its wire shape holds every field of the request).
    pub fn of_rollout(rollout: &Rollout) -> Result<RolloutSpec, String> {
        RolloutSpec::from_request(&request_of(rollout))
    }

    /// The executor's limits for this rollout's devices.
    pub fn policy(&self) -> ExecutionPolicy {
        ExecutionPolicy {
            max_concurrency: self.max_concurrency,
            min_start_interval: self
                .start_rate_per_second
                .map(|rate| Duration::from_secs(1) / rate),
            per_device_timeout: self.device_timeout,
            max_attempts: self.max_attempts,
            retry_backoff: self.retry_backoff,
            offline_retry_interval: None,
            deadline: None,
        }
    }
}

/// The request a rollout's wire shape stands for.
pub fn request_of(rollout: &Rollout) -> RolloutRequest {
    RolloutRequest {
        rollout_id: Some(rollout.rollout_id.clone()),
        artifact: Some(rollout.artifact.clone()),
        target_condition: Some(rollout.target_condition.clone()),
        waves: Some(WavesRequest::List(
            rollout
                .waves
                .iter()
                .map(|wave| {
                    WaveRequest::Detailed(WaveDetail {
                        size: Some(NumberOrText::Text(wave.size.clone())),
                        success_threshold: Some(NumberOrText::Text(wave.success_threshold.clone())),
                        error_threshold: Some(NumberOrText::Text(
                            wave.error_threshold
                                .clone()
                                .unwrap_or_else(|| NONE.to_owned()),
                        )),
                        error_minimum_devices: Some(wave.error_minimum_devices),
                        approval: Some(wave.approval),
                    })
                })
                .collect(),
        )),
        success_threshold: None,
        error_threshold: None,
        error_minimum_devices: None,
        approval: None,
        max_concurrency: Some(rollout.max_concurrency),
        start_rate_per_second: rollout.start_rate_per_second,
        device_timeout_in_seconds: Some(rollout.device_timeout_in_seconds),
        max_attempts: Some(rollout.max_attempts),
        retry_backoff_in_seconds: Some(rollout.retry_backoff_in_seconds),
        offline_timeout_in_seconds: Some(rollout.offline_timeout_in_seconds.unwrap_or(0)),
        rollback: rollout.rollback.clone(),
        seed: Some(rollout.seed),
    }
}

/// How an error threshold that never aborts is written.
pub const NONE: &str = "none";

fn check_artifact(what: &str, artifact: &ArtifactRef) -> Result<(), String> {
    firmware::check_name("model", &artifact.model).map_err(|error| format!("{what}: {error}"))?;
    firmware::check_name("version", &artifact.version).map_err(|error| format!("{what}: {error}"))
}

fn success_threshold(value: &NumberOrText) -> Result<Threshold, String> {
    Threshold::parse_value("successThreshold", value)
}

fn error_threshold(value: &NumberOrText) -> Result<Option<Threshold>, String> {
    if matches!(value, NumberOrText::Text(text) if text.trim().eq_ignore_ascii_case(NONE)) {
        return Ok(None);
    }
    match Threshold::parse_value("errorThreshold", value)? {
        Threshold::Count(0) | Threshold::Percent(Percent(0)) => Err(format!(
            "errorThreshold {:?} would abort before any device failed: give at least 1 (or 0.01%), or \"none\"",
            value.text()
        )),
        threshold => Ok(Some(threshold)),
    }
}

fn error_minimum(what: &str, value: Option<u64>) -> Result<u64, String> {
    match value {
        None => Ok(DEFAULT_ERROR_MINIMUM_DEVICES),
        Some(0) => Err(format!("{what} must be at least 1")),
        Some(count) => Ok(count),
    }
}

fn wave(item: &WaveRequest, defaults: &WaveSpec) -> Result<WaveSpec, String> {
    let size_text = |value: &NumberOrText| match value {
        NumberOrText::Number(0) => Err("wave size 0: a wave needs devices".to_owned()),
        NumberOrText::Number(count) => Ok(WaveSize::Count(*count)),
        NumberOrText::Text(text) => WaveSize::parse(text),
    };
    match item {
        WaveRequest::Size(size) => Ok(WaveSpec {
            size: size_text(size)?,
            ..*defaults
        }),
        WaveRequest::Detailed(detail) => Ok(WaveSpec {
            size: size_text(
                detail
                    .size
                    .as_ref()
                    .ok_or("size is required (\"10%\" or \"100\")")?,
            )?,
            success_threshold: match &detail.success_threshold {
                Some(value) => success_threshold(value)?,
                None => defaults.success_threshold,
            },
            error_threshold: match &detail.error_threshold {
                Some(value) => error_threshold(value)?,
                None => defaults.error_threshold,
            },
            error_minimum_devices: match detail.error_minimum_devices {
                Some(_) => error_minimum("errorMinimumDevices", detail.error_minimum_devices)?,
                None => defaults.error_minimum_devices,
            },
            approval: detail.approval.unwrap_or(defaults.approval),
        }),
    }
}

fn seconds(
    what: &str,
    value: Option<u64>,
    default: Duration,
    minimum: u64,
) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(seconds) if (minimum..=MAX_DURATION_SECONDS).contains(&seconds) => {
            Ok(Duration::from_secs(seconds))
        }
        Some(seconds) => Err(format!(
            "{what} must be from {minimum} to {MAX_DURATION_SECONDS}, got {seconds}"
        )),
    }
}
