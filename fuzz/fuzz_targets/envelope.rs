//! Envelope header parsing, opening and the replay window.
#![no_main]
use floatlm_protocol::envelope::{open, peek_seq, Direction, ReplayWindow};
use floatlm_protocol::vectors::binding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut w = ReplayWindow::default();
    if let Ok(seq) = peek_seq(data) {
        let _ = w.accept(seq);
    }
    let _ = open(&[7u8; 32], Direction::ClientToServer, &binding(), data);
});
