//! JSON given on the command line: inline, `@FILE` or `-` (stdin), parsed with errors that say where the
//! problem is and what was being read.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde_json::Value;

/// Reads and parses the JSON `argument` of `what` (e.g. "the patch", "--payload"): `@FILE` reads the file,
/// `-` reads stdin, anything else is the JSON itself.
pub(crate) fn read_json_argument(what: &str, argument: &str) -> anyhow::Result<Value> {
    if argument == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("read {what} from stdin"))?;
        return parse_json(&format!("{what} (from stdin)"), &text);
    }
    if let Some(path) = argument.strip_prefix('@') {
        let text = std::fs::read_to_string(Path::new(path))
            .map_err(|error| anyhow!("cannot read {what} from {path}: {error}"))?;
        return parse_json(&format!("{what} (from {path})"), &text);
    }
    parse_json(what, argument)
}

/// Parses `text` as one JSON value. The error names `what`, the line and column, and for the usual mistake
/// (a bare word meant as a string) the fix.
pub(crate) fn parse_json(what: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|error| {
        let mut message = format!("{what} is not valid JSON: {error}");
        let trimmed = text.trim_start();
        let looks_like_bare_word = error.line() == 1
            && trimmed
                .chars()
                .next()
                .is_some_and(|first| first.is_alphabetic() || first == '\'');
        if looks_like_bare_word {
            message.push_str(
                "; a JSON string needs double quotes (in a shell: '\"text\"'), an object braces ('{\"key\": 1}')",
            );
        } else if text.trim().is_empty() {
            message.push_str("; it is empty");
        } else if let Some(excerpt) = excerpt_at(text, error.line(), error.column()) {
            message.push('\n');
            message.push_str(&excerpt);
        }
        anyhow!(message)
    })
}

/// The line `line` (1-based) with a caret under `column`, when it is short enough to be worth showing.
fn excerpt_at(text: &str, line: usize, column: usize) -> Option<String> {
    let line_text = text.lines().nth(line.checked_sub(1)?)?;
    if line_text.chars().count() > 120 || column == 0 {
        return None;
    }
    let caret_at = column.saturating_sub(1).min(line_text.chars().count());
    Some(format!("  {line_text}\n  {}^", " ".repeat(caret_at)))
}

/// Requires a JSON object, naming `what` when it is something else.
pub(crate) fn require_object<'a>(
    what: &str,
    value: &'a Value,
) -> anyhow::Result<&'a serde_json::Map<String, Value>> {
    value.as_object().ok_or_else(|| {
        anyhow!(
            "{what} must be a JSON object, not {}",
            describe_json_type(value)
        )
    })
}

pub(crate) fn describe_json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_json_of_any_type_parses() {
        for (text, expected) in [
            ("null", json!(null)),
            (" {\"a\": 1} ", json!({"a": 1})),
            ("\"text\"", json!("text")),
            ("[1, 2]", json!([1, 2])),
            ("1.5", json!(1.5)),
        ] {
            assert_eq!(parse_json("x", text).unwrap(), expected, "{text}");
        }
    }

    /// input -> what the message must say.
    #[test]
    fn invalid_json_names_the_position_and_the_fix() {
        let cases: [(&str, &[&str]); 7] = [
            (
                "{\"fw\": \"2.0\",}",
                &[
                    "the patch is not valid JSON",
                    "line 1 column 14",
                    "  {\"fw\": \"2.0\",}\n               ^",
                ],
            ),
            (
                "{\"fw\": 2.0",
                &["EOF while parsing an object at line 1 column 10"],
            ),
            (
                "hello",
                &["expected value at line 1 column 1", "double quotes"],
            ),
            ("nope", &["line 1 column 2", "double quotes"]),
            ("'{\"a\":1}'", &["double quotes"]),
            ("", &["EOF while parsing a value", "it is empty"]),
            (
                "{\n  \"a\": 1\n  \"b\": 2\n}",
                &["line 3 column 3", "  \"b\": 2\n    ^"],
            ),
        ];
        for (text, needles) in cases {
            let message = parse_json("the patch", text).unwrap_err().to_string();
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "{text:?}: {message:?} lacks {needle:?}"
                );
            }
        }
    }

    #[test]
    fn files_are_read_and_missing_files_named() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("patch.json");
        std::fs::write(&path, "{\"tags\": {\"a\": 1}}").unwrap();
        let argument = format!("@{}", path.display());
        assert_eq!(
            read_json_argument("the patch", &argument).unwrap(),
            json!({"tags": {"a": 1}})
        );
        let missing = format!("@{}", directory.path().join("nope.json").display());
        let message = read_json_argument("the patch", &missing)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("cannot read the patch from "),
            "{message}"
        );
        assert!(message.contains("nope.json"), "{message}");

        std::fs::write(&path, "{\"tags\": }").unwrap();
        let message = read_json_argument("the patch", &argument)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("(from ") && message.contains("line 1 column 10"),
            "{message}"
        );
    }

    #[test]
    fn objects_are_required_where_the_hub_needs_them() {
        assert!(require_object("the patch", &json!({})).is_ok());
        let message = require_object("the patch", &json!([1]))
            .unwrap_err()
            .to_string();
        assert_eq!(message, "the patch must be a JSON object, not an array");
    }
}
