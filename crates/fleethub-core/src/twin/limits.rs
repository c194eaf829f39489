//! The configurable twin limits (Azure's values by default) and the names of the three twin sections.

use std::fmt;

/// Limits a twin write must respect. `Default` is Azure IoT Hub's (standard tier).
///
/// Byte counts follow Azure's own counting; see `rules.rs` for how each is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwinLimits {
    /// "IoT Hub enforces an 8-KB size limit on the value of `tags`".
    pub tags_max_bytes: usize,
    /// "... and a 32-KB size limit each on the value of `properties/desired` and `properties/reported`".
    pub desired_max_bytes: usize,
    /// See `desired_max_bytes`.
    pub reported_max_bytes: usize,
    /// "String values are UTF-8 encoded and can have a maximum length of 4 KB" (UTF-8 bytes).
    pub max_string_bytes: usize,
    /// "All keys in JSON objects are UTF-8 encoded, case-sensitive, and up-to 1 KB in length".
    pub max_key_bytes: usize,
    /// "The maximum depth of JSON objects in tags, desired properties, and reported properties is 10".
    /// Counted as in `rules.rs`: a section's own members are at depth 1.
    pub max_depth: usize,
}

impl Default for TwinLimits {
    fn default() -> Self {
        Self {
            tags_max_bytes: 8 * 1024,
            desired_max_bytes: 32 * 1024,
            reported_max_bytes: 32 * 1024,
            max_string_bytes: 4 * 1024,
            max_key_bytes: 1024,
            max_depth: 10,
        }
    }
}

impl TwinLimits {
    /// The size limit of one section.
    pub fn max_bytes(&self, section: TwinSectionKind) -> usize {
        match section {
            TwinSectionKind::Tags => self.tags_max_bytes,
            TwinSectionKind::Desired => self.desired_max_bytes,
            TwinSectionKind::Reported => self.reported_max_bytes,
        }
    }
}

/// One of the three writable sections of a twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwinSectionKind {
    Tags,
    Desired,
    Reported,
}

impl TwinSectionKind {
    /// Where the section lives in the service-side twin JSON; error paths start with it, so they read
    /// like the query language (`properties.desired.a.b`).
    pub fn json_path(self) -> &'static str {
        match self {
            Self::Tags => "tags",
            Self::Desired => "properties.desired",
            Self::Reported => "properties.reported",
        }
    }
}

impl fmt::Display for TwinSectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tags => "tags",
            Self::Desired => "desired properties",
            Self::Reported => "reported properties",
        })
    }
}
