//! ResumeHello framing, the server's ticket opening and its Noise read:
//! arbitrary bytes from the network.
#![no_main]
use floatlm::crypto::tickets::TicketKeys;
use floatlm_protocol::handshake::{parse_resume_hello, respond_resume};
use floatlm_protocol::vectors::{resume_payload, RESUME_SECRET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = parse_resume_hello(data) {
        // A ring holding key id 0, so tickets naming it reach AES-GCM.
        let keys = TicketKeys::default();
        keys.replace([(0, zeroize::Zeroizing::new([1u8; 32]))].into_iter().collect());
        let _ = keys.open(hello.ticket);
        let _ = respond_resume(&hello, &RESUME_SECRET, &resume_payload(), None);
    }
});
