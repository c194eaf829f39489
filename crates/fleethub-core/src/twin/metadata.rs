//! `$metadata`: when (and, in desired, at which `$version`) each property was last written, kept as a
//! tree that mirrors the property tree, and rendered in Azure's shape.
//!
//! Azure ("Device twin metadata"): "IoT Hub maintains the timestamp of the last update for each JSON
//! object in device twin desired and reported properties" and "This information is kept at every level
//! (not just the leaves of the JSON structure) to preserve updates that remove object keys." Real twins
//! show every object node and every leaf with `$lastUpdated`, desired nodes also with
//! `$lastUpdatedVersion`, and the section root with the section's own values (a fresh twin's desired
//! root has only `$lastUpdated`).
//!
//! Invariant (checked by property tests, restored by `reconcile` on load): `children` has exactly the
//! keys of the property object it mirrors; a node for a scalar or an array has no children (arrays are
//! leaves: their elements get no metadata).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::timestamp::TwinTicks;

/// The stamp one write puts on every node it touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) at: TwinTicks,
    /// The new desired `$version`; `None` for reported properties, which carry no `$lastUpdatedVersion`.
    pub(crate) version: Option<u64>,
}

/// One node of `$metadata`. Stored compactly (`t`, `v`, `c`); rendered as `$lastUpdated`,
/// `$lastUpdatedVersion` and the child keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetadataNode {
    #[serde(rename = "t")]
    pub(crate) last_updated: TwinTicks,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_updated_version: Option<u64>,
    #[serde(rename = "c", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) children: BTreeMap<String, MetadataNode>,
}

impl MetadataNode {
    pub(crate) fn leaf(stamp: Stamp) -> Self {
        Self {
            last_updated: stamp.at,
            last_updated_version: stamp.version,
            children: BTreeMap::new(),
        }
    }

    /// A node for a value written as a whole: every object below it gets a node, every scalar a leaf.
    pub(crate) fn for_value(value: &Value, stamp: Stamp) -> Self {
        match value {
            Value::Object(members) => Self::for_members(members, stamp),
            _ => Self::leaf(stamp),
        }
    }

    pub(crate) fn for_members(members: &Map<String, Value>, stamp: Stamp) -> Self {
        let mut node = Self::leaf(stamp);
        for (key, value) in members {
            node.children
                .insert(key.clone(), Self::for_value(value, stamp));
        }
        node
    }

    pub(crate) fn touch(&mut self, stamp: Stamp) {
        self.last_updated = stamp.at;
        self.last_updated_version = stamp.version;
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            at: self.last_updated,
            version: self.last_updated_version,
        }
    }

    /// Restores the mirror invariant against `members` after loading from storage: drops nodes for keys
    /// that are gone, adds missing ones stamped like their parent. A no-op for anything we wrote.
    pub(crate) fn reconcile(&mut self, members: &Map<String, Value>) {
        self.children.retain(|key, _| members.contains_key(key));
        let stamp = self.stamp();
        for (key, value) in members {
            match self.children.get_mut(key) {
                Some(child) => match value {
                    Value::Object(child_members) => child.reconcile(child_members),
                    _ => child.children.clear(),
                },
                None => {
                    self.children
                        .insert(key.clone(), Self::for_value(value, stamp));
                }
            }
        }
    }

    /// Azure's `$metadata` object for this node and the property object it mirrors. Children follow the
    /// properties' own order, after `$lastUpdated` and `$lastUpdatedVersion`.
    pub(crate) fn render(&self, members: &Map<String, Value>) -> Value {
        let mut rendered = self.render_stamp();
        for (key, value) in members {
            let Some(child) = self.children.get(key) else {
                debug_assert!(false, "metadata is missing the property {key:?}");
                continue;
            };
            let child_json = match value {
                Value::Object(child_members) => child.render(child_members),
                _ => Value::Object(child.render_stamp()),
            };
            rendered.insert(key.clone(), child_json);
        }
        Value::Object(rendered)
    }

    fn render_stamp(&self) -> Map<String, Value> {
        let mut stamp = Map::new();
        stamp.insert(
            "$lastUpdated".to_owned(),
            Value::String(self.last_updated.format()),
        );
        if let Some(version) = self.last_updated_version {
            stamp.insert("$lastUpdatedVersion".to_owned(), Value::from(version));
        }
        stamp
    }
}
