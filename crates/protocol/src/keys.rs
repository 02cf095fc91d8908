//! Key schedule.
//!
//! ```text
//! psk      = HKDF-SHA256(salt = "floatlm-psk-v1", ikm = secret, info = identity id)      (32 bytes)
//! (k1, k2) = Noise Split() after the handshake
//! h        = Noise handshake hash
//! c2s      = HKDF-SHA256(salt = h, ikm = k1, info = "floatlm c2s v1")                   (32 bytes)
//! s2c      = HKDF-SHA256(salt = h, ikm = k2, info = "floatlm s2c v1")                   (32 bytes)
//! rpsk     = HKDF-SHA256(salt = "floatlm-resume-v1", ikm = resumption secret, info = "psk") (32 bytes)
//! ```

use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The pre-shared key of one identity.
pub fn derive_psk(secret: &[u8], identity_id: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"floatlm-psk-v1"), secret);
    let mut out = [0u8; 32];
    hk.expand(identity_id.as_bytes(), &mut out)
        .expect("32 bytes is a valid HKDF length");
    out
}

/// The pre-shared key of a resumption.
pub fn derive_resume_psk(resumption_secret: &[u8]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"floatlm-resume-v1"), resumption_secret);
    let mut out = [0u8; 32];
    hk.expand(b"psk", &mut out)
        .expect("32 bytes is a valid HKDF length");
    out
}

/// Per-direction AES-256-GCM keys of one session. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SessionKeys {
    pub c2s: [u8; 32],
    pub s2c: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys([redacted])")
    }
}

impl SessionKeys {
    pub(crate) fn derive(k1: &[u8; 32], k2: &[u8; 32], handshake_hash: &[u8]) -> Self {
        let expand = |ikm: &[u8; 32], info: &[u8]| {
            let hk = Hkdf::<Sha256>::new(Some(handshake_hash), ikm);
            let mut out = [0u8; 32];
            hk.expand(info, &mut out)
                .expect("32 bytes is a valid HKDF length");
            out
        };
        SessionKeys {
            c2s: expand(k1, b"floatlm c2s v1"),
            s2c: expand(k2, b"floatlm s2c v1"),
        }
    }
}
