//! Throttling: per-hub and per-device rate limits on twin reads, twin updates, direct-method calls,
//! device-to-cloud telemetry and new device connections, built on `fleethub_core::throttle::TokenBucket`.
//!
//! Off by default ([`ThrottlePreset::None`]): every rate is unlimited, so benchmarks measure the hub, not
//! a limiter. The presets copy Azure IoT Hub's published operation throttles per tier and unit, from
//! "IoT Hub quotas and throttling" (<https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-quotas-throttling>,
//! `MicrosoftDocs/azure-docs` `articles/iot-hub/iot-hub-devguide-quotas-throttling.md`); docs/limits.md
//! has the table. Azure publishes no per-device figures, so per-device limits are fleethub's own and only
//! apply when set.
//!
//! What an operation over a limit gets:
//! - REST twin reads/updates and method calls: 429 `ThrottlingException` (`rest/error.rs`).
//! - MQTT twin GET and reported PATCH: status 429 on `$iothub/twin/res/429/?$rid=...`.
//! - Telemetry: traffic shaping, as Azure does it: the connection waits for its token before it reads on,
//!   so the PUBACK comes later. When the hub's backlog would exceed `telemetry_max_delay`, or a device
//!   stays over its own limit for `abusive_after`, the connection is closed.
//! - A new connection over the hub's rate: CONNACK 3 (server unavailable), then close.
//!
//! Per-device state (buckets and the abusive-device timer) is kept per identity in one table shared by the
//! identity's MQTT connections and the service calls on it, so a limit is one budget across MQTT and REST
//! and survives reconnects. Memory stays bounded: the table holds at most `max_tracked_devices` entries
//! (none without per-device limits) and forgets full buckets first (losslessly: a full bucket equals a new
//! one); a connection holds an `Arc` to its entry, so its hot path takes no table lock.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleethub_core::identity::IdentityKey;
pub use fleethub_core::throttle::Rate;
use fleethub_core::throttle::{Reservation, TokenBucket};

/// Azure tiers whose throttles the hub can copy; `None` limits nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ThrottlePreset {
    #[default]
    None,
    F1,
    S1,
    S2,
    S3,
}

impl std::str::FromStr for ThrottlePreset {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "f1" => Ok(Self::F1),
            "s1" => Ok(Self::S1),
            "s2" => Ok(Self::S2),
            "s3" => Ok(Self::S3),
            _ => Err(format!(
                "throttle preset {text:?}: expected none, f1, s1, s2 or s3"
            )),
        }
    }
}

/// The kinds of operation a limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationClass {
    TwinRead,
    TwinUpdate,
    /// Counted in 4 KB meters of payload, as Azure meters direct methods.
    MethodCall,
    Telemetry,
    Connection,
}

impl OperationClass {
    const ALL: [OperationClass; 5] = [
        Self::TwinRead,
        Self::TwinUpdate,
        Self::MethodCall,
        Self::Telemetry,
        Self::Connection,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::TwinRead => "twin_read",
            Self::TwinUpdate => "twin_update",
            Self::MethodCall => "method_call",
            Self::Telemetry => "telemetry",
            Self::Connection => "connection",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::TwinRead => "twin reads",
            Self::TwinUpdate => "twin updates",
            Self::MethodCall => "direct-method calls (4 KB meters)",
            Self::Telemetry => "device-to-cloud messages",
            Self::Connection => "new device connections",
        }
    }
}

/// Whose limit an operation ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    Hub,
    Device,
}

impl LimitScope {
    fn label(self) -> &'static str {
        match self {
            Self::Hub => "hub",
            Self::Device => "device",
        }
    }
}

/// A rate per operation class; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClassRates {
    pub twin_reads: Option<Rate>,
    pub twin_updates: Option<Rate>,
    pub method_calls: Option<Rate>,
    pub telemetry: Option<Rate>,
    /// New connections (per hub only).
    pub connections: Option<Rate>,
}

impl ClassRates {
    pub fn get(&self, class: OperationClass) -> Option<Rate> {
        match class {
            OperationClass::TwinRead => self.twin_reads,
            OperationClass::TwinUpdate => self.twin_updates,
            OperationClass::MethodCall => self.method_calls,
            OperationClass::Telemetry => self.telemetry,
            OperationClass::Connection => self.connections,
        }
    }

