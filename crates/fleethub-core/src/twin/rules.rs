//! Azure's twin content rules (keys, strings, integers, depth, arrays) and its size counting, checked in
//! one walk over a patch before anything is written, so a refused write never leaves a half-applied twin.
//!
//! Source for every rule quoted here: Azure IoT Hub docs, "Understand and use device twins in IoT Hub",
//! sections "Tags and properties format" and "Device twin size" (MicrosoftDocs/azure-docs,
//! `articles/iot-hub/iot-hub-devguide-device-twins.md`), plus the array rules IoT Hub enforces but does
//! not document (see `new_value`).

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

use super::error::{InvalidKeyReason, TwinPatchError};
use super::limits::{TwinLimits, TwinSectionKind};

/// "Integers can have a minimum value of -4503599627370496 and a maximum value of 4503599627370495."
/// That is -2^52 ..= 2^52 - 1 (not the ±(2^53 - 1) "safe integer" range of JavaScript).
pub(crate) const MIN_TWIN_INTEGER: i64 = -(1 << 52);
pub(crate) const MAX_TWIN_INTEGER: i64 = (1 << 52) - 1;

/// Azure's size of a boolean: "Boolean values (4 Bytes)".
const BOOLEAN_SIZE: usize = 4;
/// Azure's size of a number, integer or float alike: "numeric values (8 Bytes)".
const NUMBER_SIZE: usize = 8;

/// The size Azure charges for a string (a key or a string value): "Property keys are considered as
/// UTF8-encoded strings" and "The size of UTF8-encoded strings is computed by counting all characters,
/// excluding UNICODE control characters (segments C0 and C1)".
///
/// We count UTF-8 bytes of the characters that are not controls (Unicode category Cc: C0, DEL, C1).
/// The docs say "characters" of a "UTF8-encoded string"; bytes is the reading that never lets a twin
/// grow past what Azure stores, and equals the character count for ASCII.
pub(crate) fn string_size(text: &str) -> usize {
    // Byte scan instead of `chars()`: C0 and DEL are single bytes, and C1 (U+0080..=U+009F) is always
    // encoded as 0xC2 followed by 0x80..=0x9F. This runs for every string of every reported patch.
    let bytes = text.as_bytes();
    let mut excluded = 0;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte < 0x20 || byte == 0x7f {
            excluded += 1;
        } else if byte == 0xc2 && matches!(bytes.get(index + 1), Some(0x80..=0x9f)) {
            excluded += 2;
            index += 1;
        }
        index += 1;
    }
    bytes.len() - excluded
}

/// Azure's size of a stored value. "Complex property values (nested objects) are computed based on the
/// aggregate size of the property keys and property values that they contain." Arrays are not covered
/// by the docs (they predate array support); we charge the sum of their elements, by the same rules.
pub(crate) fn value_size(value: &Value) -> usize {
    match value {
        // Stored twins hold no nulls (null deletes); counting 0 keeps a corrupt store harmless.
        Value::Null => 0,
        Value::Bool(_) => BOOLEAN_SIZE,
        Value::Number(_) => NUMBER_SIZE,
        Value::String(text) => string_size(text),
        Value::Array(items) => items.iter().map(value_size).sum(),
        Value::Object(members) => members_size(members),
    }
}

/// Size of an object's members, i.e. of a whole section: "For each property in the JSON document, IoT
/// Hub cumulatively computes and adds the length of the property's key and value." `$metadata` and
/// `$version` are kept outside the property map, so they are never counted ("These totals are
/// exclusive of read-only elements like `$version` and `$metadata/$lastUpdated`").
pub(crate) fn members_size(members: &Map<String, Value>) -> usize {
    members
        .iter()
        .map(|(key, value)| string_size(key) + value_size(value))
        .sum()
}

