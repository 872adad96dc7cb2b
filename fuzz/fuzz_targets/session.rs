//! libFuzzer entry for [`ftpgate::fuzzing::session`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ftpgate::fuzzing::session(data));
