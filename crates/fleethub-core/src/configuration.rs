//! Automatic device management, pure: configuration ids, what a configuration may hold and what may change
//! after it is created, its content as writes of desired properties, which configuration wins on a twin, and
//! the bookkeeping a twin keeps about the configurations that target it.
//!
//! Rules, with their sources (Azure docs "Automatic IoT device and module management using the Azure
//! portal", `articles/iot-hub/iot-hub-automatic-device-management.md`, ms.date 08/13/2025, unless noted):
//! - Ids: "a unique name that is up to 128 characters long. Lowercase letters and the following special
//!   characters are allowed: `-+%_*!'`. Spaces aren't allowed." Digits are allowed too (every example id
//!   has them).
//! - Content: "the twin path, which is the path to the JSON section within the twin desired properties",
//!   and "the JSON content to be inserted in that section"; "If you wish to remove an existing property,
//!   specify the property value to `null`". A path's content replaces what is there.
//! - Immutability: "Configuration identifier and Content cannot be updated" (REST reference, Create Or
//!   Update); the updatable fields are target condition, labels, priority and metrics.
//! - Metrics: "Each configuration can have up to five custom metrics."
//! - Priority: "The highest numerical value is considered the highest priority. If two configurations
//!   have the same priority number, the one that was created most recently wins." fleethub breaks the
//!   last tie (same priority and creation time) by id, the id that sorts first winning, so the choice is
//!   deterministic.
//! - One configuration is applied per twin, the winner; the others that target it show `targeted`. When
//!   the winner changes (a new one wins, or the applied one stops targeting the twin), the settings of the
//!   previous one are removed and the new winner's are written: "If a twin currently running this
//!   configuration no longer meets the target condition, the settings from the configuration are removed
//!   and the twin [is] modified by the next highest priority configuration."
//! - Up to 100 configurations per hub (standard tier).
//!
//! Content is written when the applied configuration changes, not on every evaluation: a service that
//! later overrides a configured property keeps its value until the twin moves to another configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use fleethub_protocol::configurations::{
    ConfigurationContent, ConfigurationStatus, TwinConfigurationInfo,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::twin::{TwinDocument, TwinLimits, TwinPatchError, merge_patch_diff};

/// Azure's maximum length of a configuration id.
pub const MAX_ID_LENGTH: usize = 128;
/// "Up to five custom metrics can be defined per configuration."
pub const MAX_CUSTOM_METRICS: usize = 5;
/// "A maximum of 100 automatic configurations is supported on standard tier IoT hubs."
pub const MAX_CONFIGURATIONS: usize = 100;
/// What the C# SDK sends and a configuration without one gets.
pub const DEFAULT_SCHEMA_VERSION: &str = "1.0";
/// Label keys and values: "up to 128 char long" (the Node SDK's `Configuration.labels`).
pub const MAX_LABEL_LENGTH: usize = 128;

/// The special characters an id may hold besides lowercase letters and digits.
const ID_SPECIAL_CHARACTERS: &str = "-+%_*!'";

/// A configuration id: 1..=128 of `a-z`, `0-9` and `-+%_*!'`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigurationId(String);

/// Why a string is not a configuration id. Positions count characters from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationIdError {
    #[error("configuration id is empty")]
    Empty,
    #[error("configuration id is {length} characters long, the maximum is {MAX_ID_LENGTH}")]
    TooLong { length: usize },
    #[error(
        "configuration id contains {character:?} at position {position}; ids hold lowercase letters, digits and -+%_*!'"
    )]
    InvalidCharacter { character: char, position: usize },
}

