//! What one instance knows about identities between database reads.
//!
//! * [`IdentityCache`]: identity id → what a handshake or a resumption
//!   needs (the secret already opened, the expiry, the revocation), for
//!   known and unknown ids alike. A handshake then costs no database round
//!   trip and no unsealing, and an unknown id costs exactly what a known one
//!   costs: both are read from the database once, then served from memory.
//!   Bounded (the oldest entries go first) and short-lived ([`CACHE_TTL`]).
//! * [`Refusals`]: the identities this instance has seen revoked. Every
//!   request of an open session checks its identity here (and its expiry
//!   against the database clock), so a revoked identity's sessions stop at
//!   their next request.
//!
//! Both stay correct under revocation through the cluster-wide identity
//! revision (`identity_revision` in the database): every change to
//! identities (create, import, revoke) bumps it in the same transaction, and
//! every revocation is logged under its revision. The instance that made the
//! change acts at once; every other instance reads the revision on each
//! cluster heartbeat and, when it moved, clears its cache and refuses the
//! identities revoked since ([`crate::app::Access::follow_identity_changes`]).

use chrono::{DateTime, Utc};
use hashlink::LinkedHashMap;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::crypto::Secret;

/// Entries of the identity cache this old are read from the database again
/// (a bound on what a change made outside floatlm, by hand in the database,
/// can leave stale; changes made through floatlm show within one cluster
/// heartbeat).
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Identity ids the cache holds at most (known and unknown together).
pub const CACHE_CAPACITY: usize = 10_000;

/// Why an identity may not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Revoked,
    Expired,
}

/// An identity's refusal, with the words its client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRefusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl IdentityRefusal {
    pub fn revoked(id: &str, at: DateTime<Utc>) -> Self {
        IdentityRefusal {
            kind: RefusalKind::Revoked,
            message: format!("identity {id} was revoked at {at}"),
        }
    }

    pub fn expired(id: &str, at: DateTime<Utc>) -> Self {
        IdentityRefusal {
            kind: RefusalKind::Expired,
            message: format!("identity {id} expired at {at}"),
        }
    }
}

/// An identity as the protocol needs it (no name, no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityInfo {
    pub id: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl IdentityInfo {
    /// Why the identity may not be used at `now` (database clock), if so.
    pub fn refusal(&self, now: DateTime<Utc>) -> Option<IdentityRefusal> {
        if let Some(at) = self.revoked_at {
            return Some(IdentityRefusal::revoked(&self.id, at));
        }
        self.expires_at
            .filter(|e| *e <= now)
            .map(|e| IdentityRefusal::expired(&self.id, e))
    }
}

/// What the cache holds for one identity id.
#[derive(Debug)]
pub struct Lookup {
    /// What the handshake keys its PSK with: the identity's secret, or, for
    /// an id that does not exist (or whose sealed secret is damaged), a
    /// stand-in derived from the id, so that it fails like a wrong secret.
    pub secret: Secret,
    /// The identity, when it exists and its secret opened.
    pub identity: Option<IdentityInfo>,
}

struct Entry {
    at: Instant,
    lookup: Arc<Lookup>,
}

struct CacheInner {
    /// Oldest insertion first.
    entries: LinkedHashMap<String, Entry, RandomState>,
    /// Bumped by every clear: a database read that started under an older
    /// generation may be stale and is not cached.
    generation: u64,
}

/// Identity id → [`Lookup`], bounded and short-lived. Keys come from
/// clients, so the map hashes with SipHash (random keys), not a fast hash.
pub struct IdentityCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
    ttl: Duration,
}

impl IdentityCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        IdentityCache {
            inner: Mutex::new(CacheInner {
                entries: LinkedHashMap::with_hasher(RandomState::new()),
                generation: 0,
            }),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The entry for `id`, unless it is absent or older than the TTL.
    pub fn get(&self, id: &str) -> Option<Arc<Lookup>> {
        let mut inner = self.inner.lock().expect("lock");
        let fresh = inner.entries.get(id).map(|e| e.at.elapsed() < self.ttl)?;
        if fresh {
            inner.entries.get(id).map(|e| e.lookup.clone())
        } else {
            inner.entries.remove(id);
            None
        }
    }

    /// Read before a database read whose result goes to [`IdentityCache::insert`].
    pub fn generation(&self) -> u64 {
        self.inner.lock().expect("lock").generation
    }

