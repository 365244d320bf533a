#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ordermanagement::fuzz::journal_replay(data));
