//! The device (or module) twin: tags, desired and reported properties with `$metadata` and `$version`,
//! the twin `version` and `etag`, and every way a twin is written, under Azure IoT Hub's rules.
//!
//! # Versions and etag (what Azure does, and so what we do)
//! - `properties.desired.$version` and `properties.reported.$version` start at 1 and go up by one on
//!   every accepted write of their section, even one that changes no value (Azure: "`$version` value
//!   that is guaranteed to be incremental"; a device compares versions, never contents).
//! - The twin `version` goes up by one per write operation that changes the twin (tags, desired or
//!   reported), once even when one service body writes tags and desired together. A fresh twin has
//!   version 2, as Azure's do (the documented `Microsoft.Devices.DeviceCreated` event and the IoT Edge
//!   docs' freshly created twin both show `"version": 2`, `"etag": "AAAAAAAAAAE="`, both sections at
//!   `$version` 1).
//! - The `etag` is NOT derived from `version`: Azure's twin etag counts service-side writes (tags and
//!   desired) only, starting at 1 (`AAAAAAAAAAE=`); reported writes leave it alone. Real twins show
//!   `"version": 82` with `"etag": "AAAAAAAAAAI="` and desired `$version` 2 after one desired update and
//!   many reported ones, and the docs' CLI tutorial shows `AAAAAAAAAAI=` after a reported write plus one
//!   tags update. This matters for optimistic concurrency: a back end's If-Match on tags/desired must
//!   not fail because the device reported something in between.
//!
//! # No-op writes
//! - A reported patch or a desired patch (`apply_desired_patch`) is always a write, `{}` included.
//! - A service PATCH body writes desired only if its `properties.desired` has a writable key once the
//!   read-only `$metadata`/`$version` are dropped (an SDK echoing an empty twin's desired section back
//!   pushes nothing to the device); otherwise it is an accepted desired patch like any other. Tags count
//!   as changed only if their content changes.
//! - A service PUT body is turned into a merge-patch diff per section (our choice, see
//!   `apply_service_replace`); an empty diff is no write. A body that changes nothing leaves the twin,
//!   its versions and its etag as they were.
//!
//! Refused writes (`TwinPatchError`) change nothing: every write is validated in full before any part of
//! it is applied.

mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod limits;
mod merge;
mod metadata;
mod rules;
mod storage;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

pub use error::{InvalidKeyReason, TwinPatchError};
pub use limits::{TwinLimits, TwinSectionKind};
pub use merge::{merge_patch_diff, merge_patch_restating, merge_plain as apply_merge_patch};
pub use storage::UnsupportedTwinSchema;

use crate::configuration::TwinConfigurations;
use crate::timestamp::TwinTicks;
use merge::{merge_plain, merge_with_metadata, without_nulls};
use metadata::{MetadataNode, Stamp};
use rules::{plan_merge, plan_replacement};

/// A fresh twin's `version` (see the module docs).
const NEW_TWIN_VERSION: u64 = 2;
/// A fresh twin's etag counter: `AAAAAAAAAAE=`.
const NEW_TWIN_ETAG_VERSION: u64 = 1;
/// A fresh twin's desired and reported `$version`.
const NEW_SECTION_VERSION: u64 = 1;

/// One twin with everything Azure keeps for it besides the identity fields (device id, status,
/// connection state, ...), which the registry owns.
///
/// Serialises to the compact storage form described in `storage.rs`, not to the wire form; the wire
/// pieces are `tags()`, `properties_json()`, `version()` and `etag()`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "storage::StoredTwin")]
pub struct TwinDocument {
    version: u64,
    /// Counter behind `etag()`: service-side writes only.
    etag_version: u64,
    tags: Map<String, Value>,
    /// Azure size of `tags`, kept in step with it so a patch is checked without a full walk.
    tags_size: usize,
    desired: Section,
    reported: Section,
    /// The configurations that target this twin and the one applied (automatic device management).
    configurations: TwinConfigurations,
}

