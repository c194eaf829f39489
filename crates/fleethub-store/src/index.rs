//! The twin index of the SQLite store: an inverted index over configured twin paths, and the translation of
//! query predicates (`fleethub_query::Predicate`) into SQL that uses it.
//!
//! Every JSON node under an indexed path gets one row `(path, module, kind, value, row)`: `path` is the node's key path
//! in the query document (the service twin JSON: `tags.site`, `properties.reported.firmwareStatus`), keys
//! joined by U+001F (twin keys cannot hold control characters, so the join is unambiguous); `kind` is the JSON
//! type (`module` says whether the twin is a module's); `value` the scalar (booleans as 0/1; null, objects and arrays as a placeholder 0); `row` the
//! identity's rowid.
//! Objects and arrays have rows too, so "is defined" is one lookup whatever the node's type.
//!
//! Translation is exact for comparisons, IN, IS_DEFINED and prefix tests on indexed paths and on `deviceId`/
//! `moduleId` (plain columns); anything else becomes TRUE (the evaluator, which always runs after the store
//! for non-aggregate queries, keeps the reference semantics) and marks the translation inexact, which turns
//! off the aggregate shortcuts.

use fleethub_core::identity::Identity;
use fleethub_core::twin::TwinDocument;
use fleethub_query::ast::{CompareOp, Number};
use fleethub_query::{Predicate, Scalar};
use rusqlite::types::Value as SqlValue;
use serde_json::{Map, Value};

/// Separates keys in an index path.
const SEPARATOR: char = '\u{1f}';

/// Which twin paths the store indexes. Paths are query-document paths (`tags`, `properties.reported.x`,
/// `status`, `connectionState`); every node under each is indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedPaths {
    prefixes: Vec<Vec<String>>,
}

impl Default for IndexedPaths {
    /// `deviceId` and `moduleId` are always indexed (they are the key); by default also all tags, the device's
    /// status and connection state, and the reported and desired firmware fields the firmware update flow uses.
    fn default() -> Self {
        Self::parse(&[
            "tags",
            "status",
            "connectionState",
            "properties.reported.firmwareStatus",
            "properties.reported.firmware",
            "properties.reported.firmwareVersion",
            "properties.desired.firmware",
        ])
        .expect("the default indexed paths are valid")
    }
}

/// The sections of a twin an index path can live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Tags,
    Desired,
    Reported,
    Identity,
}

impl IndexedPaths {
    /// Dotted paths, e.g. `tags`, `properties.reported.firmwareStatus`. Keys with dots cannot be named here.
    pub fn parse(paths: &[&str]) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        for path in paths {
            let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
            let valid = match keys.first().map(String::as_str) {
                Some("tags") => true,
                Some("properties") => {
                    keys.len() >= 3
                        && matches!(keys[1].as_str(), "desired" | "reported")
                        && !keys[2].starts_with('$')
                }
                Some("status" | "connectionState") => keys.len() == 1,
                _ => false,
            };
            if !valid
                || keys
                    .iter()
                    .any(|key| key.is_empty() || key.starts_with('$'))
            {
                return Err(format!(
                    "cannot index {path:?}: index tags.*, properties.desired.<name>..., properties.reported.<name>..., status or connectionState"
                ));
            }
            prefixes.push(keys);
        }
        Ok(Self { prefixes })
    }

    /// A stable text form, stored to notice configuration changes (which rebuild the index).
    pub(crate) fn fingerprint(&self) -> String {
        let mut paths: Vec<String> = self.prefixes.iter().map(|keys| keys.join(".")).collect();
        paths.sort();
        paths.join(",")
    }

    fn covers(&self, path: &[String]) -> bool {
        !path.iter().any(|key| key.starts_with('$'))
            && self
                .prefixes
                .iter()
                .any(|prefix| path.len() >= prefix.len() && path[..prefix.len()] == prefix[..])
    }

    /// The indexed paths (as positions, for [`entries`](Self::entries) and [`roots`](Self::roots)) rooted in
    /// `sections`.
    pub(crate) fn select(&self, sections: &[Section]) -> Vec<usize> {
        (0..self.prefixes.len())
            .filter(|&index| sections.contains(&section_of(&self.prefixes[index])))
            .collect()
    }

    /// The indexed reported paths a reported patch can change: those under one of its top-level keys. A patch
    /// leaves every other reported key as it was, so their index rows stay.
    pub(crate) fn select_reported_patch(&self, patch: &Value) -> Vec<usize> {
        let Some(patch) = patch.as_object() else {
            return Vec::new();
        };
        (0..self.prefixes.len())
            .filter(|&index| {
                let prefix = &self.prefixes[index];
                section_of(prefix) == Section::Reported && patch.contains_key(prefix[2].as_str())
            })
            .collect()
    }

    /// Index rows of one identity for the `selected` indexed paths.
    pub(crate) fn entries(
        &self,
        identity: &Identity,
        twin: &TwinDocument,
        selected: &[usize],
    ) -> Vec<(String, i64, SqlValue)> {
        let mut rows = Vec::new();
        for prefix in selected.iter().map(|&index| &self.prefixes[index]) {
            let section = section_of(prefix);
            let node = match section {
                Section::Tags => lookup(twin.tags(), &prefix[1..]),
                Section::Desired => lookup(twin.desired_properties(), &prefix[2..]),
                Section::Reported => lookup(twin.reported_properties(), &prefix[2..]),
                Section::Identity => {
                    let text = match prefix[0].as_str() {
                        "status" => serde_json::to_value(identity.status),
                        _ => serde_json::to_value(identity.connection_state),
                    };
                    text.ok()
                }
            };
            if let Some(node) = node {
                collect(&prefix.join(&SEPARATOR.to_string()), &node, &mut rows);
            }
        }
        rows
    }

    /// The `selected` index paths (joined), to delete before re-inserting.
    pub(crate) fn roots(&self, selected: &[usize]) -> Vec<String> {
        selected
            .iter()
            .map(|&index| self.prefixes[index].join(&SEPARATOR.to_string()))
            .collect()
    }
}