/// The key rule: "All keys in JSON objects are UTF-8 encoded, case-sensitive, and up-to 1 KB in length.
/// Allowed characters exclude UNICODE control characters (segments C0 and C1), and `.`, `$`, and SP."
/// DEL (U+007F) is refused with the controls, as .NET's `char.IsControl` (which IoT Hub and Edge hub
/// use) does.
pub(crate) fn check_key(key: &str, max_key_bytes: usize) -> Result<(), InvalidKeyReason> {
    if key.len() > max_key_bytes {
        return Err(InvalidKeyReason::TooLong {
            bytes: key.len(),
            max: max_key_bytes,
        });
    }
    for character in key.chars() {
        let reason = match character {
            '$' => InvalidKeyReason::DollarSign,
            '.' => InvalidKeyReason::Dot,
            ' ' => InvalidKeyReason::Space,
            control if control.is_control() => InvalidKeyReason::ControlCharacter {
                code_point: u32::from(control),
            },
            _ => continue,
        };
        return Err(reason);
    }
    Ok(())
}

/// Checks `patch` as a JSON merge patch onto `current` (a section of `current_size` bytes) and returns
/// the section's size after the merge. Nothing is written.
pub(crate) fn plan_merge(
    section: TwinSectionKind,
    current: &Map<String, Value>,
    current_size: usize,
    patch: &Map<String, Value>,
    limits: &TwinLimits,
) -> Result<usize, TwinPatchError> {
    let delta = Walker::new(section, limits).merge_members(Some(current), patch, 0)?;
    let new_size = current_size
        .checked_add_signed(delta)
        .expect("a merge removes only bytes the section holds, and the cached size is exact");
    check_section_size(section, current_size, new_size, limits)?;
    Ok(new_size)
}

/// Checks `replacement` as the whole new content of a section now `current_size` bytes and returns its
/// size. Null members are accepted and mean "absent" (they are dropped when stored).
pub(crate) fn plan_replacement(
    section: TwinSectionKind,
    current_size: usize,
    replacement: &Map<String, Value>,
    limits: &TwinLimits,
) -> Result<usize, TwinPatchError> {
    let delta = Walker::new(section, limits).merge_members(None, replacement, 0)?;
    let new_size = usize::try_from(delta).expect("a write onto nothing only adds bytes");
    check_section_size(section, current_size, new_size, limits)?;
    Ok(new_size)
}

/// "IoT Hub rejects with an error all operations that would increase the size of the `tags`,
/// `properties/desired`, or `properties/reported` documents above the limit." So a write that leaves a
/// section above its limit is refused only if it also grows it: a twin left over a lowered limit can
/// still shrink, and can be rewritten at the same size.
fn check_section_size(
    section: TwinSectionKind,
    old_size: usize,
    new_size: usize,
    limits: &TwinLimits,
) -> Result<(), TwinPatchError> {
    let max = limits.max_bytes(section);
    if new_size > max && new_size > old_size {
        return Err(TwinPatchError::SectionTooLarge {
            section,
            bytes: new_size,
            max,
        });
    }
    Ok(())
}

enum Segment<'p> {
    Key(&'p str),
    Index(usize),
}

/// One validation walk. Keeps the path as borrowed segments and renders it only for an error, so an
/// accepted patch costs no allocation beyond the segment stack.
struct Walker<'p, 'l> {
    section: TwinSectionKind,
    limits: &'l TwinLimits,
    path: Vec<Segment<'p>>,
}

impl<'p, 'l> Walker<'p, 'l> {
    fn new(section: TwinSectionKind, limits: &'l TwinLimits) -> Self {
        Self {
            section,
            limits,
            path: Vec::with_capacity(8),
        }
    }

    fn path_string(&self) -> String {
        let mut path = String::from(self.section.json_path());
        for segment in &self.path {
            match segment {
                Segment::Key(key) => {
                    path.push('.');
                    path.push_str(key);
                }
                Segment::Index(index) => {
                    write!(path, "[{index}]").expect("writing to a String cannot fail");
                }
            }
        }
        path
    }

    fn check_key_here(&self, key: &str) -> Result<(), TwinPatchError> {
        check_key(key, self.limits.max_key_bytes).map_err(|reason| TwinPatchError::InvalidKey {
            path: self.path_string(),
            reason,
        })
    }

