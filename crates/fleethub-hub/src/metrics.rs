//! The hub's operational figures, kept in atomics on the paths that produce them and rendered in
//! Prometheus's text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Counters only grow; gauges are read when scraped (connections) or set by their producer (the store's
//! write queue). Histograms keep one counter per bucket and are made cumulative when rendered. Recording is
//! a relaxed atomic add or two, so the hot paths (telemetry, PUBACKs, commits) do not notice it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleethub_store::{CommitObserver, CommitStats};

/// Upper bounds (seconds) of direct-method latency buckets: a device answers in milliseconds to minutes.
const METHOD_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds (seconds) of store commit buckets: an fsync takes from tens of microseconds to a second.
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram with fixed buckets; `+Inf` is implicit (the count).
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; the last is above every bound.
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let index = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        // Read after the buckets: a concurrent observation may show in `count` and not yet in a bucket,
        // never the other way round, so `+Inf` (= count) is never below the last bucket.
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Everything `GET /metrics` shows that is not read from elsewhere when scraped.
pub struct Metrics {
    telemetry_qos0: AtomicU64,
    telemetry_qos1: AtomicU64,
    c2d_sent: AtomicU64,
    c2d_acknowledged: AtomicU64,
    method_calls_succeeded: AtomicU64,
    method_calls_failed: AtomicU64,
    method_latency: Histogram,
    twin_writes_service: AtomicU64,
    twin_writes_device: AtomicU64,
    store_commits: AtomicU64,
    store_commit_failures: AtomicU64,
    store_writes: AtomicU64,
    store_write_queue: AtomicU64,
    store_commit_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            telemetry_qos0: AtomicU64::new(0),
            telemetry_qos1: AtomicU64::new(0),
            c2d_sent: AtomicU64::new(0),
            c2d_acknowledged: AtomicU64::new(0),
            method_calls_succeeded: AtomicU64::new(0),
            method_calls_failed: AtomicU64::new(0),
            method_latency: Histogram::new(METHOD_BUCKETS),
            twin_writes_service: AtomicU64::new(0),
            twin_writes_device: AtomicU64::new(0),
            store_commits: AtomicU64::new(0),
            store_commit_failures: AtomicU64::new(0),
            store_writes: AtomicU64::new(0),
            store_write_queue: AtomicU64::new(0),
            store_commit_latency: Histogram::new(COMMIT_BUCKETS),
        }
    }
}

/// Figures read from the hub's state when scraped.
#[derive(Default)]
pub struct Snapshot {
    pub connected_devices: u64,
    /// Jobs running (or waiting for a slot) in this process and their devices by status.
    pub jobs: FleetWork,
    /// Firmware rollouts running in this process and their devices by status.
    pub rollouts: FleetWork,
    /// Each custom routing endpoint's delivery figures.
    pub endpoints: Vec<EndpointFigures>,
}

/// Unfinished fleet work (jobs or rollouts) and their devices, summed over every one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetWork {
    pub active: u64,
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl FleetWork {
    /// Adds one job's or rollout's device counts.
    pub fn add(&mut self, pending: u64, running: u64, succeeded: u64, failed: u64, cancelled: u64) {
        self.active += 1;
        self.pending += pending;
        self.running += running;
        self.succeeded += succeeded;
        self.failed += failed;
        self.cancelled += cancelled;
    }

    fn render(&self, out: &mut String, kind: &str, what: &str) {
        gauge(
            out,
            &format!("fleethub_{kind}s_active"),
            &format!("{what}s running or waiting in this hub process."),
            self.active,
        );
        let name = format!("fleethub_{kind}_devices");
        header(
            out,
            &name,
            &format!("Devices of the active {what}s, by their status in it."),
            "gauge",
        );
        for (status, value) in [
            ("pending", self.pending),
            ("running", self.running),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("cancelled", self.cancelled),
        ] {
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {value}");
        }
    }
}

/// One custom routing endpoint (webhook, file sink) as its delivery worker last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointFigures {
    pub name: String,
    /// `healthy`, `unhealthy`, `dead`, `unknown` (Azure's endpoint health statuses).
    pub status: &'static str,
    pub delivered: u64,
    pub dead_lettered: u64,
    /// Events routed to it that its cursor has not passed yet: its queue depth.
    pub unread: u64,
}

