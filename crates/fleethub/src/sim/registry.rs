//! Creating and removing the simulated fleet through the bulk registry API (`POST /devices` with Azure's
//! `importMode` items), in batches of 100 (Azure's limit per request) with a few requests in flight.
//!
//! Devices are written with `importMode: update` (create, or overwrite an existing identity): a second run
//! with the same prefix reuses the devices of the first, with fresh keys. Their tags (`sim: true`) are
//! patched on every run; the reported firmware (model and version) is written only when a device is created,
//! so a device that was updated in an earlier run keeps the version it reported.

use std::time::Duration;

use anyhow::anyhow;
use fleethub_service::ServiceError;
use fleethub_service::protocol::bulk::{
    BulkRegistryOperationResult, ExportImportDevice, ImportMode, ImportTwinProperties,
};
use fleethub_service::protocol::errors::ErrorCode;
use fleethub_service::protocol::ids::DeviceId;
use fleethub_service::protocol::rest::{AuthenticationMechanism, SymmetricKey};
use indicatif::ProgressBar;
use ring::hmac;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::failure::{Kind, Operation, explain};
use crate::hub::Hub;

/// Items per bulk request: Azure IoT Hub's limit (a fleethub hub takes up to 1000).
pub(super) const BATCH: usize = 100;
/// Bulk requests in flight at once: each is one durable transaction on the hub.
const REQUESTS_IN_FLIGHT: usize = 4;
/// Tries per request when the hub is unreachable or throttles (429, 503).
const ATTEMPTS: u32 = 5;
/// The tag every simulated device carries, so queries, configurations and rollouts can select them.
pub(super) const SIM_TAG: &str = "sim";

/// One simulated device's identity: its id and keys.
#[derive(Clone)]
pub(super) struct Identity {
    pub(super) device_id: DeviceId,
    pub(super) primary_key: String,
    secondary_key: String,
}

