//! JSON merge patch (RFC 7386) as twins use it: applying a patch (keeping `$metadata` in step), and
//! computing the patch that turns one document into another.
//!
//! Azure: "The partial update is expressed as a JSON document that adds or updates any property.
//! Properties set to `null` are removed." Objects merge recursively; every other value, arrays
//! included, replaces the old one whole. Callers validate first (`rules.rs`): these functions assume
//! a patch that passed, and never fail.

use serde_json::{Map, Value};

use super::metadata::{MetadataNode, Stamp};

/// Merges `patch` into `target` and stamps, in `metadata` (which mirrors `target`), the object itself
/// and every node the patch touches: a patch to `a.b` restamps `a.b`, `a` and this object, never the
/// siblings of `b`. Deleted keys leave `metadata` with them.
pub(crate) fn merge_with_metadata(
    target: &mut Map<String, Value>,
    metadata: &mut MetadataNode,
    patch: &Map<String, Value>,
    stamp: Stamp,
) {
    metadata.touch(stamp);
    for (key, value) in patch {
        match value {
            Value::Null => {
                // `shift_remove` keeps the remaining properties in their order.
                target.shift_remove(key);
                metadata.children.remove(key);
            }
            Value::Object(members) => {
                if let Some(Value::Object(existing)) = target.get_mut(key) {
                    let child = match metadata.children.get_mut(key) {
                        Some(child) => child,
                        // Unreachable while the mirror invariant holds; rebuilding keeps it anyway.
                        None => metadata
                            .children
                            .entry(key.clone())
                            .or_insert_with(|| MetadataNode::for_members(existing, stamp)),
                    };
                    merge_with_metadata(existing, child, members, stamp);
                } else {
                    let created = without_nulls(members);
                    metadata
                        .children
                        .insert(key.clone(), MetadataNode::for_members(&created, stamp));
                    target.insert(key.clone(), Value::Object(created));
                }
            }
            scalar_or_array => {
                metadata
                    .children
                    .insert(key.clone(), MetadataNode::leaf(stamp));
                target.insert(key.clone(), scalar_or_array.clone());
            }
        }
    }
}

/// Merges `patch` into `target` by RFC 7386 (tags, or a copy of desired properties: no metadata) and says
/// whether `target`'s content changed. Exported as `apply_merge_patch`.
pub fn merge_plain(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (key, value) in patch {
        match value {
            Value::Null => changed |= target.shift_remove(key).is_some(),
            Value::Object(members) => {
                if let Some(Value::Object(existing)) = target.get_mut(key) {
                    changed |= merge_plain(existing, members);
                } else {
                    target.insert(key.clone(), Value::Object(without_nulls(members)));
                    changed = true;
                }
            }
            scalar_or_array => {
                if target.get(key) != Some(scalar_or_array) {
                    target.insert(key.clone(), scalar_or_array.clone());
                    changed = true;
                }
            }
        }
    }
    changed
}

/// A copy of `members` with null members removed at every object level: RFC 7386's
/// `MergePatch({}, patch)`, i.e. what a patch object becomes where there was no object to merge into.
/// Arrays are copied as they are (validation refuses nulls inside them).
pub(crate) fn without_nulls(members: &Map<String, Value>) -> Map<String, Value> {
    members
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| {
            let value = match value {
                Value::Object(inner) => Value::Object(without_nulls(inner)),
                other => other.clone(),
            };
            (key.clone(), value)
        })
        .collect()
}

/// The merge patch that turns `from` into `to`: keys only in `from` become `null`, objects present in
/// both recurse, values that differ are copied from `to`, equal values are left out. Applying the
/// result to `from` with RFC 7386 gives `to` exactly, provided `to` holds no null (stored documents
/// never do). An empty result means the documents are equal.
pub fn merge_patch_diff(from: &Map<String, Value>, to: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in from.keys() {
        if !to.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new_value) in to {
        match (from.get(key), new_value) {
            (Some(old_value), _) if old_value == new_value => {}
            (Some(Value::Object(old_members)), Value::Object(new_members)) => {
                patch.insert(
                    key.clone(),
                    Value::Object(merge_patch_diff(old_members, new_members)),
                );
            }
            _ => {
                patch.insert(key.clone(), new_value.clone());
            }
        }
    }
    patch
}