fn section_of(prefix: &[String]) -> Section {
    match (prefix[0].as_str(), prefix.get(1).map(String::as_str)) {
        ("tags", _) => Section::Tags,
        ("properties", Some("desired")) => Section::Desired,
        ("properties", _) => Section::Reported,
        _ => Section::Identity,
    }
}

fn lookup(map: &Map<String, Value>, keys: &[String]) -> Option<Value> {
    let Some((first, rest)) = keys.split_first() else {
        return Some(Value::Object(map.clone()));
    };
    let mut node = map.get(first.as_str())?;
    for key in rest {
        node = node.as_object()?.get(key.as_str())?;
    }
    Some(node.clone())
}

fn collect(path: &str, node: &Value, rows: &mut Vec<(String, i64, SqlValue)>) {
    let (kind, value) = scalar_row(node);
    rows.push((path.to_owned(), kind, value));
    if let Value::Object(children) = node {
        for (key, child) in children {
            collect(&format!("{path}{SEPARATOR}{key}"), child, rows);
        }
    }
}

const KIND_NULL: i64 = 0;
const KIND_BOOL: i64 = 1;
const KIND_NUMBER: i64 = 2;
const KIND_STRING: i64 = 3;
const KIND_ARRAY: i64 = 4;
const KIND_OBJECT: i64 = 5;

fn scalar_row(node: &Value) -> (i64, SqlValue) {
    match node {
        // The table's key columns cannot hold NULL (WITHOUT ROWID); the kind says what the row is, so
        // nulls, arrays and objects store a placeholder 0 that no comparison reads.
        Value::Null => (KIND_NULL, SqlValue::Integer(0)),
        Value::Bool(value) => (KIND_BOOL, SqlValue::Integer(i64::from(*value))),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => (KIND_NUMBER, SqlValue::Integer(integer)),
            None => (
                KIND_NUMBER,
                SqlValue::Real(number.as_f64().unwrap_or(f64::NAN)),
            ),
        },
        Value::String(text) => (KIND_STRING, SqlValue::Text(text.clone())),
        Value::Array(_) => (KIND_ARRAY, SqlValue::Integer(0)),
        Value::Object(_) => (KIND_OBJECT, SqlValue::Integer(0)),
    }
}

fn scalar_sql(scalar: &Scalar) -> (i64, SqlValue) {
    match scalar {
        Scalar::Null => (KIND_NULL, SqlValue::Null),
        Scalar::Bool(value) => (KIND_BOOL, SqlValue::Integer(i64::from(*value))),
        Scalar::Number(Number::Int(integer)) => (KIND_NUMBER, SqlValue::Integer(*integer)),
        Scalar::Number(Number::Float(float)) => (KIND_NUMBER, SqlValue::Real(*float)),
        Scalar::String(text) => (KIND_STRING, SqlValue::Text(text.clone())),
    }
}