impl std::fmt::Debug for Identity {
    /// Never prints key material.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Identity")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// `PREFIX` followed by the index in six digits: `sim-000000`, `sim-000001`, ... Stable across runs, so a
/// second run reuses the same devices.
pub(super) fn device_id(prefix: &str, index: usize) -> Result<DeviceId, String> {
    let text = format!("{prefix}{index:06}");
    DeviceId::new(text.clone())
        .map_err(|error| format!("{text:?} is not a valid device id: {error}"))
}

/// The identities of devices `0..count`, each with its own keys, derived from one secret drawn from the
/// operating system for this run (HMAC-SHA256 of the id).
pub(super) fn identities(prefix: &str, count: usize) -> anyhow::Result<Vec<Identity>> {
    let random = ring::rand::SystemRandom::new();
    let secret = hmac::Key::generate(hmac::HMAC_SHA256, &random)
        .map_err(|_| anyhow!("the operating system's random source failed"))?;
    let key = |kind: &str, id: &DeviceId| {
        let tag = hmac::sign(&secret, format!("{kind}:{id}").as_bytes());
        let bytes: [u8; 32] = tag
            .as_ref()
            .try_into()
            .expect("an HMAC-SHA256 tag is 32 bytes");
        fleethub_service::protocol::sas::generate_key_from_bytes(&bytes)
    };
    (0..count)
        .map(|index| {
            let device_id =
                device_id(prefix, index).map_err(|error| anyhow!("--prefix: {error}"))?;
            Ok(Identity {
                primary_key: key("primary", &device_id),
                secondary_key: key("secondary", &device_id),
                device_id,
            })
        })
        .collect()
}

/// What every simulated device is registered with.
pub(super) struct Registration {
    pub(super) model: String,
    pub(super) firmware_version: String,
}

impl Registration {
    fn item(&self, identity: &Identity) -> ExportImportDevice {
        let mut item = ExportImportDevice::new(identity.device_id.to_string(), ImportMode::Update);
        item.authentication = Some(AuthenticationMechanism {
            symmetric_key: SymmetricKey {
                primary_key: Some(identity.primary_key.clone()),
                secondary_key: Some(identity.secondary_key.clone()),
            },
            ..AuthenticationMechanism::default()
        });
        item.tags = Some(object(json!({ SIM_TAG: true })));
        // What the firmware agent reports at its first start: the hub serves an artifact only to devices
        // that reported its model, and rollouts target the version.
        item.properties = Some(ImportTwinProperties {
            desired: None,
            reported: Some(object(json!({
                "firmwareStatus": "standBy",
                "firmware": {
                    "model": self.model,
                    "currentVersion": self.firmware_version,
                    "status": "standBy",
                    "slot": "a",
                    "error": null,
                },
            }))),
        });
        item
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("called with object literals only"),
    }
}

/// Registers every identity (create or overwrite), advancing `bar`. Stops early, with `Ok(false)`, once
/// `stop` is set.
pub(super) async fn register(
    hub: &Hub,
    identities: &[Identity],
    registration: &Registration,
    bar: &ProgressBar,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let operation = Operation::new(Kind::WriteIdentity, "register the simulated devices");
    let batches = identities.chunks(BATCH).map(|chunk| {
        chunk
            .iter()
            .map(|identity| registration.item(identity))
            .collect()
    });
    let completed = run_batches(hub, batches, bar, stop, |result| {
        if result.is_successful || result.errors.is_empty() {
            return Ok(());
        }
        let first = &result.errors[0];
        Err(anyhow!(
            "the hub refused {} of the simulated devices, the first {} with {}: {}",
            result.errors.len(),
            first.device_id,
            first.error_code,
            first.error_status
        ))
    })
    .await;
    completed.map_err(|error| match error {
        BatchError::Service(error) => explain(hub, &operation, error),
        BatchError::Refused(error) => error,
    })
}

/// Deletes every identity (those already gone count as deleted), advancing `bar`.
pub(super) async fn delete(
    hub: &Hub,
    identities: &[Identity],
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let operation = Operation::new(Kind::WriteIdentity, "delete the simulated devices");
    let batches = identities.chunks(BATCH).map(|chunk| {
        chunk
            .iter()
            .map(|identity| {
                ExportImportDevice::new(identity.device_id.to_string(), ImportMode::Delete)
            })
            .collect()
    });
    // Nothing stops a deletion: it is what a stop asks for.
    let (_never, never_stop) = watch::channel(false);
    run_batches(hub, batches, bar, &never_stop, |result| {
        let left: Vec<_> = result
            .errors
            .iter()
            .filter(|error| error.error_code != ErrorCode::DeviceNotFound.name())
            .collect();
        match left.first() {
            None => Ok(()),
            Some(first) => Err(anyhow!(
                "the hub did not delete {} of the simulated devices, the first {} with {}: {}",
                left.len(),
                first.device_id,
                first.error_code,
                first.error_status
            )),
        }
    })
    .await
    .map(drop)
    .map_err(|error| match error {
        BatchError::Service(error) => explain(hub, &operation, error),
        BatchError::Refused(error) => error,
    })
}

enum BatchError {
    /// A request failed as a whole.
    Service(ServiceError),
    /// The hub refused some items.
    Refused(anyhow::Error),
}

/// Sends the batches, [`REQUESTS_IN_FLIGHT`] at a time, each retried while the hub is unreachable or
/// throttles; `check` judges each answer. `Ok(false)` when `stop` was set before the end.
async fn run_batches(
    hub: &Hub,
    batches: impl Iterator<Item = Vec<ExportImportDevice>>,
    bar: &ProgressBar,
    stop: &watch::Receiver<bool>,
    check: impl Fn(&BulkRegistryOperationResult) -> anyhow::Result<()>,
) -> Result<bool, BatchError> {
    let mut batches = batches.peekable();
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.len() < REQUESTS_IN_FLIGHT
            && !*stop.borrow()
            && let Some(batch) = batches.next()
        {
            let client = hub.client.clone();
            in_flight.spawn(async move {
                let count = batch.len() as u64;
                send_with_retries(&client, &batch)
                    .await
                    .map(|result| (count, result))
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            return Ok(batches.peek().is_none());
        };
        let (count, result) = joined
            .expect("a bulk request task never panics")
            .map_err(BatchError::Service)?;
        check(&result).map_err(BatchError::Refused)?;
        bar.inc(count);
    }
}

async fn send_with_retries(
    client: &fleethub_service::ServiceClient,
    batch: &[ExportImportDevice],
) -> Result<BulkRegistryOperationResult, ServiceError> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match client.bulk_registry(batch).await {
            Err(error) if attempt < ATTEMPTS && worth_retrying(&error) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

fn worth_retrying(error: &ServiceError) -> bool {
    error.is_connectivity() || matches!(error.status(), Some(429 | 503))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_prefix_and_six_digits() {
        assert_eq!(device_id("sim-", 0).unwrap().as_str(), "sim-000000");
        assert_eq!(device_id("x", 1_234_567).unwrap().as_str(), "x1234567");
        let error = device_id("a/b", 1).unwrap_err();
        assert!(
            error.contains("\"a/b000001\" is not a valid device id"),
            "{error}"
        );
    }

    #[test]
    fn every_device_gets_its_own_keys() {
        let identities = identities("k-", 3).unwrap();
        let keys: std::collections::HashSet<&str> = identities
            .iter()
            .flat_map(|identity| {
                [
                    identity.primary_key.as_str(),
                    identity.secondary_key.as_str(),
                ]
            })
            .collect();
        assert_eq!(keys.len(), 6);
        assert!(
            identities
                .iter()
                .all(|identity| identity.primary_key.len() == 44)
        );
    }

    #[test]
    fn an_item_creates_or_overwrites_with_the_tag_and_the_reported_firmware() {
        let identities = identities("sim-", 1).unwrap();
        let registration = Registration {
            model: "sim-board".into(),
            firmware_version: "1.0.0".into(),
        };
        let item = serde_json::to_value(registration.item(&identities[0])).unwrap();
        assert_eq!(item["id"], "sim-000000");
        assert_eq!(item["importMode"], "update");
        assert_eq!(item["tags"], json!({"sim": true}));
        assert_eq!(
            item["properties"]["reported"]["firmware"]["model"],
            "sim-board"
        );
        assert_eq!(
            item["properties"]["reported"]["firmware"]["currentVersion"],
            "1.0.0"
        );
        assert_eq!(
            item["authentication"]["symmetricKey"]["primaryKey"],
            identities[0].primary_key.as_str()
        );
    }
}