/// A merge patch that turns `from` into `to` and also turns an empty document into `to`: every member of
/// `to`, and `null` for each member of `from` that `to` lacks, at every depth (objects present on both
/// sides recurse). Unlike [`merge_patch_diff`] it restates unchanged values, so a receiver that holds
/// `from` and one that holds nothing both end at `to` (RFC 7386, `to` without nulls as stored documents
/// are). Used to catch up a device whose last acknowledged state is known but whose application may have
/// restarted since (`TwinDocument::desired_catch_up_patch`).
pub fn merge_patch_restating(
    from: &Map<String, Value>,
    to: &Map<String, Value>,
) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in from.keys() {
        if !to.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new_value) in to {
        let value = match (from.get(key), new_value) {
            (Some(Value::Object(old_members)), Value::Object(new_members)) => {
                Value::Object(merge_patch_restating(old_members, new_members))
            }
            _ => new_value.clone(),
        };
        patch.insert(key.clone(), value);
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(members) => members,
            other => panic!("test input must be an object, got {other}"),
        }
    }

    #[test]
    fn merge_plain_follows_rfc_7386_examples() {
        // The examples of RFC 7386 section 3 whose target and patch are objects.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut merged = object(target.clone());
            merge_plain(&mut merged, &object(patch.clone()));
            assert_eq!(Value::Object(merged), expected, "{target} + {patch}");
        }
    }

    #[test]
    fn merge_plain_reports_whether_anything_changed() {
        let mut target = object(json!({"a": 1, "b": {"c": 2}}));
        assert!(!merge_plain(
            &mut target,
            &object(json!({"a": 1, "b": {"c": 2}, "x": null}))
        ));
        assert!(!merge_plain(&mut target, &object(json!({"b": {}}))));
        assert!(merge_plain(&mut target, &object(json!({"b": {"c": 3}}))));
        assert!(merge_plain(&mut target, &object(json!({"a": null}))));
        assert_eq!(Value::Object(target), json!({"b": {"c": 3}}));
    }

    #[test]
    fn restating_patch_keeps_every_value_and_nulls_what_is_gone() {
        let from =
            object(json!({"keep": 1, "gone": 2, "nested": {"x": 1, "y": 2}, "was": {"a": 1}}));
        let to = object(json!({"keep": 1, "nested": {"x": 1, "z": 3}, "was": 5, "new": [1]}));
        let patch = merge_patch_restating(&from, &to);
        assert_eq!(
            Value::Object(patch.clone()),
            json!({"gone": null, "keep": 1, "nested": {"y": null, "x": 1, "z": 3}, "was": 5, "new": [1]})
        );
        let mut applied = from;
        merge_plain(&mut applied, &patch);
        assert_eq!(applied, to);
        let mut from_nothing = Map::new();
        merge_plain(&mut from_nothing, &patch);
        assert_eq!(from_nothing, to, "a receiver without state converges too");
        assert!(
            merge_patch_restating(&to, &Map::new())
                .values()
                .all(Value::is_null)
        );
    }

    #[test]
    fn diff_yields_minimal_patch() {
        let from = object(json!({"keep": 1, "gone": 2, "change": 3, "nested": {"x": 1, "y": 2}}));
        let to = object(json!({"keep": 1, "change": 4, "nested": {"x": 1, "z": 3}, "new": [1]}));
        let patch = merge_patch_diff(&from, &to);
        assert_eq!(
            Value::Object(patch.clone()),
            json!({"gone": null, "change": 4, "nested": {"y": null, "z": 3}, "new": [1]})
        );
        let mut applied = from;
        merge_plain(&mut applied, &patch);
        assert_eq!(applied, to);
    }
}
