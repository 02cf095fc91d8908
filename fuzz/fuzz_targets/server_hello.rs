//! The client's read of a ServerHello: arbitrary bytes from a (possibly hostile) server.
#![no_main]
use floatlm_protocol::handshake::ClientHandshake;
use floatlm_protocol::vectors::{CLIENT_EPHEMERAL, IDENTITY_ID, SECRET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (client, _) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), Some(&CLIENT_EPHEMERAL)).unwrap();
    let _ = client.finish(data);
});
