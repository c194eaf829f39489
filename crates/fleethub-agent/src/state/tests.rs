//! The boot-control state machine: record transitions, and a power cut after every durable step (then after
//! every durable step of the recovery too), each ending with the old or the new firmware committed.

use serde_json::json;
use sha2::Digest as _;
use time::macros::datetime;

use super::*;

const NOW: OffsetDateTime = datetime!(2026-11-27 12:00 UTC);
const LIMIT: u32 = 3;
const FACTORY: &str = "1.0.0";

fn manifest_for(image: &[u8], version: &str) -> FirmwareManifest {
    FirmwareManifest {
        model: "thermostat-x".into(),
        version: version.into(),
        sha256: hex(&sha2::Sha256::digest(image)),
        size: image.len() as u64,
        created: NOW,
        health_check: None,
        description: None,
    }
}

fn outcome(result: OutcomeKind) -> UpdateOutcome {
    UpdateOutcome {
        result,
        version: "2.0.0".into(),
        time: NOW,
        error: None,
        reported: false,
    }
}

#[test]
fn record_transitions_keep_the_invariants() {
    let factory = BootRecord::factory();
    assert_eq!(
        (
            factory.active,
            factory.booted_slot(),
            factory.inactive_slot()
        ),
        (Slot::A, Slot::A, Slot::B)
    );
    let trying = factory.with_tentative(Slot::B);
    assert_eq!(
        (trying.tentative, trying.committed, trying.booted_slot()),
        (Some(Slot::B), false, Slot::B)
    );
    let counted = trying.with_boot_counted().with_boot_counted();
    assert_eq!(counted.boot_count, 2);
    let committed = counted.committed(outcome(OutcomeKind::Completed));
    assert_eq!(
        (
            committed.active,
            committed.tentative,
            committed.boot_count,
            committed.committed
        ),
        (Slot::B, None, 0, true)
    );
    assert_eq!(committed.inactive_slot(), Slot::A);
    let rolled_back = counted.rolled_back(outcome(OutcomeKind::RolledBack));
    assert_eq!(
        (
            rolled_back.active,
            rolled_back.tentative,
            rolled_back.committed
        ),
        (Slot::A, None, true)
    );
    assert!(!rolled_back.last_update.as_ref().unwrap().reported);
    assert!(
        rolled_back
            .with_outcome_reported()
            .last_update
            .unwrap()
            .reported
    );
    for record in [&factory, &trying, &counted, &committed, &rolled_back] {
        assert_eq!(record.check(), Ok(()), "{record:?}");
    }
    // The documented wire shape.
    assert_eq!(
        serde_json::to_value(&trying).unwrap(),
        json!({"active": "a", "tentative": "b", "bootCount": 0, "committed": false, "lastUpdate": null})
    );
    let inconsistent = BootRecord {
        committed: true,
        ..trying.clone()
    };
    assert!(inconsistent.check().is_err());
    let same_slot = BootRecord {
        tentative: Some(Slot::A),
        ..trying
    };
    assert!(same_slot.check().is_err());
}

/// A state directory after a verified download of `image`: factory firmware in `a`, the download complete.
fn downloaded(root: &Path, image: &[u8]) {
    let state = StateDir::new(root);
    boot(&state, LIMIT, FACTORY, NOW).expect("first boot");
    let mut record = DownloadRecord::new(
        "https://hub/firmware/artifacts/thermostat-x/2.0.0/image".into(),
        None,
        None,
        NOW,
    );
    fs::write(state.partial_path(), image).unwrap();
    record.bytes = image.len() as u64;
    record.total = Some(record.bytes);
    record.complete = true;
    state.save_download_record(&record).unwrap();
}

/// What the agent does with the state directory from one start until it has nothing left to do: boot, then
/// decide a trial (with `healthy` as the health check's verdict), or report a pending outcome, or apply a
/// complete download and reboot.
fn agent_life(
    state: &StateDir,
    manifest: &FirmwareManifest,
    healthy: bool,
) -> Result<(), StorageError> {
    loop {
        let report = boot(state, LIMIT, FACTORY, NOW)?;
        if let Some(trial) = report.trial {
            let failure =
                (!healthy).then(|| UpdateError::new(UpdateErrorCode::HealthCheckFailed, "exit 1"));
            resolve_trial(state, &trial, failure, NOW)?;
            return mark_outcome_reported(state);
        }
        if report
            .record
            .last_update
            .as_ref()
            .is_some_and(|outcome| !outcome.reported)
        {
            return mark_outcome_reported(state);
        }
        match report.resume {
            Some(download) if download.complete => {
                apply(state, &state.partial_path(), manifest)?;
                // Reboot.
            }
            _ => return Ok(()),
        }
    }
}

