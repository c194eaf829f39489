//! Fuzzes the SAS token parser, token resources and shared access keys (`fleethub_protocol::sas`), with the same oracle the corpus replay test uses in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        fleethub_protocol::fuzzing::check_sas_token(text);
    }
});
