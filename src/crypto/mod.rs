//! Key material and sealing at rest.
//!
//! The keyring owns the operator's master keys and the one function that
//! loads them (`keyring.rs`); every secret and license blob the database
//! holds is sealed with one of them (AES-256-GCM), bound to one of the
//! sealed columns `sealed.rs` names. Key bytes are zeroized on drop and
//! never printed.

pub mod keyring;
pub mod sealed;
pub mod secret;
pub mod tickets;

pub use keyring::{Keyring, MasterKey, SealError};
pub use sealed::{SealContext, SealedColumn};
pub use secret::Secret;

use rand::RngCore;

/// `n` bytes from the OS CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

/// A random identifier of `bytes` bytes, lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}

/// SHA-256 of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
