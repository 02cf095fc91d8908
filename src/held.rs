//! The expiries this instance recorded in the database, kept in memory so
//! most heartbeats need no database write.
//!
//! The database keeps a lease for `lease_hold` (default twice `lease_ttl`)
//! after each recorded renewal; a client is promised `lease_ttl` at a time.
//! While the recorded expiry is more than `lease_ttl` (plus a clock margin)
//! away, the promise is already covered and the heartbeat is answered from
//! here. So a client that heartbeats every third of its TTL costs one write
//! per `lease_hold − lease_ttl`, not one per heartbeat, and no promise ever
//! reaches past the expiry the database holds.
//!
//! A remembered expiry is only ever one this instance read back from its own
//! grant or renewal. It is forgotten when the lease is released here, when a
//! renewal finds it lost, when it passes, and all of them when an operator
//! force-releases any lease in the cluster (see [`HeldLeases::clear`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::seats::LeaseRef;

/// Shards of the map, so concurrent heartbeats rarely share a lock.
const SHARDS: usize = 16;

/// Allowance for the estimate of the database clock (its offset is measured
/// over a round trip) on top of the TTL a client is promised.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(1);

struct Entry {
    holder: Box<str>,
    /// Recorded expiry, Unix microseconds by the database clock.
    expires_us: i64,
    /// A write that extends it is queued (one at a time per lease).
    refreshing: bool,
}

/// What memory says about one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The recorded expiry covers a full TTL promise: nothing to write.
    Covered(DateTime<Utc>),
    /// Still valid for at least half a TTL: answer with what is left now,
    /// and extend it in the background. `refresh` is false when a write for
    /// it is already queued.
    Due {
        expires: DateTime<Utc>,
        refresh: bool,
    },
    /// Not known here, someone else's, or too close to expiry: write first.
    Unknown,
}

pub struct HeldLeases {
    shards: Vec<Mutex<HashMap<LeaseRef, Entry>>>,
    /// Bumped by [`HeldLeases::clear`]: a renewal that started under an
    /// older epoch does not record what it read.
    epoch: AtomicU64,
}

