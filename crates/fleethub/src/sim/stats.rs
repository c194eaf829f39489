//! What the simulated fleet did: counters every device task bumps (atomics, no lock), the live status line
//! computed from two snapshots a second apart, and the final summary (a table, or JSON with `--output json`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Shared by every simulated device.
#[derive(Debug, Default)]
pub(super) struct Counters {
    connected: AtomicU64,
    connect_failures: AtomicU64,
    telemetry_sent: AtomicU64,
    telemetry_failed: AtomicU64,
    reports_sent: AtomicU64,
    reports_failed: AtomicU64,
    methods_answered: AtomicU64,
    updates_started: AtomicU64,
    updates_completed: AtomicU64,
    updates_failed: AtomicU64,
    updates_rolled_back: AtomicU64,
    churn_disconnects: AtomicU64,
    churn_reconnects: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(super) fn connection_up(&self) {
        bump(&self.connected);
    }

    pub(super) fn connection_down(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn connect_failed(&self) {
        bump(&self.connect_failures);
    }

    pub(super) fn telemetry_sent(&self) {
        bump(&self.telemetry_sent);
    }

    pub(super) fn telemetry_failed(&self) {
        bump(&self.telemetry_failed);
    }

    pub(super) fn report_sent(&self) {
        bump(&self.reports_sent);
    }

    pub(super) fn report_failed(&self) {
        bump(&self.reports_failed);
    }

    pub(super) fn method_answered(&self) {
        bump(&self.methods_answered);
    }

    pub(super) fn update_started(&self) {
        bump(&self.updates_started);
    }

    pub(super) fn update_ended(&self, outcome: super::firmware::UpdateOutcome) {
        use super::firmware::UpdateOutcome;
        bump(match outcome {
            UpdateOutcome::Completed => &self.updates_completed,
            UpdateOutcome::Failed => &self.updates_failed,
            UpdateOutcome::RolledBack => &self.updates_rolled_back,
        });
    }

    pub(super) fn churn_disconnected(&self) {
        bump(&self.churn_disconnects);
    }

    pub(super) fn churn_reconnected(&self) {
        bump(&self.churn_reconnects);
    }

    pub(super) fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Snapshot {
            connected: load(&self.connected),
            connect_failures: load(&self.connect_failures),
            telemetry_sent: load(&self.telemetry_sent),
            telemetry_failed: load(&self.telemetry_failed),
            reports_sent: load(&self.reports_sent),
            reports_failed: load(&self.reports_failed),
            methods_answered: load(&self.methods_answered),
            updates_started: load(&self.updates_started),
            updates_completed: load(&self.updates_completed),
            updates_failed: load(&self.updates_failed),
            updates_rolled_back: load(&self.updates_rolled_back),
            churn_disconnects: load(&self.churn_disconnects),
            churn_reconnects: load(&self.churn_reconnects),
        }
    }
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) connected: u64,
    pub(super) connect_failures: u64,
    pub(super) telemetry_sent: u64,
    pub(super) telemetry_failed: u64,
    pub(super) reports_sent: u64,
    pub(super) reports_failed: u64,
    pub(super) methods_answered: u64,
    pub(super) updates_started: u64,
    pub(super) updates_completed: u64,
    pub(super) updates_failed: u64,
    pub(super) updates_rolled_back: u64,
    pub(super) churn_disconnects: u64,
    pub(super) churn_reconnects: u64,
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `connected 50/50 · 12.0 reports/s · 50.0 telemetry/s · 2 methods · firmware 10 ok, 1 failed · churn 5`:
/// rates over the time between `before` and `now`.
pub(super) fn status_line(
    devices: usize,
    before: &Snapshot,
    now: &Snapshot,
    elapsed: Duration,
) -> String {
    let mut line = format!(
        "connected {}/{devices} · {:.1} reports/s · {:.1} telemetry/s · {} methods answered · firmware {} ok, {} failed",
        now.connected,
        per_second(now.reports_sent - before.reports_sent, elapsed),
        per_second(now.telemetry_sent - before.telemetry_sent, elapsed),
        now.methods_answered,
        now.updates_completed,
        now.updates_failed + now.updates_rolled_back,
    );
    let in_progress = now.updates_started
        - (now.updates_completed + now.updates_failed + now.updates_rolled_back);
    if in_progress > 0 {
        line.push_str(&format!(", {in_progress} updating"));
    }
    if now.churn_reconnects > 0 {
        line.push_str(&format!(" · {} reconnected", now.churn_reconnects));
    }
    let errors = now.telemetry_failed + now.reports_failed;
    if errors > 0 {
        line.push_str(&format!(" · {errors} errors"));
    }
    line
}

