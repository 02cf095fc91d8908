//! Resumption tickets: what lets any instance continue a client's session.
//!
//! A ticket is sealed with a cluster-wide ticket key (AES-256-GCM). The keys
//! live in the database, each sealed by the master key, one per rotation
//! period; the key id is the Unix second its period starts, so every instance
//! computes the same id and the first to need it inserts it.
//!
//! ```text
//! ticket    = key_id:u64 BE | nonce (12) | AES-256-GCM(plaintext) || tag (16)
//! aad       = "floatlm-ticket-v1" | key_id:u64 BE
//! plaintext = expires_at:i64 BE (Unix seconds, database clock) | secret (32) | identity id (ASCII)
//! ```
//!
//! The client cannot read or change a ticket; it proves it holds the ticket's
//! secret by using it as the PSK of the resume exchange.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::RwLock;
use zeroize::Zeroizing;

use floatlm_protocol::handshake::{MAX_TICKET, RESUMPTION_SECRET_LEN};

const AAD_PREFIX: &[u8] = b"floatlm-ticket-v1";
const HEADER: usize = 8 + 12;
const TAG: usize = 16;

/// A ticket key's bytes. Zeroized on drop.
pub type TicketKey = Zeroizing<[u8; 32]>;

/// What an opened ticket says.
pub struct OpenedTicket {
    pub identity_id: String,
    pub secret: Zeroizing<[u8; RESUMPTION_SECRET_LEN]>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for OpenedTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedTicket")
            .field("identity_id", &self.identity_id)
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a ticket does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket is malformed")]
    Malformed,
    #[error("ticket key {0} is unknown to this instance (too old, or not loaded yet)")]
    UnknownKey(i64),
    #[error("ticket does not open: altered or sealed with another key")]
    Tampered,
}

/// The ticket keys this instance knows, by id.
#[derive(Default)]
pub struct TicketKeys {
    keys: RwLock<BTreeMap<i64, TicketKey>>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("ids", &self.ids())
            .finish()
    }
}

/// The id of the key whose rotation period contains `now`.
pub fn period_start(now: DateTime<Utc>, rotation_s: i64) -> i64 {
    let t = now.timestamp();
    t - t.rem_euclid(rotation_s.max(1))
}

/// The key id a ticket names, without opening it.
pub fn key_id(ticket: &[u8]) -> Option<i64> {
    let id: [u8; 8] = ticket.get(..8)?.try_into().ok()?;
    Some(i64::from_be_bytes(id))
}

fn aad(id: i64) -> Vec<u8> {
    let mut a = AAD_PREFIX.to_vec();
    a.extend_from_slice(&id.to_be_bytes());
    a
}

impl TicketKeys {
    /// Replaces the known keys.
    pub fn replace(&self, keys: BTreeMap<i64, TicketKey>) {
        *self.keys.write().expect("lock") = keys;
    }

    pub fn ids(&self) -> Vec<i64> {
        self.keys.read().expect("lock").keys().copied().collect()
    }

    /// The newest key id held, if any.
    pub fn newest(&self) -> Option<i64> {
        self.keys.read().expect("lock").keys().next_back().copied()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.keys.read().expect("lock").contains_key(&id)
    }

