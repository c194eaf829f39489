//! One simulated device: a real MQTT/TLS connection through the device SDK with its own identity, one task
//! driven by its events (a telemetry tick, a report tick, a churn order, the stop), and a method handler
//! (`ping`, `firmwareUpdate`, anything else 404).
//!
//! Task lifetime: the task connects (within the fleet's handshake limit), then loops until the stop is
//! set, then disconnects. Every await in the loop races the stop, so stopping never waits for a slow hub
//! beyond one disconnect. A firmware update runs in its own task (the method answers at once, as the agent
//! does), which also ends at the stop.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleethub_agent::download::DeviceAuth;
use fleethub_agent::{FirmwareState, METHOD_NAME, STARTED_RESPONSE};
use fleethub_device::{
    ConnectError, DeviceClient, DeviceClientOptions, Message, MethodRequest, MethodResponse,
    SubscribeError,
};
use fleethub_service::protocol::connection_string::DeviceConnectionString;
use fleethub_service::protocol::ids::DeviceId;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::firmware::FirmwareSimulation;
use super::random::Random;
use super::stats::Counters;

/// The direct method that echoes its payload.
pub(super) const PING_METHOD: &str = "ping";
/// Tries of a device's first connection before it counts as failed.
const FIRST_CONNECT_ATTEMPTS: u32 = 3;
/// The longest wait between connection attempts.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(30);
/// A churned device stays away between this and twice this before reconnecting.
const CHURN_PAUSE: Duration = Duration::from_millis(250);

/// What every simulated device shares.
pub(super) struct Fleet {
    /// Trust and port; each device adds its local address.
    pub(super) options: DeviceClientOptions,
    pub(super) behaviour: Behaviour,
    pub(super) firmware: FirmwareSimulation,
    pub(super) counters: Counters,
    pub(super) random: Random,
    /// TLS handshakes in flight at once (first connections and churn reconnections alike).
    pub(super) handshakes: Semaphore,
    pub(super) stop: watch::Receiver<bool>,
}

/// What each device does, and how often.
pub(super) struct Behaviour {
    pub(super) telemetry_every: Option<Duration>,
    pub(super) report_every: Option<Duration>,
    pub(super) payload_bytes: usize,
}

/// What a device task tells the connecting phase.
#[derive(Debug)]
pub(super) enum Readiness {
    Connected,
    /// Its first connection failed for good; the reason, for the user.
    Failed(ConnectFailure),
}

/// Why a device could not connect.
#[derive(Debug)]
pub(super) enum ConnectFailure {
    Connect(ConnectError),
    /// Connected, but subscribing to direct methods failed.
    Subscribe(SubscribeError),
}

impl ConnectFailure {
    fn is_permanent(&self) -> bool {
        match self {
            ConnectFailure::Connect(error) => error.is_permanent(),
            ConnectFailure::Subscribe(_) => false,
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Connect(error) => error.fmt(formatter),
            ConnectFailure::Subscribe(error) => {
                write!(formatter, "subscribing to direct methods failed: {error}")
            }
        }
    }
}

/// What a device is doing besides its timers: an update and a churn reconnection exclude each other, so an
/// update never loses the connection it reports on and a churned device answers updates only once back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Idle,
    Updating,
    Reconnecting,
}

pub(super) struct SimDevice {
    device_id: DeviceId,
    connection_string: String,
    local_address: Option<IpAddr>,
    mode: Mutex<Mode>,
    /// What the agent keeps on disk; read from the twin at the first update.
    firmware: Mutex<Option<FirmwareState>>,
    /// Set by the churn controller: disconnect and reconnect.
    pub(super) churn: Notify,
}

/// The events a device task is driven by.
enum Event {
    Telemetry,
    Report,
    Churn,
}

