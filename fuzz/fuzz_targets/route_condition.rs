//! Fuzzes the route condition parser and its evaluation on sample messages, with the same oracle the
//! corpus replay test uses in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        fleethub_query::fuzzing::check_route_condition(text);
    }
});
