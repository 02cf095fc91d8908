//! Rules without I/O: licenses, identities, seats, slots and roles.

pub mod identity;
pub mod license;
pub mod seats;
pub mod slots;
pub mod usage;

/// Whether a name is a safe identifier for features, licenses and the like:
/// 1-64 characters of `A-Z a-z 0-9 _ . -`, starting with a letter or digit.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
