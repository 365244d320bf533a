#![no_main]

// The HTTP/2 client against a server that sends these bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| grpc_unary::fuzz::h2_client(data));