/// What must hold whenever the agent is not running: a valid boot record naming complete slots.
fn assert_consistent(state: &StateDir, context: &str) -> BootRecord {
    let record = state
        .load_boot_record()
        .unwrap_or_else(|error| panic!("{context}: {error}"))
        .unwrap_or_else(BootRecord::factory);
    for slot in std::iter::once(record.active).chain(record.tentative) {
        match state.slot_manifest(slot).unwrap() {
            Some(manifest) => {
                let (digest, size) = hash_file(&state.slot_image_path(slot)).unwrap();
                assert_eq!(
                    (digest, size),
                    (manifest.sha256, manifest.size),
                    "{context}: slot {slot} is complete"
                );
            }
            None => assert!(
                slot == Slot::A && record.tentative != Some(Slot::A),
                "{context}: only the factory slot a may lack a manifest, and never on trial"
            ),
        }
    }
    record
}

fn crash_everywhere(healthy: bool) {
    let image = b"new firmware image".repeat(1000);
    let manifest = manifest_for(&image, "2.0.0");
    let expected_version = if healthy { "2.0.0" } else { FACTORY };

    // How many durable steps a life without crashes takes.
    let directory = tempfile::tempdir().unwrap();
    downloaded(directory.path(), &image);
    let (counting, counter) = StateDir::crashing_after(directory.path(), usize::MAX);
    agent_life(&counting, &manifest, healthy).expect("no crash");
    let steps = counter.done.load(std::sync::atomic::Ordering::SeqCst);
    assert!(steps >= 7, "apply, count, decide, mark: {steps} steps");

    let mut scenarios = 0;
    for first in 1..=steps {
        for second in 1..=steps + 1 {
            let directory = tempfile::tempdir().unwrap();
            downloaded(directory.path(), &image);
            let context =
                format!("crash after step {first}, then after step {second} of the recovery");

            let (crashing, _) = StateDir::crashing_after(directory.path(), first);
            match agent_life(&crashing, &manifest, healthy) {
                Err(StorageError::SimulatedCrash(_)) => {}
                other => panic!("{context}: expected the first life to crash, got {other:?}"),
            }
            assert_consistent(&StateDir::new(directory.path()), &context);

            let (crashing, _) = StateDir::crashing_after(directory.path(), second);
            match agent_life(&crashing, &manifest, healthy) {
                Ok(()) | Err(StorageError::SimulatedCrash(_)) => {}
                Err(error) => panic!("{context}: {error}"),
            }
            let state = StateDir::new(directory.path());
            assert_consistent(&state, &context);

            agent_life(&state, &manifest, healthy)
                .unwrap_or_else(|error| panic!("{context}: {error}"));
            let record = assert_consistent(&state, &context);
            assert_eq!(
                (record.tentative, record.committed),
                (None, true),
                "{context}"
            );
            assert_eq!(
                state.slot_version(record.active, FACTORY).unwrap(),
                expected_version,
                "{context}"
            );
            let outcome = record
                .last_update
                .as_ref()
                .unwrap_or_else(|| panic!("{context}: an outcome"));
            let expected_result = if healthy {
                OutcomeKind::Completed
            } else {
                OutcomeKind::RolledBack
            };
            assert_eq!(
                (outcome.result, outcome.reported),
                (expected_result, true),
                "{context}"
            );
            assert!(
                state.download_is_empty().unwrap(),
                "{context}: the download is gone"
            );
            scenarios += 1;
        }
    }
    assert!(scenarios >= 49);
}

#[test]
fn a_crash_after_any_durable_step_ends_with_the_new_firmware_committed() {
    crash_everywhere(true);
}

#[test]
fn a_crash_after_any_durable_step_of_a_failing_update_ends_with_the_old_firmware_committed() {
    crash_everywhere(false);
}

