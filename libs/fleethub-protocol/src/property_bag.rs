//! Message property bags: the `key=value&...` segment that carries system and application properties in
//! telemetry, cloud-to-device and module-input topics (PROTOCOL.md §2.5).
//!
//! Encoding follows the Python device SDK (`mqtt_topic_iothub.py`, `encode_message_properties_in_topic`):
//! system properties first in a fixed order, then application properties sorted, every key and value
//! `quote(safe="")`-encoded (space is `%20`, never `+`). Decoding accepts what any SDK sends: Node keeps
//! `!'()*` raw and its own key order, Java escapes with `URLEncoder` then turns `+` into `%20`.

use std::fmt;

use crate::percent::{PercentDecodeError, quote, unquote_strict};

/// Wire keys of the system properties.
pub mod system_property {
    pub const MESSAGE_ID: &str = "$.mid";
    pub const CORRELATION_ID: &str = "$.cid";
    pub const USER_ID: &str = "$.uid";
    pub const CONTENT_TYPE: &str = "$.ct";
    pub const CONTENT_ENCODING: &str = "$.ce";
    /// Absolute expiry time of the message (ISO 8601 text, passed through as-is).
    pub const EXPIRY_TIME_UTC: &str = "$.exp";
    /// Module output name on module telemetry.
    pub const OUTPUT_NAME: &str = "$.on";
    /// Destination, set by the hub on cloud-to-device messages (`/devices/{id}/messages/devicebound`).
    pub const TO: &str = "$.to";
    /// Interface id, used by security messages (`urn:azureiot:Security:SecurityAgent:1`).
    pub const INTERFACE_ID: &str = "$.ifid";

    /// Order in which [`super::PropertyBag::encode`] writes system properties. It is the Python SDK's
    /// order (`$.on, $.mid, $.cid, $.uid, $.ct, $.ce, $.ifid, $.exp`) with `$.to`, which only the hub
    /// sends, after `$.mid` as in the cloud-to-device capture of PROTOCOL.md §2.5.
    pub const ENCODING_ORDER: [&str; 9] = [
        OUTPUT_NAME,
        MESSAGE_ID,
        TO,
        CORRELATION_ID,
        USER_ID,
        CONTENT_TYPE,
        CONTENT_ENCODING,
        INTERFACE_ID,
        EXPIRY_TIME_UTC,
    ];
}

/// Why a property bag could not be decoded. Positions are byte offsets into the whole bag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyBagError {
    #[error("malformed percent-escape at byte {position} of the property bag")]
    MalformedEscape { position: usize },
    #[error("property bag entry {entry:?} does not decode to valid utf-8")]
    InvalidUtf8 { entry: String },
}

/// An ordered list of message properties. A key may have no value (`key` without `=` on the wire), which
/// the SDKs surface as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyBag {
    entries: Vec<(String, Option<String>)>,
}

