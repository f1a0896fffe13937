//! libFuzzer entry point; the body is `shmpool_fuzz::descriptor`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmpool_fuzz::descriptor(data));