/// Desired or reported properties.
#[derive(Clone, Debug, PartialEq)]
struct Section {
    properties: Map<String, Value>,
    /// Mirrors `properties` (see `metadata.rs`); the root holds the section's own `$lastUpdated`.
    metadata: MetadataNode,
    version: u64,
    /// Azure size of `properties`, always equal to `rules::members_size(&properties)`.
    size: usize,
}

/// A reported patch the twin accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedPatchApplied {
    /// The new `properties.reported.$version` (the MQTT response's `$version`).
    pub reported_version: u64,
    pub twin_version: u64,
}

/// A desired patch the twin accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredPatchApplied {
    /// The new `properties.desired.$version`.
    pub desired_version: u64,
    pub twin_version: u64,
    /// What to publish on `$iothub/twin/PATCH/properties/desired/`: the patch as given plus `"$version"`.
    pub patch_for_device: Value,
}

/// The outcome of a service PATCH or PUT on `/twins/{id}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceTwinUpdate {
    /// Unchanged if the body changed nothing.
    pub twin_version: u64,
    /// Whether the tags' content changed (query indexes on tags need updating).
    pub tags_changed: bool,
    /// The desired patch (with `"$version"`) to push to the device, if desired properties were written.
    pub desired_patch_for_device: Option<Value>,
}

impl TwinDocument {
    /// A fresh device's twin as Azure creates it: no tags, empty desired and reported properties at
    /// `$version` 1 whose `$metadata` holds only `$lastUpdated` = `now`, twin version 2, etag
    /// `AAAAAAAAAAE=`.
    pub fn new(now: OffsetDateTime) -> Self {
        let at = TwinTicks::from_datetime(now);
        Self {
            version: NEW_TWIN_VERSION,
            etag_version: NEW_TWIN_ETAG_VERSION,
            tags: Map::new(),
            tags_size: 0,
            desired: Section::new(at),
            reported: Section::new(at),
            configurations: TwinConfigurations::default(),
        }
    }

