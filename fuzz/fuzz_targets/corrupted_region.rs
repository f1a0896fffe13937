//! libFuzzer entry point; the body is `shmpool_fuzz::corrupted_region`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmpool_fuzz::corrupted_region(data));
