#![no_main]

// A gRPC reply's fields and body, decoded and scrubbed.
libfuzzer_sys::fuzz_target!(|data: &[u8]| grpc_unary::fuzz::grpc_reply(data));