/// SQL for a predicate over the `identities` table aliased `i`: the text, its parameters, and whether it is
/// exact (selects exactly the rows whose twins satisfy the predicate).
pub(crate) struct Translation {
    pub sql: String,
    pub parameters: Vec<SqlValue>,
    pub exact: bool,
    /// 1 for modules' twins, 0 for devices'.
    module: i64,
    /// Index lookups as correlated EXISTS probes instead of IN sets (see `index_lookup`).
    correlated: bool,
}

/// `modules`: whether the query is over modules' twins (the index keeps them apart, so a lookup constrains it
/// and stays on one contiguous index range).
pub(crate) fn translate(
    predicate: &Predicate,
    indexed: &IndexedPaths,
    modules: bool,
) -> Translation {
    translate_as(predicate, indexed, modules, false)
}

/// The same predicate with correlated lookups; same parameters, in the same order.
pub(crate) fn translate_correlated(
    predicate: &Predicate,
    indexed: &IndexedPaths,
    modules: bool,
) -> Translation {
    translate_as(predicate, indexed, modules, true)
}

fn translate_as(
    predicate: &Predicate,
    indexed: &IndexedPaths,
    modules: bool,
    correlated: bool,
) -> Translation {
    let mut translation = Translation {
        sql: String::new(),
        parameters: Vec::new(),
        exact: true,
        module: i64::from(modules),
        correlated,
    };
    let sql = translate_into(predicate, indexed, &mut translation);
    translation.sql = sql;
    translation
}

/// A twin-index lookup as SQL over `identities i`: `i.id IN (...)` (SQLite builds the matching row set first:
/// best when it is small) or, correlated, `EXISTS (...)` probing the index row by row (best when walking the
/// identities in key order through a broad filter).
fn index_lookup(out: &Translation, condition: &str) -> String {
    if out.correlated {
        format!(
            "EXISTS (SELECT 1 FROM twin_index INDEXED BY twin_index_by_row WHERE row = i.id AND module = {} AND {condition})",
            out.module
        )
    } else {
        format!(
            "i.id IN (SELECT row FROM twin_index WHERE module = {} AND {condition})",
            out.module
        )
    }
}

fn parameter(translation: &mut Translation, value: SqlValue) -> String {
    translation.parameters.push(value);
    format!("?{}", translation.parameters.len())
}

