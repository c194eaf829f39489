//! Percent-encoding exactly as the official SDKs do it, and a strict decoder for input from the wire.
//!
//! The SDKs disagree on which characters they escape (Python `quote(safe="")` escapes `!'()*`,
//! Node's `encodeURIComponent` keeps them, Node's `encodeUriComponentStrict` escapes them with
//! lower-case hex), so everything we *receive* is decoded without caring which encoder produced it,
//! and everything we *send* is encoded like the Python SDK, the most conservative of them.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Python's `urllib.parse.quote(s, safe="")`: everything except `A-Z a-z 0-9 _ . - ~` is escaped,
/// space becomes `%20` (never `+`).
const PYTHON_QUOTE_NOTHING_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// Encodes like Python's `urllib.parse.quote(text, safe="")`, which is what the Python device SDK uses
/// for SAS resources, property bags and request ids.
pub fn quote(text: &str) -> String {
    utf8_percent_encode(text, PYTHON_QUOTE_NOTHING_SAFE).to_string()
}

/// Why a percent-encoded string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PercentDecodeError {
    #[error("malformed percent-escape at byte {position}")]
    MalformedEscape { position: usize },
    #[error("percent-decoded bytes are not valid utf-8")]
    InvalidUtf8,
}

/// Decodes `%XX` escapes (upper or lower case hex). `+` stays `+`: MQTT topics and SAS tokens never use
/// form encoding, and the Python SDK explicitly avoids `unquote_plus`.
///
/// Unlike Python's lenient `unquote`, a `%` that is not followed by two hex digits is an error, and so
/// are escapes that decode to invalid UTF-8: silently keeping such bytes would let two different wire
/// strings name the same device or property.
pub fn unquote_strict(text: &str) -> Result<String, PercentDecodeError> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let high = bytes.get(index + 1).and_then(|digit| hex_value(*digit));
            let low = bytes.get(index + 2).and_then(|digit| hex_value(*digit));
            match (high, low) {
                (Some(high), Some(low)) => {
                    decoded.push(high * 16 + low);
                    index += 3;
                }
                _ => return Err(PercentDecodeError::MalformedEscape { position: index }),
            }
        } else {
            decoded.push(byte);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| PercentDecodeError::InvalidUtf8)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Characters escaped when a value is placed verbatim into one `/`-separated topic segment
/// (method names, module input names): the MQTT wildcards `+` and `#` are illegal in a topic name,
/// `/` would split the segment, `?` would start the query for URL-parsing clients (Node), and `%`
/// must be escaped so that clients which percent-decode the segment (Python) get the original back.
pub(crate) const TOPIC_SEGMENT_ESCAPES: &AsciiSet = &percent_encoding::CONTROLS
    .add(b'%')
    .add(b'/')
    .add(b'#')
    .add(b'+')
    .add(b'?');

/// Characters escaped in a request id echoed into a topic query. Request ids are otherwise echoed
/// byte for byte, because every SDK correlates by comparing the echoed string with what it sent
/// (Python after `unquote`, Node after `querystring.parse`, the C SDKs raw), so re-encoding would
/// break the comparison for some SDK. Only characters that cannot survive in that position are
/// escaped: `&` ends the parameter, `#`/`+` are illegal in MQTT topic names.
pub(crate) const REQUEST_ID_ESCAPES: &AsciiSet =
    &percent_encoding::CONTROLS.add(b'&').add(b'#').add(b'+');

pub(crate) fn encode_with(text: &str, escapes: &'static AsciiSet) -> String {
    utf8_percent_encode(text, escapes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_python_quote_with_nothing_safe() {
        // Expected values printed by CPython 3.11 `urllib.parse.quote(x, safe="")`.
        let cases = [
            ("localhost/devices/dev1", "localhost%2Fdevices%2Fdev1"),
            (
                "localhost:8443/devices/dev 1",
                "localhost%3A8443%2Fdevices%2Fdev%201",
            ),
            ("a(b)!'*", "a%28b%29%21%27%2A"),
            ("d~x_y.z-w", "d~x_y.z-w"),
            ("m$edge@1", "m%24edge%401"),
            ("a&b=c/d", "a%26b%3Dc%2Fd"),
            ("ü", "%C3%BC"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(quote(input), expected, "quote({input:?})");
        }
    }

    #[test]
    fn unquote_strict_decodes_and_rejects_malformed_input() {
        let cases: [(&str, Result<&str, PercentDecodeError>); 9] = [
            ("plain", Ok("plain")),
            ("a%20b", Ok("a b")),
            ("a+b", Ok("a+b")),
            ("%2a%2A", Ok("**")),
            ("%C3%BC", Ok("ü")),
            (
                "%",
                Err(PercentDecodeError::MalformedEscape { position: 0 }),
            ),
            (
                "ab%2",
                Err(PercentDecodeError::MalformedEscape { position: 2 }),
            ),
            (
                "a%zz",
                Err(PercentDecodeError::MalformedEscape { position: 1 }),
            ),
            ("%FF", Err(PercentDecodeError::InvalidUtf8)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                unquote_strict(input).as_deref().map_err(Clone::clone),
                expected,
                "unquote_strict({input:?})"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn quote_then_unquote_is_identity(text in "\\PC*") {
            proptest::prop_assert_eq!(unquote_strict(&quote(&text)).ok(), Some(text));
        }
    }
}
