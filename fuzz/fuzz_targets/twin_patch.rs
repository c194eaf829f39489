//! Fuzzes the twin writes (reported and desired patches, service PATCH and PUT bodies) of
//! `fleethub_core::twin`, with the same oracle the corpus replay test uses in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fleethub_core::twin::fuzzing::check_twin_patch(data);
});
