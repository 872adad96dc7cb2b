//! libFuzzer entry for [`ftpgate::fuzzing::codec`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ftpgate::fuzzing::codec(data));