/// One per-endpoint metric family: name, help, type and the figure it shows.
type EndpointFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&EndpointFigures) -> u64,
);

fn render_endpoints(out: &mut String, endpoints: &[EndpointFigures]) {
    let families: [EndpointFamily; 3] = [
        (
            "fleethub_routing_endpoint_delivered_total",
            "Events delivered to a custom routing endpoint since this endpoint started in this process.",
            "counter",
            |endpoint| endpoint.delivered,
        ),
        (
            "fleethub_routing_endpoint_dead_lettered_total",
            "Events given up on after their retries and written to the dead-letter file, by endpoint.",
            "counter",
            |endpoint| endpoint.dead_lettered,
        ),
        (
            "fleethub_routing_endpoint_unread_events",
            "Events in the log that a custom routing endpoint has not passed yet (its queue depth).",
            "gauge",
            |endpoint| endpoint.unread,
        ),
    ];
    for (name, help, kind, value) in families {
        header(out, name, help, kind);
        for endpoint in endpoints {
            let label = escape_label(&endpoint.name);
            let _ = writeln!(out, "{name}{{endpoint=\"{label}\"}} {}", value(endpoint));
        }
    }
    let name = "fleethub_routing_endpoint_healthy";
    header(
        out,
        name,
        "1 while a custom routing endpoint's last delivery attempt succeeded, else 0; `status` says more.",
        "gauge",
    );
    for endpoint in endpoints {
        let label = escape_label(&endpoint.name);
        let healthy = u8::from(endpoint.status == "healthy");
        let _ = writeln!(
            out,
            "{name}{{endpoint=\"{label}\",status=\"{}\"}} {healthy}",
            endpoint.status
        );
    }
}