impl SimDevice {
    pub(super) fn new(
        device_id: DeviceId,
        host_name: &str,
        primary_key: &str,
        local_address: Option<IpAddr>,
    ) -> SimDevice {
        let connection_string = DeviceConnectionString {
            host_name: host_name.to_owned(),
            device_id: device_id.clone(),
            module_id: None,
            shared_access_key: Some(primary_key.to_owned()),
            gateway_host_name: None,
            x509: false,
            shared_access_signature: None,
        }
        .to_string();
        SimDevice {
            device_id,
            connection_string,
            local_address,
            mode: Mutex::new(Mode::Idle),
            firmware: Mutex::new(None),
            churn: Notify::new(),
        }
    }

    /// The device's whole life: connect, run until the stop, disconnect.
    pub(super) async fn run(self: Arc<Self>, fleet: Arc<Fleet>, ready: mpsc::Sender<Readiness>) {
        let mut stop = fleet.stop.clone();
        let first = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            first = self.connect(&fleet, Some(FIRST_CONNECT_ATTEMPTS)) => first,
        };
        let mut client = match first {
            Ok(client) => client,
            Err(error) => {
                fleet.counters.connect_failed();
                let _ = ready.send(Readiness::Failed(error)).await;
                return;
            }
        };
        fleet.counters.connection_up();
        let _ = ready.send(Readiness::Connected).await;
        drop(ready);
        let mut up = true;
        let mut telemetry = timer(fleet.behaviour.telemetry_every, &fleet.random);
        let mut reports = timer(fleet.behaviour.report_every, &fleet.random);
        let mut sequence = 0u64;