    /// The twin `version`: up by one on every change of tags, desired or reported properties.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn desired_version(&self) -> u64 {
        self.desired.version
    }

    pub fn reported_version(&self) -> u64 {
        self.reported.version
    }

    /// The counter behind `etag()`: up by one on every change of tags or desired properties.
    pub fn etag_version(&self) -> u64 {
        self.etag_version
    }

    /// Azure's twin etag: base64 of the 8-byte big-endian etag counter (`AAAAAAAAAAE=` for 1), without
    /// quotes. Changes with tags and desired properties, not with reported ones (module docs).
    pub fn etag(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.etag_version.to_be_bytes())
    }

    pub fn tags(&self) -> &Map<String, Value> {
        &self.tags
    }

    /// Desired properties without `$metadata` and `$version`.
    pub fn desired_properties(&self) -> &Map<String, Value> {
        &self.desired.properties
    }

    /// Reported properties without `$metadata` and `$version`.
    pub fn reported_properties(&self) -> &Map<String, Value> {
        &self.reported.properties
    }

    /// Which configurations target this twin and which one is applied (the twin's `configurations`).
    pub fn configurations(&self) -> &TwinConfigurations {
        &self.configurations
    }

    /// Records the configurations' state; see `configuration::assign`, the one writer. It is not a
    /// twin write: versions and etag stay.
    pub fn set_configurations(&mut self, configurations: TwinConfigurations) {
        self.configurations = configurations;
    }

    /// A section's size as Azure counts it against `TwinLimits`.
    pub fn section_size(&self, section: TwinSectionKind) -> usize {
        match section {
            TwinSectionKind::Tags => self.tags_size,
            TwinSectionKind::Desired => self.desired.size,
            TwinSectionKind::Reported => self.reported.size,
        }
    }

    /// The device's reported patch (JSON merge patch: null deletes, objects merge, anything else
    /// replaces). Any `$` key is refused: a device has no read-only fields to send back.
    pub fn apply_reported_patch(
        &mut self,
        patch: &Value,
        now: OffsetDateTime,
        limits: &TwinLimits,
    ) -> Result<ReportedPatchApplied, TwinPatchError> {
        let section = TwinSectionKind::Reported;
        let patch = patch
            .as_object()
            .ok_or(TwinPatchError::NotAnObject { section })?;
        let new_size = plan_merge(
            section,
            &self.reported.properties,
            self.reported.size,
            patch,
            limits,
        )?;
        let reported_version =
            self.reported
                .commit(patch, new_size, TwinTicks::from_datetime(now), false);
        // Reported writes move the twin version but not the etag (module docs).
        self.version += 1;
        Ok(ReportedPatchApplied {
            reported_version,
            twin_version: self.version,
        })
    }

    /// A desired patch from the service side (jobs, configurations, or a raw desired object). Any `$` key
    /// is refused; service twin bodies, which may carry read-only fields, go through
    /// `apply_service_patch`.
    pub fn apply_desired_patch(
        &mut self,
        patch: &Value,
        now: OffsetDateTime,
        limits: &TwinLimits,
    ) -> Result<DesiredPatchApplied, TwinPatchError> {
        let section = TwinSectionKind::Desired;
        let patch = patch
            .as_object()
            .ok_or(TwinPatchError::NotAnObject { section })?;
        let new_size = plan_merge(
            section,
            &self.desired.properties,
            self.desired.size,
            patch,
            limits,
        )?;
        let (desired_version, patch_for_device) =
            self.commit_desired(patch, new_size, TwinTicks::from_datetime(now));
        self.count_service_write();
        Ok(DesiredPatchApplied {
            desired_version,
            twin_version: self.version,
            patch_for_device,
        })
    }

    /// `PATCH /twins/{id}`: merges `tags` and `properties.desired` of a service-side Twin body.
    ///
    /// Tolerates what SDKs send back from a twin they read (`deviceId`, `etag`, `version`, `status`,
    /// `connectionState`, ..., `properties.reported`, and `$metadata`/`$version` inside
    /// `properties.desired`): these are read-only and ignored. Unknown top-level fields are ignored too
    /// (our choice: tolerant, as the SDKs' own models are). Absent or null `tags`/`desired` mean "leave
    /// as is". Both sections are validated before either is written.
    pub fn apply_service_patch(
        &mut self,
        body: &Value,
        now: OffsetDateTime,
        limits: &TwinLimits,
    ) -> Result<ServiceTwinUpdate, TwinPatchError> {
        let body = ServiceTwinBody::parse(body)?;
        let tags_plan = match body.tags {
            Some(patch) => Some((
                patch,
                plan_merge(
                    TwinSectionKind::Tags,
                    &self.tags,
                    self.tags_size,
                    patch,
                    limits,
                )?,
            )),
            None => None,
        };
        let desired_plan = match body.desired.as_deref() {
            Some(patch) if !patch.is_empty() => Some((
                patch,
                plan_merge(
                    TwinSectionKind::Desired,
                    &self.desired.properties,
                    self.desired.size,
                    patch,
                    limits,
                )?,
            )),
            _ => None,
        };

        let mut tags_changed = false;
        if let Some((patch, new_size)) = tags_plan {
            tags_changed = merge_plain(&mut self.tags, patch);
            self.tags_size = new_size;
        }
        let at = TwinTicks::from_datetime(now);
        let desired_patch_for_device =
            desired_plan.map(|(patch, new_size)| self.commit_desired(patch, new_size, at).1);
        if tags_changed || desired_patch_for_device.is_some() {
            self.count_service_write();
        }
        Ok(ServiceTwinUpdate {
            twin_version: self.version,
            tags_changed,
            desired_patch_for_device,
        })
    }

    /// `PUT /twins/{id}`: replaces `tags` and `properties.desired` with the body's (absent or null
    /// means empty: it is a replacement). Read-only fields are ignored as in `apply_service_patch`, so
    /// a full get -> modify -> replace round trip works.
    ///
    /// Our choice: the desired change is applied and pushed to the device as the merge-patch diff from
    /// the old desired properties to the new (`null` for removed keys), not as the whole new document
    /// as Azure pushes it. A device that merges patches, as every SDK app must for ordinary updates,
    /// thus converges on exactly the new desired properties, removed keys included; and `$metadata`
    /// keeps the timestamps of the values that did not change. An unchanged section is not written.
    pub fn apply_service_replace(
        &mut self,
        body: &Value,
        now: OffsetDateTime,
        limits: &TwinLimits,
    ) -> Result<ServiceTwinUpdate, TwinPatchError> {
        let body = ServiceTwinBody::parse(body)?;
        let nothing = Map::new();
        let new_tags = body.tags.unwrap_or(&nothing);
        let new_desired = body.desired.as_deref().unwrap_or(&nothing);
        let tags_size = plan_replacement(TwinSectionKind::Tags, self.tags_size, new_tags, limits)?;
        let desired_size = plan_replacement(
            TwinSectionKind::Desired,
            self.desired.size,
            new_desired,
            limits,
        )?;

        let new_tags = without_nulls(new_tags);
        let tags_changed = new_tags != self.tags;
        if tags_changed {
            self.tags = new_tags;
            self.tags_size = tags_size;
        }
        let desired_diff = merge_patch_diff(&self.desired.properties, &without_nulls(new_desired));
        let desired_patch_for_device = if desired_diff.is_empty() {
            None
        } else {
            let at = TwinTicks::from_datetime(now);
            Some(self.commit_desired(&desired_diff, desired_size, at).1)
        };
        if tags_changed || desired_patch_for_device.is_some() {
            self.count_service_write();
        }
        Ok(ServiceTwinUpdate {
            twin_version: self.version,
            tags_changed,
            desired_patch_for_device,
        })
    }

    /// `{"desired": {..., "$metadata": {...}, "$version": n}, "reported": {...}}`: the body of a device's
    /// twin GET, and the `properties` object of the service-side twin.
    pub fn properties_json(&self) -> Value {
        let mut properties = Map::new();
        properties.insert("desired".to_owned(), self.desired.render());
        properties.insert("reported".to_owned(), self.reported.render());
        Value::Object(properties)
    }

    /// Desired properties with `$metadata` and `$version`, as inside `properties_json()`.
    pub fn desired_json(&self) -> Value {
        self.desired.render()
    }

    /// Reported properties with `$metadata` and `$version`, as inside `properties_json()`.
    pub fn reported_json(&self) -> Value {
        self.reported.render()
    }

    /// The desired patch that brings a device from the desired properties it last acknowledged
    /// (`last_seen_desired`, a snapshot the caller kept) to the current ones, with the current
    /// `"$version"`, for catching up a device that missed patches while offline. Keys deleted meanwhile
    /// come as `null`; the current values all come, changed or not ([`merge_patch_restating`]), because
    /// the application behind the session may have restarted since it acknowledged (the Python SDK then
    /// takes this patch's `$version` as seen and skips delivering the twin it fetches). `None` if the
    /// content is the same (even if `$version` moved).
    pub fn desired_catch_up_patch(&self, last_seen_desired: &Map<String, Value>) -> Option<Value> {
        if last_seen_desired == &self.desired.properties {
            return None;
        }
        let mut patch = merge_patch_restating(last_seen_desired, &self.desired.properties);
        patch.insert("$version".to_owned(), Value::from(self.desired.version));
        Some(Value::Object(patch))
    }

    /// Writes a validated desired patch as the next desired version; returns that version and the
    /// patch for the device. The caller counts the service write once per operation.
    fn commit_desired(
        &mut self,
        patch: &Map<String, Value>,
        new_size: usize,
        at: TwinTicks,
    ) -> (u64, Value) {
        let desired_version = self.desired.commit(patch, new_size, at, true);
        let mut patch_for_device = patch.clone();
        patch_for_device.insert("$version".to_owned(), Value::from(desired_version));
        (desired_version, Value::Object(patch_for_device))
    }

    /// A change of tags and/or desired properties: both the twin version and the etag move.
    fn count_service_write(&mut self) {
        self.version += 1;
        self.etag_version += 1;
    }
}