impl Default for HeldLeases {
    fn default() -> Self {
        HeldLeases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: AtomicU64::new(0),
        }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl HeldLeases {
    fn shard(&self, lease: &LeaseRef) -> &Mutex<HashMap<LeaseRef, Entry>> {
        let h = (lease.feature_id as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(lease.slot_no as u64);
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// The epoch to pass to [`HeldLeases::record`] for a renewal starting now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Classifies a heartbeat of `holder` for `lease` at `now` (database
    /// clock) against a promise of `ttl`; a `Due` answer with `refresh`
    /// marks the lease as being refreshed until [`HeldLeases::record`] or
    /// [`HeldLeases::forget`].
    pub fn check(
        &self,
        holder: &str,
        lease: &LeaseRef,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Known {
        let now_us = micros(now);
        let margin = CLOCK_MARGIN.as_micros() as i64;
        let full = now_us + ttl.as_micros() as i64 + margin;
        let half = now_us + ttl.as_micros() as i64 / 2 + margin;
        let mut map = self.shard(lease).lock().expect("lock");
        let Some(e) = map.get_mut(lease).filter(|e| &*e.holder == holder) else {
            return Known::Unknown;
        };
        let Some(expires) = DateTime::from_timestamp_micros(e.expires_us) else {
            return Known::Unknown;
        };
        if e.expires_us >= full {
            Known::Covered(expires)
        } else if e.expires_us >= half {
            let refresh = !e.refreshing;
            e.refreshing = true;
            Known::Due { expires, refresh }
        } else {
            Known::Unknown
        }
    }

    /// Remembers the expiry the database now holds for `lease`, unless
    /// everything was forgotten since `epoch` was read.
    pub fn record(&self, epoch: u64, holder: &str, lease: LeaseRef, expires: DateTime<Utc>) {
        let mut map = self.shard(&lease).lock().expect("lock");
        // Checked under the shard lock: `clear` bumps the epoch before it
        // takes the shard locks, so it cannot miss what is recorded here.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        map.insert(
            lease,
            Entry {
                holder: holder.into(),
                expires_us: micros(expires),
                refreshing: false,
            },
        );
    }

    /// A background refresh of `lease` failed: let the next heartbeat try.
    pub fn refresh_failed(&self, lease: &LeaseRef) {
        if let Some(e) = self.shard(lease).lock().expect("lock").get_mut(lease) {
            e.refreshing = false;
        }
    }

    /// Forgets `holder`'s `lease` (another holder naming it changes nothing).
    pub fn forget(&self, holder: &str, lease: &LeaseRef) {
        let mut map = self.shard(lease).lock().expect("lock");
        if map.get(lease).is_some_and(|e| &*e.holder == holder) {
            map.remove(lease);
        }
    }

    /// Forgets everything (an operator force-released a lease somewhere).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for s in &self.shards {
            s.lock().expect("lock").clear();
        }
    }

    /// Drops expiries that have passed; returns how many are left.
    pub fn sweep(&self, now: DateTime<Utc>) -> usize {
        let now = micros(now);
        self.shards
            .iter()
            .map(|s| {
                let mut map = s.lock().expect("lock");
                map.retain(|_, e| e.expires_us > now);
                map.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Now, to the microsecond (what the database stores).
    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
    }

    fn covered(
        h: &HeldLeases,
        holder: &str,
        lease: &LeaseRef,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Option<DateTime<Utc>> {
        match h.check(holder, lease, now, ttl) {
            Known::Covered(e) => Some(e),
            _ => None,
        }
    }

    fn lease(slot_no: i64) -> LeaseRef {
        LeaseRef {
            feature_id: 1,
            slot_no,
            lease_gen: 1,
        }
    }

    #[test]
    fn covers_only_the_holder_and_only_while_the_ttl_fits() {
        let h = HeldLeases::default();
        let now = now();
        let ttl = Duration::from_secs(60);
        let e = now + chrono::Duration::seconds(120);
        h.record(h.epoch(), "alice", lease(1), e);
        assert_eq!(covered(&h, "alice", &lease(1), now, ttl), Some(e));
        assert_eq!(covered(&h, "bob", &lease(1), now, ttl), None);
        assert_eq!(covered(&h, "alice", &lease(2), now, ttl), None);
        // 60 s left is not enough for a 60 s promise plus the clock margin.
        let later = now + chrono::Duration::seconds(60);
        assert_eq!(covered(&h, "alice", &lease(1), later, ttl), None);
        h.forget("bob", &lease(1));
        assert_eq!(covered(&h, "alice", &lease(1), now, ttl), Some(e));
        h.forget("alice", &lease(1));
        assert_eq!(covered(&h, "alice", &lease(1), now, ttl), None);
    }

    #[test]
    fn a_clear_wins_over_a_renewal_that_started_before_it() {
        let h = HeldLeases::default();
        let now = now();
        let e = now + chrono::Duration::seconds(120);
        let epoch = h.epoch();
        h.clear();
        h.record(epoch, "alice", lease(1), e);
        assert_eq!(covered(&h, "alice", &lease(1), now, Duration::ZERO), None);
        h.record(h.epoch(), "alice", lease(1), e);
        assert_eq!(
            covered(&h, "alice", &lease(1), now, Duration::ZERO),
            Some(e)
        );
    }

    #[test]
    fn a_due_lease_is_answered_and_refreshed_once() {
        let h = HeldLeases::default();
        let now = now();
        let ttl = Duration::from_secs(60);
        let e = now + chrono::Duration::seconds(45);
        h.record(h.epoch(), "alice", lease(1), e);
        assert_eq!(
            h.check("alice", &lease(1), now, ttl),
            Known::Due {
                expires: e,
                refresh: true
            }
        );
        assert_eq!(
            h.check("alice", &lease(1), now, ttl),
            Known::Due {
                expires: e,
                refresh: false
            }
        );
        h.refresh_failed(&lease(1));
        assert_eq!(
            h.check("alice", &lease(1), now, ttl),
            Known::Due {
                expires: e,
                refresh: true
            }
        );
        assert_eq!(h.check("bob", &lease(1), now, ttl), Known::Unknown);
        // Less than half a TTL (plus the margin) left: write first.
        let late = now + chrono::Duration::seconds(15);
        assert_eq!(h.check("alice", &lease(1), late, ttl), Known::Unknown);
        let e2 = now + chrono::Duration::seconds(120);
        h.record(h.epoch(), "alice", lease(1), e2);
        assert_eq!(h.check("alice", &lease(1), now, ttl), Known::Covered(e2));
    }

    #[test]
    fn sweep_drops_what_has_passed() {
        let h = HeldLeases::default();
        let now = now();
        h.record(h.epoch(), "a", lease(1), now - chrono::Duration::seconds(1));
        h.record(h.epoch(), "a", lease(2), now + chrono::Duration::seconds(1));
        assert_eq!(h.sweep(now), 1);
    }
}
