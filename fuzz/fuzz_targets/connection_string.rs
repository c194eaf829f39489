//! Fuzzes the connection string parsers (`fleethub_protocol::connection_string`), with the same oracle the corpus replay test uses in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        fleethub_protocol::fuzzing::check_connection_string(text);
    }
});
