//! Sealed request and response envelopes.
//!
//! ```text
//! envelope = version:u8 | seq:u64 (big endian) | AES-256-GCM(ciphertext || tag:16)
//! nonce    = direction:u32 (1 = client->server, 2 = server->client) | seq:u64
//! aad      = "floatlm-envelope-v1" | version | direction
//!            | len32 method | len32 path | len32 X-LDK-Instance | len32 session id | seq
//! ```
//!
//! A response carries the sequence number of the request it answers. Each
//! direction has its own key, so a request can never be reflected as a response.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::{ProtocolError, VERSION};

/// Largest envelope accepted (bytes).
pub const MAX_ENVELOPE: usize = 64 * 1024;
const HEADER: usize = 1 + 8;
const TAG: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer = 1,
    ServerToClient = 2,
}

/// What an envelope is bound to besides its keys.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The X-LDK-Instance header value (empty when absent).
    pub instance: &'a str,
    pub session: &'a str,
}

/// The additional authenticated data of envelope `seq` (shown in the test
/// vectors; docs/protocol.md spells it out byte by byte).
pub fn aad(b: &Binding<'_>, dir: Direction, seq: u64) -> Vec<u8> {
    let mut a = b"floatlm-envelope-v1".to_vec();
    a.push(VERSION);
    a.push(dir as u8);
    for part in [b.method, b.path, b.instance, b.session] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part.as_bytes());
    }
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

/// The AES-GCM nonce of envelope `seq` in direction `dir`.
pub fn nonce(dir: Direction, seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(dir as u32).to_be_bytes());
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// Seals `plaintext` as envelope number `seq`.
pub fn seal(
    key: &[u8; 32],
    dir: Direction,
    seq: u64,
    binding: &Binding<'_>,
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce(dir, seq)),
            Payload {
                msg: plaintext,
                aad: &aad(binding, dir, seq),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(HEADER + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ct);
    out
}

/// Reads the clear header: the sequence number.
pub fn peek_seq(envelope: &[u8]) -> Result<u64, ProtocolError> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(ProtocolError::TooLarge);
    }
    if envelope.len() < HEADER + TAG {
        return Err(ProtocolError::Malformed("envelope too short"));
    }
    if envelope[0] != VERSION {
        return Err(ProtocolError::UnsupportedVersion(envelope[0]));
    }
    Ok(u64::from_be_bytes(
        envelope[1..HEADER].try_into().expect("8 bytes"),
    ))
}

/// Opens an envelope; returns its sequence number and plaintext.
pub fn open(
    key: &[u8; 32],
    dir: Direction,
    binding: &Binding<'_>,
    envelope: &[u8],
) -> Result<(u64, Vec<u8>), ProtocolError> {
    let seq = peek_seq(envelope)?;
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let pt = cipher
        .decrypt(
            Nonce::from_slice(&nonce(dir, seq)),
            Payload {
                msg: &envelope[HEADER..],
                aad: &aad(binding, dir, seq),
            },
        )
        .map_err(|_| ProtocolError::BadEnvelope)?;
    Ok((seq, pt))
}

/// Sliding replay window over sequence numbers: accepts each number once,
/// in any order within the last [`ReplayWindow::SIZE`].
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest sequence number accepted + 1 (0: none yet).
    top: u64,
    /// Bit i set: sequence number top-1-i was accepted.
    bits: u128,
}

impl ReplayWindow {
    pub const SIZE: u64 = 128;

    /// Whether `seq` would be accepted, without recording it.
    pub fn check(&self, seq: u64) -> Result<(), ProtocolError> {
        // The last number is never accepted, so `seq + 1` cannot overflow and
        // wrap the window back to zero (found by the envelope fuzz target).
        if seq == u64::MAX {
            return Err(ProtocolError::Replay(seq));
        }
        if seq >= self.top {
            return Ok(());
        }
        let back = self.top - 1 - seq;
        if back >= Self::SIZE || self.bits & (1u128 << back) != 0 {
            return Err(ProtocolError::Replay(seq));
        }
        Ok(())
    }

    /// Records `seq` as used; call only after the envelope opened.
    pub fn accept(&mut self, seq: u64) -> Result<(), ProtocolError> {
        self.check(seq)?;
        if seq >= self.top {
            let shift = seq + 1 - self.top;
            self.bits = if shift >= Self::SIZE {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = seq + 1;
        } else {
            self.bits |= 1u128 << (self.top - 1 - seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Binding<'static> = Binding {
        method: "POST",
        path: "/sentinel/ldk/v1/request",
        instance: "c1",
        session: "s1",
    };

    #[test]
    fn seal_open_and_every_byte_matters() {
        let k = [9u8; 32];
        let env = seal(&k, Direction::ClientToServer, 7, &B, b"{\"op\":\"info\"}");
        assert_eq!(
            open(&k, Direction::ClientToServer, &B, &env).unwrap(),
            (7, b"{\"op\":\"info\"}".to_vec())
        );
        for i in 0..env.len() {
            let mut e = env.clone();
            e[i] ^= 0x80;
            assert!(
                open(&k, Direction::ClientToServer, &B, &e).is_err(),
                "byte {i}"
            );
        }
        assert!(
            open(&k, Direction::ServerToClient, &B, &env).is_err(),
            "no reflection"
        );
        for other in [
            Binding { method: "GET", ..B },
            Binding { path: "/x", ..B },
            Binding {
                instance: "c2",
                ..B
            },
            Binding { session: "s2", ..B },
        ] {
            assert_eq!(
                open(&k, Direction::ClientToServer, &other, &env),
                Err(ProtocolError::BadEnvelope)
            );
        }
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        w.accept(0).unwrap();
        w.accept(2).unwrap();
        w.accept(1).unwrap();
        assert_eq!(w.accept(1), Err(ProtocolError::Replay(1)));
        w.accept(200).unwrap();
        assert!(w.accept(2).is_err(), "fell out of the window");
        w.accept(150).unwrap();
        assert!(w.accept(150).is_err());
        w.accept(73).unwrap();
        assert!(w.accept(72).is_err());
    }

    #[test]
    fn the_last_sequence_number_never_wraps_the_window() {
        let mut w = ReplayWindow::default();
        w.accept(5).unwrap();
        assert_eq!(w.accept(u64::MAX), Err(ProtocolError::Replay(u64::MAX)));
        w.accept(u64::MAX - 1).unwrap();
        assert!(w.accept(5).is_err(), "old numbers stay refused");
        // The fuzz artifact that found it: an envelope header with seq = u64::MAX.
        let crash =
            hex_bytes("01ffffffffffffffff0000008989890a 898901000000a98989898989898989898989 0a");
        if let Ok(seq) = peek_seq(&crash) {
            let _ = ReplayWindow::default().accept(seq);
        }
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn window_never_panics(seqs in proptest::collection::vec(proptest::num::u64::ANY, 1..50)) {
            let mut w = ReplayWindow::default();
            for s in seqs {
                let _ = w.accept(s);
            }
        }

        #[test]
        fn open_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = open(&[1; 32], Direction::ClientToServer, &B, &data);
        }

        #[test]
        fn window_accepts_each_number_once(seqs in proptest::collection::vec(0u64..400, 1..200)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            for s in seqs {
                if w.accept(s).is_ok() {
                    proptest::prop_assert!(seen.insert(s), "accepted {} twice", s);
                }
            }
        }
    }
}