impl PropertyBag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entries(&self) -> &[(String, Option<String>)] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<(String, Option<String>)> {
        self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
    }

    /// The value of the first entry with `key`; `None` if absent or present without a value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(entry_key, _)| entry_key == key)
            .and_then(|(_, value)| value.as_deref())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(entry_key, _)| entry_key == key)
    }

    /// Sets `key` to `value`, replacing the first existing entry (keeping its position) or appending.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.insert_entry(key.into(), Some(value.into()));
    }

    /// Sets `key` with no value.
    pub fn insert_without_value(&mut self, key: impl Into<String>) {
        self.insert_entry(key.into(), None);
    }

    fn insert_entry(&mut self, key: String, value: Option<String>) {
        match self
            .entries
            .iter_mut()
            .find(|(entry_key, _)| *entry_key == key)
        {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Builder form of [`PropertyBag::insert`].
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Removes every entry with `key`, returning the first one's value.
    pub fn remove(&mut self, key: &str) -> Option<Option<String>> {
        let position = self
            .entries
            .iter()
            .position(|(entry_key, _)| entry_key == key)?;
        let (_, value) = self.entries.remove(position);
        self.entries.retain(|(entry_key, _)| entry_key != key);
        Some(value)
    }

    pub fn message_id(&self) -> Option<&str> {
        self.get(system_property::MESSAGE_ID)
    }
    pub fn correlation_id(&self) -> Option<&str> {
        self.get(system_property::CORRELATION_ID)
    }
    pub fn user_id(&self) -> Option<&str> {
        self.get(system_property::USER_ID)
    }
    pub fn content_type(&self) -> Option<&str> {
        self.get(system_property::CONTENT_TYPE)
    }
    pub fn content_encoding(&self) -> Option<&str> {
        self.get(system_property::CONTENT_ENCODING)
    }
    pub fn expiry_time_utc(&self) -> Option<&str> {
        self.get(system_property::EXPIRY_TIME_UTC)
    }
    pub fn output_name(&self) -> Option<&str> {
        self.get(system_property::OUTPUT_NAME)
    }
    pub fn to(&self) -> Option<&str> {
        self.get(system_property::TO)
    }
    pub fn interface_id(&self) -> Option<&str> {
        self.get(system_property::INTERFACE_ID)
    }

    /// Entries whose key is not one of the system properties above (application properties; keys such as
    /// `iothub-ack` or `$.ctime` that the hub does not interpret are included).
    pub fn custom_properties(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.iter()
            .filter(|(key, _)| !system_property::ENCODING_ORDER.contains(key))
    }

    /// Encodes like the Python SDK: system properties in [`system_property::ENCODING_ORDER`], then the
    /// rest sorted by key (then value, as Python sorts `(key, value)` tuples), all `quote(safe="")`-encoded.
    /// An entry without a value is written as the bare key.
    pub fn encode(&self) -> String {
        let mut system: Vec<(usize, &(String, Option<String>))> = Vec::new();
        let mut custom: Vec<&(String, Option<String>)> = Vec::new();
        for entry in &self.entries {
            match system_property::ENCODING_ORDER
                .iter()
                .position(|key| *key == entry.0)
            {
                Some(rank) => system.push((rank, entry)),
                None => custom.push(entry),
            }
        }
        // Stable sorts keep duplicates of one key in insertion order.
        system.sort_by_key(|(rank, _)| *rank);
        custom.sort();
        let mut encoded = String::new();
        for (key, value) in system.into_iter().map(|(_, entry)| entry).chain(custom) {
            if !encoded.is_empty() {
                encoded.push('&');
            }
            encoded.push_str(&quote(key));
            if let Some(value) = value {
                encoded.push('=');
                encoded.push_str(&quote(value));
            }
        }
        encoded
    }

    /// Decodes a bag: split on `&`, each entry at its first `=`, keys and values percent-decoded with `+`
    /// kept as `+`. An entry without `=` gets `None`; `key=` gets `Some("")`. Empty entries (`a=1&&b=2`,
    /// a trailing `&`) are skipped. Malformed escapes and invalid UTF-8 are errors.
    pub fn decode(encoded: &str) -> Result<PropertyBag, PropertyBagError> {
        let mut entries = Vec::new();
        let mut offset = 0;
        for entry in encoded.split('&') {
            let entry_offset = offset;
            offset += entry.len() + 1;
            if entry.is_empty() {
                continue;
            }
            let decode_part = |part: &str, part_offset: usize| {
                unquote_strict(part).map_err(|error| match error {
                    PercentDecodeError::MalformedEscape { position } => {
                        PropertyBagError::MalformedEscape {
                            position: part_offset + position,
                        }
                    }
                    PercentDecodeError::InvalidUtf8 => PropertyBagError::InvalidUtf8 {
                        entry: entry.to_owned(),
                    },
                })
            };
            match entry.split_once('=') {
                Some((key, value)) => {
                    let key = decode_part(key, entry_offset)?;
                    let value = decode_part(value, entry_offset + key_len_on_wire(entry) + 1)?;
                    entries.push((key, Some(value)));
                }
                None => entries.push((decode_part(entry, entry_offset)?, None)),
            }
        }
        Ok(PropertyBag { entries })
    }

    /// The order [`PropertyBag::encode`] writes entries in; `decode(encode(bag)) == bag.normalized()`.
    pub fn normalized(&self) -> PropertyBag {
        // Encoding is a pure function of the multiset of entries, so decoding it gives the canonical order.
        // Decoding our own encoding cannot fail: it contains only valid escapes of UTF-8 text.
        PropertyBag::decode(&self.encode()).expect("decoding our own encoding cannot fail")
    }
}

fn key_len_on_wire(entry: &str) -> usize {
    entry.find('=').unwrap_or(entry.len())
}

impl fmt::Display for PropertyBag {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.encode())
    }
}