impl ConfigurationId {
    pub fn new(text: impl Into<String>) -> Result<Self, ConfigurationIdError> {
        let text = text.into();
        if text.is_empty() {
            return Err(ConfigurationIdError::Empty);
        }
        for (position, character) in text.chars().enumerate() {
            let allowed = character.is_ascii_lowercase()
                || character.is_ascii_digit()
                || ID_SPECIAL_CHARACTERS.contains(character);
            if !allowed {
                return Err(ConfigurationIdError::InvalidCharacter {
                    character,
                    position,
                });
            }
        }
        // Every allowed character is one byte.
        if text.len() > MAX_ID_LENGTH {
            return Err(ConfigurationIdError::TooLong { length: text.len() });
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigurationId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl AsRef<str> for ConfigurationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ConfigurationId {
    type Err = ConfigurationIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

impl TryFrom<String> for ConfigurationId {
    type Error = ConfigurationIdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

impl From<ConfigurationId> for String {
    fn from(id: ConfigurationId) -> String {
        id.0
    }
}

/// Which twins a configuration is for: device twins (`deviceContent`, target condition over `devices`) or
/// module twins (`moduleContent`, target condition `FROM devices.modules WHERE ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigurationKind {
    Device,
    Module,
}

/// Keys below `properties.desired`, e.g. `["chiller-water", "temperature"]` for
/// `properties.desired.chiller-water.temperature`.
pub type DesiredPath = Vec<String>;

/// The prefix every content path starts with.
const DESIRED_PREFIX: &str = "properties.desired";

/// A configuration's content as writes of desired properties: each path gets its value (`null`: removed).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredContent {
    entries: Vec<(DesiredPath, Value)>,
}

impl DesiredContent {
    /// Reads `deviceContent` or `moduleContent`: keys `properties.desired` (an object: each member is set)
    /// or `properties.desired.<key>[.<key>...]`; no path may lie inside another.
    pub fn parse(content: &Map<String, Value>) -> Result<Self, ConfigurationError> {
        let mut entries: Vec<(DesiredPath, Value)> = Vec::new();
        for (twin_path, value) in content {
            let invalid = |why: String| {
                ConfigurationError::InvalidContent(format!("content path {twin_path:?}: {why}"))
            };
            let rest = match twin_path.strip_prefix(DESIRED_PREFIX) {
                Some("") => None,
                Some(rest) => Some(
                    rest.strip_prefix('.')
                        .ok_or_else(|| invalid(format!("a path starts with {DESIRED_PREFIX}.")))?,
                ),
                None => {
                    return Err(invalid(format!(
                        "configurations write desired properties; a path starts with {DESIRED_PREFIX}"
                    )));
                }
            };
            match rest {
                None => {
                    let members = value.as_object().ok_or_else(|| {
                        invalid(format!(
                            "the content of {DESIRED_PREFIX} itself must be an object"
                        ))
                    })?;
                    for (key, member) in members {
                        check_key(key).map_err(&invalid)?;
                        entries.push((vec![key.clone()], member.clone()));
                    }
                }
                Some(rest) => {
                    let path: DesiredPath = rest.split('.').map(str::to_owned).collect();
                    for key in &path {
                        check_key(key).map_err(&invalid)?;
                    }
                    entries.push((path, value.clone()));
                }
            }
        }
        for (index, (path, _)) in entries.iter().enumerate() {
            for (other, _) in &entries[index + 1..] {
                if path.starts_with(other) || other.starts_with(path) {
                    return Err(ConfigurationError::InvalidContent(format!(
                        "content paths properties.desired.{} and properties.desired.{} overlap",
                        path.join("."),
                        other.join(".")
                    )));
                }
            }
        }
        Ok(Self { entries })
    }

    pub fn entries(&self) -> &[(DesiredPath, Value)] {
        &self.entries
    }

    pub fn paths(&self) -> Vec<DesiredPath> {
        self.entries.iter().map(|(path, _)| path.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The twin key rule for keys named in a content path (the values are checked when written).
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key is empty".into());
    }
    if key.starts_with('$') {
        return Err(format!("key {key:?}: `$` is reserved"));
    }
    if let Some(bad) = key.chars().find(|c| *c == ' ' || c.is_control()) {
        return Err(format!("key {key:?} contains {bad:?}"));
    }
    Ok(())
}

/// The kind and parsed content of a configuration's `content` (exactly one of `deviceContent` and
/// `moduleContent`; `modulesContent`, an IoT Edge deployment, is not supported).
pub fn parse_content(
    content: &ConfigurationContent,
) -> Result<(ConfigurationKind, DesiredContent), ConfigurationError> {
    if content.modules_content.is_some() {
        return Err(ConfigurationError::InvalidContent(
            "modulesContent (IoT Edge deployments) is not supported by fleethub; use deviceContent or moduleContent".into(),
        ));
    }
    match (&content.device_content, &content.module_content) {
        (Some(device), None) => Ok((ConfigurationKind::Device, DesiredContent::parse(device)?)),
        (None, Some(module)) => Ok((ConfigurationKind::Module, DesiredContent::parse(module)?)),
        (Some(_), Some(_)) => Err(ConfigurationError::InvalidContent(
            "a configuration has deviceContent or moduleContent, not both".into(),
        )),
        (None, None) => Err(ConfigurationError::InvalidContent(
            "a configuration needs content.deviceContent (or content.moduleContent)".into(),
        )),
    }
}

/// Why a configuration was refused by the rules above (query syntax is checked by the hub).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    #[error(transparent)]
    InvalidId(#[from] ConfigurationIdError),
    #[error("{0}")]
    InvalidContent(String),
    #[error(
        "the content of a configuration cannot be changed; only targetCondition, priority, labels and metrics can"
    )]
    ImmutableContent,
    #[error(
        "a configuration has at most {MAX_CUSTOM_METRICS} custom metrics, this one has {count}"
    )]
    TooManyMetrics { count: usize },
    #[error("metric name {0:?} is not allowed: names are 1 to 128 characters without `$`")]
    InvalidMetricName(String),
    #[error("priority must be zero or a positive integer, got {0}")]
    InvalidPriority(i64),
    #[error("label {0}")]
    InvalidLabel(String),
}