fn translate_into(predicate: &Predicate, indexed: &IndexedPaths, out: &mut Translation) -> String {
    match predicate {
        Predicate::True => "1".into(),
        Predicate::And(parts) if parts.is_empty() => "1".into(),
        Predicate::Or(parts) if parts.is_empty() => "0".into(),
        Predicate::And(parts) => {
            let parts: Vec<String> = parts
                .iter()
                .map(|part| translate_into(part, indexed, out))
                .collect();
            format!("({})", parts.join(" AND "))
        }
        Predicate::Or(parts) => {
            let parts: Vec<String> = parts
                .iter()
                .map(|part| translate_into(part, indexed, out))
                .collect();
            format!("({})", parts.join(" OR "))
        }
        Predicate::Compare { path, op, value } => {
            if let Some(column) = key_column(path) {
                return compare_column(column, *op, value, out);
            }
            if !indexed.covers(path) {
                out.exact = false;
                return "1".into();
            }
            let (kind, sql_value) = scalar_sql(value);
            // null only equals null: `<=` and `>=` hold, the strict and not-equal comparisons never do.
            // Decided before any parameter is bound: every bound parameter must appear in the SQL.
            if kind == KIND_NULL
                && !matches!(
                    op,
                    CompareOp::Equal | CompareOp::LessOrEqual | CompareOp::GreaterOrEqual
                )
            {
                return "0".into();
            }
            let path_parameter = parameter(out, SqlValue::Text(join(path)));
            let kind_parameter = parameter(out, SqlValue::Integer(kind));
            let condition = if kind == KIND_NULL {
                String::new()
            } else {
                let value_parameter = parameter(out, sql_value);
                format!(" AND value {} {value_parameter}", sql_operator(*op))
            };
            index_lookup(
                out,
                &format!("path = {path_parameter} AND kind = {kind_parameter}{condition}"),
            )
        }
        Predicate::In { path, values } => {
            if values.is_empty() {
                return "0".into();
            }
            let parts: Vec<Predicate> = values
                .iter()
                .map(|value| Predicate::Compare {
                    path: path.clone(),
                    op: CompareOp::Equal,
                    value: value.clone(),
                })
                .collect();
            translate_into(&Predicate::Or(parts), indexed, out)
        }
        Predicate::IsDefined(path) | Predicate::IsUndefined(path) => {
            let defined = matches!(predicate, Predicate::IsDefined(_));
            let sql = if let Some(column) = key_column(path) {
                // deviceId is always defined; moduleId only for modules.
                match column {
                    "device_id" => "1".to_owned(),
                    _ => "i.module_id != ''".to_owned(),
                }
            } else if indexed.covers(path) {
                let path_parameter = parameter(out, SqlValue::Text(join(path)));
                index_lookup(out, &format!("path = {path_parameter}"))
            } else {
                out.exact = false;
                return "1".into();
            };
            if defined { sql } else { format!("NOT ({sql})") }
        }
        Predicate::StartsWith { path, prefix } => {
            if key_column(path).is_none() && !indexed.covers(path) {
                out.exact = false;
                return "1".into();
            }
            let prefix_parameter = parameter(out, SqlValue::Text(prefix.clone()));
            if let Some(column) = key_column(path) {
                // A device has no moduleId: undefined, so no prefix test holds.
                let defined = if column == "module_id" {
                    "i.module_id != '' AND "
                } else {
                    ""
                };
                return format!(
                    "({defined}i.{column} >= {prefix_parameter} AND substr(i.{column}, 1, length({prefix_parameter})) = {prefix_parameter})"
                );
            }
            let path_parameter = parameter(out, SqlValue::Text(join(path)));
            index_lookup(
                out,
                &format!(
                    "path = {path_parameter} AND kind = {KIND_STRING} \
                     AND value >= {prefix_parameter} AND substr(value, 1, length({prefix_parameter})) = {prefix_parameter}"
                ),
            )
        }
    }
}

/// `deviceId` and `moduleId` are columns, always exact. A module's `deviceId` is its device's id.
fn key_column(path: &[String]) -> Option<&'static str> {
    match path {
        [key] if key == "deviceId" => Some("device_id"),
        [key] if key == "moduleId" => Some("module_id"),
        _ => None,
    }
}

fn compare_column(column: &str, op: CompareOp, value: &Scalar, out: &mut Translation) -> String {
    match value {
        Scalar::String(text) => {
            let text_parameter = parameter(out, SqlValue::Text(text.clone()));
            let condition = format!("i.{column} {} {text_parameter}", sql_operator(op));
            // Devices have no moduleId: it is undefined there, so nothing compares.
            if column == "module_id" {
                format!("(i.module_id != '' AND {condition})")
            } else {
                condition
            }
        }
        // Ids are strings: any other type never compares.
        _ => "0".into(),
    }
}

fn sql_operator(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Equal => "=",
        CompareOp::NotEqual => "!=",
        CompareOp::Less => "<",
        CompareOp::LessOrEqual => "<=",
        CompareOp::Greater => ">",
        CompareOp::GreaterOrEqual => ">=",
    }
}

fn join(path: &[String]) -> String {
    path.join(&SEPARATOR.to_string())
}

/// The JSON value of an index row, for GROUP BY answered from the index.
pub(crate) fn row_json(kind: i64, value: SqlValue) -> Option<Value> {
    Some(match (kind, value) {
        (KIND_NULL, _) => Value::Null,
        (KIND_BOOL, SqlValue::Integer(flag)) => Value::Bool(flag != 0),
        (KIND_NUMBER, SqlValue::Integer(integer)) => Value::from(integer),
        (KIND_NUMBER, SqlValue::Real(real)) => {
            serde_json::Number::from_f64(real).map(Value::Number)?
        }
        (KIND_STRING, SqlValue::Text(text)) => Value::String(text),
        _ => return None,
    })
}

/// The index path for a query path, when the index covers it (for GROUP BY over the index).
pub(crate) fn indexed_path(path: &[String], indexed: &IndexedPaths) -> Option<String> {
    indexed.covers(path).then(|| join(path))
}
