//! Fuzzes the event log's record decoder (segment bytes from disk) with the same oracle the corpus replay
//! test uses in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fleethub_eventlog::fuzzing::check_decode(data);
});