/// What a caller sets on a configuration (the body of `PUT /configurations/{id}` minus the read-only parts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigurationSpec {
    pub schema_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `None`: keep the stored content (an update may leave it out).
    pub content: Option<ConfigurationContent>,
    pub target_condition: String,
    pub priority: i64,
    pub metric_queries: BTreeMap<String, String>,
}

/// A stored configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    pub id: ConfigurationId,
    pub kind: ConfigurationKind,
    pub schema_version: String,
    pub labels: BTreeMap<String, String>,
    /// The content as the creator gave it; never changes.
    pub content: ConfigurationContent,
    pub target_condition: String,
    pub priority: i64,
    pub metric_queries: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_updated_time: OffsetDateTime,
    /// Counter behind `etag()`: 1 at creation, up by one per update.
    pub etag_version: u64,
}

impl Configuration {
    /// A new configuration from a creation request.
    pub fn create(
        id: ConfigurationId,
        spec: ConfigurationSpec,
        now: OffsetDateTime,
    ) -> Result<Self, ConfigurationError> {
        let content = spec.content.clone().ok_or_else(|| {
            ConfigurationError::InvalidContent(
                "a configuration needs content.deviceContent (or content.moduleContent)".into(),
            )
        })?;
        let (kind, _) = parse_content(&content)?;
        check_mutable_fields(&spec)?;
        Ok(Self {
            id,
            kind,
            schema_version: spec
                .schema_version
                .filter(|version| !version.is_empty())
                .unwrap_or_else(|| DEFAULT_SCHEMA_VERSION.to_owned()),
            labels: spec.labels,
            content,
            target_condition: spec.target_condition,
            priority: spec.priority,
            metric_queries: spec.metric_queries,
            created_time: now,
            last_updated_time: now,
            etag_version: 1,
        })
    }

    /// Applies an update: target condition, priority, labels and metrics change; content must be absent or
    /// equal to the stored content; id, schema version and creation time stay.
    pub fn update(
        &mut self,
        spec: ConfigurationSpec,
        now: OffsetDateTime,
    ) -> Result<(), ConfigurationError> {
        if let Some(content) = &spec.content
            && *content != self.content
        {
            return Err(ConfigurationError::ImmutableContent);
        }
        check_mutable_fields(&spec)?;
        self.labels = spec.labels;
        self.target_condition = spec.target_condition;
        self.priority = spec.priority;
        self.metric_queries = spec.metric_queries;
        self.last_updated_time = now;
        self.etag_version += 1;
        Ok(())
    }

    /// The parsed content (valid since creation).
    pub fn desired_content(&self) -> DesiredContent {
        parse_content(&self.content)
            .map(|(_, content)| content)
            .unwrap_or_default()
    }

