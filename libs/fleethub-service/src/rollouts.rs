//! Firmware rollouts (a fleethub extension, docs/firmware.md "Rollouts"): create, read, list, pause, resume,
//! approve and abort rollouts, and follow one as it happens ([`ServiceClient::watch_rollout`], on the change
//! feed).

use std::pin::Pin;
use std::task::{Context, Poll};

use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::ids::RolloutId;
use fleethub_protocol::percent::quote;
use fleethub_protocol::rollouts::{
    DeviceRollout, DeviceRolloutChange, Rollout, RolloutPhase, RolloutRequest, RolloutStatistics,
    RolloutStatus,
};
use futures_util::{Stream, StreamExt};
use reqwest::Method;

use crate::changes::ChangeStream;
use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::{WatchOptions, wire};

/// `/firmware/rollouts/{id}`.
fn rollout_path(rollout_id: &RolloutId) -> String {
    format!("/firmware/rollouts/{}", quote(rollout_id.as_str()))
}

impl ServiceClient {
    /// Creates a rollout (`PUT /firmware/rollouts/{id}`): the hub answers with it, `running`, its target set
    /// not frozen yet. 400 `ArgumentInvalid` says what breaks a rule, 404 names a missing artifact, 409 an id
    /// in use.
    pub async fn create_rollout(
        &self,
        rollout_id: &RolloutId,
        request: &RolloutRequest,
    ) -> Result<Rollout, ServiceError> {
        let call = Call::new(
            Method::PUT,
            wire::with_query(&rollout_path(rollout_id), &[]),
            "a rollout",
        );
        self.call_json(call.json_body(request)?).await
    }

    /// A rollout with its counts, live while it runs (`GET /firmware/rollouts/{id}`).
    pub async fn get_rollout(&self, rollout_id: &RolloutId) -> Result<Rollout, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query(&rollout_path(rollout_id), &[]),
            "a rollout",
        ))
        .await
    }

    /// Every rollout, or those in `status`, by id.
    pub async fn list_rollouts(
        &self,
        status: Option<RolloutStatus>,
    ) -> Result<Vec<Rollout>, ServiceError> {
        let parameters: Vec<(&str, &str)> = status
            .map(|status| vec![("status", status.as_str())])
            .unwrap_or_default();
        self.call_json(Call::new(
            Method::GET,
            wire::with_query("/firmware/rollouts", &parameters),
            "a list of rollouts",
        ))
        .await
    }

    /// Holds new device starts (devices updating finish). Answers once the pause is durable.
    pub async fn pause_rollout(&self, rollout_id: &RolloutId) -> Result<Rollout, ServiceError> {
        self.rollout_action(rollout_id, "pause").await
    }

    pub async fn resume_rollout(&self, rollout_id: &RolloutId) -> Result<Rollout, ServiceError> {
        self.rollout_action(rollout_id, "resume").await
    }

    /// Lets a rollout waiting for approval start its next wave (or go on past a wave below its success
    /// threshold); 409 when it is not waiting.
    pub async fn approve_rollout(&self, rollout_id: &RolloutId) -> Result<Rollout, ServiceError> {
        self.rollout_action(rollout_id, "approve").await
    }

    /// Aborts: devices not started are cancelled, those updating finish, then the rollback artifact (if
    /// any) goes to the devices that failed. 409 once the rollout is over.
    pub async fn abort_rollout(&self, rollout_id: &RolloutId) -> Result<Rollout, ServiceError> {
        self.rollout_action(rollout_id, "abort").await
    }

    async fn rollout_action(
        &self,
        rollout_id: &RolloutId,
        action: &str,
    ) -> Result<Rollout, ServiceError> {
        let path = format!("{}/{action}", rollout_path(rollout_id));
        self.call_json(Call::new(
            Method::POST,
            wire::with_query(&path, &[]),
            "a rollout",
        ))
        .await
    }

    /// Follows a rollout until it is over, without polling: one `GET`, then the rollout's records in the
    /// change feed (`GET /changes?rolloutId=`). The stream yields the rollout as read, then one
    /// [`RolloutProgress`] per record (a device's status changed, or the rollout's status, current wave, a
    /// wave's status or its end), and ends after the one where [`RolloutProgress::is_over`] holds. As with
    /// [`watch_job`](ServiceClient::watch_job), the watch opens before the read, so nothing is missed (the
    /// first items may repeat a state already shown), and every item after the first carries the exact
    /// counts of its record.
    pub async fn watch_rollout(
        &self,
        rollout_id: &RolloutId,
    ) -> Result<RolloutWatch, ServiceError> {
        let changes = self
            .watch_changes(WatchOptions {
                rollout: Some(rollout_id.clone()),
                ..WatchOptions::default()
            })
            .await?;
        let rollout = self.get_rollout(rollout_id).await?;
        let state = WatchState {
            changes,
            first: Some(rollout.clone()),
            rollout,
            over: false,
        };
        Ok(RolloutWatch {
            inner: Box::pin(futures_util::stream::unfold(state, next_progress)),
        })
    }
}

