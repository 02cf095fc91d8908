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

    /// The remembered expiry of `holder`'s `lease`, if it still covers a
    /// promise of `ttl` made at `now` (database clock).
    pub fn covered(
        &self,
        holder: &str,
        lease: &LeaseRef,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Option<DateTime<Utc>> {
        let need = micros(now) + (ttl + CLOCK_MARGIN).as_micros() as i64;
        let map = self.shard(lease).lock().expect("lock");
        let e = map.get(lease)?;
        (&*e.holder == holder && e.expires_us >= need)
            .then(|| DateTime::from_timestamp_micros(e.expires_us))
            .flatten()
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
            },
        );
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
        assert_eq!(h.covered("alice", &lease(1), now, ttl), Some(e));
        assert_eq!(h.covered("bob", &lease(1), now, ttl), None);
        assert_eq!(h.covered("alice", &lease(2), now, ttl), None);
        // 60 s left is not enough for a 60 s promise plus the clock margin.
        let later = now + chrono::Duration::seconds(60);
        assert_eq!(h.covered("alice", &lease(1), later, ttl), None);
        h.forget("bob", &lease(1));
        assert_eq!(h.covered("alice", &lease(1), now, ttl), Some(e));
        h.forget("alice", &lease(1));
        assert_eq!(h.covered("alice", &lease(1), now, ttl), None);
    }

    #[test]
    fn a_clear_wins_over_a_renewal_that_started_before_it() {
        let h = HeldLeases::default();
        let now = now();
        let e = now + chrono::Duration::seconds(120);
        let epoch = h.epoch();
        h.clear();
        h.record(epoch, "alice", lease(1), e);
        assert_eq!(h.covered("alice", &lease(1), now, Duration::ZERO), None);
        h.record(h.epoch(), "alice", lease(1), e);
        assert_eq!(h.covered("alice", &lease(1), now, Duration::ZERO), Some(e));
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