/// The final summary, printed as JSON with `--output json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Summary {
    pub(super) devices: usize,
    pub(super) prefix: String,
    /// The devices connected when the simulation stopped.
    pub(super) connected: u64,
    /// Devices that never connected (after their attempts).
    pub(super) connect_failures: u64,
    /// From the first device connected to the stop.
    pub(super) duration_seconds: f64,
    pub(super) telemetry: Traffic,
    pub(super) reports: Traffic,
    pub(super) methods: Methods,
    pub(super) firmware: Firmware,
    pub(super) churn: Churn,
    /// Devices deleted at the end (0 with `--keep`).
    pub(super) deleted: usize,
    pub(super) kept: bool,
    /// Why it stopped: `duration` or `interrupted`.
    pub(super) stopped_by: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Traffic {
    pub(super) sent: u64,
    pub(super) failed: u64,
    pub(super) per_second: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Methods {
    pub(super) answered: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Firmware {
    pub(super) updates: u64,
    pub(super) completed: u64,
    pub(super) failed: u64,
    pub(super) rolled_back: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Churn {
    pub(super) disconnects: u64,
    pub(super) reconnects: u64,
}

impl Summary {
    pub(super) fn new(
        devices: usize,
        prefix: String,
        connected: u64,
        at_end: &Snapshot,
        ran_for: Duration,
    ) -> Summary {
        Summary {
            devices,
            prefix,
            connected,
            connect_failures: at_end.connect_failures,
            duration_seconds: (ran_for.as_secs_f64() * 10.0).round() / 10.0,
            telemetry: Traffic {
                sent: at_end.telemetry_sent,
                failed: at_end.telemetry_failed,
                per_second: round(per_second(at_end.telemetry_sent, ran_for)),
            },
            reports: Traffic {
                sent: at_end.reports_sent,
                failed: at_end.reports_failed,
                per_second: round(per_second(at_end.reports_sent, ran_for)),
            },
            methods: Methods {
                answered: at_end.methods_answered,
            },
            firmware: Firmware {
                updates: at_end.updates_started,
                completed: at_end.updates_completed,
                failed: at_end.updates_failed,
                rolled_back: at_end.updates_rolled_back,
            },
            churn: Churn {
                disconnects: at_end.churn_disconnects,
                reconnects: at_end.churn_reconnects,
            },
            deleted: 0,
            kept: false,
            stopped_by: "duration",
        }
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_shows_rates_over_the_interval_and_only_what_happened() {
        let before = Snapshot {
            connected: 10,
            reports_sent: 100,
            telemetry_sent: 1000,
            ..Snapshot::default()
        };
        let now = Snapshot {
            connected: 50,
            reports_sent: 120,
            telemetry_sent: 1100,
            methods_answered: 3,
            updates_started: 5,
            updates_completed: 2,
            updates_rolled_back: 1,
            ..Snapshot::default()
        };
        assert_eq!(
            status_line(50, &before, &now, Duration::from_secs(2)),
            "connected 50/50 · 10.0 reports/s · 50.0 telemetry/s · 3 methods answered · firmware 2 ok, 1 failed, 2 updating"
        );
        let churned = Snapshot {
            churn_reconnects: 4,
            telemetry_failed: 1,
            ..now
        };
        assert!(
            status_line(50, &now, &churned, Duration::ZERO)
                .ends_with("· 0.0 reports/s · 0.0 telemetry/s · 3 methods answered · firmware 2 ok, 1 failed, 2 updating · 4 reconnected · 1 errors"),
        );
    }

    #[test]
    fn the_summary_serialises_in_camel_case() {
        let snapshot = Snapshot {
            telemetry_sent: 30,
            updates_rolled_back: 2,
            ..Snapshot::default()
        };
        let summary = Summary::new(3, "sim-".into(), 3, &snapshot, Duration::from_secs(10));
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["telemetry"]["perSecond"], 3.0);
        assert_eq!(json["firmware"]["rolledBack"], 2);
        assert_eq!(json["connectFailures"], 0);
        assert_eq!(json["stoppedBy"], "duration");
    }
}
