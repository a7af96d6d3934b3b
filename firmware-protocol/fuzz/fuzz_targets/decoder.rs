//! Any bytes into the frame decoder (and the message parser behind it). Body shared with the test
//! suite: `firmware_protocol::fuzzing::decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    firmware_protocol::fuzzing::decoder(data);
});