    pub fn set(&mut self, class: OperationClass, rate: Option<Rate>) {
        let slot = match class {
            OperationClass::TwinRead => &mut self.twin_reads,
            OperationClass::TwinUpdate => &mut self.twin_updates,
            OperationClass::MethodCall => &mut self.method_calls,
            OperationClass::Telemetry => &mut self.telemetry,
            OperationClass::Connection => &mut self.connections,
        };
        *slot = rate;
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleSettings {
    /// Limits on the whole hub.
    pub hub: ClassRates,
    /// Limits on each device (or module) identity; `connections` is not used here.
    pub device: ClassRates,
    /// The longest a telemetry publish waits for the hub's rate (Azure's traffic-shaping queue); beyond
    /// it the connection is closed.
    pub telemetry_max_delay: Duration,
    /// A device whose telemetry stays over its own limit this long is disconnected.
    pub abusive_after: Duration,
    /// Most identities whose per-device buckets (MQTT and REST) are remembered at once.
    pub max_tracked_devices: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            hub: ClassRates::default(),
            device: ClassRates::default(),
            telemetry_max_delay: Duration::from_secs(10),
            abusive_after: Duration::from_secs(10),
            max_tracked_devices: 10_000,
        }
    }
}

/// The default burst of every rate: one second's worth (Azure applies its throttles "in minute ranges" and
/// accepts bursts above them for a while; a second's worth keeps the preset's average honest).
pub const DEFAULT_BURST_SECONDS: f64 = 1.0;

impl ThrottleSettings {
    /// Azure's per-hub operation throttles for `preset` with `units` units (the free tier has one), each
    /// with a burst of `burst_seconds` worth of it. Direct methods: Azure meters 160 KB/s/unit (S1),
    /// 480 KB/s/unit (S2), 24 MB/s/unit (S3) in 4 KB steps, so 40, 120 and 6,144 calls of up to 4 KB per
    /// second per unit.
    pub fn preset(preset: ThrottlePreset, units: u32, burst_seconds: f64) -> Self {
        let units = f64::from(units.max(1));
        let rate = |per_second: f64| Some(Rate::per_second(per_second, burst_seconds));
        let hub = match preset {
            ThrottlePreset::None => ClassRates::default(),
            ThrottlePreset::F1 | ThrottlePreset::S1 => {
                let units = if preset == ThrottlePreset::F1 {
                    1.0
                } else {
                    units
                };
                ClassRates {
                    twin_reads: rate(100.0),
                    twin_updates: rate(50.0),
                    method_calls: rate(40.0 * units),
                    telemetry: rate((12.0 * units).max(100.0)),
                    connections: rate((12.0 * units).max(100.0)),
                }
            }
            ThrottlePreset::S2 => ClassRates {
                twin_reads: rate((10.0 * units).max(100.0)),
                twin_updates: rate((5.0 * units).max(50.0)),
                method_calls: rate(120.0 * units),
                telemetry: rate(120.0 * units),
                connections: rate(120.0 * units),
            },
            ThrottlePreset::S3 => ClassRates {
                twin_reads: rate(500.0 * units),
                twin_updates: rate(250.0 * units),
                method_calls: rate(6_144.0 * units),
                telemetry: rate(6_000.0 * units),
                connections: rate(6_000.0 * units),
            },
        };
        Self {
            hub,
            ..Self::default()
        }
    }
}

/// An operation refused by a limit; REST answers 429 `ThrottlingException`, MQTT twin status 429.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} over the {} limit of {per_second}/s; retry in {retry_after:?}", class.describe(), scope.label())]
pub struct Throttled {
    pub class: OperationClass,
    pub scope: LimitScope,
    pub per_second: f64,
    pub retry_after: Duration,
}

/// Why a connection's telemetry ended it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelemetryRefused {
    #[error(
        "telemetry over the device's limit of {per_second}/s for {over_for:?} (abusive device)"
    )]
    Abusive { per_second: f64, over_for: Duration },
    #[error(
        "telemetry over the hub's limit of {per_second}/s with a backlog of more than {max_delay:?}"
    )]
    HubBacklogFull {
        per_second: f64,
        max_delay: Duration,
    },
}

/// One identity's own buckets, one per class it is limited in, and how long its telemetry has been over its
/// limit. Shared by its MQTT connection and the service calls aimed at it, and kept in the hub's table, so
/// that a twin-read limit is one budget across MQTT and REST and a reconnect starts where the last
/// connection left off (no fresh burst, no reset of the abusive-device timer).
#[derive(Debug)]
struct ClassBuckets {
    twin_reads: Option<TokenBucket>,
    twin_updates: Option<TokenBucket>,
    method_calls: Option<TokenBucket>,
    telemetry: Option<TokenBucket>,
    /// Since when every telemetry publish had to wait for the device's own limit.
    telemetry_over_since: Option<u64>,
}

