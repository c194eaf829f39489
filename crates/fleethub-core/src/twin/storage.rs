//! The storage form of a twin: compact JSON for the store's twin column, versioned by a `schema` field.
//!
//! ```json
//! {"schema":1,"version":4,"etagVersion":2,"tags":{"site":"a"},
//!  "desired":{"version":2,"properties":{"fw":"1.2"},"metadata":{"t":17145576000000000,"v":2,"c":{"fw":{"t":17145576000000000,"v":2}}}},
//!  "reported":{"version":2,"properties":{"ok":true},"metadata":{"t":17145576100000000,"c":{"ok":{"t":17145576100000000}}}}}
//! ```
//! Metadata nodes are `t` (`$lastUpdated` as 100 ns ticks since 1970), `v` (`$lastUpdatedVersion`,
//! desired only) and `c` (children by key; omitted when empty). Section sizes are not stored: they are
//! recomputed while loading, in the same pass that checks metadata against the properties, so a
//! change to Azure's size counting never leaves stale numbers on disk.
//!
//! `configurations` (omitted when empty) is automatic device management's bookkeeping:
//! `{"targeted":["cfg1","cfg2"],"applied":{"id":"cfg2","createdTime":"...","paths":[["fw"]]}}`.
//!
//! Evolution: a new field is added with `#[serde(default)]` and needs no schema bump; unknown fields
//! are ignored. `schema` changes only for a layout older code cannot read, and such a document is
//! refused rather than half-read.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::metadata::MetadataNode;
use super::rules::members_size;
use super::{Section, TwinDocument};
use crate::configuration::TwinConfigurations;

/// The layout written by this code.
const SCHEMA: u32 = 1;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredTwinRef<'a> {
    schema: u32,
    version: u64,
    etag_version: u64,
    tags: &'a Map<String, Value>,
    desired: StoredSectionRef<'a>,
    reported: StoredSectionRef<'a>,
    #[serde(skip_serializing_if = "TwinConfigurations::is_empty")]
    configurations: &'a TwinConfigurations,
}

#[derive(Serialize)]
struct StoredSectionRef<'a> {
    version: u64,
    properties: &'a Map<String, Value>,
    metadata: &'a MetadataNode,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredTwin {
    schema: u32,
    version: u64,
    etag_version: u64,
    #[serde(default)]
    tags: Map<String, Value>,
    desired: StoredSection,
    reported: StoredSection,
    #[serde(default)]
    configurations: TwinConfigurations,
}

#[derive(Deserialize)]
struct StoredSection {
    version: u64,
    #[serde(default)]
    properties: Map<String, Value>,
    metadata: MetadataNode,
}

impl From<StoredSection> for Section {
    fn from(stored: StoredSection) -> Self {
        let StoredSection {
            version,
            properties,
            mut metadata,
        } = stored;
        metadata.reconcile(&properties);
        let size = members_size(&properties);
        Section {
            properties,
            metadata,
            version,
            size,
        }
    }
}

/// A stored twin this code cannot read.
#[derive(Debug, thiserror::Error)]
#[error("twin storage schema {found} is newer than the supported schema {SCHEMA}")]
pub struct UnsupportedTwinSchema {
    found: u32,
}

impl TryFrom<StoredTwin> for TwinDocument {
    type Error = UnsupportedTwinSchema;

    fn try_from(stored: StoredTwin) -> Result<Self, Self::Error> {
        if stored.schema > SCHEMA {
            return Err(UnsupportedTwinSchema {
                found: stored.schema,
            });
        }
        let tags_size = members_size(&stored.tags);
        Ok(TwinDocument {
            version: stored.version,
            etag_version: stored.etag_version,
            tags: stored.tags,
            tags_size,
            desired: stored.desired.into(),
            reported: stored.reported.into(),
            configurations: stored.configurations,
        })
    }
}

impl Serialize for TwinDocument {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Serialised through borrowed views: storing a twin never clones it.
        StoredTwinRef {
            schema: SCHEMA,
            version: self.version,
            etag_version: self.etag_version,
            tags: &self.tags,
            desired: section_ref(&self.desired),
            reported: section_ref(&self.reported),
            configurations: &self.configurations,
        }
        .serialize(serializer)
    }
}

fn section_ref(section: &Section) -> StoredSectionRef<'_> {
    StoredSectionRef {
        version: section.version,
        properties: &section.properties,
        metadata: &section.metadata,
    }
}
