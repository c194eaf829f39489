//! Fuzzes the MQTT topic names, subscription filters and property bags (`fleethub_protocol::topics`,
//! `property_bag`), with the same oracle the corpus replay test uses in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        fleethub_protocol::fuzzing::check_topic(text);
    }
});