/// Where a rollout stands, as [`ServiceClient::watch_rollout`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutProgress {
    /// The rollout as last reported: everything from the first read or the latest `rolloutUpdated`
    /// record, its counts (in total, per wave, of the rollback) from the latest record of either kind.
    pub rollout: Rollout,
    /// The device record that brought this update; `None` for the first read and the rollout's own.
    pub device: Option<DeviceRollout>,
    /// The change-feed sequence number of the record behind this update; `None` for the first read.
    pub sequence: Option<u64>,
}

impl RolloutProgress {
    pub fn status(&self) -> RolloutStatus {
        self.rollout.status
    }

    pub fn statistics(&self) -> RolloutStatistics {
        self.rollout.statistics
    }

    /// The rollout will not change again (`completed` or `aborted`).
    pub fn is_over(&self) -> bool {
        self.rollout.is_over()
    }
}

/// The stream of [`ServiceClient::watch_rollout`].
pub struct RolloutWatch {
    inner: Pin<Box<dyn Stream<Item = Result<RolloutProgress, ServiceError>> + Send>>,
}

impl RolloutWatch {
    pub async fn next(&mut self) -> Option<Result<RolloutProgress, ServiceError>> {
        self.inner.next().await
    }
}

impl Stream for RolloutWatch {
    type Item = Result<RolloutProgress, ServiceError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(context)
    }
}

struct WatchState {
    changes: ChangeStream,
    first: Option<Rollout>,
    rollout: Rollout,
    over: bool,
}

async fn next_progress(
    mut state: WatchState,
) -> Option<(Result<RolloutProgress, ServiceError>, WatchState)> {
    if state.over {
        return None;
    }
    if let Some(rollout) = state.first.take() {
        let progress = RolloutProgress {
            rollout,
            device: None,
            sequence: None,
        };
        state.over = progress.is_over();
        return Some((Ok(progress), state));
    }
    loop {
        let record = match state.changes.next().await? {
            Ok(record) => record,
            Err(error) => return Some((Err(error), state)),
        };
        let progress = match apply(&mut state.rollout, record) {
            Ok(Some(progress)) => progress,
            Ok(None) => continue,
            Err(error) => return Some((Err(error), state)),
        };
        state.over = progress.is_over();
        return Some((Ok(progress), state));
    }
}

