//! A script of timed byte chunks into a host session. Body shared with the test suite:
//! `firmware_protocol::fuzzing::host_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = firmware_protocol::fuzzing::host_session(data);
});
