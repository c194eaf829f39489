//! The `telemetry` scenario: devices send QoS 1 device-to-cloud messages as fast as the hub acknowledges
//! them (each acknowledged only once it is durable in the event log), `in_flight` at a time per device;
//! reports messages per second and publish-to-PUBACK latency, then checks the log holds at least every
//! acknowledged message.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use fleethub_device::Message;
use tokio::task::JoinSet;

use super::{Hub, Measurement, measurement};

pub(crate) struct TelemetryParameters {
    pub(crate) devices: usize,
    pub(crate) in_flight: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) seconds: u64,
}

pub(crate) async fn telemetry(
    hub_bin: &Path,
    parameters: TelemetryParameters,
) -> anyhow::Result<Measurement> {
    let TelemetryParameters {
        devices,
        in_flight,
        payload_bytes,
        seconds,
    } = parameters;
    let hub = Hub::start(hub_bin).await?;
    let strings = hub.create_devices("telemetry", devices).await?;
    let (clients, _) = hub.connect_devices(&strings, false).await?;
    let payload: Arc<Vec<u8>> = Arc::new(
        (0..payload_bytes)
            .map(|index| b'a' + (index % 26) as u8)
            .collect(),
    );
    // One message each first, so every connection has done its first publish before the clock starts.
    for client in &clients {
        client
            .send_message(Message::new(payload.as_ref().clone()))
            .await?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for client in &clients {
        for _ in 0..in_flight {
            let client = client.clone();
            let payload = Arc::clone(&payload);
            let errors = Arc::clone(&errors);
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let message = Message::new(payload.as_ref().clone());
                    let sent = Instant::now();
                    match client.send_message(message).await {
                        Ok(()) => latencies.push(sent.elapsed().as_micros() as u32),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            });
        }
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.unwrap_or_default());
    }
    let elapsed = started.elapsed();

    // Every acknowledged message is in the log (plus the warm-up ones and the hub's own events).
    let partitions = hub.service.event_partitions().await?;
    let stored: u64 = partitions
        .partitions
        .iter()
        .map(|partition| partition.next_sequence_number - partition.beginning_sequence_number)
        .sum();
    let acknowledged = (latencies.len() + clients.len()) as u64;
    if stored < acknowledged {
        bail!(
            "the event log holds {stored} events, fewer than the {acknowledged} messages acknowledged"
        );
    }
    for client in clients {
        let _ = client.disconnect().await;
    }
    Ok(measurement(
        "telemetry into the durable event log, QoS 1",
        format!("{devices} devices x {in_flight} in flight, {payload_bytes}-byte payloads"),
        latencies,
        errors.load(Ordering::Relaxed) as u64,
        elapsed,
    ))
}