        loop {
            let event = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                () = tick(&mut telemetry) => Event::Telemetry,
                () = tick(&mut reports) => Event::Report,
                () = self.churn.notified() => Event::Churn,
            };
            match event {
                Event::Telemetry => {
                    sequence += 1;
                    let message = self.telemetry(sequence, &fleet);
                    let sent = tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => break,
                        sent = client.send_message(message) => sent,
                    };
                    match sent {
                        Ok(()) => fleet.counters.telemetry_sent(),
                        Err(error) => {
                            tracing::debug!(device = %self.device_id, %error, "simulated telemetry failed");
                            fleet.counters.telemetry_failed();
                        }
                    }
                }
                Event::Report => {
                    let patch = json!({ "sim": {
                        "sequence": sequence,
                        "temperature": temperature(&fleet.random),
                    }});
                    let reported = tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => break,
                        reported = client.patch_reported(&patch) => reported,
                    };
                    match reported {
                        Ok(_) => fleet.counters.report_sent(),
                        Err(error) => {
                            tracing::debug!(device = %self.device_id, %error, "simulated report failed");
                            fleet.counters.report_failed();
                        }
                    }
                }
                Event::Churn => {
                    if !self.switch_mode(Mode::Idle, Mode::Reconnecting) {
                        // An update is running: this device sits this round out.
                        continue;
                    }
                    fleet.counters.churn_disconnected();
                    fleet.counters.connection_down();
                    up = false;
                    let _ = client.clone().disconnect().await;
                    let pause = CHURN_PAUSE + CHURN_PAUSE.mul_f64(fleet.random.next_f64());
                    let reconnected = tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => break,
                        reconnected = async {
                            tokio::time::sleep(pause).await;
                            self.connect(&fleet, None).await
                        } => reconnected,
                    };
                    match reconnected {
                        Ok(reconnected) => {
                            client = reconnected;
                            up = true;
                            fleet.counters.connection_up();
                            fleet.counters.churn_reconnected();
                        }
                        // Only a permanent refusal ends the retries (the device was deleted meanwhile).
                        Err(error) => {
                            tracing::warn!(device = %self.device_id, %error, "a churned device cannot reconnect");
                            fleet.counters.connect_failed();
                            return;
                        }
                    }
                    self.switch_mode(Mode::Reconnecting, Mode::Idle);
                }
            }
        }
        // The gauge keeps counting this device as connected: after the stop it says how many were.
        if up {
            let _ = client.disconnect().await;
        }
    }

    /// Connects and installs the method handler, within the fleet's handshake limit: up to `attempts`
    /// tries, or until it succeeds or is refused for good when `None`.
    async fn connect(
        self: &Arc<Self>,
        fleet: &Arc<Fleet>,
        attempts: Option<u32>,
    ) -> Result<DeviceClient, ConnectFailure> {
        let mut options = fleet.options.clone();
        if let Some(local_address) = self.local_address {
            options = options.with_local_address(local_address);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let connected = {
                let _permit = fleet
                    .handshakes
                    .acquire()
                    .await
                    .expect("the handshake semaphore is never closed");
                DeviceClient::connect(&self.connection_string, options.clone()).await
            };
            let error = match connected {
                Ok(client) => match self.install_handler(fleet, &client).await {
                    Ok(()) => return Ok(client),
                    Err(error) => {
                        let _ = client.disconnect().await;
                        error
                    }
                },
                Err(error) => ConnectFailure::Connect(error),
            };
            if error.is_permanent() || attempts.is_some_and(|attempts| attempt >= attempts) {
                return Err(error);
            }
            let ceiling = Duration::from_millis(250)
                .saturating_mul(1 << attempt.min(8))
                .min(MAX_CONNECT_BACKOFF);
            tokio::time::sleep(ceiling.mul_f64(fleet.random.next_f64())).await;
        }
    }

    async fn install_handler(
        self: &Arc<Self>,
        fleet: &Arc<Fleet>,
        client: &DeviceClient,
    ) -> Result<(), ConnectFailure> {
        let device = Arc::clone(self);
        let fleet = Arc::clone(fleet);
        // The handler holds its own client: the update it starts reports on the connection it came on.
        // The cycle (client → handler → client) ends with the explicit disconnect.
        let own_client = client.clone();
        client
            .on_method(move |request| {
                let response = device.answer(&fleet, &own_client, request);
                async move { response }
            })
            .await
            .map_err(ConnectFailure::Subscribe)
    }

    fn answer(
        self: &Arc<Self>,
        fleet: &Arc<Fleet>,
        client: &DeviceClient,
        request: MethodRequest,
    ) -> MethodResponse {
        fleet.counters.method_answered();
        match request.method_name.as_str() {
            PING_METHOD => MethodResponse::ok(request.payload),
            METHOD_NAME => self.start_update(fleet, client, &request.payload),
            other => MethodResponse::new(
                404,
                json!({ "Response": format!(
                    "unknown method {other:?}; this simulated device implements {PING_METHOD} and {METHOD_NAME}"
                )}),
            ),
        }
    }

    /// `firmwareUpdate`: checks the payload and claims the update as the agent does, then runs it in its
    /// own task and answers at once.
    fn start_update(
        self: &Arc<Self>,
        fleet: &Arc<Fleet>,
        client: &DeviceClient,
        payload: &Value,
    ) -> MethodResponse {
        let update = match fleet.firmware.check(payload) {
            Ok(update) => update,
            Err(refusal) => return refusal,
        };
        let target = update
            .target_version()
            .map(str::to_owned)
            .unwrap_or_else(|| fleethub_agent::download::redact(update.url.as_str()));
        {
            let mut mode = self.mode.lock().expect("the mode lock is never poisoned");
            match *mode {
                Mode::Idle => *mode = Mode::Updating,
                Mode::Updating => {
                    return MethodResponse::new(
                        409,
                        json!({ "Response": format!("a firmware update to {target} is already running") }),
                    );
                }
                Mode::Reconnecting => {
                    return MethodResponse::new(
                        503,
                        json!({ "Response": "the device is reconnecting; try again" }),
                    );
                }
            }
        }
        let auth = match self
            .connection_string
            .parse::<DeviceConnectionString>()
            .map_err(|error| error.to_string())
            .and_then(|parsed| {
                DeviceAuth::from_connection_string(&parsed).map_err(|error| error.to_string())
            }) {
            Ok(auth) => auth,
            Err(reason) => {
                self.switch_mode(Mode::Updating, Mode::Idle);
                return MethodResponse::new(
                    500,
                    json!({ "Response": format!("cannot start the update: {reason}") }),
                );
            }
        };
        let failure = fleet.firmware.draw_failure();
        fleet.counters.update_started();
        let device = Arc::clone(self);
        let fleet = Arc::clone(fleet);
        let client = client.clone();
        tokio::spawn(async move {
            let mut stop = fleet.stop.clone();
            let known = device
                .firmware
                .lock()
                .expect("the firmware lock is never poisoned")
                .take();
            let mut state = match known {
                Some(state) => state,
                None => fleet.firmware.initial_state(&client).await,
            };
            let outcome = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => None,
                outcome = fleet.firmware.run(&client, &auth, &mut state, update, failure, &fleet.counters) => Some(outcome),
            };
            if let Some(outcome) = outcome {
                fleet.counters.update_ended(outcome);
            }
            *device
                .firmware
                .lock()
                .expect("the firmware lock is never poisoned") = Some(state);
            device.switch_mode(Mode::Updating, Mode::Idle);
        });
        MethodResponse::ok(json!({ "Response": STARTED_RESPONSE }))
    }

    /// Moves from `from` to `to`; false (and no change) when the device is not in `from`.
    fn switch_mode(&self, from: Mode, to: Mode) -> bool {
        let mut mode = self.mode.lock().expect("the mode lock is never poisoned");
        if *mode != from {
            return false;
        }
        *mode = to;
        true
    }

    fn telemetry(&self, sequence: u64, fleet: &Fleet) -> Message {
        let body = telemetry_body(
            &self.device_id,
            sequence,
            temperature(&fleet.random),
            fleet.behaviour.payload_bytes,
        );
        Message::new(body)
            .with_content_type("application/json")
            .with_content_encoding("utf-8")
            .with_message_id(format!("{}-{sequence}", self.device_id))
    }
}