impl Section {
    fn new(at: TwinTicks) -> Self {
        Self {
            properties: Map::new(),
            // A fresh section's root carries `$lastUpdated` only, also in desired (as Azure shows it).
            metadata: MetadataNode::leaf(Stamp { at, version: None }),
            version: NEW_SECTION_VERSION,
            size: 0,
        }
    }

    /// Merges a validated patch as the next `$version` and returns that version. `new_size` is the size
    /// `rules` computed for the result.
    fn commit(
        &mut self,
        patch: &Map<String, Value>,
        new_size: usize,
        at: TwinTicks,
        with_version_in_metadata: bool,
    ) -> u64 {
        let version = self.version + 1;
        let stamp = Stamp {
            at,
            version: with_version_in_metadata.then_some(version),
        };
        merge_with_metadata(&mut self.properties, &mut self.metadata, patch, stamp);
        self.version = version;
        self.size = new_size;
        debug_assert_eq!(
            self.size,
            rules::members_size(&self.properties),
            "size out of step"
        );
        version
    }

    fn render(&self) -> Value {
        let mut rendered = self.properties.clone();
        rendered.insert(
            "$metadata".to_owned(),
            self.metadata.render(&self.properties),
        );
        rendered.insert("$version".to_owned(), Value::from(self.version));
        Value::Object(rendered)
    }
}