    /// Azure-looking etag: base64 of the decimal counter (`MQ==` for 1), as Azure's configuration etags are.
    pub fn etag(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.etag_version.to_string())
    }
}

fn check_mutable_fields(spec: &ConfigurationSpec) -> Result<(), ConfigurationError> {
    if spec.priority < 0 {
        return Err(ConfigurationError::InvalidPriority(spec.priority));
    }
    if spec.metric_queries.len() > MAX_CUSTOM_METRICS {
        return Err(ConfigurationError::TooManyMetrics {
            count: spec.metric_queries.len(),
        });
    }
    for name in spec.metric_queries.keys() {
        if name.is_empty() || name.chars().count() > MAX_LABEL_LENGTH || name.contains('$') {
            return Err(ConfigurationError::InvalidMetricName(name.clone()));
        }
    }
    for (key, value) in &spec.labels {
        if key.is_empty() || key.starts_with('$') {
            return Err(ConfigurationError::InvalidLabel(format!(
                "key {key:?}: keys are non-empty and `$` is reserved"
            )));
        }
        for text in [key, value] {
            if text.chars().count() > MAX_LABEL_LENGTH {
                return Err(ConfigurationError::InvalidLabel(format!(
                    "{text:?} is longer than {MAX_LABEL_LENGTH} characters"
                )));
            }
        }
    }
    Ok(())
}

/// What priority resolution looks at.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a ConfigurationId,
    pub priority: i64,
    pub created_time: OffsetDateTime,
}

/// The configuration applied to a twin that `candidates` all target: the highest priority; among equals
/// the most recently created; then the id that sorts first.
pub fn winner<'a>(candidates: &[Candidate<'a>]) -> Option<&'a ConfigurationId> {
    candidates
        .iter()
        .max_by(|left, right| {
            left.priority
                .cmp(&right.priority)
                .then(left.created_time.cmp(&right.created_time))
                .then(right.id.cmp(left.id))
        })
        .map(|candidate| candidate.id)
}

/// The configuration applied to a twin: which one (its id and creation time, so a configuration deleted
/// and created again with the same id counts as another), and the desired paths it wrote, so they can be
/// removed when it stops applying even if it was deleted meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedConfiguration {
    pub id: ConfigurationId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_time: OffsetDateTime,
    pub paths: Vec<DesiredPath>,
}

/// What a twin keeps about configurations: those that target it, and the one applied (always one of them).
/// Rendered as the twin's `configurations` map.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinConfigurations {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    targeted: BTreeSet<ConfigurationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<AppliedConfiguration>,
}

impl TwinConfigurations {
    pub fn is_empty(&self) -> bool {
        self.targeted.is_empty() && self.applied.is_none()
    }

    /// The configurations whose target condition the twin matched when last evaluated.
    pub fn targeted(&self) -> &BTreeSet<ConfigurationId> {
        &self.targeted
    }

    pub fn applied(&self) -> Option<&AppliedConfiguration> {
        self.applied.as_ref()
    }

    pub fn status(&self, id: &ConfigurationId) -> Option<ConfigurationStatus> {
        if self
            .applied
            .as_ref()
            .is_some_and(|applied| &applied.id == id)
        {
            Some(ConfigurationStatus::Applied)
        } else if self.targeted.contains(id) {
            Some(ConfigurationStatus::Targeted)
        } else {
            None
        }
    }

    /// The twin's `configurations` member: `{"<id>": {"status": "targeted" | "applied"}}`.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        let ids = self
            .targeted
            .iter()
            .chain(self.applied.as_ref().map(|applied| &applied.id));
        for id in ids {
            if let Some(status) = self.status(id) {
                map.insert(
                    id.to_string(),
                    serde_json::to_value(TwinConfigurationInfo { status })
                        .expect("a status always serialises"),
                );
            }
        }
        Value::Object(map)
    }

    /// Whether `assignment` would change anything on a twin in this state.
    pub fn differs_from(&self, assignment: &Assignment) -> bool {
        let applied = self
            .applied
            .as_ref()
            .map(|applied| (&applied.id, applied.created_time));
        let winner = assignment
            .winner
            .as_ref()
            .map(|winner| (&winner.id, winner.created_time));
        self.targeted != assignment.targeted || applied != winner
    }
}