/// `{"deviceId": ..., "sequence": ..., "temperature": ...}`, padded with a `padding` string to `bytes` when
/// that is longer.
pub(super) fn telemetry_body(
    device_id: &DeviceId,
    sequence: u64,
    temperature: f64,
    bytes: usize,
) -> Vec<u8> {
    let mut body = json!({
        "deviceId": device_id.as_str(),
        "sequence": sequence,
        "temperature": temperature,
    });
    let bare = serde_json::to_vec(&body).expect("a JSON value always serialises");
    // `,"padding":""` adds 13 bytes before the padding itself.
    let Some(padding) = bytes.checked_sub(bare.len() + 13) else {
        return bare;
    };
    body["padding"] = Value::String("x".repeat(padding));
    serde_json::to_vec(&body).expect("a JSON value always serialises")
}

/// 20.00 to 25.00 °C.
fn temperature(random: &Random) -> f64 {
    (2000.0 + 500.0 * random.next_f64()).round() / 100.0
}

/// A timer every `every`, first firing at a random point of the first period so that devices connected
/// together do not send together; `None` never fires.
fn timer(every: Option<Duration>, random: &Random) -> Option<Interval> {
    let every = every?;
    let phase = every.mul_f64(random.next_f64());
    let mut interval = tokio::time::interval_at(Instant::now() + phase, every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(interval)
}

async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_is_json_padded_to_the_asked_size() {
        let device_id = DeviceId::new("sim-000001").unwrap();
        for bytes in [0, 40, 70, 256, 4096] {
            let body = telemetry_body(&device_id, 7, 21.5, bytes);
            let parsed: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(parsed["deviceId"], "sim-000001");
            assert_eq!(parsed["sequence"], 7);
            let bare = serde_json::to_vec(
                &json!({"deviceId": "sim-000001", "sequence": 7, "temperature": 21.5}),
            )
            .unwrap()
            .len();
            if bytes >= bare + 13 {
                assert_eq!(body.len(), bytes);
            } else {
                assert_eq!(body.len(), bare);
            }
        }
    }

    #[test]
    fn temperatures_stay_in_range_with_two_decimals() {
        let random = Random::seeded(1);
        for _ in 0..1000 {
            let value = temperature(&random);
            assert!((20.0..=25.0).contains(&value), "{value}");
            assert_eq!((value * 100.0).round() / 100.0, value);
        }
    }
}