/// The writable parts of a service-side Twin body (PROTOCOL.md §3.4).
struct ServiceTwinBody<'b> {
    tags: Option<&'b Map<String, Value>>,
    desired: Option<Cow<'b, Map<String, Value>>>,
}

impl<'b> ServiceTwinBody<'b> {
    fn parse(body: &'b Value) -> Result<Self, TwinPatchError> {
        let body = body.as_object().ok_or(TwinPatchError::BodyNotAnObject)?;
        let tags = match body.get("tags") {
            None | Some(Value::Null) => None,
            Some(Value::Object(tags)) => Some(tags),
            Some(_) => {
                return Err(TwinPatchError::NotAnObject {
                    section: TwinSectionKind::Tags,
                });
            }
        };
        let desired = match body.get("properties") {
            None | Some(Value::Null) => None,
            Some(Value::Object(properties)) => match properties.get("desired") {
                None | Some(Value::Null) => None,
                Some(Value::Object(desired)) => Some(writable_desired(desired)),
                Some(_) => {
                    return Err(TwinPatchError::NotAnObject {
                        section: TwinSectionKind::Desired,
                    });
                }
            },
            Some(_) => {
                return Err(TwinPatchError::FieldNotAnObject {
                    field: "properties",
                });
            }
        };
        Ok(Self { tags, desired })
    }
}

/// Drops `$metadata` and `$version`, the read-only members a twin GET puts inside desired properties
/// and SDKs send back. Any other `$` key stays and is refused by the key rule.
fn writable_desired(desired: &Map<String, Value>) -> Cow<'_, Map<String, Value>> {
    const READ_ONLY: [&str; 2] = ["$metadata", "$version"];
    if READ_ONLY.iter().any(|key| desired.contains_key(*key)) {
        Cow::Owned(
            desired
                .iter()
                .filter(|(key, _)| !READ_ONLY.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        )
    } else {
        Cow::Borrowed(desired)
    }
}