impl From<Vec<(String, Option<String>)>> for PropertyBag {
    fn from(entries: Vec<(String, Option<String>)>) -> Self {
        Self { entries }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for PropertyBag {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iterator: I) -> Self {
        let mut bag = PropertyBag::new();
        for (key, value) in iterator {
            bag.insert(key, value);
        }
        bag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bag(entries: &[(&str, Option<&str>)]) -> PropertyBag {
        entries
            .iter()
            .map(|(key, value)| (key.to_string(), value.map(str::to_owned)))
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn encode_matches_the_python_sdk_capture() {
        // PROTOCOL.md §2.5, captured from azure-iot-device 2.14.0: a Message with these attributes.
        let message = PropertyBag::new()
            .with("alert", "high temp")
            .with("zz", "a&b=c/d")
            .with("$.exp", "2030-01-02T03:04:05+00:00")
            .with("$.ce", "utf-8")
            .with("$.ct", "application/json")
            .with("$.uid", "user-1")
            .with("$.cid", "corr-1")
            .with("$.mid", "mid-1");
        assert_eq!(
            message.encode(),
            "%24.mid=mid-1&%24.cid=corr-1&%24.uid=user-1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-02T03%3A04%3A05%2B00%3A00&alert=high%20temp&zz=a%26b%3Dc%2Fd"
        );
        let module_output = PropertyBag::new().with("$.mid", "m-1").with("$.on", "out1");
        assert_eq!(module_output.encode(), "%24.on=out1&%24.mid=m-1");
        assert_eq!(PropertyBag::new().encode(), "");
    }

    #[test]
    fn encode_writes_bare_keys_and_sorts_custom_keys_by_code_point() {
        let properties = bag(&[
            ("b", Some("2")),
            ("B", Some("1")),
            ("flag", None),
            ("$.to", Some("/devices/d/messages/devicebound")),
            ("$.mid", Some("x")),
        ]);
        assert_eq!(
            properties.encode(),
            "%24.mid=x&%24.to=%2Fdevices%2Fd%2Fmessages%2Fdevicebound&B=1&b=2&flag"
        );
    }

    #[test]
    fn decode_table() {
        let cases: Vec<(&str, Result<PropertyBag, PropertyBagError>)> = vec![
            ("", Ok(bag(&[]))),
            // PROTOCOL.md §2.5: cloud-to-device delivery the Python SDK parsed correctly.
            (
                "%24.mid=msg-1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2Fdevicebound&%24.ct=application%2Fjson&%24.ce=utf-8&prop1=val%201",
                Ok(bag(&[
                    ("$.mid", Some("msg-1")),
                    ("$.to", Some("/devices/dev1/messages/devicebound")),
                    ("$.ct", Some("application/json")),
                    ("$.ce", Some("utf-8")),
                    ("prop1", Some("val 1")),
                ])),
            ),
            // Node's querystring keeps !'()* raw and uses its own order.
            (
                "%24.mid=a%20b!'()*~%2F&%24.on=out1",
                Ok(bag(&[
                    ("$.mid", Some("a b!'()*~/")),
                    ("$.on", Some("out1")),
                ])),
            ),
            ("a+b=c+d", Ok(bag(&[("a+b", Some("c+d"))]))),
            ("flag&k=", Ok(bag(&[("flag", None), ("k", Some(""))]))),
            ("k=a=b", Ok(bag(&[("k", Some("a=b"))]))),
            ("a=1&&b=2&", Ok(bag(&[("a", Some("1")), ("b", Some("2"))]))),
            ("%2a=%2A", Ok(bag(&[("*", Some("*"))]))),
            (
                "a=1&b=%zz",
                Err(PropertyBagError::MalformedEscape { position: 6 }),
            ),
            (
                "a=1&%4=x",
                Err(PropertyBagError::MalformedEscape { position: 4 }),
            ),
            (
                "bad%",
                Err(PropertyBagError::MalformedEscape { position: 3 }),
            ),
            (
                "k=%C3",
                Err(PropertyBagError::InvalidUtf8 {
                    entry: "k=%C3".to_owned(),
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(PropertyBag::decode(input), expected, "decode({input:?})");
        }
    }

    #[test]
    fn system_property_accessors() {
        let properties = PropertyBag::decode(
            "%24.mid=m&%24.cid=c&%24.uid=u&%24.ct=t&%24.ce=e&%24.exp=x&%24.on=o&%24.to=%2Fd&%24.ifid=i&iothub-ack=full&custom",
        )
        .expect("valid");
        assert_eq!(properties.message_id(), Some("m"));
        assert_eq!(properties.correlation_id(), Some("c"));
        assert_eq!(properties.user_id(), Some("u"));
        assert_eq!(properties.content_type(), Some("t"));
        assert_eq!(properties.content_encoding(), Some("e"));
        assert_eq!(properties.expiry_time_utc(), Some("x"));
        assert_eq!(properties.output_name(), Some("o"));
        assert_eq!(properties.to(), Some("/d"));
        assert_eq!(properties.interface_id(), Some("i"));
        assert_eq!(
            properties.custom_properties().collect::<Vec<_>>(),
            vec![("iothub-ack", Some("full")), ("custom", None)]
        );
    }

    #[test]
    fn insert_replaces_in_place_and_remove_removes_all() {
        let mut properties = bag(&[("a", Some("1")), ("b", Some("2")), ("a", Some("3"))]);
        properties.insert("a", "9");
        assert_eq!(
            properties,
            bag(&[("a", Some("9")), ("b", Some("2")), ("a", Some("3"))])
        );
        assert_eq!(properties.remove("a"), Some(Some("9".to_owned())));
        assert_eq!(properties, bag(&[("b", Some("2"))]));
        assert_eq!(properties.remove("zzz"), None);
    }

    fn bag_strategy() -> impl proptest::strategy::Strategy<Value = PropertyBag> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("$.mid".to_owned()),
            Just("$.cid".to_owned()),
            Just("$.on".to_owned()),
            Just("$.to".to_owned()),
            "\\PC{1,12}",
        ];
        proptest::collection::vec((key, proptest::option::of("\\PC{0,12}")), 0..8)
            .prop_map(PropertyBag::from)
    }

    proptest::proptest! {
        #[test]
        fn decode_of_encode_is_the_normalized_bag(properties in bag_strategy()) {
            let decoded = PropertyBag::decode(&properties.encode()).expect("own encoding decodes");
            proptest::prop_assert_eq!(decoded.len(), properties.len());
            proptest::prop_assert_eq!(&decoded, &properties.normalized());
            // Encoding is canonical: re-encoding the decoded bag gives the same text.
            proptest::prop_assert_eq!(decoded.encode(), properties.encode());
        }

        #[test]
        fn encoded_bags_never_contain_topic_breaking_characters(properties in bag_strategy()) {
            let encoded = properties.encode();
            proptest::prop_assert!(!encoded.contains(['/', '#', '+', ' ', '?']));
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = PropertyBag::decode(&text);
        }
    }
}