    /// Seals a ticket for `identity_id` with the newest key not newer than
    /// `now`; None when no such key is loaded. Returns the ticket and its secret.
    pub fn issue(
        &self,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        identity_id: &str,
    ) -> Option<(Vec<u8>, Zeroizing<[u8; RESUMPTION_SECRET_LEN]>)> {
        let keys = self.keys.read().expect("lock");
        let (&id, key) = keys.range(..=now.timestamp()).next_back()?;
        let mut secret = Zeroizing::new([0u8; RESUMPTION_SECRET_LEN]);
        secret.copy_from_slice(&crate::crypto::random_bytes(RESUMPTION_SECRET_LEN));
        let mut plain = Zeroizing::new(Vec::with_capacity(8 + 32 + identity_id.len()));
        plain.extend_from_slice(&expires_at.timestamp().to_be_bytes());
        plain.extend_from_slice(secret.as_ref());
        plain.extend_from_slice(identity_id.as_bytes());
        let nonce = crate::crypto::random_bytes(12);
        let cipher = Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key");
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(id),
                },
            )
            .expect("AES-GCM encryption does not fail on short input");
        let mut ticket = Vec::with_capacity(HEADER + ct.len());
        ticket.extend_from_slice(&id.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&ct);
        debug_assert!(ticket.len() <= MAX_TICKET);
        Some((ticket, secret))
    }

    /// Opens a ticket. Expiry is the caller's to judge (by the database clock).
    pub fn open(&self, ticket: &[u8]) -> Result<OpenedTicket, TicketError> {
        if ticket.len() < HEADER + TAG + 8 + RESUMPTION_SECRET_LEN + 1 || ticket.len() > MAX_TICKET
        {
            return Err(TicketError::Malformed);
        }
        let id = key_id(ticket).ok_or(TicketError::Malformed)?;
        let keys = self.keys.read().expect("lock");
        let key = keys.get(&id).ok_or(TicketError::UnknownKey(id))?;
        let cipher = Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key");
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&ticket[8..HEADER]),
                    Payload {
                        msg: &ticket[HEADER..],
                        aad: &aad(id),
                    },
                )
                .map_err(|_| TicketError::Tampered)?,
        );
        // Sealed by us, so well formed; checked anyway rather than trusted.
        let expires: [u8; 8] = plain[..8].try_into().map_err(|_| TicketError::Malformed)?;
        let expires_at = DateTime::from_timestamp(i64::from_be_bytes(expires), 0)
            .ok_or(TicketError::Malformed)?;
        let mut secret = Zeroizing::new([0u8; RESUMPTION_SECRET_LEN]);
        secret.copy_from_slice(&plain[8..8 + RESUMPTION_SECRET_LEN]);
        let identity_id = std::str::from_utf8(&plain[8 + RESUMPTION_SECRET_LEN..])
            .map_err(|_| TicketError::Malformed)?
            .to_string();
        Ok(OpenedTicket {
            identity_id,
            secret,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[i64]) -> TicketKeys {
        let k = TicketKeys::default();
        k.replace(
            ids.iter()
                .map(|&i| (i, Zeroizing::new([i as u8; 32])))
                .collect(),
        );
        k
    }

    fn at(t: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(t, 0).unwrap()
    }

    #[test]
    fn issue_uses_the_newest_current_key_and_opens_anywhere_with_that_key() {
        let a = keys(&[1000, 2000, 3000]);
        let (ticket, secret) = a.issue(at(2500), at(9999), "00aa").unwrap();
        assert_eq!(key_id(&ticket), Some(2000), "3000 is not current yet");
        let b = keys(&[2000]);
        let t = b.open(&ticket).unwrap();
        assert_eq!(t.identity_id, "00aa");
        assert_eq!(t.expires_at, at(9999));
        assert_eq!(*t.secret, *secret);
        assert_eq!(
            keys(&[1000]).open(&ticket).unwrap_err(),
            TicketError::UnknownKey(2000)
        );
        assert!(keys(&[]).issue(at(5), at(6), "x").is_none());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let k = keys(&[0]);
        let (ticket, _) = k.issue(at(10), at(20), "0011223344556677").unwrap();
        for i in 0..ticket.len() {
            let mut t = ticket.clone();
            t[i] ^= 0x01;
            assert!(k.open(&t).is_err(), "byte {i}");
        }
        assert_eq!(k.open(&ticket[..20]).unwrap_err(), TicketError::Malformed);
    }

    #[test]
    fn the_same_id_with_another_key_does_not_open() {
        let (ticket, _) = keys(&[7]).issue(at(10), at(20), "ab").unwrap();
        let other = TicketKeys::default();
        other.replace([(7, Zeroizing::new([9u8; 32]))].into_iter().collect());
        assert_eq!(other.open(&ticket).unwrap_err(), TicketError::Tampered);
    }

    #[test]
    fn periods_start_on_multiples_of_the_rotation() {
        assert_eq!(period_start(at(3 * 3600 + 5), 3600), 3 * 3600);
        assert_eq!(period_start(at(3600), 3600), 3600);
        assert_eq!(period_start(at(-5), 3600), -3600);
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let k = keys(&[0]);
            let _ = k.open(&data);
            // The same bytes behind a key id this instance knows.
            let mut t = 0i64.to_be_bytes().to_vec();
            t.extend_from_slice(&data);
            let _ = k.open(&t);
        }
    }
}
