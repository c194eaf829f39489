//! Fuzzes the MQTT decoder with the same oracle the corpus replay test uses in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fleethub_mqtt::fuzzing::check_decode(data);
});