/// Folds one of the rollout's change records into `rollout`; `None` for records of other kinds.
fn apply(
    rollout: &mut Rollout,
    record: ChangeRecord,
) -> Result<Option<RolloutProgress>, ServiceError> {
    let decode_error = |what: &'static str, record: &ChangeRecord, source| ServiceError::Decode {
        what,
        body: record.body.to_string().chars().take(1024).collect(),
        source,
    };
    let device = match record.operation {
        ChangeOperation::RolloutUpdated => {
            *rollout = serde_json::from_value(record.body.clone())
                .map_err(|source| decode_error("a rollout", &record, source))?;
            None
        }
        ChangeOperation::DeviceRolloutUpdated => {
            let change: DeviceRolloutChange = serde_json::from_value(record.body.clone())
                .map_err(|source| decode_error("a device rollout change", &record, source))?;
            match change.device.phase {
                RolloutPhase::Update => {
                    rollout.statistics = change.statistics;
                    if let Some(statistics) = change.wave_statistics
                        && let Some(wave) = rollout
                            .waves
                            .iter_mut()
                            .find(|wave| wave.wave == change.device.wave)
                    {
                        wave.statistics = statistics;
                    }
                }
                RolloutPhase::Rollback => rollout.rollback_statistics = Some(change.statistics),
            }
            Some(change.device)
        }
        _ => return Ok(None),
    };
    Ok(Some(RolloutProgress {
        rollout: rollout.clone(),
        device,
        sequence: Some(record.sequence),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(sequence: u64, operation: &str, body: serde_json::Value) -> ChangeRecord {
        let mut record = json!({
            "sequence": sequence, "time": "2026-05-01T10:00:00Z", "rolloutId": "r",
            "operation": operation, "twinVersion": null, "body": body
        });
        if operation != "rolloutUpdated" {
            record["deviceId"] = json!("d1");
        }
        serde_json::from_value(record).expect("a change record")
    }

    fn rollout(status: &str) -> serde_json::Value {
        json!({
            "rolloutId": "r", "artifact": {"model": "m", "version": "2"}, "targetCondition": "x",
            "status": status, "createdTime": "2026-05-01T10:00:00Z", "currentWave": 1,
            "waves": [
                {"wave": 1, "size": "50%", "successThreshold": "100%", "errorMinimumDevices": 10,
                 "approval": false, "status": "running"},
                {"wave": 2, "size": "100%", "successThreshold": "100%", "errorMinimumDevices": 10,
                 "approval": false, "status": "pending"}
            ],
            "maxConcurrency": 10, "deviceTimeoutInSeconds": 60, "maxAttempts": 1,
            "retryBackoffInSeconds": 5, "seed": 1
        })
    }

    #[test]
    fn records_fold_into_the_rollout_and_say_when_it_is_over() {
        let mut current: Rollout = serde_json::from_value(rollout("running")).expect("a rollout");
        let device = record(
            4,
            "deviceRolloutUpdated",
            json!({
                "deviceId": "d1", "rolloutId": "r", "phase": "update", "wave": 2, "status": "succeeded",
                "attempts": 1, "lastUpdatedTime": "2026-05-01T10:00:01Z",
                "statistics": {"deviceCount": 4, "pending": 2, "running": 0, "succeeded": 2, "failed": 0, "cancelled": 0},
                "waveStatistics": {"deviceCount": 2, "pending": 1, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
            }),
        );
        let progress = apply(&mut current, device)
            .expect("decodes")
            .expect("a rollout record");
        assert_eq!(progress.sequence, Some(4));
        assert_eq!(progress.statistics().succeeded, 2);
        assert_eq!(progress.rollout.waves[1].statistics.succeeded, 1);
        assert_eq!(progress.rollout.waves[0].statistics.succeeded, 0);
        assert!(!progress.is_over());
        let rollback = record(
            5,
            "deviceRolloutUpdated",
            json!({
                "deviceId": "d1", "rolloutId": "r", "phase": "rollback", "wave": 0, "status": "running",
                "attempts": 1, "lastUpdatedTime": "2026-05-01T10:00:02Z",
                "statistics": {"deviceCount": 1, "pending": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
            }),
        );
        let progress = apply(&mut current, rollback)
            .expect("decodes")
            .expect("a record");
        assert_eq!(
            progress
                .rollout
                .rollback_statistics
                .map(|statistics| statistics.running),
            Some(1)
        );
        assert_eq!(
            progress.statistics().succeeded,
            2,
            "the update's counts stay"
        );
        let ended = record(6, "rolloutUpdated", rollout("aborted"));
        let progress = apply(&mut current, ended)
            .expect("decodes")
            .expect("a record");
        assert!(progress.is_over());
        assert_eq!(progress.device, None);
        assert_eq!(
            apply(&mut current, record(7, "updateTwin", json!({"version": 2}))).expect("ignored"),
            None
        );
        assert!(matches!(
            apply(
                &mut current,
                record(8, "deviceRolloutUpdated", json!({"deviceId": 1}))
            ),
            Err(ServiceError::Decode { .. })
        ));
    }
}