/// The configuration to apply to a twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Winner {
    pub id: ConfigurationId,
    pub created_time: OffsetDateTime,
    pub content: DesiredContent,
}

/// The outcome of evaluating every configuration on one twin.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assignment {
    pub targeted: BTreeSet<ConfigurationId>,
    /// One of `targeted`, or `None` when nothing targets the twin.
    pub winner: Option<Winner>,
}

/// What `assign` did to a twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Assigned {
    /// Whether the twin changed at all (statuses or desired properties).
    pub changed: bool,
    /// The desired patch (with `"$version"`) to push to the device, if desired properties were written.
    pub desired_patch_for_device: Option<Value>,
}

/// Records `assignment` on a twin. When the applied configuration changes, removes the desired paths the
/// previous one wrote and writes the new winner's content, as one desired patch (a merge-patch diff, so
/// nothing is written when the values are already there). Refused writes (twin limits) change nothing.
pub fn assign(
    twin: &mut TwinDocument,
    assignment: &Assignment,
    now: OffsetDateTime,
    limits: &TwinLimits,
) -> Result<Assigned, TwinPatchError> {
    let current = twin.configurations().clone();
    if !current.differs_from(assignment) {
        return Ok(Assigned {
            changed: false,
            desired_patch_for_device: None,
        });
    }
    let previous = current
        .applied
        .as_ref()
        .map(|applied| (&applied.id, applied.created_time));
    let next = assignment
        .winner
        .as_ref()
        .map(|winner| (&winner.id, winner.created_time));
    let mut desired_patch_for_device = None;
    if previous != next {
        let removed = current
            .applied
            .as_ref()
            .map_or(&[][..], |applied| &applied.paths[..]);
        let empty = DesiredContent::default();
        let content = assignment
            .winner
            .as_ref()
            .map_or(&empty, |winner| &winner.content);
        let patch = desired_patch(twin.desired_properties(), removed, content);
        if !patch.is_empty() {
            let applied = twin.apply_desired_patch(&Value::Object(patch), now, limits)?;
            desired_patch_for_device = Some(applied.patch_for_device);
        }
    }
    twin.set_configurations(TwinConfigurations {
        targeted: assignment.targeted.clone(),
        applied: assignment
            .winner
            .as_ref()
            .map(|winner| AppliedConfiguration {
                id: winner.id.clone(),
                created_time: winner.created_time,
                paths: winner.content.paths(),
            }),
    });
    Ok(Assigned {
        changed: true,
        desired_patch_for_device,
    })
}

/// The merge patch that takes desired properties `current` to: `removed` paths gone, then each path of
/// `content` replaced by its value (`null`: gone). Empty when nothing changes.
pub fn desired_patch(
    current: &Map<String, Value>,
    removed: &[DesiredPath],
    content: &DesiredContent,
) -> Map<String, Value> {
    let mut target = current.clone();
    for path in removed {
        remove_at(&mut target, path);
    }
    for (path, value) in content.entries() {
        match without_nulls(value) {
            Some(value) => set_at(&mut target, path, value),
            None => remove_at(&mut target, path),
        }
    }
    merge_patch_diff(current, &target)
}

fn remove_at(map: &mut Map<String, Value>, path: &[String]) {
    match path {
        [] => {}
        [key] => {
            map.remove(key);
        }
        [key, rest @ ..] => {
            if let Some(Value::Object(child)) = map.get_mut(key) {
                remove_at(child, rest);
            }
        }
    }
}

fn set_at(map: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [key] => {
            map.insert(key.clone(), value);
        }
        [key, rest @ ..] => {
            let child = map
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(child) = child {
                set_at(child, rest, value);
            }
        }
    }
}

/// A content value as stored after a merge: members that are `null` do not exist. `None` for `null` itself.
fn without_nulls(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(members) => Some(Value::Object(
            members
                .iter()
                .filter_map(|(key, member)| {
                    without_nulls(member).map(|member| (key.clone(), member))
                })
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests;
