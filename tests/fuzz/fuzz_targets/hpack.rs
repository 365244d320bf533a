#![no_main]

// Header blocks through the HPACK decoder.
libfuzzer_sys::fuzz_target!(|data: &[u8]| grpc_unary::fuzz::hpack(data));
