//! `fleethub-agent`: the device-side firmware update agent of docs/firmware.md ("The device agent"), on the
//! fleethub device SDK.
//!
//! It answers the `firmwareUpdate` direct method, downloads the image over HTTPS with resume, verifies it
//! (the manifest's Ed25519 signature with the configured public key, the model, the size and SHA-256),
//! writes it into the inactive slot of an A/B pair, "reboots" into it, runs a health check, and commits it
//! or rolls back, reporting every step in the twin's reported properties.
//!
//! ```text
//! fleethub-agent --connection-string CS [--ca FILE] --state-dir DIR --model M [--public-key FILE]
//!                [--health-check CMD] [--boot-limit 3] [--initial-version V]
//! ```
//!
//! # Library
//!
//! [`Agent::start`] boots (the [`state::boot`] step: counts a trial boot, rolls back past the boot limit) and
//! returns a [`RunningAgent`]; [`RunningAgent::wait`] resolves with [`AgentExit::Reboot`] once an update is
//! applied. The binary then re-executes itself (`exec` of its own executable, same arguments), which is the
//! simulated reboot; an in-process caller (tests, `fleethub demo`) starts a new agent on the same state
//! directory instead, or lets [`run_in_process`] do so.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use fleethub_agent::{Agent, AgentConfig, AgentExit};
//!
//! let config = AgentConfig::new("HostName=...;DeviceId=...;SharedAccessKey=...", "/var/lib/agent", "thermostat-x")
//!     .with_ca_pem(std::fs::read_to_string("ca.pem")?)
//!     .with_initial_version("1.0.0");
//! loop {
//!     match Agent::start(config.clone()).await?.wait().await? {
//!         AgentExit::Reboot => continue, // boot the tentative slot
//!         AgentExit::Stopped => break,
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Reported properties
//!
//! `firmwareStatus` (`standBy` → `downloading` → `applying` → `completed`, or `failed` / `rolledBack`), the
//! reference timestamps `downloadComplete`, `startedApplyingImage`, `lastFirmwareUpdate`, and `firmware`:
//! `{"model", "currentVersion", "targetVersion", "status", "progress", "slot", "error": {"code", "reason"} |
//! null}` ([`FirmwareState`]; error codes in [`UpdateErrorCode`]). `firmware.model` is reported at every
//! start, because the hub serves an artifact only to devices that reported its model. `applying` is
//! reported twice: before the reboot (`slot` still the old one) and after it while the health check runs
//! (`slot` the new one). Progress is reported at most about once a second or every 10 %.
//!
//! # State machine and crash safety
//!
//! The slots, `boot.json` and the download record, the state machine, and why killing the agent at any
//! moment ends (after a restart) with the old or the new firmware committed and never a half state, are
//! documented in [`state`]. The download, its resume rules and its checkpoints are in [`download`]; the
//! verification order in [`verify`]; the agent's tasks, their cancellation and shutdown in the private
//! module `agent` (behind [`Agent`] and [`RunningAgent`]).
//!
//! # Real integrations
//!
//! The simulation keeps exactly the seams a real device replaces; nothing else changes:
//!
//! | simulated here | U-Boot (bootcount + env) | RAUC | SWUpdate |
//! | --- | --- | --- | --- |
//! | [`state::StateDir::write_slot`]: copy the image into `slots/<x>/` | `dd`/`flashcp` the image to the inactive partition, read it back | `rauc install bundle.raucb` (RAUC writes the other slot of the group) | `swupdate -i image.swu` (or its IPC), with the A/B "copy" selected by `-e` |
//! | [`state::BootRecord::with_tentative`] + `save_boot_record` | `fw_setenv boot_part=<x> upgrade_available=1 bootcount=0` | done by `rauc install` (marks the slot primary for the next boot) | `bootenv` section of `sw-description` (`ustate=1`, `upgrade_available=1`) |
//! | the `exec` "reboot" | `reboot` | `reboot` | `reboot` |
//! | [`state::boot`]: `bootCount += 1` before the health check, roll back past `--boot-limit` | U-Boot's own `bootcount`/`bootlimit` + `altbootcmd`, incremented by the bootloader before Linux starts | RAUC's `boot-attempts` via the bootloader backend (barebox state, U-Boot env, GRUB env) | U-Boot's `bootcount` |
//! | [`state::resolve_trial`], commit | `fw_setenv upgrade_available=0 bootcount=0` | `rauc status mark-good` | `swupdate` post-update hook clearing `ustate`/`upgrade_available` |
//! | [`state::resolve_trial`], roll back | `fw_setenv boot_part=<old> upgrade_available=0`, then `reboot` | `rauc status mark-bad` then `reboot` | restore the previous `boot_part`, then `reboot` |
//!
//! Two differences to keep in mind. A real boot counter is incremented by the bootloader, so a kernel that
//! never reaches userspace still counts; here the agent counts at its start. And a real rollback reboots
//! into the old slot; the simulation keeps running, as if it had (the running slot reported becomes the
//! active one). The agent's own bookkeeping (`lastUpdate`, the download record) stays in the state
//! directory in every integration: only the slot writes and the boot-control bits move to the bootloader.

mod agent;
pub mod config;
pub mod download;
pub mod error;
pub mod health;
pub mod payload;
pub mod report;
pub mod state;
pub mod verify;

pub use crate::agent::{Agent, AgentExit, AgentStopper, RunningAgent, run_in_process};
pub use crate::config::{AgentConfig, DEFAULT_BOOT_LIMIT, DEFAULT_INITIAL_VERSION};
pub use crate::download::DownloadPolicy;
pub use crate::error::{AgentError, StartError, StorageError, UpdateError, UpdateErrorCode};
pub use crate::payload::{METHOD_NAME, STARTED_RESPONSE, UpdateRequest, parse_update_request};
pub use crate::report::{FirmwareState, FirmwareStatus};
pub use crate::state::{BootRecord, Slot};
