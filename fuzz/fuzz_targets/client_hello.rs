//! ClientHello framing and the server's Noise read: arbitrary bytes from the network.
#![no_main]
use floatlm_protocol::handshake::{parse_client_hello, respond};
use floatlm_protocol::vectors::{server_payload, SECRET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = parse_client_hello(data) {
        let _ = respond(&hello, SECRET.as_bytes(), &server_payload(), None);
    }
});