#[test]
fn boots_are_counted_before_the_health_check_and_the_limit_rolls_back() {
    let directory = tempfile::tempdir().unwrap();
    let image = b"hangs at boot".to_vec();
    let manifest = manifest_for(&image, "2.0.0");
    downloaded(directory.path(), &image);
    let state = StateDir::new(directory.path());
    assert_eq!(
        apply(&state, &state.partial_path(), &manifest).unwrap(),
        Slot::B
    );
    // Each boot dies during its health check (nothing resolves the trial).
    for boot_count in 1..=LIMIT {
        let report = boot(&state, LIMIT, FACTORY, NOW).unwrap();
        let trial = report.trial.expect("on trial");
        assert_eq!(
            (
                trial.slot,
                trial.boot_count,
                trial.manifest.version.as_str()
            ),
            (Slot::B, boot_count, "2.0.0")
        );
        assert_eq!(report.record.booted_slot(), Slot::B);
        assert_eq!(report.committed_version, FACTORY);
    }
    let report = boot(&state, LIMIT, FACTORY, NOW).unwrap();
    assert_eq!(report.trial, None);
    assert_eq!(
        (report.record.active, report.record.tentative),
        (Slot::A, None)
    );
    let outcome = report.record.last_update.unwrap();
    assert_eq!(outcome.result, OutcomeKind::RolledBack);
    let error = outcome.error.unwrap();
    assert_eq!(error.code, UpdateErrorCode::BootLimitExceeded);
    assert!(error.reason.contains("booted 4 times"), "{}", error.reason);
}

#[test]
fn the_second_update_goes_to_the_other_slot() {
    let directory = tempfile::tempdir().unwrap();
    let state = StateDir::new(directory.path());
    let first = b"two".to_vec();
    downloaded(directory.path(), &first);
    agent_life(&state, &manifest_for(&first, "2.0.0"), true).unwrap();
    let second = b"three".to_vec();
    fs::write(state.partial_path(), &second).unwrap();
    let mut record = DownloadRecord::new("https://hub/x".into(), None, None, NOW);
    record.complete = true;
    record.bytes = second.len() as u64;
    state.save_download_record(&record).unwrap();
    agent_life(&state, &manifest_for(&second, "3.0.0"), true).unwrap();
    let record = state.load_boot_record().unwrap().unwrap();
    assert_eq!(record.active, Slot::A);
    assert_eq!(state.slot_version(Slot::A, FACTORY).unwrap(), "3.0.0");
    assert_eq!(state.slot_version(Slot::B, FACTORY).unwrap(), "2.0.0");
}

#[test]
fn leftovers_are_cleaned_and_a_foreign_boot_record_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let state = StateDir::new(directory.path());
    state.prepare().unwrap();
    fs::write(directory.path().join("boot.json.tmp"), b"half").unwrap();
    fs::write(state.slot_dir(Slot::B).join("image.tmp"), b"half").unwrap();
    fs::write(state.partial_path(), b"bytes without a record").unwrap();
    let report = boot(&state, LIMIT, FACTORY, NOW).unwrap();
    assert_eq!(report.record, BootRecord::factory());
    assert_eq!(report.committed_version, FACTORY);
    assert!(!directory.path().join("boot.json.tmp").exists());
    assert!(!state.slot_dir(Slot::B).join("image.tmp").exists());
    assert!(state.download_is_empty().unwrap());

    fs::write(state.boot_record_path(), br#"{"active": "c"}"#).unwrap();
    assert!(matches!(
        boot(&state, LIMIT, FACTORY, NOW),
        Err(StorageError::Corrupt { .. })
    ));
    fs::write(state.partial_record_path(), b"not json").unwrap();
    state.save_boot_record(&BootRecord::factory()).unwrap();
    let report = boot(&state, LIMIT, FACTORY, NOW).unwrap();
    assert_eq!(
        report.resume, None,
        "an unreadable download record is dropped"
    );
    assert!(state.download_is_empty().unwrap());
}

#[test]
fn apply_is_refused_during_a_trial() {
    let directory = tempfile::tempdir().unwrap();
    let image = b"img".to_vec();
    let manifest = manifest_for(&image, "2.0.0");
    downloaded(directory.path(), &image);
    let state = StateDir::new(directory.path());
    apply(&state, &state.partial_path(), &manifest).unwrap();
    fs::write(state.partial_path(), &image).unwrap();
    assert!(matches!(
        apply(&state, &state.partial_path(), &manifest),
        Err(StorageError::Corrupt { .. })
    ));
    // And a slot whose image does not read back as its manifest says is never marked tentative.
    let directory = tempfile::tempdir().unwrap();
    downloaded(directory.path(), &image);
    let state = StateDir::new(directory.path());
    let wrong = manifest_for(b"other", "2.0.0");
    assert!(apply(&state, &state.partial_path(), &wrong).is_err());
    assert_eq!(state.load_boot_record().unwrap().unwrap().tentative, None);
    assert_eq!(state.slot_manifest(Slot::B).unwrap(), None);
}