impl ClassBuckets {
    fn new(rates: &ClassRates) -> Self {
        Self {
            twin_reads: rates.twin_reads.map(TokenBucket::new),
            twin_updates: rates.twin_updates.map(TokenBucket::new),
            method_calls: rates.method_calls.map(TokenBucket::new),
            telemetry: rates.telemetry.map(TokenBucket::new),
            telemetry_over_since: None,
        }
    }

    fn bucket(&mut self, class: OperationClass) -> Option<&mut TokenBucket> {
        match class {
            OperationClass::TwinRead => self.twin_reads.as_mut(),
            OperationClass::TwinUpdate => self.twin_updates.as_mut(),
            OperationClass::MethodCall => self.method_calls.as_mut(),
            OperationClass::Telemetry => self.telemetry.as_mut(),
            OperationClass::Connection => None,
        }
    }

    /// Every bucket full: the entry equals a new one (a full telemetry bucket also admits the next publish
    /// at once, which clears `telemetry_over_since`).
    fn is_full(&self, now: u64) -> bool {
        [
            &self.twin_reads,
            &self.twin_updates,
            &self.method_calls,
            &self.telemetry,
        ]
        .into_iter()
        .flatten()
        .all(|bucket| bucket.is_full(now))
    }
}

type SharedBuckets = Arc<Mutex<ClassBuckets>>;

/// A device connection's handle on its identity's entry in the hub's table (`None` when no per-device
/// limit applies to what a connection does); cloned once at CONNECT, so the hot path takes no table lock.
#[derive(Default)]
pub struct DeviceThrottle(Option<SharedBuckets>);

/// The hub's throttles and their counters; one per hub, in `Services`.
pub struct Throttle {
    settings: ThrottleSettings,
    origin: tokio::time::Instant,
    hub: [Option<Mutex<TokenBucket>>; 5],
    /// Per-identity buckets; `None` when no per-device limit is set.
    devices: Option<Mutex<HashMap<IdentityKey, SharedBuckets>>>,
    /// Throttled operations by class and scope (hub, device).
    throttled: [[AtomicU64; 2]; 5],
    abusive_disconnects: AtomicU64,
    backlog_disconnects: AtomicU64,
    refused_at_cap: AtomicU64,
}