/// A label value as the exposition format wants it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, &AtomicU64)]) {
    header(out, name, help, "counter");
    for (labels, value) in series {
        let value = value.load(Ordering::Relaxed);
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

impl Metrics {
    /// A device-to-cloud message accepted for the event log.
    pub fn telemetry_received(&self, at_least_once: bool) {
        let counter = if at_least_once {
            &self.telemetry_qos1
        } else {
            &self.telemetry_qos0
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Cloud-to-device messages published to a device.
    pub fn c2d_published(&self, messages: usize) {
        if messages > 0 {
            self.c2d_sent.fetch_add(messages as u64, Ordering::Relaxed);
        }
    }

    /// A device acknowledged (PUBACK) a cloud-to-device message.
    pub fn c2d_acknowledged(&self) {
        self.c2d_acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    /// A direct-method call ended (answered by the device, or failed: offline, timed out, refused).
    pub fn method_call(&self, latency: Duration, answered: bool) {
        let counter = if answered {
            &self.method_calls_succeeded
        } else {
            &self.method_calls_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.method_latency.observe(latency);
    }

    /// A twin write was durable: a device's reported patch, or a service's (or job's, configuration's) write.
    pub fn twin_written(&self, by_device: bool) {
        let counter = if by_device {
            &self.twin_writes_device
        } else {
            &self.twin_writes_service
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn store_committed(&self, stats: CommitStats) {
        if stats.committed {
            self.store_commits.fetch_add(1, Ordering::Relaxed);
            self.store_writes
                .fetch_add(stats.writes as u64, Ordering::Relaxed);
        } else {
            self.store_commit_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.store_write_queue
            .store(stats.queued as u64, Ordering::Relaxed);
        self.store_commit_latency.observe(stats.duration);
    }

    /// The callback the store's writer calls after each batch.
    pub fn commit_observer(self: &std::sync::Arc<Self>) -> CommitObserver {
        let metrics = std::sync::Arc::clone(self);
        CommitObserver(std::sync::Arc::new(move |stats| {
            metrics.store_committed(stats)
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        gauge(
            &mut out,
            "fleethub_connected_devices",
            "Device and module connections (MQTT over TLS or WebSocket) open now.",
            snapshot.connected_devices,
        );
        counter(
            &mut out,
            "fleethub_telemetry_messages_received_total",
            "Device-to-cloud messages accepted, by MQTT QoS.",
            &[
                ("qos=\"0\"", &self.telemetry_qos0),
                ("qos=\"1\"", &self.telemetry_qos1),
            ],
        );
        counter(
            &mut out,
            "fleethub_c2d_messages_sent_total",
            "Cloud-to-device messages published to devices over MQTT (redeliveries included).",
            &[("", &self.c2d_sent)],
        );
        counter(
            &mut out,
            "fleethub_c2d_messages_acknowledged_total",
            "Cloud-to-device messages devices acknowledged (PUBACK).",
            &[("", &self.c2d_acknowledged)],
        );
        counter(
            &mut out,
            "fleethub_method_calls_total",
            "Direct-method calls that ended, by whether the device answered.",
            &[
                ("result=\"answered\"", &self.method_calls_succeeded),
                ("result=\"failed\"", &self.method_calls_failed),
            ],
        );
        self.method_latency.render(
            &mut out,
            "fleethub_method_call_duration_seconds",
            "Time from a direct-method call to its answer or failure.",
        );
        counter(
            &mut out,
            "fleethub_twin_writes_total",
            "Durable twin writes, by who wrote: devices (reported) or services (tags, desired).",
            &[
                ("source=\"device\"", &self.twin_writes_device),
                ("source=\"service\"", &self.twin_writes_service),
            ],
        );
        counter(
            &mut out,
            "fleethub_store_commits_total",
            "Transactions the store's writer committed (each holds a batch of writes).",
            &[("", &self.store_commits)],
        );
        counter(
            &mut out,
            "fleethub_store_commit_failures_total",
            "Batches the store's writer rolled back.",
            &[("", &self.store_commit_failures)],
        );
        counter(
            &mut out,
            "fleethub_store_writes_total",
            "Writes committed by the store's writer.",
            &[("", &self.store_writes)],
        );
        gauge(
            &mut out,
            "fleethub_store_write_queue_depth",
            "Writes waiting for the store's writer after its last commit.",
            self.store_write_queue.load(Ordering::Relaxed),
        );
        self.store_commit_latency.render(
            &mut out,
            "fleethub_store_commit_duration_seconds",
            "Time the store's writer takes per batch, from BEGIN to the end of COMMIT (fsync included).",
        );
        snapshot.jobs.render(&mut out, "job", "Job");
        snapshot
            .rollouts
            .render(&mut out, "rollout", "Firmware rollout");
        render_endpoints(&mut out, &snapshot.endpoints);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_at_the_count() {
        let histogram = Histogram::new(&[0.01, 0.1, 1.0]);
        for millis in [1, 5, 50, 500, 5000] {
            histogram.observe(Duration::from_millis(millis));
        }
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "test");
        let expected = "# HELP x_seconds test\n# TYPE x_seconds histogram\n\
                        x_seconds_bucket{le=\"0.01\"} 2\nx_seconds_bucket{le=\"0.1\"} 3\n\
                        x_seconds_bucket{le=\"1\"} 4\nx_seconds_bucket{le=\"+Inf\"} 5\n\
                        x_seconds_sum 5.556\nx_seconds_count 5\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn every_metric_has_help_and_type_before_its_samples() {
        let metrics = Metrics::default();
        metrics.telemetry_received(true);
        metrics.method_call(Duration::from_millis(20), true);
        let mut jobs = FleetWork::default();
        jobs.add(2, 1, 5, 1, 0);
        let text = metrics.render(&Snapshot {
            connected_devices: 3,
            jobs,
            endpoints: vec![EndpointFigures {
                name: "alerts \"hot\"".into(),
                status: "unhealthy",
                delivered: 7,
                dead_lettered: 1,
                unread: 12,
            }],
            ..Snapshot::default()
        });
        assert!(text.contains("fleethub_jobs_active 1\n"), "{text}");
        assert!(
            text.contains("fleethub_job_devices{status=\"pending\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("fleethub_rollouts_active 0\n"), "{text}");
        assert!(
            text.contains(
                "fleethub_routing_endpoint_unread_events{endpoint=\"alerts \\\"hot\\\"\"} 12\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "fleethub_routing_endpoint_healthy{endpoint=\"alerts \\\"hot\\\"\",status=\"unhealthy\"} 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("fleethub_connected_devices 3\n"), "{text}");
        assert!(text.contains("fleethub_telemetry_messages_received_total{qos=\"1\"} 1\n"));
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().expect("a name").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("a name");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|family| declared.contains(*family))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} has no TYPE line");
            }
        }
    }
}