    /// Depth as Azure counts it, from its own example: in `tags: {one: {two: ... {ten: {property:
    /// "value"}}}}` (valid, the documented maximum of 10) the object `one` sits at depth 1 and `ten` at
    /// depth 10, so a container (object or array) is allowed at depth <= `max_depth` and a scalar may sit
    /// one level below it. Arrays count as a level like objects, as IoT Edge's mirror of the hub's
    /// validator does (Azure/iotedge `ReportedPropertiesValidator`).
    fn check_container_depth(&self, depth: usize) -> Result<(), TwinPatchError> {
        if depth > self.limits.max_depth {
            return Err(TwinPatchError::TooDeep {
                path: self.path_string(),
                max: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// Validates the members of a patch object whose own depth is `depth` and returns how much the
    /// target's size changes when they are merged into `current` (`None`: nothing there yet).
    fn merge_members(
        &mut self,
        current: Option<&Map<String, Value>>,
        patch: &'p Map<String, Value>,
        depth: usize,
    ) -> Result<isize, TwinPatchError> {
        let mut delta: isize = 0;
        for (key, value) in patch {
            self.path.push(Segment::Key(key));
            self.check_key_here(key)?;
            let existing = current.and_then(|members| members.get(key));
            match (value, existing) {
                // Merge patch: an object merges into an existing object; the key stays, so only the
                // members' change counts, and the untouched part of the old subtree is never walked.
                (Value::Object(members), Some(Value::Object(existing_members))) => {
                    self.check_container_depth(depth + 1)?;
                    delta += self.merge_members(Some(existing_members), members, depth + 1)?;
                }
                // Everything else replaces (or, for null, deletes) the whole old pair.
                _ => {
                    let removed = existing.map_or(0, |old| string_size(key) + value_size(old));
                    let added = match value {
                        Value::Null => 0,
                        Value::Object(members) => {
                            self.check_container_depth(depth + 1)?;
                            string_size(key) + self.new_members(members, depth + 1, false)?
                        }
                        other => string_size(key) + self.new_value(other, depth + 1, false)?,
                    };
                    delta += to_isize(added) - to_isize(removed);
                }
            }
            self.path.pop();
        }
        Ok(delta)
    }

    /// Validates the members of an object that will be stored as new (nothing to merge with) and returns
    /// their size. Null members outside arrays are dropped on write (RFC 7386 `MergePatch({}, value)`).
    fn new_members(
        &mut self,
        members: &'p Map<String, Value>,
        depth: usize,
        in_array: bool,
    ) -> Result<usize, TwinPatchError> {
        let mut size = 0;
        for (key, value) in members {
            self.path.push(Segment::Key(key));
            self.check_key_here(key)?;
            if !value.is_null() || in_array {
                size += string_size(key) + self.new_value(value, depth + 1, in_array)?;
            }
            self.path.pop();
        }
        Ok(size)
    }

    /// Validates a value that will be stored as is, sitting at `depth`, and returns its size.
    fn new_value(
        &mut self,
        value: &'p Value,
        depth: usize,
        in_array: bool,
    ) -> Result<usize, TwinPatchError> {
        match value {
            // Arrays: "Arrays are also supported" (current docs), but IoT Hub refuses null anywhere
            // inside one, including as a member of an object inside an array: the service team called
            // it "by design" (`{"a":[{"b":null}]}` -> 400004 "Value of Property or Tag cannot be null",
            // Azure/azure-iot-sdk-csharp#1741; mirrored by Azure/iotedge#4270 and #4896). Outside arrays a
            // null never reaches this function: it is a deletion.
            Value::Null => {
                debug_assert!(
                    in_array,
                    "object members that are null are handled by the callers"
                );
                Err(TwinPatchError::NullInArray {
                    path: self.path_string(),
                })
            }
            Value::Bool(_) => Ok(BOOLEAN_SIZE),
            Value::Number(number) => {
                self.check_integer(number)?;
                Ok(NUMBER_SIZE)
            }
            Value::String(text) => {
                // "String values are UTF-8 encoded and can have a maximum length of 4 KB." Measured as
                // raw UTF-8 bytes, like Edge hub's mirror of the rule (`Encoding.UTF8.GetByteCount`).
                if text.len() > self.limits.max_string_bytes {
                    return Err(TwinPatchError::StringTooLong {
                        path: self.path_string(),
                        bytes: text.len(),
                        max: self.limits.max_string_bytes,
                    });
                }
                Ok(string_size(text))
            }
            Value::Object(members) => {
                self.check_container_depth(depth)?;
                self.new_members(members, depth, in_array)
            }
            Value::Array(items) => {
                self.check_container_depth(depth)?;
                let mut size = 0;
                for (index, item) in items.iter().enumerate() {
                    self.path.push(Segment::Index(index));
                    size += self.new_value(item, depth + 1, true)?;
                    self.path.pop();
                }
                Ok(size)
            }
        }
    }

    /// Floats are allowed without a range; integers must fit Azure's range. A literal too large for
    /// u64 reaches us as a float (serde_json without `arbitrary_precision`) and is accepted as one.
    fn check_integer(&self, number: &Number) -> Result<(), TwinPatchError> {
        let in_range = match number.as_i64() {
            Some(integer) => (MIN_TWIN_INTEGER..=MAX_TWIN_INTEGER).contains(&integer),
            None => !number.is_u64(), // above i64::MAX; a float otherwise
        };
        if in_range {
            Ok(())
        } else {
            Err(TwinPatchError::IntegerOutOfRange {
                path: self.path_string(),
            })
        }
    }
}

fn to_isize(size: usize) -> isize {
    // Sections are capped at tens of kilobytes and a patch is a parsed JSON document in memory.
    isize::try_from(size).expect("a size in memory fits in isize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_size_counts_utf8_bytes_without_control_characters() {
        let cases = [
            ("", 0),
            ("abc", 3),
            ("a\tb\nc\u{0}", 3),
            ("\u{7f}", 0),
            ("é", 2),
            ("\u{80}\u{9f}", 0),
            ("\u{a0}", 2),
            ("€", 3),
            ("😀", 4),
        ];
        for (text, expected) in cases {
            assert_eq!(string_size(text), expected, "{text:?}");
        }
    }

    #[test]
    fn value_size_follows_azure_counting() {
        let value = json!({
            "flag": true,                   // 4 + 4
            "count": 12,                    // 5 + 8
            "ratio": 0.5,                   // 5 + 8
            "name": "abc",                  // 4 + 3
            "nested": {"x": 1},             // 6 + (1 + 8)
            "list": [1, "ab", {"k": false}] // 4 + (8 + 2 + (1 + 4))
        });
        assert_eq!(value_size(&value), 8 + 13 + 13 + 7 + 15 + 19);
    }

    #[test]
    fn check_key_applies_each_rule() {
        let max = 8;
        let cases: [(&str, Result<(), InvalidKeyReason>); 10] = [
            ("abcdefgh", Ok(())),
            (
                "abcdefghi",
                Err(InvalidKeyReason::TooLong { bytes: 9, max }),
            ),
            ("ééééé", Err(InvalidKeyReason::TooLong { bytes: 10, max })),
            ("a$b", Err(InvalidKeyReason::DollarSign)),
            ("a.b", Err(InvalidKeyReason::Dot)),
            ("a b", Err(InvalidKeyReason::Space)),
            (
                "a\u{1}",
                Err(InvalidKeyReason::ControlCharacter { code_point: 1 }),
            ),
            (
                "\u{7f}",
                Err(InvalidKeyReason::ControlCharacter { code_point: 0x7f }),
            ),
            (
                "\u{85}",
                Err(InvalidKeyReason::ControlCharacter { code_point: 0x85 }),
            ),
            ("Ab-_#:é", Ok(())),
        ];
        for (key, expected) in cases {
            assert_eq!(check_key(key, max), expected, "{key:?}");
        }
    }
}