impl Throttle {
    pub fn new(settings: ThrottleSettings) -> Self {
        let hub = OperationClass::ALL.map(|class| {
            settings
                .hub
                .get(class)
                .map(|rate| Mutex::new(TokenBucket::new(rate)))
        });
        let devices = OperationClass::ALL
            .iter()
            .any(|class| settings.device.get(*class).is_some())
            .then(|| Mutex::new(HashMap::new()));
        Self {
            settings,
            origin: tokio::time::Instant::now(),
            hub,
            devices,
            throttled: Default::default(),
            abusive_disconnects: AtomicU64::new(0),
            backlog_disconnects: AtomicU64::new(0),
            refused_at_cap: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &ThrottleSettings {
        &self.settings
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn count(&self, class: OperationClass, scope: LimitScope) {
        self.throttled[class.index()][scope as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn refused(
        &self,
        class: OperationClass,
        scope: LimitScope,
        rate: Option<Rate>,
        retry_after: Duration,
    ) -> Throttled {
        self.count(class, scope);
        Throttled {
            class,
            scope,
            per_second: rate.map_or(0.0, |rate| rate.per_second),
            retry_after,
        }
    }

    /// A new device connection, once its CONNECT authenticated: unauthenticated CONNECTs spend no budget,
    /// so a flood of bogus ones cannot lock devices out.
    pub fn admit_connection(&self) -> Result<(), Throttled> {
        self.admit(OperationClass::Connection, None, 1)
    }

    /// A connection refused at accept because the connection cap was reached (counted only).
    pub fn refused_at_connection_cap(&self) {
        self.refused_at_cap.fetch_add(1, Ordering::Relaxed);
    }

    /// A service (REST) call on `key`'s twin or methods: the device's limit and the hub's. `cost` is in the
    /// class's unit (4 KB meters for methods, else 1).
    pub fn admit_service(
        &self,
        class: OperationClass,
        key: &IdentityKey,
        cost: u32,
    ) -> Result<(), Throttled> {
        let device = match self.settings.device.get(class) {
            Some(_) => self.device_buckets(key),
            None => None,
        };
        self.admit(class, device.as_deref(), cost)
    }

    /// A device's own twin GET or reported patch over MQTT: its identity's limit (shared with the service
    /// calls on its twin) and the hub's.
    pub fn admit_device_twin(
        &self,
        local: &DeviceThrottle,
        class: OperationClass,
    ) -> Result<(), Throttled> {
        self.admit(class, local.0.as_deref(), 1)
    }

    /// Takes `cost` tokens from the device's bucket (if any) and the hub's, or none at all: a refused
    /// operation takes no token. Locks the device's entry, then the hub's bucket (the only lock order).
    fn admit(
        &self,
        class: OperationClass,
        device: Option<&Mutex<ClassBuckets>>,
        cost: u32,
    ) -> Result<(), Throttled> {
        let now = self.now();
        let mut device = device.map(|buckets| buckets.lock().expect("throttle lock poisoned"));
        let device_bucket = device
            .as_deref_mut()
            .and_then(|buckets| buckets.bucket(class));
        // Decided on a copy, kept only once the hub admits too.
        let mut device_after = None;
        if let Some(bucket) = device_bucket.as_deref() {
            let mut after = *bucket;
            after.try_take(now, cost).map_err(|refused| {
                self.refused(
                    class,
                    LimitScope::Device,
                    self.settings.device.get(class),
                    refused.retry_after,
                )
            })?;
            device_after = Some(after);
        }
        if let Some(bucket) = &self.hub[class.index()] {
            let taken = bucket
                .lock()
                .expect("throttle lock poisoned")
                .try_take(now, cost);
            taken.map_err(|refused| {
                self.refused(
                    class,
                    LimitScope::Hub,
                    self.settings.hub.get(class),
                    refused.retry_after,
                )
            })?;
        }
        if let (Some(bucket), Some(after)) = (device_bucket, device_after) {
            *bucket = after;
        }
        Ok(())
    }

    /// `key`'s entry in the table, added if missing; `None` when no per-device limit is set.
    fn device_buckets(&self, key: &IdentityKey) -> Option<SharedBuckets> {
        let devices = self.devices.as_ref()?;
        let mut devices = devices.lock().expect("throttle lock poisoned");
        if let Some(buckets) = devices.get(key) {
            return Some(Arc::clone(buckets));
        }
        self.make_room(&mut devices, self.now());
        let buckets = Arc::new(Mutex::new(ClassBuckets::new(&self.settings.device)));
        devices.insert(key.clone(), Arc::clone(&buckets));
        Some(buckets)
    }

    /// Keeps the table under its cap. First forgets entries whose buckets are all full and that no
    /// connection holds (nothing is lost: a full bucket is a new one); if still too many, arbitrary ones
    /// down to seven eighths of the cap, those without a connection first. Their devices get full buckets
    /// again (a little lenient, and bounded); a connection whose entry is forgotten keeps using it, while
    /// service calls on its device start a new one.
    fn make_room(&self, devices: &mut HashMap<IdentityKey, SharedBuckets>, now: u64) {
        let cap = self.settings.max_tracked_devices.max(1);
        if devices.len() < cap {
            return;
        }
        let held = |buckets: &SharedBuckets| Arc::strong_count(buckets) > 1;
        devices.retain(|_, buckets| {
            held(buckets) || !buckets.lock().expect("throttle lock poisoned").is_full(now)
        });
        if devices.len() >= cap {
            let keep = cap - cap / 8 - 1;
            let excess = devices.len() - keep;
            let unheld = devices.iter().filter(|(_, buckets)| !held(buckets));
            let then_held = devices.iter().filter(|(_, buckets)| held(buckets));
            let victims: Vec<IdentityKey> = unheld
                .chain(then_held)
                .take(excess)
                .map(|(key, _)| key.clone())
                .collect();
            for key in victims {
                devices.remove(&key);
            }
        }
    }

    /// Identities whose per-device buckets are remembered now (bounded by `max_tracked_devices`).
    pub fn tracked_devices(&self) -> usize {
        self.devices.as_ref().map_or(0, |devices| {
            devices.lock().expect("throttle lock poisoned").len()
        })
    }

    /// The handle a new connection of `key` keeps on its identity's buckets: the same entry as its last
    /// connection's and as the service calls on its twin.
    pub fn connection(&self, key: &IdentityKey) -> DeviceThrottle {
        let device = &self.settings.device;
        if device.twin_reads.is_none()
            && device.twin_updates.is_none()
            && device.telemetry.is_none()
        {
            return DeviceThrottle(None);
        }
        DeviceThrottle(self.device_buckets(key))
    }

    /// Shapes one telemetry publish: returns once it may go ahead (at once when under every limit), or
    /// says why the connection must close. Not cancel-safe in a useful way: the tokens are taken when it
    /// starts, so a caller that drops it early has used them.
    pub async fn shape_telemetry(&self, local: &DeviceThrottle) -> Result<(), TelemetryRefused> {
        let wait = self.admit_telemetry(local)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The synchronous half of [`Self::shape_telemetry`]: how long the publish waits. Takes the device's
    /// and the hub's tokens together, or neither when the publish is refused.
    fn admit_telemetry(&self, local: &DeviceThrottle) -> Result<Duration, TelemetryRefused> {
        let now = self.now();
        let mut device = local
            .0
            .as_deref()
            .map(|buckets| buckets.lock().expect("throttle lock poisoned"));
        let mut wait = Duration::ZERO;
        let mut device_after = None;
        if let Some(buckets) = device.as_deref_mut()
            && let Some(mut after) = buckets.telemetry
        {
            // A device has one connection at a time (a new one closes the old) and each waits out its
            // reservation before the next, so the queue is at most a refill interval or two: no bound.
            match after.reserve(now, 1, Duration::MAX) {
                Ok(Reservation::Now) | Err(_) => buckets.telemetry_over_since = None,
                Ok(Reservation::After(delay)) => {
                    self.count(OperationClass::Telemetry, LimitScope::Device);
                    // Kept across reconnects: the time over the limit adds up until the bucket refills.
                    let since = *buckets.telemetry_over_since.get_or_insert(now);
                    let over_for = Duration::from_nanos(now.saturating_sub(since));
                    if over_for >= self.settings.abusive_after {
                        self.abusive_disconnects.fetch_add(1, Ordering::Relaxed);
                        return Err(TelemetryRefused::Abusive {
                            per_second: self
                                .settings
                                .device
                                .telemetry
                                .map_or(0.0, |rate| rate.per_second),
                            over_for,
                        });
                    }
                    wait = delay;
                }
            }
            device_after = Some(after);
        }
        if let Some(bucket) = &self.hub[OperationClass::Telemetry.index()] {
            let max_delay = self.settings.telemetry_max_delay;
            let reserved = bucket
                .lock()
                .expect("throttle lock poisoned")
                .reserve(now, 1, max_delay);
            match reserved {
                Ok(Reservation::Now) => {}
                Ok(Reservation::After(delay)) => {
                    self.count(OperationClass::Telemetry, LimitScope::Hub);
                    wait = wait.max(delay);
                }
                Err(_) => {
                    self.count(OperationClass::Telemetry, LimitScope::Hub);
                    self.backlog_disconnects.fetch_add(1, Ordering::Relaxed);
                    return Err(TelemetryRefused::HubBacklogFull {
                        per_second: self
                            .settings
                            .hub
                            .telemetry
                            .map_or(0.0, |rate| rate.per_second),
                        max_delay,
                    });
                }
            }
        }
        if let (Some(buckets), Some(after)) = (device.as_deref_mut(), device_after) {
            buckets.telemetry = Some(after);
        }
        Ok(wait)
    }

    /// The throttling figures in Prometheus's text format, appended to `GET /metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let name = "fleethub_throttled_operations_total";
        let _ = writeln!(
            out,
            "# HELP {name} Operations refused (429, CONNACK 3) or, for telemetry, delayed by a rate limit, by class and by whose limit."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for class in OperationClass::ALL {
            for scope in [LimitScope::Hub, LimitScope::Device] {
                let value = self.throttled[class.index()][scope as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{class=\"{}\",limit=\"{}\"}} {value}",
                    class.label(),
                    scope.label()
                );
            }
        }
        let name = "fleethub_throttle_disconnects_total";
        let _ = writeln!(
            out,
            "# HELP {name} Device connections closed for their telemetry: over their own limit too long (abusive), or beyond the hub's shaping backlog."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (reason, value) in [
            ("abusive", &self.abusive_disconnects),
            ("hub_backlog", &self.backlog_disconnects),
        ] {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{reason}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "fleethub_connections_refused_at_cap_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections (MQTT or HTTPS) closed at accept because --max-connections were open."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(
            out,
            "{name} {}",
            self.refused_at_cap.load(Ordering::Relaxed)
        );
        let name = "fleethub_throttle_tracked_devices";
        let _ = writeln!(
            out,
            "# HELP {name} Devices whose per-device buckets for service calls are kept now (bounded)."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {}", self.tracked_devices());
    }
}

/// Direct methods are metered in 4 KB steps of payload (Azure's meter size), at least one.
pub fn method_meters(payload_bytes: usize) -> u32 {
    u32::try_from(payload_bytes.div_ceil(4096).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(per_second: f64, burst: f64) -> Option<Rate> {
        Some(Rate { per_second, burst })
    }

    fn device(id: &str) -> IdentityKey {
        IdentityKey::device(id.parse().expect("valid id"))
    }

    #[test]
    fn presets_follow_azures_table() {
        let s1 = ThrottleSettings::preset(ThrottlePreset::S1, 1, DEFAULT_BURST_SECONDS).hub;
        assert_eq!(s1.twin_reads.map(|rate| rate.per_second), Some(100.0));
        assert_eq!(s1.twin_updates.map(|rate| rate.per_second), Some(50.0));
        assert_eq!(s1.connections.map(|rate| rate.per_second), Some(100.0));
        assert_eq!(s1.method_calls.map(|rate| rate.per_second), Some(40.0));
        // Nine S1 units: 9 * 12 = 108 sends and new connections per second.
        let s1x9 = ThrottleSettings::preset(ThrottlePreset::S1, 9, DEFAULT_BURST_SECONDS).hub;
        assert_eq!(s1x9.telemetry.map(|rate| rate.per_second), Some(108.0));
        assert_eq!(s1x9.connections.map(|rate| rate.per_second), Some(108.0));
        // The free tier has one unit whatever is asked.
        assert_eq!(
            ThrottleSettings::preset(ThrottlePreset::F1, 9, DEFAULT_BURST_SECONDS).hub,
            ThrottleSettings::preset(ThrottlePreset::S1, 1, DEFAULT_BURST_SECONDS).hub
        );
        let s2x20 = ThrottleSettings::preset(ThrottlePreset::S2, 20, DEFAULT_BURST_SECONDS).hub;
        assert_eq!(s2x20.twin_reads.map(|rate| rate.per_second), Some(200.0));
        assert_eq!(s2x20.twin_updates.map(|rate| rate.per_second), Some(100.0));
        assert_eq!(s2x20.telemetry.map(|rate| rate.per_second), Some(2_400.0));
        let s3x2 = ThrottleSettings::preset(ThrottlePreset::S3, 2, DEFAULT_BURST_SECONDS).hub;
        assert_eq!(s3x2.twin_reads.map(|rate| rate.per_second), Some(1_000.0));
        assert_eq!(s3x2.connections.map(|rate| rate.per_second), Some(12_000.0));
        assert_eq!(
            ThrottleSettings::preset(ThrottlePreset::None, 5, DEFAULT_BURST_SECONDS),
            ThrottleSettings::default()
        );
        // The burst applies to presets too.
        let s1_burst = ThrottleSettings::preset(ThrottlePreset::S1, 1, 5.0).hub;
        assert_eq!(s1_burst.twin_reads.map(|rate| rate.burst), Some(500.0));
        assert_eq!(s1_burst.connections.map(|rate| rate.burst), Some(500.0));
        assert_eq!("S2".parse::<ThrottlePreset>(), Ok(ThrottlePreset::S2));
        assert!("b1".parse::<ThrottlePreset>().is_err());
    }

    #[test]
    fn methods_are_metered_in_four_kilobyte_steps() {
        assert_eq!(method_meters(0), 1);
        assert_eq!(method_meters(4096), 1);
        assert_eq!(method_meters(4097), 2);
        assert_eq!(method_meters(128 * 1024), 32);
    }

    #[tokio::test]
    async fn the_default_limits_nothing() {
        let throttle = Throttle::new(ThrottleSettings::default());
        let key = IdentityKey::device("d".parse().expect("valid id"));
        let local = throttle.connection(&key);
        for _ in 0..10_000 {
            throttle
                .admit_service(OperationClass::TwinRead, &key, 1)
                .expect("unlimited");
            throttle
                .admit_device_twin(&local, OperationClass::TwinUpdate)
                .expect("unlimited");
            throttle.admit_connection().expect("unlimited");
            throttle.shape_telemetry(&local).await.expect("unlimited");
        }
        assert_eq!(throttle.tracked_devices(), 0);
        let mut text = String::new();
        throttle.render_metrics(&mut text);
        assert!(text.contains(
            "fleethub_throttled_operations_total{class=\"twin_read\",limit=\"hub\"} 0\n"
        ));
    }

    #[test]
    fn a_device_limit_refuses_one_device_and_not_another() {
        let mut settings = ThrottleSettings::default();
        settings.device.twin_reads = limited(1.0, 2.0);
        let throttle = Throttle::new(settings);
        let noisy = IdentityKey::device("noisy".parse().expect("valid id"));
        let quiet = IdentityKey::device("quiet".parse().expect("valid id"));
        assert!(
            throttle
                .admit_service(OperationClass::TwinRead, &noisy, 1)
                .is_ok()
        );
        assert!(
            throttle
                .admit_service(OperationClass::TwinRead, &noisy, 1)
                .is_ok()
        );
        let refused = throttle
            .admit_service(OperationClass::TwinRead, &noisy, 1)
            .expect_err("over the device's burst");
        assert_eq!(refused.scope, LimitScope::Device);
        assert!(
            throttle
                .admit_service(OperationClass::TwinRead, &quiet, 1)
                .is_ok()
        );
        // Updates have no per-device limit.
        assert!(
            throttle
                .admit_service(OperationClass::TwinUpdate, &noisy, 1)
                .is_ok()
        );
    }

    #[test]
    fn the_tracked_device_table_stays_under_its_cap() {
        let mut settings = ThrottleSettings::default();
        settings.device.method_calls = limited(0.001, 1.0);
        settings.max_tracked_devices = 64;
        let throttle = Throttle::new(settings);
        for index in 0..5_000 {
            let key = IdentityKey::device(format!("d{index}").parse().expect("valid id"));
            // Every bucket is spent (and stays so for a long time), so nothing is forgotten for free.
            throttle
                .admit_service(OperationClass::MethodCall, &key, 1)
                .expect("the first call of a device");
            assert!(throttle.tracked_devices() <= 64);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn telemetry_over_a_devices_limit_is_delayed_then_the_device_is_cut_off() {
        let mut settings = ThrottleSettings::default();
        settings.device.telemetry = limited(10.0, 5.0);
        settings.abusive_after = Duration::from_secs(2);
        let throttle = Throttle::new(settings);
        let local = throttle.connection(&device("abuser"));
        let started = tokio::time::Instant::now();
        let mut sent = 0;
        let refusal = loop {
            match throttle.shape_telemetry(&local).await {
                Ok(()) => sent += 1,
                Err(refusal) => break refusal,
            }
        };
        assert!(
            matches!(refusal, TelemetryRefused::Abusive { .. }),
            "{refusal}"
        );
        let elapsed = started.elapsed();
        // Five at once, then ten a second until it has been over for two seconds.
        assert!((24..=27).contains(&sent), "{sent} sent");
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        // A device that slows down below its limit is never cut off.
        let polite = throttle.connection(&device("polite"));
        for _ in 0..50 {
            throttle
                .shape_telemetry(&polite)
                .await
                .expect("under the limit");
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hub_telemetry_is_shaped_up_to_the_backlog_then_refused() {
        let mut settings = ThrottleSettings::default();
        settings.hub.telemetry = limited(10.0, 1.0);
        settings.telemetry_max_delay = Duration::from_millis(500);
        let throttle = std::sync::Arc::new(Throttle::new(settings));
        // Many connections at once: each reserves its place in the hub's queue.
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            let throttle = std::sync::Arc::clone(&throttle);
            outcomes.push(tokio::spawn(async move {
                let local = throttle.connection(&device("d"));
                throttle.shape_telemetry(&local).await.is_ok()
            }));
        }
        let mut admitted = 0;
        for outcome in outcomes {
            if outcome.await.expect("no panic") {
                admitted += 1;
            }
        }
        // One at once plus five queued within 500 ms.
        assert_eq!(admitted, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_refused_by_the_hub_takes_no_device_token_and_the_reverse() {
        let mut settings = ThrottleSettings::default();
        // Two device tokens that never refill; one hub token a second.
        settings.device.twin_reads = limited(0.000_001, 2.0);
        settings.device.twin_updates = limited(0.000_001, 2.0);
        settings.hub.twin_reads = limited(1.0, 1.0);
        settings.hub.twin_updates = limited(1.0, 1.0);
        let throttle = Throttle::new(settings);
        let key = device("d");
        let local = throttle.connection(&key);
        for class in [OperationClass::TwinRead, OperationClass::TwinUpdate] {
            throttle.admit_service(class, &key, 1).expect("first token");
            // The hub refuses (over REST and over MQTT): the device keeps its second token.
            for _ in 0..3 {
                let refused = throttle
                    .admit_service(class, &key, 1)
                    .expect_err("the hub's bucket is empty");
                assert_eq!(refused.scope, LimitScope::Hub);
                let refused = throttle
                    .admit_device_twin(&local, class)
                    .expect_err("the hub's bucket is empty");
                assert_eq!(refused.scope, LimitScope::Hub);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
            throttle
                .admit_device_twin(&local, class)
                .expect("the device's second token was not spent by the refusals");
            // Now the device refuses: the hub keeps its refilled token for another device.
            tokio::time::advance(Duration::from_secs(1)).await;
            let refused = throttle
                .admit_service(class, &key, 1)
                .expect_err("the device's bucket is empty");
            assert_eq!(refused.scope, LimitScope::Device);
            throttle
                .admit_service(class, &device("other"), 1)
                .expect("the hub's token is still there");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn telemetry_refused_by_the_hub_takes_no_device_token() {
        let mut settings = ThrottleSettings::default();
        settings.device.telemetry = limited(0.000_001, 2.0);
        settings.hub.telemetry = limited(1.0, 1.0);
        settings.telemetry_max_delay = Duration::ZERO;
        let throttle = Throttle::new(settings);
        let local = throttle.connection(&device("d"));
        throttle.shape_telemetry(&local).await.expect("first token");
        assert!(matches!(
            throttle.shape_telemetry(&local).await,
            Err(TelemetryRefused::HubBacklogFull { .. })
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        let reconnected = throttle.connection(&device("d"));
        throttle
            .shape_telemetry(&reconnected)
            .await
            .expect("the device's second token was not spent by the refusal");
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_shares_one_budget_across_connections_and_service_calls() {
        let mut settings = ThrottleSettings::default();
        settings.device.twin_reads = limited(0.000_001, 3.0);
        let throttle = Throttle::new(settings);
        let key = device("d");
        let first = throttle.connection(&key);
        throttle
            .admit_device_twin(&first, OperationClass::TwinRead)
            .expect("one");
        throttle
            .admit_service(OperationClass::TwinRead, &key, 1)
            .expect("two, over REST");
        drop(first);
        let second = throttle.connection(&key);
        throttle
            .admit_device_twin(&second, OperationClass::TwinRead)
            .expect("three, after a reconnect");
        assert!(
            throttle
                .admit_device_twin(&second, OperationClass::TwinRead)
                .is_err()
        );
        assert!(
            throttle
                .admit_service(OperationClass::TwinRead, &key, 1)
                .is_err()
        );
        assert_eq!(throttle.tracked_devices(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abusive_device_that_reconnects_keeps_its_time_over_the_limit() {
        let mut settings = ThrottleSettings::default();
        settings.device.telemetry = limited(10.0, 1.0);
        settings.abusive_after = Duration::from_secs(2);
        let throttle = Throttle::new(settings);
        let key = device("abuser");
        let mut reconnects = 0;
        let refusal = 'device: loop {
            // Each connection stays well under `abusive_after`.
            let local = throttle.connection(&key);
            for _ in 0..5 {
                if let Err(refusal) = throttle.shape_telemetry(&local).await {
                    break 'device refusal;
                }
            }
            reconnects += 1;
            assert!(reconnects < 100, "never cut off");
        };
        assert!(
            matches!(refusal, TelemetryRefused::Abusive { .. }),
            "{refusal}"
        );
        assert!(reconnects >= 3, "{reconnects} reconnects");
    }

    #[test]
    fn the_table_forgets_devices_without_a_connection_first() {
        let mut settings = ThrottleSettings::default();
        settings.device.twin_reads = limited(0.001, 1.0);
        settings.max_tracked_devices = 16;
        let throttle = Throttle::new(settings);
        let connected: Vec<_> = (0..4)
            .map(|index| {
                let local = throttle.connection(&device(&format!("c{index}")));
                throttle
                    .admit_device_twin(&local, OperationClass::TwinRead)
                    .expect("first read");
                local
            })
            .collect();
        for index in 0..1_000 {
            let key = device(&format!("rest{index}"));
            throttle
                .admit_service(OperationClass::TwinRead, &key, 1)
                .expect("the first read of a device");
            assert!(throttle.tracked_devices() <= 16);
        }
        // The connected devices' entries were kept: their spent buckets still refuse over REST.
        for index in 0..4 {
            let key = device(&format!("c{index}"));
            assert!(
                throttle
                    .admit_service(OperationClass::TwinRead, &key, 1)
                    .is_err()
            );
        }
        drop(connected);
    }
}