    /// Caches `lookup` for `id` unless the cache was cleared since
    /// `generation` was read (the read may predate a revocation); evicts the
    /// oldest entry past the capacity. True when cached.
    pub fn insert(&self, id: &str, lookup: Arc<Lookup>, generation: u64) -> bool {
        let mut inner = self.inner.lock().expect("lock");
        if inner.generation != generation {
            return false;
        }
        inner.entries.insert(
            id.to_string(),
            Entry {
                at: Instant::now(),
                lookup,
            },
        );
        while inner.entries.len() > self.capacity {
            inner.entries.pop_front();
        }
        true
    }

    /// Forgets everything (identities changed somewhere in the cluster).
    pub fn clear(&self) {
        let mut inner = self.inner.lock().expect("lock");
        inner.entries.clear();
        inner.generation += 1;
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The identities this instance has seen revoked, checked by every request
/// of an open session. Small: one entry per revocation, forgotten once no
/// session could still carry that identity ([`Refusals::prune`]).
#[derive(Default)]
pub struct Refusals {
    map: RwLock<HashMap<String, (IdentityRefusal, Instant)>>,
}

impl Refusals {
    pub fn get(&self, identity_id: &str) -> Option<IdentityRefusal> {
        let map = self.map.read().expect("lock");
        if map.is_empty() {
            return None;
        }
        map.get(identity_id).map(|(r, _)| r.clone())
    }

    /// Records `refusal` of `identity_id`; false when it was known already.
    pub fn insert(&self, identity_id: &str, refusal: IdentityRefusal) -> bool {
        let mut map = self.map.write().expect("lock");
        if map.contains_key(identity_id) {
            return false;
        }
        map.insert(identity_id.to_string(), (refusal, Instant::now()));
        true
    }

    /// Forgets refusals noted more than `age` ago. Call with more than the
    /// session idle time: by then every session of the identity was either
    /// refused at a request or forgotten as idle, and no new one can open
    /// (handshakes and resumptions read the revoked row).
    pub fn prune(&self, age: Duration) {
        self.map
            .write()
            .expect("lock")
            .retain(|_, (_, at)| at.elapsed() < age);
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(id: &str) -> Arc<Lookup> {
        Arc::new(Lookup {
            secret: Secret::new("s"),
            identity: Some(IdentityInfo {
                id: id.into(),
                expires_at: None,
                revoked_at: None,
            }),
        })
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let c = IdentityCache::new(3, Duration::from_secs(60));
        for id in ["a", "b", "c", "d"] {
            assert!(c.insert(id, lookup(id), c.generation()));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("a").is_none());
        assert!(c.get("d").is_some());
    }

    #[test]
    fn a_read_from_before_a_clear_is_not_cached() {
        let c = IdentityCache::new(10, Duration::from_secs(60));
        let before = c.generation();
        c.clear();
        assert!(!c.insert("a", lookup("a"), before));
        assert!(c.get("a").is_none());
        assert!(c.insert("a", lookup("a"), c.generation()));
        c.clear();
        assert!(c.get("a").is_none());
    }

    #[test]
    fn entries_expire() {
        let c = IdentityCache::new(10, Duration::ZERO);
        c.insert("a", lookup("a"), c.generation());
        assert!(c.get("a").is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn revoked_beats_expired_and_expiry_is_by_the_given_clock() {
        let t = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let mut i = IdentityInfo {
            id: "x".into(),
            expires_at: Some(t),
            revoked_at: None,
        };
        assert_eq!(i.refusal(t - chrono::Duration::seconds(1)), None);
        assert_eq!(i.refusal(t).unwrap().kind, RefusalKind::Expired);
        i.revoked_at = Some(t - chrono::Duration::seconds(5));
        let r = i.refusal(t - chrono::Duration::seconds(9)).unwrap();
        assert_eq!(r.kind, RefusalKind::Revoked);
        assert!(r.message.contains("revoked"), "{}", r.message);
    }

    #[test]
    fn refusals_are_noted_once_and_pruned() {
        let r = Refusals::default();
        assert!(r.get("a").is_none());
        let t = Utc::now();
        assert!(r.insert("a", IdentityRefusal::revoked("a", t)));
        assert!(!r.insert("a", IdentityRefusal::revoked("a", t)));
        assert_eq!(r.get("a").unwrap().kind, RefusalKind::Revoked);
        r.prune(Duration::from_secs(60));
        assert_eq!(r.len(), 1);
        r.prune(Duration::ZERO);
        assert!(r.is_empty());
    }
}
